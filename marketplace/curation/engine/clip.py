"""CLIP models for curation: loading (once per process), image and text embeddings, CoCa captions.

`ModelSpec.pretrained` takes what open_clip takes: a pretrained tag (downloaded from the Hugging Face
hub on first use, then read from its cache), a local checkpoint (.pt/.bin/.safetensors),
`hf-hub:org/repo` or `local-dir:/folder`. Every way a model can fail to load ends in ModelUnavailable,
whose message names the setting to change. An unreachable hub is detected in seconds (open_clip alone
retries for about a minute); tags already in the hub cache load without it, and `hf-hub:` models do
so with HF_HUB_OFFLINE=1.

torch and open_clip (about 6 s to import) are imported when a model is loaded, not with this module,
so web processes that only need ModelSpec or ModelUnavailable stay light.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import socket
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps

from .captions import ImageAnalysis, analyse_images, beam_search, clean_caption

if TYPE_CHECKING:
    import torch

__all__ = [
    "ImageAnalysis",
    "LoadedModel",
    "ModelSpec",
    "ModelUnavailable",
    "check_weights",
    "analyse_images",
    "decode_for_model",
    "load_model",
    "rank_by_text",
    "register_model_configs",
    "resolve_device",
]

MODEL_SETTING = "CURATION_CLIP_MODEL"
PRETRAINED_SETTING = "CURATION_CLIP_PRETRAINED"
DEVICE_SETTING = "CURATION_DEVICE"
SCHEMAS = ("hf-hub:", "local-dir:")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
# open_clip retries an unreachable hub for about a minute; a TCP connect tells us sooner.
HUB_PROBE_TIMEOUT_S = 3.0
MODEL_CONFIG_DIR = Path(__file__).with_name("model_configs")
CAPTION_BEAMS = 3
CAPTION_MAX_TOKENS = 30


@dataclass(frozen=True)
class ModelSpec:
    name: str
    pretrained: str
    device: str = "auto"
    batch_size: int = 32
    num_workers: int = 2


class ModelUnavailable(Exception):
    """The model or its weights cannot be obtained; the message names the setting to change."""


@dataclass(frozen=True)
class _Source:
    """Arguments for open_clip.create_model_and_transforms."""

    model_name: str
    checkpoint: str | None = None
    preprocess: dict[str, Any] = field(default_factory=dict)


_MODELS: dict[ModelSpec, LoadedModel] = {}
_LOAD_LOCK = threading.Lock()
_configs_registered = False


def load_model(spec: ModelSpec) -> LoadedModel:
    """The model for spec, loaded once per process and shared by its threads."""
    loaded = _MODELS.get(spec)
    if loaded is None:
        with _LOAD_LOCK:
            loaded = _MODELS.get(spec)
            if loaded is None:
                loaded = _MODELS[spec] = _load(spec)
    return loaded


def check_weights(spec: ModelSpec) -> None:
    """Raise ModelUnavailable, in seconds, when spec's weights can be neither read locally nor downloaded."""
    register_model_configs()
    _resolve_source(spec)


def register_model_configs() -> None:
    """Make the architectures in model_configs/ (tiny test models) known to open_clip, once."""
    global _configs_registered
    if not _configs_registered:
        import open_clip

        open_clip.add_model_config(MODEL_CONFIG_DIR)
        _configs_registered = True


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelUnavailable(f"{DEVICE_SETTING} is {device!r} but CUDA is not available: set it to auto or cpu.")
    return device


def _load(spec: ModelSpec) -> LoadedModel:
    import open_clip

    register_model_configs()
    device = resolve_device(spec.device)
    source = _resolve_source(spec)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            source.model_name,
            pretrained=source.checkpoint,
            precision="fp16" if device.startswith("cuda") else "fp32",
            device=device,
            **source.preprocess,
        )
        tokenizer = open_clip.get_tokenizer(source.model_name)
    except Exception as error:  # open_clip raises RuntimeError, ValueError, OSError, unpickling errors...
        raise ModelUnavailable(
            f"Could not load CLIP weights {spec.pretrained!r} for {spec.name}: {error}. Check that "
            f"{PRETRAINED_SETTING} is a checkpoint of the architecture named by {MODEL_SETTING}."
        ) from error
    model.eval()
    return LoadedModel(spec, model, preprocess, tokenizer, device)


# --- where the weights come from -------------------------------------------------------------


