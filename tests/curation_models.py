"""Tiny CLIP and CoCa models for tests: no downloads, a few MB, milliseconds per image.

Built from the configs in marketplace/curation/engine/model_configs with seeded random weights, saved
as checkpoints, and loaded back through `pretrained=<path>`, the path a site with its own weights uses.
Use from a session-scoped fixture:

    @pytest.fixture(scope="session")
    def tiny_clip_spec(tmp_path_factory):
        return tiny_model_spec(TINY_CLIP, tmp_path_factory.mktemp("models"))
"""

from pathlib import Path

from marketplace.curation.engine import clip

TINY_CLIP = "curation-tiny-clip"
TINY_COCA = "curation-tiny-coca"


def build_tiny_checkpoint(name: str, folder: Path, *, seed: int = 0) -> Path:
    """A random-init checkpoint of a bundled tiny architecture, written once per folder."""
    import open_clip
    import torch

    path = Path(folder) / f"{name}.pt"
    if not path.exists():
        clip.register_model_configs()
        torch.manual_seed(seed)
        model = open_clip.create_model(name, pretrained=None)
        partial = path.with_suffix(".partial")
        torch.save(model.state_dict(), partial)
        partial.replace(path)  # tests running side by side never read half a file
    return path


def tiny_model_spec(name: str, folder: Path, **options) -> clip.ModelSpec:
    return clip.ModelSpec(name=name, pretrained=str(build_tiny_checkpoint(name, folder)), device="cpu", **options)


def train_tiny_clip_on_photos(folder: Path, photos, *, steps: int = 80, views: int = 24, seed: int = 0) -> Path:
    """A tiny CLIP whose image embeddings tell these photos apart and ignore light edits.

    No pretrained weights can be downloaded here, and a random network maps every photo to
    nearly the same direction. So, in a few seconds, the image tower learns (supervised
    contrastive loss) that edited views of one photo belong together and other photos do not:
    a stand-in for what a pretrained CLIP gives for near-duplicates. Saved as a checkpoint and
    loaded through `pretrained=<path>` like any other.
    """
    import io
    import random

    import open_clip
    import torch
    import torch.nn.functional as F
    from PIL import Image, ImageDraw, ImageEnhance

    path = Path(folder) / "curation-tiny-clip-trained.pt"
    if path.exists():
        return path
    clip.register_model_configs()
    rng = random.Random(seed)
    torch.manual_seed(seed)
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_CLIP, pretrained=None)

    def edited_view(image):
        width, height = image.size
        scale = rng.uniform(0.8, 1.0)
        w, h = int(width * scale), int(height * scale)
        left, top = rng.randint(0, width - w), rng.randint(0, height - h)
        view = ImageEnhance.Brightness(image.crop((left, top, left + w, top + h))).enhance(rng.uniform(0.7, 1.4))
        if rng.random() < 0.5:
            ImageDraw.Draw(view).text((rng.randint(0, 30), rng.randint(0, h - 20)), "(c) 2026", fill=(255, 255, 255))
        buffer = io.BytesIO()
        view.save(buffer, "JPEG", quality=rng.randint(30, 95))
        return preprocess(Image.open(buffer).convert("RGB"))

    small = [photo.copy() for photo in photos]
    for photo in small:
        photo.thumbnail((256, 256))
    bank = torch.stack([edited_view(photo) for photo in small for _ in range(views)])
    labels = torch.arange(len(small)).repeat_interleave(views)
    optimiser = torch.optim.AdamW(model.visual.parameters(), lr=1e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: more threads only contend
    try:
        for _ in range(steps):
            batch = torch.randint(0, len(bank), (64,))
            embeddings = F.normalize(model.encode_image(bank[batch]), dim=-1)
            logits = embeddings @ embeddings.T / 0.1
            self_pairs = torch.eye(len(batch), dtype=torch.bool)
            logits = logits.masked_fill(self_pairs, -1e9)
            positives = (labels[batch][:, None] == labels[batch][None, :]) & ~self_pairs
            log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
            loss = -((log_prob * positives).sum(1) / positives.sum(1).clamp(min=1)).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    finally:
        torch.set_num_threads(threads)
    partial = path.with_suffix(".partial")
    torch.save(model.state_dict(), partial)
    partial.replace(path)
    return path
