"""`make demo` runs: cats go through a real rpc-worker and come back in its log, kittens
stream back, an SMS reply reaches the bot, and an order's event both its consumers."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import REPOSITORY


def test_demo_sends_cats_and_shows_what_the_worker_logged() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "services.demo"],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    sent = re.findall(r"client sends cat (\w+), (\d+): ok: \1 received", done.stdout)
    logged = re.findall(r"server received cat (\w+) which is (\d+) years old", done.stdout)
    assert len(sent) == 5
    assert sorted(sent) == sorted(logged)
    kittens = re.findall(r"client streams kitten (\d) of 3: (\w+)", done.stdout)
    assert kittens == [("1", "Tiger"), ("2", "Smokey"), ("3", "Pumpkin")]
    assert "a litter of 3 kittens was born" in done.stdout
    assert "web app publishes a reply from ann to bob: 1 bot(s) got it" in done.stdout
    assert "bot relays to bob: ann replied 'see you at 8' (on sms_replies)" in done.stdout
    assert re.search(r"client places order 1, emitted as event \d+-\d+", done.stdout)
    assert "billing bills order 1 (delivery 1)" in done.stdout
    assert "shipping ships 3 x cat food of order 1 (delivery 1)" in done.stdout
    assert "rpc-worker exited with 0" in done.stdout
    assert "stopped redis-server" in done.stdout
    assert "What next, from this directory:" in done.stdout
    assert "rpc-admin call calculator.add 1 2" in done.stdout
