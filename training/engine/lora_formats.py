"""The trained LoRA in kohya-ss's key format, next to diffusers' file, for ComfyUI, Forge/A1111 and kohya tools.

Input: the `pytorch_lora_weights.safetensors` the engine writes (`<Pipeline>.save_lora_weights`: keys
`<component>.<module path>.lora_A.weight` / `.lora_B.weight`, plus peft's LoraConfig per component in the
`lora_adapter_metadata` header). Output: `<name>_kohya.safetensors` with, per adapted module, `<kohya
name>.lora_down.weight`, `.lora_up.weight` and `.alpha` (kohya scales up @ down by alpha / rank, as peft scales
B @ A by lora_alpha / r), and kohya's `ss_*` metadata plus ours (`lora_family`, `lora_base_model`,
`lora_source_sha256`: the diffusers file's hash).

Which module names: for every family, the form that ComfyUI's key map accepts (`comfy/lora.py`
model_lora_keys_unet / model_lora_keys_clip and the comfy/utils.py maps they use; read at Comfy-Org/ComfyUI
17358c8 / 09708ea) AND diffusers' `load_lora_weights` loads back (0.42's lora_conversion_utils), which is also
what kohya's sd-scripts writes where it trains the family:

- sd (1.x/2.x): `lora_unet_<diffusers UNet path>` (`lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_
  attn1_to_q`). sd-scripts trains SD 1.x/2.x on the diffusers UNet layout, so its files use these names (not the
  LDM `input_blocks` ones); ComfyUI maps them through `unet_to_diffusers`, and diffusers' SD pipeline cannot
  load LDM names (only its SDXL pipeline remaps `input_blocks`: `_maybe_map_sgm_blocks_to_diffusers`).
- sdxl: `lora_unet_<SGM path>` (`lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`), sd-scripts' SDXL
  names; ComfyUI takes them as its own state-dict names, diffusers remaps them with the UNet config.
- text encoders: `lora_te_` (SD) or `lora_te1_` / `lora_te2_` (SDXL) + `text_model_encoder_layers_<n>_
  (self_attn_{q,k,v,out}_proj | mlp_fc1 | mlp_fc2)` (transformers-4 CLIP names, which both sides expect).
- flux, chroma: `lora_unet_<BFL path>` (`lora_unet_double_blocks_0_img_attn_qkv`, `lora_unet_single_blocks_0_
  linear1`), sd-scripts' FLUX names and ComfyUI's own. Not `lora_transformer_<diffusers path>` (OneTrainer's form,
  which ComfyUI maps too): diffusers' reader of that form knows only the attention projections and would put
  the feed-forward LoRAs on whole blocks. BFL fuses q, k, v (and, in single blocks, the MLP input) in one Linear;
  their LoRAs become one LoRA of that Linear with a block-diagonal up matrix (rank = the sum of the parts'),
  which is the same weight delta, and which diffusers splits back exactly (`_convert_to_ai_toolkit_cat`
  recognises the block-diagonal "sparse" layout). Caveat of the installed diffusers: it sizes a single block's
  linear1 split as FLUX.1's 3072 / 12288, so it cannot read single-block q/k/v/MLP LoRAs of a narrower model.
- flux2: `lora_unet_<BFL path>` as for FLUX.1 (`_convert_kohya_flux2_lora_to_diffusers`); single blocks' fused
  `attn.to_qkv_mlp_proj` / `attn.to_out` are BFL's linear1 / linear2 one to one. The shared modulation layers
  are not offered: diffusers' kohya reader drops them.
- qwen_image: `lora_unet_<diffusers path>`: ComfyUI's Qwen-Image model uses diffusers' module names, and
  diffusers' Qwen reader turns the flattened name back into the path.
- z_image: `lora_unet_<ComfyUI/original path>`: to_q/to_k/to_v fuse into `attention_qkv` (block-diagonal, as
  above; diffusers splits it in three equal parts) and to_out.0 is `attention_out`. ComfyUI's Z-Image key map
  accepts no flattened diffusers name (to_q only under `transformer.`/`diffusion_model.` prefixes).
- sd3: `lora_unet_<SAI MMDiT path>` (`lora_unet_joint_blocks_0_x_block_attn_qkv`), sd-scripts' SD3 names and
  ComfyUI's own. diffusers' SD3 pipeline converts no kohya-style file at all (SD3LoraLoaderMixin reads only its
  own keys), so this file serves ComfyUI/Forge; diffusers users keep the diffusers file.

Every output module is checked against these tables; a module without an exact kohya form (e.g. FLUX.2's
modulation, Z-Image's embedders, DoRA, LoRA biases) raises UnsupportedLora rather than writing a file that some
reader would load differently.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KOHYA_SUFFIX = "_kohya.safetensors"
ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY

# ss_base_model_version: sd-scripts' value where it trains the family, else the family's own name.
BASE_MODEL_VERSIONS = {
    "sd": "sd_v1",  # "sd_v2" when the UNet attends to 1024-wide (OpenCLIP ViT-H) text states
    "sdxl": "sdxl_base_v1-0",
    "flux": "flux1",
    "chroma": "chroma",
    "sd3": "sd3",
    "flux2": "flux2",
    "qwen_image": "qwen_image",
    "z_image": "z_image",
}
# SDXL base's UNet layout, for files converted without the UNet's config.
SDXL_UNET_DEFAULTS = {
    "layers_per_block": 2,
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
}

QKV = (1, 1, 1)  # a fused q/k/v Linear: three equal blocks of rows
FLUX_LINEAR1 = (1, 1, 1, 4)  # a FLUX.1 single block's linear1: q, k, v, then the MLP input (mlp_ratio 4)


class UnsupportedLora(ValueError):
    """The LoRA has a module, or a kind of adapter, that the kohya format cannot carry exactly."""


@dataclass
class AdaptedModule:
    """One module's LoRA as the diffusers file holds it."""

    component: str  # the pipeline component: "unet", "transformer", "text_encoder", "text_encoder_2"
    path: str  # the module's path inside the component (diffusers/peft naming)
    down: Any  # lora_A weight [rank, in_features(, kh, kw)]
    up: Any  # lora_B weight [out_features, rank(, 1, 1)]
    scale: float  # what the forward pass multiplies up @ down by: peft's lora_alpha / r

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


