"""Benchmark: LoRA training speed and peak memory of our engine against diffusers' own example script, per family.

    .venv/bin/python bench/train.py --diffusers DIR [--family sd|sdxl|flux|sd3|flux2|qwen_image|z_image|all]
                                    [--steps S] [--warmup W] [--batch-size B] [--resolution R] [--images N]
                                    [--rounds K] [--gpu-model sd3-medium] [--gradient-checkpointing] [--compile]

DIR is a checkout of diffusers (`git clone --depth 1 https://github.com/huggingface/diffusers`); its
`examples/dreambooth/train_dreambooth_lora_<family>.py` is the baseline, run unmodified: what a practitioner
runs to train a LoRA of that family. The benchmark never copies or edits the script; each contender runs in
its own subprocess (fresh allocator, its own peak memory) on the same base pipeline folder and the same images:

  ours:      training.engine.train.train, as a training job calls it (latents and prompt embeddings cached,
             text encoders released, previews and evaluation at the end only, outside the measured steps);
  diffusers: the family's script with its strongest flags: --cache_latents where it has it (SD's
             --pre_compute_text_embeddings), one instance prompt (so it encodes the prompt once and frees the
             text encoders, as ours does), --lora_layers set to our family's LoRA targets (the same trained
             modules), the same rank (alpha = rank), batch size, learning rate, constant schedule, seed,
             mixed precision, resolution, gradient checkpointing and T5 sequence length (FLUX.1, SD3).

Images: N square crops of real photographs (marketplace.core.photos) at the resolution, JPEG quality 90,
written as an instance folder (the script's input) and as one WebDataset shard whose captions are the same
instance prompt (ours). Square images make both sides train at resolution^2 pixels; nothing is held out
(holdout_fraction 0) and captions are never dropped, as in the script.

Timing: a torch optimizer step post-hook, installed in both children before the contender starts, stamps
each optimizer step (the device synchronised); steps/s = measured steps / the time between the end of the
warm-up's last step and the end of the last measured step. Peak memory: torch.cuda.max_memory_allocated up
to the last measured step (the whole job's load, caching and steps) on CUDA; the child's ru_maxrss on the
CPU. With --rounds K the contenders alternate K times; each one's fastest round and highest memory count.

On the CPU (no GPU): each family's tiny pipeline (training.engine.tiny), 64 px, batch 2, one torch thread:
small models where per-step overheads dominate, so the ratio says little about a GPU. With a GPU,
`--gpu-model sd3-medium` builds an SD3.5-medium-sized pipeline with random weights (the transformer at its
real size: the same FLOPs as trained weights, no download; its three text encoders cut to two layers each,
since both contenders encode the one prompt once and release them). The goal (issue 13): ours >= 1.3x the
script's steps/s at no more memory. Exit status is non-zero only on errors.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET_SPEED = 1.3
TARGET_MEMORY = 1.0  # ours / diffusers, at most
RANK = 16
LEARNING_RATE = 1e-4
SEED = 0
JPEG_QUALITY = 90
PROMPT = "a photo of sks subject, high resolution, natural light, sharp focus"
# family -> its diffusers example script (examples/dreambooth/) and the flags its strongest run takes.
SCRIPTS = {
    "sd": ("train_dreambooth_lora.py", ["--pre_compute_text_embeddings"]),
    "sdxl": ("train_dreambooth_lora_sdxl.py", []),
    "flux": ("train_dreambooth_lora_flux.py", ["--cache_latents", "--guidance_scale=1.0"]),
    "sd3": ("train_dreambooth_lora_sd3.py", ["--cache_latents"]),
    # The script's default Qwen3 layers (10, 20, 30) may differ from the installed pipeline's: use the pipeline's.
    "flux2": (
        "train_dreambooth_lora_flux2_klein.py",
        ["--cache_latents", "--text_encoder_out_layers", "9", "18", "27"],
    ),
    "qwen_image": ("train_dreambooth_lora_qwen_image.py", ["--cache_latents"]),
    "z_image": ("train_dreambooth_lora_z_image.py", ["--cache_latents"]),
}
# Scripts that take --lora_layers (the transformer families); SD/SDXL's scripts adapt to_k/q/v/out.0, as ours.
TAKES_LORA_LAYERS = {"flux", "sd3", "flux2", "qwen_image", "z_image"}
WEIGHTING = {"sd3": "logit_normal", "flux": "none", "flux2": "none", "qwen_image": "none", "z_image": "none"}

# Stable Diffusion 3.5 medium's transformer (stabilityai/stable-diffusion-3.5-medium, transformer/config.json).
SD35_MEDIUM_TRANSFORMER = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 24,
    "attention_head_dim": 64,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048,
    "pos_embed_max_size": 384,
    "dual_attention_layers": tuple(range(13)),
    "qk_norm": "rms_norm",
}
SD35_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 16,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 1.5305,
    "shift_factor": 0.0609,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}


# --- data and base models (parent process) ----------------------------------------------------------


def write_images(folder: Path, count: int, resolution: int) -> Path:
    """`count` square crops of real photos at `resolution`: an instance folder and one WebDataset shard."""
    from PIL import Image

    from marketplace.core.photos import PHOTOS, load_photo

    instance = folder / "instance"
    instance.mkdir(parents=True)
    rng = random.Random(SEED)
    names = list(PHOTOS)
    shard = folder / "data.tar"
    with tarfile.open(shard, "w") as archive:
        for index in range(count):
            photo = load_photo(names[index % len(names)]).convert("RGB")
            side = round(min(photo.size) * rng.uniform(0.85, 1.0))  # a different crop per image
            left, top = rng.randint(0, photo.width - side), rng.randint(0, photo.height - side)
            image = photo.crop((left, top, left + side, top + side)).resize(
                (resolution, resolution), Image.Resampling.LANCZOS
            )
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=JPEG_QUALITY)
            (instance / f"{index:06d}.jpg").write_bytes(buffer.getvalue())
            for name, data in ((f"{index:06d}.jpg", buffer.getvalue()), (f"{index:06d}.txt", PROMPT.encode())):
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(data), 1_700_000_000
                archive.addfile(info, io.BytesIO(data))
    return shard


def build_sd35_medium(folder: Path) -> Path:
    """An SD3.5-medium-sized pipeline with random weights (text encoders cut to two layers, see the docstring)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from training.engine.tokenizer import END_TOKEN, START_TOKEN, build_clip_tokenizer, build_t5_tokenizer

    clip_tokenizer = build_clip_tokenizer(folder.parent / "clip-tokenizer")
    t5_tokenizer = build_t5_tokenizer(folder.parent / "t5-tokenizer", max_length=256)
    ids = dict(
        bos_token_id=clip_tokenizer.convert_tokens_to_ids(START_TOKEN),
        eos_token_id=clip_tokenizer.convert_tokens_to_ids(END_TOKEN),
        pad_token_id=clip_tokenizer.convert_tokens_to_ids(END_TOKEN),
    )
    torch.manual_seed(SEED)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # random init on the GPU: seconds, not minutes
        transformer = SD3Transformer2DModel(**SD35_MEDIUM_TRANSFORMER)
        vae = AutoencoderKL(**SD35_VAE)
        clip_l = CLIPTextModelWithProjection(
            CLIPTextConfig(
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=2,
                num_attention_heads=12,
                projection_dim=768,
                hidden_act="quick_gelu",
                **ids,
            )
        )
        clip_g = CLIPTextModelWithProjection(
            CLIPTextConfig(
                hidden_size=1280,
                intermediate_size=5120,
                num_hidden_layers=2,
                num_attention_heads=20,
                projection_dim=1280,
                hidden_act="gelu",
                **ids,
            )
        )
        t5 = T5EncoderModel(
            T5Config(vocab_size=len(t5_tokenizer), d_model=4096, d_kv=64, d_ff=10240, num_layers=2, num_heads=64,
                     feed_forward_proj="gated-gelu", is_encoder_decoder=False)
        )  # fmt: skip
    pipeline = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=vae,
        text_encoder=clip_l,
        tokenizer=clip_tokenizer,
        text_encoder_2=clip_g,
        tokenizer_2=clip_tokenizer,
        text_encoder_3=t5,
        tokenizer_3=t5_tokenizer,
    )
    pipeline.to(torch.bfloat16)
    pipeline.save_pretrained(str(folder), safe_serialization=True)
    return folder


