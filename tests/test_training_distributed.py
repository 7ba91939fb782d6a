"""Data parallel training through accelerate: two processes on the CPU (gloo), as a multi-GPU worker runs it."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_train_one_lora_on_twice_the_data_per_step(tiny_base, shard, tmp_path):
    """Each process trains on its own batches, the gradients are averaged, so both end with the same weights;
    process 0 alone reports, checkpoints and delivers; the usage counts are the two processes' together."""
    report = tmp_path / "report"
    report.mkdir()
    # torchrun starts the two processes (accelerate's own launcher wants GPUs or MPI for several); accelerate sets
    # them up (gloo on the CPU), as `accelerate launch --multi_gpu` does on a GPU machine.
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "--master_port", str(_free_port()),
         str(ROOT / "tests" / "distributed_training.py"), str(tiny_base), str(shard), str(tmp_path / "run"),
         str(report)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    first, second = (json.loads((report / f"report-{rank}.json").read_text()) for rank in (0, 1))
    assert first["world"] == second["world"] == 2
    assert first["weights"] == second["weights"]  # the same steps in both: the gradients were averaged
    assert first["final_step"] == second["final_step"] == 6
    assert first["steps_reported"] == [1, 2, 3, 4, 5, 6] and second["steps_reported"] == []  # process 0 reports
    assert first["lora_path"] and second["lora_path"] is None  # process 0 delivers
    assert (tmp_path / "run" / "pytorch_lora_weights.safetensors").is_file()
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint-00000003", "checkpoint-00000006"]
    # Two batches a step (one per process) over five training images: every one seen, fairly.
    usage = first["usage"]
    assert usage == second["usage"] and set(usage) == {
        "astronaut",
        "coffee",
        "chelsea",
        "rocket",
        "motorcycle",
        "hubble",
    } - set(first["holdout"])
    assert sum(usage.values()) > 6 * 2 and max(usage.values()) - min(usage.values()) <= 2
