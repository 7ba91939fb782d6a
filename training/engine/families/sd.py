"""Stable Diffusion 1.x/2.x and SDXL: UNets trained on DDPM noise, predicting epsilon or v.

SDXL conditions the UNet on both text encoders' penultimate hidden states side by side, on text_encoder_2's
pooled embedding, and on "time ids" (each image's original size, the top-left corner of its crop and the
target bucket size), as diffusers' train_text_to_image_lora_sdxl.py does. Only these families can train
their text encoders too (train_text_encoder): the captions are then kept as token ids and encoded each step.
Min-SNR weighting (snr_gamma) as diffusers' scripts apply it.
"""

from __future__ import annotations

from typing import ClassVar

from .base import Family, ImageGeometry, ModelUnavailable, hub_files


class StableDiffusionFamily(Family):
    name = "sd"
    label = "Stable Diffusion 1.x/2.x"
    pipeline_classes = ("StableDiffusionPipeline",)
    components = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
    hub_patterns = hub_files(components)
    denoiser_name = "unet"
    lora_targets = ("to_k", "to_q", "to_v", "to_out.0")
    text_encoder_lora_targets = ("q_proj", "k_proj", "v_proj", "out_proj")
    default_validation_steps = 25
    default_validation_guidance = 7.5
    text_encoder_names: ClassVar[tuple[str, ...]] = ("text_encoder",)
    tokenizer_names: ClassVar[tuple[str, ...]] = ("tokenizer",)

    # --- loading

    def _text_encoder_class(self, name: str):
        from transformers import CLIPTextModel

        return CLIPTextModel

    def load(self) -> None:
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTokenizer

        self.tokenizers = {name: self.load_component(CLIPTokenizer, name) for name in self.tokenizer_names}
        self.text_encoders = {
            name: self.load_component(self._text_encoder_class(name), name) for name in self.text_encoder_names
        }
        self.load_vae(AutoencoderKL)
        self.denoiser = self.load_component(UNet2DConditionModel, "unet")
        # Training noises as DDPM defines it; previews use the base model's own sampler, as inference does.
        self.noise_scheduler = self.load_component(DDPMScheduler, "scheduler")
        self.scheduler = self.load_scheduler()
        self.prediction_type = self.noise_scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ModelUnavailable(
                f"base_model {self.config.base_model!r} predicts {self.prediction_type!r}; only epsilon and "
                "v_prediction are supported."
            )
        self.freeze(self.denoiser, *self.text_encoders.values())

    @property
    def pixel_multiple(self) -> int:
        vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return vae_scale * 2 ** (len(self.denoiser.config.block_out_channels) - 1)

    # --- encoding

    def encode_images(self, pixels):
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return (self.vae.encode(pixels).latent_dist.mode() - shift) * self.vae.config.scaling_factor

    def _tokenize(self, texts: list[str]) -> list:
        return [
            tokenizer(
                texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
            ).input_ids
            for tokenizer in self.tokenizers.values()
        ]

    def _encode_tokens(self, token_ids: list) -> dict:
        """SD: the text encoder's last hidden state."""
        return {"prompt_embeds": self.text_encoders["text_encoder"](token_ids[0].to(self.device))[0]}

    @property
    def prompt_cache_tag(self) -> str | None:
        # The text encoders change while they train: captions stay token ids, encoded each step (not cached).
        return None if self.config.train_text_encoder else "embeddings"

    def encode_prompts(self, texts: list[str]) -> list[dict]:
        token_ids = self._tokenize(texts)
        if self.config.train_text_encoder:
            return [{f"input_ids_{i}": ids[row] for i, ids in enumerate(token_ids)} for row in range(len(texts))]
        encoded = self._encode_tokens(token_ids)
        return [{key: value[row].float() for key, value in encoded.items()} for row in range(len(texts))]

    def collate_prompts(self, items: list[dict]) -> dict:
        batch = super().collate_prompts(items)
        if not self.config.train_text_encoder:
            return batch
        return self._encode_tokens([batch[f"input_ids_{i}"] for i in range(len(self.tokenizers))])

    def release_text_encoders(self) -> None:
        if not self.config.train_text_encoder:
            super().release_text_encoders()

    # --- training

    def sample_timesteps(self, batch_size: int, generator=None):
        import torch

        return torch.rand(batch_size, generator=generator)

    def added_conditions(self, prompts: dict, geometry: list[ImageGeometry]) -> dict | None:
        return None

    def loss(self, latents, prompts: dict, noise, t, geometry: list[ImageGeometry], *, weighted: bool = True):
        import torch

        scheduler = self.noise_scheduler
        count = scheduler.config.num_train_timesteps
        timesteps = (t * count).long().clamp(max=count - 1).to(latents.device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        target = noise if self.prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, timesteps)
        prediction = self.denoiser(
            noisy.to(self.weight_dtype),
            timesteps,
            prompts["prompt_embeds"].to(self.weight_dtype),
            added_cond_kwargs=self.added_conditions(prompts, geometry),
        ).sample
        error = ((prediction.float() - target.float()) ** 2).flatten(1).mean(dim=1)
        if not weighted or self.config.snr_gamma is None:
            return error
        from diffusers.training_utils import compute_snr

        snr = compute_snr(scheduler, timesteps)
        weights = torch.stack([snr, self.config.snr_gamma * torch.ones_like(snr)], dim=1).min(dim=1)[0]
        weights = weights / snr if self.prediction_type == "epsilon" else weights / (snr + 1)
        return error * weights

    # --- outputs

    def pipeline(self):
        components = dict(
            vae=self.vae,
            unet=self.denoiser,
            scheduler=self.scheduler,
            **{name: self.text_encoders.get(name) for name in self.text_encoder_names},
            **self.tokenizers,
        )
        pipeline = self.pipeline_class()(
            **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    def generate(self, pipeline, prompt: dict, negative: dict | None, *, height, width, steps, guidance, generator):
        extra = {}
        if negative is not None and guidance > 1:
            extra["negative_prompt_embeds"] = negative["prompt_embeds"].to(self.weight_dtype)
        return pipeline(
            prompt_embeds=prompt["prompt_embeds"].to(self.weight_dtype),
            height=height,
            width=width,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generator,
            **extra,
        ).images


class StableDiffusionXLFamily(StableDiffusionFamily):
    name = "sdxl"
    label = "Stable Diffusion XL"
    pipeline_classes = ("StableDiffusionXLPipeline",)
    components = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
    hub_patterns = hub_files(components)
    text_encoder_names = ("text_encoder", "text_encoder_2")
    tokenizer_names = ("tokenizer", "tokenizer_2")
    default_validation_guidance = 5.0

    def _text_encoder_class(self, name: str):
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        return CLIPTextModelWithProjection if name == "text_encoder_2" else CLIPTextModel

    def _encode_tokens(self, token_ids: list) -> dict:
        """Both encoders' penultimate hidden states concatenated on the last dimension, and text_encoder_2's
        projected pooled embedding (as StableDiffusionXLPipeline.encode_prompt)."""
        import torch

        outputs = [
            encoder(ids.to(self.device), output_hidden_states=True)
            for encoder, ids in zip(
                (self.text_encoders[name] for name in self.text_encoder_names), token_ids, strict=True
            )
        ]
        return {
            "prompt_embeds": torch.cat([output.hidden_states[-2] for output in outputs], dim=-1),
            "pooled_prompt_embeds": outputs[-1].text_embeds,
        }

    def added_conditions(self, prompts: dict, geometry: list[ImageGeometry]) -> dict:
        import torch

        time_ids = torch.tensor(
            [(*g.original, *g.crop_top_left, *g.target) for g in geometry], dtype=torch.float32, device=self.device
        )
        return {"text_embeds": prompts["pooled_prompt_embeds"].to(self.weight_dtype), "time_ids": time_ids}

    def pipeline(self):
        components = dict(
            vae=self.vae,
            unet=self.denoiser,
            scheduler=self.scheduler,
            **{name: self.text_encoders.get(name) for name in self.text_encoder_names},
            **self.tokenizers,
        )
        pipeline = self.pipeline_class()(**components, add_watermarker=False)
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    def generate(self, pipeline, prompt: dict, negative: dict | None, *, height, width, steps, guidance, generator):
        import torch

        extra = {}
        if negative is not None and guidance > 1:
            negative = {key: value.to(self.weight_dtype) for key, value in negative.items()}
            if pipeline.config.force_zeros_for_empty_prompt:  # what the pipeline does with no negative prompt
                negative = {key: torch.zeros_like(value) for key, value in negative.items()}
            extra = dict(
                negative_prompt_embeds=negative["prompt_embeds"],
                negative_pooled_prompt_embeds=negative["pooled_prompt_embeds"],
            )
        # SDXL's VAE overflows in fp16: the pipeline stops at the latents, decoded here in fp32, autocast off.
        latents = pipeline(
            prompt_embeds=prompt["prompt_embeds"].to(self.weight_dtype),
            pooled_prompt_embeds=prompt["pooled_prompt_embeds"].to(self.weight_dtype),
            height=height,
            width=width,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generator,
            output_type="latent",
            **extra,
        ).images
        with torch.autocast(self.device.type, enabled=False):
            pixels = self.vae.decode(latents.float() / self.vae.config.scaling_factor).sample
        return pipeline.image_processor.postprocess(pixels, output_type="pil")


FAMILIES = (StableDiffusionFamily, StableDiffusionXLFamily)
