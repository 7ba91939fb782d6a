"""The Django-free curation engine: model loading, embeddings, captions, tags, metadata scores, quality.

Tiny random-weight models (tests/curation_models.py) stand in for real CLIP weights, so the figures
mean nothing but every code path is the real one. No test touches the network.
"""

import io
import socket
import time

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image, ImageEnhance, ImageFilter
from skimage import data as skdata

from marketplace.curation.engine import captions, clip, quality, vocab
from tests.curation_models import TINY_CLIP, TINY_COCA, build_tiny_checkpoint, tiny_model_spec

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # torch/open_clip chatter about random weights


def photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(skdata, name)()).convert("RGB")


def jpeg(image: Image.Image, **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, **save_args)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def model_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("curation-models")


@pytest.fixture(scope="session")
def tiny_clip(model_folder):
    return clip.load_model(tiny_model_spec(TINY_CLIP, model_folder))


@pytest.fixture(scope="session")
def tiny_coca(model_folder):
    return clip.load_model(tiny_model_spec(TINY_COCA, model_folder))


@pytest.fixture(scope="session")
def photos():
    return {name: jpeg(photo(name)) for name in ("astronaut", "coffee", "chelsea", "rocket")}


# --- loading -------------------------------------------------------------------------------------


def test_model_loads_once_per_process(tiny_clip, model_folder):
    assert clip.load_model(tiny_model_spec(TINY_CLIP, model_folder)) is tiny_clip


def test_identity_records_model_and_weights_as_given(tiny_clip, model_folder):
    assert tiny_clip.identity == {"model": TINY_CLIP, "pretrained": str(model_folder / f"{TINY_CLIP}.pt")}
    assert not tiny_clip.is_coca


def test_missing_checkpoint_names_the_pretrained_setting(tmp_path):
    with pytest.raises(clip.ModelUnavailable, match="CURATION_CLIP_PRETRAINED") as raised:
        clip.load_model(clip.ModelSpec(TINY_CLIP, pretrained=str(tmp_path / "missing.safetensors")))
    assert "does not exist" in str(raised.value)


def test_unknown_model_names_the_model_setting():
    with pytest.raises(clip.ModelUnavailable, match="CURATION_CLIP_MODEL"):
        clip.load_model(clip.ModelSpec("ViT-Nonexistent-99", pretrained="openai"))


def test_unknown_tag_names_the_pretrained_setting_and_lists_tags():
    with pytest.raises(clip.ModelUnavailable, match="CURATION_CLIP_PRETRAINED") as raised:
        clip.load_model(clip.ModelSpec("ViT-B-32", pretrained="no_such_tag"))
    assert "laion2b_s34b_b79k" in str(raised.value)


def test_checkpoint_of_another_architecture_is_unavailable(model_folder):
    wrong = str(build_tiny_checkpoint(TINY_COCA, model_folder))
    with pytest.raises(clip.ModelUnavailable, match="CURATION_CLIP_MODEL"):
        clip.load_model(clip.ModelSpec(TINY_CLIP, pretrained=wrong, device="cpu"))


def test_corrupt_checkpoint_is_unavailable(tmp_path):
    broken = tmp_path / "weights.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(clip.ModelUnavailable, match="CURATION_CLIP_PRETRAINED"):
        clip.load_model(clip.ModelSpec(TINY_CLIP, pretrained=str(broken), device="cpu"))


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """A machine without network: DNS fails at once, as it does here, and the hub cache is empty."""

    def no_network(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))


def test_hub_tag_while_offline_fails_fast_with_advice(offline):
    started = time.monotonic()
    with pytest.raises(clip.ModelUnavailable) as raised:
        clip.load_model(clip.ModelSpec("ViT-B-32", pretrained="laion2b_s34b_b79k", device="cpu"))
    assert time.monotonic() - started < 5
    message = str(raised.value)
    assert "could not be reached" in message and "CURATION_CLIP_PRETRAINED" in message
    assert "laion2b_s34b_b79k" in message and "ViT-B-32" in message


def test_hf_hub_schema_while_offline_fails_fast(offline):
    started = time.monotonic()
    with pytest.raises(clip.ModelUnavailable, match="could not be reached"):
        clip.load_model(clip.ModelSpec("ViT-B-32", pretrained="hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K"))
    assert time.monotonic() - started < 5


