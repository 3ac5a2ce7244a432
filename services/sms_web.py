"""Stands in for the web app of the SMS relay: publishes one reply for the bot.

python -m services.sms_web [--redis-url URL] FROM TO TEXT
"""

from __future__ import annotations

import argparse
import sys

from rpc_redis import Client

from .sms import CHANNEL


def publish_reply(client: Client, sender: str, recipient: str, text: str) -> int:
    """Publish that ``sender`` replied ``text`` to ``recipient``: how many bots got it."""
    return client.publish(CHANNEL, {"from": sender, "to": recipient, "text": text})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.sms_web", description=__doc__)
    parser.add_argument("sender", metavar="FROM")
    parser.add_argument("recipient", metavar="TO")
    parser.add_argument("text", metavar="TEXT")
    parser.add_argument("--redis-url", default=None, help="default: $RPC_REDIS_URL, ...")
    args = parser.parse_args(argv)
    with Client(args.redis_url) as client:
        received = publish_reply(client, args.sender, args.recipient, args.text)
    print(f"published a reply from {args.sender} to {args.recipient}: {received} bot(s) got it")
    return 0 if received else 1


if __name__ == "__main__":
    sys.exit(main())
