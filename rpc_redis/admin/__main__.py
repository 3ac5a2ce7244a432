"""``python -m rpc_redis.admin``: the same as ``rpc-admin``."""

import sys

from .cli import main

sys.exit(main())
