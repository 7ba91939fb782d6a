"""Benchmark: LoRA training throughput and peak memory of our engine against a plain reference loop.

    .venv/bin/python bench/train.py [--steps S] [--warmup W] [--batch-size B] [--resolution R]
                                    [--images N] [--rounds K] [--mixed-precision fp16|bf16]
                                    [--device auto|cpu|cuda[:N]]

Builds N training images from real photographs (marketplace.core.photos: scikit-image's photos, each a
slightly different crop at its own aspect ratio, shorter side 1.5x the resolution, JPEG quality 90) with
captions of realistic length (30 to 45 words), written as one WebDataset tar shard (<key>.jpg/.txt/.json).
Then, each in its own subprocess (fresh allocator, its own peak memory), on the same shard and pipeline:

  (a) ours:      training.engine.train.train, as a training job calls it: VAE latents and text embeddings
                 computed once and cached, aspect-ratio buckets, SDPA attention, autocast on the GPU;
  (b) reference: a plain loop equivalent to diffusers' examples/text_to_image/train_text_to_image_lora.py:
                 the VAE encodes every batch and the text encoder runs on every batch's tokens, each step;
                 frozen models in the autocast dtype, fp16 autocast + GradScaler on the GPU, as accelerate's
                 `--mixed_precision fp16` does.

Both sides use the same LoRA (peft, rank 16, alpha 16, gaussian init, targets to_k/to_q/to_v/to_out.0 of the
UNet, fp32 LoRA weights), AdamW (lr 1e-4, betas 0.9/0.999, weight decay 1e-2, eps 1e-8), a constant LR, gradient
clipping at 1.0, the pipeline's DDPMScheduler (epsilon), uniform timesteps, plain MSE loss: min-SNR weighting
is OFF in both (the reference script's default; the engine's default of 5.0 is overridden), caption dropout off
in both, no gradient checkpointing, no torch.compile, no xformers (SDPA in both), the same batch size.
What differs by design, and is what the engine is for: (1) the engine caches latents and text embeddings, the
reference recomputes them every step; (2) the engine buckets images by aspect ratio at about resolution^2
pixels (the bucket pixel count is printed next to the reference's square crop), the reference resizes and
centre-crops to a square; (3) the engine takes the VAE latent's mode, the reference samples it.
The reference is given every advantage on data loading: its images are decoded, resized and cropped to
tensors before the clock starts (the script decodes in its DataLoader every step); it tokenizes every step.

Warm-up steps are not counted; images/s = measured steps x batch size / their wall time (the device
synchronised at both ends); with --rounds K the contenders alternate K times and each one's fastest round
counts (its highest memory). Peak memory: torch.cuda.max_memory_allocated of the whole job up to the last
measured step (model load, caching, warm-up, measured steps; the engine's final sample image is excluded),
and of the measured steps alone. On the GPU (512 px, batch 8): a UNet, VAE and CLIP text encoder of Stable
Diffusion 1.5's sizes with random weights (the same FLOPs as trained ones, no download), saved as a pipeline
folder the engine loads like any base model. The target (issue): ours >= 1.5x the reference's images/s at no
more memory. Without CUDA it runs a scaled-down version so the script stays tested: the tiny pipeline
(training.engine.tiny), 64 px, batch 4, one torch thread, peak memory as each child's ru_maxrss, ratio by
CPU time (the machine is shared); the 1.5x target applies to the GPU. Exit status is non-zero only on errors.
"""

from __future__ import annotations

import argparse
import io
import json
import math
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

from PIL import Image  # noqa: E402

from marketplace.core.photos import PHOTOS, load_photo  # noqa: E402
from training.engine.data import bucket_multiple, bucket_sizes, nearest_bucket  # noqa: E402
from training.engine.train import MAX_GRAD_NORM, UNET_TARGET_MODULES  # noqa: E402

TARGET_SPEED = 1.5
TARGET_MEMORY = 1.0  # ours / reference, at most
RANK = 16
ALPHA = 16
LEARNING_RATE = 1e-4
SEED = 0
JPEG_QUALITY = 90

