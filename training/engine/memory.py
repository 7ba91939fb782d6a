"""How much GPU memory a LoRA training run needs, estimated before it starts, and presets that fit 24/48/80 GB.

Nothing is loaded: each component's model class is built from the base model's own config on the `meta` device
(shapes, no storage) and its parameters and buffers are counted. Every byte figure below is an estimate.

What the GPU holds, by phase of the loop (training/engine/train.py):

- caching: the family is loaded (denoiser, VAE, text encoders) and the LoRA is added, then images are encoded
  by the VAE (train.images_per_vae_call images at a time, fp32) and captions by the text encoders (TEXT_ENCODE_BATCH at
  a time); the text encoders are then released.
- training: the frozen denoiser, the LoRA weights, their gradients and AdamW's two states (all fp32: 16 bytes a
  LoRA parameter), the VAE (kept for previews) and the activations of one micro-batch.
- previews: as training without gradients (zeroed with set_to_none), plus one no-grad sampling step of the
  denoiser (batch 2: classifier-free guidance) or the fp32 VAE decoding one image, whichever is larger.

The peak is the largest phase. Each phase's tensors get ALLOCATOR_MARGIN on top (the caching allocator's rounding
and fragmentation) and CUDA_CONTEXT_BYTES (the context, cuBLAS/cuDNN workspaces and kernels, about 0.5-1.5 GB on
current cards, which torch's own counters do not show).

Weights: frozen weights are stored in the weight dtype, 2 bytes (bf16/fp16) or 4 (mixed_precision "no" or the
CPU); the VAE is always fp32. LoRA parameters: for every module that the family's `lora_targets` match (peft's
rule: the module's name equals a target or ends with "." + target), rank x (in_features + out_features).

Activations of a transformer denoiser (FLUX, Chroma, SD3, Z-Image, Flux.2, Qwen-Image): per block,
c x tokens x hidden x bytes, tokens = image tokens ((resolution / pixels per token)^2) plus text tokens (the
family's longest caption) for joint blocks. Korthikanti et al. 2022 ("Reducing Activation Recomputation in
Large Transformer Models") give 34 s b h bytes at 16 bits for a GPT layer whose attention kernel keeps no s^2
scores (flash/SDPA): 17 elements per token and hidden unit. diffusers' DiT blocks keep more (adaLN modulation
and gates, QK RMSNorm, rotary embeddings, no dropout masks; under CUDA autocast the norms' outputs are fp32).
Measured with saved-tensor hooks on the loop's own forward at hidden 256 (bf16 autocast on the CPU with
layer_norm/group_norm upcast to fp32 as CUDA autocast does; CPU SDPA keeps what the CUDA flash kernel keeps):
21 (SD3), 22-23 (FLUX, Chroma, Qwen-Image), 24 (Flux.2) and 28 (Z-Image, whose SwiGLU feed-forward has three
projections) elements. So c = TRANSFORMER_ACTIVATION_ELEMENTS (23), Z-Image's own 28.5. With
gradient_checkpointing each block keeps only its inputs (CHECKPOINT_INPUT_ELEMENTS per token and hidden unit:
the hidden states plus a share of the rotary embeddings and conditioning; measured 1.2-1.65) and one block is
recomputed at a time. Backward needs about one block's activations more as working memory (the gradients of
the block's saved tensors), two with checkpointing (the recomputed block and its gradients).

UNet denoisers (SD 1.x/2.x, SDXL): the UNet is walked on the meta device, each unit at its resolution level
(latent pixels / 4^level), with per-pixel element counts from the same bookkeeping (the inputs of each norm,
activation, convolution and linear, and attention's q, k, v and output): a ResNet block keeps
3 x (in + out channels); a BasicTransformerBlock 28 x its width (self-attention 6, cross-attention 4, GEGLU
feed-forward 18); a Transformer2DModel's norm and projections 3 x its width; resamplers their inputs. An element
costs UNET_BYTES_PER_ELEMENT_FACTOR (1.25) x the autocast dtype's bytes (fp32 group-norm outputs), which puts
the model within -5%..+45% of the saved tensors measured as above on SD- and SDXL-shaped UNets (it errs high,
most with checkpointing). diffusers checkpoints each ResNet and each transformer block.

The VAE in fp32: encoding keeps about VAE_ENCODE_MAPS full-resolution maps of the encoder's first width per
image at its peak, decoding VAE_DECODE_MAPS of the decoder's widest full-resolution stage (peak RSS measured on
the CPU with FLUX's VAE: 5.2 and 4.3). Text encoding: the hidden states of every layer (the families read
penultimate or intermediate layers with output_hidden_states), a few wider transients, the attention scores and,
for causal-LM encoders, every token's logits; per call of the family's caption chunk.

Uncertainty: the weights and the LoRA are exact up to buffers' dtypes. Activations are within about +-25% for
the transformers (the measured spread of c; CUDA kernels and autocast may keep slightly different tensors) and
+-40% for the UNets; the VAE and text-encoding peaks, within a factor of 1.5. Not counted: T5's `wo` kept in fp32
by transformers in fp16 runs, torch.compile's buffers, and memory other processes hold on the card. Choose with
a margin: presets fit FIT_FRACTION of the card.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from .families import ModelUnavailable, family_class
from .train import images_per_vae_call

GB = 2**30  # cards sold as "24 GB" hold 24 GiB
PRESETS_GB = (24, 48, 80)
FIT_FRACTION = 0.9  # a preset's estimate stays below this share of the card

LORA_BYTES_PER_PARAMETER = 4 + 4 + 8  # fp32 weight, fp32 gradient, AdamW's two fp32 states
CUDA_CONTEXT_BYTES = 1 * GB
ALLOCATOR_MARGIN = 0.10

TRANSFORMER_ACTIVATION_ELEMENTS = 23.0  # c: per token, hidden unit and block (see the module docstring)
FAMILY_ACTIVATION_ELEMENTS = {"z_image": 28.5}  # measured where a family's blocks keep notably more
CHECKPOINT_INPUT_ELEMENTS = 1.6
TEXT_ENCODER_ACTIVATION_ELEMENTS = 17.0  # Korthikanti's GPT layer (CLIP, trained only with train_text_encoder)
UNET_RESNET_ELEMENTS = 3.0  # x (in + out channels) per pixel
UNET_ATTENTION_BLOCK_ELEMENTS = 28.0  # x width per token
UNET_TRANSFORMER_WRAPPER_ELEMENTS = 3.0  # x width per token
UNET_BYTES_PER_ELEMENT_FACTOR = 1.25  # some kept tensors are fp32 norm outputs under CUDA autocast
PREVIEW_BATCH = 2  # the denoiser's batch while sampling previews with classifier-free guidance

# As train.py encodes: images per VAE call (_encode_images) and captions per text-encoder call (_encode_prompts).
TEXT_ENCODE_BATCH = 16
VAE_ENCODE_MAPS = 5.2
VAE_DECODE_MAPS = 4.3
TEXT_ENCODING_EXTRA_STATES = 8  # wider transients (feed-forward, q/k/v) besides the kept hidden states

DEFAULT_NATIVE_RESOLUTION = 1024  # transformer families without a sample_size: the resolution they are made for
MIN_PRESET_RESOLUTION = 256
MIN_PRESET_RANK = 4


# --- what the base model's configs say ---------------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """One part of the denoiser whose activations are kept together (a transformer block, a UNet ResNet or
    attention block): what it keeps per token without recomputation and, checkpointed, only its inputs."""

    tokens: str  # "image", "text" or "joint" (image + text)
    level: int  # UNets: the resolution level (latent side / 2**level); transformers: 0
    elements: float  # activation elements kept per token
    input_elements: float  # kept per token when checkpointed
    checkpointed: bool  # recomputed in backward under gradient_checkpointing


@dataclass(frozen=True)
class TextEncoderShape:
    name: str
    parameters: int
    buffers: int
    hidden: int
    layers: int
    heads: int
    tokens: int
    lora_fan: int  # sum of (in + out) features over the modules text_encoder_lora_targets match
    vocabulary: int  # logits a language-model head computes per token while encoding (0: no head)


@dataclass(frozen=True)
class ModelShape:
    """A base model's sizes, as its configs give them (cached per folder)."""

    family: str
    denoiser_parameters: int
    denoiser_buffers: int
    lora_fan: int  # LoRA parameters = rank x lora_fan
    text_encoders: tuple[TextEncoderShape, ...]
    vae_parameters: int
    vae_buffers: int
    vae_encoder_width: int  # channels of the VAE encoder's full-resolution stage
    vae_decoder_width: int  # the widest channels the VAE decoder has at full resolution
    vae_scale: int  # pixels per latent pixel
    pixels_per_token: int  # transformer families: pixels per image token side; UNets: vae_scale
    text_tokens: int  # text tokens in the denoiser's sequence (transformers) or cross-attention (UNets)
    text_batch: int  # captions per text-encoder call
    units: tuple[Unit, ...]
    native_resolution: int
    unet: bool

    @property
    def text_encoder_parameters(self) -> int:
        return sum(encoder.parameters for encoder in self.text_encoders)

    def lora_parameters(self, rank: int) -> int:
        return rank * self.lora_fan