def t5_tokens(family: str, base: Path) -> int | None:
    """The T5 sequence length our engine trains FLUX.1 / SD3 with on this base (the variant's length, capped by
    the tokenizer's): the script is given the same, since its defaults differ (FLUX 512, SD3 77 where the SD3
    pipeline infers at 256) and text tokens are most of a tiny model's sequence."""
    from training.engine.families import family_class

    tokenizer = {"flux": "tokenizer_2", "sd3": "tokenizer_3"}.get(family)
    if tokenizer is None:
        return None
    limit = json.loads((base / tokenizer / "tokenizer_config.json").read_text()).get("model_max_length", 512)
    if family == "sd3":
        return min(family_class("sd3").max_sequence_length, limit)
    transformer = json.loads((base / "transformer" / "config.json").read_text())
    variant = family_class("flux").DEV if transformer.get("guidance_embeds") else family_class("flux").SCHNELL
    return min(variant["max_sequence_length"], limit)


def build_base(family: str, folder: Path, gpu_model: str | None) -> Path:
    if gpu_model == "sd3-medium":
        if family != "sd3":
            raise SystemExit("--gpu-model sd3-medium benchmarks the sd3 family only (--family sd3).")
        return build_sd35_medium(folder)
    from training.engine.tiny import build_tiny

    return build_tiny(family, folder)


