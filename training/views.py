import mimetypes

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage
from django.http import FileResponse, Http404, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from marketplace.commerce.models import PackLicence
from marketplace.core.decorators import staff_required
from marketplace.core.storage import download_redirect
from marketplace.packs.models import Pack
from training import base_models, presets, selectors, services
from training.engine import registry
from training.forms import LaunchForm
from training.models import TrainingRun

# kind -> (model field, download name, as attachment)
OUTPUT_FILES = {
    "lora": ("lora_path", "pytorch_lora_weights.safetensors", True),
    "kohya": ("kohya_lora_path", "pytorch_lora_weights_kohya.safetensors", True),
    "grid": ("sample_grid_path", "samples.png", False),
    "card": ("model_card_path", "MODEL_CARD.md", True),
}


@login_required
@require_GET
def run_list(request):
    filters = {name: request.GET.get(name, "").strip() for name in ("status", "pack", "buyer")}
    runs = selectors.filter_runs(selectors.visible_runs(request.user), **filters)
    return render(
        request,
        "training/list.html",
        {
            "runs": runs[:200],
            "filters": filters,
            "statuses": TrainingRun.Status.choices,
            "packs": Pack.objects.filter(versions__licences__training_runs__isnull=False).distinct().order_by("title"),
        },
    )


@staff_required
@require_http_methods(["GET", "POST"])
def launch(request):
    if request.method == "POST":
        form = LaunchForm(request.POST)
        if form.is_valid():
            try:
                run = services.launch_run(
                    actor=request.user,
                    licence=form.cleaned_data["licence"],
                    base_model_key=form.cleaned_data["base_model_key"],
                    **form.hyperparameters(),
                )
            except ValidationError as error:
                form.add_service_errors(error)
            else:
                messages.success(request, f"Training run {run.pk} queued.")
                return redirect("training:detail", run.pk)
    else:
        preset = presets.get_preset(request.GET.get("preset"))
        initial = preset.form_initial() if preset else {}
        licence = PackLicence.objects.filter(pk=request.GET.get("licence")).first() if _is_uuid(request) else None
        if licence is not None:
            initial["licence"] = licence
        form = LaunchForm(initial=initial)
    return render(
        request,
        "training/launch.html",
        {
            "form": form,
            "presets": presets.available_presets(),
            "base_models": base_models.available_base_models(),
            "licence_id": request.GET.get("licence", ""),
        },
    )


def _is_uuid(request) -> bool:
    import uuid

    try:
        uuid.UUID(request.GET.get("licence", ""))
    except ValueError:
        return False
    return True


def _status(run: TrainingRun) -> dict:
    remaining = None
    if run.status == TrainingRun.Status.RUNNING and run.images_per_second and run.step:
        per_step = run.config.get("batch_size", 1) * run.config.get("gradient_accumulation", 1)
        remaining = round((run.total_steps - run.step) * per_step / run.images_per_second)
    return {
        "status": run.status,
        "status_display": run.get_status_display(),
        "step": run.step,
        "total_steps": run.total_steps,
        "progress": round(run.progress, 4),
        "eta_seconds": remaining,
        "images_per_second": round(run.images_per_second, 2) if run.images_per_second else None,
        "worker_host": run.worker_host,
        "error": run.error,
        "log_tail": run.log_tail,
        "losses": run.losses,
        "evaluations": run.evaluations,
        "chart": loss_chart(run.losses, _validation_points(run)),
        "samples": [
            {"step": sample["step"], "url": reverse("training:sample", args=[run.pk, "sample", index])}
            for index, sample in enumerate(run.samples)
        ],
        "cancel_requested": run.cancel_requested_at is not None,
        "finished": run.is_finished,
    }


def _validation_points(run: TrainingRun) -> list:
    return [[e["step"], e["validation_loss"]] for e in run.evaluations if e.get("validation_loss") is not None]


def loss_chart(losses: list, validation: list, width: int = 600, height: int = 160) -> dict:
    """Polylines of the training loss and the held-out loss ([[step, loss], ...] each) on shared axes in a
    width x height box, and the axes' ranges. Drawn here only: the page's script sets these points as the run
    goes."""
    points = losses + validation
    if not points:
        return {"train": "", "validation": "", "steps": [0, 0], "range": None}
    steps = [point[0] for point in points]
    values = [point[1] for point in points]
    first, last, low, high = min(steps), max(steps), min(values), max(values)
    span_x, span_y = (last - first) or 1, (high - low) or 1

    def line(series: list) -> str:
        if len(series) < 2:
            return ""
        return " ".join(
            f"{(s - first) / span_x * width:.1f},{height - (v - low) / span_y * height:.1f}" for s, v in series
        )

    return {"train": line(losses), "validation": line(validation), "steps": [first, last], "range": [low, high]}


