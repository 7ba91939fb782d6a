"""Qwen-Image (QwenImagePipeline): QwenImageTransformer2DModel over 2x2-packed latents of AutoencoderKLQwenImage,
conditioned on the last hidden state of a Qwen2.5-VL text encoder.

As QwenImagePipeline and diffusers' train_dreambooth_lora_qwen_image.py:
- latents: the VAE is a causal video VAE, so an image is encoded as a one-frame video ([B, 3, 1, H, W]); its
  latent mode is normalised per channel by the VAE config's latents_mean / latents_std. The loop caches the one
  frame ([B, C, H', W']); the transformer sees it packed 2x2 (4C channels a token) with img_shapes (1, H'/2, W'/2).
- prompts: the pipeline's own template (a system turn asking to describe the image, then the user turn) is encoded
  and its first 34 tokens (the system turn) are dropped, leaving each prompt's own tokens: `encode_prompt` of a
  text-only pipeline, as the script does. Prompts differ in length, so each item keeps only its tokens and
  `collate_prompts` pads a batch with zeros and builds `prompt_embeds_mask`.
- previews use true CFG: `true_cfg_scale` against the cached "" prompt (the model card: 50 steps, scale 4);
  Qwen-Image has no guidance embedding (a transformer that has one gets `config.guidance`).
- the resolution-dependent shift is the scheduler's (base/max shift over 256..8192 tokens), as in flow.py.
"""

from __future__ import annotations

from .base import hub_files
from .flow import FlowMatchingFamily

MAX_SEQUENCE_LENGTH = 512  # the pipeline's default: longer prompts are cut there
TEXT_BATCH = 8