def test_failed_hub_download_is_unavailable(monkeypatch, tmp_path):
    """The hub answers the probe but the download fails the way huggingface_hub fails offline."""
    monkeypatch.setattr(clip, "_can_connect", lambda *args: True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))

    def download_fails(*args, **kwargs):
        raise FileNotFoundError(
            "Failed to download file (open_clip_pytorch_model.bin). Last error: An error happened while trying "
            "to locate the file on the Hub and we cannot find the requested files in the local cache."
        )

    monkeypatch.setattr(open_clip.factory, "download_pretrained", download_fails)
    with pytest.raises(clip.ModelUnavailable, match="CURATION_CLIP_PRETRAINED"):
        clip.load_model(clip.ModelSpec("ViT-B-32", pretrained="laion2b_s34b_b79k", device="cpu"))


def test_hub_tag_in_local_cache_loads_without_network(offline, tmp_path):
    """A tag downloaded once is read from the hub cache: open_clip would query the hub first."""
    snapshot = tmp_path / "hub" / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_model.safetensors").write_bytes(b"weights")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc123")
    source = clip._resolve_source(clip.ModelSpec("ViT-B-32", pretrained="laion2b_s34b_b79k"))
    assert source.checkpoint == str(snapshot / "open_clip_model.safetensors")
    assert source.preprocess["image_interpolation"] == "bicubic"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_gpu_names_the_device_setting():
    assert clip.resolve_device("auto") == "cpu"
    with pytest.raises(clip.ModelUnavailable, match="CURATION_DEVICE"):
        clip.load_model(clip.ModelSpec(TINY_CLIP, "", device="cuda"))


# --- embeddings and search -----------------------------------------------------------------------


def test_image_embeddings_are_normalised_with_the_model_dimension(tiny_clip, photos):
    embeddings = tiny_clip.embed_images(list(photos.values()))
    assert embeddings.shape == (4, 64) == (len(photos), tiny_clip.embedding_dim)
    assert embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-5)


def test_identical_images_embed_identically_and_different_photos_differ(tiny_clip, photos):
    astronaut, coffee = photos["astronaut"], photos["coffee"]
    together = tiny_clip.embed_images([astronaut, coffee, astronaut])
    alone = tiny_clip.embed_images([astronaut])
    np.testing.assert_allclose(together[0], together[2], atol=1e-6)
    np.testing.assert_allclose(together[0], alone[0], atol=1e-5)
    assert together[0] @ together[1] < 0.999


def test_decoding_workers_give_the_same_embeddings(model_folder, photos, monkeypatch):
    """Several batches go through DataLoader workers; one process gives the same numbers."""
    monkeypatch.setattr(clip, "_spare_cores", lambda: 4)  # on a CPU device, workers need cores torch leaves
    images = list(photos.values()) + [photo("chelsea")]  # bytes and a PIL image
    workers = clip.load_model(tiny_model_spec(TINY_CLIP, model_folder, batch_size=2, num_workers=2))
    in_process = clip.load_model(tiny_model_spec(TINY_CLIP, model_folder, batch_size=2, num_workers=0))
    assert workers._worker_count(len(images)) == 2 and in_process._worker_count(len(images)) == 0
    np.testing.assert_allclose(workers.embed_images(images), in_process.embed_images(images), atol=1e-6)
    monkeypatch.setattr(clip, "_spare_cores", lambda: 0)
    assert workers._worker_count(len(images)) == 0  # torch's threads use every core: decode inline


def test_batched_normalisation_matches_open_clip_preprocessing(tiny_clip, photos):
    """Workers hand over uint8 pixels; the batch is normalised on the device, as open_clip would."""
    image = photos["rocket"]
    (batch,) = tiny_clip._pixel_batches([image])
    expected = tiny_clip.preprocess(clip.decode_for_model(image, tiny_clip.input_size))
    torch.testing.assert_close(batch[0], expected, atol=1e-5, rtol=0)


def test_jpeg_decodes_at_reduced_scale_and_upright():
    upload = photo("coffee").resize((1600, 1066))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: shown rotated 90 degrees clockwise
    decoded = clip.decode_for_model(jpeg(upload, exif=exif), 224)
    assert decoded.mode == "RGB"
    assert decoded.size == (267, 400)  # 1/4 scale, then turned upright
    assert min(decoded.size) >= 224


