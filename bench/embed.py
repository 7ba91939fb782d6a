"""Benchmark: images/second through the curation embedding pipeline against the bare model forward pass.

    .venv/bin/python bench/embed.py [--model ViT-B-32] [--pretrained ''] [--device auto] [--batch-size 32]
                                    [--workers 2] [--images 96] [--rounds 2] [--analyse]

Builds N JPEG previews of 1.2 to 2.8 megapixels (quality 90), mosaics of scikit-image's photographs at
their native resolution so the files carry real photographic detail. Then, in this process, it times

  (a) ours: LoadedModel.embed_images on the JPEG bytes (decoding at reduced DCT scale and preprocessing
      in DataLoader workers, the model) and storing each embedding as float16 bytes;
  (b) bare: model.encode_image alone, in the same batches, on tensors decoded and preprocessed beforehand.

Rounds alternate (a) and (b); the best round of each counts. The target (issue): ours >= 0.9x bare,
judged by CPU time on a CPU device (busy neighbours on a shared machine barely move it; wall clock is
printed too) and by wall clock on a GPU, where overlapping decoding with inference is the point.
The default model has random weights: the same FLOPs as trained ones, and no download.
--analyse also times the whole analyse_images (tags, phrase-bank caption, metadata score).
"""

from __future__ import annotations

import argparse
import io
import resource
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data as skdata

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from marketplace.curation.engine import clip

TARGET_RATIO = 0.9
SIZES = ((1280, 960), (1600, 1200), (2048, 1365))
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina")
TITLES = ("Astronaut portrait", "Tabby cat", "Cup of coffee", "Rocket launch", "", "Eye fundus")


def load_photos() -> list[Image.Image]:
    return [Image.fromarray(getattr(skdata, name)()).convert("RGB") for name in PHOTOS]


def mosaic(photos: list[Image.Image], index: int, size: tuple[int, int]) -> Image.Image:
    """Photos at native resolution, side by side in rows, starting at a different photo each time."""
    canvas = Image.new("RGB", size)
    top, k = 0, index
    while top < size[1]:
        left, row_height = 0, 0
        while left < size[0]:
            photo = photos[k % len(photos)]
            canvas.paste(photo, (left, top))
            left, row_height, k = left + photo.width, max(row_height, photo.height), k + 1
        top += row_height
    return canvas


def build_images(count: int) -> list[bytes]:
    photos = load_photos()
    images = []
    for index in range(count):
        out = io.BytesIO()
        mosaic(photos, index, SIZES[index % len(SIZES)]).save(out, "JPEG", quality=90)
        images.append(out.getvalue())
    return images


def ours(loaded: clip.LoadedModel, images: list[bytes]) -> list[bytes]:
    return [row.astype(np.float16).tobytes() for row in loaded.embed_images(images)]


def ready_batches(loaded: clip.LoadedModel, images: list[bytes]) -> list:
    import torch

    tensors = [loaded.preprocess(clip.decode_for_model(image, loaded.input_size)) for image in images]
    size = loaded.spec.batch_size
    return [torch.stack(tensors[start : start + size]) for start in range(0, len(tensors), size)]


def bare(loaded: clip.LoadedModel, batches: list) -> None:
    import torch

    with torch.inference_mode(), loaded._autocast():
        for batch in batches:
            loaded.model.encode_image(batch.to(loaded.device)).float().cpu()


def analyse(loaded: clip.LoadedModel, images: list[bytes]) -> None:
    titles = [TITLES[index % len(TITLES)] for index in range(len(images))]
    tags = [title.lower().split() for title in titles]
    clip.analyse_images(loaded, images, titles=titles, tags_lists=tags)


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the DataLoader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(function, *args) -> tuple[float, float]:
    """(wall-clock seconds, CPU seconds) of a call."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    function(*args)
    return time.perf_counter() - wall, cpu_seconds() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="", help="tag or checkpoint; empty: random weights (default)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="decoding workers (default 2)")
    parser.add_argument("--images", type=int, default=96, help="how many JPEG previews (default 96)")
    parser.add_argument("--rounds", type=int, default=2, help="timed passes of each pipeline (default 2)")
    parser.add_argument("--analyse", action="store_true", help="also time the whole analyse_images")
    args = parser.parse_args()

    import torch

    spec = clip.ModelSpec(args.model, args.pretrained, args.device, args.batch_size, args.workers)
    loaded = clip.load_model(spec)
    images = build_images(args.images)
    megapixels = [Image.open(io.BytesIO(image)).size for image in images]
    megapixels = [width * height / 1e6 for width, height in megapixels]
    print(
        f"{args.model} ({args.pretrained or 'random weights'}) on {loaded.device}, batch {args.batch_size}, "
        f"{loaded._worker_count(len(images))} decoding workers (asked {args.workers}), "
        f"{torch.get_num_threads()} torch threads"
    )
    print(
        f"{len(images)} JPEGs, {min(megapixels):.1f}-{max(megapixels):.1f} MP (mean {np.mean(megapixels):.1f}), "
        f"mean {np.mean([len(image) for image in images]) / 1e3:.0f} kB"
    )

    batches = ready_batches(loaded, images)
    warm = images[: 2 * args.batch_size]  # two batches: DataLoader workers, kernels, allocator
    ours(loaded, warm)
    bare(loaded, batches[:2])
    best = {name: [float("inf"), float("inf")] for name in ("ours", "bare")}
    for round_ in range(1, args.rounds + 1):
        spent = {"ours": timed(ours, loaded, images), "bare": timed(bare, loaded, batches)}
        print(f"round {round_}: " + ", ".join(f"{name} {len(images) / s[0]:.1f} img/s" for name, s in spent.items()))
        best = {name: [min(old, new) for old, new in zip(best[name], spent[name], strict=True)] for name in best}

    wall = {name: len(images) / seconds[0] for name, seconds in best.items()}
    cpu = {name: len(images) / seconds[1] for name, seconds in best.items()}
    wall_ratio, cpu_ratio = wall["ours"] / wall["bare"], cpu["ours"] / cpu["bare"]
    for name, what in (("ours", "decode + preprocess + model + store"), ("bare", "model forward on ready tensors")):
        print(f"{name} ({what}): {wall[name]:7.1f} images/s wall clock, {cpu[name]:6.1f} per CPU-second")
    # On a CPU device the pipeline and the model share the cores, so CPU time predicts a quiet machine's
    # wall clock, and busy neighbours barely move it. On a GPU the overlap is the point: wall clock.
    ratio = cpu_ratio if loaded.device.type == "cpu" else wall_ratio
    basis = "CPU time" if loaded.device.type == "cpu" else "wall clock"
    print(
        f"ratio: {wall_ratio:.2f} wall clock, {cpu_ratio:.2f} by CPU time; verdict by {basis} "
        f"(target >= {TARGET_RATIO}) -> {'PASS' if ratio >= TARGET_RATIO else 'FAIL'}"
    )

    if args.analyse:
        vocab_seconds, _ = timed(analyse, loaded, images[:1])  # the first call embeds the vocabularies
        seconds, _ = timed(analyse, loaded, images)
        print(
            f"analyse_images (embedding, tags, caption, metadata score): {len(images) / seconds:.1f} images/s, "
            f"after {vocab_seconds:.1f} s embedding the vocabularies once"
        )
    return 0 if ratio >= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
