"""Running the marketplace as `make run` does, in subprocesses of a test: its own var/ folder, SQLite
database and broker queue, a free port for the fake Stripe, and polling until something happens."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout=60, interval=0.5, what="the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def marketplace_env(var_dir: Path, *, redis_db: int = 9, **extra: str) -> dict:
    """Environment for `manage.py` subprocesses: SQLite and media under var_dir, DEBUG, the broker of this
    test run (a Redis queue of its own when the suite runs on Redis), localstripe on a free port."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CACHE_URL")}
    env.update({"VAR_DIR": str(var_dir), "DEBUG": "true", "PYTHONUNBUFFERED": "1"})
    env["LOCALSTRIPE_URL"] = f"http://127.0.0.1:{free_port()}"  # not 8420: `make run` may be using it
    if env.get("CELERY_BROKER_URL", "").startswith("redis://"):
        env["CELERY_BROKER_URL"] = env["CELERY_BROKER_URL"].rsplit("/", 1)[0] + f"/{redis_db}"
    env.update(extra)
    return env


def manage(env: dict, *args: str, timeout: int = 300) -> str:
    """Run a management command to its end; its output."""
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def flush_redis_queue(env: dict) -> None:
    """Empty the Redis database this test's broker uses, so no message outlives the test (none to flush on
    the filesystem broker: its folder is the test's)."""
    url = env.get("CELERY_BROKER_URL", "")
    if url.startswith("redis://"):
        import redis

        redis.Redis.from_url(url).flushdb()