def test_text_search_ranks_the_best_match_first(tiny_clip, photos):
    query = "a photo of a cat"
    images = tiny_clip.embed_images(list(photos.values()))
    # A collection whose third item's embedding is the query's own: it must rank first, at cosine 1.
    collection = np.insert(images, 2, tiny_clip.embed_texts([query])[0], axis=0)
    ranking = clip.rank_by_text(tiny_clip, query, collection)
    assert ranking[0][0] == 2 and ranking[0][1] == pytest.approx(1, abs=1e-5)
    expected = np.argsort(-(collection @ tiny_clip.embed_texts([query])[0]))
    assert [row for row, _ in ranking] == list(expected)
    assert [score for _, score in ranking] == sorted((score for _, score in ranking), reverse=True)


# --- analysis: captions, tags, metadata ----------------------------------------------------------


def test_phrase_bank_captions_record_their_parts(tiny_clip, photos):
    results = captions.analyse_images(tiny_clip, list(photos.values()), titles=[""] * 4, tags_lists=[[]] * 4)
    for result in results:
        assert result.caption_source == "phrase-bank"
        banks = [part["bank"] for part in result.caption_parts]
        assert banks[:2] == ["medium", "subject"]
        medium, subject = (part["phrase"] for part in result.caption_parts[:2])
        assert result.caption.startswith(f"{medium} of {subject}")
        for part in result.caption_parts:
            assert part["phrase"] in result.caption
            assert -1 <= part["score"] <= 1 and 0 < part["probability"] <= 1
        assert result.metadata_score is None


def test_analysis_reuses_the_image_embedding(tiny_clip, photos):
    images = list(photos.values())
    results = clip.analyse_images(tiny_clip, images, titles=[""] * 4, tags_lists=[[]] * 4)
    np.testing.assert_allclose(np.stack([r.embedding for r in results]), tiny_clip.embed_images(images), atol=1e-6)


def test_tags_come_from_the_vocabulary_best_first(tiny_clip, photos):
    (result,) = clip.analyse_images(tiny_clip, [photos["chelsea"]], titles=[""], tags_lists=[[]], top_k_tags=7)
    assert len(result.tags) == 7
    scores = [score for _, score in result.tags]
    assert scores == sorted(scores, reverse=True)
    assert all(0 < score < 1 for score in scores) and sum(scores) <= 1
    assert {tag for tag, _ in result.tags} <= set(vocab.tags())


def test_metadata_score_compares_the_image_with_title_and_tags(tiny_clip, photos):
    titles, tags_lists = ["Astronaut in a spacesuit", "", ""], [["space", "NASA"], ["espresso"], []]
    images = [photos["astronaut"], photos["coffee"], photos["rocket"]]
    results = clip.analyse_images(tiny_clip, images, titles=titles, tags_lists=tags_lists)
    text = captions.metadata_text(titles[0], tags_lists[0])
    assert text == "Astronaut in a spacesuit. space, NASA"
    expected = float(results[0].embedding @ tiny_clip.embed_texts([text])[0])
    assert results[0].metadata_score == pytest.approx(expected, abs=1e-5)
    assert results[1].metadata_score == pytest.approx(
        captions.metadata_clip_score(tiny_clip, results[1].embedding, "", ["espresso"]), abs=1e-5
    )
    assert results[2].metadata_score is None


def test_coca_writes_captions_without_special_tokens(tiny_coca, photos):
    images = [photos["astronaut"], photos["coffee"]]
    results = clip.analyse_images(tiny_coca, images, titles=["", ""], tags_lists=[[], []])
    for result in results:
        assert result.caption_source == "coca" and result.caption_parts == []
        assert result.caption.strip() and "<" not in result.caption and "end_of_text" not in result.caption
        assert result.embedding.shape == (64,)
    assert tiny_coca.caption_images(images) == [r.caption for r in results]  # deterministic


def test_captions_need_a_coca_model(tiny_clip, photos):
    with pytest.raises(ValueError, match="not a CoCa model"):
        tiny_clip.caption_images([photos["coffee"]])


def test_beam_search_finds_the_likelier_caption_that_greedy_misses():
    """A scripted decoder over tokens 0-2 (start 3, end 4): greedy takes 0 (p .6), then wanders at
    p 1/3 per token; the beam keeps 1 (p .4), after which the end comes at p .9."""
    sot, eot = 3, 4

    def next_logits(sequences):
        logits = torch.full((len(sequences), 5), -10.0)
        for row, sequence in enumerate(sequences.tolist()):
            if sequence == [sot]:
                logits[row, :2] = torch.tensor([0.6, 0.4]).log()
            elif sequence[1] == 1:
                logits[row, eot], logits[row, 0] = np.log(0.9), np.log(0.1)
            else:
                logits[row, :3] = 0.0  # uniform over 0-2, the end almost never
        return logits

    beam = captions.beam_search(next_logits, 2, sot_id=sot, eot_id=eot, num_beams=2, max_length=6, min_length=1)
    greedy = captions.beam_search(next_logits, 1, sot_id=sot, eot_id=eot, num_beams=1, max_length=6, min_length=1)
    assert beam == [[1], [1]]
    assert greedy[0][0] == 0 and len(greedy[0]) == 6