def _evaluation_rows(run: TrainingRun) -> list[dict]:
    """The run page's evaluation table: a row per evaluated step, the base model's previews' scores first."""
    rows = []
    for record in run.evaluations:
        metrics = record.get("metrics") or {}
        if metrics.get("base") and not any(row["label"] == "base model" for row in rows):
            rows.append({"label": "base model", "loss": None, **_scores(metrics["base"]), "best": False})
        label = "base model (step 0)" if record["step"] == 0 else f"step {record['step']}"
        rows.append(
            {"label": label, "loss": record.get("validation_loss"), **_scores(metrics.get("lora") or {}),
             "best": bool(record.get("best")) or (run.best_step is not None and record["step"] == run.best_step)}
        )  # fmt: skip
    return rows


def _scores(metrics: dict) -> dict:
    return {"clip_score": metrics.get("clip_score"), "fid": metrics.get("fid_clip")}


@staff_required
@require_GET
def memory_estimate(request):
    """The launch form's settings -> the estimated peak GPU memory and a preset per card size (JSON)."""
    configured = base_models.available_base_model(request.GET.get("base_model_key", ""))
    if configured is None:
        return JsonResponse({"error": "Choose a base model."}, status=400)
    form = LaunchForm()
    values = {}
    for name in services.LAUNCH_FIELDS:
        field = form.fields.get(name)
        if field is None or name == "validation_prompts" or request.GET.get(name, "") == "":
            continue
        try:
            values[name] = field.clean(request.GET[name])
        except ValidationError as error:
            return JsonResponse({"error": f"{field.label or name}: {' '.join(error.messages)}"}, status=400)
    try:
        config = services.build_config(configured.checkpoint, **values)
    except ValidationError as error:
        return JsonResponse({"error": " ".join(error.messages)}, status=400)
    return JsonResponse(base_models.memory_estimate(configured, config))


@login_required
@require_GET
def run_detail(request, pk):
    run = selectors.run_for(request.user, pk)
    return render(
        request,
        "training/detail.html",
        {
            "run": run,
            "registered_model": registry.get(run.base_model_key),
            "state": _status(run),
            "evaluation_rows": _evaluation_rows(run),
            "creators": selectors.usage_by_creator(run),
            "outputs": [(kind, spec[1]) for kind, spec in OUTPUT_FILES.items() if getattr(run, spec[0])]
            if run.status == TrainingRun.Status.SUCCEEDED
            else [],
        },
    )


@login_required
@require_GET
def run_status(request, pk):
    return JsonResponse(_status(selectors.run_for(request.user, pk)))


@staff_required
@require_POST
def cancel(request, pk):
    run = selectors.run_for(request.user, pk)
    run = services.cancel_run(run, actor=request.user)
    messages.info(request, "Canceled." if run.status == TrainingRun.Status.CANCELED else "Stopping at the next step.")
    return redirect("training:detail", run.pk)


@login_required
@require_GET
def run_file(request, pk, kind, index=None):
    """Stream an output or a validation sample to staff and the licence holder (404 to anyone else)."""
    run = selectors.run_for(request.user, pk)
    if kind == "sample" and index is not None:
        if index >= len(run.samples):
            raise Http404("No such sample.")
        name, download, as_attachment = run.samples[index]["path"], f"run-{run.pk}-sample-{index}.png", False
    elif kind in OUTPUT_FILES and index is None:
        field_name, download, as_attachment = OUTPUT_FILES[kind]
        name = getattr(run, field_name)
        if not name or run.status != TrainingRun.Status.SUCCEEDED:
            raise Http404("This file is not ready.")
    else:
        raise Http404("No such file.")
    if as_attachment and (redirect_response := download_redirect(default_storage, name, filename=download)):
        return redirect_response  # S3: the weights come straight from the bucket
    response = FileResponse(
        default_storage.open(name, "rb"),
        content_type=mimetypes.guess_type(download)[0] or "application/octet-stream",
        as_attachment=as_attachment,
        filename=download,
    )
    response["Cache-Control"] = "private, max-age=3600"
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = "default-src 'none'; img-src 'self'; sandbox"
    return response
