"""Captions, zero-shot tags and metadata checks from CLIP embeddings, and training captions.

analyse_images is the batch entry point: each image is embedded once, and that embedding serves the
tags, the phrase-bank caption and the metadata score; vocabulary embeddings are computed once per
model. CoCa models write their own captions (beam_search below: open_clip's `generate` needs a
transformers API that transformers 5 removed).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from . import vocab

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from .clip import LoadedModel

# An optional caption part (composition, lighting, style) is used only when CLIP's best phrase is at
# least this many times as likely as a uniform guess over its bank.
OPTIONAL_PART_MIN_LIFT = 2.0


@dataclass
class ImageAnalysis:
    embedding: np.ndarray  # float32, L2-normalised
    caption: str
    caption_source: str  # "coca" | "phrase-bank"
    caption_parts: list[dict]  # phrase-bank parts: {"bank", "phrase", "score" (cosine), "probability"}
    tags: list[tuple[str, float]]  # best first; softmax probabilities over the tag vocabulary
    metadata_score: float | None  # cosine between the image and the creator's title and tags


def analyse_images(
    loaded: LoadedModel,
    images: Sequence[bytes | Image.Image],
    *,
    titles: Sequence[str],
    tags_lists: Sequence[Sequence[str]],
    top_k_tags: int = 10,
) -> list[ImageAnalysis]:
    if not len(images) == len(titles) == len(tags_lists):
        raise ValueError("images, titles and tags_lists must have the same length")
    embeddings, generated = loaded.encode_images(images, captions=loaded.is_coca)
    if loaded.is_coca:
        captions = [(text, "coca", []) for text in generated]
    else:
        captions = [(text, "phrase-bank", parts) for text, parts in phrase_bank_captions(loaded, embeddings)]
    tags = rank_tags(loaded, embeddings, top_k_tags)
    scores = metadata_scores(loaded, embeddings, titles, tags_lists)
    return [
        ImageAnalysis(embedding, caption, source, parts, image_tags, score)
        for embedding, (caption, source, parts), image_tags, score in zip(
            embeddings, captions, tags, scores, strict=True
        )
    ]


def _softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def rank_tags(loaded: LoadedModel, embeddings: np.ndarray, top_k: int) -> list[list[tuple[str, float]]]:
    """Zero-shot tags per image: softmax over the vocabulary at CLIP's logit scale, best first."""
    names = vocab.tags()
    probabilities = _softmax(loaded.logit_scale * embeddings @ loaded.vocab_embeddings(vocab.tag_prompts()).T)
    best = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
    return [[(names[j], float(row[j])) for j in order] for row, order in zip(probabilities, best, strict=True)]


def phrase_bank_captions(loaded: LoadedModel, embeddings: np.ndarray) -> list[tuple[str, list[dict]]]:
    """For models without a text decoder: the best phrase of each bank, composed into a caption."""
    parts: list[list[dict]] = [[] for _ in embeddings]
    for bank in vocab.phrase_banks():
        similarities = embeddings @ loaded.vocab_embeddings(bank.prompts()).T
        probabilities = _softmax(loaded.logit_scale * similarities)
        for image, best in enumerate(similarities.argmax(axis=1)):
            probability = float(probabilities[image, best])
            if bank.required or probability >= OPTIONAL_PART_MIN_LIFT / len(bank.phrases):
                parts[image].append(
                    {
                        "bank": bank.name,
                        "phrase": bank.phrases[best],
                        "score": float(similarities[image, best]),
                        "probability": probability,
                    }
                )
    return [(compose_caption(image_parts), image_parts) for image_parts in parts]


def compose_caption(parts: list[dict]) -> str:
    """The caption from its parts: "a photograph of a cat, close-up, soft natural light"."""
    phrases = {part["bank"]: part["phrase"] for part in parts}
    extras = [part["phrase"] for part in parts if part["bank"] not in ("medium", "subject")]
    return ", ".join([f"{phrases['medium']} of {phrases['subject']}", *extras])


def metadata_text(title: str, tags: Sequence[str]) -> str | None:
    """The creator's own description as one CLIP text: "title. tag, tag", or None when there is none."""
    title = " ".join((title or "").split())
    tags = [" ".join(tag.split()) for tag in tags if tag and tag.strip()]
    return ". ".join(part for part in (title, ", ".join(tags)) if part) or None


