"""The kohya-format LoRA file (training/engine/lora_formats.py) against its two readers.

diffusers: the kohya file, loaded into a tiny pipeline of the family with `load_lora_weights`, gives the same
seeded images as the diffusers file. ComfyUI: its key map (comfy/lora.py model_lora_keys_unet /
model_lora_keys_clip, and comfy/utils.py's unet_to_diffusers, flux_to_diffusers, mmdit_to_diffusers,
z_image_to_diffusers) is reproduced below from ComfyUI's source and built from the tiny model's own weights;
every kohya module must name one of those weights, and applying the file as ComfyUI does (weight += up @ down *
alpha / rank) must give each original weight the deltas peft gave the diffusers modules it stands for.

LoRAs are made with peft on the tiny models (random non-zero up weights, alpha != rank) and saved as the engine
saves them: peft keys and the LoraConfig through `<Pipeline>.save_lora_weights`. CPU only, no network.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from training.engine.lora_formats import UnsupportedLora, write_kohya_lora

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = "a photo of a cat"
RANK, ALPHA = 4, 6  # alpha != rank: the kohya alpha must carry the scale


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory):
    """family -> its tiny pipeline folder, built on first use (once per module)."""
    from training.engine.tiny import build_tiny

    root, built = tmp_path_factory.mktemp("tiny-pipelines"), {}

    def folder(family: str) -> Path:
        if family not in ("sd", "sdxl") and importlib.util.find_spec(f"training.engine.tiny.{family}") is None:
            pytest.skip(f"training/engine/tiny/{family}.py (the tiny {family} pipeline) is not written yet")
        if family not in built:
            built[family] = build_tiny(family, root / family)
        return built[family]

    return folder


def load_pipeline(folder: Path):
    from diffusers import DiffusionPipeline

    pipeline = DiffusionPipeline.from_pretrained(str(folder))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def adapt(module, target_modules, *, seed: int, rank: int = RANK, alpha: float = ALPHA, **options):
    """A peft LoRA on `module` with non-zero up weights (peft's init leaves them 0: no effect to convert)."""
    from peft import LoraConfig

    torch.manual_seed(seed)
    module.add_adapter(
        LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=target_modules, **options)
    )
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return module


def save_diffusers_lora(pipeline, folder: Path, components: list[str], *, legacy=False, keep=None) -> Path:
    """The diffusers file of `components`' adapters, as the engine writes it (peft keys + LoraConfig).
    legacy: through convert_state_dict_to_diffusers (the older `lora.down` / `lora_linear_layer` keys).
    keep: a predicate on module paths, to save part of the adapter."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    arguments = {}
    for name in components:
        module = getattr(pipeline, name)
        state = get_peft_model_state_dict(module)
        if keep is not None:
            state = {key: value for key, value in state.items() if keep(key)}
        arguments[f"{name}_lora_layers"] = convert_state_dict_to_diffusers(state) if legacy else state
        arguments[f"{name}_lora_adapter_metadata"] = module.peft_config["default"].to_dict()
    folder.mkdir(parents=True, exist_ok=True)
    type(pipeline).save_lora_weights(str(folder), safe_serialization=True, **arguments)
    return folder / "pytorch_lora_weights.safetensors"


def render(pipeline) -> np.ndarray:
    generator = torch.Generator().manual_seed(7)
    return pipeline(
        prompt=PROMPT, num_inference_steps=2, height=32, width=32, generator=generator, output_type="np"
    ).images


def render_with(pipeline, lora_file: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # peft: the LoraConfig targets modules the file lacks
        pipeline.load_lora_weights(str(lora_file.parent), weight_name=lora_file.name)
    try:
        return render(pipeline)
    finally:
        pipeline.unload_lora_weights()


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}, handle.metadata()


def assert_same_images_as_diffusers(folder: Path, diffusers_file: Path, kohya_file: Path):
    fresh = load_pipeline(folder)
    base = render(fresh)
    with_diffusers = render_with(fresh, diffusers_file)
    with_kohya = render_with(fresh, kohya_file)
    assert np.abs(with_diffusers - base).max() > 1e-2  # the LoRA changes the images: the comparison means something
    np.testing.assert_allclose(with_kohya, with_diffusers, atol=1e-4, rtol=0)


# --- ComfyUI's key map, reproduced from comfy/utils.py and comfy/lora.py ----------------------------------------

LORA_CLIP_MAP = {
    "mlp.fc1": "mlp_fc1",
    "mlp.fc2": "mlp_fc2",
    "self_attn.k_proj": "self_attn_k_proj",
    "self_attn.q_proj": "self_attn_q_proj",
    "self_attn.v_proj": "self_attn_v_proj",
    "self_attn.out_proj": "self_attn_out_proj",
}
# comfy/utils.py UNET_MAP_*: (LDM name, diffusers name); weights only, LoRA keys are made of weights
UNET_MAP_ATTENTIONS = ("proj_in.weight", "proj_out.weight", "norm.weight")
TRANSFORMER_BLOCKS = (
    *(f"norm{n}.weight" for n in (1, 2, 3)),
    *(f"attn{n}.to_{p}.weight" for n in (1, 2) for p in ("q", "k", "v", "out.0")),
    "ff.net.0.proj.weight",
    "ff.net.2.weight",
)
UNET_MAP_RESNET = {
    "in_layers.2.weight": "conv1.weight",
    "emb_layers.1.weight": "time_emb_proj.weight",
    "out_layers.3.weight": "conv2.weight",
    "skip_connection.weight": "conv_shortcut.weight",
    "in_layers.0.weight": "norm1.weight",
    "out_layers.0.weight": "norm2.weight",
}
UNET_MAP_BASIC = (
    ("label_emb.0.0.weight", "class_embedding.linear_1.weight"),
    ("label_emb.0.2.weight", "class_embedding.linear_2.weight"),
    ("label_emb.0.0.weight", "add_embedding.linear_1.weight"),
    ("label_emb.0.2.weight", "add_embedding.linear_2.weight"),
    ("input_blocks.0.0.weight", "conv_in.weight"),
    ("out.0.weight", "conv_norm_out.weight"),
    ("out.2.weight", "conv_out.weight"),
    ("time_embed.0.weight", "time_embedding.linear_1.weight"),
    ("time_embed.2.weight", "time_embedding.linear_2.weight"),
)


def ldm_unet_config(config) -> dict:
    """The parts of ComfyUI's (LDM) unet_config that unet_to_diffusers reads, from a diffusers UNet config.
    transformer_depth_output is listed in the order unet_to_diffusers pops it: its last entry is up_blocks.0's."""
    levels = len(config["down_block_types"])
    layers = config["layers_per_block"]
    depths = config["transformer_layers_per_block"]
    depths = [depths] * levels if isinstance(depths, int) else list(depths)
    down = [depths[i] if "CrossAttn" in config["down_block_types"][i] else 0 for i in range(levels)]
    up_depths = list(reversed(depths))
    up = [up_depths[i] if "CrossAttn" in config["up_block_types"][i] else 0 for i in range(levels)]
    return {
        "num_res_blocks": [layers] * levels,
        "channel_mult": [1] * levels,
        "transformer_depth": [d for d in down for _ in range(layers)],
        "transformer_depth_output": list(reversed([d for d in up for _ in range(layers + 1)])),
        "transformer_depth_middle": depths[-1] if config.get("mid_block_type") != "UNetMidBlock2D" else 0,
    }


