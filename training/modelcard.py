"""The model card of a finished run: what was trained, on what data, under which licence (Markdown)."""

from __future__ import annotations


def _cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def render_model_card(run, *, final_step: int, usage_rows: list[dict], creators: list[dict]) -> str:
    """`usage_rows`: [{key, asset_id, title, creator, times_seen}]; `creators`: [{creator, assets, times_seen}]."""
    licence = run.licence
    version = licence.version
    terms = licence.terms or {}
    lines = [
        f"# LoRA fine-tune: {version.title} v{version.number}",
        "",
        f"Training run {run.pk}, finished at step {final_step} of {run.total_steps}.",
        "",
        "## Base model",
        "",
        f"- Base model: `{run.base_model}`",
        "- Method: LoRA on the UNet" + (" and the text encoder" if run.config.get("train_text_encoder") else ""),
        "- Weights: `pytorch_lora_weights.safetensors` (load with diffusers' `pipe.load_lora_weights()`)",
        "",
        "## Hyperparameters",
        "",
        "| Setting | Value |",
        "| --- | --- |",
    ]
    for name, value in run.config.items():
        if name == "base_model":
            continue
        if isinstance(value, list):
            value = "; ".join(str(v) for v in value) or "(captions of the data)"
        lines.append(f"| {_cell(name)} | {_cell(value)} |")
    lines += [
        "",
        "## Training data",
        "",
        f"- Pack version: {version.pack.title} v{version.number} (`{version.pack.slug}`), {version.item_count} images "
        f"by {version.creator_count} creators",
        f"- Manifest SHA-256: `{version.manifest_sha256}`",
        "",
        "## Licence",
        "",
        f"- Licence id: `{licence.pk}` (granted {licence.granted_at:%Y-%m-%d}) to {licence.buyer.username}",
    ]
    if terms.get("use_label") or terms.get("use"):
        lines.append(f"- Use: {terms.get('use_label') or terms.get('use')}")
    if terms.get("summary"):
        lines.append(f"- Terms: {terms['summary']}")
    for entry in terms.get("licences", []):
        if isinstance(entry, dict):
            lines.append(f"- Image licence: {entry.get('name') or entry.get('code') or entry}")
    lines += [
        "",
        "## Data lineage: assets used per creator",
        "",
        "| Creator | Assets | Times seen |",
        "| --- | ---: | ---: |",
    ]
    for row in creators:
        lines.append(f"| {_cell(row['creator'])} | {row['assets']} | {row['times_seen']} |")
    lines += [
        "",
        "## Usage attribution (per asset)",
        "",
        "| Key | Asset | Title | Creator | Times seen |",
        "| --- | ---: | --- | --- | ---: |",
    ]
    for row in usage_rows:
        lines.append(
            f"| {row['key']} | {row['asset_id']} | {_cell(row['title'])} | {_cell(row['creator'])} "
            f"| {row['times_seen']} |"
        )
    attribution = terms.get("attribution") or []
    if attribution:
        lines += ["", "## Attribution required by the image licences", ""]
        lines += [f"- “{_cell(a.get('title', ''))}” by {_cell(a.get('name') or a.get('creator'))}" for a in attribution]
    return "\n".join(lines) + "\n"
