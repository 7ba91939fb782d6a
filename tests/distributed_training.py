"""One process of a data-parallel training run, started by tests/test_training_distributed.py through
`accelerate launch --cpu --num_processes 2`: trains, then writes what it holds to report-<rank>.json."""

import hashlib
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.engine.train import Callbacks, TrainConfig, _Run  # noqa: E402


def main() -> None:
    base, shard, output, report = (Path(arg) for arg in sys.argv[1:5])
    torch.set_num_threads(1)
    config = TrainConfig(
        base_model=str(base), resolution=64, batch_size=2, max_steps=6, learning_rate=1e-3, checkpoint_every=3,
        validation_prompts=("a photo of a cat",), validation_steps=2, holdout_fraction=0.2,
    )  # fmt: skip
    steps = []
    run = _Run(config, [shard], output, Callbacks(on_step=lambda step, *_: steps.append(step)))
    result = run.run()
    weights = hashlib.sha256()
    for name, parameter in sorted(run.params.items()):
        weights.update(name.encode() + parameter.detach().cpu().numpy().tobytes())
    (report / f"report-{run.processes.rank}.json").write_text(
        json.dumps(
            {
                "rank": run.processes.rank,
                "world": run.processes.world,
                "steps_reported": steps,
                "final_step": result.final_step,
                "usage": result.usage,
                "lora_path": str(result.lora_path) if result.lora_path else None,
                "weights": weights.hexdigest(),
                "holdout": result.holdout_keys,
            }
        )
    )


if __name__ == "__main__":
    main()
