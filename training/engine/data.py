"""Training data: a pack's WebDataset tar shards or its Hugging Face imagefolder zip, read into samples."""

from __future__ import annotations

import json
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


class DataError(ValueError):
    """The training data cannot be used; the message names the archive and the sample."""


@dataclass(frozen=True)
class Sample:
    key: str
    image_bytes: bytes = field(repr=False)
    caption: str
    metadata: dict = field(default_factory=dict)


def read_samples(paths: list[Path]) -> list[Sample]:
    """All samples of the given archives, in archive order: WebDataset tar shards (`<key>.jpg|png|webp`,
    `<key>.txt` caption, `<key>.json` metadata) and/or imagefolder zips (`train/<file>` images and
    `train/metadata.jsonl` rows with `file_name` and `text`). A key seen twice is an error."""
    samples: list[Sample] = []
    seen: dict[str, Path] = {}
    if not paths:
        raise DataError("No training data: give at least one WebDataset shard (.tar) or imagefolder zip.")
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"Training data {path} does not exist.")
        if zipfile.is_zipfile(path):
            found = _read_imagefolder_zip(path)
        elif _is_tar(path):
            found = _read_webdataset_tar(path)
        else:
            raise DataError(f"Training data {path} is neither a WebDataset tar shard nor an imagefolder zip.")
        for sample in found:
            if sample.key in seen:
                raise DataError(f"Sample {sample.key!r} appears twice: in {seen[sample.key]} and in {path}.")
            seen[sample.key] = path
            samples.append(sample)
    if not samples:
        raise DataError(f"The training data ({', '.join(str(p) for p in paths)}) holds no samples.")
    return samples


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def _split_name(name: str) -> tuple[str, str]:
    """WebDataset's convention: the key is the path up to the first dot of the file name."""
    posix = PurePosixPath(name)
    stem, _, extension = posix.name.partition(".")
    key = str(posix.parent / stem) if str(posix.parent) != "." else stem
    return key, extension.lower()


def _read_webdataset_tar(path: Path) -> list[Sample]:
    groups: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(path, "r:*") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                key, extension = _split_name(member.name)
                if not key or key.startswith("__") or not extension:
                    continue
                handle = archive.extractfile(member)
                if handle is None:
                    continue
                groups.setdefault(key, {})[extension] = handle.read()
    except (tarfile.TarError, OSError, EOFError) as error:
        raise DataError(f"Cannot read the WebDataset shard {path}: {error}") from error
    samples = []
    for key, parts in groups.items():
        images = [ext for ext in IMAGE_EXTENSIONS if ext in parts]
        if not images:
            raise DataError(f"Sample {key!r} in {path} has no image (.jpg, .png or .webp).")
        if "txt" not in parts:
            raise DataError(f"Sample {key!r} in {path} has no caption ({key}.txt).")
        try:
            caption = parts["txt"].decode("utf-8").strip()
            metadata = json.loads(parts["json"]) if "json" in parts else {}
        except (UnicodeDecodeError, ValueError) as error:
            raise DataError(f"Sample {key!r} in {path} has an unreadable caption or metadata: {error}") from error
        samples.append(Sample(key=key, image_bytes=parts[images[0]], caption=caption, metadata=metadata))
    return samples


def _read_imagefolder_zip(path: Path) -> list[Sample]:
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            metadata_names = sorted(name for name in names if PurePosixPath(name).name == "metadata.jsonl")
            if not metadata_names:
                raise DataError(f"The imagefolder zip {path} has no metadata.jsonl (file_name and text per image).")
            samples = []
            listed: set[str] = set()
            for metadata_name in metadata_names:
                folder = PurePosixPath(metadata_name).parent
                lines = archive.read(metadata_name).decode("utf-8").splitlines()
                for number, line in enumerate(lines, start=1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except ValueError as error:
                        raise DataError(f"{path}: {metadata_name} line {number} is not JSON: {error}") from error
                    file_name = row.pop("file_name", None)
                    if not file_name:
                        raise DataError(f"{path}: {metadata_name} line {number} has no file_name.")
                    member = str(folder / file_name)
                    caption = row.pop("text", None)
                    if caption is None:
                        caption = row.pop("caption", None)
                    if caption is None:
                        raise DataError(f"Sample {file_name!r} in {path} has no caption (no text in {metadata_name}).")
                    if member not in names:
                        raise DataError(f"{path}: {metadata_name} names {file_name!r}, which is not in the zip.")
                    listed.add(member)
                    key = PurePosixPath(file_name).name.partition(".")[0]
                    samples.append(
                        Sample(key=key, image_bytes=archive.read(member), caption=str(caption).strip(), metadata=row)
                    )
            for name in sorted(names - listed):
                folder = str(PurePosixPath(name).parent)
                if _split_name(name)[1] in IMAGE_EXTENSIONS and any(
                    str(PurePosixPath(m).parent) == folder for m in metadata_names
                ):
                    raise DataError(f"Image {name!r} in {path} has no caption (not listed in metadata.jsonl).")
            return samples
    except (zipfile.BadZipFile, OSError, EOFError, UnicodeDecodeError) as error:
        raise DataError(f"Cannot read the imagefolder zip {path}: {error}") from error


# --- aspect-ratio buckets ------------------------------------------------------------------------

BUCKET_RATIOS = (1 / 2, 9 / 16, 2 / 3, 3 / 4, 4 / 5, 1, 5 / 4, 4 / 3, 3 / 2, 16 / 9, 2)  # width / height


def bucket_multiple(resolution: int) -> int:
    """Bucket sides are multiples of 64 px (8 for tiny resolutions, under 256 px)."""
    return 64 if resolution >= 256 else 8


def bucket_sizes(resolution: int, multiple: int | None = None) -> list[tuple[int, int]]:
    """A few (width, height) buckets of about resolution² pixels, each side a multiple of `multiple`."""
    multiple = multiple or bucket_multiple(resolution)
    sizes = []
    for ratio in BUCKET_RATIOS:
        width = max(multiple, round(resolution * ratio**0.5 / multiple) * multiple)
        height = max(multiple, round(resolution / ratio**0.5 / multiple) * multiple)
        if (width, height) not in sizes:
            sizes.append((width, height))
    return sizes


def nearest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest (in log ratio) to the image's."""
    import math

    ratio = math.log(width / height)
    return min(buckets, key=lambda size: (abs(math.log(size[0] / size[1]) - ratio), size))
