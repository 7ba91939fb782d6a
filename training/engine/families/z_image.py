"""Z-Image (Tongyi-MAI): a single-stream DiT (ZImageTransformer2DModel) conditioned on a Qwen3 text encoder.

Conditioning, as ZImagePipeline._encode_prompt builds it: each caption is wrapped in Qwen's chat template as one
user turn with the generation prompt (thinking enabled, so no empty <think> block), tokenized to at most
max_sequence_length tokens, and the encoder's second-to-last hidden states are kept for the real tokens only (the
attention mask drops the padding). Captions therefore differ in length: the transformer takes lists, one tensor
per sample, for the captions and for the latents ([C, 1, H, W]: a frame axis of one).

Time and sign: the scheduler (and this engine) runs sigma from 1 (noise) to 0 (data), with the velocity
noise - x_0. Z-Image's transformer runs the other way: its time is t = 1 - sigma (0 at noise, 1 at data; the
pipeline feeds (1000 - timestep) / 1000) and it predicts the velocity along that time, d x / d t = x_0 - noise.
So the transformer gets 1 - sigma and its output is negated before it is compared with noise - x_0, as the
pipeline negates it before its scheduler step and diffusers' train_dreambooth_lora_z_image.py before its loss.
"""

from __future__ import annotations

from typing import Any, ClassVar

from .base import ModelUnavailable, hub_files
from .flow import FlowMatchingFamily

ENCODE_BATCH = 16  # captions per text-encoder forward pass


class ZImageFamily(FlowMatchingFamily):
    name = "z_image"
    label = "Z-Image"
    pipeline_classes = ("ZImagePipeline",)
    components = ("transformer", "vae", "scheduler", "text_encoder", "tokenizer")
    hub_patterns = hub_files(components)
    # diffusers' train_dreambooth_lora_z_image.py default: every attention's projections (the noise and context
    # refiners' and the main layers').
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0")
    # Z-Image (the base model) card: 28 to 50 steps, guidance 4 in the pipeline's convention (pos + g (pos - neg),
    # so 0 turns CFG off). Z-Image-Turbo wants validation_steps=8, validation_guidance=0.
    default_validation_steps = 28
    default_validation_guidance = 4.0
    patch_size = 2  # the pipeline's (it sizes latents by vae_scale_factor * 2 and calls with patch_size=2)
    max_sequence_length: ClassVar[int] = 512  # the pipeline's and diffusers' training script's default

    # --- loading

    def load(self) -> None:
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImageTransformer2DModel
        from transformers import AutoModel, AutoTokenizer

        self.scheduler = self.load_component(FlowMatchEulerDiscreteScheduler, "scheduler")
        self.load_vae(AutoencoderKL)
        self.denoiser = self.load_component(ZImageTransformer2DModel, "transformer", torch_dtype=self.weight_dtype)
        self.denoiser.requires_grad_(False)
        self.denoiser.to(self.device)  # already in the weight dtype (a cast here would override diffusers' fp32 parts)
        # Qwen3Model (or a Qwen3ForCausalLM checkpoint, whose base model AutoModel loads): the same hidden states.
        self.text_encoders["text_encoder"] = self.load_component(AutoModel, "text_encoder", dtype=self.weight_dtype)
        self.tokenizers["tokenizer"] = self.load_component(AutoTokenizer, "tokenizer")
        self.freeze(self.text_encoders["text_encoder"])
        text_width = self.text_encoders["text_encoder"].config.hidden_size
        if text_width != self.denoiser.config.cap_feat_dim:
            raise ModelUnavailable(
                f"base_model {self.config.base_model!r}: its text encoder's width {text_width} is not the "
                f"transformer's caption width {self.denoiser.config.cap_feat_dim}."
            )
        if self.patch_size not in self.denoiser.config.all_patch_size:
            raise ModelUnavailable(
                f"base_model {self.config.base_model!r}: its transformer has no patch size {self.patch_size} "
                f"(it has {self.denoiser.config.all_patch_size}), which ZImagePipeline uses."
            )

    @property
    def pixel_multiple(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1) * self.patch_size

    # --- encoding

    def encode_images(self, pixels):
        import torch

        config = self.vae.config
        with torch.no_grad():
            latents = self.vae.encode(pixels.to(self.device, dtype=torch.float32)).latent_dist.mode()
        return (latents - (config.shift_factor or 0.0)) * config.scaling_factor

    def encode_prompts(self, texts: list[str]) -> list[dict[str, Any]]:
        """Each caption's [tokens, width] hidden states, its own length (no padding)."""
        import torch

        tokenizer = self.tokenizers["tokenizer"]
        encoder = self.text_encoders["text_encoder"]
        chats = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True, enable_thinking=True
            )
            for text in texts
        ]
        items = []
        with torch.no_grad():
            for start in range(0, len(chats), ENCODE_BATCH):
                inputs = tokenizer(
                    chats[start : start + ENCODE_BATCH],
                    padding="max_length",
                    max_length=self.max_sequence_length,
                    truncation=True,
                    return_tensors="pt",
                )
                mask = inputs.attention_mask.to(self.device).bool()
                states = encoder(
                    input_ids=inputs.input_ids.to(self.device), attention_mask=mask, output_hidden_states=True
                ).hidden_states[-2]
                for sample_states, sample_mask in zip(states, mask, strict=True):
                    items.append({"prompt_embeds": sample_states[sample_mask].to(self.weight_dtype).cpu()})
        return items

    def collate_prompts(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Captions of different lengths stay a list (the transformer pads each to its own multiple of 32)."""
        return {"prompt_embeds": [item["prompt_embeds"].to(self.device) for item in items]}

    # --- training

    def predict(self, noisy, sigmas, prompts: dict, geometry):
        import torch

        dtype = self.denoiser.dtype
        frames = list(noisy.to(dtype).unsqueeze(2).unbind(dim=0))  # [C, 1, H, W] each
        captions = [caption.to(dtype) for caption in prompts["prompt_embeds"]]
        # The transformer's time is 1 - sigma and its output the negative of our velocity (module docstring).
        output = self.denoiser(frames, (1.0 - sigmas).to(noisy.device), captions, return_dict=False)[0]
        return -torch.stack(output, dim=0).squeeze(2)

    # --- outputs

    def pipeline(self):
        from diffusers import ZImagePipeline

        pipeline = ZImagePipeline(
            scheduler=type(self.scheduler).from_config(self.scheduler.config),
            vae=self.vae,
            text_encoder=self.text_encoders.get("text_encoder"),
            tokenizer=self.tokenizers.get("tokenizer"),
            transformer=self.denoiser,
        )
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    def generate(self, pipeline, prompt: dict, negative: dict | None, *, height, width, steps, guidance, generator):
        """The pipeline's sampler, with CFG against `negative` (the "" prompt's embeddings) when guidance > 0;
        without a negative, no CFG. The pipeline keeps latents in fp32 and decodes in the VAE's dtype."""
        import torch

        dtype = self.denoiser.dtype
        use_guidance = negative is not None and guidance > 0
        with torch.no_grad():
            return pipeline(
                prompt_embeds=[caption.to(self.device, dtype) for caption in prompt["prompt_embeds"]],
                negative_prompt_embeds=(
                    [caption.to(self.device, dtype) for caption in negative["prompt_embeds"]] if use_guidance else None
                ),
                height=height,
                width=width,
                num_inference_steps=steps,
                guidance_scale=guidance if use_guidance else 0.0,
                generator=generator,
                output_type="pil",
            ).images


FAMILIES = (ZImageFamily,)
