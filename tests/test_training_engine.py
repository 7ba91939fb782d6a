"""The Django-free training engine (training/engine/) on CPU, with a tiny Stable Diffusion pipeline built
offline and real photos. No database, no network."""

import json
import math
import time
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from marketplace.core.photos import PHOTOS, load_photo
from tests.conftest import SHARD_PHOTOS, small_photo_bytes, write_shard
from training.engine.data import DataError, bucket_sizes, nearest_bucket, read_samples
from training.engine.tiny import build_tiny_pipeline
from training.engine.tokenizer import build_clip_tokenizer
from training.engine.train import Callbacks, ModelUnavailable, TrainConfig, train

# diffusers' DPM-Solver builds its sigmas with a NumPy 2 copy-keyword deprecation: not ours.
pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword"),
]


def _config(base: Path, **overrides) -> TrainConfig:
    values = dict(
        base_model=str(base),
        resolution=64,
        batch_size=2,
        max_steps=12,
        learning_rate=1e-3,
        checkpoint_every=4,
        validation_prompts=("a photo of a cat",),
        validation_steps=2,
    )
    return TrainConfig(**{**values, **overrides})


def _lora(output: Path) -> dict[str, torch.Tensor]:
    return load_file(str(output / "pytorch_lora_weights.safetensors"))


def test_tokenizer_matches_open_clip(tmp_path):
    import open_clip

    tokenizer = build_clip_tokenizer(tmp_path / "tokenizer")
    reference = open_clip.get_tokenizer("ViT-B-32")
    captions = [
        "A photo of an astronaut, riding a horse!",
        "Café au lait — 3 cups; don't spill the COFFEE",
        "rocket   launch at dusk, 1969 (NASA)",
        "",
        "a very long caption " * 30,
    ]
    for caption in captions:
        ours = tokenizer(caption, max_length=77, truncation=True).input_ids
        theirs = reference([caption])[0].tolist()
        assert ours == theirs[: len(ours)], caption
        assert all(token == 0 for token in theirs[len(ours) :])  # open_clip pads with 0
    assert len(tokenizer) == 49408
    assert (tmp_path / "tokenizer" / "vocab.json").is_file() and (tmp_path / "tokenizer" / "merges.txt").is_file()