def comfy_unet_to_diffusers(unet_config) -> dict[str, str]:
    """comfy.utils.unet_to_diffusers: diffusers UNet weight -> LDM weight."""
    num_res_blocks = unet_config["num_res_blocks"]
    transformer_depth = list(unet_config["transformer_depth"])
    transformer_depth_output = list(unet_config["transformer_depth_output"])
    num_blocks = len(unet_config["channel_mult"])
    mapping = {}
    for x in range(num_blocks):
        n = 1 + (num_res_blocks[x] + 1) * x
        for i in range(num_res_blocks[x]):
            for ldm, diffusers in UNET_MAP_RESNET.items():
                mapping[f"down_blocks.{x}.resnets.{i}.{diffusers}"] = f"input_blocks.{n}.0.{ldm}"
            num_transformers = transformer_depth.pop(0)
            if num_transformers > 0:
                for b in UNET_MAP_ATTENTIONS:
                    mapping[f"down_blocks.{x}.attentions.{i}.{b}"] = f"input_blocks.{n}.1.{b}"
                for t in range(num_transformers):
                    for b in TRANSFORMER_BLOCKS:
                        key = f"down_blocks.{x}.attentions.{i}.transformer_blocks.{t}.{b}"
                        mapping[key] = f"input_blocks.{n}.1.transformer_blocks.{t}.{b}"
            n += 1
        mapping[f"down_blocks.{x}.downsamplers.0.conv.weight"] = f"input_blocks.{n}.0.op.weight"
    for b in UNET_MAP_ATTENTIONS:
        mapping[f"mid_block.attentions.0.{b}"] = f"middle_block.1.{b}"
    for t in range(unet_config["transformer_depth_middle"]):
        for b in TRANSFORMER_BLOCKS:
            mapping[f"mid_block.attentions.0.transformer_blocks.{t}.{b}"] = f"middle_block.1.transformer_blocks.{t}.{b}"
    for i, n in enumerate([0, 2]):
        for ldm, diffusers in UNET_MAP_RESNET.items():
            mapping[f"mid_block.resnets.{i}.{diffusers}"] = f"middle_block.{n}.{ldm}"
    num_res_blocks = list(reversed(num_res_blocks))
    for x in range(num_blocks):
        n = (num_res_blocks[x] + 1) * x
        length = num_res_blocks[x] + 1
        for i in range(length):
            c = 0
            for ldm, diffusers in UNET_MAP_RESNET.items():
                mapping[f"up_blocks.{x}.resnets.{i}.{diffusers}"] = f"output_blocks.{n}.0.{ldm}"
            c += 1
            num_transformers = transformer_depth_output.pop()
            if num_transformers > 0:
                c += 1
                for b in UNET_MAP_ATTENTIONS:
                    mapping[f"up_blocks.{x}.attentions.{i}.{b}"] = f"output_blocks.{n}.1.{b}"
                for t in range(num_transformers):
                    for b in TRANSFORMER_BLOCKS:
                        key = f"up_blocks.{x}.attentions.{i}.transformer_blocks.{t}.{b}"
                        mapping[key] = f"output_blocks.{n}.1.transformer_blocks.{t}.{b}"
            if i == length - 1:
                mapping[f"up_blocks.{x}.upsamplers.0.conv.weight"] = f"output_blocks.{n}.{c}.conv.weight"
            n += 1
    for ldm, diffusers in UNET_MAP_BASIC:
        mapping[diffusers] = ldm
    return mapping