def metadata_scores(
    loaded: LoadedModel, embeddings: np.ndarray, titles: Sequence[str], tags_lists: Sequence[Sequence[str]]
) -> list[float | None]:
    texts = [metadata_text(title, tags) for title, tags in zip(titles, tags_lists, strict=True)]
    described = [index for index, text in enumerate(texts) if text]
    scores: list[float | None] = [None] * len(texts)
    if described:
        text_embeddings = loaded.embed_texts([texts[index] for index in described])
        for index, text_embedding in zip(described, text_embeddings, strict=True):
            scores[index] = float(embeddings[index] @ text_embedding)
    return scores


def metadata_clip_score(loaded: LoadedModel, image_embedding: np.ndarray, title: str, tags: Sequence[str]):
    """Cosine between an image and its title and tags (low: misleading metadata); None without either."""
    return metadata_scores(loaded, image_embedding[None, :], [title], [tags])[0]


def training_caption(model_caption: str | None, title: str, tags: Sequence[str]) -> tuple[str, list[dict]]:
    """The caption to train on: "title, model caption, tags", and the source of each part ("title",
    "model" or "tags"). Tags that the title or the model caption already say are left out."""
    sources: list[dict] = []

    def add(text: str | None, source: str) -> None:
        text = " ".join((text or "").split()).strip(" .,;:")
        if text:
            sources.append({"text": text, "source": source})

    add(title, "title")
    add(model_caption, "model")
    said = " ".join(part["text"] for part in sources).lower()
    unique_tags = dict.fromkeys(" ".join(tag.split()).lower() for tag in tags if tag and tag.strip())
    add(", ".join(tag for tag in unique_tags if not re.search(rf"\b{re.escape(tag)}\b", said)), "tags")
    return ", ".join(part["text"] for part in sources), sources


# --- CoCa decoding -----------------------------------------------------------------------------


def beam_search(
    next_logits: Callable[[torch.Tensor], torch.Tensor],
    image_count: int,
    *,
    sot_id: int,
    eot_id: int,
    num_beams: int = 3,
    max_length: int = 30,
    min_length: int = 5,
    device="cpu",
) -> list[list[int]]:
    """The most likely token sequence per image (without start and end tokens), by length-normalised
    beam search; greedy when num_beams is 1.

    next_logits maps sequences (image_count * num_beams rows, grouped by image) to next-token logits.
    An image is done once it has num_beams finished hypotheses (early stopping, as in open_clip)."""
    import torch

    sequences = torch.full((image_count * num_beams, 1), sot_id, dtype=torch.long, device=device)
    scores = torch.zeros(image_count, num_beams, device=device)
    scores[:, 1:] = float("-inf")  # the beams start identical: expand only the first
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(image_count)]
    for length in range(1, max_length + 1):
        log_probs = torch.log_softmax(next_logits(sequences).float(), dim=-1)
        if length < min_length:
            log_probs[:, eot_id] = float("-inf")
        vocab_size = log_probs.shape[-1]
        candidates = (scores.unsqueeze(-1) + log_probs.view(image_count, num_beams, vocab_size)).view(image_count, -1)
        top_scores, top_ids = candidates.topk(2 * num_beams, dim=1)  # enough to keep num_beams alive
        rows, tokens, kept_scores = [], [], []
        for image, (image_scores, image_ids) in enumerate(zip(top_scores.tolist(), top_ids.tolist(), strict=True)):
            kept = 0
            for rank, (score, flat_id) in enumerate(zip(image_scores, image_ids, strict=True)):
                beam, token = divmod(flat_id, vocab_size)
                row = image * num_beams + beam
                if token != eot_id:
                    rows.append(row)
                    tokens.append(token)
                    kept_scores.append(score)
                    kept += 1
                    if kept == num_beams:
                        break
                elif rank < num_beams and len(finished[image]) < num_beams:
                    finished[image].append((score / length, sequences[row, 1:].tolist()))
        sequences = torch.cat([sequences[rows], torch.tensor(tokens, device=device).unsqueeze(1)], dim=1)
        scores = torch.tensor(kept_scores, device=device).view(image_count, num_beams)
        if all(len(hypotheses) >= num_beams for hypotheses in finished):
            break
    for image, hypotheses in enumerate(finished):
        if len(hypotheses) < num_beams:  # ran out of length: the live beams compete too
            for beam in range(num_beams):
                row = image * num_beams + beam
                hypotheses.append((scores[image, beam].item() / (sequences.shape[1] - 1), sequences[row, 1:].tolist()))
    return [max(hypotheses, key=lambda hypothesis: hypothesis[0])[1] for hypotheses in finished]


def clean_caption(text: str) -> str:
    """Tokenizer output ("a cat on a couch . ") as a caption ("a cat on a couch")."""
    text = re.sub(r"\s+([.,!?;:'])", r"\1", " ".join(text.split()))
    return text.strip(" .")
