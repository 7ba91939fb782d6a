import io
import os
import uuid
from pathlib import Path

import pytest
from PIL import Image

from marketplace import celery_app, local_state
from marketplace.accounts.services import register_user
from marketplace.core.photos import load_photo

# The production smoke test starts its own processes and services: `make smoke` runs it (CI too).
collect_ignore = [] if os.environ.get("MARKETPLACE_SMOKE") == "1" else ["smoke"]

# What manage.py does before it runs: the test database and the filesystem broker live under var/.
local_state.prepare()


@pytest.fixture(autouse=True, scope="session")
def eager_celery():
    """Tasks run in-process in tests; one test runs a real worker (test_worker.py)."""
    celery_app.conf.task_always_eager = True
    celery_app.conf.task_eager_propagates = True
    yield


@pytest.fixture(autouse=True)
def media_root(tmp_path, settings) -> Path:
    root = tmp_path / "media"
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {"BACKEND": "marketplace.core.storage.AtomicFileSystemStorage", "OPTIONS": {"location": str(root)}},
    }
    return root


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    """Hashing the named users' passwords with PBKDF2 dominated many tests' set-up time."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def curation_off(settings):
    """Curation runs only in the tests that ask for it (with a tiny local model: no network)."""
    settings.CURATION_ANALYSE_ON_READY = False


@pytest.fixture(autouse=True)
def fresh_cache(settings):
    """Each test gets its own key space in the configured cache (file or Redis), so
    test runs side by side cannot see each other's log-in failure counters."""
    settings.CACHES = {"default": {**settings.CACHES["default"], "KEY_PREFIX": f"test-{uuid.uuid4().hex}"}}
    yield


def stored_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _user(username, **roles):
    return register_user(username=username, email=f"{username}@example.com", password="correct horse battery", **roles)


@pytest.fixture
def alice(db):
    """A creator."""
    return _user("alice", is_creator=True, is_buyer=False, display_name="Alice Photo")


@pytest.fixture
def bob(db):
    """Another creator."""
    return _user("bob", is_creator=True, is_buyer=False)


@pytest.fixture
def carol(db):
    """A buyer."""
    return _user("carol", is_creator=False, is_buyer=True)


@pytest.fixture
def staff(db):
    user = _user("sam", is_creator=False, is_buyer=False)
    user.is_staff = True
    user.save()
    return user


def photo_bytes(name="astronaut", fmt="JPEG", *, min_short_side=600, exif=None, size=None, **save_args) -> bytes:
    image = load_photo(name, min_short_side=min_short_side)
    if size:
        image = image.resize(size)
    buffer = io.BytesIO()
    if exif is not None:
        save_args["exif"] = exif
    if fmt == "JPEG":
        save_args.setdefault("quality", 90)
    image.save(buffer, fmt, **save_args)
    return buffer.getvalue()


def gps_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    exif[0x0110] = "T-100"
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (51.0, 30.0, 12.0)
    gps[3], gps[4] = "W", (0.0, 7.0, 39.0)
    return exif


# --- curation models: built (and the tiny CLIP trained) once per test run ----------------------


@pytest.fixture(scope="session")
def model_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("curation-models")


@pytest.fixture(scope="session")
def trained_checkpoint(model_folder):
    from marketplace.core.photos import PHOTOS
    from marketplace.curation.engine.demo_model import train_photo_clip

    return train_photo_clip(model_folder, [load_photo(name) for name in PHOTOS])


@pytest.fixture
def tiny_clip(settings, trained_checkpoint):
    """A tiny CLIP that tells the test photos apart, configured as an offline site would."""
    from marketplace.curation.engine import clip
    from tests.curation_models import TINY_CLIP

    spec = clip.ModelSpec(name=TINY_CLIP, pretrained=str(trained_checkpoint), device="cpu")
    settings.CURATION_CLIP_MODEL, settings.CURATION_CLIP_PRETRAINED = spec.name, spec.pretrained
    settings.CURATION_DEVICE = "cpu"
    settings.CURATION_ANALYSE_ON_READY = True
    return spec


# --- packs, sales and royalties -----------------------------------------------------------------


