"""FLUX.1 (schnell and dev): a rectified-flow transformer over VAE latents packed 2x2 into tokens.

As FluxPipeline and diffusers' train_dreambooth_lora_flux.py: latents are normalised with the VAE's shift and
scaling factors, each 2x2 latent patch becomes one token (channels x 4) positioned by (0, row, column) image ids,
text tokens get all-zero ids; the transformer is conditioned on CLIP-L's pooled embedding and T5's sequence
(T5 unmasked, padded to the pipeline's length), and called with the sigma as its timestep (the pipeline passes
`timestep / 1000`; the model multiplies by 1000 again). FLUX.1-dev is guidance-distilled: it also takes a
guidance embedding, trained at `config.guidance` and previewed at the guidance scale; schnell has none. The
variant is told by `transformer.config.guidance_embeds`, and decides the previews' defaults: schnell samples
in 4 steps without guidance, dev in 28 at guidance 3.5 (their model cards).

The packing helpers are module functions, shared with Chroma (families/chroma.py), which packs as FLUX does.
"""

from __future__ import annotations

import json
from typing import ClassVar

from .base import ModelUnavailable, hub_files
from .flow import FlowMatchingFamily

# diffusers' train_dreambooth_lora_flux.py targets by default: the attention projections of both block kinds
# (the single-stream blocks have only attn.to_q/k/v: their output projection is fused with the MLP's) and the
# feed-forwards of the double-stream blocks' image and text streams.
FLUX_LORA_TARGETS = (
    "attn.to_k",
    "attn.to_q",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_k_proj",
    "attn.add_q_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "ff.net.0.proj",
    "ff.net.2",
    "ff_context.net.0.proj",
    "ff_context.net.2",
)
PROMPT_CHUNK = 16  # captions encoded at once


# --- packing, as FluxPipeline._pack_latents / _unpack_latents / _prepare_latent_image_ids


