"""The production set-up on loopback, as separate processes: what the smoke test starts and talks to.

Each service is the real program a deployment runs (gunicorn, Celery workers, moto's S3 server, the fake
Stripe), configured only through environment variables, with its output kept in a log file that a failing
test prints. PostgreSQL and Redis are the machine's own; the stack takes a database and a Redis database
of its own and removes them afterwards.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.commerce_helpers import free_port

ROOT = Path(__file__).resolve().parent.parent.parent
PYTHON = sys.executable
POSTGRES = "postgres://postgres@127.0.0.1:5432"
REDIS = "redis://127.0.0.1:6379"
REDIS_DB = 13  # the suite's PostgreSQL pass uses 0 and 1
QUEUES = ("celery", "curation", "exports", "training")


def answers(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Stack:
    def __init__(self, folder: Path, extra_env: dict[str, str]):
        self.folder = folder
        self.logs = folder / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.processes: dict[str, subprocess.Popen] = {}
        self.database = f"smoke_{secrets.token_hex(4)}"
        self.web_url = f"http://127.0.0.1:{free_port()}"
        self.s3_url = f"http://127.0.0.1:{free_port()}"
        self.stripe_url = f"http://127.0.0.1:{free_port()}"
        self.bucket = "smoke-media"
        inherited = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("DATABASE_", "CELERY_", "CACHE_", "STRIPE_", "MEDIA_", "AWS_", "CURATION_"))
        }
        self.env = {
            **inherited,
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1",
            "DEBUG": "false",
            "SECRET_KEY": secrets.token_urlsafe(50),
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "SITE_URL": self.web_url,
            # TLS ends at the load balancer in front of gunicorn; here the test talks plain HTTP to it.
            "SECURE_SSL_REDIRECT": "false",
            "VAR_DIR": str(folder / "var"),
            "DATABASE_URL": f"{POSTGRES}/{self.database}",
            "CELERY_BROKER_URL": f"{REDIS}/{REDIS_DB}",
            "CACHE_URL": f"{REDIS}/{REDIS_DB + 1}",
            "MEDIA_S3_BUCKET": self.bucket,
            "MEDIA_S3_ENDPOINT_URL": self.s3_url,
            "MEDIA_S3_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "smoke-key",
            "AWS_SECRET_ACCESS_KEY": "smoke-secret",
            "PAYMENTS_MODE": "fake",
            "LOCALSTRIPE_URL": self.stripe_url,
            "STRIPE_WEBHOOK_SECRET": "whsec_smoke",
            "CURATION_DEVICE": "cpu",
            "CURATION_BATCH_WAIT_SECONDS": "1",
            **extra_env,
        }

    # --- processes ---------------------------------------------------------------------------

    def start(self, name: str, command: list[str], **extra_env: str) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**self.env, **extra_env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        process.log_file = log
        self.processes[name] = process
        return process

    def manage(self, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [PYTHON, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        assert result.returncode == 0, f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        return result

    def wait_for(self, name: str, url: str, *, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            process = self.processes.get(name)
            if process is not None and process.poll() is not None:
                raise AssertionError(f"{name} exited ({process.returncode}):\n{self.log_tail(name)}")
            try:
                requests.get(url, timeout=10)
                return
            except (requests.ConnectionError, requests.Timeout):
                time.sleep(0.3)
        raise AssertionError(f"{name} did not answer at {url} within {timeout} s:\n{self.log_tail(name)}")

    def log_text(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def log_tail(self, name: str, chars: int = 4000) -> str:
        return self.log_text(name)[-chars:]

    def all_log_tails(self) -> str:
        return "\n".join(f"--- {name} ---\n{self.log_tail(name, 2500)}" for name in self.processes)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)  # Celery: warm shutdown; gunicorn: graceful
        deadline = time.monotonic() + 30
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            process.log_file.close()

    # --- PostgreSQL and Redis: the machine's own, with a database of our own -----------------

    def create_database(self) -> None:
        import psycopg

        with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{self.database}"')

    def drop_database(self) -> None:
        import psycopg

        with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    def flush_redis(self) -> None:
        import redis

        for db in (REDIS_DB, REDIS_DB + 1):
            redis.Redis.from_url(f"{REDIS}/{db}").flushdb()

    def queue_depths(self) -> dict[str, int]:
        import redis

        client = redis.Redis.from_url(f"{REDIS}/{REDIS_DB}")
        return {queue: client.llen(queue) for queue in QUEUES}
