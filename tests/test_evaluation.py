"""Metrics of generated images against held-out ones (training/engine/evaluation.py): the formulas against
reference implementations (scipy's sqrtm as pytorch-fid/clean-fid use it, torchmetrics' eigenvalue form, a hand
computation of CLIPScore), and on real photos with the curation CLIP model (tests/curation_models.py's tiny one,
and the conftest's photo CLIP trained to tell the photos apart). No database, no network."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from PIL import Image

from marketplace.core.photos import load_photo
from training.engine.evaluation import Encoder, clip_score, evaluate, frechet_distance

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def reference_fid(a: np.ndarray, b: np.ndarray) -> float:
    """pytorch-fid's calculate_frechet_distance (which clean-fid copies): scipy's sqrtm of Σa Σb, retried with
    eps on the diagonals when it is not finite, imaginary round-off dropped."""
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(cov_a)) * 1e-6
        covmean = scipy.linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean.real))


def torchmetrics_fid(a: np.ndarray, b: np.ndarray) -> float:
    """torchmetrics' _compute_fid: tr sqrt(Σa Σb) as the sum of sqrt(eigvals(Σa Σb)).real."""
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    trace_sqrt = np.sqrt(np.linalg.eigvals(cov_a @ cov_b).astype(complex)).real.sum()
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt)


# --- the formulas -------------------------------------------------------------------------------------------------


def test_frechet_distance_matches_the_scipy_reference():
    rng = np.random.default_rng(0)
    mixing_a, mixing_b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    a = rng.normal(size=(400, 6)) @ mixing_a
    b = rng.normal(size=(300, 6)) @ mixing_b + np.linspace(-1, 2, 6)

    distance = frechet_distance(a, b)

    assert distance == pytest.approx(reference_fid(a, b), rel=1e-9)
    assert distance == pytest.approx(torchmetrics_fid(a, b), rel=1e-9)
    assert frechet_distance(b, a) == pytest.approx(distance, rel=1e-9)


def test_frechet_distance_of_few_samples_in_many_dimensions():
    """8 samples of 64-dimensional, unit-length features (as CLIP gives): singular covariances."""
    rng = np.random.default_rng(1)
    a = rng.normal(size=(8, 64))
    b = rng.normal(size=(10, 64)) + 0.3
    a, b = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (a, b))
    assert np.linalg.matrix_rank(np.cov(a, rowvar=False)) == 7

    distance = frechet_distance(a, b)

    assert np.isfinite(distance) and distance > 0
    assert distance == pytest.approx(torchmetrics_fid(a, b), rel=1e-6)
    assert distance == pytest.approx(reference_fid(a, b), rel=1e-4)  # sqrtm of a singular matrix: less exact
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-9)
    assert frechet_distance(a, a + 0.1) == pytest.approx(64 * 0.01, rel=1e-6)  # a shift: |mu_a - mu_b|^2 only


def test_frechet_distance_refuses_what_it_cannot_compute():
    with pytest.raises(ValueError, match="at least two samples"):
        frechet_distance(np.ones((1, 4)), np.ones((5, 4)))
    with pytest.raises(ValueError, match="different widths"):
        frechet_distance(np.ones((3, 4)), np.ones((3, 5)))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.full((3, 2), np.nan), np.ones((3, 2)))


def test_clip_score_by_hand():
    images = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    texts = np.array([[0.5, np.sqrt(3) / 2], [0.0, -1.0], [3.0, 3.0]])
    # cos 60° = 0.5 -> 50; opposite directions -> max(-1, 0) = 0; the same direction (any length) -> 100
    assert clip_score(images, texts) == pytest.approx((50 + 0 + 100) / 3)
    assert clip_score(images[:1], texts[:1]) == pytest.approx(50)


def test_clip_score_is_bounded():
    rng = np.random.default_rng(2)
    for _ in range(20):
        score = clip_score(rng.normal(size=(16, 32)), rng.normal(size=(16, 32)))
        assert 0 <= score <= 100
    same = rng.normal(size=(4, 8))
    assert clip_score(same, same) == pytest.approx(100)
    assert clip_score(same, -same) == 0
    with pytest.raises(ValueError, match="pairs each image"):
        clip_score(same, same[:3])


# --- evaluate() ---------------------------------------------------------------------------------------------------

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def colour_encoder() -> Encoder:
    """A model where the right caption is checkable: an image's feature is its mean colour, a text's is the
    colour it names."""

    def image_features(images):
        return np.stack([np.asarray(image.convert("RGB"), dtype=float).mean(axis=(0, 1)) / 255 for image in images])

    def text_features(texts):
        return np.stack([np.array([name in text for name in COLOURS], dtype=float) for text in texts])

    return Encoder("mean-colour", image_features, text_features)


