"""Pack downloads: WebDataset shards and the imagefolder zip, built once per version by a Celery task.

Versions are frozen here directly from eligible assets by `services.freeze_version` (not through
publishing's selection), so that these tests read back what a buyer would download.
"""

import hashlib
import io
import json
import tarfile
import zipfile
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.files.storage import default_storage
from django.urls import reverse
from django.utils import timezone

from marketplace.core.storage import AtomicFileSystemStorage
from marketplace.packs import exports, services, tasks
from marketplace.packs.datasheet import render_markdown
from marketplace.packs.manifest import canonical_bytes
from marketplace.packs.models import Pack, PackExport, PackItem, PackVersion

DATASHEET = {
    "title": "Street life v1",
    "sections": [{"heading": "Motivation", "text": "Everyday scenes for **text-to-image** models."}],
    "stats": {"items": 3},
}
CAPTIONS = ["an astronaut in a white suit", "a rocket on its launch pad", "café crème, latte art — coffee"]


def publish(staff, assets, *, slug="street-life", number=1) -> PackVersion:
    """A published version of these assets, frozen as the publish service freezes one (fixed terms and
    datasheet, published three days ago)."""
    pack, _ = Pack.objects.get_or_create(slug=slug, defaults={"title": "Street life", "price_cents": 4900})
    return services.freeze_version(
        pack,
        number=number,
        published_at=timezone.now().replace(microsecond=0) - timedelta(days=3),
        items=services.items_for(assets),
        actor=staff,
        terms={"use": "commercial", "summary": "Train and sell models; do not redistribute the images."},
        datasheet=DATASHEET,
    )


@pytest.fixture
def version(make_eligible_asset, alice, bob, staff) -> PackVersion:
    assets = [
        make_eligible_asset(alice, "astronaut", caption=CAPTIONS[0]),
        make_eligible_asset(alice, "rocket", caption=CAPTIONS[1]),
        make_eligible_asset(bob, "coffee", title="Café crème", caption=CAPTIONS[2]),
    ]
    return publish(staff, assets)


@pytest.fixture
def built(version, django_capture_on_commit_callbacks):
    """Both downloads of the version, built by their queued tasks."""
    with django_capture_on_commit_callbacks(execute=True):
        exports.ensure_exports(version)
    return {export.kind: export for export in version.exports.all()}


def stored(export: PackExport) -> dict[str, bytes]:
    return {entry["name"]: default_storage.open(entry["path"], "rb").read() for entry in export.files}


def delivery_bytes(item: PackItem) -> bytes:
    return default_storage.open(item.file_name, "rb").read()


def export_files_in_storage(media_root: Path) -> list[Path]:
    folder = media_root / "exports"
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# --- WebDataset ---------------------------------------------------------------------------------


def test_webdataset_shards_hold_every_image_byte_for_byte_with_caption_and_metadata(version, built):
    export = built[PackExport.Kind.WEBDATASET]
    assert export.status == PackExport.Status.READY and export.error == ""
    assert export.done_items == export.total_items == 3 and export.progress == 1.0
    assert [entry["name"] for entry in export.files] == [
        "street-life-v1-000000.tar",
        "manifest.json",
        "DATASHEET.md",
        "datasheet.json",
    ]
    files = stored(export)
    for entry in export.files:
        assert entry["path"] == f"exports/{version.pk}/webdataset/{entry['name']}"
        assert entry["bytes"] == len(files[entry["name"]])
        assert entry["sha256"] == hashlib.sha256(files[entry["name"]]).hexdigest()

    manifest = json.loads(files["manifest.json"])
    assert files["manifest.json"] == canonical_bytes(version.manifest)
    assert hashlib.sha256(files["manifest.json"]).hexdigest() == version.manifest_sha256
    assert files["DATASHEET.md"].decode() == render_markdown(DATASHEET)
    assert hashlib.sha256(files["datasheet.json"]).hexdigest() == manifest["datasheet_sha256"]

    with tarfile.open(fileobj=io.BytesIO(files["street-life-v1-000000.tar"])) as shard:
        members = shard.getmembers()
        contents = {member.name: shard.extractfile(member).read() for member in members}
    assert [member.name for member in members] == [
        f"{key}.{ext}" for key in ("000000", "000001", "000002") for ext in ("jpg", "json", "txt")
    ]
    published = int(version.published_at.timestamp())
    for member in members:
        assert (member.mtime, member.uid, member.gid, member.mode, member.uname, member.gname) == (
            published,
            0,
            0,
            0o644,
            "",
            "",
        )

    items = list(version.items.order_by("position"))
    for item, listed in zip(items, manifest["items"], strict=True):
        image = contents[f"{item.key}.jpg"]
        assert image == delivery_bytes(item)  # never recompressed
        assert hashlib.sha256(image).hexdigest() == listed["sha256"] == item.sha256
        assert contents[f"{item.key}.txt"].decode("utf-8") == listed["caption"]
        assert json.loads(contents[f"{item.key}.json"]) == {
            "key": item.key,
            "asset_id": item.asset_id,
            "title": item.title,
            "creator": listed["creator"],
            "creator_id": item.creator_id,
            "licence": "mkt-ai-commercial-1.0",
            "sha256": item.sha256,
            "bytes": len(image),
            "width": item.width,
            "height": item.height,
            "format": "JPEG",
            "pack": "street-life",
            "version": 1,
            "manifest_sha256": version.manifest_sha256,
        }
    assert contents["000002.txt"].decode("utf-8") == "café crème, latte art — coffee"
    assert [listed["creator"] for listed in manifest["items"]] == ["alice", "alice", "bob"]