@dataclass(frozen=True)
class KohyaTarget:
    """Where a diffusers module's LoRA goes in the kohya file."""

    name: str  # the kohya module name: keys <name>.lora_down.weight, <name>.lora_up.weight, <name>.alpha
    part: int = 0  # which block of rows of the original (fused) weight the module is
    part_sizes: tuple[int, ...] = (1,)  # relative row counts of all blocks of that weight; (1,): not fused


# A family's naming: (component, module path, the denoiser's config) -> its KohyaTarget, None if it has none.
Namer = Callable[[str, str, Mapping[str, Any]], KohyaTarget | None]


# --- reading the diffusers file ---------------------------------------------------------------------------

_DIFFUSERS_KEY = re.compile(
    r"^(?P<component>[^.]+)\.(?P<path>.+?)\."
    r"(?:lora_(?P<peft>[AB])|lora_linear_layer\.(?P<legacy>down|up)|lora\.(?P<older>down|up))\.weight$"
)


def read_diffusers_lora(path: Path, *, rank: int | None = None, alpha: float | None = None) -> list[AdaptedModule]:
    """The adapted modules of a diffusers LoRA file, each with the scale its forward pass applies.

    The scale comes from the peft LoraConfig the engine saves in the file (r, lora_alpha, rank/alpha patterns,
    rsLoRA); `rank`/`alpha`, when given, must agree with it. A file without that metadata needs `alpha` (and
    takes each module's rank from its weights, or `rank`)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata() or {}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    configs = _adapter_configs(header)

    pairs: dict[tuple[str, str], dict[str, Any]] = {}
    for key, tensor in tensors.items():
        match = _DIFFUSERS_KEY.match(key)
        if match is None:
            raise UnsupportedLora(
                f"{path.name}: {key!r} is not a LoRA up/down weight (DoRA magnitudes, LoRA biases and other "
                "adapters have no kohya LoRA form)."
            )
        side = match["peft"] or {"down": "A", "up": "B"}[match["legacy"] or match["older"]]
        pairs.setdefault((match["component"], match["path"]), {})[side] = tensor

    modules = []
    for (component, module_path), weights in sorted(pairs.items()):
        if set(weights) != {"A", "B"}:
            raise UnsupportedLora(f"{path.name}: {component}.{module_path} lacks its lora_A or lora_B weight.")
        down, up = weights["A"], weights["B"]
        scale = _module_scale(configs.get(component), component, module_path, int(down.shape[0]), rank, alpha)
        modules.append(AdaptedModule(component, module_path, down, up, scale))
    if not modules:
        raise UnsupportedLora(f"{path.name} holds no LoRA weights.")
    return modules


def _adapter_configs(header: Mapping[str, str]) -> dict[str, dict]:
    """Component -> its LoraConfig dict, from diffusers' `lora_adapter_metadata` ("unet.r": 4, ...)."""
    packed = header.get(ADAPTER_METADATA_KEY)
    if not packed:
        return {}
    configs: dict[str, dict] = {}
    for key, value in json.loads(packed).items():
        component, _, field = key.partition(".")
        configs.setdefault(component, {})[field] = value
    return configs


