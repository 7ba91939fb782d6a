"""Downloads of a published pack version: WebDataset tar shards and a Hugging Face imagefolder zip.

The first half writes the archives from plain files and knows nothing of Django, so that
bench/export.py can time it alone. The second half builds a PackExport: one worker claims the row,
writes the files to a scratch folder on local disk, saves them into storage under
exports/<version_id>/<kind>/ and only then marks the export ready.

Every image is copied byte for byte from its location-free delivery copy and hashed on the way: a
file that no longer matches the SHA-256 the manifest promises fails the export, naming the item.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import shutil
import stat
import tarfile
import tempfile
import time
import zipfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass
from datetime import UTC, timedelta
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import BinaryIO

from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from marketplace.core.storage import local_path_or_none
from marketplace.packs.datasheet import render_markdown
from marketplace.packs.manifest import canonical_bytes
from marketplace.packs.models import PackExport, PackItem, PackVersion

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
TAR_BLOCK = 512
TAR_RECORD = 20 * TAR_BLOCK  # tar pads an archive to whole records of 20 blocks
# How far the hashing threads run ahead of the writer: enough to keep every core busy, little memory.
READ_AHEAD_FILES = 8
READ_AHEAD_BYTES = 256 << 20
IMAGEFOLDER_COLUMNS = ("asset_id", "creator", "licence", "sha256")  # besides file_name and text


class ExportError(Exception):
    """An export that cannot be built or served as asked; retrying will not help. The message says why."""


class ItemIntegrityError(ExportError):
    """An image's delivery file is missing or no longer matches what the manifest promises."""


class ExportFileNotFound(ExportError, LookupError):
    """No file of that name in a ready export."""