def test_a_rebuild_is_byte_identical_and_replaces_what_a_crashed_build_left(version, built, media_root):
    export = built[PackExport.Kind.WEBDATASET]
    first = stored(export)
    # A worker died after saving a shard: the row went back to waiting, a file and a temporary file remain.
    PackExport.objects.filter(pk=export.pk).update(status=PackExport.Status.PENDING, files=[])
    default_storage.save(f"exports/{version.pk}/webdataset/.partial-leftover", io.BytesIO(b"half a shard"))

    assert exports.build_export(export.pk) == exports.Outcome.BUILT

    export.refresh_from_db()
    assert export.status == PackExport.Status.READY
    assert stored(export) == first
    assert [entry["path"] for entry in export.files] == [entry["path"] for entry in built["webdataset"].files]
    names = {p.name for p in export_files_in_storage(media_root) if "webdataset" in p.parts}
    assert names == set(first)


@pytest.mark.parametrize("max_items, expected", [(2, [2, 1]), (1, [1, 1, 1]), (10, [3])])
def test_shards_split_at_the_item_limit(version, settings, django_capture_on_commit_callbacks, max_items, expected):
    settings.PACK_SHARD_MAX_ITEMS = max_items
    with django_capture_on_commit_callbacks(execute=True):
        exports.ensure_exports(version)
    export = version.exports.get(kind=PackExport.Kind.WEBDATASET)
    shards = [name for name in stored(export) if name.endswith(".tar")]
    assert shards == [f"street-life-v1-{index:06d}.tar" for index in range(len(expected))]
    keys_per_shard = []
    for name in shards:
        with tarfile.open(fileobj=io.BytesIO(stored(export)[name])) as shard:
            keys_per_shard.append(sorted({member.name.split(".")[0] for member in shard.getmembers()}))
    assert [len(keys) for keys in keys_per_shard] == expected
    assert sum(keys_per_shard, []) == ["000000", "000001", "000002"]  # sample order kept across shards


