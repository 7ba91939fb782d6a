"""The model card of a finished run: what was trained, on what data, under which licence (Markdown).

Every value that people typed (titles, names, prompts, the base model) goes in through
`marketplace.core.markdown`, so that the card shows it as text and nothing of it is rendered as HTML or
Markdown of its own."""

from __future__ import annotations

from marketplace.core.markdown import md_code, md_text
from training.base_models import pack_is_commercial, pack_use_label
from training.engine import registry

UNET_FAMILIES = ("sd", "sdxl")  # the others' denoiser is a transformer


def _number(value, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _evaluation_section(run) -> list[str]:
    """Base model vs LoRA on the held-out slice, and how it was measured."""
    evaluations = list(run.evaluations or [])
    if not evaluations:
        return []
    base = next((e for e in evaluations if e["step"] == 0), None)
    best = next((e for e in evaluations if e.get("best")), evaluations[-1])
    holdout = run.holdout_keys or []
    lines = [
        "## Evaluation",
        "",
        f"The delivered weights are those of step {best['step']}, the checkpoint with the lowest held-out loss.",
        "",
        "| Measure | Base model | LoRA |",
        "| --- | ---: | ---: |",
        f"| Held-out loss (lower is better) | {_number(base and base.get('validation_loss'))} "
        f"| {_number(best.get('validation_loss'))} |",
    ]
    metrics = best.get("metrics") or {}
    lora_metrics, base_metrics = metrics.get("lora") or {}, metrics.get("base") or {}
    if lora_metrics:
        lines += [
            f"| CLIP score, prompt vs image (higher is better) | {_number(base_metrics.get('clip_score'), 2)} "
            f"| {_number(lora_metrics.get('clip_score'), 2)} |",
            f"| Fréchet distance to the held-out images on CLIP features (lower is better) "
            f"| {_number(base_metrics.get('fid_clip'), 2)} | {_number(lora_metrics.get('fid_clip'), 2)} |",
        ]
    lines += [
        "",
        "How it was measured:",
        "",
        f"- Held-out slice: {len(holdout)} of the pack's images"
        + (f" ({', '.join(md_text(key) for key in holdout)})" if holdout else "")
        + f", chosen by the run's seed ({run.config.get('seed')}) before training and never trained on.",
        "- Held-out loss: the denoiser's plain mean squared error against its training target on those images, "
        "at noise levels t = 0.1, 0.3, 0.5, 0.7 and 0.9 with noise fixed by each image's content: the same "
        "numbers for the same weights, comparable across checkpoints and runs of this base model. "
        "The base model's figure is step 0 (the LoRA not yet trained).",
    ]
    if lora_metrics:
        lines.append(
            f"- Image scores: previews of {lora_metrics.get('n_prompts', 'the')} fixed prompts (the staff's prompts "
            "and the held-out captions) with fixed seeds, made by the base model's own inference pipeline, with "
            "the LoRA and without it; scored with the curation CLIP model "
            f"({md_text(lora_metrics.get('feature_model', 'CLIP'))}) against "
            f"{lora_metrics.get('n_reference', len(holdout))} held-out images. With few images the Fréchet "
            "distance is a rough, biased estimate: compare it between the two columns, not with published FIDs."
        )
    else:
        lines.append("- Image scores were not measured for this run (no CLIP model on the training worker).")
    lines.append("")
    return lines


def render_model_card(run, *, final_step: int, usage_rows: list[dict], creators: list[dict]) -> str:
    """`usage_rows`: [{key, asset_id, title, creator, times_seen}]; `creators`: [{creator, assets, times_seen}]."""
    licence = run.licence
    version = licence.version
    terms = licence.terms or {}
    base = registry.get(run.base_model_key)
    denoiser = "transformer" if base and base.family not in UNET_FAMILIES else "UNet"
    lines = [
        f"# LoRA fine-tune: {md_text(version.title)} v{version.number}",
        "",
        f"Training run {run.pk}, finished at step {final_step} of {run.total_steps}.",
        "",
        "## Base model",
        "",
    ]
    if base:
        lines.append(f"- Base model: {md_text(base.label)} ({md_code(base.key)}, the {md_text(base.family)} family)")
    lines += [
        f"- Checkpoint: {md_code(run.base_model)}",
        f"- Method: LoRA on the {denoiser}" + (" and the text encoder" if run.config.get("train_text_encoder") else ""),
        "- Weights: `pytorch_lora_weights.safetensors` (load with diffusers' `pipe.load_lora_weights()`)"
        + (
            ", and `pytorch_lora_weights_kohya.safetensors` in the kohya key format (ComfyUI, A1111-style tools)"
            if getattr(run, "kohya_lora_path", "")
            else ""
        ),
        "",
        *_evaluation_section(run),
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
        *_licences_section(run, base),
        "Pack licence:",
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


def _licences_section(run, base) -> list[str]:
    """The verdict on commercial use (both licences must allow it) and the base model's licence."""
    pack_commercial = pack_is_commercial(run.licence)
    use = md_text(pack_use_label(run.licence))
    if base is None and pack_commercial:
        verdict = (
            "The base model's licence is not on record (the run predates the base-model registry): the LoRA and "
            "its outputs may be used commercially only if the licence of the checkpoint above allows it."
        )
    elif base is None:
        verdict = f"Non-commercial use only: the pack's licence is for {use}."
    elif pack_commercial and base.commercial_use:
        verdict = "Both licences allow commercial use: the LoRA and its outputs may be used commercially"
        condition = base.licence.commercial_condition
        verdict += f", {md_text(condition)}." if condition else "."
    else:
        reasons = []
        if not pack_commercial:
            reasons.append(f"the pack's licence is for {use}")
        if not base.commercial_use:
            reasons.append(f"the base model's licence ({md_text(base.licence.name)}) does not allow commercial use")
        verdict = "Non-commercial use only: " + " and ".join(reasons) + "."
    lines = [
        "## Licences",
        "",
        "The LoRA and the images made with it may be used commercially only if both licences below allow it.",
        "",
        f"**{verdict}**",
        "",
    ]
    if base is not None:
        # No Markdown link: the card renders no link at all (tests/test_hostile_input.py), so that none a person
        # typed can hide among ours; viewers that link bare URLs (GitHub's) still make this one a link.
        lines += [
            f"Base model licence ({md_text(base.label)}):",
            "",
            f"- Licence: {md_text(base.licence.name)} ({md_code(base.licence.spdx_id)})",
        ]
        if base.licence.url:
            lines.append(f"- Text: {base.licence.url}")
        lines.append(f"- Commercial use: {md_text(base.licence.commercial_summary)}")
        if base.licence.conditions:
            lines.append(f"- Conditions: {md_text(base.licence.conditions)}")
        lines.append("")
    return lines