def _pattern_value(patterns: Mapping[str, Any] | None, module_path: str, default):
    """peft's rank_pattern / alpha_pattern lookup: a key matches the module path's end (peft's get_pattern_key)."""
    for pattern, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module_path):
            return value
    return default


def _module_scale(config, component, module_path, weight_rank, rank, alpha) -> float:
    where = f"{component}.{module_path}"
    if config is None:
        if alpha is None:
            raise UnsupportedLora(
                f"{where}: the file has no adapter metadata (peft's LoraConfig), so the LoRA's alpha must be given."
            )
        module_rank = rank or weight_rank
        if module_rank != weight_rank:
            raise UnsupportedLora(f"{where} has rank {weight_rank}, not {module_rank}.")
        return float(alpha) / module_rank
    if config.get("use_dora"):
        raise UnsupportedLora(f"{where} is a DoRA adapter; the kohya LoRA format has no magnitude vectors.")
    if config.get("lora_bias"):
        raise UnsupportedLora(f"{where} trains a LoRA bias, which the kohya LoRA format cannot hold.")
    configured_rank = int(_pattern_value(config.get("rank_pattern"), module_path, config["r"]))
    configured_alpha = float(_pattern_value(config.get("alpha_pattern"), module_path, config["lora_alpha"]))
    if configured_rank != weight_rank:
        raise UnsupportedLora(f"{where} has rank {weight_rank} but its LoraConfig says {configured_rank}.")
    if rank is not None and not config.get("rank_pattern") and rank != configured_rank:
        raise UnsupportedLora(f"{where}: rank {rank} was given but the file's LoraConfig says {configured_rank}.")
    if alpha is not None and not config.get("alpha_pattern") and float(alpha) != configured_alpha:
        raise UnsupportedLora(f"{where}: alpha {alpha} was given but the file's LoraConfig says {configured_alpha}.")
    denominator = math.sqrt(configured_rank) if config.get("use_rslora") else configured_rank
    return configured_alpha / denominator


# --- module names ----------------------------------------------------------------------------------------


def _flat(path: str) -> str:
    return path.replace(".", "_")


def _unsupported(family: str, component: str, path: str, why: str = "") -> UnsupportedLora:
    return UnsupportedLora(
        f"{family}: the LoRA of {component}.{path} has no kohya form that both ComfyUI and diffusers read"
        + (f" ({why})" if why else "")
        + "."
    )


_CLIP_LAYER_MODULE = re.compile(r"^encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])$")


def _text_encoder_name(prefix: str, path: str) -> str | None:
    """kohya's CLIP names are transformers-4 paths (text_model.encoder...); transformers 5 drops text_model."""
    path = path.removeprefix("text_model.")
    if not _CLIP_LAYER_MODULE.match(path):
        return None  # ComfyUI maps only these six projections per CLIP layer (LORA_CLIP_MAP)
    return f"{prefix}text_model_{_flat(path)}"


