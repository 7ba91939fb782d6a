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