def test_tiny_pipeline_is_reused(tiny_base):
    started = time.perf_counter()
    assert build_tiny_pipeline(tiny_base) == tiny_base
    assert time.perf_counter() - started < 1
    index = json.loads((tiny_base / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"


def test_full_run_writes_a_lora_that_loads_and_changes_the_output(tiny_base, shard, tmp_path):
    from diffusers import StableDiffusionPipeline
    from PIL import Image

    steps, validations, checkpoints, logs = [], [], [], []
    callbacks = Callbacks(
        on_step=lambda step, total, loss, ips: steps.append((step, total, loss, ips)),
        on_validation=lambda step, images: validations.append((step, images)),
        on_checkpoint=lambda step, path: checkpoints.append((step, path)),
        log=logs.append,
    )
    config = _config(tiny_base, validation_every=6, num_validation_images=2, alpha=8)
    result = train(config, [shard], tmp_path / "run", callbacks=callbacks)

    assert result.final_step == 12 and not result.stopped
    assert [s[0] for s in steps] == list(range(1, 13)) and all(s[1] == 12 for s in steps)
    assert len(result.losses) == 12 and all(math.isfinite(loss) and loss > 0 for loss in result.losses)
    assert all(s[3] > 0 for s in steps)
    # One photo of six is held out for evaluation; the five others are each seen (almost) equally often.
    assert len(result.holdout_keys) == 1 and set(result.usage) == set(SHARD_PHOTOS) - set(result.holdout_keys)
    assert max(result.usage.values()) - min(result.usage.values()) <= 1
    assert [step for step, _ in validations] == [6, 12] and len(validations[0][1]) == 2 * 2  # two prompts
    assert [step for step, _ in checkpoints] == [4, 8, 12]
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    best = f"checkpoint-{result.best_step:08d}"
    assert kept == sorted({best, "checkpoint-00000008", "checkpoint-00000012"})  # the last two and the best
    assert [e["step"] for e in result.evaluations] == [0, 4, 6, 8, 12]
    assert [e["step"] for e in result.evaluations if e["best"]] == [result.best_step]
    assert result.sample_grid_path == tmp_path / "run" / "samples.png"
    with Image.open(result.sample_grid_path) as grid:
        assert grid.size == (2 * 2 * 64, 2 * 64)  # a row per prompt: two base images, then two LoRA images

    pipeline = StableDiffusionPipeline.from_pretrained(str(tiny_base))
    pipeline.set_progress_bar_config(disable=True)

    def generate():
        generator = torch.Generator().manual_seed(0)
        return pipeline(
            "a photo of a cat", height=64, width=64, num_inference_steps=2, generator=generator, output_type="np"
        ).images

    # The engine's previews use the pipeline as a user loads it, with its own scheduler.
    before = generate()
    pipeline.load_lora_weights(str(result.lora_path.parent))
    after = generate()
    assert not torch.allclose(torch.from_numpy(before), torch.from_numpy(after), atol=1e-4)
    # The loaded pipeline reproduces the engine's own final validation image (alpha 8 != rank 16 included).
    final_image = torch.from_numpy(
        pipeline(
            "a photo of a cat",
            height=64,
            width=64,
            num_inference_steps=2,
            generator=torch.Generator().manual_seed(config.seed),
            output_type="np",
        ).images[0]
    )
    import numpy as np

    engine_image = torch.from_numpy(np.asarray(validations[-1][1][0], dtype=np.float32) / 255)
    assert (final_image - engine_image).abs().max() < 2 / 255


def _reference(tiny_base, shard, tmp_path_factory, name="reference", **overrides):
    output = tmp_path_factory.mktemp(name)
    result = train(_config(tiny_base, max_steps=8, checkpoint_every=2, **overrides), [shard], output)
    return result, _lora(output)


@pytest.fixture(scope="module")
def uninterrupted(tiny_base, shard, tmp_path_factory):
    return _reference(tiny_base, shard, tmp_path_factory)


def _assert_same_run(result, weights, reference):
    ref_result, ref_weights = reference
    assert result.final_step == ref_result.final_step == 8
    assert result.usage == ref_result.usage
    assert result.losses == pytest.approx(ref_result.losses, abs=1e-6)
    assert set(weights) == set(ref_weights)
    for name, tensor in weights.items():
        assert torch.allclose(tensor, ref_weights[name], rtol=0, atol=1e-6), name


def test_resume_after_cancel_matches_an_uninterrupted_run(tiny_base, shard, tmp_path, uninterrupted):
    seen = []
    stop_after = Callbacks(on_step=lambda step, *_: seen.append(step), should_stop=lambda: len(seen) >= 3)
    stopped = train(_config(tiny_base, max_steps=8, checkpoint_every=2), [shard], tmp_path, callbacks=stop_after)
    assert stopped.stopped and stopped.final_step == 3 and stopped.lora_path is None
    assert (tmp_path / "checkpoints" / "checkpoint-00000003" / "pytorch_lora_weights.safetensors").is_file()
    assert not (tmp_path / "pytorch_lora_weights.safetensors").exists()

    logs = []
    resumed = train(
        _config(tiny_base, max_steps=8, checkpoint_every=2), [shard], tmp_path, callbacks=Callbacks(log=logs.append)
    )
    assert not resumed.stopped
    assert any("Resumed from checkpoint-00000003" in line for line in logs)
    assert any("Reused" in line and "latents" in line for line in logs)  # the cache is not recomputed
    _assert_same_run(resumed, _lora(tmp_path), uninterrupted)


def test_resume_after_a_crash_matches_an_uninterrupted_run(tiny_base, shard, tmp_path, uninterrupted):
    def crash(step, *_):
        if step == 5:  # after the checkpoint at step 4
            raise RuntimeError("worker killed")

    with pytest.raises(RuntimeError, match="worker killed"):
        train(
            _config(tiny_base, max_steps=8, checkpoint_every=2), [shard], tmp_path, callbacks=Callbacks(on_step=crash)
        )
    assert (tmp_path / "checkpoints" / "checkpoint-00000004" / "state.json").is_file()
    resumed = train(_config(tiny_base, max_steps=8, checkpoint_every=2), [shard], tmp_path)
    _assert_same_run(resumed, _lora(tmp_path), uninterrupted)


def test_resume_refuses_other_settings(tiny_base, shard, tmp_path):
    train(_config(tiny_base, max_steps=2, checkpoint_every=2), [shard], tmp_path)
    with pytest.raises(ValueError, match="rank"):
        train(_config(tiny_base, max_steps=4, checkpoint_every=2, rank=4), [shard], tmp_path)


def test_buckets_keep_aspect_ratios():
    for resolution in (64, 512, 768):
        buckets = bucket_sizes(resolution)
        multiple = 8 if resolution < 256 else 64
        assert len(buckets) >= 5
        for width, height in buckets:
            assert width % multiple == 0 and height % multiple == 0
            assert abs(width * height / resolution**2 - 1) < 0.2
        for name in PHOTOS:
            width, height = load_photo(name).size
            bucket = nearest_bucket(width, height, buckets)
            assert abs(math.log((bucket[0] / bucket[1]) / (width / height))) < 0.12, (name, resolution, bucket)
            assert (bucket[0] > bucket[1]) == (width > height) or width == height or bucket[0] == bucket[1]
    assert nearest_bucket(1000, 500, bucket_sizes(512)) == (704, 384)
    assert nearest_bucket(500, 1000, bucket_sizes(512)) == (384, 704)


def test_batches_stay_within_a_bucket(tiny_base, shard):
    from training.engine.train import _Run

    run = _Run(_config(tiny_base, batch_size=2), [shard], Path("/nonexistent"), None)
    run.setup()
    by_key = {sample.key: bucket for sample, bucket in zip(run.samples, run.sample_bucket, strict=True)}
    assert by_key["astronaut"] == (64, 64) and by_key["coffee"] == (80, 56)
    for epoch in range(3):
        batches = run.epoch_batches(epoch)
        assert batches == run.epoch_batches(epoch)  # deterministic
        assert all(1 <= len(batch) <= 2 and len({run.sample_bucket[i] for i in batch}) == 1 for batch in batches)
        seen = sorted(i for batch in batches for i in batch)
        assert seen == sorted(run.train_indices)  # each training sample exactly once per epoch
    assert run.epoch_batches(0) != run.epoch_batches(1)
    assert not set(run.holdout) & set(run.train_indices) and len(run.holdout) == 1


def test_every_image_is_seen_equally_often_whatever_its_bucket(tiny_base, tmp_path):
    """Usage counts pay creators: a lone square photo among wide and tall ones is seen as often as each of them
    (before, padding its bucket's batch with repeats showed it batch_size times per epoch)."""
    import io
    import tarfile

    from marketplace.core.photos import load_photo

    shapes = {
        "square": (96, 96),
        **{f"wide{i}": (128, 72) for i in range(5)},
        **{f"tall{i}": (72, 128) for i in range(3)},
    }
    photos = ["astronaut", "coffee", "chelsea", "rocket", "motorcycle", "hubble", "astronaut", "coffee", "chelsea"]
    shard = tmp_path / "uneven.tar"
    with tarfile.open(shard, "w") as tar:
        for (key, size), photo in zip(shapes.items(), photos, strict=True):
            image = load_photo(photo).convert("RGB").resize(size)
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=85)
            for name, payload in ((f"{key}.jpg", buffer.getvalue()), (f"{key}.txt", f"a photo, {key}".encode())):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    config = _config(tiny_base, batch_size=4, max_steps=9, holdout_fraction=0, checkpoint_every=9)
    result = train(config, [shard], tmp_path / "run")
    assert set(result.usage) == set(shapes)
    # 9 images in buckets of 1, 5 and 3: an epoch is 4 batches; 9 steps are 2 epochs and a quarter.
    assert max(result.usage.values()) - min(result.usage.values()) <= 1, result.usage
    assert sum(result.usage.values()) >= 2 * len(shapes)


def test_missing_base_model_is_reported_quickly(tmp_path, shard, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # refused at once: never the real hub
    (tmp_path / "empty").mkdir()
    for base in [str(tmp_path / "missing"), str(tmp_path / "empty"), "nobody/no-such-model"]:
        started = time.perf_counter()
        with pytest.raises(ModelUnavailable, match="base_model") as error:
            train(_config(base), [shard], tmp_path / "out")
        assert time.perf_counter() - started < 10
        assert base in str(error.value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailable, match="HF_HUB_OFFLINE"):
        train(_config("nobody/no-such-model"), [shard], tmp_path / "out")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("rank", 0, "rank must be a whole number >= 1"),
        ("alpha", -1, "alpha must be a number > 0"),
        ("learning_rate", 0, "learning_rate"),
        ("lr_scheduler", "exponential", "lr_scheduler must be one of constant, cosine"),
        ("max_steps", 2.5, "max_steps"),
        ("batch_size", 0, "batch_size"),
        ("gradient_accumulation", 0, "gradient_accumulation"),
        ("resolution", 100, "resolution must be a multiple of 8"),
        ("mixed_precision", "fp8", "mixed_precision must be one of bf16, fp16, no"),
        ("snr_gamma", 0, "snr_gamma"),
        ("caption_dropout", 1.5, "caption_dropout"),
        ("checkpoint_every", 0, "checkpoint_every"),
        ("validation_every", -1, "validation_every"),
        ("num_validation_images", 0, "num_validation_images"),
        ("device", "tpu", "device must be"),
        ("base_model", "", "base_model"),
    ],
)
def test_bad_config_values_are_refused_clearly(field, value, message):
    values = {"base_model": "some/model", field: value}
    with pytest.raises(ValueError, match=message):
        TrainConfig(**values)