def swap_scale_shift(weight):
    shift, scale = weight.chunk(2, dim=0)
    return torch.cat([scale, shift], dim=0)


def comfy_flux_to_diffusers(depth: int, depth_single_blocks: int, hidden_size: int, prefix: str) -> dict:
    """comfy.utils.flux_to_diffusers (FLUX.1, Chroma and FLUX.2): diffusers weight -> BFL weight, or
    (BFL weight, (dim, offset, size)) for a part of a fused one, or (BFL weight, None, transform)."""
    mapping = {}
    for index in range(depth):
        source, target = f"transformer_blocks.{index}", f"{prefix}double_blocks.{index}"
        for stream, projections in (
            ("img", ("to_q", "to_k", "to_v")),
            ("txt", ("add_q_proj", "add_k_proj", "add_v_proj")),
        ):
            for part, projection in enumerate(projections):
                qkv = f"{target}.{stream}_attn.qkv.weight"
                mapping[f"{source}.attn.{projection}.weight"] = (qkv, (0, hidden_size * part, hidden_size))
        block_map = {
            "attn.to_out.0": "img_attn.proj",
            "norm1.linear": "img_mod.lin",
            "norm1_context.linear": "txt_mod.lin",
            "attn.to_add_out": "txt_attn.proj",
            "ff.net.0.proj": "img_mlp.0",
            "ff.net.2": "img_mlp.2",
            "ff_context.net.0.proj": "txt_mlp.0",
            "ff_context.net.2": "txt_mlp.2",
            "ff.linear_in": "img_mlp.0",
            "ff.linear_out": "img_mlp.2",
            "ff_context.linear_in": "txt_mlp.0",
            "ff_context.linear_out": "txt_mlp.2",
            "attn.norm_q": "img_attn.norm.query_norm",
            "attn.norm_k": "img_attn.norm.key_norm",
            "attn.norm_added_q": "txt_attn.norm.query_norm",
            "attn.norm_added_k": "txt_attn.norm.key_norm",
        }
        for diffusers, bfl in block_map.items():
            mapping[f"{source}.{diffusers}.weight"] = f"{target}.{bfl}.weight"
    for index in range(depth_single_blocks):
        source, target = f"single_transformer_blocks.{index}", f"{prefix}single_blocks.{index}"
        linear1 = f"{target}.linear1.weight"
        for part, projection in enumerate(("to_q", "to_k", "to_v")):
            mapping[f"{source}.attn.{projection}.weight"] = (linear1, (0, hidden_size * part, hidden_size))
        mapping[f"{source}.proj_mlp.weight"] = (linear1, (0, hidden_size * 3, hidden_size * 4))
        block_map = {
            "norm.linear": "modulation.lin",
            "proj_out": "linear2",
            "attn.norm_q": "norm.query_norm",
            "attn.norm_k": "norm.key_norm",
            "attn.to_qkv_mlp_proj": "linear1",
            "attn.to_out": "linear2",
        }
        for diffusers, bfl in block_map.items():
            mapping[f"{source}.{diffusers}.weight"] = f"{target}.{bfl}.weight"
    basic = {
        "proj_out": "final_layer.linear",
        "x_embedder": "img_in",
        "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
        "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
        "context_embedder": "txt_in",
        "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
        "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
        "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
        "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
        "controlnet_x_embedder": "pos_embed_input",
    }
    for diffusers, bfl in basic.items():
        mapping[f"{diffusers}.weight"] = f"{prefix}{bfl}.weight"
    mapping["norm_out.linear.weight"] = (f"{prefix}final_layer.adaLN_modulation.1.weight", None, swap_scale_shift)
    return mapping