_RESNET_TO_SGM = {"conv1": "in_layers.2", "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1"}
_RESNET_TO_SGM["conv_shortcut"] = "skip_connection"
_UNET_TOP_LEVEL_TO_SGM = {
    "conv_in": "input_blocks.0.0",
    "conv_out": "out.2",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
}


def sgm_unet_path(path: str, unet_config: Mapping[str, Any]) -> str | None:
    """The SGM (original SDXL) path of a diffusers UNet2DConditionModel module, None if it has none.

    SGM numbers the UNet's blocks in one sequence: input_blocks.0 is conv_in, then each down block's resnet
    (`.0`) + attention (`.1`) pairs and its downsampler (`.0.op`); middle_block.0/1/2 is resnet, attention,
    resnet; output_blocks holds each up block's layers_per_block + 1 resnet/attention pairs, the upsampler
    joining the last one (after the attention when the block has one). `unet_config`: the UNet's config
    (layers_per_block, up_block_types)."""
    if path in _UNET_TOP_LEVEL_TO_SGM:
        return _UNET_TOP_LEVEL_TO_SGM[path]
    layers = unet_config.get("layers_per_block", 2)
    if not isinstance(layers, int):
        if len(set(layers)) != 1:
            return None  # SGM's numbering assumes the same layer count in every block
        layers = layers[0]
    parts = path.split(".")

    def inner(kind: str, rest: list[str]) -> str | None:
        if kind == "resnets":
            if not rest or rest[0] not in _RESNET_TO_SGM:
                return None
            return ".".join([_RESNET_TO_SGM[rest[0]], *rest[1:]])
        return ".".join(rest)  # an attention (Transformer2DModel): SGM's SpatialTransformer has the same names

    if parts[0] == "down_blocks" and len(parts) >= 4:
        block, kind, index = int(parts[1]), parts[2], int(parts[3])
        if kind == "downsamplers":
            return f"input_blocks.{(block + 1) * (layers + 1)}.0.op" if parts[4:] == ["conv"] else None
        slot = {"resnets": 0, "attentions": 1}.get(kind)
        rest = inner(kind, parts[4:]) if slot is not None else None
        return None if rest is None else f"input_blocks.{1 + block * (layers + 1) + index}.{slot}.{rest}"
    if parts[0] == "mid_block" and len(parts) >= 3:
        kind, index = parts[1], int(parts[2])
        slot = {("resnets", 0): 0, ("attentions", 0): 1, ("resnets", 1): 2}.get((kind, index))
        rest = inner(kind, parts[3:]) if slot is not None else None
        return None if rest is None else f"middle_block.{slot}.{rest}"
    if parts[0] == "up_blocks" and len(parts) >= 4:
        block, kind, index = int(parts[1]), parts[2], int(parts[3])
        first = block * (layers + 1)  # an up block has layers_per_block + 1 resnets, one output block each
        if kind == "upsamplers":
            up_types = list(unet_config.get("up_block_types") or SDXL_UNET_DEFAULTS["up_block_types"])
            slot = 2 if "CrossAttn" in up_types[block] else 1
            return f"output_blocks.{first + layers}.{slot}.conv" if parts[4:] == ["conv"] else None
        slot = {"resnets": 0, "attentions": 1}.get(kind)
        rest = inner(kind, parts[4:]) if slot is not None else None
        return None if rest is None else f"output_blocks.{first + index}.{slot}.{rest}"
    return None


def _sd_namer(component: str, path: str, config: Mapping[str, Any]) -> KohyaTarget | None:
    if component == "unet":
        return KohyaTarget(f"lora_unet_{_flat(path)}")
    if component == "text_encoder":
        name = _text_encoder_name("lora_te_", path)
        return KohyaTarget(name) if name else None
    return None


