"""Run the web server and a Celery worker together; Ctrl-C stops both cleanly."""

import json
import os
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.urls import reverse

from marketplace.commerce import embedded


class Command(BaseCommand):
    help = "Start the web server and a Celery worker; stop both on Ctrl-C or when either exits."

    def add_arguments(self, parser):
        parser.add_argument("--addr", default="127.0.0.1:8000", help="Address for the web server.")
        parser.add_argument("--concurrency", type=int, default=2, help="Worker processes.")

    def handle(self, *args, addr, concurrency, **options):
        python = sys.executable
        commands = {
            "web": [python, "manage.py", "runserver", addr, "--noreload"],
            "worker": [
                python, "-m", "celery", "-A", "marketplace", "worker",
                "--loglevel=INFO", f"--concurrency={concurrency}", f"--queues={','.join(settings.WORKER_QUEUES)}",
                # One machine: this worker also runs the periodic tasks (payouts).
                "--beat", f"--schedule={settings.VAR_DIR / 'celerybeat-schedule'}",
            ],
        }  # fmt: skip
        # Each pool process gets its share of the cores for torch and numpy: left alone, every
        # process starts one thread per core and they crawl, fighting over them.
        env = {**os.environ}
        share = str(max(1, (os.cpu_count() or 1) // concurrency))
        env.setdefault("OMP_NUM_THREADS", share)
        env.setdefault("OPENBLAS_NUM_THREADS", share)
        if settings.DEMO_OFFLINE_MODELS:
            self._offline_stand_ins(env)
        # Children get their own session: this process alone decides how they stop.
        children = {}
        if settings.PAYMENTS_MODE == "fake":
            # Payments go to localstripe, a fake Stripe on this machine.
            children["localstripe"] = embedded.start_localstripe(
                settings.LOCALSTRIPE_URL,
                data_file=settings.VAR_DIR / "localstripe.pickle",
                cwd=settings.BASE_DIR,
                env=env,
            )
            try:
                embedded.wait_until_up(settings.LOCALSTRIPE_URL)
                embedded.register_webhook(
                    settings.LOCALSTRIPE_URL,
                    webhook_url=f"http://{addr}{reverse('commerce:stripe-webhook')}",
                    secret=settings.STRIPE_WEBHOOK_SECRET,
                )
            except BaseException:  # Ctrl-C or a failure before the loop below: it must not outlive us
                children["localstripe"].terminate()
                children["localstripe"].wait(timeout=30)
                raise
            self.stdout.write(f"Fake Stripe (localstripe) on {settings.LOCALSTRIPE_URL}: pay with 4242 4242 4242 4242")
        for name, cmd in commands.items():
            children[name] = subprocess.Popen(cmd, cwd=settings.BASE_DIR, start_new_session=True, env=env)
        stopping = False

        def stop(signum=None, frame=None):
            nonlocal stopping
            if stopping:
                return
            stopping = True
            self.stdout.write(f"\nStopping {', '.join(children)}…")
            for child in children.values():
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)  # Celery: warm shutdown, finishes its task

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        self.stdout.write(self.style.SUCCESS(f"Marketplace on http://{addr}/ (Ctrl-C stops it)"))
        exit_code = 0
        while not stopping:
            for name, child in children.items():
                if child.poll() is not None:
                    self.stderr.write(f"The {name} process exited ({child.returncode}); stopping.")
                    exit_code = child.returncode or 1
                    stop()
                    break
            time.sleep(0.5)
        deadline = time.monotonic() + 30
        for child in children.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self.stdout.write("Stopped.")
        sys.exit(exit_code)

    def _offline_stand_ins(self, env: dict) -> None:
        """No curation weights to be had here: the demo curates with a tiny CLIP trained on its photos."""
        self.stdout.write("Checking that the curation model can be loaded here…")
        checked = subprocess.run(
            [sys.executable, "manage.py", "curation_stand_in"],
            cwd=settings.BASE_DIR, env=env, capture_output=True, text=True,
        )  # fmt: skip
        if checked.returncode != 0:
            raise CommandError(f"Checking the curation model failed:\n{checked.stderr[-3000:]}")
        outcome = json.loads(checked.stdout.strip().splitlines()[-1])
        if outcome["problem"] is None:
            return
        env.update(outcome["env"])
        self.stdout.write(
            self.style.WARNING(
                f"{outcome['problem']}\nThe demo curates with a tiny CLIP trained on the demo photos instead: "
                "captions come from its phrase bank and search knows only the demo photos. For real curation, set "
                "CURATION_CLIP_PRETRAINED to a local checkpoint (or give this machine access to the model hub)."
            )
        )