def test_shards_split_at_the_byte_limit(version, settings, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        exports.ensure_exports(version)
    whole = version.exports.get(kind=PackExport.Kind.WEBDATASET).files[0]["bytes"]
    # One byte short of the single shard: the last sample has to move to a second shard.
    settings.PACK_SHARD_MAX_BYTES = whole - 1
    other = publish(version.published_by, [item.asset for item in version.items.all()], slug="split", number=1)
    with django_capture_on_commit_callbacks(execute=True):
        exports.ensure_exports(other)
    export = other.exports.get(kind=PackExport.Kind.WEBDATASET)
    shards = [entry for entry in export.files if entry["name"].endswith(".tar")]
    assert [entry["name"] for entry in shards] == ["split-v1-000000.tar", "split-v1-000001.tar"]
    assert all(entry["bytes"] <= whole - 1 for entry in shards)
    with tarfile.open(fileobj=io.BytesIO(stored(export)["split-v1-000001.tar"])) as shard:
        assert shard.getnames() == ["000002.jpg", "000002.json", "000002.txt"]


def test_a_sample_larger_than_the_byte_limit_gets_a_shard_of_its_own(version, settings, built):
    settings.PACK_SHARD_MAX_BYTES = 1024
    export = built[PackExport.Kind.WEBDATASET]
    PackExport.objects.filter(pk=export.pk).update(status=PackExport.Status.PENDING)
    exports.build_export(export.pk)
    export.refresh_from_db()
    assert [entry["name"] for entry in export.files if entry["name"].endswith(".tar")] == [
        "street-life-v1-000000.tar",
        "street-life-v1-000001.tar",
        "street-life-v1-000002.tar",
    ]


# --- imagefolder --------------------------------------------------------------------------------


def test_imagefolder_zip_has_the_hugging_face_layout(version, built):
    export = built[PackExport.Kind.IMAGEFOLDER]
    assert export.status == PackExport.Status.READY
    assert export.done_items == export.total_items == 3
    assert [entry["name"] for entry in export.files] == ["street-life-v1.zip"]
    data = stored(export)["street-life-v1.zip"]
    assert export.files[0]["sha256"] == hashlib.sha256(data).hexdigest()
    assert export.files[0]["path"] == f"exports/{version.pk}/imagefolder/street-life-v1.zip"

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None
        entries = {info.filename: info for info in archive.infolist()}
        assert set(entries) == {
            "README.md",
            "manifest.json",
            "datasheet.json",
            "train/metadata.jsonl",
            "train/000000.jpg",
            "train/000001.jpg",
            "train/000002.jpg",
        }
        items = list(version.items.order_by("position"))
        for item in items:
            info = entries[f"train/{item.key}.jpg"]
            assert info.compress_type == zipfile.ZIP_STORED  # already compressed
            assert archive.read(info) == delivery_bytes(item)
        for name in ("README.md", "manifest.json", "train/metadata.jsonl"):
            assert entries[name].compress_type == zipfile.ZIP_DEFLATED
        lines = [json.loads(line) for line in archive.read("train/metadata.jsonl").decode("utf-8").splitlines()]
        readme = archive.read("README.md").decode("utf-8")
        assert archive.read("manifest.json") == canonical_bytes(version.manifest)

    assert lines == [
        {
            "file_name": f"{item.key}.jpg",
            "text": item.training_caption,
            "asset_id": item.asset_id,
            "creator": item.creator.username,
            "licence": item.licence,
            "sha256": item.sha256,
        }
        for item in items
    ]
    assert lines[2]["text"] == "café crème, latte art — coffee"
    front_matter, body = readme.split("---\n", 2)[1:]
    assert "license: other" in front_matter
    assert "task_categories:\n- text-to-image" in front_matter
    assert "size_categories:\n- n<1K" in front_matter
    assert body == "\n" + render_markdown(DATASHEET)


def test_the_zip_rebuilds_byte_identical(built):
    export = built[PackExport.Kind.IMAGEFOLDER]
    first = stored(export)
    PackExport.objects.filter(pk=export.pk).update(status=PackExport.Status.PENDING)
    exports.build_export(export.pk)
    export.refresh_from_db()
    assert stored(export) == first


# --- integrity --------------------------------------------------------------------------------


def test_a_tampered_delivery_file_fails_the_export_naming_the_item(
    version, media_root, django_capture_on_commit_callbacks
):
    item = version.items.get(position=1)
    original = delivery_bytes(item)
    tampered = bytearray(original)
    tampered[len(tampered) // 2] ^= 0xFF  # same size, one byte changed
    (media_root / item.file_name).write_bytes(bytes(tampered))

    with django_capture_on_commit_callbacks(execute=True):
        exports.ensure_exports(version)

    for export in version.exports.all():
        assert export.status == PackExport.Status.FAILED
        assert export.files == []
        assert f"Item 000001 (asset {item.asset_id}, “rocket by alice”)" in export.error
        assert "does not match the published SHA-256" in export.error
        with pytest.raises(exports.ExportFileNotFound):
            exports.export_file(export, "manifest.json")
    assert export_files_in_storage(media_root) == []

    # Once the file is put right, staff retry and the downloads are built.
    (media_root / item.file_name).write_bytes(original)
    for export in version.exports.all():
        with django_capture_on_commit_callbacks(execute=True):
            exports.retry_export(export)
        export.refresh_from_db()
        assert export.status == PackExport.Status.READY and export.error == ""


def test_a_missing_or_resized_delivery_file_fails_the_export(version, media_root, django_capture_on_commit_callbacks):
    first, last = version.items.get(position=0), version.items.get(position=2)
    (media_root / first.file_name).write_bytes(delivery_bytes(first) + b"extra")
    (media_root / last.file_name).unlink()
    with django_capture_on_commit_callbacks(execute=True):
        exports.ensure_exports(version)
    for export in version.exports.all():
        assert export.status == PackExport.Status.FAILED
        assert export.error == (
            f"Item 000000 (asset {first.asset_id}, “astronaut by alice”): its delivery file is "
            f"{first.byte_size + 5} bytes, but the published item has {first.byte_size}; "
            "the file changed after publication."
        )
    assert export_files_in_storage(media_root) == []

    (media_root / first.file_name).write_bytes(delivery_bytes(first)[: -len(b"extra")])
    export = version.exports.get(kind=PackExport.Kind.WEBDATASET)
    with django_capture_on_commit_callbacks(execute=True):
        exports.retry_export(export)
    export.refresh_from_db()
    assert export.status == PackExport.Status.FAILED
    assert f"Item 000002 (asset {last.asset_id}" in export.error and "missing" in export.error


# --- the task: idempotency, claims, retries -------------------------------------------------------


def test_progress_is_recorded_as_the_build_goes(version, monkeypatch, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks():
        export = exports.ensure_exports(version)[0]
    monkeypatch.setattr(exports, "PROGRESS_EVERY_SECONDS", 0)
    seen = []
    record = exports._Progress.__call__

    def recorded(progress, done, **kwargs):
        record(progress, done, **kwargs)
        seen.append(PackExport.objects.values_list("done_items", "total_items").get(pk=export.pk))

    monkeypatch.setattr(exports._Progress, "__call__", recorded)
    exports.build_export(export.pk)
    assert seen[:3] == [(1, 3), (2, 3), (3, 3)]
    export.refresh_from_db()
    assert (export.done_items, export.total_items, export.progress) == (3, 3, 1.0)


def test_ensure_exports_is_idempotent(version, built, media_root, django_capture_on_commit_callbacks):
    files = {p: p.stat().st_mtime_ns for p in export_files_in_storage(media_root)}
    with django_capture_on_commit_callbacks() as queued:
        again = exports.ensure_exports(version)
    assert queued == []  # nothing to build
    assert sorted(export.pk for export in again) == sorted(export.pk for export in built.values())
    assert PackExport.objects.count() == 2

    for export in built.values():
        assert tasks.build_export.apply(args=[export.pk]).get() == "already ready"
    assert {p: p.stat().st_mtime_ns for p in export_files_in_storage(media_root)} == files


def test_ensure_exports_queues_the_builds_only_once_committed(version, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as queued:
        created = exports.ensure_exports(version)
        assert [export.status for export in created] == [PackExport.Status.PENDING] * 2
        assert all(export.total_items == 3 for export in created)
    assert len(queued) == 2
    assert PackExport.objects.filter(status=PackExport.Status.PENDING).count() == 2


def test_two_workers_cannot_build_the_same_export(version, media_root, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks():
        export = exports.ensure_exports(version)[0]
    claimed, _ = exports.claim_export(export.pk)  # a first worker is building it
    assert claimed.status == PackExport.Status.BUILDING

    assert tasks.build_export.apply(args=[export.pk]).get() == "busy"
    export.refresh_from_db()
    assert export.status == PackExport.Status.BUILDING and export.started_at == claimed.started_at
    assert export_files_in_storage(media_root) == []

    # That worker died: once its claim is stale, the next task takes the build over.
    stale = timezone.now() - exports.STALE_AFTER - timedelta(seconds=1)
    PackExport.objects.filter(pk=export.pk).update(updated_at=stale)
    assert tasks.build_export.apply(args=[export.pk]).get() == "built"
    export.refresh_from_db()
    assert export.status == PackExport.Status.READY and export.done_items == 3


def test_a_builder_that_lost_its_claim_saves_nothing(
    version, media_root, monkeypatch, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks():
        export = exports.ensure_exports(version)[0]
    monkeypatch.setattr(exports, "PROGRESS_EVERY_SECONDS", 0)
    writer = exports.write_webdataset_shards

    def slow_writer(*args, **kwargs):
        # While this worker writes, its claim goes stale and another worker takes the build over.
        later = timezone.now() + timedelta(hours=1)
        PackExport.objects.filter(pk=export.pk).update(started_at=later, updated_at=later)
        return writer(*args, **kwargs)

    monkeypatch.setattr(exports, "write_webdataset_shards", slow_writer)
    assert exports.build_export(export.pk) == exports.Outcome.CLAIM_LOST
    export.refresh_from_db()
    assert export.status == PackExport.Status.BUILDING  # still the other worker's
    assert export_files_in_storage(media_root) == []


def test_transient_errors_are_retried_then_the_export_fails(
    version, media_root, monkeypatch, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks():
        export = exports.ensure_exports(version)[0]
    attempts = []
    real_save = AtomicFileSystemStorage.save

    def storage_down(storage, name, content, **kwargs):
        if name.endswith("manifest.json"):  # the shard was saved already: it must not stay behind
            attempts.append(name)
            raise ConnectionError("storage unreachable")
        return real_save(storage, name, content, **kwargs)

    monkeypatch.setattr(AtomicFileSystemStorage, "save", storage_down)
    monkeypatch.setitem(tasks.build_export.app.conf, "task_eager_propagates", False)
    result = tasks.build_export.apply(args=[export.pk])
    assert isinstance(result.result, ConnectionError)
    assert len(attempts) == tasks.MAX_RETRIES + 1
    export.refresh_from_db()
    assert export.status == PackExport.Status.FAILED
    assert export.error == (
        "Building kept failing (ConnectionError: storage unreachable); retry the export to try again."
    )
    assert export.files == [] and export_files_in_storage(media_root) == []

    monkeypatch.undo()
    with django_capture_on_commit_callbacks(execute=True):
        exports.retry_export(export)
    export.refresh_from_db()
    assert export.status == PackExport.Status.READY


def test_a_transient_error_that_clears_up_ends_ready(version, monkeypatch, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks():
        export = exports.ensure_exports(version)[1]
    real_save, failures = AtomicFileSystemStorage.save, [ConnectionError("blip")]

    def flaky(storage, name, content, **kwargs):
        if failures:
            raise failures.pop()
        return real_save(storage, name, content, **kwargs)

    monkeypatch.setattr(AtomicFileSystemStorage, "save", flaky)
    monkeypatch.setitem(tasks.build_export.app.conf, "task_eager_propagates", False)
    assert tasks.build_export.apply(args=[export.pk]).get() == "built"
    export.refresh_from_db()
    assert export.status == PackExport.Status.READY and export.error == ""


def test_retry_export_refuses_ready_and_live_builds(built, version):
    ready = built[PackExport.Kind.WEBDATASET]
    with pytest.raises(exports.ExportError, match="is ready: there is nothing to retry"):
        exports.retry_export(ready)
    building = built[PackExport.Kind.IMAGEFOLDER]
    PackExport.objects.filter(pk=building.pk).update(status=PackExport.Status.BUILDING, updated_at=timezone.now())
    with pytest.raises(exports.ExportError, match="being built right now"):
        exports.retry_export(building)
    ready.refresh_from_db()
    assert ready.status == PackExport.Status.READY


# --- serving --------------------------------------------------------------------------------


def test_export_file_serves_only_the_listed_files(built, version):
    export = built[PackExport.Kind.WEBDATASET]
    with default_storage.open(exports.export_file(export, "manifest.json")["path"], "rb") as handle:
        assert hashlib.sha256(handle.read()).hexdigest() == version.manifest_sha256
    assert exports.export_file(export, "DATASHEET.md")["bytes"] == len(render_markdown(DATASHEET).encode())
    for name in ("nope.tar", "../imagefolder/street-life-v1.zip", f"exports/{version.pk}/webdataset/manifest.json"):
        with pytest.raises(exports.ExportFileNotFound, match="no file named"):
            exports.export_file(export, name)

    PackExport.objects.filter(pk=export.pk).update(status=PackExport.Status.BUILDING)
    export.refresh_from_db()
    with pytest.raises(exports.ExportFileNotFound, match="not ready yet"):
        exports.export_file(export, "manifest.json")


# --- the shard writer on its own ------------------------------------------------------------


def plain_samples(folder: Path, count: int) -> list[exports.Sample]:
    samples = []
    for index in range(count):
        data = hashlib.sha256(str(index).encode()).digest() * (100 + 37 * index)  # sizes not multiples of 512
        path = folder / f"image-{index}.jpg"
        path.write_bytes(data)
        samples.append(
            exports.Sample(
                key=f"{index:06d}",
                extension="jpg",
                source=path,
                sha256=hashlib.sha256(data).hexdigest(),
                byte_size=len(data),
                caption=f"caption {index}",
                metadata={"key": f"{index:06d}"},
            )
        )
    return samples


def write(samples, folder, **options):
    options = {"shard_prefix": "p-v1", "max_bytes": 10**9, "max_items": 1000, "mtime": 1_700_000_000, **options}
    return exports.write_webdataset_shards(samples, folder, **options)


def test_streamed_sources_give_the_same_shards_as_local_files(tmp_path):
    samples = plain_samples(tmp_path, 5)
    streamed = [
        exports.Sample(**{**vars(sample), "source": lambda path=sample.source: open(path, "rb")}) for sample in samples
    ]
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    progress = []
    local = write(samples, tmp_path / "a", max_items=2, on_progress=progress.append)
    remote = write(streamed, tmp_path / "b", max_items=2, workers=1)
    assert progress == [1, 2, 3, 4, 5]
    assert [p.name for p in local] == ["p-v1-000000.tar", "p-v1-000001.tar", "p-v1-000002.tar"]
    assert [p.read_bytes() for p in local] == [p.read_bytes() for p in remote]
    for path in local:
        assert path.stat().st_size % tarfile.RECORDSIZE == 0


def test_a_streamed_source_of_the_wrong_length_leaves_no_shard(tmp_path):
    samples = plain_samples(tmp_path, 3)
    short = exports.Sample(**{**vars(samples[1]), "source": lambda: io.BytesIO(b"too short")})
    (tmp_path / "out").mkdir()
    with pytest.raises(exports.ItemIntegrityError, match="Item 000001: its delivery file is shorter"):
        write([samples[0], short, samples[2]], tmp_path / "out", max_items=1)
    assert list((tmp_path / "out").iterdir()) == []


def test_trusting_storage_copies_the_same_bytes_and_still_checks_sizes(tmp_path):
    """PACK_EXPORT_VERIFY off: the kernel copies the files (no hashing), the shards are the same bytes,
    a resized file still fails; a same-size alteration is what verification is for, and passes here."""
    samples = plain_samples(tmp_path, 5)
    (tmp_path / "checked").mkdir(), (tmp_path / "trusted").mkdir(), (tmp_path / "resized").mkdir()
    checked = write(samples, tmp_path / "checked", max_items=2)
    trusted = write(samples, tmp_path / "trusted", max_items=2, verify=False)
    assert [p.read_bytes() for p in checked] == [p.read_bytes() for p in trusted]

    samples[3].source.write_bytes(samples[3].source.read_bytes() + b"!")
    with pytest.raises(exports.ItemIntegrityError, match="Item 000003: its delivery file is .* bytes"):
        write(samples, tmp_path / "resized", verify=False)
    assert list((tmp_path / "resized").iterdir()) == []

    columns = {"asset_id": 1, "creator": "alice", "licence": "cc0-1.0", "sha256": ""}
    zip_samples = [exports.Sample(**{**vars(sample), "metadata": columns}) for sample in samples[:3]]
    zipped = exports.write_imagefolder_zip(
        zip_samples, tmp_path / "p.zip", date_time=(2026, 1, 1, 0, 0, 0), top_files=[], verify=False
    )
    with zipfile.ZipFile(zipped) as archive:
        assert archive.read("train/000001.jpg") == samples[1].source.read_bytes()


def test_staff_see_each_downloads_state_and_build_a_failed_one_again(
    version, media_root, staff, carol, client, django_capture_on_commit_callbacks
):
    item = version.items.get(position=1)
    original = delivery_bytes(item)
    (media_root / item.file_name).write_bytes(original[:-10])
    with django_capture_on_commit_callbacks(execute=True):
        exports.ensure_exports(version)
    webdataset = version.exports.get(kind=PackExport.Kind.WEBDATASET)
    rebuild = reverse("packs:staff-export-rebuild", args=[version.pack_id, webdataset.pk])

    client.force_login(carol)
    assert client.post(rebuild).status_code == 403 and not PackExport.objects.filter(status="ready").exists()

    client.force_login(staff)
    page = client.get(reverse("packs:staff-edit", args=[version.pack_id])).content.decode()
    assert page.count(">Failed<") == 2 and "Item 000001" in page and rebuild in page
    (media_root / item.file_name).write_bytes(original)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(rebuild)
    assert response.status_code == 302
    webdataset.refresh_from_db()
    assert webdataset.status == PackExport.Status.READY
    page = client.get(reverse("packs:staff-edit", args=[version.pack_id])).content.decode()
    assert ">Ready<" in page and page.count("Build again") == 1  # the zip still waits for its own rebuild
