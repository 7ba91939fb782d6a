"""LoRA fine-tuning of a diffusion model on a pack's samples: one loop for every model family.

The family (SD 1.x/2.x, SDXL, FLUX.1, Flux.2 klein, SD3.5, Qwen-Image, Z-Image, Chroma) is told by the base
pipeline's model_index.json; its specifics (loading, encoding, noise schedule and loss, sampling, saving) live
in one small module of `families/`. This loop owns the rest:

- a held-out slice of the pack (fixed by the seed, recorded in the result) is set aside before training;
- VAE latents and prompt embeddings are computed once and cached on disk (keyed by content hash), then the
  big text encoders are released before the denoiser trains;
- images are bucketed by aspect ratio, and every training image is seen once per epoch whatever its bucket
  (a bucket's last batch is smaller rather than padded with repeats), so usage counts are fair;
- at every checkpoint the held-out validation loss is measured at fixed times and noise (comparable across
  checkpoints and runs); previews of fixed prompts with fixed seeds are made by the inference pipeline, base
  model and LoRA side by side, and scored (CLIP score, Frechet distance on CLIP features) when an evaluator
  is given; the checkpoint with the lowest held-out loss is the delivered LoRA;
- checkpoints (LoRA weights, optimizer, LR scheduler, RNG states, step, data position, evaluations) are written
  atomically, so a run resumes exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import io
import json
import math
import os
import random
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .data import Sample, bucket_multiple, bucket_sizes, nearest_bucket, read_samples
from .distributed import Processes
from .families import Family, ImageGeometry, ModelUnavailable, available_families, family_of_folder
from .families.base import HUB_IGNORE
from .families.flow import LOSS_WEIGHTINGS, TIMESTEP_DENSITIES

LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
SAMPLES_NAME = "samples.png"
LR_SCHEDULERS = ("constant", "cosine", "linear", "constant_with_warmup")
MIXED_PRECISION = ("bf16", "fp16", "no")
KEEP_CHECKPOINTS = 2  # the latest ones; the best (lowest held-out loss) is kept besides
MAX_GRAD_NORM = 1.0
HUB_PROBE_SECONDS = 3.0
# The held-out validation loss: each held-out image at these times, with noise fixed by the image's content.
VALIDATION_TIMES = (0.1, 0.3, 0.5, 0.7, 0.9)
MAX_PREVIEW_PROMPTS = 8
VAE_ENCODE_PIXELS = 8 * 512 * 512  # pixels per VAE call while caching: 8 images at 512 px, 2 at 1024 px


def images_per_vae_call(width: int, height: int) -> int:
    """How many images of this size the VAE encodes at once (its fp32 activations grow with the pixels)."""
    return max(1, VAE_ENCODE_PIXELS // (width * height))


# Fields that shape the weights or the data order: a checkpoint made with other values cannot be resumed.
RESUME_FIELDS = (
    "base_model",
    "train_text_encoder",
    "rank",
    "alpha",
    "batch_size",
    "gradient_accumulation",
    "resolution",
    "seed",
    "holdout_fraction",
)


class TrainingOutOfMemory(RuntimeError):
    """The GPU ran out of memory; the message gives the run's estimate and the preset that fits the card."""


class ConfigError(ValueError):
    """Invalid TrainConfig values; `errors` maps each field to its messages (for forms and APIs)."""

    def __init__(self, errors: dict[str, list[str]]):
        self.errors = errors
        messages = [message for field_messages in errors.values() for message in field_messages]
        super().__init__("Invalid training configuration: " + "; ".join(messages) + ".")