def squares(colour: str, count: int) -> list[Image.Image]:
    red, green, blue = COLOURS[colour]
    return [Image.new("RGB", (16, 16), (red, min(255, green + 10 * n), blue)) for n in range(count)]


def test_evaluate_scores_each_image_against_its_own_prompt():
    right = {"a red square": squares("red", 3), "a blue square": squares("blue", 2)}
    swapped = {"a blue square": squares("red", 3), "a red square": squares("blue", 2)}
    references = squares("red", 2) + squares("blue", 2)

    good = evaluate(right, references, colour_encoder())
    bad = evaluate(swapped, references, colour_encoder())

    assert good["clip_score"] > 90 > 30 > bad["clip_score"]
    assert set(good["clip_score_per_prompt"]) == {"a red square", "a blue square"}
    assert good["clip_score_per_prompt"]["a red square"] > bad["clip_score_per_prompt"]["a blue square"]
    assert (good["n_generated"], good["n_reference"], good["feature_model"]) == (5, 4, "mean-colour")
    greens = evaluate({"a green square": squares("green", 4)}, references, colour_encoder())
    assert greens["fid_clip"] > good["fid_clip"]  # green squares are further from red and blue ones


def test_evaluate_without_enough_images_for_a_distance():
    result = evaluate({"a red square": squares("red", 1)}, squares("red", 3), colour_encoder())
    assert result["fid_clip"] is None and result["n_generated"] == 1
    assert result["clip_score"] > 90
    with pytest.raises(ValueError, match="at least one generated image"):
        evaluate({"a red square": []}, squares("red", 3), colour_encoder())


# --- with the curation CLIP model, on real photos --------------------------------------------------------------


def curation_encoder(spec) -> Encoder:
    """The adapter the worker would use for marketplace.curation.engine.clip (its embeddings are L2-normalised)."""
    from marketplace.curation.engine import clip

    loaded = clip.load_model(spec)
    return Encoder(f"{spec.name}:{spec.pretrained.rsplit('/', 1)[-1]}", loaded.embed_images, loaded.embed_texts)


def views(names: list[str], offsets: list[float]) -> list[Image.Image]:
    """Crops of 90% of each photo at each relative offset: different images of the same scenes."""
    crops = []
    for name in names:
        photo = load_photo(name)
        photo.thumbnail((192, 192))
        width, height = photo.size
        w, h = int(width * 0.9), int(height * 0.9)
        for offset in offsets:
            left, top = int((width - w) * offset), int((height - h) * (1 - offset))
            crops.append(photo.crop((left, top, left + w, top + h)))
    return crops


HELD_OUT = ["astronaut", "coffee", "chelsea"]
OTHERS = ["rocket", "motorcycle", "hubble"]


def test_fid_on_real_photos_with_the_photo_clip(trained_checkpoint):
    from marketplace.curation.engine.clip import ModelSpec
    from tests.curation_models import TINY_CLIP

    encoder = curation_encoder(ModelSpec(name=TINY_CLIP, pretrained=str(trained_checkpoint), device="cpu"))
    references = views(HELD_OUT, [0.0, 0.5, 1.0])
    same_scenes = views(HELD_OUT, [0.25, 0.75])
    other_scenes = views(OTHERS, [0.25, 0.75])

    identical = evaluate({"a photo": references}, references, encoder)
    close = evaluate({"a photo": same_scenes}, references, encoder)
    far = evaluate({"a photo": other_scenes}, references, encoder)

    assert identical["fid_clip"] == pytest.approx(0, abs=1e-6)
    assert 0 < close["fid_clip"] < far["fid_clip"]
    assert (far["n_generated"], far["n_reference"]) == (6, 9)


def test_evaluate_with_the_tiny_curation_clip(tmp_path):
    """A random tiny CLIP: its text-image similarity means nothing, but the pipeline of calls must hold."""
    from tests.curation_models import TINY_CLIP, tiny_model_spec

    encoder = curation_encoder(tiny_model_spec(TINY_CLIP, tmp_path))
    generated = {"a photo of a cat": views(["chelsea"], [0.2, 0.8]), "a rocket": views(["rocket"], [0.5])}

    result = evaluate(generated, views(HELD_OUT, [0.5]), encoder)

    assert 0 <= result["clip_score"] <= 100
    assert result["fid_clip"] > 0
    assert result["feature_model"] == f"{TINY_CLIP}:{TINY_CLIP}.pt"
    assert (result["n_generated"], result["n_reference"]) == (3, 3)
    image_features = encoder.encode_images(generated["a rocket"])
    text_features = encoder.encode_texts(["a rocket"])
    assert result["clip_score_per_prompt"]["a rocket"] == pytest.approx(clip_score(image_features, text_features))
