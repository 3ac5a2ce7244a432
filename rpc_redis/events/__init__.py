"""Events and streams, sans I/O: the wire rules of pub/sub and durable events
(``wire.py``) and of streamed results (``streams.py``), shared by the clients, the
worker and ``rpc-admin``, which import them; this package imports neither side."""