class QwenImageFamily(FlowMatchingFamily):
    name = "qwen_image"
    label = "Qwen-Image"
    pipeline_classes = ("QwenImagePipeline",)
    components = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
    hub_patterns = hub_files(components)
    lora_targets = ("to_k", "to_q", "to_v", "to_out.0")  # diffusers' script: every block's attention
    patch_size = 2
    default_validation_steps = 50
    default_validation_guidance = 4.0  # true_cfg_scale

    # --- loading

    def load(self) -> None:
        from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel
        from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

        self.scheduler = self.load_component(FlowMatchEulerDiscreteScheduler, "scheduler")
        self.tokenizers = {"tokenizer": self.load_component(AutoTokenizer, "tokenizer")}
        text_encoder = self.load_component(Qwen2_5_VLForConditionalGeneration, "text_encoder", dtype=self.weight_dtype)
        self.text_encoders = {"text_encoder": text_encoder}
        self.load_vae(AutoencoderKLQwenImage)
        self.denoiser = self.load_component(QwenImageTransformer2DModel, "transformer", torch_dtype=self.weight_dtype)
        self.freeze(self.denoiser, text_encoder)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** len(self.vae.config.temperal_downsample)

    @property
    def pixel_multiple(self) -> int:
        return self.vae_scale_factor * self.patch_size

    def _latent_statistics(self, like):
        """The VAE's per-channel latents_mean and latents_std, shaped [1, C, 1, 1] like `like`."""
        import torch

        config = self.vae.config
        mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1).to(like)
        std = torch.tensor(config.latents_std).view(1, -1, 1, 1).to(like)
        return mean, std

    # --- encoding

    def encode_images(self, pixels):
        import torch

        with torch.no_grad():
            video = pixels.to(self.device, dtype=self.vae.dtype).unsqueeze(2)  # one frame: [B, 3, 1, H, W]
            latents = self.vae.encode(video).latent_dist.mode()[:, :, 0]
            mean, std = self._latent_statistics(latents)
            return ((latents - mean) / std).float()

    def encode_prompts(self, texts: list[str]) -> list[dict]:
        import torch
        from diffusers import QwenImagePipeline

        # The pipeline's encode_prompt (template, dropped system turn, masking) needs only these two components.
        encoder = QwenImagePipeline(
            scheduler=None,
            vae=None,
            text_encoder=self.text_encoders["text_encoder"],
            tokenizer=self.tokenizers["tokenizer"],
            transformer=None,
        )
        items = []
        for start in range(0, len(texts), TEXT_BATCH):
            with torch.no_grad():
                embeds, mask = encoder.encode_prompt(
                    list(texts[start : start + TEXT_BATCH]), device=self.device, max_sequence_length=MAX_SEQUENCE_LENGTH
                )
            lengths = mask.sum(dim=1).tolist() if mask is not None else [embeds.shape[1]] * len(embeds)
            items += [{"prompt_embeds": embed[:length]} for embed, length in zip(embeds, lengths, strict=True)]
        return items

    def collate_prompts(self, items: list[dict]) -> dict:
        """The prompts padded with zeros to the longest, and the mask of their own tokens (1) and padding (0)."""
        import torch

        embeds = [item["prompt_embeds"] for item in items]
        longest = max(len(embed) for embed in embeds)
        padded = embeds[0].new_zeros((len(embeds), longest, embeds[0].shape[-1]))
        mask = torch.zeros((len(embeds), longest), dtype=torch.long)
        for row, embed in enumerate(embeds):
            padded[row, : len(embed)] = embed
            mask[row, : len(embed)] = 1
        return {"prompt_embeds": padded.to(self.device), "prompt_embeds_mask": mask.to(self.device)}

    # --- training

    def guidance(self, batch_size: int):
        """The guidance embedding's input (guidance-distilled transformers only), as the pipeline passes it."""
        import torch

        if not self.denoiser.config.guidance_embeds:
            return None
        return torch.full((batch_size,), float(self.config.guidance), device=self.device, dtype=torch.float32)

    def predict(self, noisy, sigmas, prompts: dict, geometry):
        from diffusers import QwenImagePipeline

        batch, channels, height, width = noisy.shape
        mask = prompts["prompt_embeds_mask"]
        prediction = self.denoiser(
            hidden_states=QwenImagePipeline._pack_latents(noisy, batch, channels, height, width),
            encoder_hidden_states=prompts["prompt_embeds"].to(self.device, self.weight_dtype),
            # As the pipeline: no mask when no prompt of the batch is padded.
            encoder_hidden_states_mask=None if bool(mask.all()) else mask,
            timestep=sigmas.to(self.device, self.weight_dtype),  # the pipeline passes timestep / 1000 = sigma
            img_shapes=[[(1, height // 2, width // 2)]] * batch,
            guidance=self.guidance(batch),
            return_dict=False,
        )[0]
        scale = self.vae_scale_factor
        return QwenImagePipeline._unpack_latents(prediction, height * scale, width * scale, scale)[:, :, 0]

    # --- outputs

    def pipeline(self):
        from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline

        pipeline = QwenImagePipeline(
            scheduler=FlowMatchEulerDiscreteScheduler.from_config(self.scheduler.config),
            vae=self.vae,
            text_encoder=self.text_encoders.get("text_encoder"),
            tokenizer=self.tokenizers.get("tokenizer"),
            transformer=self.denoiser,
        )
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    def generate(self, pipeline, prompt: dict, negative: dict | None, *, height, width, steps, guidance, generator):
        true_cfg = guidance > 1 and negative is not None
        extra = {}
        if true_cfg:
            extra = dict(
                negative_prompt_embeds=negative["prompt_embeds"].to(self.weight_dtype),
                negative_prompt_embeds_mask=negative["prompt_embeds_mask"],
            )
        return pipeline(
            prompt_embeds=prompt["prompt_embeds"].to(self.weight_dtype),
            prompt_embeds_mask=prompt["prompt_embeds_mask"],
            true_cfg_scale=guidance if true_cfg else 1.0,
            guidance_scale=float(self.config.guidance) if self.denoiser.config.guidance_embeds else None,
            height=height,
            width=width,
            num_inference_steps=steps,
            generator=generator,
            output_type="pil",
            **extra,
        ).images


FAMILIES = (QwenImageFamily,)