def test_config_defaults_are_sound():
    config = TrainConfig(base_model="stable-diffusion-v1-5/stable-diffusion-v1-5", snr_gamma=None)
    assert (config.rank, config.alpha, config.learning_rate, config.lr_scheduler) == (16, 16, 1e-4, "constant")
    assert (config.batch_size, config.resolution, config.mixed_precision, config.checkpoint_every) == (
        4,
        512,
        "bf16",
        100,
    )


def test_imagefolder_zip_trains_too(tiny_base, tmp_path):
    path = tmp_path / "pack.zip"
    names = ["astronaut", "coffee", "chelsea"]
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("README.md", "a pack")
        rows = []
        for name in names:
            archive.writestr(f"train/{name}.jpg", small_photo_bytes(name))
            rows.append(json.dumps({"file_name": f"{name}.jpg", "text": f"a photo of {name}", "creator": "x"}))
        archive.writestr("train/metadata.jsonl", "\n".join(rows) + "\n")
    samples = read_samples([path])
    assert [s.key for s in samples] == names
    assert samples[0].caption == "a photo of astronaut" and samples[0].metadata == {"creator": "x"}
    result = train(_config(tiny_base, max_steps=2, batch_size=1), [path], tmp_path / "run")
    assert result.final_step == 2 and sum(result.usage.values()) == 2
    assert (tmp_path / "run" / "pytorch_lora_weights.safetensors").is_file()