def pack_latents(latents):
    """[B, C, H, W] latents -> [B, (H/2)*(W/2), 4C] tokens, one per 2x2 patch (its C x 2 x 2 values, in order)."""
    batch, channels, height, width = latents.shape
    patches = latents.view(batch, channels, height // 2, 2, width // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(batch, (height // 2) * (width // 2), channels * 4)


def unpack_latents(tokens, height: int, width: int):
    """The inverse of `pack_latents` for latents of `height` x `width`."""
    batch, _, packed_channels = tokens.shape
    patches = tokens.view(batch, height // 2, width // 2, packed_channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return patches.reshape(batch, packed_channels // 4, height, width)


def latent_image_ids(height: int, width: int, device, dtype):
    """[(H/2)*(W/2), 3] RoPE positions of the packed tokens of `height` x `width` latents: (0, row, column)."""
    import torch

    rows, columns = torch.meshgrid(torch.arange(height // 2), torch.arange(width // 2), indexing="ij")
    ids = torch.stack([torch.zeros_like(rows), rows, columns], dim=-1).reshape(-1, 3)
    return ids.to(device=device, dtype=dtype)


def text_ids(length: int, device, dtype):
    """RoPE positions of `length` text tokens: all zero (FLUX positions only the image tokens)."""
    import torch

    return torch.zeros(length, 3, device=device, dtype=dtype)


def tokenize(tokenizer, texts: list[str], length: int):
    """Token ids and mask of `texts`, padded to `length` and truncated, as the pipelines tokenize."""
    return tokenizer(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")


class FluxFamily(FlowMatchingFamily):
    name = "flux"
    label = "FLUX.1"
    pipeline_classes = ("FluxPipeline",)
    components = ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
    hub_patterns = hub_files(components)
    lora_targets = FLUX_LORA_TARGETS
    transformer_class_name: ClassVar[str] = "FluxTransformer2DModel"
    # The T5 length: FLUX.1-dev was trained on 512 tokens, schnell on 256 (BFL's reference code); the tokenizer's
    # model_max_length caps it (tiny test models use short ones).
    DEV: ClassVar[dict] = dict(default_validation_steps=28, default_validation_guidance=3.5, max_sequence_length=512)
    SCHNELL: ClassVar[dict] = dict(default_validation_steps=4, default_validation_guidance=0.0, max_sequence_length=256)
    default_validation_steps = DEV["default_validation_steps"]
    default_validation_guidance = DEV["default_validation_guidance"]
    max_sequence_length: int = DEV["max_sequence_length"]

    def __init__(self, folder, config, device, weight_dtype):
        super().__init__(folder, config, device, weight_dtype)
        # The variant decides the previews' defaults, which the loop may read before load(): from the config file.
        try:
            transformer_config = json.loads((self.folder / "transformer" / "config.json").read_text())
        except (OSError, ValueError):
            transformer_config = {}
        self.set_variant(bool(transformer_config.get("guidance_embeds", False)))

    def set_variant(self, guidance_embeds: bool) -> None:
        """dev (guidance-distilled: a guidance embedding) or schnell, and the defaults that come with it."""
        self.guidance_distilled = guidance_embeds
        for attribute, value in (self.DEV if guidance_embeds else self.SCHNELL).items():
            setattr(self, attribute, value)
        # The cached T5 sequences are as long as the variant's: a swapped transformer must not reuse them.
        self.prompt_cache_tag = f"t5-{self.max_sequence_length}"

    # --- loading

    def load_text_encoders(self) -> None:
        from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

        self.tokenizers = {
            "tokenizer": self.load_component(CLIPTokenizer, "tokenizer"),
            "tokenizer_2": self.load_component(T5TokenizerFast, "tokenizer_2"),
        }
        self.text_encoders = {
            "text_encoder": self.load_component(CLIPTextModel, "text_encoder", dtype=self.weight_dtype),
            "text_encoder_2": self.load_component(T5EncoderModel, "text_encoder_2", dtype=self.weight_dtype),
        }

    def load(self) -> None:
        import diffusers
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler

        self.load_text_encoders()
        self.load_vae(AutoencoderKL)
        # In the weight dtype straight away: FLUX's 12B parameters would take 48 GB in fp32.
        transformer_class = getattr(diffusers, self.transformer_class_name)
        self.denoiser = self.load_component(transformer_class, "transformer", torch_dtype=self.weight_dtype)
        self.scheduler = self.load_component(FlowMatchEulerDiscreteScheduler, "scheduler")
        latent_channels = self.vae.config.latent_channels
        if self.denoiser.config.in_channels != 4 * latent_channels:
            raise ModelUnavailable(
                f"base_model {self.config.base_model!r}: its transformer takes {self.denoiser.config.in_channels} "
                f"channels, not the 4 x {latent_channels} of its VAE's latents packed 2x2."
            )
        self.set_variant(bool(getattr(self.denoiser.config, "guidance_embeds", False)))
        self.freeze(self.denoiser, *self.text_encoders.values())

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def pixel_multiple(self) -> int:
        return self.vae_scale_factor * self.patch_size

    def text_length(self, tokenizer) -> int:
        return min(self.max_sequence_length, tokenizer.model_max_length)

    # --- encoding

    def encode_images(self, pixels):
        shift = self.vae.config.shift_factor or 0.0
        latents = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist.mode()
        return (latents - shift) * self.vae.config.scaling_factor

    def encode_prompts(self, texts: list[str]) -> list[dict]:
        import torch

        items = []
        for start in range(0, len(texts), PROMPT_CHUNK):
            with torch.no_grad():
                items += self.encode_prompt_chunk(texts[start : start + PROMPT_CHUNK])
        return items

    def encode_prompt_chunk(self, texts: list[str]) -> list[dict]:
        """As FluxPipeline.encode_prompt: CLIP's pooled output (77 tokens) and T5's last hidden state."""
        clip_tokenizer, t5_tokenizer = self.tokenizers["tokenizer"], self.tokenizers["tokenizer_2"]
        clip_ids = tokenize(clip_tokenizer, texts, clip_tokenizer.model_max_length).input_ids
        pooled = self.text_encoders["text_encoder"](clip_ids.to(self.device), output_hidden_states=False).pooler_output
        t5_ids = tokenize(t5_tokenizer, texts, self.text_length(t5_tokenizer)).input_ids
        sequence = self.text_encoders["text_encoder_2"](t5_ids.to(self.device), output_hidden_states=False)[0]
        return [
            {"prompt_embeds": sequence[row].float(), "pooled_prompt_embeds": pooled[row].float()}
            for row in range(len(texts))
        ]

    # --- training

    def predict(self, noisy, sigmas, prompts: dict, geometry):
        _, _, height, width = noisy.shape
        prediction = self.denoiser(
            hidden_states=pack_latents(noisy),
            timestep=sigmas.to(self.device, self.weight_dtype),
            img_ids=latent_image_ids(height, width, self.device, self.weight_dtype),
            return_dict=False,
            **self.text_conditioning(prompts, image_tokens=(height // 2) * (width // 2)),
        )[0]
        return unpack_latents(prediction, height, width)

    def text_conditioning(self, prompts: dict, image_tokens: int) -> dict:
        """The transformer's text (and guidance) arguments for a batch of `collate_prompts` items, whose images
        are `image_tokens` tokens long."""
        import torch

        embeds = prompts["prompt_embeds"].to(self.device, self.weight_dtype)
        guidance = None
        if self.guidance_distilled:  # as the pipeline: the raw scale, fp32 (the model scales it by 1000)
            guidance = torch.full((len(embeds),), float(self.config.guidance), device=self.device, dtype=torch.float32)
        return dict(
            encoder_hidden_states=embeds,
            pooled_projections=prompts["pooled_prompt_embeds"].to(self.device, self.weight_dtype),
            txt_ids=text_ids(embeds.shape[1], self.device, self.weight_dtype),
            guidance=guidance,
        )

    # --- outputs

    def pipeline(self):
        components = {name: self.text_encoders.get(name) for name in self.components if name.startswith("text_")}
        components.update(self.tokenizers)
        pipeline = self.pipeline_class()(
            transformer=self.denoiser, vae=self.vae, scheduler=self.scheduler, **components
        )
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    def preview_conditioning(self, prompt: dict, negative: dict | None, guidance: float) -> dict:
        """The pipeline's prompt arguments. FLUX.1 samples without a negative prompt: dev's guidance is its
        distilled embedding (guidance_scale), which schnell ignores."""
        return dict(
            prompt_embeds=prompt["prompt_embeds"].to(self.device, self.weight_dtype),
            pooled_prompt_embeds=prompt["pooled_prompt_embeds"].to(self.device, self.weight_dtype),
            guidance_scale=guidance,
        )

    def generate(self, pipeline, prompt: dict, negative: dict | None, *, height, width, steps, guidance, generator):
        packed = pipeline(
            **self.preview_conditioning(prompt, negative, guidance),
            height=height,
            width=width,
            num_inference_steps=steps,
            generator=generator,
            output_type="latent",
        ).images
        return self.decode_packed(pipeline, packed, height, width)

    def decode_packed(self, pipeline, packed, height: int, width: int) -> list:
        """PIL images of the pipeline's packed latents, decoded as the pipeline does but by the fp32 VAE with
        autocast off (the transformer may run in bf16)."""
        import torch

        latents = unpack_latents(packed, height // self.vae_scale_factor, width // self.vae_scale_factor)
        latents = latents.float() / self.vae.config.scaling_factor + (self.vae.config.shift_factor or 0.0)
        with torch.autocast(self.device.type, enabled=False):
            pixels = self.vae.decode(latents).sample
        return pipeline.image_processor.postprocess(pixels, output_type="pil")


FAMILIES = (FluxFamily,)
