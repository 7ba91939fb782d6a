"""Chroma: FLUX.1-schnell's architecture, pruned and retrained: T5 is its only text encoder, used with its
attention mask, and it samples with true classifier-free guidance (a negative prompt), not a guidance embedding.

Latents are normalised and packed 2x2 exactly as FLUX's (the helpers of families/flux.py). Text as the
reference implementation and ChromaPipeline._get_t5_prompt_embeds: T5 encodes with the tokenizer's mask, and the
transformer attends to the real tokens and the first padding token only. The rest of the padding is masked
out, so it is dropped from the cached embeddings (a caption costs its own length, not 512 tokens) and a batch
is padded to its longest caption with a boolean mask.

The mask is boolean on purpose: ChromaPipeline (diffusers 0.42) turns it into floats, which scaled-dot-product
attention adds to the logits instead of masking (diffusers issues #12116, #13619), so it would train the
adapter on padding the base model never attended to. Previews pass the boolean mask to the pipeline.
"""

from __future__ import annotations

from .base import hub_files
from .flux import FLUX_LORA_TARGETS, FluxFamily, text_ids, tokenize


class ChromaFamily(FluxFamily):
    name = "chroma"
    label = "Chroma"
    pipeline_classes = ("ChromaPipeline",)
    components = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
    hub_patterns = hub_files(components)
    lora_targets = FLUX_LORA_TARGETS  # the same block layout and module names as FLUX.1
    transformer_class_name = "ChromaTransformer2DModel"
    # Chroma1-HD's documented sampling (diffusers' Chroma docs): 40 steps, true CFG at 3.0.
    default_validation_steps = 40
    default_validation_guidance = 3.0
    max_sequence_length = 512  # ChromaPipeline's default

    def set_variant(self, guidance_embeds: bool) -> None:
        """Chroma has no variants: no guidance embedding, and the defaults above."""
        self.guidance_distilled = False

    def load_text_encoders(self) -> None:
        from transformers import T5EncoderModel, T5TokenizerFast

        self.tokenizers = {"tokenizer": self.load_component(T5TokenizerFast, "tokenizer")}
        self.text_encoders = {
            "text_encoder": self.load_component(T5EncoderModel, "text_encoder", dtype=self.weight_dtype)
        }

    # --- encoding

    def encode_prompt_chunk(self, texts: list[str]) -> list[dict]:
        tokenizer = self.tokenizers["tokenizer"]
        tokens = tokenize(tokenizer, texts, self.text_length(tokenizer))
        mask = tokens.attention_mask.to(self.device)
        sequence = self.text_encoders["text_encoder"](
            tokens.input_ids.to(self.device), attention_mask=mask, output_hidden_states=False
        )[0]
        # The tokens the transformer attends to: the caption's (</s> included) and the first padding token.
        attended = (mask.sum(dim=1) + 1).clamp(max=mask.shape[1]).tolist()
        return [{"prompt_embeds": sequence[row, :length].float()} for row, length in enumerate(attended)]

    def collate_prompts(self, items: list[dict]) -> dict:
        """Embeddings padded with zeros to the batch's longest, and the boolean mask of the real ones."""
        import torch

        lengths = [item["prompt_embeds"].shape[0] for item in items]
        width = items[0]["prompt_embeds"].shape[1]
        embeds = torch.zeros(len(items), max(lengths), width, dtype=items[0]["prompt_embeds"].dtype)
        mask = torch.zeros(len(items), max(lengths), dtype=torch.bool)
        for row, (item, length) in enumerate(zip(items, lengths, strict=True)):
            embeds[row, :length] = item["prompt_embeds"]
            mask[row, :length] = True
        return {"prompt_embeds": embeds.to(self.device), "attention_mask": mask.to(self.device)}

    # --- training

    def predict(self, noisy, sigmas, prompts: dict, geometry):
        import torch

        flux_predict = super().predict
        lengths = prompts["attention_mask"].sum(dim=1)
        if not self.denoiser.is_gradient_checkpointing or bool((lengths == lengths[0]).all()):
            return flux_predict(noisy, sigmas, prompts, geometry)
        # Under gradient checkpointing diffusers' ChromaTransformer2DModel calls its single-stream blocks without
        # the mask, so they would attend to the batch padding: each caption length runs unpadded instead.
        rows_by_length = [(lengths == length).nonzero().squeeze(1) for length in lengths.unique().tolist()]
        parts = [
            flux_predict(
                noisy[rows],
                sigmas[rows],
                {"prompt_embeds": prompts["prompt_embeds"][rows, : int(lengths[rows[0]])]},
                geometry,
            )
            for rows in rows_by_length
        ]
        return torch.cat(parts)[torch.argsort(torch.cat(rows_by_length))]

    def text_conditioning(self, prompts: dict, image_tokens: int) -> dict:
        import torch

        embeds = prompts["prompt_embeds"].to(self.device, self.weight_dtype)
        conditioning = dict(encoder_hidden_states=embeds, txt_ids=text_ids(embeds.shape[1], self.device, embeds.dtype))
        text_mask = prompts.get("attention_mask")
        # No mask when nothing is padded: the same result, and attention may use its fused kernels.
        if text_mask is not None and not text_mask.all():
            image_mask = torch.ones(len(embeds), image_tokens, dtype=torch.bool, device=self.device)
            conditioning["attention_mask"] = torch.cat([text_mask.to(self.device), image_mask], dim=1)
        return conditioning

    # --- outputs

    def preview_conditioning(self, prompt: dict, negative: dict | None, guidance: float) -> dict:
        """True CFG above 1, as ChromaPipeline: it then needs the negative prompt's embeddings ("" by default)."""
        conditioning = dict(
            prompt_embeds=prompt["prompt_embeds"].to(self.device, self.weight_dtype),
            prompt_attention_mask=prompt["attention_mask"].to(self.device),
            guidance_scale=guidance,
        )
        if guidance > 1:
            if negative is None:
                raise ValueError(
                    f"Chroma previews at guidance {guidance} (classifier-free) need the negative prompt's embeddings."
                )
            conditioning.update(
                negative_prompt_embeds=negative["prompt_embeds"].to(self.device, self.weight_dtype),
                negative_prompt_attention_mask=negative["attention_mask"].to(self.device),
            )
        return conditioning


FAMILIES = (ChromaFamily,)