def comfy_mmdit_to_diffusers(depth: int, prefix: str) -> dict:
    """comfy.utils.mmdit_to_diffusers (SD3). ComfyUI sizes q/k/v as depth * 64, SD3's width; the tiny model
    is narrower, so the parts' offsets here are in units of the tiny width (only their order matters below)."""
    mapping = {}
    for i in range(depth):
        source, target = f"transformer_blocks.{i}", f"{prefix}joint_blocks.{i}"
        for attention, block, projections in (
            ("attn", "x_block.attn", ("to_q", "to_k", "to_v")),
            ("attn", "context_block.attn", ("add_q_proj", "add_k_proj", "add_v_proj")),
            ("attn2", "x_block.attn2", ("to_q", "to_k", "to_v")),
        ):
            for part, projection in enumerate(projections):
                mapping[f"{source}.{attention}.{projection}.weight"] = (f"{target}.{block}.qkv.weight", (0, part, 1))
        block_map = {
            "norm1_context.linear": "context_block.adaLN_modulation.1",
            "attn.to_add_out": "context_block.attn.proj",
            "ff_context.net.0.proj": "context_block.mlp.fc1",
            "ff_context.net.2": "context_block.mlp.fc2",
            "attn.norm_added_q": "context_block.attn.ln_q",
            "attn.norm_added_k": "context_block.attn.ln_k",
            "norm1.linear": "x_block.adaLN_modulation.1",
            "attn.to_out.0": "x_block.attn.proj",
            "attn.norm_q": "x_block.attn.ln_q",
            "attn.norm_k": "x_block.attn.ln_k",
            "attn2.to_out.0": "x_block.attn2.proj",
            "attn2.norm_q": "x_block.attn2.ln_q",
            "attn2.norm_k": "x_block.attn2.ln_k",
            "ff.net.0.proj": "x_block.mlp.fc1",
            "ff.net.2": "x_block.mlp.fc2",
        }
        for diffusers, sai in block_map.items():
            mapping[f"{source}.{diffusers}.weight"] = f"{target}.{sai}.weight"
    basic = {
        "context_embedder": "context_embedder",
        "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
        "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
        "pos_embed.proj": "x_embedder.proj",
        "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
        "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2",
        "proj_out": "final_layer.linear",
    }
    for diffusers, sai in basic.items():
        mapping[f"{diffusers}.weight"] = f"{prefix}{sai}.weight"
    mapping["norm_out.linear.weight"] = (f"{prefix}final_layer.adaLN_modulation.1.weight", None, swap_scale_shift)
    last = f"transformer_blocks.{depth - 1}.norm1_context.linear.weight"
    mapping[last] = (
        f"{prefix}joint_blocks.{depth - 1}.context_block.adaLN_modulation.1.weight",
        None,
        swap_scale_shift,
    )
    return mapping


def comfy_z_image_to_diffusers(n_layers: int, dim: int, n_refiner_layers: int, prefix: str) -> dict:
    """comfy.utils.z_image_to_diffusers (ComfyUI's Lumina2/NextDiT names)."""
    mapping = {}

    def add_block(source, target, has_adaln=True):
        for part, projection in enumerate(("to_q", "to_k", "to_v")):
            mapping[f"{source}.attention.{projection}.weight"] = (
                f"{target}.attention.qkv.weight",
                (0, dim * part, dim),
            )
        block_map = {
            "attention.norm_q": "attention.q_norm",
            "attention.norm_k": "attention.k_norm",
            "attention.to_out.0": "attention.out",
            **{name: name for name in ("attention_norm1", "attention_norm2", "ffn_norm1", "ffn_norm2")},
            **{f"feed_forward.w{n}": f"feed_forward.w{n}" for n in (1, 2, 3)},
        }
        if has_adaln:
            block_map["adaLN_modulation.0"] = "adaLN_modulation.0"
        for diffusers, comfy in block_map.items():
            mapping[f"{source}.{diffusers}.weight"] = f"{target}.{comfy}.weight"

    for i in range(n_layers):
        add_block(f"layers.{i}", f"{prefix}layers.{i}")
    for i in range(n_refiner_layers):
        add_block(f"context_refiner.{i}", f"{prefix}context_refiner.{i}")
        add_block(f"noise_refiner.{i}", f"{prefix}noise_refiner.{i}")
    basic = {
        "all_final_layer.2-1.linear": "final_layer.linear",
        "all_final_layer.2-1.adaLN_modulation.1": "final_layer.adaLN_modulation.1",
        "all_x_embedder.2-1": "x_embedder",
        "cap_embedder.0": "cap_embedder.0",
        "cap_embedder.1": "cap_embedder.1",
        "t_embedder.mlp.0": "t_embedder.mlp.0",
        "t_embedder.mlp.2": "t_embedder.mlp.2",
    }
    for diffusers, comfy in basic.items():
        mapping[f"{diffusers}.weight"] = f"{prefix}{comfy}.weight"
    return mapping


@dataclass
class ComfyModel:
    """A model as ComfyUI holds it, derived from a diffusers pipeline's modules, and its LoRA key map."""

    shapes: dict[str, tuple] = field(default_factory=dict)  # ComfyUI weight -> shape
    # diffusers module path (component.path) -> (ComfyUI weight, first row, transform)
    placement: dict[str, tuple] = field(default_factory=dict)
    key_map: dict[str, str] = field(default_factory=dict)  # LoRA module name -> ComfyUI weight