def _sdxl_namer(component: str, path: str, config: Mapping[str, Any]) -> KohyaTarget | None:
    if component == "unet":
        sgm = sgm_unet_path(path, {**SDXL_UNET_DEFAULTS, **config})
        return KohyaTarget(f"lora_unet_{_flat(sgm)}") if sgm else None
    prefix = {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}.get(component)
    name = _text_encoder_name(prefix, path) if prefix else None
    return KohyaTarget(name) if name else None


# diffusers FluxTransformer2DModel / ChromaTransformer2DModel -> BFL, per double block
_FLUX_DOUBLE = {
    "attn.to_q": ("img_attn.qkv", 0, QKV),
    "attn.to_k": ("img_attn.qkv", 1, QKV),
    "attn.to_v": ("img_attn.qkv", 2, QKV),
    "attn.add_q_proj": ("txt_attn.qkv", 0, QKV),
    "attn.add_k_proj": ("txt_attn.qkv", 1, QKV),
    "attn.add_v_proj": ("txt_attn.qkv", 2, QKV),
    "attn.to_out.0": ("img_attn.proj", 0, (1,)),
    "attn.to_add_out": ("txt_attn.proj", 0, (1,)),
    "ff.net.0.proj": ("img_mlp.0", 0, (1,)),
    "ff.net.2": ("img_mlp.2", 0, (1,)),
    "ff_context.net.0.proj": ("txt_mlp.0", 0, (1,)),
    "ff_context.net.2": ("txt_mlp.2", 0, (1,)),
    "norm1.linear": ("img_mod.lin", 0, (1,)),
    "norm1_context.linear": ("txt_mod.lin", 0, (1,)),
}
_FLUX_SINGLE = {
    "attn.to_q": ("linear1", 0, FLUX_LINEAR1),
    "attn.to_k": ("linear1", 1, FLUX_LINEAR1),
    "attn.to_v": ("linear1", 2, FLUX_LINEAR1),
    "proj_mlp": ("linear1", 3, FLUX_LINEAR1),
    "proj_out": ("linear2", 0, (1,)),
    "norm.linear": ("modulation.lin", 0, (1,)),
}
# FLUX.1's embedders and final layer are left out: diffusers' kohya reader names them without the
# "transformer." prefix, so its pipeline drops them.
_FLUX_TOP_LEVEL: dict[str, KohyaTarget] = {}
# diffusers Flux2Transformer2DModel -> BFL
_FLUX2_DOUBLE = {
    **{key: value for key, value in _FLUX_DOUBLE.items() if key.startswith("attn.")},
    "ff.linear_in": ("img_mlp.0", 0, (1,)),
    "ff.linear_out": ("img_mlp.2", 0, (1,)),
    "ff_context.linear_in": ("txt_mlp.0", 0, (1,)),
    "ff_context.linear_out": ("txt_mlp.2", 0, (1,)),
}
_FLUX2_SINGLE = {"attn.to_qkv_mlp_proj": ("linear1", 0, (1,)), "attn.to_out": ("linear2", 0, (1,))}
# (the time embedder is left out: ComfyUI's FLUX map lists it under FLUX.1's diffusers name only)
_FLUX2_TOP_LEVEL = {
    "x_embedder": KohyaTarget("lora_unet_img_in"),
    "context_embedder": KohyaTarget("lora_unet_txt_in"),
    "proj_out": KohyaTarget("lora_unet_final_layer_linear"),
}
# diffusers SD3Transformer2DModel -> SAI MMDiT, per joint block
_SD3_BLOCK = {
    "attn.to_q": ("x_block.attn.qkv", 0, QKV),
    "attn.to_k": ("x_block.attn.qkv", 1, QKV),
    "attn.to_v": ("x_block.attn.qkv", 2, QKV),
    "attn.add_q_proj": ("context_block.attn.qkv", 0, QKV),
    "attn.add_k_proj": ("context_block.attn.qkv", 1, QKV),
    "attn.add_v_proj": ("context_block.attn.qkv", 2, QKV),
    "attn.to_out.0": ("x_block.attn.proj", 0, (1,)),
    "attn.to_add_out": ("context_block.attn.proj", 0, (1,)),
    "attn2.to_q": ("x_block.attn2.qkv", 0, QKV),
    "attn2.to_k": ("x_block.attn2.qkv", 1, QKV),
    "attn2.to_v": ("x_block.attn2.qkv", 2, QKV),
    "attn2.to_out.0": ("x_block.attn2.proj", 0, (1,)),
    "ff.net.0.proj": ("x_block.mlp.fc1", 0, (1,)),
    "ff.net.2": ("x_block.mlp.fc2", 0, (1,)),
    "ff_context.net.0.proj": ("context_block.mlp.fc1", 0, (1,)),
    "ff_context.net.2": ("context_block.mlp.fc2", 0, (1,)),
}
_SD3_TOP_LEVEL = {
    "pos_embed.proj": KohyaTarget("lora_unet_x_embedder_proj"),
    "context_embedder": KohyaTarget("lora_unet_context_embedder"),
    "time_text_embed.timestep_embedder.linear_1": KohyaTarget("lora_unet_t_embedder_mlp_0"),
    "time_text_embed.timestep_embedder.linear_2": KohyaTarget("lora_unet_t_embedder_mlp_2"),
    "time_text_embed.text_embedder.linear_1": KohyaTarget("lora_unet_y_embedder_mlp_0"),
    "time_text_embed.text_embedder.linear_2": KohyaTarget("lora_unet_y_embedder_mlp_2"),
    "proj_out": KohyaTarget("lora_unet_final_layer_linear"),
}
# Qwen-Image's block modules: ComfyUI's model and diffusers' share these names
_QWEN_BLOCK_MODULES = re.compile(
    r"^transformer_blocks\.\d+\.(attn\.(to_[qkv]|to_out\.0|add_[qkv]_proj|to_add_out)|(img|txt)_mod\.1"
    r"|(img|txt)_mlp\.net\.(0\.proj|2))$"
)
_QWEN_TOP_LEVEL = {"img_in", "txt_in", "proj_out", "norm_out.linear"}
_QWEN_TOP_LEVEL |= {"time_text_embed.timestep_embedder.linear_1", "time_text_embed.timestep_embedder.linear_2"}
# diffusers ZImageTransformer2DModel -> ComfyUI's (original) names, per layer / refiner block
_Z_IMAGE_BLOCK = {
    "attention.to_q": ("attention.qkv", 0, QKV),
    "attention.to_k": ("attention.qkv", 1, QKV),
    "attention.to_v": ("attention.qkv", 2, QKV),
    "attention.to_out.0": ("attention.out", 0, (1,)),
    "feed_forward.w1": ("feed_forward.w1", 0, (1,)),
    "feed_forward.w2": ("feed_forward.w2", 0, (1,)),
    "feed_forward.w3": ("feed_forward.w3", 0, (1,)),
    "adaLN_modulation.0": ("adaLN_modulation.0", 0, (1,)),
}