def _resolve_source(spec: ModelSpec) -> _Source:
    import open_clip

    name, pretrained = spec.name.strip(), (spec.pretrained or "").strip()
    if name.startswith(SCHEMAS):  # the name carries its weights; open_clip ignores `pretrained` then
        return _schema_source(name, MODEL_SETTING)
    if pretrained.startswith(SCHEMAS):  # open_clip wants these as the model name
        return _schema_source(pretrained, PRETRAINED_SETTING)
    if name not in open_clip.list_models():
        raise ModelUnavailable(
            f"Unknown CLIP model {name!r}. Set {MODEL_SETTING} to an open_clip architecture such as "
            "ViT-B-32, ViT-L-14 or coca_ViT-L-14 (open_clip.list_models() lists them all)."
        )
    if not pretrained:
        return _Source(name)  # random weights: benchmarks only
    if os.path.isfile(pretrained):
        return _Source(name, pretrained)
    tag = open_clip.get_pretrained_cfg(name, pretrained)
    if tag:
        return _tag_source(spec, tag)
    if pretrained.endswith(CHECKPOINT_SUFFIXES) or os.sep in pretrained:
        raise ModelUnavailable(
            f"The CLIP checkpoint {pretrained!r} does not exist. Set {PRETRAINED_SETTING} to the path of a "
            f".pt, .bin or .safetensors checkpoint of {name}."
        )
    tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
    raise ModelUnavailable(
        f"{pretrained!r} is neither a checkpoint file nor a pretrained tag of {name} (its tags: {tags}). "
        f"Set {PRETRAINED_SETTING} to one of those tags or to a local checkpoint path."
    )


def _schema_source(value: str, setting: str) -> _Source:
    if value.startswith("local-dir:"):
        folder = value.removeprefix("local-dir:")
        if not os.path.isdir(folder):
            raise ModelUnavailable(f"The model folder {folder!r} named by {setting} does not exist.")
        return _Source(value)
    repo = value.removeprefix("hf-hub:").strip("/")
    _require_hub(f"Could not load {value!r}", setting, cached=bool(_cached_hub_file(f"{repo}/open_clip_config.json")))
    return _Source(value)


def _tag_source(spec: ModelSpec, tag: dict) -> _Source:
    cached = _cached_hub_file(tag.get("hf_hub", ""))
    if cached:  # straight from the cache: no network round trip, works offline
        preprocess = {
            "image_mean": tag.get("mean"),
            "image_std": tag.get("std"),
            "image_interpolation": tag.get("interpolation"),
            "image_resize_mode": tag.get("resize_mode"),
        }
        return _Source(spec.name, cached, {key: value for key, value in preprocess.items() if value is not None})
    url = None if tag.get("hf_hub") else tag.get("url")  # open_clip prefers the hub when a tag has both
    _require_hub(f"Could not load CLIP weights {spec.pretrained!r} for {spec.name}", PRETRAINED_SETTING, url)
    return _Source(spec.name, spec.pretrained)


def _cached_hub_file(hf_hub: str) -> str | None:
    """The local copy of a tag's weights in the Hugging Face cache, if a download already happened."""
    if not hf_hub:
        return None
    from huggingface_hub import try_to_load_from_cache
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    repo_id, filename = os.path.split(hf_hub)
    filename = filename or HF_WEIGHTS_NAME
    # open_clip prefers a .safetensors twin of the named file, so look for it first.
    stem, suffix = os.path.splitext(filename)
    safe = HF_SAFE_WEIGHTS_NAME if filename == HF_WEIGHTS_NAME else f"{stem}.safetensors"
    for candidate in dict.fromkeys([safe if suffix in (".bin", ".pth") else filename, filename]):
        found = try_to_load_from_cache(repo_id, candidate)
        if isinstance(found, str):
            return found
    return None


