"""Benchmark: writing WebDataset shards of a pack against a plain copy of the same image files.

    .venv/bin/python bench/export.py [--images N] [--rounds R]

Builds N JPEGs (default 200) of 4000x3000 at quality 95 from real photographs shipped with
scikit-image, pasted as tiles of about their native resolution so the files carry real photographic
detail (about 4 MB each, as a camera's). Then, with the files in the page cache, it alternates round by
round between

  (a) ours:     marketplace.packs.exports.write_webdataset_shards, as an export build calls it: every
                image copied byte for byte into tar shards (settings.PACK_SHARD_MAX_BYTES), hashed
                with SHA-256 on the way and checked against its published digest, with the
                sample's .json and .txt members;
  (b) baseline: shutil.copyfile of every file into a fresh folder (the kernel's in-place copy),
                with no verification at all.

The first round warms up and is not counted; the figure is the median of the others, in MB/s of image
bytes. It also prints SHA-256 alone over the same bytes on every core (the check the baseline skips
bounds what any verified copy can reach), our writer with an fsync per finished shard, and our writer
fed from streams (the path for storage without local files, such as S3: 1 MiB chunks through the
hash, one file at a time). The shards are then read back with tarfile and every image compared with
its source. The target (issue): ours >= 0.7x the copy. Exit status is non-zero only on
errors (a shard that does not read back right), not on a figure below target.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import mmap
import os
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from functools import partial
from pathlib import Path

from PIL import Image
from skimage import data as skdata

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")
import django  # noqa: E402

django.setup()  # settings and the models' import; no database is touched

from django.conf import settings  # noqa: E402

from marketplace.packs.exports import Sample, write_webdataset_shards  # noqa: E402

SIZE = (4000, 3000)
ROW_HEIGHT = 500
QUALITY = 95
TARGET_RATIO = 0.7
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina", "stereo_motorcycle")


def load_tiles() -> list[Image.Image]:
    """The photos scaled once to the row height (both orientations), so each image is cheap to paste up."""
    arrays = [getattr(skdata, name)() for name in PHOTOS]
    arrays = [array[0] if isinstance(array, tuple) else array for array in arrays]  # stereo: left view
    tiles = []
    for array in arrays:
        photo = Image.fromarray(array).convert("RGB")
        tile = photo.resize((round(photo.width * ROW_HEIGHT / photo.height), ROW_HEIGHT), Image.Resampling.LANCZOS)
        tiles += [tile, tile.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    return tiles


_tiles: list[Image.Image] = []


def make_image(task: tuple[int, str]) -> tuple[str, int, str]:
    """Write one mosaic JPEG; returns its path, size and SHA-256 (the digest a pack version publishes)."""
    index, path = task
    if not _tiles:
        _tiles.extend(load_tiles())
    canvas = Image.new("RGB", SIZE)
    for row, top in enumerate(range(0, SIZE[1], ROW_HEIGHT)):
        left, k = -(index * 97 + row * 131) % 400, index * 3 + row * 5  # each image a different mosaic
        left -= 400
        while left < SIZE[0]:
            tile = _tiles[k % len(_tiles)]
            canvas.paste(tile, (left, top))
            left, k = left + tile.width, k + 1
    out = io.BytesIO()
    canvas.save(out, "JPEG", quality=QUALITY)
    Path(path).write_bytes(out.getvalue())
    return path, len(out.getvalue()), hashlib.sha256(out.getvalue()).hexdigest()


def build_samples(count: int, folder: Path) -> list[Sample]:
    tasks = [(index, str(folder / f"photo-{index:04d}.jpg")) for index in range(count)]
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        made = list(pool.map(make_image, tasks, chunksize=4))
    return [
        Sample(
            key=f"{index:06d}",
            extension="jpg",
            source=path,
            sha256=digest,
            byte_size=size,
            caption=f"a mosaic of photographs, number {index}",
            metadata={"key": f"{index:06d}", "asset_id": index, "bytes": size, "sha256": digest},
        )
        for index, (path, size, digest) in enumerate(made)
    ]


def copy_files(samples: list[Sample], out: Path) -> None:
    for sample in samples:
        shutil.copyfile(sample.source, out / Path(sample.source).name)


def write_shards(samples: list[Sample], out: Path, *, fsync: bool = False, verify: bool = True) -> list[Path]:
    return write_webdataset_shards(
        samples,
        out,
        shard_prefix="bench-v1",
        max_bytes=settings.PACK_SHARD_MAX_BYTES,
        max_items=settings.PACK_SHARD_MAX_ITEMS,
        mtime=1_700_000_000,
        fsync=fsync,
        verify=verify,
    )


def mapped_sha256(path: str) -> str:
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapping:
        return hashlib.sha256(mapping).hexdigest()


def write_shards_streamed(samples: list[Sample], out: Path) -> list[Path]:
    """The path for storage without local files (S3): 1 MiB chunks through the hash, one file at a time."""
    streamed = [dataclasses.replace(sample, source=partial(open, sample.source, "rb")) for sample in samples]
    return write_shards(streamed, out)


def hash_only(samples: list[Sample], _out: Path) -> None:
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        list(pool.map(mapped_sha256, (sample.source for sample in samples)))


def timed(run, samples: list[Sample], scratch: Path) -> float:
    out = Path(tempfile.mkdtemp(dir=scratch))
    try:
        started = time.perf_counter()
        run(samples, out)
        return time.perf_counter() - started
    finally:
        shutil.rmtree(out)


def check_shards(samples: list[Sample], scratch: Path) -> list[str]:
    """Problems with the shards as a buyer reads them back: wrong order, or bytes not the source's."""
    out = Path(tempfile.mkdtemp(dir=scratch))
    problems = []
    try:
        names = []
        for shard in write_shards(samples, out):
            with tarfile.open(shard) as archive:
                for member in archive:
                    names.append(member.name)
                    if member.name.endswith(".jpg"):
                        sample = samples[int(member.name.split(".")[0])]
                        if hashlib.sha256(archive.extractfile(member).read()).hexdigest() != sample.sha256:
                            problems.append(f"{member.name}: bytes differ from {sample.source}")
        expected = [f"{s.key}.{ext}" for s in samples for ext in ("jpg", "json", "txt")]
        if names != expected:
            problems.append("members are not in sample order")
    finally:
        shutil.rmtree(out)
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="how many 12-megapixel JPEGs (default 200)")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds, the first not counted (default 4)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="export-bench-") as tmp:
        scratch = Path(tmp)
        (scratch / "source").mkdir()
        samples = build_samples(args.images, scratch / "source")
        total = sum(sample.byte_size for sample in samples)
        for sample in samples:
            Path(sample.source).read_bytes()  # warm page cache for both contenders
        print(
            f"{len(samples)} JPEGs, {SIZE[0]}x{SIZE[1]}, quality {QUALITY}, {total / 1e6:.0f} MB "
            f"(mean {total / len(samples) / 1e6:.1f} MB); shards up to {settings.PACK_SHARD_MAX_BYTES / 1e6:.0f} MB; "
            f"{os.cpu_count()} cores; {args.rounds} rounds, the first not counted"
        )

        contenders = {
            "ours": write_shards,
            "copy": copy_files,
            "ours, trusting storage": lambda samples, out: write_shards(samples, out, verify=False),
            "ours, fsync per shard": lambda samples, out: write_shards(samples, out, fsync=True),
            "ours, streamed": write_shards_streamed,
            "sha256 only": hash_only,
        }
        seconds: dict[str, list[float]] = {name: [] for name in contenders}
        for _round in range(args.rounds):
            for name, run in contenders.items():
                seconds[name].append(timed(run, samples, scratch))
        problems = check_shards(samples, scratch)

    speed = {name: total / statistics.median(spent[1:] or spent) / 1e6 for name, spent in seconds.items()}
    notes = {
        "ours": "verified shards (.jpg/.json/.txt), as an export build writes them",
        "copy": "shutil.copyfile to a fresh folder, no verification",
        "ours, trusting storage": "PACK_EXPORT_VERIFY=false: sizes checked, the kernel copies the bytes",
        "ours, fsync per shard": "the same, each finished shard flushed to disk",
        "ours, streamed": "the same from streams (storage without local paths, e.g. S3): 1 MiB chunks",
        "sha256 only": f"hashing the same bytes on {os.cpu_count()} threads, nothing written: the ceiling",
    }
    for name, figure in speed.items():
        print(f"{name:22} {figure:7.0f} MB/s   {notes[name]}")
    ratio = speed["ours"] / speed["copy"]
    print(
        f"ratio: ours / copy = {ratio:.2f}x (target >= {TARGET_RATIO}x) -> "
        f"{'PASS' if ratio >= TARGET_RATIO else 'BELOW TARGET'}; "
        f"sha256 alone / copy = {speed['sha256 only'] / speed['copy']:.2f}x; "
        f"trusting storage / copy = {speed['ours, trusting storage'] / speed['copy']:.2f}x"
    )
    print(f"shards read back: {'; '.join(problems) or 'every image byte-identical to its source, in sample order'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
