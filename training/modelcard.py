"""The model card of a finished run: what was trained, on what data, under which licence (Markdown).

Every value that people typed (titles, names, prompts, the base model) goes in through
`marketplace.core.markdown`, so that the card shows it as text and nothing of it is rendered as HTML or
Markdown of its own."""

from __future__ import annotations

from marketplace.core.markdown import md_code, md_text


def render_model_card(run, *, final_step: int, usage_rows: list[dict], creators: list[dict]) -> str:
    """`usage_rows`: [{key, asset_id, title, creator, times_seen}]; `creators`: [{creator, assets, times_seen}]."""
    licence = run.licence
    version = licence.version
    terms = licence.terms or {}
    lines = [
        f"# LoRA fine-tune: {md_text(version.title)} v{version.number}",
        "",
        f"Training run {run.pk}, finished at step {final_step} of {run.total_steps}.",
        "",
        "## Base model",
        "",
        f"- Base model: {md_code(run.base_model)}",
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
        lines.append(f"| {md_text(name)} | {md_text(value)} |")
    lines += [
        "",
        "## Training data",
        "",
        f"- Pack version: {md_text(version.pack.title)} v{version.number} ({md_code(version.pack.slug)}), "
        f"{version.item_count} images "
        f"by {version.creator_count} creators",
        f"- Manifest SHA-256: `{version.manifest_sha256}`",
        "",
        "## Licence",
        "",
        f"- Licence id: `{licence.pk}` (granted {licence.granted_at:%Y-%m-%d}) to {md_text(licence.buyer.username)}",
    ]
    if terms.get("use_label") or terms.get("use"):
        lines.append(f"- Use: {md_text(terms.get('use_label') or terms.get('use'))}")
    if terms.get("summary"):
        lines.append(f"- Terms: {md_text(terms['summary'])}")
    for entry in terms.get("licences", []):
        if isinstance(entry, dict):
            lines.append(f"- Image licence: {md_text(entry.get('name') or entry.get('code') or entry)}")
    lines += [
        "",
        "## Data lineage: assets used per creator",
        "",
        "| Creator | Assets | Times seen |",
        "| --- | ---: | ---: |",
    ]
    for row in creators:
        lines.append(f"| {md_text(row['creator'])} | {row['assets']} | {row['times_seen']} |")
    lines += [
        "",
        "## Usage attribution (per asset)",
        "",
        "| Key | Asset | Title | Creator | Times seen |",
        "| --- | ---: | --- | --- | ---: |",
    ]
    for row in usage_rows:
        lines.append(
            f"| {md_text(row['key'])} | {row['asset_id']} | {md_text(row['title'])} | {md_text(row['creator'])} "
            f"| {row['times_seen']} |"
        )
    attribution = terms.get("attribution") or []
    if attribution:
        lines += ["", "## Attribution required by the image licences", ""]
        lines += [
            f"- “{md_text(a.get('title', ''))}” by {md_text(a.get('name') or a.get('creator'))}" for a in attribution
        ]
    return "\n".join(lines) + "\n"