def _config_fingerprint(folder: Path) -> tuple:
    """(path, mtime, size) of every config, so a rebuilt folder is analysed again."""
    files = [folder / "model_index.json", *sorted(folder.glob("*/*config*.json"))]
    return tuple((str(path), path.stat().st_mtime_ns, path.stat().st_size) for path in files if path.is_file())


def model_shape(folder: Path, family_name: str) -> ModelShape:
    """The sizes of the pipeline in `folder` (a `family_name` pipeline), from its configs; ModelUnavailable
    naming what is missing."""
    folder = Path(folder)
    return _model_shape(str(folder.resolve()), family_name, _config_fingerprint(folder))


@functools.lru_cache(maxsize=32)
def _model_shape(folder_name: str, family_name: str, fingerprint: tuple) -> ModelShape:
    folder = Path(folder_name)
    cls = family_class(family_name)
    index = _read_json(folder / "model_index.json", folder)
    denoiser = _meta_model(folder, cls.denoiser_name, index)
    vae = _meta_model(folder, "vae", index)
    family = _family_view(cls, folder, denoiser, vae)
    unet = cls.denoiser_name == "unet"
    text_tokens = _text_tokens(family, folder)
    text_encoders = []
    for name in cls.components:
        if not name.startswith("text_encoder"):
            continue
        model = _meta_model(folder, name, index)
        config = model.config
        tokenizer_max = _tokenizer_max_length(folder / name.replace("text_encoder", "tokenizer"))
        text_encoders.append(
            TextEncoderShape(
                name=name,
                parameters=_count(model.parameters()),
                buffers=_count(model.buffers()),
                hidden=_first_attribute(config, ("hidden_size", "d_model"), 0),
                layers=_first_attribute(config, ("num_hidden_layers", "num_layers"), 0),
                heads=_first_attribute(config, ("num_attention_heads", "num_heads"), 0),
                tokens=min(tokenizer_max or text_tokens, max(text_tokens, 77)),
                lora_fan=lora_fan(model, cls.text_encoder_lora_targets),
                vocabulary=_head_vocabulary(model),
            )
        )
        del model
    vae_scale = _vae_scale(vae.config)
    if unet:
        units = tuple(_unet_units(denoiser, text_tokens))
        pixels_per_token = vae_scale
    else:
        units = tuple(_transformer_units(denoiser, FAMILY_ACTIVATION_ELEMENTS.get(family_name)))
        try:
            pixels_per_token = int(family.pixel_multiple)
        except (AttributeError, TypeError, KeyError):
            pixels_per_token = vae_scale * int(getattr(cls, "patch_size", 2))
    sample_size = denoiser.config.get("sample_size") if hasattr(denoiser.config, "get") else None
    native = int(sample_size) * vae_scale if isinstance(sample_size, int) else DEFAULT_NATIVE_RESOLUTION
    encoder_width, decoder_width = _vae_widths(vae.config)
    return ModelShape(
        family=family_name,
        denoiser_parameters=_count(denoiser.parameters()),
        denoiser_buffers=_count(denoiser.buffers()),
        lora_fan=lora_fan(denoiser, family.lora_targets),
        text_encoders=tuple(text_encoders),
        vae_parameters=_count(vae.parameters()),
        vae_buffers=_count(vae.buffers()),
        vae_encoder_width=encoder_width,
        vae_decoder_width=decoder_width,
        vae_scale=vae_scale,
        pixels_per_token=pixels_per_token,
        text_tokens=text_tokens,
        text_batch=_text_batch(family),
        units=units,
        native_resolution=native,
        unet=unet,
    )