def _require_hub(what: str, setting: str, url: str | None = None, *, cached: bool = False) -> None:
    """Raise ModelUnavailable unless weights to be fetched from the hub (or `url`) can be had: from the local
    cache (`cached`) under HF_HUB_OFFLINE, or else over a connection that answers."""
    from huggingface_hub import constants

    if url is None and constants.HF_HUB_OFFLINE:
        if cached:
            return  # the hub client reads its cache only
        raise ModelUnavailable(
            f"{what}: the weights are not in the local Hugging Face cache and HF_HUB_OFFLINE is set. Set {setting} "
            "to a local checkpoint path or a local-dir: folder."
        )
    endpoint = url or constants.ENDPOINT
    proxy = urllib.request.getproxies().get("https")
    target = urllib.parse.urlsplit(proxy or endpoint)
    port = target.port or (443 if target.scheme == "https" else 80)
    if not _can_connect(target.hostname or "", port, HUB_PROBE_TIMEOUT_S):
        raise ModelUnavailable(
            f"{what}: the model hub ({urllib.parse.urlsplit(endpoint).hostname}) could not be reached and the "
            f"weights are not in the local cache. Set {setting} to a local checkpoint path or a local-dir: folder "
            "(offline sites), or run once with network access to fill the cache."
        )


def _can_connect(host: str, port: int, timeout: float) -> bool:
    """A TCP connect, in a thread so that a stalled DNS lookup is bounded by the timeout too."""
    connected, finished = threading.Event(), threading.Event()

    def attempt():
        try:
            with socket.create_connection((host, port), timeout=timeout):
                connected.set()
        except OSError:
            pass
        finally:
            finished.set()

    threading.Thread(target=attempt, daemon=True).start()
    finished.wait(timeout)
    return connected.is_set()


# --- inference ---------------------------------------------------------------------------------


def decode_for_model(image: bytes | Image.Image, size: int) -> Image.Image:
    """An upright RGB image for the model (PIL images are taken as upright). JPEG bytes decode at 1/2, 1/4
    or 1/8 scale (DCT draft) to no less than `size` px a side: the model sees ~224 px, and decoding at full
    size would cost more CPU than the model."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    with Image.open(io.BytesIO(image)) as opened:
        opened.draft("RGB", (size, size))
        return ImageOps.exif_transpose(opened).convert("RGB")


def _split_preprocess(preprocess) -> tuple[Any, tuple | None, tuple | None]:
    """(PIL steps, mean, std) of open_clip's eval transform, which ends in ToTensor and Normalize.

    Workers then hand over uint8 pixels (a quarter of the bytes to copy) and normalisation runs once per
    batch on the model's device. An unfamiliar transform stays whole: (preprocess, None, None)."""
    steps = list(getattr(preprocess, "transforms", []))
    if [type(step).__name__ for step in steps[-2:]] not in (["MaybeToTensor", "Normalize"], ["ToTensor", "Normalize"]):
        return preprocess, None, None
    from torchvision.transforms import Compose

    return Compose(steps[:-2]), tuple(steps[-1].mean), tuple(steps[-1].std)


class _DecodeDataset:
    """Map-style dataset for torch's DataLoader: workers decode and preprocess while the model runs."""

    def __init__(self, images: Sequence[bytes | Image.Image], transform, size: int, as_uint8: bool):
        self.images, self.transform, self.size, self.as_uint8 = images, transform, size, as_uint8

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        import torch

        image = self.transform(decode_for_model(self.images[index], self.size))
        return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1) if self.as_uint8 else image


def _spare_cores() -> int:
    """Cores this process may use beyond torch's intra-op threads."""
    import torch

    return max(0, len(os.sched_getaffinity(0)) - torch.get_num_threads())


