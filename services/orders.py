"""Orders, a durable event two services consume: ``orders`` takes an order and emits
it on the ``orders`` topic; ``billing`` and ``shipping`` each handle every order, at
least once, whichever of their workers runs.

    rpc-worker services.orders:service      # places orders
    rpc-worker services.orders:billing      # bills each order
    rpc-worker services.orders:shipping     # ships each order
    rpc-worker services.orders              # all three in one worker

Orders placed while billing or shipping is down wait in the stream and are handled
when a worker starts; one whose handler fails is retried, and after
``--max-deliveries`` failures goes to the service's dead letters (``rpc-admin dead``).
"""

from __future__ import annotations

import logging
from typing import Any

from rpc_redis import Client, InvalidParams, Service, current_call

logger = logging.getLogger("services.orders")

TOPIC = "orders"

service = Service("orders")
billing = Service("billing")
shipping = Service("shipping")

_events: Client | None = None


def events() -> Client:
    """The client orders are emitted with: on $RPC_REDIS_URL (then $REDIS_URL...)."""
    global _events
    if _events is None:
        _events = Client()
    return _events


@service.method
def place(order_id: int, item: str, quantity: int = 1) -> str:
    """Take an order and emit it for billing and shipping: the event's id."""
    if not isinstance(quantity, int) or isinstance(quantity, bool) or quantity < 1:
        raise InvalidParams("quantity must be a positive integer")
    order = {"order_id": order_id, "item": item, "quantity": quantity}
    return events().emit(TOPIC, order)


@billing.on(TOPIC)
def bill(order: dict[str, Any]) -> None:
    """Bill an order. At least once: a redelivered order (delivery_count > 1) may have
    been billed already, so a real biller checks its ledger for the order's id first."""
    call = current_call()
    delivery = call.delivery_count if call is not None else 1
    logger.info("billing bills order %s (delivery %d)", order["order_id"], delivery)


@shipping.on(TOPIC)
def ship(order: dict[str, Any]) -> None:
    """Ship an order: as idempotent as billing must be."""
    call = current_call()
    delivery = call.delivery_count if call is not None else 1
    logger.info(
        "shipping ships %s x %s of order %s (delivery %d)",
        order["quantity"],
        order["item"],
        order["order_id"],
        delivery,
    )