@dataclass
class TrainConfig:
    base_model: str
    train_text_encoder: bool = False
    rank: int = 16
    alpha: float = 16
    learning_rate: float = 1e-4
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    max_steps: int = 1000
    batch_size: int = 4
    gradient_accumulation: int = 1
    resolution: int = 512
    seed: int = 42
    mixed_precision: str = "bf16"  # on CUDA; the CPU trains in fp32
    gradient_checkpointing: bool = False
    snr_gamma: float | None = 5.0  # None: no min-SNR weighting
    caption_dropout: float = 0.05
    validation_prompts: tuple[str, ...] = ()  # empty: the first captions of the data (up to 4)
    validation_every: int = 0  # 0: validation images only at the end (samples.png)
    checkpoint_every: int = 100
    num_validation_images: int = 1
    compile: bool = False
    device: str = "auto"  # "auto", "cpu", "cuda" or "cuda:N"
    validation_steps: int | None = None  # denoising steps of each preview; None: the family's (SD 25, schnell 4)
    validation_guidance: float | None = None  # None: the family's usual value (SD 7.5, FLUX.1-dev 3.5, ...)
    # Flow-matching families (FLUX, SD3, Qwen-Image, Z-Image, Chroma); SD/SDXL use snr_gamma instead.
    timestep_density: str = "logit_normal"  # how training times are drawn: logit_normal, uniform or mode
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    loss_weighting: str = "none"  # none, sigma_sqrt or cosmap
    timestep_shift: float | None = None  # None: the base model's scheduler (static or resolution-dependent)
    guidance: float = 1.0  # the guidance embedding's value while training guidance-distilled models (FLUX.1-dev)
    holdout_fraction: float = 0.1  # of the pack, set aside for evaluation (at least one image once there are 4)

    def __post_init__(self):
        errors: dict[str, list[str]] = {}

        def fail(name: str, message: str) -> None:
            errors.setdefault(name, []).append(f"{name} {message}")

        def positive_int(name, value, minimum=1):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                fail(name, f"must be a whole number >= {minimum} (got {value!r})")

        if not isinstance(self.base_model, str | os.PathLike) or not str(self.base_model).strip():
            fail("base_model", "must name a diffusers model id or a local directory")
        positive_int("rank", self.rank)
        if not _is_number(self.alpha) or self.alpha <= 0:
            fail("alpha", f"must be a number > 0 (got {self.alpha!r})")
        if not _is_number(self.learning_rate) or not 0 < self.learning_rate < 1:
            fail("learning_rate", f"must be a number between 0 and 1 (got {self.learning_rate!r})")
        if self.lr_scheduler not in LR_SCHEDULERS:
            fail("lr_scheduler", f"must be one of {', '.join(LR_SCHEDULERS)} (got {self.lr_scheduler!r})")
        positive_int("lr_warmup_steps", self.lr_warmup_steps, 0)
        positive_int("max_steps", self.max_steps)
        positive_int("batch_size", self.batch_size)
        positive_int("gradient_accumulation", self.gradient_accumulation)
        positive_int("resolution", self.resolution, 32)
        if isinstance(self.resolution, int) and self.resolution % 8:
            fail("resolution", f"must be a multiple of 8 (got {self.resolution!r})")
        positive_int("seed", self.seed, 0)
        if self.mixed_precision not in MIXED_PRECISION:
            fail("mixed_precision", f"must be one of {', '.join(MIXED_PRECISION)} (got {self.mixed_precision!r})")
        if self.snr_gamma is not None and (not _is_number(self.snr_gamma) or self.snr_gamma <= 0):
            fail("snr_gamma", f"must be a number > 0, or None to turn min-SNR weighting off (got {self.snr_gamma!r})")
        if not _is_number(self.caption_dropout) or not 0 <= self.caption_dropout < 1:
            fail(
                "caption_dropout",
                f"must be a fraction from 0 up to (not including) 1 (got {self.caption_dropout!r})",
            )
        if isinstance(self.validation_prompts, str):
            self.validation_prompts = (self.validation_prompts,)
        self.validation_prompts = tuple(self.validation_prompts)
        if not all(isinstance(prompt, str) for prompt in self.validation_prompts):
            fail("validation_prompts", "must be a list of texts")
        positive_int("validation_every", self.validation_every, 0)
        positive_int("checkpoint_every", self.checkpoint_every)
        positive_int("num_validation_images", self.num_validation_images)
        if self.validation_steps is not None:
            positive_int("validation_steps", self.validation_steps)
        if self.validation_guidance is not None and (
            not _is_number(self.validation_guidance) or self.validation_guidance < 0
        ):
            fail("validation_guidance", f"must be a number >= 0 (got {self.validation_guidance!r})")
        if self.timestep_density not in TIMESTEP_DENSITIES:
            fail("timestep_density", f"must be one of {', '.join(TIMESTEP_DENSITIES)} (got {self.timestep_density!r})")
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            fail("loss_weighting", f"must be one of {', '.join(LOSS_WEIGHTINGS)} (got {self.loss_weighting!r})")
        if not _is_number(self.logit_mean):
            fail("logit_mean", f"must be a number (got {self.logit_mean!r})")
        for name in ("logit_std", "mode_scale", "guidance"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                fail(name, f"must be a number >= 0 (got {value!r})")
        if not _is_number(self.holdout_fraction) or not 0 <= self.holdout_fraction <= 0.5:
            fail("holdout_fraction", f"must be a fraction from 0 to 0.5 (got {self.holdout_fraction!r})")
        if self.timestep_shift is not None and (not _is_number(self.timestep_shift) or self.timestep_shift <= 0):
            fail("timestep_shift", f"must be a number > 0, or None: the base model's (got {self.timestep_shift!r})")
        if not isinstance(self.device, str) or not (
            self.device in ("auto", "cpu", "cuda") or (self.device.startswith("cuda:") and self.device[5:].isdigit())
        ):
            fail("device", f"must be 'auto', 'cpu', 'cuda' or 'cuda:N' (got {self.device!r})")
        if errors:
            raise ConfigError(errors)
        self.base_model = str(self.base_model)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class Callbacks:
    on_step: Callable[[int, int, float, float], None] | None = None  # step, total, loss, images/s
    should_stop: Callable[[], bool] | None = None
    on_validation: Callable[[int, list], None] | None = None  # step, PIL images (the LoRA's previews)
    on_checkpoint: Callable[[int, Path], None] | None = None
    on_evaluation: Callable[[dict], None] | None = None  # one evaluation record (see _Run.evaluate)
    log: Callable[[str], None] | None = None


@dataclass
class TrainResult:
    final_step: int
    lora_path: Path | None
    sample_grid_path: Path | None
    usage: dict[str, int] = field(default_factory=dict)
    stopped: bool = False
    losses: list[float] = field(default_factory=list)
    family: str = ""
    holdout_keys: list[str] = field(default_factory=list)
    # [{step, validation_loss, metrics: {lora: {...}, base: {...}}, best}], from step 0 (the base model)
    evaluations: list[dict] = field(default_factory=list)
    best_step: int | None = None  # the delivered LoRA's step: the lowest held-out loss
    kohya_lora_path: Path | None = None  # the same LoRA in the kohya / ComfyUI key format

    @property
    def validation_losses(self) -> list[tuple[int, float]]:
        return [(e["step"], e["validation_loss"]) for e in self.evaluations if e.get("validation_loss") is not None]


# --- base model ------------------------------------------------------------------------------------


def hub_patterns() -> list[str]:
    """Files fetched for a hub model id, before its family is known: every family's configs, tokenizers and
    safetensors weights (never other formats)."""
    patterns = []
    for family in available_families():
        patterns += [pattern for pattern in family.hub_patterns if pattern not in patterns]
    return patterns


def resolve_base_model(base_model: str) -> Path:
    """The local folder of the base pipeline: a local directory, or a hub id from the local cache or
    downloaded. Raises ModelUnavailable naming `base_model` quickly when it cannot be had."""
    path = Path(base_model).expanduser()
    if path.is_dir():
        return _check_pipeline_folder(path, base_model)
    if base_model.startswith(("/", ".", "~")) or base_model.count("/") != 1 or os.sep == "\\" and "\\" in base_model:
        raise ModelUnavailable(
            f"base_model {base_model!r} is neither a local directory nor a diffusers model id (owner/name)."
        )
    from huggingface_hub import snapshot_download

    patterns = hub_patterns()
    try:
        return _check_pipeline_folder(
            Path(
                snapshot_download(
                    base_model, allow_patterns=patterns, ignore_patterns=list(HUB_IGNORE), local_files_only=True
                )
            ),
            base_model,
        )
    except ModelUnavailable:
        raise
    except Exception:  # noqa: BLE001 - not in the local cache: try the hub below
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise ModelUnavailable(
            f"base_model {base_model!r} is not a local directory and is not in the local Hugging Face cache, "
            "and HF_HUB_OFFLINE is set: download it on a connected machine or set base_model to a local folder."
        )
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    if not _reachable(endpoint):
        raise ModelUnavailable(
            f"base_model {base_model!r} is not a local directory or in the local cache, and the model hub "
            f"({endpoint}) cannot be reached: set base_model to a local folder or give the worker network access."
        )
    try:
        folder = Path(
            snapshot_download(base_model, allow_patterns=patterns, ignore_patterns=list(HUB_IGNORE), etag_timeout=10)
        )
    except Exception as error:  # noqa: BLE001 - any hub failure means the model is unavailable
        raise ModelUnavailable(f"base_model {base_model!r} could not be downloaded: {error}") from error
    return _check_pipeline_folder(folder, base_model)


def _reachable(endpoint: str) -> bool:
    """A TCP connection to the hub within HUB_PROBE_SECONDS (name resolution included, in a thread)."""
    parsed = urlparse(endpoint)
    host = parsed.hostname
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    if not host:
        return False
    outcome: list[bool] = []

    def probe():
        try:
            with socket.create_connection((host, port), timeout=HUB_PROBE_SECONDS):
                outcome.append(True)
        except OSError:
            outcome.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(HUB_PROBE_SECONDS + 0.5)
    return bool(outcome and outcome[0])


def _check_pipeline_folder(folder: Path, base_model: str) -> Path:
    family_of_folder(folder, base_model)
    return folder


def _fingerprint(folder: Path, *names: str) -> str:
    """A cheap identity of some components: their config files' bytes and their weight files' sizes/times."""
    hasher = hashlib.sha256(str(folder.resolve()).encode())
    for name in names:
        for path in sorted((folder / name).rglob("*")):
            if not path.is_file():
                continue
            hasher.update(str(path.relative_to(folder)).encode())
            if path.suffix in (".json", ".txt"):
                hasher.update(path.read_bytes())
            else:
                stat = path.stat()
                hasher.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return hasher.hexdigest()[:16]


def split_holdout(samples: list[Sample], fraction: float, seed: int) -> list[int]:
    """Indices of the held-out samples: round(fraction x n), at least one once there are 4 samples and the
    fraction is not 0, chosen by the seed from the samples' keys (the same slice however the shards are
    ordered), sorted."""
    if fraction <= 0 or len(samples) < 4:
        return []
    count = min(max(1, round(fraction * len(samples))), len(samples) - 1)
    keys = sorted(sample.key for sample in samples)
    chosen = set(random.Random(f"holdout:{seed}").sample(keys, count))
    return [index for index, sample in enumerate(samples) if sample.key in chosen]


# --- the run ---------------------------------------------------------------------------------------


class _Run:
    """One call of train(): the family with its loaded models, the cached data and the loop."""

    def __init__(
        self,
        config: TrainConfig,
        data_paths: list[Path],
        output_dir: Path,
        callbacks: Callbacks | None,
        evaluator=None,
    ):
        self.config = config
        self.data_paths = [Path(p) for p in data_paths]
        self.output_dir = Path(output_dir)
        self.processes = Processes()
        # Process 0 reports (progress, previews, checkpoints, stop requests); the others only train.
        self.callbacks = (callbacks or Callbacks()) if self.processes.main else Callbacks()
        self.evaluator = evaluator
        self.checkpoints_dir = self.output_dir / "checkpoints"
        self.cache_dir = self.output_dir / "cache"
        self.base_previews: list | None = None
        self.base_metrics: dict | None = None

    def log(self, message: str) -> None:
        if self.callbacks.log:
            self.callbacks.log(message)

    # --- set-up

    def setup(self) -> None:
        import torch

        config = self.config
        self.device = self._device()
        self.on_cuda = self.device.type == "cuda"
        if self.on_cuda and config.mixed_precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise ValueError("mixed_precision 'bf16' is not supported by this GPU: use 'fp16'.")
        precision = config.mixed_precision if self.on_cuda else "no"
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.weight_dtype = self.autocast_dtype or torch.float32
        # The caches keep the autocast dtype: bf16 has fp32's range (intermediate LLM hidden states exceed fp16's).
        self.cache_dtype = self.autocast_dtype or torch.float32

        self.samples = read_samples(self.data_paths)
        self.holdout = split_holdout(self.samples, config.holdout_fraction, config.seed)
        held = set(self.holdout)
        self.train_indices = [index for index in range(len(self.samples)) if index not in held]
        self.base_folder = resolve_base_model(config.base_model)
        family_class = family_of_folder(self.base_folder, config.base_model)
        if config.train_text_encoder and not family_class.text_encoder_lora_targets:
            raise ValueError(
                f"train_text_encoder is not offered for {family_class.label}: its LoRA trains the denoiser only."
            )
        self.family: Family = family_class(self.base_folder, config, self.device, self.weight_dtype)
        self.family._log = self.log
        self.log(
            f"Base model {config.base_model} ({family_class.label}) from {self.base_folder}; "
            f"{len(self.train_indices)} training samples, {len(self.holdout)} held out; {self.device}"
        )
        self.family.load()
        self._add_lora()
        self._assign_buckets()

    def _device(self):
        import torch

        if self.processes.device is not None and self.config.device in ("auto", "cuda"):
            return self.processes.device  # one GPU per process
        if self.config.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        device = torch.device(self.config.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {self.config.device!r} was asked for but no CUDA GPU is available.")
        return device

    def _add_lora(self) -> None:
        import torch
        from peft import LoraConfig

        config, family = self.config, self.family

        def adapter(targets) -> LoraConfig:
            return LoraConfig(
                r=config.rank, lora_alpha=config.alpha, init_lora_weights="gaussian", target_modules=list(targets)
            )

        torch.manual_seed(config.seed)  # LoRA's gaussian init
        family.denoiser.add_adapter(adapter(family.lora_targets))
        self.trained_modules = {family.denoiser_name: family.denoiser}
        if config.train_text_encoder:
            for name, text_encoder in family.text_encoders.items():
                text_encoder.add_adapter(adapter(family.text_encoder_lora_targets))
                self.trained_modules[name] = text_encoder
        self.params: dict[str, Any] = {}
        for prefix, module in self.trained_modules.items():
            for name, parameter in module.named_parameters():
                if parameter.requires_grad:
                    parameter.data = parameter.data.float()  # LoRA weights train in fp32
                    self.params[f"{prefix}.{name}"] = parameter
        if config.gradient_checkpointing:
            family.denoiser.enable_gradient_checkpointing()
            for name in self.trained_modules:
                if name != family.denoiser_name:
                    module = self.trained_modules[name]
                    enable = getattr(module, "activation_checkpointing_enable", None)
                    (enable or module.gradient_checkpointing_enable)()

    def _assign_buckets(self) -> None:
        from PIL import Image, UnidentifiedImageError

        multiple = math.lcm(bucket_multiple(self.config.resolution), self.family.pixel_multiple)
        self.buckets = bucket_sizes(self.config.resolution, multiple)
        self.sample_bucket: list[tuple[int, int]] = []
        self.sample_hash: list[str] = []
        # Each sample's geometry follows from the image's size and its bucket, as the cover-crop does: the same
        # on every (resumed) run. SDXL conditions on it.
        self.sample_geometry: list[ImageGeometry] = []
        for sample in self.samples:
            try:
                with Image.open(io.BytesIO(sample.image_bytes)) as image:
                    width, height = _oriented_size(image)
            except (UnidentifiedImageError, OSError) as error:
                raise ValueError(f"The image of sample {sample.key!r} cannot be read: {error}") from error
            bucket = nearest_bucket(width, height, self.buckets)
            self.sample_bucket.append(bucket)
            self.sample_hash.append(hashlib.sha256(sample.image_bytes).hexdigest())
            _, (left, top) = _cover_box((width, height), bucket)
            self.sample_geometry.append(ImageGeometry((height, width), (top, left), (bucket[1], bucket[0])))

    # --- caches

    def build_caches(self) -> None:
        family = self.family
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        vae_id = _fingerprint(self.base_folder, "vae")
        dtype_name = str(self.cache_dtype).removeprefix("torch.")
        keys = [f"{digest}-{w}x{h}" for digest, (w, h) in zip(self.sample_hash, self.sample_bucket, strict=True)]
        first_index = {}  # key -> a sample with that content and bucket (duplicates share one latent)
        for index, key in enumerate(keys):
            first_index.setdefault(key, index)
        latents = self._cached(
            self.cache_dir / f"latents-{family.name}-{vae_id}-{dtype_name}.safetensors",
            keys,
            lambda todo: self._encode_images([first_index[key] for key in todo]),
            "latents",
        )
        self.latents = {key: latents[key] for key in keys}
        self.latent_keys = keys

        self.preview_prompts = self._preview_prompts()
        texts = [sample.caption for sample in self.samples] + self.preview_prompts + [""]
        self.caption_keys = [_text_key(sample.caption) for sample in self.samples]
        self.empty_key = _text_key("")
        by_key = {_text_key(text): text for text in texts}
        if family.prompt_cache_tag is None:
            items = family.encode_prompts(list(by_key.values()))
            self.prompts = dict(zip(by_key, items, strict=True))
        else:
            text_parts = [c for c in family.components if c not in ("vae", "scheduler", family.denoiser_name)]
            text_id = _fingerprint(self.base_folder, *text_parts)
            flat = self._cached(
                self.cache_dir / f"text-{family.name}-{family.prompt_cache_tag}-{text_id}-{dtype_name}.safetensors",
                list(by_key),
                lambda todo: self._encode_prompts([by_key[key] for key in todo]),
                "prompt embeddings",
                grouped=True,
            )
            self.prompts = flat
        family.release_text_encoders()

    def _preview_prompts(self) -> list[str]:
        """The fixed prompt set of previews: the staff's prompts, then the held-out captions (or, with nothing
        held out and no prompts given, the first captions)."""
        prompts = list(self.config.validation_prompts)
        prompts += [self.samples[i].caption for i in self.holdout]
        if not prompts:
            prompts = [sample.caption for sample in self.samples[:4]]
        return list(dict.fromkeys(prompts))[:MAX_PREVIEW_PROMPTS]

    def _cached(self, path: Path, keys: list[str], compute, what: str, *, grouped: bool = False) -> dict:
        """{key: tensor} (grouped: {key: {field: tensor}}) for `keys`: those in the cache file are read, the
        others computed and added. A grouped item is stored as `<key>/<field>` tensors."""
        import torch
        from safetensors.torch import load_file, save_file

        stored = {}
        if path.is_file():
            try:
                stored = load_file(str(path))
            except Exception:  # noqa: BLE001 - a damaged cache is recomputed
                self.log(f"The {what} cache {path.name} is unreadable; recomputing it.")
                stored = {}
        present = {name.split("/", 1)[0] for name in stored} if grouped else set(stored)
        todo = [key for key in dict.fromkeys(keys) if key not in present]
        if todo:
            started = time.perf_counter()
            computed = compute(todo)
            if grouped:
                computed = {f"{key}/{name}": tensor for key, item in computed.items() for name, tensor in item.items()}
            stored.update({name: _cache_tensor(tensor, self.cache_dtype) for name, tensor in computed.items()})
            temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
            save_file(stored, str(temporary))
            _fsync_file(temporary)
            os.replace(temporary, path)
            self.log(f"Cached {len(todo)} {what} in {time.perf_counter() - started:.1f} s")
        else:
            self.log(f"Reused {len(set(keys))} cached {what}")

        def loaded(tensor):
            return tensor.to(torch.float32) if not self.on_cuda and tensor.is_floating_point() else tensor

        if not grouped:
            return {key: loaded(stored[key]) for key in keys}
        items: dict[str, dict] = {key: {} for key in keys}
        for name, tensor in stored.items():
            key, _, part = name.partition("/")
            if key in items:
                items[key][part] = loaded(tensor)
        return items

    def _encode_images(self, indices: list[int]) -> dict:
        import numpy as np
        import torch
        from PIL import Image

        out = {}
        groups: dict[tuple[int, int], list[int]] = {}
        for index in indices:
            groups.setdefault(self.sample_bucket[index], []).append(index)
        for size, members in groups.items():
            chunk_size = images_per_vae_call(*size)
            for start in range(0, len(members), chunk_size):
                chunk = members[start : start + chunk_size]
                pixels = []
                for index in chunk:
                    with Image.open(io.BytesIO(self.samples[index].image_bytes)) as image:
                        array = np.asarray(_cover_crop(image, size), dtype=np.float32) / 127.5 - 1.0
                    pixels.append(torch.from_numpy(array).permute(2, 0, 1))
                batch = torch.stack(pixels).to(self.device, dtype=torch.float32)
                with torch.no_grad():
                    latents = self.family.encode_images(batch)
                for index, latent in zip(chunk, latents, strict=True):
                    out[f"{self.sample_hash[index]}-{size[0]}x{size[1]}"] = latent
        return out

    def _encode_prompts(self, texts: list[str]) -> dict:
        import torch

        out = {}
        for start in range(0, len(texts), 16):
            chunk = texts[start : start + 16]
            with torch.no_grad(), self._autocast():
                items = self.family.encode_prompts(chunk)
            for text, item in zip(chunk, items, strict=True):
                out[_text_key(text)] = item
        return out

    def _autocast(self):
        import torch

        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # --- data order

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The batches of one epoch, each within one bucket, in an order that depends only on (seed, epoch).
        Every training sample is in exactly one batch: a bucket's last batch is smaller rather than filled up
        with repeats, so every image is seen equally often (usage counts pay creators)."""
        rng = random.Random(f"{self.config.seed}:{epoch}")
        by_bucket: dict[tuple[int, int], list[int]] = {}
        for index in self.train_indices:
            by_bucket.setdefault(self.sample_bucket[index], []).append(index)
        size = self.config.batch_size
        batches = []
        for bucket in sorted(by_bucket):
            members = by_bucket[bucket][:]
            rng.shuffle(members)
            batches.extend(members[i : i + size] for i in range(0, len(members), size))
        rng.shuffle(batches)
        return batches

    # --- optimisation

    def build_optimizer(self) -> None:
        import torch
        from diffusers.optimization import get_scheduler

        config = self.config
        self.optimizer = torch.optim.AdamW(
            list(self.params.values()), lr=config.learning_rate, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8
        )
        self.lr_scheduler = get_scheduler(
            config.lr_scheduler,
            optimizer=self.optimizer,
            num_warmup_steps=config.lr_warmup_steps,
            num_training_steps=config.max_steps,
        )
        self.scaler = torch.amp.GradScaler("cuda") if self.autocast_dtype == torch.float16 else None
        if config.compile:
            self.family.denoiser.compile()

    def _prompt_batch(self, keys: list[str]) -> dict:
        return self.family.collate_prompts([self.prompts[key] for key in keys])

    def micro_batch_loss(self, indices: list[int]):
        import torch

        config = self.config
        latents = torch.stack([self.latents[self.latent_keys[i]] for i in indices]).to(self.device, torch.float32)
        batch = len(indices)
        drop = (
            torch.rand(batch) < config.caption_dropout if config.caption_dropout > 0 else torch.zeros(batch, dtype=bool)
        )
        keys = [
            self.empty_key if dropped else self.caption_keys[i]
            for i, dropped in zip(indices, drop.tolist(), strict=True)
        ]
        noise = torch.randn_like(latents)
        t = self.family.sample_timesteps(batch).to(self.device)
        with self._autocast():
            prompts = self._prompt_batch(keys)
            loss = self.family.loss(latents, prompts, noise, t, [self.sample_geometry[i] for i in indices])
        return loss.mean(), [self.samples[i].key for i in indices]

    # --- evaluation

    def validation_loss(self) -> float | None:
        """The held-out samples' plain (unweighted) loss at VALIDATION_TIMES, each with noise seeded by the
        image's content hash: the same numbers for the same weights, on every checkpoint and run."""
        import torch

        if not self.holdout:
            return None
        for module in self.trained_modules.values():
            module.eval()
        total, count = 0.0, 0
        times = torch.tensor(VALIDATION_TIMES, dtype=torch.float32, device=self.device)
        try:
            with torch.no_grad(), self._autocast():
                for index in self.holdout:
                    latent = self.latents[self.latent_keys[index]].to(self.device, torch.float32)
                    generator = torch.Generator("cpu").manual_seed(int(self.sample_hash[index][:15], 16))
                    noise = torch.randn((len(times), *latent.shape), generator=generator).to(self.device)
                    latents = latent.unsqueeze(0).expand(len(times), *latent.shape)
                    prompts = self._prompt_batch([self.caption_keys[index]] * len(times))
                    geometry = [self.sample_geometry[index]] * len(times)
                    losses = self.family.loss(latents, prompts, noise, times, geometry, weighted=False)
                    total += float(losses.float().sum())
                    count += len(times)
        finally:
            for module in self.trained_modules.values():
                module.train()
        return total / count

    def _set_adapters(self, enabled: bool) -> None:
        for module in self.trained_modules.values():
            (module.enable_adapters if enabled else module.disable_adapters)()

    def previews(self, *, base: bool = False) -> list:
        """One image per preview prompt and validation image (fixed seeds), by the family's inference pipeline:
        with the LoRA, or with its adapters off (the base model)."""
        import torch

        config, family = self.config, self.family
        steps = config.validation_steps or family.default_validation_steps
        guidance = config.validation_guidance
        if guidance is None:
            guidance = family.default_validation_guidance
        pipeline = family.pipeline()
        negative = self._prompt_batch([self.empty_key])
        for module in self.trained_modules.values():
            module.eval()
        if base:
            self._set_adapters(False)
        images = []
        devices = [self.device.index or 0] if self.on_cuda else []
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad(), self._autocast():
                for number, prompt in enumerate(self.preview_prompts):
                    embeddings = self._prompt_batch([_text_key(prompt)])
                    for copy in range(config.num_validation_images):
                        generator = torch.Generator("cpu").manual_seed(config.seed + number * 1000 + copy)
                        images += family.generate(
                            pipeline,
                            embeddings,
                            negative,
                            height=config.resolution,
                            width=config.resolution,
                            steps=steps,
                            guidance=guidance,
                            generator=generator,
                        )
        finally:
            if base:
                self._set_adapters(True)
            for module in self.trained_modules.values():
                module.train()
        return images

    def _reference_images(self) -> list:
        from PIL import Image

        size = (self.config.resolution, self.config.resolution)
        references = []
        for index in self.holdout:
            with Image.open(io.BytesIO(self.samples[index].image_bytes)) as image:
                references.append(_cover_crop(image, size))
        return references

    def _image_metrics(self, images: list) -> dict:
        if self.evaluator is None or not images:
            return {}
        from .evaluation import evaluate

        per_prompt = self.config.num_validation_images
        generated = {
            prompt: images[number * per_prompt : (number + 1) * per_prompt]
            for number, prompt in enumerate(self.preview_prompts)
        }
        return evaluate(generated, self._reference_images(), self.evaluator)

    def evaluate(self, step: int, evaluations: list[dict], *, with_previews: bool) -> list | None:
        """Measure the held-out loss (always) and, with previews, make the LoRA's previews (returned) and the
        base model's (once per run), scored when an evaluator is given. Appends the record to `evaluations`."""
        record: dict = {"step": step, "validation_loss": self.validation_loss()}
        images = None
        if with_previews:
            images = self.previews()
            if self.base_previews is None:
                self.base_previews = self.previews(base=True)
                self.base_metrics = self._image_metrics(self.base_previews)
            metrics = {"lora": self._image_metrics(images), "base": self.base_metrics or {}}
            if any(metrics.values()):
                record["metrics"] = metrics
        evaluations[:] = [e for e in evaluations if e["step"] != step] + [record]
        if record["validation_loss"] is not None:
            self.log(f"Held-out loss at step {step}: {record['validation_loss']:.5f}")
        if self.callbacks.on_evaluation:
            self.callbacks.on_evaluation(dict(record))
        return images

    # --- checkpoints

    def latest_checkpoint(self, *, tidy: bool = True) -> Path | None:
        """The newest complete checkpoint; `tidy`: first remove half-written ones (process 0 only)."""
        if not self.checkpoints_dir.is_dir():
            return None
        for stale in self.checkpoints_dir.glob(".tmp-*") if tidy else ():
            shutil.rmtree(stale, ignore_errors=True)
        done = sorted(p for p in self.checkpoints_dir.glob("checkpoint-*") if (p / "state.json").is_file())
        return done[-1] if done else None

    def save_checkpoint(self, state: dict) -> Path | None:
        """Written by process 0 (the weights are the same in every process); the others wait for it."""
        if not self.processes.main:
            self.processes.wait()
            return None
        final = self._write_checkpoint(state)
        self.processes.wait()
        return final

    def _write_checkpoint(self, state: dict) -> Path:
        import numpy as np
        import torch
        from safetensors.torch import save_file

        step = state["step"]
        self.checkpoints_dir.mkdir(parents=True, exist_ok=True)
        final = self.checkpoints_dir / f"checkpoint-{step:08d}"
        temporary = self.checkpoints_dir / f".tmp-{step:08d}-{uuid.uuid4().hex[:8]}"
        temporary.mkdir()
        save_file(
            {name: p.detach().cpu().contiguous() for name, p in self.params.items()},
            str(temporary / "lora.safetensors"),
        )
        self.save_lora_weights(temporary)
        torch.save(self.optimizer.state_dict(), temporary / "optimizer.pt")
        torch.save(self.lr_scheduler.state_dict(), temporary / "scheduler.pt")
        if self.scaler is not None:
            torch.save(self.scaler.state_dict(), temporary / "scaler.pt")
        python_state = random.getstate()
        numpy_state = np.random.get_state()
        rng = {
            "torch": torch.random.get_rng_state(),
            **(
                {f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
                if torch.cuda.is_available() and torch.cuda.is_initialized()
                else {}
            ),
        }
        torch.save(rng, temporary / "rng.pt")
        state = {
            **state,
            "python_rng": [python_state[0], list(python_state[1]), python_state[2]],
            "numpy_rng": [numpy_state[0], numpy_state[1].tolist(), *(x for x in numpy_state[2:])],
            "config": _jsonable(asdict(self.config)),
        }
        (temporary / "state.json").write_text(json.dumps(state))  # written last: marks the checkpoint complete
        for path in temporary.iterdir():
            _fsync_file(path)
        _fsync_dir(temporary)
        if final.exists():
            shutil.rmtree(final)
        os.replace(temporary, final)
        _fsync_dir(self.checkpoints_dir)
        best = state.get("best_step")
        done = sorted(p for p in self.checkpoints_dir.glob("checkpoint-*") if p.is_dir())
        for old in done[:-KEEP_CHECKPOINTS]:
            if best is None or old.name != f"checkpoint-{best:08d}":
                shutil.rmtree(old, ignore_errors=True)
        self.log(f"Checkpoint at step {step}")
        if self.callbacks.on_checkpoint:
            self.callbacks.on_checkpoint(step, final)
        return final

    def load_checkpoint(self, folder: Path) -> dict:
        import numpy as np
        import torch

        state = json.loads((folder / "state.json").read_text())
        previous = state.get("config", {})
        changed = [
            name
            for name in RESUME_FIELDS
            if name in previous and previous[name] != _jsonable(getattr(self.config, name))
        ]
        if changed:
            raise ValueError(
                f"The checkpoint in {folder} was made with other {', '.join(changed)}: it cannot be resumed with "
                "these settings (use another output folder for a new run)."
            )
        self.load_weights(folder)
        self.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=self.device))
        self.lr_scheduler.load_state_dict(torch.load(folder / "scheduler.pt"))
        if self.scaler is not None and (folder / "scaler.pt").is_file():
            self.scaler.load_state_dict(torch.load(folder / "scaler.pt"))
        rng = torch.load(folder / "rng.pt")
        torch.random.set_rng_state(rng["torch"])
        cuda_states = [rng[f"cuda{i}"] for i in range(len(rng) - 1) if f"cuda{i}" in rng]
        if cuda_states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda_states)
        version, internal, gauss = state["python_rng"]
        random.setstate((version, tuple(internal), gauss))
        name, keys, position, has_gauss, cached = state["numpy_rng"]
        np.random.set_state((name, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
        return state

    def load_weights(self, folder: Path) -> None:
        """The LoRA weights of a checkpoint folder into this run's parameters."""
        import torch
        from safetensors.torch import load_file

        weights = load_file(str(folder / "lora.safetensors"))
        if set(weights) != set(self.params):
            raise ValueError(f"The checkpoint in {folder} does not hold this run's LoRA weights.")
        with torch.no_grad():
            for name, parameter in self.params.items():
                parameter.copy_(weights[name].to(parameter.device, parameter.dtype))

    # --- outputs

    def save_lora_weights(self, folder: Path) -> Path:
        """The LoRA of every trained module, in diffusers' (peft) key format, through the family's pipeline."""
        from peft.utils import get_peft_model_state_dict

        layers, metadata = {}, {}
        for name, module in self.trained_modules.items():
            state = get_peft_model_state_dict(module, save_embedding_layers=False)
            layers[name] = {key: tensor.detach().float().cpu().contiguous() for key, tensor in state.items()}
            metadata[name] = module.peft_config["default"].to_dict()
        self.family.save_lora(folder, layers, metadata)
        return folder / LORA_WEIGHTS_NAME

    def write_grid(self, lora_images: list, base_images: list | None) -> Path:
        """The previews as a grid: a row per prompt, the base model's images on the left of the LoRA's."""
        from PIL import Image

        per_prompt = self.config.num_validation_images
        rows = math.ceil(len(lora_images) / per_prompt)
        columns = per_prompt * (2 if base_images else 1)
        width, height = lora_images[0].size
        grid = Image.new("RGB", (columns * width, rows * height))
        for row in range(rows):
            line = lora_images[row * per_prompt : (row + 1) * per_prompt]
            if base_images:
                line = base_images[row * per_prompt : (row + 1) * per_prompt] + line
            for column, image in enumerate(line):
                grid.paste(image, (column * width, row * height))
        path = self.output_dir / SAMPLES_NAME
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.png")
        grid.save(temporary)
        _fsync_file(temporary)
        os.replace(temporary, path)
        return path

    # --- the loop

    def run(self) -> TrainResult:
        import numpy as np
        import torch

        config, processes = self.config, self.processes
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.setup()
        # Process 0 computes the caches (and tidies the checkpoints) first; the others then read them.
        for turn in (True, False):
            if processes.main == turn:
                self.build_caches()
                checkpoint = self.latest_checkpoint(tidy=processes.main)
            processes.wait()
        self.build_optimizer()
        step, epoch, position = 0, 0, 0
        usage: dict[str, int] = {}  # this process's counts since the start (process 0: plus those resumed)
        losses: list[float] = []
        evaluations: list[dict] = []
        best: dict = {}
        if checkpoint is not None:
            state = self.load_checkpoint(checkpoint)
            step, epoch, position = state["step"], state["epoch"], state["position"]
            usage = state["usage"] if processes.main else {}
            losses = state["losses"]
            evaluations, best = state.get("evaluations", []), state.get("best", {})
            if not processes.main:  # its RNG is not checkpointed: a fresh stream per process and step
                torch.manual_seed(config.seed + 7919 * processes.rank + step)
            self.log(f"Resumed from {checkpoint.name} at step {step}")
        else:
            random.seed(config.seed)
            np.random.seed(config.seed)
            torch.manual_seed(config.seed + 7919 * processes.rank)  # each process its own noise
            if processes.main:
                self.evaluate(0, evaluations, with_previews=False)  # the base model's held-out loss
            processes.wait()
        for module in self.trained_modules.values():
            module.train()
        batches = self.epoch_batches(epoch)
        saved_step = step if checkpoint is not None else -1

        def current_state() -> dict:
            """The resumable state; a collective call (the usage counts are summed over the processes)."""
            return {
                "step": step,
                "epoch": epoch,
                "position": position,
                "usage": processes.summed_counts(usage),
                "losses": losses,
                "evaluations": evaluations,
                "best": best,
                "best_step": best.get("step"),
            }

        def result(**fields) -> TrainResult:
            return TrainResult(
                final_step=step,
                usage=processes.summed_counts(usage),
                losses=list(losses),
                family=self.family.name,
                holdout_keys=[self.samples[i].key for i in self.holdout],
                evaluations=[dict(e, best=e["step"] == best.get("step")) for e in evaluations],
                best_step=best.get("step"),
                **fields,
            )

        while step < config.max_steps:
            stop = bool(self.callbacks.should_stop and self.callbacks.should_stop())
            if processes.agree(stop):
                if saved_step != step:
                    self.save_checkpoint(current_state())
                self.log(f"Stopped at step {step}")
                return result(lora_path=None, sample_grid_path=None, stopped=True)
            started = time.perf_counter()
            total_loss, seen = 0.0, 0
            for _ in range(config.gradient_accumulation):
                # Every process walks the same batch order; of each run of `world` batches, process r takes the r-th.
                for rank in range(processes.world):
                    if position >= len(batches):
                        epoch, position = epoch + 1, 0
                        batches = self.epoch_batches(epoch)
                    if rank == processes.rank:
                        indices = batches[position]
                    position += 1
                loss, keys = self.micro_batch_loss(indices)
                scaled = loss / config.gradient_accumulation
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
                total_loss += loss.item() / config.gradient_accumulation
                seen += len(keys)
                for key in keys:
                    usage[key] = usage.get(key, 0) + 1
            processes.average_gradients(self.params.values())
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(list(self.params.values()), MAX_GRAD_NORM)
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            step += 1
            total_loss = processes.mean(total_loss)
            losses.append(total_loss)
            elapsed = time.perf_counter() - started
            images_per_second = seen * processes.world / max(elapsed, 1e-9)
            if self.callbacks.on_step:
                self.callbacks.on_step(step, config.max_steps, total_loss, images_per_second)
            previews_due = config.validation_every and step % config.validation_every == 0 and step < config.max_steps
            checkpoint_due = step % config.checkpoint_every == 0 or step == config.max_steps
            if (previews_due or checkpoint_due) and processes.main:
                images = self.evaluate(step, evaluations, with_previews=bool(previews_due))
                if images and self.callbacks.on_validation:
                    self.callbacks.on_validation(step, images)
                value = evaluations[-1]["validation_loss"]
                if checkpoint_due and value is not None and (not best or value < best["loss"]):
                    best = {"step": step, "loss": value}
            if checkpoint_due:
                self.save_checkpoint(current_state())
                saved_step = step

        usage = processes.summed_counts(usage)  # every process's, before process 0 goes on alone
        processes = Processes.single()  # result() below sums nothing more
        if not self.processes.main:  # process 0 delivers the outputs; the others wait for it
            self.processes.wait()
            return result(lora_path=None, sample_grid_path=None)
        if not best:
            best = {"step": step, "loss": None}
        if best["step"] != step:  # deliver the lowest held-out loss: its checkpoint's weights
            self.load_weights(self.checkpoints_dir / f"checkpoint-{best['step']:08d}")
            self.log(f"Delivering the weights of step {best['step']}: the lowest held-out loss")
        lora_path, kohya_path = self.save_lora_weights_atomically()
        images = self.previews()
        if self.base_previews is None:
            self.base_previews = self.previews(base=True)
            self.base_metrics = self._image_metrics(self.base_previews)
        metrics = {"lora": self._image_metrics(images), "base": self.base_metrics or {}}
        delivered = next(e for e in evaluations if e["step"] == best["step"])
        if any(metrics.values()):
            delivered["metrics"] = metrics
        if self.callbacks.on_validation:
            self.callbacks.on_validation(step, images)
        grid_path = self.write_grid(images, self.base_previews)
        self.log(f"Finished at step {step}: {lora_path.name} (step {best['step']}), {grid_path.name}")
        self.processes.wait()
        return result(lora_path=lora_path, sample_grid_path=grid_path, kohya_lora_path=kohya_path)

    def save_lora_weights_atomically(self) -> tuple[Path, Path | None]:
        """The delivered LoRA in diffusers' format and its kohya / ComfyUI twin (None when some module has no
        kohya name), both written in a temporary folder and renamed into place."""
        from .lora_formats import UnsupportedLora, write_kohya_lora

        temporary = self.output_dir / f".lora-{uuid.uuid4().hex[:8]}"
        temporary.mkdir()
        try:
            written = self.save_lora_weights(temporary)
            try:
                kohya = write_kohya_lora(
                    written,
                    self.family.name,
                    rank=self.config.rank,
                    alpha=self.config.alpha,
                    base_model=self.config.base_model,
                    denoiser_config=dict(self.family.denoiser.config),
                )
            except UnsupportedLora as error:
                self.log(f"No kohya-format copy: {error}")
                kohya = None
            final = self.output_dir / LORA_WEIGHTS_NAME
            final_kohya = self.output_dir / kohya.name if kohya else None
            for source, target in ((written, final), (kohya, final_kohya)):
                if source is not None:
                    _fsync_file(source)
                    os.replace(source, target)
            _fsync_dir(self.output_dir)
        finally:
            shutil.rmtree(temporary, ignore_errors=True)
        return final, final_kohya


def train(
    config: TrainConfig,
    data_paths: list[Path],
    output_dir: Path,
    *,
    callbacks: Callbacks | None = None,
    evaluator=None,
) -> TrainResult:
    """Train a LoRA on the samples of `data_paths` into `output_dir`, resuming from its latest checkpoint.
    `evaluator`: an image/text feature model (see evaluation.py) that scores the previews; None: not scored."""
    import torch

    run = _Run(config, data_paths, output_dir, callbacks, evaluator)
    try:
        return run.run()
    except torch.OutOfMemoryError as error:
        raise TrainingOutOfMemory(_out_of_memory_message(run, error)) from error
    finally:
        del run
        gc.collect()


def gpu_memory_gb(device) -> float | None:
    """The GPU's memory in GB (2^30 bytes, as cards are sold), None off CUDA."""
    import torch

    if getattr(device, "type", None) != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(device).total_memory / 2**30


def _out_of_memory_message(run: _Run, error) -> str:
    from .memory import out_of_memory_message

    family = getattr(run, "family", None)
    gpu_gb = gpu_memory_gb(getattr(run, "device", None))
    if family is None or gpu_gb is None:
        return f"Out of memory: {error}"
    try:
        return out_of_memory_message(run.base_folder, family.name, run.config, round(gpu_gb))
    except Exception as estimate_error:  # noqa: BLE001 - the estimate is advice; the OOM is the failure
        return f"Out of memory: {error} (no estimate: {estimate_error})"


# --- helpers ---------------------------------------------------------------------------------------


def _oriented_size(image) -> tuple[int, int]:
    """The image's size once its EXIF orientation is applied."""
    orientation = image.getexif().get(0x0112, 1)
    width, height = image.size
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _cover_box(image_size: tuple[int, int], size: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """(the resized (width, height), the crop's (left, top)) of an image of `image_size` (oriented) resized to
    cover `size` and centre-cropped to it."""
    (image_width, image_height), (width, height) = image_size, size
    scale = max(width / image_width, height / image_height)
    resized = (max(width, round(image_width * scale)), max(height, round(image_height * scale)))
    return resized, ((resized[0] - width) // 2, (resized[1] - height) // 2)


def _cover_crop(image, size: tuple[int, int]):
    """The image (orientation applied, RGB) resized to cover `size` and centre-cropped to it (see _cover_box)."""
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image).convert("RGB")
    width, height = size
    resized_size, (left, top) = _cover_box(image.size, size)
    resized = image.resize(resized_size, Image.Resampling.BICUBIC)
    return resized.crop((left, top, left + width, top + height))


def _text_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _cache_tensor(tensor, dtype):
    """A tensor as the cache stores it: floating point in the cache dtype, others (token ids, masks) as they are."""
    tensor = tensor.detach()
    return (tensor.to(dtype) if tensor.is_floating_point() else tensor).cpu().contiguous()


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


__all__ = [
    "Callbacks",
    "Family",
    "ConfigError",
    "ModelUnavailable",
    "Sample",
    "TrainConfig",
    "TrainResult",
    "resolve_base_model",
    "train",
]
