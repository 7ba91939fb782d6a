"""Stable Diffusion 3 / 3.5: an MMDiT (SD3Transformer2DModel) conditioned on three text encoders.

Conditioning, as StableDiffusion3Pipeline.encode_prompt builds it:
  - CLIP-L and CLIP-G (CLIPTextModelWithProjection, 77 tokens each): their penultimate hidden states side by side
    on the feature axis, and their projected pooled embeddings side by side (the `pooled_projections`);
  - T5 (max_sequence_length tokens, padding included: SD3 attends to all of them, there is no mask);
  - the CLIP states zero-padded to T5's width, then CLIP's 77 tokens followed by T5's on the sequence axis.
The transformer is called with timestep = sigma * 1000, as the pipeline passes the scheduler's timesteps, and
predicts the flow velocity noise - x_0 directly. SD3.5's scheduler has a static shift (3.0), read from its config.
"""

from __future__ import annotations

from typing import Any, ClassVar

from .base import ModelUnavailable, hub_files
from .flow import FlowMatchingFamily

CLIP_ENCODERS = (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"))
T5_ENCODER = ("text_encoder_3", "tokenizer_3")
ENCODE_BATCH = 16  # captions per text-encoder forward pass


class SD3Family(FlowMatchingFamily):
    name = "sd3"
    label = "Stable Diffusion 3.5"
    pipeline_classes = ("StableDiffusion3Pipeline",)
    components = (
        "transformer",
        "vae",
        "scheduler",
        "text_encoder",
        "text_encoder_2",
        "text_encoder_3",
        "tokenizer",
        "tokenizer_2",
        "tokenizer_3",
    )
    hub_patterns = hub_files(components)
    # diffusers' train_dreambooth_lora_sd3.py default: the joint attention's image-side projections and the
    # context-side ones (add_*_proj, to_add_out). MMDiT-X's second attention (attn2, SD3.5 Medium) is left alone.
    lora_targets = (
        "attn.to_q",
        "attn.to_k",
        "attn.to_v",
        "attn.to_out.0",
        "attn.add_q_proj",
        "attn.add_k_proj",
        "attn.add_v_proj",
        "attn.to_add_out",
    )
    # SD3.5 Large's model card: 28 steps at guidance 3.5.
    default_validation_steps = 28
    default_validation_guidance = 3.5
    # T5 tokens of each caption: the pipeline's default, so that training sees the padding inference sees.
    max_sequence_length: ClassVar[int] = 256

    # --- loading

    def load(self) -> None:
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
        from transformers import AutoTokenizer, CLIPTextModelWithProjection, T5EncoderModel

        self.scheduler = self.load_component(FlowMatchEulerDiscreteScheduler, "scheduler")
        self.load_vae(AutoencoderKL)
        self.denoiser = self.load_component(SD3Transformer2DModel, "transformer", torch_dtype=self.weight_dtype)
        self.denoiser.requires_grad_(False)
        self.denoiser.to(self.device)  # already in the weight dtype (a cast here would override diffusers' fp32 parts)
        self.patch_size = int(self.denoiser.config.patch_size)
        for encoder_name, tokenizer_name in CLIP_ENCODERS:
            self.text_encoders[encoder_name] = self.load_component(
                CLIPTextModelWithProjection, encoder_name, dtype=self.weight_dtype
            )
            self.tokenizers[tokenizer_name] = self.load_component(AutoTokenizer, tokenizer_name)
        self.freeze(*self.text_encoders.values())
        # T5 is not cast with `freeze`: loaded in fp16, transformers keeps its `wo` projections in fp32
        # (_keep_in_fp32_modules), without which T5 v1.1's activations overflow to inf.
        encoder_name, tokenizer_name = T5_ENCODER
        t5 = self.load_component(T5EncoderModel, encoder_name, dtype=self.weight_dtype)
        t5.requires_grad_(False)
        self.text_encoders[encoder_name] = t5.to(self.device)
        self.tokenizers[tokenizer_name] = self.load_component(AutoTokenizer, tokenizer_name)
        self._check_widths()

    def _check_widths(self) -> None:
        """The components must fit together (a folder assembled from different models would fail mid-step)."""
        clip_l, clip_g, t5 = (self.text_encoders[name] for name in ("text_encoder", "text_encoder_2", "text_encoder_3"))
        transformer = self.denoiser.config
        problems = []
        if t5.config.d_model != transformer.joint_attention_dim:
            problems.append(f"T5's width {t5.config.d_model} != the transformer's {transformer.joint_attention_dim}")
        clip_width = clip_l.config.hidden_size + clip_g.config.hidden_size
        if clip_width > t5.config.d_model:
            problems.append(f"the CLIP encoders' widths ({clip_width}) exceed T5's ({t5.config.d_model})")
        pooled = clip_l.config.projection_dim + clip_g.config.projection_dim
        if pooled != transformer.pooled_projection_dim:
            problems.append(f"the pooled width {pooled} != the transformer's {transformer.pooled_projection_dim}")
        if problems:
            raise ModelUnavailable(
                f"base_model {self.config.base_model!r}: its components do not fit together: {'; '.join(problems)}."
            )

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def pixel_multiple(self) -> int:
        return self.vae_scale_factor * self.patch_size

    # --- encoding

    def encode_images(self, pixels):
        import torch

        config = self.vae.config
        with torch.no_grad():
            latents = self.vae.encode(pixels.to(self.device, dtype=torch.float32)).latent_dist.mode()
        return (latents - (config.shift_factor or 0.0)) * config.scaling_factor

    def encode_prompts(self, texts: list[str]) -> list[dict[str, Any]]:
        import torch

        items = []
        with torch.no_grad():
            for start in range(0, len(texts), ENCODE_BATCH):
                prompt_embeds, pooled = self._encode(list(texts[start : start + ENCODE_BATCH]))
                for states, pooled_states in zip(prompt_embeds.cpu(), pooled.cpu(), strict=True):
                    items.append({"prompt_embeds": states, "pooled_prompt_embeds": pooled_states})
        return items

    def _encode(self, texts: list[str]):
        """[B, 77 + max_sequence_length, T5 width] token states and [B, CLIP-L + CLIP-G projection] pooled ones."""
        import torch
        import torch.nn.functional as F

        clip_states, pooled = [], []
        for encoder_name, tokenizer_name in CLIP_ENCODERS:
            tokenizer = self.tokenizers[tokenizer_name]
            # The pipeline pads both CLIP prompts to the first tokenizer's model_max_length (77).
            ids = tokenizer(
                texts,
                padding="max_length",
                max_length=self.tokenizers["tokenizer"].model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids
            output = self.text_encoders[encoder_name](ids.to(self.device), output_hidden_states=True)
            clip_states.append(output.hidden_states[-2])
            pooled.append(output.text_embeds)
        encoder_name, tokenizer_name = T5_ENCODER
        ids = self.tokenizers[tokenizer_name](
            texts,
            padding="max_length",
            max_length=self.max_sequence_length,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        ).input_ids
        # Outside the loop's autocast, which would run T5's fp32 `wo` projections in fp16 again.
        with torch.autocast(self.device.type, enabled=False):
            t5_states = self.text_encoders[encoder_name](ids.to(self.device))[0]
        clip = torch.cat(clip_states, dim=-1)
        clip = F.pad(clip, (0, t5_states.shape[-1] - clip.shape[-1]))
        prompt_embeds = torch.cat([clip, t5_states.to(clip.dtype)], dim=-2)
        return prompt_embeds.to(self.weight_dtype), torch.cat(pooled, dim=-1).to(self.weight_dtype)

    # --- training

    def predict(self, noisy, sigmas, prompts: dict, geometry):
        dtype = self.denoiser.dtype
        return self.denoiser(
            hidden_states=noisy.to(dtype),
            timestep=(sigmas * 1000.0).to(noisy.device),
            encoder_hidden_states=prompts["prompt_embeds"].to(dtype),
            pooled_projections=prompts["pooled_prompt_embeds"].to(dtype),
            return_dict=False,
        )[0]

    # --- outputs

    def pipeline(self):
        from diffusers import StableDiffusion3Pipeline

        pipeline = StableDiffusion3Pipeline(
            transformer=self.denoiser,
            scheduler=type(self.scheduler).from_config(self.scheduler.config),
            vae=self.vae,
            text_encoder=self.text_encoders.get("text_encoder"),
            tokenizer=self.tokenizers.get("tokenizer"),
            text_encoder_2=self.text_encoders.get("text_encoder_2"),
            tokenizer_2=self.tokenizers.get("tokenizer_2"),
            text_encoder_3=self.text_encoders.get("text_encoder_3"),
            tokenizer_3=self.tokenizers.get("tokenizer_3"),
        )
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    def generate(self, pipeline, prompt: dict, negative: dict | None, *, height, width, steps, guidance, generator):
        """The pipeline's sampler with CFG against `negative` (the "" prompt's embeddings); without a negative, no
        CFG. The pipeline runs to latents, which are decoded here in fp32 (outside the loop's autocast): the pipeline
        would hand latents in the transformer's dtype to the fp32 VAE."""
        import torch

        dtype = self.denoiser.dtype
        use_guidance = negative is not None and guidance > 1
        embeddings = {
            "prompt_embeds": prompt["prompt_embeds"].to(self.device, dtype),
            "pooled_prompt_embeds": prompt["pooled_prompt_embeds"].to(self.device, dtype),
        }
        if use_guidance:
            embeddings["negative_prompt_embeds"] = negative["prompt_embeds"].to(self.device, dtype)
            embeddings["negative_pooled_prompt_embeds"] = negative["pooled_prompt_embeds"].to(self.device, dtype)
        with torch.no_grad():
            latents = pipeline(
                **embeddings,
                height=height,
                width=width,
                num_inference_steps=steps,
                guidance_scale=guidance if use_guidance else 1.0,
                generator=generator,
                output_type="latent",
            ).images
        config = self.vae.config
        latents = latents.to(torch.float32) / config.scaling_factor + (config.shift_factor or 0.0)
        with torch.no_grad(), torch.autocast(latents.device.type, enabled=False):
            images = self.vae.decode(latents, return_dict=False)[0]
        return pipeline.image_processor.postprocess(images, output_type="pil")


FAMILIES = (SD3Family,)