class LoadedModel:
    """A model ready for inference. Embeddings are float32, L2-normalised rows."""

    def __init__(self, spec: ModelSpec, model, preprocess, tokenizer, device: str):
        import torch

        self.spec = spec
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.identity = {"model": spec.name, "pretrained": spec.pretrained}
        self.is_coca = hasattr(model, "text_decoder")
        self.logit_scale = float(model.logit_scale.detach().exp())
        size = model.visual.preprocess_cfg["size"]
        self.input_size = max(size) if isinstance(size, tuple | list) else int(size)
        self._transform, mean, std = _split_preprocess(preprocess)
        self._normalize = None
        if mean is not None:  # on 0-255 pixels, so that uint8 batches need one conversion only
            self._normalize = (
                torch.tensor(mean, device=self.device).view(1, -1, 1, 1) * 255,
                torch.tensor(std, device=self.device).view(1, -1, 1, 1) * 255,
            )
        self._vocab_embeddings: dict[tuple[str, ...], np.ndarray] = {}
        self._vocab_lock = threading.Lock()

    @cached_property
    def embedding_dim(self) -> int:
        return int(self.embed_texts([""]).shape[1])

    def embed_images(self, images: Sequence[bytes | Image.Image]) -> np.ndarray:
        return self.encode_images(images)[0]

    def caption_images(self, images: Sequence[bytes | Image.Image]) -> list[str]:
        return self.encode_images(images, captions=True)[1]

    def encode_images(self, images: Sequence[bytes | Image.Image], *, captions: bool = False):
        """(embeddings (N, D), CoCa captions or []) in one pass over the images."""
        import torch
        import torch.nn.functional as F

        if captions and not self.is_coca:
            raise ValueError(f"{self.spec.name} is not a CoCa model and cannot write captions.")
        embeddings: list[np.ndarray] = []
        texts: list[str] = []
        with torch.inference_mode(), self._autocast():
            for pixels in self._pixel_batches(images):
                if captions:
                    latent, image_tokens = self.model._encode_image(pixels)
                    texts.extend(self._write_captions(image_tokens))
                else:
                    latent = self.model.encode_image(pixels)
                embeddings.append(F.normalize(latent.float(), dim=-1).cpu().numpy())
        if not embeddings:
            return np.zeros((0, self.embedding_dim), np.float32), texts
        return np.concatenate(embeddings), texts

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        chunks = []
        with torch.inference_mode(), self._autocast():
            for start in range(0, len(texts), self.spec.batch_size):
                tokens = self.tokenizer(list(texts[start : start + self.spec.batch_size])).to(self.device)
                chunks.append(F.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu().numpy())
        if not chunks:
            return np.zeros((0, self.embedding_dim), np.float32)
        return np.concatenate(chunks)

    def vocab_embeddings(self, prompts: tuple[str, ...]) -> np.ndarray:
        """Text embeddings of a fixed vocabulary, computed once per model."""
        with self._vocab_lock:
            if prompts not in self._vocab_embeddings:
                self._vocab_embeddings[prompts] = self.embed_texts(prompts)
            return self._vocab_embeddings[prompts]

    def _pixel_batches(self, images: Sequence[bytes | Image.Image]) -> Iterator[torch.Tensor]:
        """Model-ready batches on the device, decoded and preprocessed by DataLoader workers."""
        import torch

        loader = torch.utils.data.DataLoader(
            _DecodeDataset(images, self._transform, self.input_size, as_uint8=self._normalize is not None),
            batch_size=self.spec.batch_size,
            num_workers=self._worker_count(len(images)),
            pin_memory=self.device.type == "cuda",
        )
        for batch in loader:
            batch = batch.to(self.device, non_blocking=True)
            if self._normalize is not None:
                mean, std = self._normalize
                batch = batch.float().sub_(mean).div_(std)
            yield batch

    def _worker_count(self, image_count: int) -> int:
        batches = -(-image_count // self.spec.batch_size)
        # One batch leaves nothing to overlap with; daemonic processes (Celery's prefork pool) may not fork.
        if batches < 2 or multiprocessing.current_process().daemon:
            return 0
        workers = min(self.spec.num_workers, batches)
        # On a CPU device, workers on cores that torch's threads already use slow the model down by more
        # than they save (measured: 2 cores, ViT-B-32): decode inline unless torch leaves cores free.
        return workers if self.device.type == "cuda" else min(workers, _spare_cores())

    def _autocast(self):
        import torch

        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def _write_captions(self, image_tokens: torch.Tensor) -> list[str]:
        beams = CAPTION_BEAMS
        rows = image_tokens.repeat_interleave(beams, dim=0)  # beam_search groups sequences by image

        def next_logits(sequences):
            _, token_embeddings = self.model._encode_text(sequences)
            return self.model.text_decoder(rows, token_embeddings)[:, -1]

        sequences = beam_search(
            next_logits,
            len(image_tokens),
            sot_id=self.tokenizer.sot_token_id,
            eot_id=self.tokenizer.eot_token_id,
            num_beams=beams,
            max_length=min(CAPTION_MAX_TOKENS, self.model.context_length - 1),
            device=self.device,
        )
        special = set(self.tokenizer.all_special_ids)
        return [clean_caption(self.tokenizer.decode([t for t in ids if t not in special])) for ids in sequences]


def rank_by_text(loaded: LoadedModel, query: str, embeddings: np.ndarray, top_k: int | None = None):
    """[(row, cosine)] of image embeddings by similarity to a text query, best first."""
    scores = embeddings @ loaded.embed_texts([query])[0]
    order = np.argsort(-scores, kind="stable")[:top_k]
    return [(int(row), float(scores[row])) for row in order]
