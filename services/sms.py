"""An SMS-reply relay, after the pub/sub writing: a web app publishes "user A replied to
user B with this text" on a channel, and a bot in another process acts on each reply.

    rpc-worker services.sms                                  # the bot
    python -m services.sms_web ann bob "see you at 8"        # the web app's stand-in

Pub/sub is at most once: a reply published while no bot listens is lost (``publish``
returns 0). For replies that must not be lost, emit them as durable events instead
(``services.orders`` shows how; docs/events.md compares the two).
"""

from __future__ import annotations

import logging
from typing import Any

from rpc_redis import InvalidParams, Service, current_call

logger = logging.getLogger("services.sms")

CHANNEL = "sms_replies"

bot = Service("sms_bot")


@bot.subscribe(CHANNEL)
def relay(reply: dict[str, Any]) -> None:
    """Act on a reply: relay its text to the user it answers (here, one log line)."""
    if not isinstance(reply, dict) or not all(
        isinstance(reply.get(field), str) for field in ("from", "to", "text")
    ):
        raise InvalidParams('an SMS reply is {"from": ..., "to": ..., "text": ...}, all strings')
    call = current_call()
    channel = call.event if call is not None else CHANNEL
    logger.info(
        "bot relays to %s: %s replied %r (on %s)",
        reply["to"],
        reply["from"],
        reply["text"],
        channel,
    )
