"""`make run` on a machine that cannot reach the model hub, end to end, in real processes: seed_demo and
runall with DEMO_OFFLINE_MODELS (as the Makefile starts them), curation with the announced stand-in
model publishes the demo pack, a buyer's licence, a demo training run launched through the API on the
tiny Stable Diffusion that seed_demo built, then the worker process killed mid-run (SIGKILL, no chance
to clean up) and `runall` started again: the run resumes from its checkpoint and finishes with the
same final step and weights close to an uninterrupted run with the same seed.
"""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.process_helpers import ROOT, flush_redis_queue, free_port, manage, marketplace_env, wait_for

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword"),
]

STEPS, CHECKPOINT_EVERY = 40, 8

# A paid licence of the demo pack for the demo buyer (paying through the fake Stripe is tested in
# test_browser_purchase; here the subject is training). Prints the licence id.
GRANT_LICENCE = """
from django.utils import timezone
from marketplace.accounts.models import User
from marketplace.commerce.models import Order, PackLicence
from marketplace.packs.models import PackVersion
version = PackVersion.objects.get(pack__slug="demo-everyday")
buyer = User.objects.get(username="buyer")
order = Order.objects.create(buyer=buyer, version=version, amount_cents=version.price_cents, currency="usd",
                             status=Order.Status.PAID, paid_at=timezone.now())
licence = PackLicence.objects.create(order=order, buyer=buyer, version=version, terms=version.licence_terms,
                                     manifest_sha256=version.manifest_sha256)
print(licence.pk)
"""


