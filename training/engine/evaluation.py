"""How a LoRA's images compare with the held-out images and with their prompts, in a CLIP model's feature space.

- clip_score: torchmetrics' CLIPScore, 100 * max(cos(image, prompt), 0) averaged over the generated images (Hessel
  et al. 2021, without their w = 2.5): how well the images follow their prompts, 0..100.
- fid_clip: the Fréchet distance between Gaussians fitted to the generated and to the held-out images' CLIP image
  features (FID's formula; on CLIP rather than Inception features, clean-fid's "clip" mode, Kynkäänniemi et al.
  2023): how far the generated images' distribution is from the held-out set's. 0 for identical sets.

The CLIP model is the caller's (the curation model in the web app, any open_clip model on the worker): anything
with `encode_images(list[PIL.Image]) -> ndarray [N, D]` and `encode_texts(list[str]) -> ndarray [N, D]`, rows
L2-normalised, and a `name`; `Encoder` wraps two callables. This module imports neither Django nor the
marketplace, and needs only numpy.

Few samples: a run has tens of held-out and generated images while CLIP features have 512+ dimensions, so the
covariances are singular (rank <= n - 1). The matrix square root in FID is then taken as torchmetrics does it:
tr sqrt(Σa Σb) is the sum of the square roots of the eigenvalues of Σa Σb, which are real and >= 0 (it is similar
to the symmetric PSD Σa^1/2 Σb Σa^1/2); round-off below zero is clipped to 0, as torchmetrics' `sqrt().real`
drops it. No eps * I is added (pytorch-fid and clean-fid add one only when scipy's sqrtm fails), so identical
sets give 0 up to round-off. FID is biased upwards at small n (the bias shrinks as 1/n): compare values computed
with the same encoder and the same numbers of images only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


class ImageTextEncoder(Protocol):
    name: str

    def encode_images(self, images: list[Any]) -> np.ndarray: ...

    def encode_texts(self, texts: list[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class Encoder:
    """An ImageTextEncoder made of two callables (e.g. a loaded CLIP model's methods)."""

    name: str
    image_features: Callable[[list[Any]], np.ndarray]
    text_features: Callable[[list[str]], np.ndarray]

    def encode_images(self, images: list[Any]) -> np.ndarray:
        return self.image_features(images)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return self.text_features(texts)


def clip_score(image_features: np.ndarray, text_features: np.ndarray) -> float:
    """Mean over the pairs (image_features[i], text_features[i]) of 100 * max(cos, 0), as torchmetrics' CLIPScore.
    The rows need not be normalised (they are here)."""
    images, texts = _as_rows(image_features, "image_features"), _as_rows(text_features, "text_features")
    if images.shape != texts.shape:
        raise ValueError(f"clip_score pairs each image with a text: got {images.shape} and {texts.shape} features.")
    if len(images) == 0:
        raise ValueError("clip_score needs at least one image/text pair.")
    cosines = np.sum(_normalised(images) * _normalised(texts), axis=1)
    return float(np.mean(100.0 * np.clip(cosines, 0.0, None)))


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FID's formula on the given features: |mu_a - mu_b|^2 + tr(Σa) + tr(Σb) - 2 tr sqrt(Σa Σb), with unbiased
    (n - 1) covariances, in float64. Each set needs at least two rows; singular covariances are fine (see the
    module docstring)."""
    a, b = _as_rows(features_a, "features_a"), _as_rows(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"The feature sets have different widths: {a.shape[1]} and {b.shape[1]}.")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"The Fréchet distance needs at least two samples per set (got {len(a)} and {len(b)}).")
    mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # tr sqrt(Σa Σb) through the symmetric Σa^1/2 Σb Σa^1/2: eigvalsh is exact where eig(Σa Σb) is not.
    root_a = _psd_sqrt(cov_a)
    middle = root_a @ cov_b @ root_a
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = float(np.sum(np.sqrt(np.clip(eigenvalues, 0.0, None))))
    distance = float(np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_sqrt)
    return max(distance, 0.0)  # round-off can leave identical sets a hair below 0


def evaluate(
    generated: Mapping[str, Sequence[Any]], references: Sequence[Any], encoder: ImageTextEncoder
) -> dict[str, Any]:
    """Metrics of generated images (prompt -> its images) against held-out reference images.

    Returns clip_score (every generated image against its prompt), clip_score_per_prompt, fid_clip (None with
    fewer than two generated or two reference images), n_generated, n_reference and feature_model."""
    prompts = [prompt for prompt, images in generated.items() if len(images)]
    images = [image for prompt in prompts for image in generated[prompt]]
    if not images:
        raise ValueError("evaluate needs at least one generated image.")
    image_features = _as_rows(encoder.encode_images(list(images)), "encode_images")
    text_features = _as_rows(encoder.encode_texts(prompts), "encode_texts")
    if len(image_features) != len(images) or len(text_features) != len(prompts):
        raise ValueError("The encoder returned a different number of features than it was given images or texts.")
    counts = [len(generated[prompt]) for prompt in prompts]
    paired_texts = np.repeat(text_features, counts, axis=0)  # each image next to its own prompt's features

    per_prompt, start = {}, 0
    for prompt, count in zip(prompts, counts, strict=True):
        per_prompt[prompt] = clip_score(image_features[start : start + count], paired_texts[start : start + count])
        start += count

    reference_features = _as_rows(encoder.encode_images(list(references)), "encode_images") if references else None
    fid = None
    if reference_features is not None and len(reference_features) >= 2 and len(image_features) >= 2:
        fid = frechet_distance(image_features, reference_features)
    return {
        "clip_score": clip_score(image_features, paired_texts),
        "clip_score_per_prompt": per_prompt,
        "fid_clip": fid,
        "n_generated": len(images),
        "n_reference": len(references),
        "feature_model": getattr(encoder, "name", type(encoder).__name__),
    }


def _as_rows(features, what: str) -> np.ndarray:
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array of feature rows, got shape {array.shape}.")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} holds NaN or infinite values.")
    return array


def _normalised(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.maximum(norms, 1e-12)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root of a covariance matrix (negative round-off eigenvalues taken as 0)."""
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T
