"""A tiny CLIP trained in seconds on a few photos: the offline stand-in for a pretrained model.

Where no pretrained weights can be had (no model hub, nothing cached), `make run` uses it so that the
demo still curates, publishes its pack and trains; its captions come from the phrase bank, and its
search only knows the demo photos. The tests use it the same way.
"""

from pathlib import Path

from . import clip

PHOTO_CLIP = "curation-tiny-clip"  # a bundled architecture (model_configs/)


def train_photo_clip(folder: Path, photos, *, steps: int = 80, views: int = 24, seed: int = 0) -> Path:
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
    path.parent.mkdir(parents=True, exist_ok=True)
    clip.register_model_configs()
    rng = random.Random(seed)
    torch.manual_seed(seed)
    model, _, preprocess = open_clip.create_model_and_transforms(PHOTO_CLIP, pretrained=None)

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