def test_webdataset_samples_and_data_errors(tmp_path, shard):
    samples = read_samples([shard])
    assert [s.key for s in samples] == SHARD_PHOTOS
    assert samples[1].caption == "a photo of coffee" and samples[1].metadata == {"creator": "creator-0"}
    assert samples[1].image_bytes[:2] == b"\xff\xd8"

    no_caption = write_shard(tmp_path / "bad.tar", ["astronaut", "coffee"], skip_caption="coffee")
    with pytest.raises(DataError, match=r"'coffee'.*no caption"):
        read_samples([no_caption])
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"this is not an archive" * 100)
    with pytest.raises(DataError, match="neither a WebDataset tar shard nor an imagefolder zip"):
        read_samples([garbage])
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(shard.read_bytes()[:5000])
    with pytest.raises(DataError, match="truncated.tar"):
        read_samples([truncated])
    with pytest.raises(DataError, match="appears twice"):
        read_samples([shard, shard])
    unlisted = tmp_path / "unlisted.zip"
    with zipfile.ZipFile(unlisted, "w") as archive:
        archive.writestr("train/a.jpg", small_photo_bytes("coffee"))
        archive.writestr("train/b.jpg", small_photo_bytes("coffee"))
        archive.writestr("train/metadata.jsonl", json.dumps({"file_name": "a.jpg", "text": "x"}))
    with pytest.raises(DataError, match=r"train/b.jpg.*no caption"):
        read_samples([unlisted])


def test_text_encoder_lora_with_accumulation_and_cosine(tiny_base, shard, tmp_path):
    from diffusers import StableDiffusionPipeline

    config = _config(
        tiny_base,
        max_steps=3,
        train_text_encoder=True,
        gradient_accumulation=2,
        lr_scheduler="cosine",
        lr_warmup_steps=1,
        snr_gamma=None,
        gradient_checkpointing=True,
        caption_dropout=0.5,
    )
    result = train(config, [shard], tmp_path)
    assert result.final_step == 3 and max(result.usage.values()) - min(result.usage.values()) <= 1
    weights = _lora(tmp_path)
    assert any(name.startswith("text_encoder.") for name in weights)
    assert any(name.startswith("unet.") for name in weights)
    pipeline = StableDiffusionPipeline.from_pretrained(str(tiny_base))
    pipeline.load_lora_weights(str(tmp_path))
    assert pipeline.get_list_adapters() == {"unet": ["default_0"], "text_encoder": ["default_0"]}


def test_running_out_of_gpu_memory_fails_with_the_preset_that_fits(tiny_base, shard, tmp_path, monkeypatch):
    """A CUDA out-of-memory error (simulated: this machine has no GPU) ends the run with advice: the estimate for
    its settings and the settings that fit a card of its size."""
    from training.engine import train as engine
    from training.engine.families.sd import StableDiffusionFamily
    from training.engine.train import TrainingOutOfMemory

    def out_of_memory(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(StableDiffusionFamily, "loss", out_of_memory)
    monkeypatch.setattr(engine, "gpu_memory_gb", lambda device: 24.0)
    with pytest.raises(TrainingOutOfMemory) as raised:
        train(_config(tiny_base, resolution=64, batch_size=2), [shard], tmp_path)
    message = str(raised.value)
    assert "ran out of memory on a 24 GB GPU" in message and "Settings that fit this card: 24 GB" in message
