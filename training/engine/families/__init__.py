"""The model families the engine trains, one module each; a pipeline folder's family is told by the
`_class_name` of its model_index.json."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from .base import Family, ImageGeometry, ModelUnavailable

# family name -> the module (of this package) that defines it. Each module lists its classes in FAMILIES.
FAMILY_MODULES = {
    "sd": "sd",
    "sdxl": "sd",
    "flux": "flux",
    "chroma": "chroma",
    "sd3": "sd3",
    "z_image": "z_image",
    "flux2": "flux2",
    "qwen_image": "qwen_image",
}


def family_class(name: str) -> type[Family]:
    """The Family class called `name`; ValueError when no module defines it."""
    module_name = FAMILY_MODULES.get(name)
    if module_name is None:
        raise ValueError(f"Unknown model family {name!r}; known: {', '.join(FAMILY_MODULES)}.")
    module = importlib.import_module(f"{__name__}.{module_name}")
    for family in module.FAMILIES:
        if family.name == name:
            return family
    raise ValueError(f"The module families/{module_name}.py defines no family {name!r}.")


def available_families() -> list[type[Family]]:
    """Every family whose module imports (all of them, in a complete install)."""
    found = []
    for name in FAMILY_MODULES:
        try:
            found.append(family_class(name))
        except (ImportError, ValueError):
            continue
    return found


def pipeline_class_name(folder: Path, base_model: str) -> str:
    index = Path(folder) / "model_index.json"
    if not index.is_file():
        raise ModelUnavailable(
            f"base_model {base_model!r}: {folder} is not a diffusers pipeline (no model_index.json)."
        )
    try:
        return str(json.loads(index.read_text()).get("_class_name", ""))
    except (ValueError, AttributeError) as error:
        raise ModelUnavailable(f"base_model {base_model!r}: {index} is not valid JSON.") from error


def family_of_folder(folder: Path, base_model: str) -> type[Family]:
    """The family that trains the pipeline in `folder`, which must hold that family's components."""
    class_name = pipeline_class_name(folder, base_model)
    for family in available_families():
        if class_name in family.pipeline_classes:
            missing = [name for name in family.components if not (Path(folder) / name).is_dir()]
            if missing:
                raise ModelUnavailable(
                    f"base_model {base_model!r}: {folder} is a {family.label} pipeline ({class_name}) but lacks "
                    f"{', '.join(missing)}."
                )
            return family
    known = ", ".join(name for family in available_families() for name in family.pipeline_classes)
    raise ModelUnavailable(
        f"base_model {base_model!r}: {folder} holds a {class_name or 'nameless'} pipeline, which this engine does "
        f"not train (it trains {known})."
    )


__all__ = ["Family", "ImageGeometry", "ModelUnavailable", "family_class", "family_of_folder", "available_families"]
