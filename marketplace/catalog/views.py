"""HTML pages for creators: upload, my uploads, an image's page, editing, withdrawal, files; staff takedowns."""

import mimetypes

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.files.storage import default_storage
from django.core.paginator import Paginator
from django.http import FileResponse, Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from marketplace.catalog import licences, selectors, services
from marketplace.catalog.forms import AssetMetadataForm, AssetModerationForm, TakedownForm
from marketplace.core.storage import download_redirect

# URL name of each downloadable file -> (model field, sent as attachment)
FILE_KINDS = {
    "thumbnail": ("thumbnail", False),
    "preview": ("preview", False),
    "delivery": ("delivery", True),
    "original": ("original", True),
    "model-release": ("model_release", True),
    "property-release": ("property_release", True),
}


@login_required
def upload(request):
    if not request.user.is_creator:
        return render(request, "catalog/creator_required.html", status=403)
    context = {
        "licences": licences.LICENCES,
        "max_bytes": settings.UPLOAD_MAX_BYTES,
        "max_megabytes": f"{settings.UPLOAD_MAX_BYTES / 1_000_000:g}",
        "min_short_side": settings.UPLOAD_MIN_SHORT_SIDE,
    }
    return render(request, "catalog/upload.html", context)


@login_required
def my_uploads(request):
    own = selectors.visible_assets(request.user).filter(owner=request.user)
    filters = {key: request.GET.get(key, "").strip() for key in ("status", "licence", "consent", "tag", "q")}
    assets = selectors.filter_assets(
        own,
        status=filters["status"],
        licence=filters["licence"],
        consent=filters["consent"],
        tag=filters["tag"],
        search=filters["q"],
    )
    page = Paginator(assets, 48).get_page(request.GET.get("page"))
    context = {
        "page": page,
        "filters": filters,
        "counts": selectors.status_counts(own),
        "tags": selectors.tags_in_use(own),
        "licences": licences.LICENCES,
        "total": own.count(),
    }
    return render(request, "catalog/my_uploads.html", context)


@login_required
def asset_detail(request, pk):
    asset = selectors.get_visible_asset(request.user, pk)
    events = asset.events.select_related("actor")  # the history names who acted: one query, not one per event
    context = {"asset": asset, "events": events, "is_owner": asset.owner_id == request.user.pk}
    return render(request, "catalog/asset_detail.html", context)


def _refused(request, asset, denied: PermissionDenied):
    return render(request, "catalog/refused.html", {"asset": asset, "message": str(denied)}, status=403)


@login_required
def asset_edit(request, pk):
    asset = selectors.get_visible_asset(request.user, pk)
    if asset.is_withdrawn:
        messages.error(request, "This image was withdrawn; it can no longer be changed.")
        return redirect("catalog:asset", pk=asset.pk)
    initial = {
        "title": asset.title,
        "description": asset.description,
        "tags": ", ".join(asset.tag_names),
        "licence": asset.licence,
        "ai_training_consent": asset.ai_training_consent,
        "rights_override_confirmed": asset.rights_override_confirmed_at is not None,
        "people_identifiable": asset.people_identifiable,
    }
    # Staff may correct the text of someone else's image; its rights are its creator's alone.
    is_owner = asset.owner_id == request.user.pk
    form_class = AssetMetadataForm if is_owner else AssetModerationForm
    form = form_class(request.POST or None, request.FILES or None, initial=initial)
    context = {"asset": asset, "form": form, "is_owner": is_owner}
    if request.method == "POST" and not is_owner:
        try:
            # What was posted counts, not what the form shows: a rights field is refused, not dropped.
            services.ensure_can_edit(request.user, asset, [*request.POST, *request.FILES])
        except PermissionDenied as denied:
            form.is_valid()
            form.add_error(None, str(denied))
            return render(request, "catalog/asset_edit.html", context, status=403)
    if request.method == "POST" and form.is_valid():
        changes, releases = form.split()
        try:
            services.update_asset_metadata(asset, actor=request.user, changes=changes, releases=releases)
        except ValidationError as error:
            form.add_service_errors(error)
        else:
            messages.success(request, "Saved.")
            return redirect("catalog:asset", pk=asset.pk)
    return render(request, "catalog/asset_edit.html", context)


@login_required
def asset_withdraw(request, pk):
    asset = selectors.get_visible_asset(request.user, pk)
    try:
        services.ensure_can_withdraw(request.user, asset)
    except PermissionDenied as denied:
        return _refused(request, asset, denied)
    if request.method == "POST":
        services.withdraw_asset(asset, actor=request.user)
        messages.success(request, "Withdrawn: the image will not be in any future pack.")
        return redirect("catalog:asset", pk=asset.pk)
    return render(request, "catalog/asset_withdraw.html", {"asset": asset})


@login_required
def asset_takedown(request, pk):
    """Staff take an image down, with a reason its creator is shown."""
    asset = selectors.get_visible_asset(request.user, pk)
    try:
        services.ensure_can_take_down(request.user)
    except PermissionDenied as denied:
        return _refused(request, asset, denied)
    form = TakedownForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            services.take_down_asset(asset, actor=request.user, reason=form.cleaned_data["reason"])
        except ValidationError as error:
            form.add_service_errors(error)
        else:
            messages.success(request, "Taken down: it is out of every future pack and not for sale.")
            return redirect("catalog:asset", pk=asset.pk)
    return render(request, "catalog/asset_takedown.html", {"asset": asset, "form": form})


@login_required
@require_POST
def asset_reinstate(request, pk):
    """Staff lift their takedown (refused once a published pack version depends on it)."""
    asset = selectors.get_visible_asset(request.user, pk)
    try:
        services.reinstate_asset(asset, actor=request.user)
    except PermissionDenied as denied:
        return _refused(request, asset, denied)
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        messages.success(request, "Reinstated: the image may enter future packs again.")
    return redirect("catalog:asset", pk=asset.pk)


@login_required
@require_POST
def asset_retry(request, pk):
    asset = selectors.get_visible_asset(request.user, pk)
    services.retry_processing(asset, actor=request.user)
    messages.success(request, "Processing was queued again.")
    return redirect("catalog:asset", pk=asset.pk)


@login_required
def asset_file(request, pk, kind):
    """Stream one of an asset's files to its owner or staff; media have no public URL."""
    if kind not in FILE_KINDS:
        raise Http404("No such file.")
    asset = selectors.get_visible_asset(request.user, pk)
    field_name, as_attachment = FILE_KINDS[kind]
    stored = getattr(asset, field_name)
    if not stored:
        raise Http404("This file is not ready.")
    content_type = mimetypes.guess_type(stored.name)[0] or "application/octet-stream"
    extension = stored.name.rsplit(".", 1)[-1]
    filename = f"asset-{asset.pk}-{kind}.{extension}"
    # S3: a download comes straight from the bucket; images shown in pages stay here (CSP img-src 'self').
    if as_attachment and (redirect_response := download_redirect(default_storage, stored.name, filename=filename)):
        return redirect_response
    response = FileResponse(
        default_storage.open(stored.name, "rb"),
        content_type=content_type,
        as_attachment=as_attachment,
        filename=filename,
    )
    response["Cache-Control"] = "private, max-age=3600"
    # A file is data, never a page: no scripts, no plugins, even if a browser guessed wrong.
    response["Content-Security-Policy"] = "default-src 'none'; img-src 'self'; sandbox"
    return response


def licence_list(request):
    return render(request, "catalog/licences.html", {"licences": licences.LICENCES})