class Marketplace:
    """`manage.py runall` in its own session, its output in a log file."""

    def __init__(self, env, log_path: Path):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "runall", "--addr", f"127.0.0.1:{self.port}", "--concurrency", "2"],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_for(self.answers, timeout=120, what=f"the web server ({self.output()})")

    def answers(self) -> bool:
        try:
            return requests.get(self.base + "/", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    def output(self) -> str:
        return self.log_path.read_text()

    def worker_pid(self) -> int:
        """The Celery worker's main process (runall starts it in a session of its own: pgid = pid)."""
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            for pid in (task / "children").read_text().split():
                if b"celery" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return int(pid)
        raise AssertionError("runall has no Celery worker child")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        code = self.process.wait(timeout=60)
        self.log.close()
        return code


@pytest.fixture
def offline_env(tmp_path):
    env = marketplace_env(
        tmp_path / "var",
        redis_db=10,
        DEMO_OFFLINE_MODELS="true",
        HF_HUB_OFFLINE="1",  # the model hub is out of reach (and no test touches the network)
        TRAINING_DEVICE="cpu",
        TRAINING_LEASE_SECONDS="3",  # a killed worker's run is stale after 3 s
        TRAINING_RECOVERY_INTERVAL_SECONDS="2",
    )
    flush_redis_queue(env)
    yield env
    flush_redis_queue(env)


def test_make_run_offline_trains_the_demo_pack_and_a_killed_worker_resumes(offline_env, tmp_path):
    manage(offline_env, "migrate", "--noinput", "-v", "0")
    seeded = manage(offline_env, "seed_demo")
    tiny_sd = Path(offline_env["VAR_DIR"]) / "models" / "tiny-sd"
    assert f"Demo base model for training (a tiny Stable Diffusion): {tiny_sd}" in seeded
    assert (tiny_sd / "model_index.json").is_file()

    first = Marketplace(offline_env, tmp_path / "runall-1.log")
    try:
        # The stand-in is announced with the setting that would give real curation.
        assert "The demo curates with a tiny CLIP trained on the demo photos" in first.output()
        assert "CURATION_CLIP_PRETRAINED" in first.output()
        # Curation passes the demo photos and the demo pack publishes itself.
        wait_for(
            lambda: "v1" in requests.get(first.base + "/packs/demo-everyday/", timeout=5).text,
            timeout=120,
            what="the demo pack to publish",
        )
        licence_id = manage(offline_env, "shell", "-c", GRANT_LICENCE).strip().splitlines()[-1]
        token = requests.post(
            first.base + "/api/auth/token/", data={"username": "admin", "password": "admin-demo-pass"}, timeout=10
        ).json()["token"]
        api = requests.Session()
        api.headers["Authorization"] = f"Token {token}"
        launched = api.post(
            first.base + "/api/training-runs/",
            json={
                "licence": licence_id,
                "preset": "demo",
                "hyperparameters": {"max_steps": STEPS, "checkpoint_every": CHECKPOINT_EVERY, "validation_every": 0},
            },
            timeout=30,
        )
        assert launched.status_code == 201, launched.text
        run = launched.json()
        assert run["base_model"] == str(tiny_sd) and run["config"]["resolution"] == 64
        run_url = f"{first.base}/api/training-runs/{run['id']}/"
        progress = wait_for(
            lambda: (state := api.get(run_url, timeout=10).json())["step"] > CHECKPOINT_EVERY and state,
            timeout=180,
            interval=0.2,
            what="the run to pass its first checkpoint",
        )
        assert progress["status"] == "running" and progress["step"] < STEPS
        first_worker = progress["worker_host"]
        os.killpg(first.worker_pid(), signal.SIGKILL)  # the worker and its pool process, mid-run
        assert first.process.wait(timeout=60) != 0  # runall stops everything when its worker dies
        assert "The worker process exited" in first.output()
    finally:
        first.stop()

    second = Marketplace(offline_env, tmp_path / "runall-2.log")
    try:
        api_url = f"{second.base}/api/training-runs/{run['id']}/"
        finished = wait_for(
            lambda: (state := api.get(api_url, timeout=10).json())["status"] in ("succeeded", "failed") and state,
            timeout=240,
            what="the run to finish after the restart",
        )
    finally:
        assert second.stop() == 0, second.output()
    assert finished["status"] == "succeeded", finished["error"] + finished["log_tail"]
    assert finished["step"] == STEPS
    assert finished["worker_host"] != first_worker  # another worker process took the run over
    resumed_at = re.search(r"Resumed from checkpoint-(\d+) at step (\d+)", finished["log_tail"])
    assert resumed_at, finished["log_tail"]
    assert int(resumed_at[2]) % CHECKPOINT_EVERY == 0 and 0 < int(resumed_at[2]) < STEPS
    assert f"Succeeded at step {STEPS}" in finished["log_tail"]
    # Evaluated: one demo photo held out, its loss measured from step 0 (the base model) at every checkpoint,
    # the delivered weights marked, and the LoRA delivered in both formats.
    assert finished["family"] == "sd" and len(finished["holdout_keys"]) == 1
    evaluated = [e["step"] for e in finished["evaluations"] if e["validation_loss"] is not None]
    assert evaluated[0] == 0 and evaluated[-1] == STEPS and len(evaluated) >= 3
    assert [e["step"] for e in finished["evaluations"] if e.get("best")] == [finished["best_step"]]
    assert set(finished["files"]) == {"lora", "kohya", "grid", "card"}

    # The same run, uninterrupted, in this process: same seed, same data, same config.
    from safetensors.torch import load_file

    from training.engine.train import TrainConfig, train

    var = Path(offline_env["VAR_DIR"])
    shards = sorted((var / "training" / str(run["id"]) / "data").glob("*.tar"))
    assert shards
    reference = train(TrainConfig(**{**finished["config"], "device": "cpu"}), shards, tmp_path / "uninterrupted")
    resumed = load_file(next((var / "media" / "training" / str(run["id"])).glob("pytorch_lora_weights*.safetensors")))
    expected = load_file(str(reference.lora_path))
    # The usage on record is the uninterrupted run's: nothing counted twice across the restart.
    assert sum(row["times_seen"] for row in finished["usage_by_creator"]) == sum(reference.usage.values())
    assert resumed.keys() == expected.keys()
    for name, tensor in expected.items():
        assert (resumed[name] - tensor).abs().max() < 1e-4, name