def _read_json(path: Path, folder: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except OSError as error:
        raise ModelUnavailable(f"{folder} cannot be sized: {path.name} is missing ({error}).") from error
    except ValueError as error:
        raise ModelUnavailable(f"{folder} cannot be sized: {path} is not valid JSON.") from error


def meta_model(folder: Path, component: str):
    """The pipeline component `component` of `folder`, built from its config on the meta device (no weights):
    the class model_index.json names (diffusers or transformers), else the one its config.json names."""
    folder = Path(folder)
    return _meta_model(folder, component, _read_json(folder / "model_index.json", folder))


def _meta_model(folder: Path, component: str, index: dict):
    import torch

    path = folder / component
    if not (path / "config.json").is_file():
        raise ModelUnavailable(f"{folder} cannot be sized: it has no {component}/config.json.")
    library, class_name = (index.get(component) or [None, None])[:2]
    with torch.device("meta"):
        if library == "diffusers" or (library is None and "_class_name" in _read_json(path / "config.json", folder)):
            import diffusers

            class_name = class_name or _read_json(path / "config.json", folder)["_class_name"]
            model_class = getattr(diffusers, class_name, None)
            if model_class is None:
                raise ModelUnavailable(f"{folder}: its {component} is a {class_name}, unknown to diffusers.")
            return model_class.from_config(model_class.load_config(str(path)))
        import transformers

        config = transformers.AutoConfig.from_pretrained(str(path))
        architectures = getattr(config, "architectures", None) or []
        model_class = getattr(transformers, class_name or "", None) or (
            getattr(transformers, architectures[0], None) if architectures else None
        )
        if model_class is None:
            return transformers.AutoModel.from_config(config)
        return model_class._from_config(config)


def _family_view(cls, folder: Path, denoiser, vae):
    """An unloaded instance of the family with the meta denoiser and VAE attached: its own properties
    (pixel_multiple, the variant's caption length) then answer as after load()."""
    import torch

    config = SimpleNamespace(base_model=str(folder), guidance=1.0, timestep_shift=None, train_text_encoder=False)
    family = cls(folder, config, torch.device("meta"), torch.bfloat16)
    family.vae, family.denoiser = vae, denoiser
    if family.name == "sd3":
        family.patch_size = int(denoiser.config.patch_size)  # as SD3Family.load
    if family.name == "flux2":
        # Flux2Family.load sizes its targets to the transformer's single blocks.
        from .families import flux2

        family.lora_targets = flux2.ATTENTION_TARGETS + flux2._single_block_outputs(denoiser.config.num_single_layers)
    return family


def _text_tokens(family, folder: Path) -> int:
    """Text tokens the denoiser sees per caption, at most (captions are padded or cut to it)."""
    if family.denoiser_name == "unet":
        return _tokenizer_max_length(folder / "tokenizer") or 77
    module = sys.modules[type(family).__module__]
    length = getattr(family, "max_sequence_length", None) or getattr(module, "MAX_SEQUENCE_LENGTH", None) or 512
    length = int(length)
    if hasattr(family, "text_length"):  # FLUX.1 and Chroma cap T5's length by its tokenizer
        tokenizer = "tokenizer_2" if "tokenizer_2" in family.components else "tokenizer"
        maximum = _tokenizer_max_length(folder / tokenizer)
        if maximum:
            length = family.text_length(SimpleNamespace(model_max_length=maximum))
    if family.name == "sd3":  # CLIP's 77 tokens precede T5's
        length += _tokenizer_max_length(folder / "tokenizer") or 77
    return length


def _text_batch(family) -> int:
    """Captions per text-encoder call: the loop's chunk, or the family module's own smaller one."""
    module = sys.modules[type(family).__module__]
    chunks = [getattr(module, name, None) for name in ("ENCODE_BATCH", "PROMPT_CHUNK", "TEXT_BATCH")]
    return min([TEXT_ENCODE_BATCH, *(chunk for chunk in chunks if isinstance(chunk, int))])


def _head_vocabulary(model) -> int:
    """Causal-LM text encoders (FLUX.2's Qwen3, Qwen-Image's Qwen2.5-VL) also compute every token's logits."""
    import torch

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return head.out_features if isinstance(head, torch.nn.Linear) else 0


def _tokenizer_max_length(path: Path) -> int | None:
    try:
        value = json.loads((path / "tokenizer_config.json").read_text()).get("model_max_length")
    except (OSError, ValueError, AttributeError):
        return None
    return int(value) if isinstance(value, int | float) and value < 1e6 else None


def _count(tensors) -> int:
    return sum(tensor.numel() for tensor in tensors)


def _first_attribute(config, names: tuple[str, ...], default):
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return default


def lora_fan(model, targets) -> int:
    """sum of (in + out) features over the modules of `model` that LoRA with `targets` adapts (peft's rule: the
    name equals a target or ends with "." + target); a LoRA of rank r adds r times this many parameters.
    Convolutions: lora_A has in x kernel size inputs, lora_B a 1x1 kernel."""
    import torch

    targets = tuple(targets)
    if not targets:
        return 0
    fan = 0
    for name, module in model.named_modules():
        if not any(name == target or name.endswith(f".{target}") for target in targets):
            continue
        if isinstance(module, torch.nn.Linear):
            fan += module.in_features + module.out_features
        elif isinstance(module, torch.nn.Conv1d | torch.nn.Conv2d | torch.nn.Conv3d):
            fan += module.in_channels * math.prod(module.kernel_size) // module.groups + module.out_channels
    return fan


def _vae_scale(config) -> int:
    if config.get("temperal_downsample") is not None:  # Qwen-Image's video VAE
        return 2 ** len(config["temperal_downsample"])
    return 2 ** (len(config["block_out_channels"]) - 1)


def _vae_widths(config) -> tuple[int, int]:
    """The encoder's full-resolution channels, and the widest the decoder has at full resolution (its last
    stage's and the one upsampled into it)."""
    if config.get("base_dim") is not None:
        widths = [config["base_dim"] * multiple for multiple in config["dim_mult"]]
        return widths[0], max(widths[:2])
    encoder = list(config["block_out_channels"])
    decoder = list(config.get("decoder_block_out_channels") or encoder)
    return encoder[0], max(decoder[:2])


def _transformer_units(denoiser, elements: float | None):
    """One unit per block of each of the transformer's top-level block lists. Z-Image's refiners see only the
    image (noise_refiner) or only the caption (context_refiner); every other block sees both."""
    import torch

    config = denoiser.config
    hidden = config.get("dim") or config["num_attention_heads"] * config["attention_head_dim"]
    per_hidden = elements or TRANSFORMER_ACTIVATION_ELEMENTS
    for name, child in denoiser.named_children():
        if not isinstance(child, torch.nn.ModuleList):
            continue
        tokens = {"noise_refiner": "image", "context_refiner": "text"}.get(name, "joint")
        for _ in child:
            yield Unit(tokens, 0, per_hidden * hidden, CHECKPOINT_INPUT_ELEMENTS * hidden, True)


def _unet_units(unet, text_tokens: int):
    """The units of a UNet2DConditionModel at their resolution levels (module docstring)."""
    level = 0
    for block in unet.down_blocks:
        yield from _unet_block_units(block, level, text_tokens)
        for downsampler in getattr(block, "downsamplers", None) or []:
            yield Unit("image", level, downsampler.channels, downsampler.channels, False)
            level += 1
    yield from _unet_block_units(unet.mid_block, level, text_tokens)
    for block in unet.up_blocks:
        yield from _unet_block_units(block, level, text_tokens)
        for upsampler in getattr(block, "upsamplers", None) or []:
            yield Unit("image", level, upsampler.channels, upsampler.channels, False)  # the interpolation's input
            level -= 1
            yield Unit("image", level, upsampler.channels, upsampler.channels, False)  # the convolution's input


def _unet_block_units(block, level: int, text_tokens: int):
    if block is None:
        return
    for resnet in getattr(block, "resnets", None) or []:
        elements = UNET_RESNET_ELEMENTS * (resnet.in_channels + resnet.out_channels)
        yield Unit("image", level, elements, resnet.in_channels, True)
    for attention in getattr(block, "attentions", None) or []:
        width = attention.in_channels
        yield Unit("image", level, UNET_TRANSFORMER_WRAPPER_ELEMENTS * width, width, False)
        for transformer_block in getattr(attention, "transformer_blocks", None) or []:
            dim = transformer_block.dim
            yield Unit("image", level, UNET_ATTENTION_BLOCK_ELEMENTS * dim, dim, True)


# --- the estimate ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryEstimate:
    """The peak GPU memory of a run, in bytes, and its parts."""

    family: str
    resolution: int
    batch_size: int
    rank: int
    gradient_checkpointing: bool
    # parameter counts
    denoiser_parameters: int
    lora_parameters: int
    text_encoder_parameters: int
    vae_parameters: int
    # bytes
    frozen_weights: int  # the denoiser's (and, with train_text_encoder, the text encoders')
    lora_weights: int
    lora_gradients: int
    optimizer_states: int
    activations: int  # of one training micro-batch
    text_encoders: int  # weights, while captions are cached (released before training)
    text_encoding: int  # transient, while captions are cached
    vae: int  # weights, fp32, in every phase
    vae_encoding: int  # transient, while images are cached
    preview_activations: int  # transient, while previews are sampled (denoiser step or VAE decoding)
    caching_bytes: int  # each phase's total, margin and CUDA context included
    training_bytes: int
    previews_bytes: int
    phase: str  # of the peak: "caching", "training" or "previews"
    peak_bytes: int
    cuda_overhead: int  # of the peak phase: the CUDA context and the allocator margin

    def fits(self, gpu_gb: float, fraction: float = FIT_FRACTION) -> bool:
        return self.peak_bytes <= fraction * gpu_gb * GB

    def parts(self, phase: str | None = None) -> list[tuple[str, int]]:
        """(what, bytes) of a phase (the peak's by default), as people read them."""
        phase = phase or self.phase
        lora = {
            "caching": self.lora_weights,
            "training": self.lora_weights + self.lora_gradients + self.optimizer_states,
            "previews": self.lora_weights + self.optimizer_states,
        }[phase]
        parts = [("weights", self.frozen_weights), ("LoRA and optimizer", lora), ("VAE", self.vae)]
        if phase == "caching":
            parts += [
                ("text encoders", self.text_encoders),
                ("encoding", max(self.vae_encoding, self.text_encoding)),
            ]
        elif phase == "training":
            parts.append(("activations", self.activations))
        else:
            parts.append(("sampling", self.preview_activations))
        total = {"caching": self.caching_bytes, "training": self.training_bytes, "previews": self.previews_bytes}
        parts.append(("CUDA context and allocator margin", total[phase] - sum(size for _, size in parts)))
        return parts

    def as_text(self) -> str:
        """e.g. "about 21.4 GB (training; weights 4.7 GB, activations 12.1 GB, ...; caching 15.0 GB, ...)"."""
        parts = ", ".join(f"{name} {_gb(size)}" for name, size in self.parts())
        others = {"caching": self.caching_bytes, "training": self.training_bytes, "previews": self.previews_bytes}
        other = ", ".join(f"{name} {_gb(size)}" for name, size in others.items() if name != self.phase)
        return f"about {_gb(self.peak_bytes)} ({self.phase}; {parts}; other phases: {other})"


def _gb(size: float) -> str:
    return f"{size / GB:.1f} GB"


def _on_gpu_half(config) -> bool:
    return config.mixed_precision in ("bf16", "fp16") and config.device != "cpu"


def activation_element_bytes(shape: ModelShape, config) -> float:
    """Bytes of one activation element: the autocast dtype's (fp32 without), UNets' with their fp32 share."""
    return (2 if _on_gpu_half(config) else 4) * (UNET_BYTES_PER_ELEMENT_FACTOR if shape.unet else 1.0)


def estimate(folder: Path, family_name: str, config) -> MemoryEstimate:
    """The peak GPU memory of training a LoRA of the `family_name` pipeline in `folder` with `config` (a
    TrainConfig), from the base model's configs (module docstring)."""
    return estimate_for_shape(model_shape(folder, family_name), config)


def estimate_for_shape(shape: ModelShape, config) -> MemoryEstimate:
    cls = family_class(shape.family)
    weight_bytes = 2 if _on_gpu_half(config) else 4
    activation_bytes = activation_element_bytes(shape, config)
    batch, resolution, rank = config.batch_size, config.resolution, config.rank
    checkpointing = bool(config.gradient_checkpointing)
    train_text_encoder = bool(config.train_text_encoder and cls.text_encoder_lora_targets)

    lora_parameters = shape.lora_parameters(rank)
    text_lora_parameters = sum(rank * encoder.lora_fan for encoder in shape.text_encoders) if train_text_encoder else 0
    trained = lora_parameters + text_lora_parameters
    frozen = (shape.denoiser_parameters + shape.denoiser_buffers) * weight_bytes
    text_weights = sum(encoder.parameters + encoder.buffers for encoder in shape.text_encoders) * weight_bytes
    vae = (shape.vae_parameters + shape.vae_buffers) * 4
    lora_weights, lora_gradients, optimizer_states = trained * 4, trained * 4, trained * 8

    kept, largest = denoiser_activations(shape, resolution, batch, checkpointing, activation_bytes)
    activations = kept + largest * (2 if checkpointing else 1)
    if train_text_encoder:
        activations += sum(
            TEXT_ENCODER_ACTIVATION_ELEMENTS * encoder.layers * encoder.tokens * encoder.hidden * batch * weight_bytes
            for encoder in shape.text_encoders
        )
    _, largest_at_preview = denoiser_activations(shape, resolution, PREVIEW_BATCH, False, activation_bytes)
    pixels = resolution * resolution
    vae_encoding = VAE_ENCODE_MAPS * shape.vae_encoder_width * pixels * 4 * images_per_vae_call(resolution, resolution)
    vae_decoding = VAE_DECODE_MAPS * shape.vae_decoder_width * pixels * 4
    preview_activations = max(largest_at_preview, vae_decoding)
    text_encoding = max(
        (
            shape.text_batch
            * encoder.tokens
            * (
                encoder.hidden * (encoder.layers + 1 + TEXT_ENCODING_EXTRA_STATES)
                + encoder.heads * encoder.tokens
                + encoder.vocabulary
            )
            * weight_bytes
            for encoder in shape.text_encoders
        ),
        default=0,
    )

    if train_text_encoder:  # the text encoders stay, and captions are encoded every step
        frozen += text_weights
        text_weights_while_caching = 0
    else:
        text_weights_while_caching = text_weights
    tensors = {
        "caching": frozen + lora_weights + vae + text_weights_while_caching + max(vae_encoding, text_encoding),
        "training": frozen + lora_weights + lora_gradients + optimizer_states + vae + activations,
        "previews": frozen + lora_weights + optimizer_states + vae + preview_activations,
    }
    totals = {phase: int(size * (1 + ALLOCATOR_MARGIN) + CUDA_CONTEXT_BYTES) for phase, size in tensors.items()}
    phase = max(totals, key=totals.get)
    return MemoryEstimate(
        family=shape.family,
        resolution=resolution,
        batch_size=batch,
        rank=rank,
        gradient_checkpointing=checkpointing,
        denoiser_parameters=shape.denoiser_parameters,
        lora_parameters=trained,
        text_encoder_parameters=shape.text_encoder_parameters,
        vae_parameters=shape.vae_parameters,
        frozen_weights=int(frozen),
        lora_weights=int(lora_weights),
        lora_gradients=int(lora_gradients),
        optimizer_states=int(optimizer_states),
        activations=int(activations),
        text_encoders=int(text_weights_while_caching),
        text_encoding=int(text_encoding),
        vae=int(vae),
        vae_encoding=int(vae_encoding),
        preview_activations=int(preview_activations),
        caching_bytes=totals["caching"],
        training_bytes=totals["training"],
        previews_bytes=totals["previews"],
        phase=phase,
        peak_bytes=totals[phase],
        cuda_overhead=int(totals[phase] - tensors[phase]),
    )


def denoiser_activations(shape: ModelShape, resolution: int, batch: int, checkpointing: bool, bytes_per_element):
    """(bytes kept over the forward pass, the largest unit's bytes) for square `resolution` images."""
    if shape.unet:
        latent = math.ceil(resolution / shape.vae_scale)
    else:
        latent = resolution // shape.pixels_per_token
    kept, largest = 0.0, 0.0
    for unit in shape.units:
        side = math.ceil(latent / 2**unit.level)
        image = side * side
        tokens = {"image": image, "text": shape.text_tokens, "joint": image + shape.text_tokens}[unit.tokens]
        full = unit.elements * tokens * batch * bytes_per_element
        largest = max(largest, full)
        kept += (
            unit.input_elements * tokens * batch * bytes_per_element if checkpointing and unit.checkpointed else full
        )
    return kept, largest


# --- presets ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Knob:
    """A setting the preset search may change to save memory: `levels(base, shape)` lists its TrainConfig
    values, the preferred (usually the base config's) first."""

    name: str
    levels: Any  # (base TrainConfig, ModelShape) -> list of {field: value}


def _checkpointing_levels(base, shape) -> list[dict]:
    return [{"gradient_checkpointing": value} for value in dict.fromkeys((bool(base.gradient_checkpointing), True))]


def _micro_batch_levels(base, shape) -> list[dict]:
    """Halving the micro-batch, with gradient accumulation keeping the effective batch (base batch x accumulation)."""
    effective = base.batch_size * base.gradient_accumulation
    levels, batch = [], base.batch_size
    while True:
        levels.append({"batch_size": batch, "gradient_accumulation": math.ceil(effective / batch)})
        if batch == 1:
            return levels
        batch = max(1, batch // 2)


def _rank_levels(base, shape) -> list[dict]:
    levels, rank = [base.rank], base.rank
    while rank // 2 >= MIN_PRESET_RANK:
        rank //= 2
        levels.append(rank)
    # A smaller rank keeps the base config's alpha / rank, so the adapter's scale stays the same.
    return [
        {"rank": rank} if rank == base.rank else {"rank": rank, "alpha": base.alpha * rank / base.rank}
        for rank in levels
    ]


def _resolution_levels(base, shape) -> list[dict]:
    """The family's native resolution, then 3/4 and 1/2 of it (multiples of 64, at least 256)."""
    native = shape.native_resolution
    values = [native] + [max(MIN_PRESET_RESOLUTION, native * part // 4 // 64 * 64) for part in (3, 2)]
    return [{"resolution": value} for value in dict.fromkeys(values)]


# In the order they are given up: the first varies fastest. Quantized base weights (NF4/FP8 frozen weights) and
# 8-bit optimizer states are not implemented by the engine yet; when they are, add their knobs here (before
# gradient checkpointing: they cost less quality than a lower resolution, less speed than checkpointing) and make
# `estimate_for_shape` honour the TrainConfig fields they set.
KNOBS: tuple[Knob, ...] = (
    Knob("gradient_checkpointing", _checkpointing_levels),
    Knob("micro_batch", _micro_batch_levels),
    Knob("rank", _rank_levels),
    Knob("resolution", _resolution_levels),
)


@dataclass(frozen=True)
class Preset:
    gpu_gb: float
    values: dict  # the TrainConfig fields it sets
    estimate: MemoryEstimate
    label: str  # e.g. "24 GB: 1024 px, batch 1, gradient checkpointing"

    def config(self, base):
        """`base` with this preset's values."""
        return dataclasses.replace(base, **self.values)


def preset_candidates(base, shape: ModelShape):
    """Every combination of the knobs' levels, most preferred first: the last knob in KNOBS changes slowest."""
    level_lists = [knob.levels(base, shape) for knob in reversed(KNOBS)]
    for combination in itertools.product(*level_lists):
        values: dict = {}
        for part in combination:
            values.update(part)
        yield values


def preset_for(folder: Path, family_name: str, base_config, gpu_gb: float) -> Preset | None:
    """The most preferred configuration whose estimate fits FIT_FRACTION of a `gpu_gb` card: the family's native
    resolution, then the base config's effective batch, then its rank, are kept longest; gradient checkpointing
    is turned on first, then the micro-batch shrinks (gradient accumulation keeps the effective batch), then the
    rank, then the resolution (KNOBS). None when nothing fits."""
    shape = model_shape(folder, family_name)
    for values in preset_candidates(base_config, shape):
        config = dataclasses.replace(base_config, **values)
        result = estimate_for_shape(shape, config)
        if result.fits(gpu_gb):
            return Preset(gpu_gb, values, result, _label(gpu_gb, config, base_config))
    return None


def _label(gpu_gb: float, config, base) -> str:
    parts = [f"{config.resolution} px", f"batch {config.batch_size}"]
    if config.gradient_accumulation > 1:
        parts[-1] += f" x {config.gradient_accumulation} accumulated"
    if config.rank != base.rank:
        parts.append(f"rank {config.rank}")
    if config.gradient_checkpointing:
        parts.append("gradient checkpointing")
    return f"{gpu_gb:g} GB: " + ", ".join(parts)


def _settings(preset: Preset) -> str:
    return ", ".join(f"{name}={value!r}" for name, value in preset.values.items())


def out_of_memory_message(folder: Path, family_name: str, config, gpu_gb: float) -> str:
    """What staff read when a run ran out of GPU memory: the estimate for its settings, and the preset that fits
    its card (or the smallest larger card's preset when none does)."""
    shape = model_shape(folder, family_name)
    label = family_class(family_name).label
    result = estimate_for_shape(shape, config)
    lines = [
        f"The run ran out of memory on a {gpu_gb:g} GB GPU. {label} with these settings "
        f"(resolution {config.resolution}, batch {config.batch_size}, rank {config.rank}, gradient checkpointing "
        f"{'on' if config.gradient_checkpointing else 'off'}) needs {result.as_text()}."
    ]
    preset = preset_for(folder, family_name, config, gpu_gb)
    if preset is not None:
        lines.append(f"Settings that fit this card: {preset.label} ({_settings(preset)}).")
        return " ".join(lines)
    lines.append(
        f"No settings this engine offers fit a {gpu_gb:g} GB card (the frozen weights alone take "
        f"{_gb(result.frozen_weights)})."
    )
    for card in (size for size in PRESETS_GB if size > gpu_gb):
        larger = preset_for(folder, family_name, config, card)
        if larger is not None:
            lines.append(f"The smallest card with settings that fit: {larger.label} ({_settings(larger)}).")
            return " ".join(lines)
    lines.append(
        f"None fits even a {PRESETS_GB[-1]} GB card: that needs quantized base weights or 8-bit optimizer states, "
        "which the engine does not offer yet."
    )
    return " ".join(lines)