_BLOCK_PATH = re.compile(r"^(?P<blocks>[a-z_]+)\.(?P<index>\d+)\.(?P<module>.+)$")


def _block_namer(block_tables: Mapping[str, tuple[str, Mapping]], top_level: Mapping[str, KohyaTarget]):
    """A namer for transformers whose blocks map to original blocks module by module: block_tables maps the
    diffusers block list (e.g. "transformer_blocks") to the original one ("double_blocks") and its module table."""

    def name(component: str, path: str, config: Mapping[str, Any]) -> KohyaTarget | None:
        if component != "transformer":
            return None
        if path in top_level:
            return top_level[path]
        match = _BLOCK_PATH.match(path)
        if match is None or match["blocks"] not in block_tables:
            return None
        original_blocks, table = block_tables[match["blocks"]]
        if match["module"] not in table:
            return None
        original, part, sizes = table[match["module"]]
        return KohyaTarget(f"lora_unet_{original_blocks}_{match['index']}_{_flat(original)}", part, sizes)

    return name


def _qwen_namer(component: str, path: str, config: Mapping[str, Any]) -> KohyaTarget | None:
    if component != "transformer" or not (_QWEN_BLOCK_MODULES.match(path) or path in _QWEN_TOP_LEVEL):
        return None
    return KohyaTarget(f"lora_unet_{_flat(path)}")