def base_weights(module) -> dict[str, torch.Size]:
    """A module's own weights by diffusers name (peft's wrappers renamed to the wrapped layer's)."""
    return {
        name.replace(".base_layer", ""): tensor.shape
        for name, tensor in module.state_dict().items()
        if name.endswith(".weight") and ".lora_" not in name
    }


def comfy_model(family: str, pipeline) -> ComfyModel:
    """ComfyUI's state dict of the pipeline's denoiser and CLIP text encoders, and model_lora_keys_unet /
    model_lora_keys_clip over it."""
    model = ComfyModel()
    denoiser_name = "unet" if family in ("sd", "sdxl") else "transformer"
    denoiser = getattr(pipeline, denoiser_name)
    config = denoiser.config
    prefix = "diffusion_model."
    if family in ("sd", "sdxl"):
        to_comfy = {key: prefix + value for key, value in comfy_unet_to_diffusers(ldm_unet_config(config)).items()}
    elif family in ("flux", "chroma", "flux2"):
        hidden = config["num_attention_heads"] * config["attention_head_dim"]
        to_comfy = comfy_flux_to_diffusers(config["num_layers"], config["num_single_layers"], hidden, prefix)
    elif family == "sd3":
        to_comfy = comfy_mmdit_to_diffusers(config["num_layers"], prefix)
    elif family == "z_image":
        to_comfy = comfy_z_image_to_diffusers(config["n_layers"], config["dim"], config["n_refiner_layers"], prefix)
    else:  # qwen_image: ComfyUI's model uses diffusers' module names
        to_comfy = {key: prefix + key for key in base_weights(denoiser)}

    # ComfyUI's weights: a fused weight stacks its parts in the order of their offsets.
    fused: dict[str, list] = {}
    for key, shape in base_weights(denoiser).items():
        target = to_comfy.get(key)
        module = f"{denoiser_name}.{key.removesuffix('.weight')}"
        if isinstance(target, str):
            model.shapes[target] = tuple(shape)
            model.placement[module] = (target, None, None)
        elif isinstance(target, tuple) and target[1] is None:
            model.shapes[target[0]] = tuple(shape)
            model.placement[module] = (target[0], None, target[2])
        elif isinstance(target, tuple):
            fused.setdefault(target[0], []).append((target[1][1], module, shape))
    for weight, parts in fused.items():
        row = 0
        for _, module, shape in sorted(parts):
            model.placement[module] = (weight, row, None)
            row += shape[0]
        model.shapes[weight] = (row, *parts[0][2][1:])

    # model_lora_keys_unet: every diffusion_model weight under lora_unet_ (and its own name), then the
    # family's diffusers-name forms.
    for weight in model.shapes:
        if weight.startswith(prefix):
            name = weight[len(prefix) : -len(".weight")]
            model.key_map[f"lora_unet_{name.replace('.', '_')}"] = weight
            model.key_map[name] = weight
    for key, target in to_comfy.items():
        weight = target if isinstance(target, str) else target[0]
        if weight not in model.shapes:
            continue
        name = key.removesuffix(".weight")
        flat = name.replace(".", "_")
        if family in ("sd", "sdxl"):
            forms = [f"lora_unet_{flat}", f"lycoris_{flat}"]
        elif family in ("flux", "chroma", "flux2"):
            forms = [f"transformer.{name}", f"lycoris_{flat}", f"lora_transformer_{flat}", name]
        elif family == "sd3":
            forms = [f"transformer.{name}", f"base_model.model.{name}", f"lora_transformer_{flat}", f"lycoris_{flat}"]
        else:
            forms = [f"transformer.{name}", f"diffusion_model.{name}", f"lycoris_{flat}", name]
        for form in forms:
            model.key_map[form] = weight

    # model_lora_keys_clip: ComfyUI keeps CLIP in transformers-4 naming (text_model.encoder...)
    clips = {"sd": [("text_encoder", "clip_l")], "sdxl": [("text_encoder", "clip_l"), ("text_encoder_2", "clip_g")]}
    for component, clip in clips.get(family, []):
        for key, shape in base_weights(getattr(pipeline, component)).items():
            path = key.removeprefix("text_model.")
            weight = f"{clip}.transformer.text_model.{path}"
            model.shapes[weight] = tuple(shape)
            model.placement[f"{component}.{key.removesuffix('.weight')}"] = (weight, None, None)
            model.key_map[f"text_encoders.{weight.removesuffix('.weight')}"] = weight
        for block in range(32):
            for module, flat in LORA_CLIP_MAP.items():
                weight = f"{clip}.transformer.text_model.encoder.layers.{block}.{module}.weight"
                if weight not in model.shapes:
                    continue
                if clip == "clip_l":
                    for form in ("lora_te_", "lora_te1_"):
                        model.key_map[f"{form}text_model_encoder_layers_{block}_{flat}"] = weight
                    model.key_map[f"text_encoder.text_model.encoder.layers.{block}.{module}"] = weight
                else:  # clip_g next to clip_l: SDXL's second encoder
                    model.key_map[f"lora_te2_text_model_encoder_layers_{block}_{flat}"] = weight
                    model.key_map[f"text_encoder_2.text_model.encoder.layers.{block}.{module}"] = weight
    return model


