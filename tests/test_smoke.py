from rpc_redis import Client
from rpc_redis.testing import serve_in_thread
from services.calculator import service as calculator


def test_add_through_an_in_process_worker(redis_url: str) -> None:
    with serve_in_thread(calculator, redis_url), Client(redis_url, timeout=5) as client:
        assert client.proxy("calculator").add(1, 2) == 3