# --- writing archives (Django-free) --------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One image to ship: where its bytes are, what they must hash to, its caption and its metadata.

    `source` is a local path (mapped, and hashed by a thread while the previous files are written: the
    fast path) or a callable opening a binary stream (any storage: read in 1 MiB chunks through the hash).
    """

    key: str
    extension: str
    source: str | os.PathLike | Callable[[], BinaryIO]
    sha256: str
    byte_size: int
    caption: str
    metadata: dict
    label: str = ""

    @property
    def file_name(self) -> str:
        return f"{self.key}.{self.extension}"

    @property
    def described(self) -> str:
        return self.label or f"Item {self.key}"


class _Payload:
    """A sample's bytes on their way into an archive, hashed as they are copied: one read of the file.

    A local file is mapped and hashed by a pool thread ahead of the writer, then written from the same
    mapping once it proved right; a stream is hashed chunk by chunk as it is written.
    """

    def __init__(self, sample: Sample, pool: ThreadPoolExecutor, *, verify: bool = True):
        self.sample = sample
        self.verify = verify
        self._mapping: mmap.mmap | None = None
        local = not callable(sample.source)
        self._digest: Future | None = pool.submit(self._map_and_hash) if local and verify else None

    def _map_and_hash(self) -> str:
        sample = self.sample
        try:
            with open(sample.source, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if size != sample.byte_size:
                    raise ItemIntegrityError(
                        f"{sample.described}: its delivery file is {size} bytes, but the published item has "
                        f"{sample.byte_size}; the file changed after publication."
                    )
                if not size:
                    return hashlib.sha256(b"").hexdigest()
                flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)  # fault the pages in at once
                self._mapping = mmap.mmap(handle.fileno(), 0, flags=flags, prot=mmap.PROT_READ)
        except FileNotFoundError as error:
            raise ItemIntegrityError(f"{sample.described}: its delivery file is missing ({error.filename}).") from error
        return hashlib.sha256(self._mapping).hexdigest()  # releases the GIL: threads hash side by side

    def write_to(self, out) -> None:
        """Write exactly the published bytes, or raise ItemIntegrityError if they do not hash to the published
        SHA-256 (a mapped file is checked before anything is written; a stream as it ends)."""
        if not self.verify and not callable(self.sample.source):
            self._copy_unverified(out)
            return
        if self._digest is None:
            digest = self._stream_to(out)
        else:
            digest = self._digest.result()
            if digest == self.sample.sha256 and self._mapping is not None:
                out.write(self._mapping)
        if digest != self.sample.sha256:
            raise ItemIntegrityError(
                f"{self.sample.described}: its delivery file does not match the published SHA-256 "
                f"(expected {self.sample.sha256}, read {digest}); the file changed after publication."
            )

    def _copy_unverified(self, out) -> None:
        """Trusting storage (PACK_EXPORT_VERIFY off): only the size is checked, and the kernel copies the bytes."""
        sample = self.sample
        try:
            source = open(sample.source, "rb")  # noqa: SIM115  (closed below)
        except FileNotFoundError as error:
            raise ItemIntegrityError(f"{sample.described}: its delivery file is missing ({error.filename}).") from error
        with source:
            size = os.fstat(source.fileno()).st_size
            if size != sample.byte_size:
                raise ItemIntegrityError(
                    f"{sample.described}: its delivery file is {size} bytes, but the published item has "
                    f"{sample.byte_size}; the file changed after publication."
                )
            try:
                target = out.fileno()
            except (AttributeError, OSError):  # a zip member: no file descriptor of its own
                shutil.copyfileobj(source, out, CHUNK_BYTES)
                return
            out.flush()
            offset = 0
            while offset < size:
                sent = os.sendfile(target, source.fileno(), offset, size - offset)
                if sent == 0:
                    raise ItemIntegrityError(f"{sample.described}: its delivery file ended early.")
                offset += sent
            out.seek(0, os.SEEK_END)  # the buffered writer learns where the descriptor now is

    def _stream_to(self, out) -> str:
        hasher, copied = hashlib.sha256(), 0
        try:
            with self.sample.source() as stream:
                while chunk := stream.read(CHUNK_BYTES):
                    copied += len(chunk)
                    if copied > self.sample.byte_size:
                        break
                    hasher.update(chunk)
                    out.write(chunk)
        except FileNotFoundError as error:
            raise ItemIntegrityError(f"{self.sample.described}: its delivery file is missing.") from error
        if copied != self.sample.byte_size:
            relation = "longer" if copied > self.sample.byte_size else "shorter"
            raise ItemIntegrityError(
                f"{self.sample.described}: its delivery file is {relation} than the published "
                f"{self.sample.byte_size} bytes; the file changed after publication."
            )
        return hasher.hexdigest()

    def close(self) -> None:
        # A mapping still being hashed cannot be closed: wait unless the hash never started.
        if self._digest is not None and not self._digest.cancel():
            wait_for([self._digest])
        if self._mapping is not None:
            self._mapping.close()
            self._mapping = None


class _VerifiedReader:
    """The samples' payloads in order, with the next few files already being hashed by other threads."""

    def __init__(self, samples: Iterable[Sample], workers: int | None, *, verify: bool = True):
        self._samples = iter(samples)
        self._verify = verify
        self._pool = ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1))
        self._pending: deque[_Payload] = deque()

    def __enter__(self) -> Iterator[_Payload]:
        return self._payloads()

    def __exit__(self, *exc_info) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        while self._pending:
            self._pending.popleft().close()

    def _payloads(self) -> Iterator[_Payload]:
        ahead_bytes = 0
        while True:
            while len(self._pending) < READ_AHEAD_FILES and (not self._pending or ahead_bytes < READ_AHEAD_BYTES):
                sample = next(self._samples, None)
                if sample is None:
                    break
                self._pending.append(_Payload(sample, self._pool, verify=self._verify))
                ahead_bytes += sample.byte_size
            if not self._pending:
                return
            payload = self._pending[0]
            yield payload
            self._pending.popleft()
            ahead_bytes -= payload.sample.byte_size
            payload.close()


