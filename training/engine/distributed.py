"""Data parallel training over several processes (one per GPU), started by `accelerate launch --multi_gpu
--num_processes N` (or `torchrun --nproc_per_node N`); accelerate sets the processes up.

Every process holds the whole model and trains on its own batches; after each optimizer step's micro-batches
the LoRA gradients are averaged over the processes (one all-reduce of their concatenation: LoRA weights are
small, so DDP's bucketing and overlap buy little), so every process takes the same step and holds the same
weights. Process 0 alone writes checkpoints and outputs, evaluates and reports; the others wait for it.

With one process (no WORLD_SIZE in the environment, the Celery worker's case) every method is a no-op.
"""

from __future__ import annotations

import os


class Processes:
    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = 0
        self.state = None
        if self.world > 1:
            import torch
            from accelerate import PartialState

            # Sets up torch.distributed from accelerate's / torchrun's environment: NCCL between GPUs, gloo on CPUs.
            self.state = PartialState(cpu=not torch.cuda.is_available())
            self.rank, self.world = self.state.process_index, self.state.num_processes

    @classmethod
    def single(cls) -> Processes:
        """A view of one process alone: its collective calls are no-ops."""
        alone = cls.__new__(cls)
        alone.world, alone.rank, alone.state = 1, 0, None
        return alone

    def agree(self, flag: bool) -> bool:
        """Process 0's decision (to stop), the same in every process."""
        if self.world == 1:
            return flag
        import torch.distributed as dist

        decision = [flag]
        dist.broadcast_object_list(decision, src=0)
        return bool(decision[0])

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def device(self):
        """This process's device when several train together (its own GPU), else None: the config decides."""
        return self.state.device if self.state is not None else None

    def wait(self) -> None:
        if self.world > 1:
            self.state.wait_for_everyone()

    def average_gradients(self, parameters) -> None:
        """Every process's gradients replaced by their mean over the processes."""
        if self.world == 1:
            return
        import torch
        import torch.distributed as dist

        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
            offset += grad.numel()

    def mean(self, value: float) -> float:
        """`value` averaged over the processes (the logged loss)."""
        if self.world == 1:
            return value
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return float(tensor.item()) / self.world

    def summed_counts(self, counts: dict[str, int]) -> dict[str, int]:
        """Per-key counts (usage) summed over the processes."""
        if self.world == 1:
            return dict(counts)
        import torch.distributed as dist

        gathered: list = [None] * self.world
        dist.all_gather_object(gathered, counts)
        total: dict[str, int] = {}
        for part in gathered:
            for key, count in part.items():
                total[key] = total.get(key, 0) + count
        return total