# Stable Diffusion 1.5's component configs (runwayml/stable-diffusion-v1-5), built with random weights.
SD15_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
SD15_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
SD15_TEXT = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}
SD15_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "prediction_type": "epsilon",
    "steps_offset": 1,
}

SUBJECTS = {
    "astronaut": "an astronaut in a white spacesuit posing beside the American flag",
    "coffee": "a cup of black coffee on a saucer with a silver spoon",
    "chelsea": "a tabby cat with green eyes sitting on a wooden floor",
    "rocket": "a rocket standing on the launch pad against a clear sky",
    "motorcycle": "a sport motorcycle parked in a workshop next to tools",
    "hubble": "a deep field of distant galaxies scattered across black space",
    "retina": "a fundus photograph of a human retina with branching blood vessels",
}
STYLES = (
    "soft natural light, shallow depth of field, sharp focus on the subject",
    "warm evening colours, gentle shadows, high dynamic range, fine detail",
    "studio lighting, neutral background, crisp textures and accurate colours",
    "documentary style, slight film grain, balanced exposure, wide framing",
)
CAMERAS = ("a full-frame mirrorless camera", "a medium-format camera", "a 50 mm prime lens", "a telephoto lens")


# --- data and pipeline (parent process) -------------------------------------------------------------


def caption(name: str, index: int) -> str:
    return (
        f"a high resolution photograph of {SUBJECTS[name]}, {STYLES[index % len(STYLES)]}, "
        f"shot with {CAMERAS[index // len(STYLES) % len(CAMERAS)]}, professional stock photo, "
        f"detailed, realistic, variant {index}"
    )


def build_shard(path: Path, count: int, resolution: int) -> list[tuple[int, int]]:
    """Write `count` photo samples into one WebDataset tar; returns their (width, height)."""
    names = list(PHOTOS)
    photos = {name: load_photo(name) for name in names}
    rng = random.Random(SEED)
    sizes = []
    with tarfile.open(path, "w") as archive:
        for index in range(count):
            name = names[index % len(names)]
            photo = photos[name]
            # A different crop (88-100 % of each side) per sample, so every image is distinct.
            keep_w, keep_h = rng.uniform(0.88, 1.0), rng.uniform(0.88, 1.0)
            width, height = round(photo.width * keep_w), round(photo.height * keep_h)
            left, top = rng.randint(0, photo.width - width), rng.randint(0, photo.height - height)
            image = photo.crop((left, top, left + width, top + height))
            scale = resolution * 1.5 / min(image.size)
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
            sizes.append(image.size)
            out = io.BytesIO()
            image.save(out, "JPEG", quality=JPEG_QUALITY)
            key = f"{index:06d}"
            members = {
                "jpg": out.getvalue(),
                "txt": caption(name, index).encode(),
                "json": json.dumps({"key": key, "photo": name}).encode(),
            }
            for extension, data in members.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size, info.mtime = len(data), 1_700_000_000
                archive.addfile(info, io.BytesIO(data))
    return sizes