@pytest.fixture
def make_eligible_asset(django_capture_on_commit_callbacks):
    """A ready, consented, commercially licensed upload of a real photo, with a finished analysis
    that passed quality (no model is run: the embedding is a seeded random unit vector)."""
    import numpy as np
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.utils import timezone

    from marketplace.catalog import services as catalog
    from marketplace.curation.models import AssetAnalysis

    def make(
        owner,
        photo="astronaut",
        *,
        title=None,
        licence="mkt-ai-commercial-1.0",
        size=None,
        quality_ok=True,
        embedding=None,
        caption=None,
        **metadata,
    ):
        title = title if title is not None else f"{photo} by {owner.username}"
        metadata = {"title": title, "licence": licence, "ai_training_consent": True, **metadata}
        data = photo_bytes(photo, size=size) if size else photo_bytes(photo)
        with django_capture_on_commit_callbacks(execute=True):
            asset = catalog.upload_asset(
                owner=owner, uploaded_file=SimpleUploadedFile(f"{photo}.jpg", data), metadata=metadata
            )
        asset.refresh_from_db()
        assert asset.status == asset.Status.READY, asset.failure_reason
        if embedding is None:
            embedding = np.random.default_rng(asset.pk).standard_normal(64)
        embedding = np.asarray(embedding, dtype=np.float32)
        embedding /= np.linalg.norm(embedding)
        from django.conf import settings

        AssetAnalysis.objects.update_or_create(
            asset=asset,
            defaults=dict(
                status=AssetAnalysis.Status.DONE,
                model_name=settings.CURATION_CLIP_MODEL,
                model_pretrained=settings.CURATION_CLIP_PRETRAINED,
                embedding=embedding.astype(np.float16).tobytes(),
                embedding_dim=embedding.size,
                caption=f"a photo of {photo}",
                caption_source="phrase-bank",
                training_caption=caption or f"{title}, a photo of {photo}",
                quality_ok=quality_ok,
                quality={"reasons": [] if quality_ok else ["too blurry"]},
                analysed_at=timezone.now(),
            ),
        )
        return asset

    return make


@pytest.fixture(scope="module")
def one_torch_thread():
    """Two torch threads contend on a 2-core machine: tiny training runs several times slower. Module scope,
    so that a module's runs (compared with each other for exact resume) all use the same thread count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- training: a WebDataset shard of real photos (tests/test_training_*.py) -------------------------

SHARD_PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "motorcycle", "hubble"]


def small_photo_bytes(name: str) -> bytes:
    """A real photo as a JPEG of at most 128 px a side: tiny training runs encode it quickly."""
    image = load_photo(name)
    image.thumbnail((128, 128))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def write_shard(path: Path, names=SHARD_PHOTOS, *, skip_caption: str | None = None) -> Path:
    """A WebDataset shard: `<name>.jpg`, its caption `<name>.txt` ("a photo of <name>") and `<name>.json`."""
    import json
    import tarfile

    def add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))

    with tarfile.open(path, "w") as tar:
        for name in names:
            add(tar, f"{name}.jpg", small_photo_bytes(name))
            if name != skip_caption:
                add(tar, f"{name}.txt", f"a photo of {name}".encode())
            add(tar, f"{name}.json", json.dumps({"creator": f"creator-{len(name) % 2}"}).encode())
    return path


@pytest.fixture(scope="session")
def shard(tmp_path_factory) -> Path:
    return write_shard(tmp_path_factory.mktemp("data") / "pack-000000.tar")


@pytest.fixture(scope="session")
def demo_base_model_folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("demo-models") / "tiny-sd"


@pytest.fixture(scope="session")
def tiny_base(demo_base_model_folder) -> Path:
    """The tiny Stable Diffusion pipeline, built once per test run; the demo run's base model as well."""
    from training.engine.tiny import build_tiny_pipeline

    return build_tiny_pipeline(demo_base_model_folder)


@pytest.fixture(autouse=True)
def demo_base_model_setting(settings, demo_base_model_folder):
    """seed_demo builds the demo run's tiny Stable Diffusion here (once per test run), not in the repo's var/."""
    settings.TRAINING_DEMO_BASE_MODEL = demo_base_model_folder


def pytest_unconfigure(config):
    """Skipped browser tests are easy to miss among the dots: the run's last line says so, and how to fix it
    (after pytest's own summary, which its terminal reporter writes when the session finishes)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    reasons = [
        report.longrepr[2]
        for report in reporter.stats.get("skipped", [])
        if isinstance(report.longrepr, tuple) and "browser tests skipped" in report.longrepr[2]
    ]
    if reasons:
        why = reasons[0].split("browser tests skipped: ", 1)[-1].split(" (set REQUIRE_BROWSER", 1)[0]
        reporter.write_sep(
            "!",
            f"{len(reasons)} BROWSER TESTS WERE SKIPPED ({why}). To run them, install Debian's Chromium "
            "(`sudo apt-get install -y chromium`) and run `make test` again",
            red=True,
            bold=True,
        )