def comfy_patches(model: ComfyModel, kohya: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weight deltas ComfyUI applies for a kohya file: up @ down * alpha / rank, reshaped to the weight."""
    names = {key.removesuffix(".lora_down.weight") for key in kohya if key.endswith(".lora_down.weight")}
    expected_keys = {
        f"{name}{suffix}" for name in names for suffix in (".lora_down.weight", ".lora_up.weight", ".alpha")
    }
    assert set(kohya) == expected_keys  # each module: its down, up and alpha, nothing else
    deltas = {}
    for name in sorted(names):
        assert name in model.key_map, f"ComfyUI's key map has no {name}"
        weight = model.key_map[name]
        down, up = kohya[f"{name}.lora_down.weight"], kohya[f"{name}.lora_up.weight"]
        alpha = kohya[f"{name}.alpha"].item() / down.shape[0]
        delta = (up.flatten(1).double() @ down.flatten(1).double()) * alpha
        assert delta.numel() == int(np.prod(model.shapes[weight])), f"{name}: its delta does not fit {weight}"
        deltas[weight] = deltas.get(weight, 0) + delta.reshape(model.shapes[weight])
    return deltas


def peft_deltas_in_comfy(model: ComfyModel, pipeline, components: list[str]) -> dict[str, torch.Tensor]:
    """The deltas peft's adapters make, placed in ComfyUI's weights (fused parts in their rows)."""
    expected = {}
    for component in components:
        for path, module in getattr(pipeline, component).named_modules():
            if not hasattr(module, "get_delta_weight") or "default" not in getattr(module, "lora_A", {}):
                continue
            weight, row, transform = model.placement[f"{component}.{path}"]
            delta = module.get_delta_weight("default").detach().double()
            if transform is not None:
                delta = transform(delta)
            total = expected.setdefault(weight, torch.zeros(model.shapes[weight], dtype=torch.float64))
            if row is None:
                total += delta
            else:
                total[row : row + delta.shape[0]] += delta
    return expected


def assert_comfyui_applies_the_same_deltas(family: str, pipeline, components: list[str], kohya_file: Path):
    model = comfy_model(family, pipeline)
    kohya, _ = read_tensors(kohya_file)
    applied = comfy_patches(model, kohya)
    expected = peft_deltas_in_comfy(model, pipeline, components)
    assert set(applied) == set(expected)
    for weight in expected:
        torch.testing.assert_close(applied[weight], expected[weight], atol=1e-6, rtol=1e-5, msg=weight)


# --- SD and SDXL ------------------------------------------------------------------------------------------------

UNET_TARGETS = [  # beyond the engine's attention: every kind of UNet layer kohya's LoRA can adapt
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_shortcut",
    "time_emb_proj",
    "conv_in",
    "conv_out",
    "downsamplers.0.conv",
    "upsamplers.0.conv",
    "time_embedding.linear_1",
]
CLIP_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
TEXT_ENCODERS = {"sd": ["text_encoder"], "sdxl": ["text_encoder", "text_encoder_2"]}


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_sd_kohya_file_gives_diffusers_and_comfyui_the_same_lora(family, tiny_folders, tmp_path):
    folder = tiny_folders(family)
    trained = load_pipeline(folder)
    targets = UNET_TARGETS + (["add_embedding.linear_1", "add_embedding.linear_2"] if family == "sdxl" else [])
    adapt(trained.unet, targets, seed=1)
    for number, name in enumerate(TEXT_ENCODERS[family]):  # text-encoder LoRAs with their own rank and alpha
        adapt(getattr(trained, name), CLIP_TARGETS, seed=10 + number, rank=2, alpha=5)
    components = ["unet", *TEXT_ENCODERS[family]]
    diffusers_file = save_diffusers_lora(trained, tmp_path / "lora", components)

    kohya_file = write_kohya_lora(diffusers_file, family, denoiser_config=dict(trained.unet.config))

    assert kohya_file.name == "pytorch_lora_weights_kohya.safetensors"
    kohya, _ = read_tensors(kohya_file)
    names = {key.rsplit(".", 2)[0] for key in kohya if key.endswith("lora_down.weight")}
    if family == "sd":  # kohya's SD 1.x/2.x names are the diffusers UNet's; its text encoder is lora_te_
        assert "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q" in names
        assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj" in names
    else:  # SDXL: SGM names, lora_te1_/lora_te2_
        assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q" in names
        assert "lora_unet_output_blocks_2_2_conv" in names  # up_blocks.0's upsampler, after its attention
        assert {"lora_te1_text_model_encoder_layers_0_mlp_fc1", "lora_te2_text_model_encoder_layers_4_mlp_fc2"} <= names
    assert_comfyui_applies_the_same_deltas(family, trained, components, kohya_file)
    assert_same_images_as_diffusers(folder, diffusers_file, kohya_file)


def test_sd_older_diffusers_keys_convert_too(tiny_folders, tmp_path):
    """convert_state_dict_to_diffusers' `lora.down` (UNet attention) and `lora_linear_layer.down` (CLIP
    attention) keys, as the engine's SD path used to write them."""
    folder = tiny_folders("sd")
    trained = load_pipeline(folder)
    adapt(trained.unet, ["to_q", "to_k", "to_v", "to_out.0"], seed=2)
    adapt(trained.text_encoder, ["q_proj", "k_proj", "v_proj", "out_proj"], seed=3, rank=2, alpha=1)
    diffusers_file = save_diffusers_lora(trained, tmp_path / "lora", ["unet", "text_encoder"], legacy=True)
    with safe_open(str(diffusers_file), framework="pt") as handle:
        assert any(".lora_linear_layer.down." in key for key in handle.keys())

    kohya_file = write_kohya_lora(diffusers_file, "sd", output=tmp_path / "mine_kohya.safetensors")

    assert kohya_file == tmp_path / "mine_kohya.safetensors"
    assert_comfyui_applies_the_same_deltas("sd", trained, ["unet", "text_encoder"], kohya_file)
    assert_same_images_as_diffusers(folder, diffusers_file, kohya_file)