def build_sd15_pipeline(folder: Path) -> None:
    """An SD 1.5-sized pipeline with random weights, saved where the engine loads it as base_model."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from training.engine.tokenizer import END_TOKEN, START_TOKEN, build_clip_tokenizer

    tokenizer = build_clip_tokenizer(folder.parent / "tokenizer-src")
    torch.manual_seed(SEED)
    pipeline = StableDiffusionPipeline(
        vae=AutoencoderKL(**SD15_VAE),
        text_encoder=CLIPTextModel(
            CLIPTextConfig(
                **SD15_TEXT,
                bos_token_id=tokenizer.convert_tokens_to_ids(START_TOKEN),
                eos_token_id=tokenizer.convert_tokens_to_ids(END_TOKEN),
                pad_token_id=tokenizer.convert_tokens_to_ids(END_TOKEN),
            )
        ),
        tokenizer=tokenizer,
        unet=UNet2DConditionModel(**SD15_UNET),
        scheduler=DDPMScheduler(**SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(str(folder), safe_serialization=True)


def bucket_pixel_ratio(sizes: list[tuple[int, int]], resolution: int, folder: Path) -> float:
    """Mean pixels of the engine's buckets for these images, relative to the reference's resolution^2 crop."""
    vae_blocks = len(json.loads((folder / "vae" / "config.json").read_text())["block_out_channels"])
    unet_blocks = len(json.loads((folder / "unet" / "config.json").read_text())["block_out_channels"])
    multiple = math.lcm(bucket_multiple(resolution), 2 ** (vae_blocks - 1) * 2 ** (unet_blocks - 1))
    buckets = bucket_sizes(resolution, multiple)
    pixels = [w * h for w, h in (nearest_bucket(width, height, buckets) for width, height in sizes)]
    return sum(pixels) / len(pixels) / resolution**2


# --- contenders (child processes) -------------------------------------------------------------------


class Meter:
    """Marks the end of the warm-up and of the measured steps: wall and CPU time, peak memory."""

    def __init__(self, device, warmup: int, steps: int):
        self.device, self.warmup, self.steps = device, warmup, steps
        self.started = time.perf_counter()
        self.marks: dict[str, float] = {}

    def _sync(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def step(self, step: int) -> None:
        import torch

        if step == 1:
            self._sync()
            self.marks["first_step"] = time.perf_counter() - self.started
        if step == self.warmup:
            self._sync()
            if self.device.type == "cuda":
                self.marks["setup_peak"] = torch.cuda.max_memory_allocated(self.device)
                torch.cuda.reset_peak_memory_stats(self.device)
            self.marks["wall0"], self.marks["cpu0"] = time.perf_counter(), time.process_time()
        if step == self.warmup + self.steps:
            self._sync()
            self.marks["wall1"], self.marks["cpu1"] = time.perf_counter(), time.process_time()
            if self.device.type == "cuda":
                self.marks["steps_peak"] = torch.cuda.max_memory_allocated(self.device)
            self.marks["maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux

    def result(self, batch_size: int, losses: list[float], **extra) -> dict:
        marks = self.marks
        images = self.steps * batch_size
        out = {
            "images_per_second": images / (marks["wall1"] - marks["wall0"]),
            "images_per_cpu_second": images / max(marks["cpu1"] - marks["cpu0"], 1e-9),
            "seconds": marks["wall1"] - marks["wall0"],
            "first_step_seconds": marks["first_step"],
            "maxrss": marks["maxrss"],
            "losses_finite": all(math.isfinite(loss) for loss in losses),
            "mean_loss": sum(losses) / len(losses),
            **extra,
        }
        if "steps_peak" in marks:
            out["steps_peak"] = marks["steps_peak"]
            out["peak"] = max(marks["setup_peak"], marks["steps_peak"])
        return out


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run_ours(args, folder: Path, shard: Path, scratch: Path) -> dict:
    from training.engine.train import Callbacks, TrainConfig, train

    device = resolve_device(args.device)
    meter = Meter(device, args.warmup, args.steps)
    losses: list[float] = []
    messages: list[str] = []

    def on_step(step: int, _total: int, loss: float, _images_per_second: float) -> None:
        meter.step(step)
        if args.warmup < step <= args.warmup + args.steps:
            losses.append(loss)

    config = TrainConfig(
        base_model=str(folder),
        rank=RANK,
        alpha=ALPHA,
        learning_rate=LEARNING_RATE,
        lr_scheduler="constant",
        max_steps=args.warmup + args.steps,
        batch_size=args.batch_size,
        resolution=args.resolution,
        seed=SEED,
        mixed_precision=args.mixed_precision,  # the same autocast dtype as the reference; the CPU trains in fp32
        snr_gamma=None,  # min-SNR off, as the reference script's default
        caption_dropout=0.0,  # the reference script has none
        gradient_checkpointing=False,
        compile=False,
        validation_prompts=("a photograph",),  # the final sample image: after the measured steps, one step
        validation_steps=1,
        checkpoint_every=10**9,  # only the final checkpoint, after the measured steps
        device=str(device),
    )
    output = Path(tempfile.mkdtemp(prefix="ours-", dir=scratch))  # fresh each round: no resume, caches rebuilt
    train(config, [shard], output, callbacks=Callbacks(on_step=on_step, log=messages.append))
    cache_notes = [message for message in messages if "cached" in message.lower()]
    return meter.result(args.batch_size, losses, notes=cache_notes)


def run_reference(args, folder: Path, shard: Path, _scratch: Path) -> dict:
    """The training loop of diffusers' train_text_to_image_lora.py (one process, no accelerate), step for step."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig
    from PIL import Image
    from transformers import CLIPTextModel, CLIPTokenizer

    from training.engine.data import read_samples

    device = resolve_device(args.device)
    meter = Meter(device, args.warmup, args.steps)
    torch.manual_seed(SEED)
    on_cuda = device.type == "cuda"
    # --mixed_precision: the frozen models are cast to it; accelerate autocasts the UNet's forward (and scales
    # the loss for fp16). On the CPU both sides train in fp32 (the engine's policy there).
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[args.mixed_precision] if on_cuda else torch.float32

    tokenizer = CLIPTokenizer.from_pretrained(str(folder), subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(str(folder), subfolder="text_encoder")
    vae = AutoencoderKL.from_pretrained(str(folder), subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(str(folder), subfolder="unet")
    noise_scheduler = DDPMScheduler.from_pretrained(str(folder), subfolder="scheduler")
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
    for module in (unet, vae, text_encoder):
        module.to(device, dtype=weight_dtype)
    unet.add_adapter(
        LoraConfig(r=RANK, lora_alpha=ALPHA, init_lora_weights="gaussian", target_modules=UNET_TARGET_MODULES)
    )
    if weight_dtype != torch.float32:
        cast_training_params(unet, dtype=torch.float32)  # the script does this for fp16; the engine always does
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LEARNING_RATE, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    total = args.warmup + args.steps
    lr_scheduler = get_scheduler("constant", optimizer=optimizer, num_warmup_steps=0, num_training_steps=total)
    scaler = torch.amp.GradScaler("cuda") if weight_dtype == torch.float16 else None
    autocast = torch.autocast(device.type, dtype=weight_dtype, enabled=weight_dtype != torch.float32)

    # The script's transforms (Resize(resolution, bilinear), crop to resolution, ToTensor, Normalize(0.5, 0.5)),
    # applied once here, before the clock, instead of every step in its DataLoader: an advantage to the reference.
    samples = read_samples([shard])
    pixels, captions = [], []
    size = args.resolution
    for sample in samples:
        with Image.open(io.BytesIO(sample.image_bytes)) as image:
            image = image.convert("RGB")
            scale = size / min(image.size)
            image = image.resize(
                (max(size, round(image.width * scale)), max(size, round(image.height * scale))),
                Image.Resampling.BILINEAR,
            )
            left, top = (image.width - size) // 2, (image.height - size) // 2
            array = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32) / 127.5 - 1.0
        pixels.append(torch.from_numpy(array).permute(2, 0, 1).contiguous())
        captions.append(sample.caption)
    pixels_all = torch.stack(pixels)
    generator = torch.Generator().manual_seed(SEED)

    def batches():
        while True:  # DataLoader(shuffle=True); the last partial batch dropped so every batch is full
            order = torch.randperm(len(captions), generator=generator).tolist()
            for start in range(0, len(order) - args.batch_size + 1, args.batch_size):
                yield order[start : start + args.batch_size]

    unet.train()
    losses = []
    feed = batches()
    for step in range(1, total + 1):
        indices = next(feed)
        pixel_values = pixels_all[indices].to(device, dtype=weight_dtype)
        input_ids = tokenizer(
            [captions[i] for i in indices],
            max_length=tokenizer.model_max_length,
            padding="max_length",
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)
        with torch.no_grad():  # frozen (requires_grad False) in the script too: no graph either way
            latents = vae.encode(pixel_values).latent_dist.sample() * vae.config.scaling_factor
            encoder_hidden_states = text_encoder(input_ids, return_dict=False)[0]
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(indices),), device=device)
        noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps.long())
        if noise_scheduler.config.prediction_type == "epsilon":
            target = noise
        else:
            target = noise_scheduler.get_velocity(latents, noise, timesteps)
        with autocast:
            model_pred = unet(noisy_latents, timesteps, encoder_hidden_states, return_dict=False)[0]
        loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")  # snr_gamma None
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler is not None:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
        value = loss.item()  # the script gathers and logs the loss every step
        if args.warmup < step:
            losses.append(value)
        meter.step(step)
    return meter.result(args.batch_size, losses, notes=[])


