"""LoRA fine-tuning of a Stable Diffusion 1.x/2.x or SDXL UNet (optionally its text encoders) on a pack's samples.

The family is told by the base pipeline's model_index.json. SDXL conditions the UNet on both text encoders'
penultimate hidden states side by side, on text_encoder_2's pooled embedding, and on "time ids" (each image's
original size, the top-left corner of its crop and the target bucket size), as diffusers'
train_text_to_image_lora_sdxl.py does.

VAE latents and text embeddings are computed once and cached on disk (keyed by content hash), images are
bucketed by aspect ratio, and checkpoints (LoRA weights, optimizer, LR scheduler, RNG states, step and data
position) are written atomically so that a run resumes exactly where it stopped.
"""

from __future__ import annotations

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

LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
SAMPLES_NAME = "samples.png"
UNET_TARGET_MODULES = ["to_k", "to_q", "to_v", "to_out.0"]
TEXT_ENCODER_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "out_proj"]
LR_SCHEDULERS = ("constant", "cosine", "linear", "constant_with_warmup")
MIXED_PRECISION = ("bf16", "fp16", "no")
KEEP_CHECKPOINTS = 2
MAX_GRAD_NORM = 1.0
HUB_PROBE_SECONDS = 3.0
# Files fetched for a hub model id: the pipeline's configs, tokenizer and safetensors weights only.
HUB_PATTERNS = [
    "model_index.json",
    "*/config.json",
    "scheduler/scheduler_config.json",
    "tokenizer/*",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/model.safetensors",
    "text_encoder_2/model.safetensors",  # SDXL
    "tokenizer_2/*",  # SDXL
]
# The model families trained and the components each one's pipeline folder must hold.
FAMILY_COMPONENTS = {
    "sd": ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
    "sdxl": ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"),
}
POOLED_SUFFIX = ".pooled"  # the text cache's key of a caption's pooled embedding (SDXL)
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
)


class ConfigError(ValueError):
    """Invalid TrainConfig values; `errors` maps each field to its messages (for forms and APIs)."""

    def __init__(self, errors: dict[str, list[str]]):
        self.errors = errors
        messages = [message for field_messages in errors.values() for message in field_messages]
        super().__init__("Invalid training configuration: " + "; ".join(messages) + ".")


class ModelUnavailable(RuntimeError):
    """The base model (the `base_model` setting) cannot be loaded: not a local pipeline and not downloadable."""


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
    validation_steps: int = 25  # denoising steps of each validation image
    validation_guidance: float = 7.5

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
        positive_int("validation_steps", self.validation_steps)
        if not _is_number(self.validation_guidance) or self.validation_guidance < 0:
            fail("validation_guidance", f"must be a number >= 0 (got {self.validation_guidance!r})")
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
    on_validation: Callable[[int, list], None] | None = None  # step, PIL images
    on_checkpoint: Callable[[int, Path], None] | None = None
    log: Callable[[str], None] | None = None


@dataclass
class TrainResult:
    final_step: int
    lora_path: Path | None
    sample_grid_path: Path | None
    usage: dict[str, int] = field(default_factory=dict)
    stopped: bool = False
    losses: list[float] = field(default_factory=list)