_FLUX_NAMER = _block_namer(
    {
        "transformer_blocks": ("double_blocks", _FLUX_DOUBLE),
        "single_transformer_blocks": ("single_blocks", _FLUX_SINGLE),
    },
    _FLUX_TOP_LEVEL,
)
NAMERS: dict[str, Namer] = {
    "sd": _sd_namer,
    "sdxl": _sdxl_namer,
    "flux": _FLUX_NAMER,
    "chroma": _FLUX_NAMER,  # Chroma keeps FLUX.1's block layout (ComfyUI's Chroma is a Flux subclass)
    "flux2": _block_namer(
        {
            "transformer_blocks": ("double_blocks", _FLUX2_DOUBLE),
            "single_transformer_blocks": ("single_blocks", _FLUX2_SINGLE),
        },
        _FLUX2_TOP_LEVEL,
    ),
    "sd3": _block_namer({"transformer_blocks": ("joint_blocks", _SD3_BLOCK)}, _SD3_TOP_LEVEL),
    "qwen_image": _qwen_namer,
    "z_image": _block_namer(
        {
            "layers": ("layers", _Z_IMAGE_BLOCK),
            "noise_refiner": ("noise_refiner", _Z_IMAGE_BLOCK),
            "context_refiner": ("context_refiner", _Z_IMAGE_BLOCK),
        },
        {},
    ),
}


# --- conversion ------------------------------------------------------------------------------------------