CONTENDERS = {"ours": run_ours, "reference": run_reference}


def child(args) -> int:
    import diffusers
    import peft  # noqa: F401
    import torch
    import transformers

    # Import what both contenders use before either starts its clock, so "set-up" is loading and preparing.
    diffusers.UNet2DConditionModel, diffusers.AutoencoderKL, diffusers.StableDiffusionPipeline  # noqa: B018
    transformers.CLIPTextModel, transformers.CLIPTokenizer  # noqa: B018
    if not torch.cuda.is_available() or args.device == "cpu":
        torch.set_num_threads(1)  # 2 threads contend on a 2-core machine
    scratch = Path(args.scratch)
    result = CONTENDERS[args.child](args, scratch / "pipeline", scratch / "data-000000.tar", scratch)
    print("RESULT " + json.dumps(result))
    return 0


def spawn(name: str, args, scratch: Path) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--scratch", str(scratch)]
    for option in ("steps", "warmup", "batch_size", "resolution", "mixed_precision", "device"):
        command += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-8000:])
        raise RuntimeError(f"the {name} contender failed (exit status {done.returncode})")
    return json.loads(lines[-1].removeprefix("RESULT "))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, help="measured steps per contender (GPU 40, CPU 20)")
    parser.add_argument("--warmup", type=int, help="warm-up steps, not counted, at least 1 (GPU 5, CPU 3)")
    parser.add_argument("--batch-size", type=int, help="images per step (GPU 8, CPU 4)")
    parser.add_argument("--resolution", type=int, help="pixels per side (GPU 512, CPU 64)")
    parser.add_argument("--images", type=int, help="training images in the shard (GPU 64, CPU 32)")
    parser.add_argument("--rounds", type=int, help="alternating runs of each contender, the best counts (GPU 1, CPU 2)")
    parser.add_argument("--mixed-precision", default="fp16", choices=("fp16", "bf16"), help="GPU autocast dtype")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--child", choices=tuple(CONTENDERS), help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    import torch
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    gpu = args.device != "cpu" and torch.cuda.is_available()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA GPU is available")
    defaults = {"steps": 40, "warmup": 5, "batch_size": 8, "resolution": 512, "images": 64, "rounds": 1}
    if not gpu:
        defaults = {"steps": 20, "warmup": 3, "batch_size": 4, "resolution": 64, "images": 32, "rounds": 2}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if min(args.warmup, args.steps, args.batch_size, args.rounds) < 1 or args.images < args.batch_size:
        parser.error("--warmup, --steps, --batch-size and --rounds must be >= 1, and --images at least --batch-size")
    if args.resolution % 8:
        parser.error("--resolution must be a multiple of 8")

    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
        scratch = Path(tmp)
        started = time.perf_counter()
        if gpu:
            build_sd15_pipeline(scratch / "pipeline")
            what = "Stable Diffusion 1.5-sized UNet/VAE/CLIP text encoder, random weights"
            device_name = torch.cuda.get_device_name(torch.device(args.device) if args.device != "auto" else None)
            mode = f"GPU ({device_name}), autocast {args.mixed_precision}"
        else:
            from training.engine.tiny import build_tiny_pipeline

            build_tiny_pipeline(scratch / "pipeline", seed=SEED)
            what = "the tiny pipeline (training.engine.tiny)"
            mode = "CPU scaled-down (one torch thread, fp32; the 1.5x target is for the GPU)"
        sizes = build_shard(scratch / "data-000000.tar", args.images, args.resolution)
        pixel_ratio = bucket_pixel_ratio(sizes, args.resolution, scratch / "pipeline")
        from transformers import CLIPTokenizer

        tokenizer = CLIPTokenizer.from_pretrained(str(scratch / "pipeline"), subfolder="tokenizer")
        names = list(PHOTOS)
        tokens = [len(tokenizer(caption(names[i % len(names)], i)).input_ids) for i in range(args.images)]
        print(
            f"{mode}: {what}; {args.images} photos (shorter side {round(args.resolution * 1.5)} px, "
            f"JPEG q{JPEG_QUALITY}) in one WebDataset shard, captions {min(tokens)}-{max(tokens)} tokens; "
            f"{args.resolution} px, batch {args.batch_size}, LoRA rank {RANK} alpha {ALPHA}, AdamW lr "
            f"{LEARNING_RATE:g}, min-SNR off in both; {args.warmup} warm-up + {args.steps} measured steps each, "
            f"{args.rounds} round(s) alternating; "
            f"set-up {time.perf_counter() - started:.0f} s",
            flush=True,
        )
        rounds: dict[str, list[dict]] = {name: [] for name in CONTENDERS}
        for _round in range(args.rounds):  # alternating, so a busy spell of a shared machine hits both
            for name in CONTENDERS:
                rounds[name].append(spawn(name, args, scratch))
    # The fastest round of each counts; memory is the highest of its rounds.
    key = "images_per_second" if gpu else "images_per_cpu_second"
    results = {}
    for name, runs in rounds.items():
        results[name] = max(runs, key=lambda run: run[key])
        for memory_key in ("peak", "steps_peak", "maxrss"):
            if memory_key in results[name]:
                results[name][memory_key] = max(run[memory_key] for run in runs)

    notes = {
        "ours": "engine: cached latents + text embeddings, buckets",
        "reference": "VAE + text encoder every step, pre-decoded images",
    }
    for name, result in results.items():
        memory = (
            f"peak {result['peak'] / 2**20:7.0f} MiB allocated (measured steps alone "
            f"{result['steps_peak'] / 2**20:.0f})"
            if gpu
            else f"peak RSS {result['maxrss'] / 2**20:5.0f} MiB"
        )
        cpu_figure = "" if gpu else f", {result['images_per_cpu_second']:.1f} per CPU-second"
        print(
            f"{name:9} {result['images_per_second']:7.2f} images/s{cpu_figure} ({args.steps} steps in "
            f"{result['seconds']:.1f} s); {memory}; set-up + first step {result['first_step_seconds']:.1f} s; "
            f"mean loss {result['mean_loss']:.4f}{'' if result['losses_finite'] else ' (NOT FINITE)'}  {notes[name]}"
        )
        for note in result["notes"]:
            print(f"          {note}")
    ours, reference = results["ours"], results["reference"]
    speed = ours[key] / reference[key]
    memory_key = "peak" if gpu else "maxrss"
    memory = ours[memory_key] / reference[memory_key]
    verdict = "PASS" if speed >= TARGET_SPEED and memory <= TARGET_MEMORY else "BELOW TARGET"
    label = "" if gpu else "CPU scaled-down, informational: "
    basis = "wall clock" if gpu else "CPU time"
    print(
        f"{label}ratio: ours / reference = {speed:.2f}x images/s by {basis} (target >= {TARGET_SPEED}x), "
        f"memory {memory:.2f}x ({'peak allocated' if gpu else 'peak RSS'}, target <= {TARGET_MEMORY:.1f}x) -> {verdict}"
    )
    print(
        f"buckets: the engine's images average {pixel_ratio:.3f}x the reference's {args.resolution}x"
        f"{args.resolution} pixels (aspect-ratio buckets against a square crop)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