def test_clean_caption():
    assert captions.clean_caption(" a cat on a couch .  ") == "a cat on a couch"
    assert captions.clean_caption("a dog , running") == "a dog, running"


def test_training_caption_records_where_each_part_came_from():
    text, sources = captions.training_caption(
        "a photograph of a city skyline, golden hour light",
        "Sunset over Lisbon.",
        ["Lisbon", "sunset", "travel", "Travel", " "],
    )
    assert text == "Sunset over Lisbon, a photograph of a city skyline, golden hour light, travel"
    assert sources == [
        {"text": "Sunset over Lisbon", "source": "title"},
        {"text": "a photograph of a city skyline, golden hour light", "source": "model"},
        {"text": "travel", "source": "tags"},
    ]
    assert text == ", ".join(part["text"] for part in sources)


def test_training_caption_without_title_or_model_caption():
    assert captions.training_caption("", "", ["cat"]) == ("cat", [{"text": "cat", "source": "tags"}])
    assert captions.training_caption(None, "", []) == ("", [])


def test_vocabularies():
    tags = vocab.tags()
    assert 150 <= len(tags) <= 300 and len(set(tags)) == len(tags)
    assert vocab.tag_prompts()[0] == f"a photo of {tags[0]}"
    banks = {bank.name: bank for bank in vocab.phrase_banks()}
    assert list(banks) == ["medium", "subject", "composition", "lighting", "style"]
    assert all(len(bank.phrases) >= 20 for bank in banks.values())
    assert banks["subject"].prompts()[0] == f"a photo of {banks['subject'].phrases[0]}"


# --- quality -------------------------------------------------------------------------------------


def test_sharp_photo_passes_and_blurred_copy_is_flagged():
    sharp = photo("astronaut").resize((1024, 1024), Image.Resampling.LANCZOS)
    good = quality.assess_quality(jpeg(sharp), 4000, 4000)
    assert good.ok, good.reasons
    assert good.megapixels == 16 and good.aspect_ratio == 1
    blurred = quality.assess_quality(jpeg(sharp.filter(ImageFilter.GaussianBlur(4))), 4000, 4000)
    assert not blurred.ok and blurred.reasons[0].startswith("blurry")
    assert blurred.sharpness < quality.MIN_SHARPNESS < good.sharpness


def test_extreme_aspect_ratio_is_flagged():
    strip = photo("coffee").crop((0, 100, 600, 250))  # 4:1
    result = quality.assess_quality(strip)
    assert (result.width, result.height) == (600, 150)
    assert any(reason.startswith("extreme aspect ratio: 4.0:1") for reason in result.reasons)


def test_dark_and_washed_out_copies_are_flagged_but_white_backgrounds_are_not():
    coffee = photo("coffee")
    assert quality.assess_quality(coffee, 3000, 2000).ok
    dark = quality.assess_quality(ImageEnhance.Brightness(coffee).enhance(0.25))
    assert any(reason.startswith("underexposed") for reason in dark.reasons)
    washed = quality.assess_quality(ImageEnhance.Brightness(coffee).enhance(3))
    assert any(reason.startswith("overexposed") for reason in washed.reasons)
    horse = quality.assess_quality(Image.fromarray(skdata.horse()))  # a black silhouette on pure white
    assert horse.clipped_bright > 0.5 and not any("exposed" in reason for reason in horse.reasons)


def test_hashes_and_dict():
    result = quality.assess_quality(jpeg(photo("chelsea")), 2400, 1600)
    assert len(result.dhash) == 16 and int(result.dhash, 16) >= 0  # 64 bits as hex
    as_dict = result.as_dict()
    assert as_dict["ok"] is True and as_dict["reasons"] == [] and as_dict["dhash"] == result.dhash
    same = quality.assess_quality(photo("chelsea"))  # the pixels before JPEG: a near-identical hash
    assert bin(int(same.dhash, 16) ^ int(result.dhash, 16)).count("1") <= 4