# --- contenders (child processes) -------------------------------------------------------------------


class StepClock:
    """Stamps every optimizer step (a global post-hook), so both contenders are timed the same way."""

    def __init__(self, warmup: int, steps: int):
        import torch
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.torch = torch
        self.warmup, self.steps = warmup, steps
        self.stamps: list[float] = []
        self.peak_bytes = 0
        register_optimizer_step_post_hook(self.on_step)

    def on_step(self, *_):
        torch = self.torch
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())
        if len(self.stamps) == self.warmup + self.steps:
            self.peak_bytes = self.peak()

    def peak(self) -> int:
        if self.torch.cuda.is_available():
            return self.torch.cuda.max_memory_allocated()
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def report(self) -> dict:
        end = self.warmup + self.steps
        if len(self.stamps) < end:
            raise RuntimeError(f"only {len(self.stamps)} optimizer steps were taken, {end} expected")
        seconds = self.stamps[end - 1] - self.stamps[self.warmup - 1]
        return {"steps_per_second": self.steps / seconds, "seconds": seconds, "peak_bytes": self.peak_bytes}


def child(spec: dict) -> dict:
    import torch

    if not torch.cuda.is_available():
        torch.set_num_threads(1)
    clock = StepClock(spec["warmup"], spec["steps"])
    total = spec["warmup"] + spec["steps"]
    mixed = spec["mixed_precision"]
    if spec["contender"] == "ours":
        from training.engine.train import TrainConfig, train

        family = spec["family"]
        extra = {"timestep_density": WEIGHTING[family]} if family in WEIGHTING else {"snr_gamma": None}
        if family in WEIGHTING and WEIGHTING[family] == "none":
            extra["timestep_density"] = "uniform"
        config = TrainConfig(
            base_model=spec["base"],
            rank=RANK,
            alpha=RANK,
            learning_rate=LEARNING_RATE,
            max_steps=total,
            batch_size=spec["batch_size"],
            resolution=spec["resolution"],
            seed=SEED,
            mixed_precision=mixed,
            gradient_checkpointing=spec["gradient_checkpointing"],
            compile=spec["compile"],
            caption_dropout=0.0,
            holdout_fraction=0.0,
            checkpoint_every=total,
            validation_prompts=(PROMPT,),
            validation_steps=2,
            **extra,
        )
        train(config, [Path(spec["shard"])], Path(spec["output"]))
    else:
        import runpy

        script, flags = SCRIPTS[spec["family"]]
        argv = [
            script,
            f"--pretrained_model_name_or_path={spec['base']}",
            f"--instance_data_dir={spec['instance']}",
            f"--instance_prompt={PROMPT}",
            f"--output_dir={spec['output']}",
            f"--resolution={spec['resolution']}",
            f"--train_batch_size={spec['batch_size']}",
            f"--max_train_steps={total}",
            f"--checkpointing_steps={total * 10}",
            f"--learning_rate={LEARNING_RATE}",
            "--lr_scheduler=constant",
            "--lr_warmup_steps=0",
            f"--rank={RANK}",
            f"--seed={SEED}",
            f"--mixed_precision={mixed}",
            "--dataloader_num_workers=0",
            "--center_crop",
            *flags,
        ]
        if spec["family"] in WEIGHTING:
            argv.append(f"--weighting_scheme={WEIGHTING[spec['family']]}")
        if spec["family"] in TAKES_LORA_LAYERS:
            argv.append(f"--lora_layers={','.join(spec['lora_targets'])}")
        if spec["gradient_checkpointing"]:
            argv.append("--gradient_checkpointing")
        if spec["t5_tokens"]:
            argv.append(f"--max_sequence_length={spec['t5_tokens']}")
        sys.argv = argv
        runpy.run_path(str(Path(spec["diffusers"]) / "examples" / "dreambooth" / script), run_name="__main__")
    return clock.report()


def spawn(spec: dict, scratch: Path) -> dict:
    spec_path = scratch / f"spec-{spec['contender']}-{time.monotonic_ns()}.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(spec_path)], capture_output=True, text=True, env=env, check=False
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"{spec['contender']} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
        )
    return json.loads(lines[-1].removeprefix("RESULT "))