# --- the transformer families -----------------------------------------------------------------------------------

# Modules each family's kohya file can carry, beyond the family's own lora_targets (peft regexes on module names).
EXTRA_TARGETS = {
    "flux": r".*(norm1\.linear|norm1_context\.linear|single_transformer_blocks\.\d+\.(proj_mlp|proj_out|norm\.linear))",
    "chroma": r".*single_transformer_blocks\.\d+\.(proj_mlp|proj_out)",
    "flux2": r"(x_embedder|context_embedder|proj_out"
    r"|transformer_blocks\.\d+\.(attn\.(add_[qkv]_proj|to_add_out)|ff(_context)?\.linear_(in|out)))",
    "qwen_image": r"(img_in|txt_in|proj_out|transformer_blocks\.\d+\.(attn\.(add_[qkv]_proj|to_add_out)"
    r"|(img|txt)_mod\.1|(img|txt)_mlp\.net\.(0\.proj|2)))",
    "z_image": r"(layers|noise_refiner|context_refiner)\.\d+\.(feed_forward\.w[123]|adaLN_modulation\.0)",
    "sd3": r".*(attn\.to_out\.0|ff\.net\.(0\.proj|2)|ff_context\.net\.(0\.proj|2))",
}
# The installed diffusers sizes a FLUX.1 single block's linear1 split as FLUX.1-dev's 3072 + 12288 rows, so a
# narrower model's single-block q/k/v/MLP LoRAs cannot go through its kohya reader (ComfyUI's check covers them).
NOT_DIFFUSERS_READABLE = {
    "flux": re.compile(r"single_transformer_blocks\.\d+\.(attn\.to_[qkv]|proj_mlp)\."),
    "chroma": re.compile(r"single_transformer_blocks\.\d+\.(attn\.to_[qkv]|proj_mlp)\."),
}


def family_targets(family: str, transformer) -> str:
    """The family's own LoRA targets and the extra ones, as one peft regex over module names."""
    from training.engine.families import family_class

    targets = list(family_class(family).lora_targets)
    if family == "flux2":  # its single-block names are made for the loaded model's size (Flux2Family.load)
        count = transformer.config["num_single_layers"]
        targets = [t for t in targets if not t.startswith("single_")] + [
            f"single_transformer_blocks.{n}.attn.to_out" for n in range(count)
        ]
    own = "|".join(rf"(.*\.)?{re.escape(target)}" for target in targets)
    return f"({own}|{EXTRA_TARGETS[family]})"


@pytest.mark.parametrize("family", ["flux", "chroma", "flux2", "qwen_image", "z_image", "sd3"])
def test_transformer_kohya_file_gives_diffusers_and_comfyui_the_same_lora(family, tiny_folders, tmp_path):
    folder = tiny_folders(family)
    trained = load_pipeline(folder)
    # q, k and v with different alphas: a fused q/k/v module must keep each part's scale
    adapt(trained.transformer, family_targets(family, trained.transformer), seed=5, alpha_pattern={"to_k": 3})
    diffusers_file = save_diffusers_lora(trained, tmp_path / "lora", ["transformer"])

    kohya_file = write_kohya_lora(diffusers_file, family, base_model="tiny")

    names = {key.rsplit(".", 2)[0] for key in read_tensors(kohya_file)[0] if key.endswith("lora_down.weight")}
    expected_name = {
        "flux": "lora_unet_double_blocks_0_img_attn_qkv",
        "chroma": "lora_unet_single_blocks_0_linear1",
        "flux2": "lora_unet_single_blocks_0_linear1",
        "qwen_image": "lora_unet_transformer_blocks_0_attn_to_q",
        "z_image": "lora_unet_layers_0_attention_qkv",
        "sd3": "lora_unet_joint_blocks_0_x_block_attn_qkv",
    }[family]
    assert expected_name in names
    assert_comfyui_applies_the_same_deltas(family, trained, ["transformer"], kohya_file)

    if family == "sd3":
        return  # diffusers' SD3 pipeline reads no kohya-style file (see lora_formats)
    unreadable = NOT_DIFFUSERS_READABLE.get(family)
    if unreadable is not None:
        diffusers_file = save_diffusers_lora(
            trained, tmp_path / "readable", ["transformer"], keep=lambda key: not unreadable.search(key)
        )
        kohya_file = write_kohya_lora(diffusers_file, family)
    assert_same_images_as_diffusers(folder, diffusers_file, kohya_file)