# --- base model ------------------------------------------------------------------------------------


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

    try:
        return _check_pipeline_folder(
            Path(snapshot_download(base_model, allow_patterns=HUB_PATTERNS, local_files_only=True)), base_model
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
        folder = Path(snapshot_download(base_model, allow_patterns=HUB_PATTERNS, etag_timeout=10))
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
    family, pipeline_class = _pipeline_family(folder, base_model)
    missing = [name for name in FAMILY_COMPONENTS[family] if not (folder / name).is_dir()]
    if missing:
        what = f" is an SDXL pipeline ({pipeline_class}) but" if family == "sdxl" else ""
        raise ModelUnavailable(f"base_model {base_model!r}: {folder}{what} lacks {', '.join(missing)}.")
    return folder


def _pipeline_family(folder: Path, base_model: str) -> tuple[str, str]:
    """("sdxl" or "sd", the pipeline's class name) from the folder's model_index.json."""
    index = folder / "model_index.json"
    if not index.is_file():
        raise ModelUnavailable(
            f"base_model {base_model!r}: {folder} is not a diffusers pipeline (no model_index.json)."
        )
    try:
        pipeline_class = str(json.loads(index.read_text()).get("_class_name", ""))
    except (ValueError, AttributeError) as error:
        raise ModelUnavailable(f"base_model {base_model!r}: {index} is not valid JSON.") from error
    return ("sdxl" if "XL" in pipeline_class else "sd"), pipeline_class


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


# --- the run ---------------------------------------------------------------------------------------


class _Run:
    """One call of train(): the loaded models, the cached data and the loop."""

    def __init__(self, config: TrainConfig, data_paths: list[Path], output_dir: Path, callbacks: Callbacks | None):
        self.config = config
        self.data_paths = [Path(p) for p in data_paths]
        self.output_dir = Path(output_dir)
        self.callbacks = callbacks or Callbacks()
        self.checkpoints_dir = self.output_dir / "checkpoints"
        self.cache_dir = self.output_dir / "cache"

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
        self.cache_dtype = torch.float16 if self.autocast_dtype is not None else torch.float32

        self.samples = read_samples(self.data_paths)
        self.base_folder = resolve_base_model(config.base_model)
        self.family = _pipeline_family(self.base_folder, config.base_model)[0]
        kind = " (SDXL)" if self.family == "sdxl" else ""
        self.log(
            f"Base model {config.base_model}{kind} from {self.base_folder}; {len(self.samples)} samples; {self.device}"
        )
        self._load_models()
        self._assign_buckets()

    def _device(self):
        import torch

        if self.config.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        device = torch.device(self.config.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {self.config.device!r} was asked for but no CUDA GPU is available.")
        return device

    def _load_models(self) -> None:
        import torch
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from peft import LoraConfig
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        config, folder = self.config, str(self.base_folder)
        # SD has one text encoder; SDXL a second one, with a projection: its pooled embedding conditions the UNet.
        encoder_classes = {"text_encoder": CLIPTextModel, "text_encoder_2": CLIPTextModelWithProjection}
        encoder_names = ("text_encoder", "text_encoder_2") if self.family == "sdxl" else ("text_encoder",)
        tokenizer_names = ("tokenizer", "tokenizer_2") if self.family == "sdxl" else ("tokenizer",)
        self.tokenizer_names = tokenizer_names
        try:
            self.tokenizers = [CLIPTokenizer.from_pretrained(folder, subfolder=name) for name in tokenizer_names]
            self.text_encoders = {
                name: encoder_classes[name].from_pretrained(folder, subfolder=name) for name in encoder_names
            }
            self.vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
            self.unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
            self.noise_scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
        except (OSError, ValueError) as error:
            raise ModelUnavailable(f"base_model {config.base_model!r} could not be loaded: {error}") from error
        self.prediction_type = self.noise_scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ModelUnavailable(
                f"base_model {config.base_model!r} predicts {self.prediction_type!r}; only epsilon and "
                "v_prediction are supported."
            )
        text_encoders = list(self.text_encoders.values())
        for module in (self.unet, self.vae, *text_encoders):
            module.requires_grad_(False)
        # The VAE encodes in fp32 (fp16 VAEs, SDXL's included, can overflow); the frozen UNet/text encoders take
        # the autocast dtype.
        self.vae.to(self.device)
        for module in (self.unet, *text_encoders):
            module.to(self.device) if self.weight_dtype == torch.float32 else module.to(self.device, self.weight_dtype)

        torch.manual_seed(config.seed)  # LoRA's gaussian init
        self.unet.add_adapter(
            LoraConfig(
                r=config.rank,
                lora_alpha=config.alpha,
                init_lora_weights="gaussian",
                target_modules=UNET_TARGET_MODULES,
            )
        )
        self.trained_modules = {"unet": self.unet}
        if config.train_text_encoder:
            for name, text_encoder in self.text_encoders.items():
                text_encoder.add_adapter(
                    LoraConfig(
                        r=config.rank,
                        lora_alpha=config.alpha,
                        init_lora_weights="gaussian",
                        target_modules=TEXT_ENCODER_TARGET_MODULES,
                    )
                )
                self.trained_modules[name] = text_encoder
        self.params: dict[str, Any] = {}
        for prefix, module in self.trained_modules.items():
            for name, parameter in module.named_parameters():
                if parameter.requires_grad:
                    parameter.data = parameter.data.float()  # LoRA weights train in fp32
                    self.params[f"{prefix}.{name}"] = parameter
        if config.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            if config.train_text_encoder:
                for text_encoder in text_encoders:
                    enable = getattr(text_encoder, "activation_checkpointing_enable", None)
                    (enable or text_encoder.gradient_checkpointing_enable)()
        vae_blocks = len(self.vae.config.block_out_channels)
        unet_blocks = len(self.unet.config.block_out_channels)
        self.vae_scale = 2 ** (vae_blocks - 1)
        self.pixel_multiple = self.vae_scale * 2 ** (unet_blocks - 1)

    def _assign_buckets(self) -> None:
        from PIL import Image, UnidentifiedImageError

        multiple = math.lcm(bucket_multiple(self.config.resolution), self.pixel_multiple)
        self.buckets = bucket_sizes(self.config.resolution, multiple)
        self.sample_bucket: list[tuple[int, int]] = []
        self.sample_hash: list[str] = []
        # SDXL's time ids of each sample: original (oriented) size, crop top-left, target size, each (h, w). They
        # follow from the image's size and its bucket, as the cover-crop does: the same on every (resumed) run.
        self.sample_time_ids: list[tuple[int, ...]] = []
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
            self.sample_time_ids.append((height, width, top, left, bucket[1], bucket[0]))

    # --- caches

    def build_caches(self) -> None:

        self.cache_dir.mkdir(parents=True, exist_ok=True)
        vae_id = _fingerprint(self.base_folder, "vae")
        dtype_name = str(self.cache_dtype).removeprefix("torch.")
        keys = [f"{digest}-{w}x{h}" for digest, (w, h) in zip(self.sample_hash, self.sample_bucket, strict=True)]
        first_index = {}  # key -> a sample with that content and bucket (duplicates share one latent)
        for index, key in enumerate(keys):
            first_index.setdefault(key, index)
        self.latents = self._cached(
            self.cache_dir / f"latents-{vae_id}-{dtype_name}.safetensors",
            keys,
            lambda todo: self._encode_images([first_index[key] for key in todo]),
            "latents",
        )
        self.latent_keys = keys
        captions = [sample.caption for sample in self.samples]
        if self.config.caption_dropout > 0:
            captions.append("")
        self.caption_keys = [hashlib.sha256(caption.encode()).hexdigest() for caption in captions]
        self.empty_key = hashlib.sha256(b"").hexdigest()
        by_key = dict(zip(self.caption_keys, captions, strict=True))
        if self.config.train_text_encoder:
            # The text encoders change while training: keep token ids (one per tokenizer), encode every step.
            self.token_ids = {key: tuple(ids[0] for ids in self._tokenize([text])) for key, text in by_key.items()}
            self.embeddings = {}
        else:
            text_id = _fingerprint(self.base_folder, *self.text_encoders, *self.tokenizer_names)
            # SDXL caches each caption's pooled embedding too, under the caption's key + POOLED_SUFFIX.
            suffixes = ("", POOLED_SUFFIX) if self.family == "sdxl" else ("",)
            self.embeddings = self._cached(
                self.cache_dir / f"text-{text_id}-{dtype_name}.safetensors",
                [key + suffix for key in by_key for suffix in suffixes],
                lambda todo: self._encode_captions(
                    list(dict.fromkeys(by_key[key.removesuffix(POOLED_SUFFIX)] for key in todo))
                ),
                "text embeddings",
            )
            self.token_ids = {}

    def _cached(self, path: Path, keys: list[str], compute, what: str) -> dict:
        """{key: tensor} for `keys`: those in the cache file are read, the others computed and added."""
        import torch
        from safetensors.torch import load_file, save_file

        stored = {}
        if path.is_file():
            try:
                stored = load_file(str(path))
            except Exception:  # noqa: BLE001 - a damaged cache is recomputed
                self.log(f"The {what} cache {path.name} is unreadable; recomputing it.")
                stored = {}
        todo = [key for key in dict.fromkeys(keys) if key not in stored]
        if todo:
            started = time.perf_counter()
            computed = compute(todo)
            stored.update({key: tensor.to(self.cache_dtype).cpu().contiguous() for key, tensor in computed.items()})
            temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
            save_file(stored, str(temporary))
            _fsync_file(temporary)
            os.replace(temporary, path)
            self.log(f"Cached {len(todo)} {what} in {time.perf_counter() - started:.1f} s")
        else:
            self.log(f"Reused {len(keys)} cached {what}")
        return {key: stored[key].to(torch.float32) if not self.on_cuda else stored[key] for key in keys}

    def _encode_images(self, indices: list[int]) -> dict:
        import numpy as np
        import torch
        from PIL import Image

        out = {}
        groups: dict[tuple[int, int], list[int]] = {}
        for index in indices:
            groups.setdefault(self.sample_bucket[index], []).append(index)
        scaling = self.vae.config.scaling_factor
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        for size, members in groups.items():
            for start in range(0, len(members), 8):
                chunk = members[start : start + 8]
                pixels = []
                for index in chunk:
                    with Image.open(io.BytesIO(self.samples[index].image_bytes)) as image:
                        array = np.asarray(_cover_crop(image, size), dtype=np.float32) / 127.5 - 1.0
                    pixels.append(torch.from_numpy(array).permute(2, 0, 1))
                batch = torch.stack(pixels).to(self.device, dtype=torch.float32)
                with torch.no_grad():
                    latents = (self.vae.encode(batch).latent_dist.mode() - shift) * scaling
                for index, latent in zip(chunk, latents, strict=True):
                    out[f"{self.sample_hash[index]}-{size[0]}x{size[1]}"] = latent
        return out

    def _tokenize(self, texts: list[str]) -> list:
        """The token ids of `texts` for each tokenizer (one for SD, two for SDXL)."""
        return [
            tokenizer(
                texts,
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids
            for tokenizer in self.tokenizers
        ]

    def _encode_texts(self, token_ids: list):
        """(prompt embeddings, pooled embeddings or None) of a batch of token ids, one tensor per tokenizer.
        SD: the text encoder's last hidden state. SDXL: both encoders' penultimate hidden states concatenated
        on the last dimension, and text_encoder_2's projected pooled embedding (as StableDiffusionXLPipeline)."""
        import torch

        if self.family == "sd":
            return self.text_encoders["text_encoder"](token_ids[0].to(self.device))[0], None
        outputs = [
            encoder(ids.to(self.device), output_hidden_states=True)
            for encoder, ids in zip(self.text_encoders.values(), token_ids, strict=True)
        ]
        return torch.cat([output.hidden_states[-2] for output in outputs], dim=-1), outputs[-1].text_embeds

    def _encode_captions(self, texts: list[str]) -> dict:
        """{caption key: prompt embedding} (and {caption key + POOLED_SUFFIX: pooled embedding} for SDXL)."""
        import torch

        out = {}
        for start in range(0, len(texts), 32):
            chunk = texts[start : start + 32]
            with torch.no_grad(), self._autocast():
                hidden, pooled = self._encode_texts(self._tokenize(chunk))
            for number, text in enumerate(chunk):
                key = hashlib.sha256(text.encode()).hexdigest()
                out[key] = hidden[number].float()
                if pooled is not None:
                    out[key + POOLED_SUFFIX] = pooled[number].float()
        return out

    def _text_conditioning(self, keys: list[str]):
        """(prompt embeddings, pooled embeddings or None) of a batch of caption keys: from the cache, or encoded
        now (with gradients) when the text encoders train."""
        import torch

        if self.config.train_text_encoder:
            token_ids = [torch.stack([self.token_ids[key][i] for key in keys]) for i in range(len(self.tokenizers))]
            return self._encode_texts(token_ids)
        hidden = torch.stack([self.embeddings[key] for key in keys]).to(self.device)
        if self.family == "sd":
            return hidden, None
        return hidden, torch.stack([self.embeddings[key + POOLED_SUFFIX] for key in keys]).to(self.device)

    def _added_conditions(self, indices: list[int], pooled) -> dict | None:
        """The UNet's added conditions: none for SD; SDXL's pooled text embeddings and each sample's time ids."""
        import torch

        if self.family == "sd":
            return None
        time_ids = torch.tensor([self.sample_time_ids[i] for i in indices], dtype=torch.float32, device=self.device)
        return {"text_embeds": pooled, "time_ids": time_ids}

    def _autocast(self):
        import contextlib

        import torch

        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # --- data order

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The batches of one epoch, each within one bucket, in an order that depends only on (seed, epoch).
        A bucket's last batch is filled up with the bucket's first samples, so every batch is full."""
        rng = random.Random(f"{self.config.seed}:{epoch}")
        by_bucket: dict[tuple[int, int], list[int]] = {}
        for index, bucket in enumerate(self.sample_bucket):
            by_bucket.setdefault(bucket, []).append(index)
        size = self.config.batch_size
        batches = []
        for bucket in sorted(by_bucket):
            members = by_bucket[bucket][:]
            rng.shuffle(members)
            padded = members + [members[i % len(members)] for i in range(-len(members) % size)]
            batches.extend(padded[i : i + size] for i in range(0, len(padded), size))
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
            self.unet.compile()

    def micro_batch_loss(self, indices: list[int]):
        import torch
        import torch.nn.functional as F

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
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (batch,), device=self.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        target = (
            noise if self.prediction_type == "epsilon" else self.noise_scheduler.get_velocity(latents, noise, timesteps)
        )
        with self._autocast():
            hidden, pooled = self._text_conditioning(keys)
            prediction = self.unet(
                noisy, timesteps, hidden, added_cond_kwargs=self._added_conditions(indices, pooled)
            ).sample
        if config.snr_gamma is None:
            return F.mse_loss(prediction.float(), target.float(), reduction="mean"), [
                self.samples[i].key for i in indices
            ]
        from diffusers.training_utils import compute_snr

        snr = compute_snr(self.noise_scheduler, timesteps)
        weights = torch.stack([snr, config.snr_gamma * torch.ones_like(snr)], dim=1).min(dim=1)[0]
        weights = weights / snr if self.prediction_type == "epsilon" else weights / (snr + 1)
        loss = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        return (loss * weights).mean(), [self.samples[i].key for i in indices]

    # --- checkpoints

    def latest_checkpoint(self) -> Path | None:
        if not self.checkpoints_dir.is_dir():
            return None
        for stale in self.checkpoints_dir.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        done = sorted(p for p in self.checkpoints_dir.glob("checkpoint-*") if (p / "state.json").is_file())
        return done[-1] if done else None

    def save_checkpoint(self, state: dict) -> Path:
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
        done = sorted(p for p in self.checkpoints_dir.glob("checkpoint-*") if p.is_dir())
        for old in done[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)
        self.log(f"Checkpoint at step {step}")
        if self.callbacks.on_checkpoint:
            self.callbacks.on_checkpoint(step, final)
        return final

    def load_checkpoint(self, folder: Path) -> dict:
        import numpy as np
        import torch
        from safetensors.torch import load_file

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
        weights = load_file(str(folder / "lora.safetensors"))
        if set(weights) != set(self.params):
            raise ValueError(f"The checkpoint in {folder} does not hold this run's LoRA weights.")
        with torch.no_grad():
            for name, parameter in self.params.items():
                parameter.copy_(weights[name].to(parameter.device, parameter.dtype))
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

    # --- outputs

    def lora_state_dicts(self) -> dict:
        """The keyword arguments of the pipeline's save_lora_weights: `<module>_lora_layers` and
        `<module>_lora_adapter_metadata` for the UNet and each trained text encoder."""
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        layers, metadata = {}, {}
        for name, module in self.trained_modules.items():
            layers[f"{name}_lora_layers"] = convert_state_dict_to_diffusers(
                get_peft_model_state_dict(module, save_embedding_layers=False)
            )
            metadata[f"{name}_lora_adapter_metadata"] = module.peft_config["default"].to_dict()
        return {**layers, **metadata}

    def _pipeline_class(self):
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        return StableDiffusionXLPipeline if self.family == "sdxl" else StableDiffusionPipeline

    def save_lora_weights(self, folder: Path) -> Path:
        parts = self.lora_state_dicts()
        for key in parts:
            if key.endswith("_lora_layers"):
                parts[key] = {name: tensor.detach().float().cpu().contiguous() for name, tensor in parts[key].items()}
        self._pipeline_class().save_lora_weights(save_directory=str(folder), safe_serialization=True, **parts)
        return folder / LORA_WEIGHTS_NAME

    def _validation_pipeline(self):
        """The base pipeline of this family built from the loaded (LoRA-carrying) components."""
        from diffusers import DPMSolverMultistepScheduler

        components = dict(
            vae=self.vae,
            unet=self.unet,
            scheduler=DPMSolverMultistepScheduler.from_config(self.noise_scheduler.config),
            **self.text_encoders,
            **dict(zip(self.tokenizer_names, self.tokenizers, strict=True)),
        )
        if self.family == "sdxl":
            pipeline = self._pipeline_class()(**components, add_watermarker=False)
        else:
            pipeline = self._pipeline_class()(
                **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
            )
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    def _decode_in_fp32(self, pipeline, latents) -> list:
        """PIL images of a pipeline's latents, decoded by the (fp32) VAE with autocast off."""
        import torch

        with torch.autocast(self.device.type, enabled=False):
            pixels = self.vae.decode(latents.float() / self.vae.config.scaling_factor).sample
        return pipeline.image_processor.postprocess(pixels, output_type="pil")

    def validation_images(self, step: int) -> list:
        import torch

        config = self.config
        prompts = list(config.validation_prompts) or [sample.caption for sample in self.samples[:4]]
        pipeline = self._validation_pipeline()
        for module in self.trained_modules.values():
            module.eval()
        images = []
        devices = [self.device.index or 0] if self.on_cuda else []
        # SDXL's VAE overflows in fp16: its pipeline stops at the latents, which are decoded outside autocast.
        decode_in_fp32 = self.family == "sdxl"
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad(), self._autocast():
                for number, prompt in enumerate(prompts):
                    generator = torch.Generator("cpu").manual_seed(config.seed + number)
                    output = pipeline(
                        prompt,
                        height=config.resolution,
                        width=config.resolution,
                        num_inference_steps=config.validation_steps,
                        guidance_scale=config.validation_guidance,
                        num_images_per_prompt=config.num_validation_images,
                        generator=generator,
                        output_type="latent" if decode_in_fp32 else "pil",
                    ).images
                    images += self._decode_in_fp32(pipeline, output) if decode_in_fp32 else output
        finally:
            for module in self.trained_modules.values():
                module.train()
        if self.callbacks.on_validation:
            self.callbacks.on_validation(step, images)
        return images

    def write_grid(self, images: list) -> Path:
        from PIL import Image

        columns = self.config.num_validation_images
        rows = math.ceil(len(images) / columns)
        width, height = images[0].size
        grid = Image.new("RGB", (columns * width, rows * height))
        for number, image in enumerate(images):
            grid.paste(image, ((number % columns) * width, (number // columns) * height))
        path = self.output_dir / SAMPLES_NAME
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.png")
        grid.save(temporary)
        _fsync_file(temporary)
        os.replace(temporary, path)
        return path

    # --- the loop

    def run(self) -> TrainResult:
        import torch

        config = self.config
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.setup()
        self.build_caches()
        self.build_optimizer()
        step, epoch, position = 0, 0, 0
        usage: dict[str, int] = {}
        losses: list[float] = []
        checkpoint = self.latest_checkpoint()
        if checkpoint is not None:
            state = self.load_checkpoint(checkpoint)
            step, epoch, position = state["step"], state["epoch"], state["position"]
            usage, losses = state["usage"], state["losses"]
            self.log(f"Resumed from {checkpoint.name} at step {step}")
        else:
            random.seed(config.seed)
            import numpy as np

            np.random.seed(config.seed)
            torch.manual_seed(config.seed)
        for module in self.trained_modules.values():
            module.train()
        batches = self.epoch_batches(epoch)
        saved_step = step if checkpoint is not None else -1

        def current_state() -> dict:
            return {"step": step, "epoch": epoch, "position": position, "usage": usage, "losses": losses}

        while step < config.max_steps:
            if self.callbacks.should_stop and self.callbacks.should_stop():
                if saved_step != step:
                    self.save_checkpoint(current_state())
                self.log(f"Stopped at step {step}")
                return TrainResult(step, None, None, dict(usage), True, list(losses))
            started = time.perf_counter()
            total_loss = 0.0
            for _ in range(config.gradient_accumulation):
                if position >= len(batches):
                    epoch, position = epoch + 1, 0
                    batches = self.epoch_batches(epoch)
                indices = batches[position]
                position += 1
                loss, keys = self.micro_batch_loss(indices)
                scaled = loss / config.gradient_accumulation
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
                total_loss += loss.item() / config.gradient_accumulation
                for key in keys:
                    usage[key] = usage.get(key, 0) + 1
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
            losses.append(total_loss)
            elapsed = time.perf_counter() - started
            images_per_second = config.batch_size * config.gradient_accumulation / max(elapsed, 1e-9)
            if self.callbacks.on_step:
                self.callbacks.on_step(step, config.max_steps, total_loss, images_per_second)
            if config.validation_every and step % config.validation_every == 0 and step < config.max_steps:
                self.validation_images(step)
            if step % config.checkpoint_every == 0 or step == config.max_steps:
                self.save_checkpoint(current_state())
                saved_step = step

        lora_path = self.save_lora_weights_atomically()
        grid_path = self.write_grid(self.validation_images(step))
        self.log(f"Finished at step {step}: {lora_path.name}, {grid_path.name}")
        return TrainResult(step, lora_path, grid_path, dict(usage), False, list(losses))

    def save_lora_weights_atomically(self) -> Path:
        temporary = self.output_dir / f".lora-{uuid.uuid4().hex[:8]}"
        temporary.mkdir()
        try:
            written = self.save_lora_weights(temporary)
            _fsync_file(written)
            final = self.output_dir / LORA_WEIGHTS_NAME
            os.replace(written, final)
            _fsync_dir(self.output_dir)
        finally:
            shutil.rmtree(temporary, ignore_errors=True)
        return final


def train(
    config: TrainConfig, data_paths: list[Path], output_dir: Path, *, callbacks: Callbacks | None = None
) -> TrainResult:
    """Train a LoRA on the samples of `data_paths` into `output_dir`, resuming from its latest checkpoint."""
    return _Run(config, data_paths, output_dir, callbacks).run()


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
    "ConfigError",
    "ModelUnavailable",
    "Sample",
    "TrainConfig",
    "TrainResult",
    "resolve_base_model",
    "train",
]