def _padded(size: int) -> int:
    return -(-size // TAR_BLOCK) * TAR_BLOCK


def _tar_header(name: str, size: int, mtime: int) -> bytes:
    """A ustar header that depends only on name, size and time, so that a rebuild is byte-identical."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")


class _TarShard:
    def __init__(self, path: Path, mtime: int):
        self.path, self.mtime = path, mtime
        self.file = open(path, "wb", buffering=CHUNK_BYTES)  # noqa: SIM115  (closed by finish/abort)
        self.size = self.items = 0

    def final_size(self, extra: int = 0) -> int:
        """The shard's size once closed (end-of-archive blocks and record padding included)."""
        return -(-(self.size + extra + 2 * TAR_BLOCK) // TAR_RECORD) * TAR_RECORD

    def add(self, name: str, size: int, write: Callable[[BinaryIO], None]) -> None:
        self.file.write(_tar_header(name, size, self.mtime))
        write(self.file)
        self.file.write(bytes(_padded(size) - size))
        self.size += TAR_BLOCK + _padded(size)

    def finish(self, *, fsync: bool) -> None:
        self.file.write(bytes(self.final_size() - self.size))
        self.file.flush()
        if fsync:
            os.fsync(self.file.fileno())
        self.file.close()

    def abort(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)


def write_webdataset_shards(
    samples: Iterable[Sample],
    folder: str | os.PathLike,
    *,
    shard_prefix: str,
    max_bytes: int,
    max_items: int,
    mtime: int,
    on_progress: Callable[[int], None] | None = None,
    fsync: bool = True,
    workers: int | None = None,
    verify: bool = True,
) -> list[Path]:
    """Write the samples as WebDataset shards `<shard_prefix>-000000.tar`, ... in `folder`; returns their paths.

    Each sample is `<key>.<ext>` (the file's bytes), `<key>.json` (its metadata) and `<key>.txt` (the
    caption), in sample order. A new shard starts before a sample that would take the shard past
    `max_bytes` or `max_items` (a single sample larger than `max_bytes` gets a shard of its own). Headers
    carry `mtime`, uid/gid 0, mode 0644 and no owner names: the same samples give the same bytes.
    With `fsync`, each finished shard is flushed to disk once. On any error no shard is left behind.
    With `verify` (the default) every file is hashed and checked against its SHA-256 before it is written;
    without it only sizes are checked and the kernel copies the bytes (for storage trusted to keep them).
    """
    folder = Path(folder)
    shards: list[Path] = []
    shard: _TarShard | None = None
    done = 0
    try:
        with _VerifiedReader(samples, workers, verify=verify) as payloads:
            for payload in payloads:
                sample = payload.sample
                metadata, caption = canonical_bytes(sample.metadata), sample.caption.encode("utf-8")
                members = [
                    (sample.file_name, sample.byte_size, payload.write_to),
                    (f"{sample.key}.json", len(metadata), partial(_write_bytes, metadata)),
                    (f"{sample.key}.txt", len(caption), partial(_write_bytes, caption)),
                ]
                sample_bytes = sum(TAR_BLOCK + _padded(size) for _name, size, _write in members)
                if shard and (shard.items >= max_items or shard.final_size(sample_bytes) > max_bytes):
                    shard.finish(fsync=fsync)
                    shard = None
                if shard is None:
                    shard = _TarShard(folder / f"{shard_prefix}-{len(shards):06d}.tar", mtime)
                    shards.append(shard.path)
                for name, size, write in members:
                    shard.add(name, size, write)
                shard.items += 1
                done += 1
                if on_progress:
                    on_progress(done)
        if shard:
            shard.finish(fsync=fsync)
    except BaseException:
        if shard:
            shard.abort()
        for path in shards:
            path.unlink(missing_ok=True)
        raise
    return shards


def _write_bytes(data: bytes, out) -> None:
    out.write(data)


def _zip_entry(name: str, date_time: tuple, compress_type: int, size: int = 0) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=date_time)
    info.compress_type = compress_type
    info.create_system = 3  # Unix, whatever machine builds it: the same bytes everywhere
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    info.file_size = size
    return info


def write_imagefolder_zip(
    samples: Iterable[Sample],
    path: str | os.PathLike,
    *,
    date_time: tuple,
    top_files: list[tuple[str, bytes]],
    on_progress: Callable[[int], None] | None = None,
    workers: int | None = None,
    verify: bool = True,
) -> Path:
    """Write a zip in the Hugging Face imagefolder layout: `train/<key>.<ext>` and `train/metadata.jsonl`
    (file_name, text = caption, and the IMAGEFOLDER_COLUMNS of each sample's metadata), with `top_files`
    (name, bytes) such as README.md at the root. Images are stored as they are (already compressed),
    text is deflated; every entry carries `date_time`, so the same samples give the same bytes."""
    path = Path(path)
    lines: list[bytes] = []
    done = 0
    try:
        with zipfile.ZipFile(path, "w", allowZip64=True) as archive:
            for name, data in top_files:
                archive.writestr(_zip_entry(name, date_time, zipfile.ZIP_DEFLATED), data)
            with _VerifiedReader(samples, workers, verify=verify) as payloads:
                for payload in payloads:
                    sample = payload.sample
                    entry = _zip_entry(f"train/{sample.file_name}", date_time, zipfile.ZIP_STORED, sample.byte_size)
                    with archive.open(entry, "w") as member:
                        payload.write_to(member)
                    columns = {column: sample.metadata[column] for column in IMAGEFOLDER_COLUMNS}
                    line = {"file_name": sample.file_name, "text": sample.caption, **columns}
                    lines.append(json.dumps(line, ensure_ascii=False).encode("utf-8") + b"\n")
                    done += 1
                    if on_progress:
                        on_progress(done)
            archive.writestr(_zip_entry("train/metadata.jsonl", date_time, zipfile.ZIP_DEFLATED), b"".join(lines))
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def file_sha256(path: str | os.PathLike) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            hasher.update(chunk)
    return hasher.hexdigest()


# --- PackExport rows ------------------------------------------------------------------------------

# A build writes its progress at least this often; a BUILDING row silent for STALE_AFTER belongs
# to a worker that died, and the next task for it takes over.
PROGRESS_EVERY_SECONDS = 2.0
STALE_AFTER = timedelta(minutes=15)


class Outcome(StrEnum):
    BUILT = "built"
    ALREADY_READY = "already ready"
    BUSY = "busy"  # another worker holds a live claim
    NOT_PENDING = "not pending"  # failed (waits for retry_export) or gone
    CLAIM_LOST = "claim lost"  # our claim went stale and another worker took over


class _ClaimLost(Exception):
    pass


def export_folder(export: PackExport) -> str:
    return f"exports/{export.version_id}/{export.kind}"


def download_prefix(version: PackVersion) -> str:
    return f"{version.pack.slug}-v{version.number}"


def ensure_exports(version: PackVersion) -> list[PackExport]:
    """Both download formats of a version, creating missing rows; builds are queued once committed.

    Idempotent: a ready, building or failed export is left alone (see retry_export for failed ones).
    """
    from marketplace.packs import tasks

    exports = []
    for kind in PackExport.Kind.values:
        export, _created = PackExport.objects.get_or_create(
            version=version, kind=kind, defaults={"total_items": version.item_count}
        )
        if export.status == PackExport.Status.PENDING:
            transaction.on_commit(partial(tasks.build_export.delay, export.pk))
        exports.append(export)
    return exports


def retry_export(export: PackExport) -> PackExport:
    """Queue a failed export again (or one whose builder died). A ready or live build is refused."""
    from marketplace.packs import tasks

    with transaction.atomic():
        locked = PackExport.objects.select_for_update().get(pk=export.pk)
        if locked.status == PackExport.Status.READY:
            raise ExportError(f"The {locked.get_kind_display()} download is ready: there is nothing to retry.")
        if locked.status == PackExport.Status.BUILDING and not _is_stale(locked):
            raise ExportError(f"The {locked.get_kind_display()} download is being built right now.")
        locked.status, locked.error, locked.done_items = PackExport.Status.PENDING, "", 0
        locked.started_at = locked.finished_at = None
        locked.save()
        transaction.on_commit(partial(tasks.build_export.delay, locked.pk))
    return locked


def mark_failed(export_id: int, error: str) -> bool:
    """A waiting export that will not be retried any more: FAILED with the reason. False if not waiting."""
    now = timezone.now()
    return bool(
        PackExport.objects.filter(pk=export_id, status=PackExport.Status.PENDING).update(
            status=PackExport.Status.FAILED, error=error, finished_at=now, updated_at=now
        )
    )


def _is_stale(export: PackExport) -> bool:
    return export.updated_at < timezone.now() - STALE_AFTER


def claim_export(export_id: int) -> tuple[PackExport | None, Outcome | None]:
    """Take an export for this worker: PENDING (or BUILDING with a stale claim) becomes BUILDING.

    One conditional UPDATE, so two workers cannot both win. The claim is the `started_at` it sets;
    every later write of this build checks it, so a builder that lost its claim cannot finish.
    """
    now = timezone.now()
    stale = Q(status=PackExport.Status.BUILDING, updated_at__lt=now - STALE_AFTER)
    claimed = (
        PackExport.objects.filter(pk=export_id)
        .filter(Q(status=PackExport.Status.PENDING) | stale)
        .update(status=PackExport.Status.BUILDING, started_at=now, updated_at=now, done_items=0, finished_at=None)
    )
    export = PackExport.objects.select_related("version__pack").filter(pk=export_id).first()
    if claimed:
        return export, None
    if export is None:
        return None, Outcome.NOT_PENDING
    return None, {
        PackExport.Status.READY: Outcome.ALREADY_READY,
        PackExport.Status.BUILDING: Outcome.BUSY,
    }.get(export.status, Outcome.NOT_PENDING)


def _claimed(export: PackExport):
    return PackExport.objects.filter(pk=export.pk, status=PackExport.Status.BUILDING, started_at=export.started_at)


class _Progress:
    """Writes done_items now and then (it is also the build's heartbeat); stops a build that lost its claim."""

    def __init__(self, export: PackExport):
        self.export = export
        self.written_at = time.monotonic()

    def __call__(self, done: int, *, force: bool = False) -> None:
        if not force and time.monotonic() - self.written_at < PROGRESS_EVERY_SECONDS:
            return
        if not _claimed(self.export).update(done_items=done, updated_at=timezone.now()):
            raise _ClaimLost
        self.written_at = time.monotonic()


def build_export(export_id: int) -> Outcome:
    """Build one export's files if it is waiting for a build. Idempotent.

    Raises ItemIntegrityError (the export is then FAILED, naming the item) when an image is missing or
    altered; any other error puts the export back to waiting and propagates, for the task to retry.
    """
    export, outcome = claim_export(export_id)
    if export is None:
        return outcome
    export.total_items = export.version.item_count
    saved: list[str] = []
    try:
        _claimed(export).update(total_items=export.total_items)
        _clear_folder(export_folder(export))  # whatever a crashed attempt left behind
        # Scratch space on local disk (TMPDIR, or FILE_UPLOAD_TEMP_DIR when set): room for the largest download.
        with tempfile.TemporaryDirectory(
            prefix=f"pack-export-{export.pk}-", dir=settings.FILE_UPLOAD_TEMP_DIR
        ) as scratch:
            progress = _Progress(export)
            local_files = _write_files(export, Path(scratch), progress)
            progress(export.total_items, force=True)
            files = _save_files(export, local_files, saved)
        now = timezone.now()
        finished = _claimed(export).update(
            status=PackExport.Status.READY, files=files, error="", finished_at=now, updated_at=now
        )
        if not finished:
            raise _ClaimLost
    except _ClaimLost:
        _delete(saved)
        logger.warning("export %s: claim lost to another worker; leaving the build to it", export_id)
        return Outcome.CLAIM_LOST
    except ItemIntegrityError as error:
        _delete(saved)
        now = timezone.now()
        _claimed(export).update(status=PackExport.Status.FAILED, error=str(error), finished_at=now, updated_at=now)
        raise
    except BaseException as error:
        _delete(saved)
        _claimed(export).update(
            status=PackExport.Status.PENDING,
            error=f"Attempt failed: {type(error).__name__}: {error}",
            updated_at=timezone.now(),
        )
        raise
    logger.info("export %s built: %d files", export_id, len(files))
    return Outcome.BUILT


def _items(version: PackVersion):
    return PackItem.objects.filter(version=version).select_related("creator").order_by("position")


def _sample(item: PackItem, version: PackVersion) -> Sample:
    # Local storage: mapped and hashed in parallel; any other (S3): streamed through the hash.
    source = local_path_or_none(default_storage, item.file_name) or partial(default_storage.open, item.file_name, "rb")
    metadata = {
        "key": item.key,
        "asset_id": item.asset_id,
        "title": item.title,
        "creator": item.creator.username,
        "creator_id": item.creator_id,
        "licence": item.licence,
        "sha256": item.sha256,
        "bytes": item.byte_size,
        "width": item.width,
        "height": item.height,
        "format": item.file_format,
        "pack": version.pack.slug,
        "version": version.number,
        "manifest_sha256": version.manifest_sha256,
    }
    return Sample(
        key=item.key,
        extension=item.extension,
        source=source,
        sha256=item.sha256,
        byte_size=item.byte_size,
        caption=item.training_caption,
        metadata=metadata,
        label=f"Item {item.key} (asset {item.asset_id}, “{item.title}”)",
    )


def imagefolder_readme(version: PackVersion) -> str:
    """The datasheet with the YAML front matter a Hugging Face dataset card has."""
    count = version.item_count
    size_category = next(
        (label for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")) if count < limit),
        "100K<n<1M" if count < 1_000_000 else "n>1M",
    )
    front_matter = [
        "---",
        f"pretty_name: {json.dumps(f'{version.title} v{version.number}', ensure_ascii=False)}",
        "license: other",
        f"license_name: creator-dataset-marketplace-{version.use}",
        "task_categories:",
        "- text-to-image",
        "size_categories:",
        f"- {size_category}",
        "---",
    ]
    return "\n".join(front_matter) + "\n\n" + render_markdown(version.datasheet)


def _write_files(export: PackExport, scratch: Path, progress: _Progress) -> list[tuple[str, Path]]:
    """The export's files in scratch, as (download name, local path) in the order a buyer sees them."""
    version = export.version
    samples = [_sample(item, version) for item in _items(version)]
    prefix = download_prefix(version)
    manifest = canonical_bytes(version.manifest)
    published_at = version.published_at.astimezone(UTC)
    if export.kind == PackExport.Kind.WEBDATASET:
        shards = write_webdataset_shards(
            samples,
            scratch,
            shard_prefix=prefix,
            max_bytes=settings.PACK_SHARD_MAX_BYTES,
            max_items=settings.PACK_SHARD_MAX_ITEMS,
            mtime=int(published_at.timestamp()),
            on_progress=progress,
            fsync=False,  # scratch: storage makes the saved copy durable
            verify=settings.PACK_EXPORT_VERIFY,
        )
        extra = {
            "manifest.json": manifest,
            "DATASHEET.md": render_markdown(version.datasheet).encode("utf-8"),
            "datasheet.json": canonical_bytes(version.datasheet),
        }
        for name, data in extra.items():
            (scratch / name).write_bytes(data)
        return [(path.name, path) for path in shards] + [(name, scratch / name) for name in extra]
    zip_path = write_imagefolder_zip(
        samples,
        scratch / f"{prefix}.zip",
        date_time=published_at.timetuple()[:6],
        top_files=[
            ("README.md", imagefolder_readme(version).encode("utf-8")),
            ("manifest.json", manifest),
            ("datasheet.json", canonical_bytes(version.datasheet)),
        ],
        on_progress=progress,
        verify=settings.PACK_EXPORT_VERIFY,
    )
    return [(zip_path.name, zip_path)]


def _save_files(export: PackExport, local_files: list[tuple[str, Path]], saved: list[str]) -> list[dict]:
    """Save each local file into storage (atomic there), hashing it alongside; `saved` collects the names."""
    folder = export_folder(export)
    files = []
    with ThreadPoolExecutor(max_workers=1) as hasher:
        for name, path in local_files:
            digest = hasher.submit(file_sha256, path)
            with open(path, "rb") as handle:
                stored = default_storage.save(f"{folder}/{name}", File(handle, name=name))
            saved.append(stored)
            files.append({"name": name, "path": stored, "bytes": path.stat().st_size, "sha256": digest.result()})
            _Progress(export)(export.total_items, force=True)  # heartbeat between long uploads
    return files


def _clear_folder(folder: str) -> None:
    try:
        _dirs, names = default_storage.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return
    _delete(f"{folder}/{name}" for name in names)


def _delete(names: Iterable[str]) -> None:
    for name in names:
        try:
            default_storage.delete(name)
        except OSError:
            logger.warning("could not delete %s", name, exc_info=True)


def export_file(export: PackExport, name: str) -> dict:
    """The {name, path, bytes, sha256} entry of a ready export's file, or ExportFileNotFound."""
    if export.status != PackExport.Status.READY:
        raise ExportFileNotFound(f"The {export.get_kind_display()} download is not ready yet.")
    for entry in export.files:
        if entry["name"] == name:
            return entry
    raise ExportFileNotFound(f"This download has no file named {name!r}.")