# --- metadata and refusals --------------------------------------------------------------------------------------


def test_metadata_names_the_lora_and_its_source(tiny_folders, tmp_path):
    trained = load_pipeline(tiny_folders("sdxl"))
    adapt(trained.unet, ["to_q", "to_v"], seed=4, rank=8, alpha=4)
    diffusers_file = save_diffusers_lora(trained, tmp_path / "lora", ["unet"])

    kohya_file = write_kohya_lora(diffusers_file, "sdxl", rank=8, alpha=4, base_model="stabilityai/sdxl-base")

    tensors, metadata = read_tensors(kohya_file)
    assert metadata["ss_network_module"] == "networks.lora"
    assert (metadata["ss_network_dim"], metadata["ss_network_alpha"]) == ("8", "4")
    assert metadata["ss_base_model_version"] == "sdxl_base_v1-0"
    assert metadata["lora_family"] == "sdxl"
    assert metadata["lora_base_model"] == "stabilityai/sdxl-base"
    assert metadata["lora_source_sha256"] == hashlib.sha256(diffusers_file.read_bytes()).hexdigest()
    alphas = {key: tensor.item() for key, tensor in tensors.items() if key.endswith(".alpha")}
    assert alphas and set(alphas.values()) == {4.0}


def test_a_module_without_an_exact_kohya_form_is_refused(tiny_folders, tmp_path):
    """FLUX.1's embedders: ComfyUI would read lora_unet_img_in, but diffusers' kohya reader drops them."""
    trained = load_pipeline(tiny_folders("flux"))
    adapt(trained.transformer, ["x_embedder", "to_q"], seed=6)
    diffusers_file = save_diffusers_lora(trained, tmp_path / "lora", ["transformer"])

    with pytest.raises(UnsupportedLora, match=r"transformer\.x_embedder"):
        write_kohya_lora(diffusers_file, "flux")
    assert not list((tmp_path / "lora").glob("*kohya*"))  # nothing half-written either


def test_rank_and_alpha_must_agree_with_the_file(tiny_folders, tmp_path):
    trained = load_pipeline(tiny_folders("sd"))
    adapt(trained.unet, ["to_q"], seed=8)
    diffusers_file = save_diffusers_lora(trained, tmp_path / "lora", ["unet"])

    with pytest.raises(UnsupportedLora, match="alpha 16 was given"):
        write_kohya_lora(diffusers_file, "sd", alpha=16)
    with pytest.raises(UnsupportedLora, match="No kohya format for the model family 'sd5'"):
        write_kohya_lora(diffusers_file, "sd5")


def test_a_file_without_lora_config_needs_the_alpha(tiny_folders, tmp_path):
    from safetensors.torch import load_file, save_file

    trained = load_pipeline(tiny_folders("sd"))
    adapt(trained.unet, ["to_q", "to_k", "to_v", "to_out.0"], seed=9)
    with_config = save_diffusers_lora(trained, tmp_path / "lora", ["unet"])
    bare = tmp_path / "bare" / "pytorch_lora_weights.safetensors"
    bare.parent.mkdir()
    save_file(load_file(str(with_config)), str(bare))  # the same weights, no lora_adapter_metadata

    with pytest.raises(UnsupportedLora, match="alpha must be given"):
        write_kohya_lora(bare, "sd")
    from_bare = write_kohya_lora(bare, "sd", alpha=ALPHA)
    from_config = write_kohya_lora(with_config, "sd")

    bare_tensors, config_tensors = read_tensors(from_bare)[0], read_tensors(from_config)[0]
    assert bare_tensors.keys() == config_tensors.keys()
    for key in bare_tensors:
        torch.testing.assert_close(bare_tensors[key], config_tensors[key], rtol=0, atol=0)


def test_dora_is_refused(tiny_folders, tmp_path):
    trained = load_pipeline(tiny_folders("sd"))
    adapt(trained.unet, ["to_q"], seed=11, use_dora=True)
    diffusers_file = save_diffusers_lora(trained, tmp_path / "lora", ["unet"])
    metadata = json.loads(safe_open(str(diffusers_file), framework="pt").metadata()["lora_adapter_metadata"])
    assert metadata["unet.use_dora"] is True

    with pytest.raises(UnsupportedLora, match="DoRA"):
        write_kohya_lora(diffusers_file, "sd")