def bench_family(family: str, args, scratch: Path) -> dict:
    import torch

    from training.engine.families import family_class

    on_gpu = torch.cuda.is_available()
    folder = scratch / family
    folder.mkdir()
    base = build_base(family, folder / "base", args.gpu_model)
    shard = write_images(folder, args.images, args.resolution)
    spec = {
        "family": family,
        "base": str(base),
        "shard": str(shard),
        "instance": str(folder / "instance"),
        "diffusers": str(args.diffusers),
        "warmup": args.warmup,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "resolution": args.resolution,
        "mixed_precision": "bf16" if on_gpu else "no",
        "gradient_checkpointing": args.gradient_checkpointing,
        "compile": args.compile,
        "lora_targets": list(family_class(family).lora_targets),
        "t5_tokens": t5_tokens(family, base),
    }
    best: dict[str, dict] = {}
    for round_number in range(args.rounds):
        for contender in ("ours", "diffusers"):
            output = folder / f"out-{contender}-{round_number}"
            measured = spawn({**spec, "contender": contender, "output": str(output)}, scratch)
            kept = best.get(contender)
            if kept is None or measured["steps_per_second"] > kept["steps_per_second"]:
                measured["peak_bytes"] = max(measured["peak_bytes"], kept["peak_bytes"] if kept else 0)
                best[contender] = measured
            else:
                kept["peak_bytes"] = max(kept["peak_bytes"], measured["peak_bytes"])
    ours, theirs = best["ours"], best["diffusers"]
    return {
        "family": family,
        "ours": ours,
        "diffusers": theirs,
        "speed_ratio": ours["steps_per_second"] / theirs["steps_per_second"],
        "memory_ratio": ours["peak_bytes"] / theirs["peak_bytes"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child")
    parser.add_argument("--diffusers", type=Path, help="a checkout of github.com/huggingface/diffusers")
    parser.add_argument("--family", default="all", choices=["all", *SCRIPTS])
    parser.add_argument("--steps", type=int)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--resolution", type=int)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--gpu-model", choices=["sd3-medium"])
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    if args.child:
        result = child(json.loads(Path(args.child).read_text()))
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    import torch

    if args.diffusers is None or not (args.diffusers / "examples" / "dreambooth").is_dir():
        parser.error(
            "--diffusers must name a checkout of diffusers (git clone https://github.com/huggingface/diffusers)"
        )
    on_gpu = torch.cuda.is_available()
    args.steps = args.steps or (20 if on_gpu else 10)
    args.warmup = args.warmup or (5 if on_gpu else 3)
    args.batch_size = args.batch_size or (1 if on_gpu else 2)
    args.resolution = args.resolution or (1024 if on_gpu else 64)
    families = list(SCRIPTS) if args.family == "all" else [args.family]
    where = torch.cuda.get_device_name() if on_gpu else "CPU, one torch thread"
    print(f"LoRA training, ours vs diffusers' example scripts; {where}; {args.resolution} px, batch {args.batch_size}, "
          f"rank {RANK}, {args.warmup} warm-up + {args.steps} measured steps, best of {args.rounds}")  # fmt: skip
    columns = ("ours steps/s", 13), ("diffusers", 10), ("ratio", 6), ("ours MiB", 9), ("diffusers", 10), ("ratio", 6)
    print(f"{'family':<11} " + " ".join(f"{name:>{width}}" for name, width in columns))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as scratch:
        for family in families:
            try:
                row = bench_family(family, args, Path(scratch))
            except RuntimeError as error:
                print(f"{family:<11} failed: {str(error).splitlines()[0]}")
                print(str(error)[-2000:], file=sys.stderr)
                continue
            rows.append(row)
            ours, theirs = row["ours"], row["diffusers"]
            print(
                f"{family:<11} {ours['steps_per_second']:>13.2f} {theirs['steps_per_second']:>10.2f} "
                f"{row['speed_ratio']:>5.2f}x {ours['peak_bytes'] / 2**20:>9.0f} {theirs['peak_bytes'] / 2**20:>10.0f} "
                f"{row['memory_ratio']:>5.2f}x",
                flush=True,
            )
    if on_gpu:
        for row in rows:
            verdict = row["speed_ratio"] >= TARGET_SPEED and row["memory_ratio"] <= TARGET_MEMORY
            print(f"{row['family']}: target >= {TARGET_SPEED}x speed at <= {TARGET_MEMORY}x memory: "
                  f"{'met' if verdict else 'NOT met'}")  # fmt: skip
    print("JSON " + json.dumps(rows))
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