def kohya_state_dict(
    modules: list[AdaptedModule], family: str, denoiser_config: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The kohya-format tensors of `modules` (diffusers LoRA modules of a `family` pipeline)."""
    if family not in NAMERS:
        raise UnsupportedLora(f"No kohya format for the model family {family!r}; known: {', '.join(NAMERS)}.")
    namer = NAMERS[family]
    config = dict(denoiser_config or {})
    groups: dict[str, list[tuple[KohyaTarget, AdaptedModule]]] = {}
    for module in modules:
        target = namer(module.component, module.path, config)
        if target is None:
            raise _unsupported(family, module.component, module.path)
        groups.setdefault(target.name, []).append((target, module))

    import torch

    tensors: dict[str, Any] = {}
    for name, members in groups.items():
        down, up, alpha = _combine(name, members)
        tensors[f"{name}.lora_down.weight"] = down.contiguous()
        tensors[f"{name}.lora_up.weight"] = up.contiguous()
        tensors[f"{name}.alpha"] = torch.tensor(float(alpha), dtype=torch.float32)
    return tensors


def _combine(name: str, members: list[tuple[KohyaTarget, AdaptedModule]]):
    """(lora_down, lora_up, alpha) of one kohya module from the diffusers module(s) it stands for."""
    target, module = members[0]
    if target.part_sizes == (1,):
        if len(members) > 1:
            raise UnsupportedLora(f"{name}: two modules map to it ({', '.join(m.path for _, m in members)}).")
        return module.down, module.up, module.scale * module.rank
    return _fuse(name, target.part_sizes, {t.part: m for t, m in members})


def _fuse(name: str, part_sizes: tuple[int, ...], parts: dict[int, AdaptedModule]):
    """One LoRA for a fused Linear (q, k, v...) from its parts' LoRAs: lora_down stacks the parts' downs and
    lora_up is block-diagonal, so up @ down is each part's delta in its own rows. Parts without a LoRA get a
    zero block of the same rank (readers that split the fused LoRA then find equal blocks). The parts' scales
    become one alpha: a part's differing scale goes into its up block."""
    present = sorted(parts)
    reference = parts[present[0]]
    units = {parts[p].up.shape[0] / part_sizes[p] for p in present}
    if len(units) != 1 or not float(next(iter(units))).is_integer():
        raise UnsupportedLora(f"{name}: the fused parts' output sizes do not have the expected proportions.")
    unit = int(next(iter(units)))
    ranks = [parts[p].rank if p in parts else reference.rank for p in range(len(part_sizes))]
    down = reference.down.new_zeros((sum(ranks), *reference.down.shape[1:]))
    up = reference.up.new_zeros((unit * sum(part_sizes), sum(ranks), *reference.up.shape[2:]))
    row = column = 0
    for part, (size, rank) in enumerate(zip(part_sizes, ranks, strict=True)):
        if part in parts:
            module = parts[part]
            if module.down.shape[1:] != reference.down.shape[1:]:
                raise UnsupportedLora(f"{name}: the fused parts take inputs of different sizes.")
            down[column : column + rank] = module.down
            relative = module.scale / reference.scale
            up[row : row + unit * size, column : column + rank] = module.up if relative == 1 else module.up * relative
        row += unit * size
        column += rank
    return down, up, reference.scale * sum(ranks)


def kohya_metadata(
    modules: list[AdaptedModule],
    family: str,
    *,
    base_model: str,
    source: Path,
    source_sha256: str,
    denoiser_config: Mapping[str, Any] | None,
) -> dict[str, str]:
    """kohya's ss_* fields (read by ComfyUI/A1111 LoRA managers and civitai) and ours (lora_*)."""
    denoiser = [m for m in modules if m.component in ("unet", "transformer")] or modules
    rank = max(m.rank for m in denoiser)
    scale = next(m.scale for m in denoiser if m.rank == rank)
    version = BASE_MODEL_VERSIONS[family]
    metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": _number(scale * rank),
        "ss_base_model_version": version,
        "lora_family": family,
        "lora_base_model": base_model,
        "lora_source_file": source.name,
        "lora_source_sha256": source_sha256,
        "lora_modules": str(len(modules)),
    }
    if family == "sd":
        is_v2 = _sd_cross_attention_width(modules, denoiser_config) == 1024
        metadata["ss_base_model_version"] = "sd_v2" if is_v2 else "sd_v1"
        metadata["ss_v2"] = str(is_v2)
    text_encoders = sorted({m.component for m in modules if m.component.startswith("text_encoder")})
    metadata["lora_text_encoders"] = ",".join(text_encoders)  # empty: the denoiser's LoRA only
    return metadata


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _sd_cross_attention_width(modules: list[AdaptedModule], denoiser_config) -> int | None:
    if denoiser_config and "cross_attention_dim" in denoiser_config:
        width = denoiser_config["cross_attention_dim"]
        return int(width if isinstance(width, int) else width[0])
    for module in modules:  # attn2's keys and values read the text states
        if module.component == "unet" and module.path.endswith(("attn2.to_k", "attn2.to_v")):
            return int(module.down.shape[1])
    return None


def write_kohya_lora(
    diffusers_file: Path,
    family: str,
    *,
    output: Path | None = None,
    rank: int | None = None,
    alpha: float | None = None,
    base_model: str = "",
    denoiser_config: Mapping[str, Any] | None = None,
) -> Path:
    """Write the kohya-format twin of the diffusers LoRA file of a `family` pipeline; returns its path.

    output: default `<stem>_kohya.safetensors` next to the diffusers file. rank/alpha: the run's LoRA rank and
    alpha (checked against the file's LoraConfig, needed when it has none). denoiser_config: the UNet's or
    transformer's config (SDXL uses its layers_per_block/up_block_types; SD its cross_attention_dim).
    Raises UnsupportedLora when some module has no exact kohya form. The file appears complete or not at all."""
    from safetensors.torch import save_file

    diffusers_file = Path(diffusers_file)
    modules = read_diffusers_lora(diffusers_file, rank=rank, alpha=alpha)
    tensors = kohya_state_dict(modules, family, denoiser_config)
    metadata = kohya_metadata(
        modules,
        family,
        base_model=base_model,
        source=diffusers_file,
        source_sha256=_sha256(diffusers_file),
        denoiser_config=denoiser_config,
    )
    if output is None:
        output = diffusers_file.with_name(diffusers_file.stem + KOHYA_SUFFIX)
    output = Path(output)
    partial = output.with_name(f".{output.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        save_file(tensors, str(partial), metadata=metadata)
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    return output


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
