"""Pack pages: the public catalogue and version pages, and the staff pages that build and publish packs."""

import mimetypes

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage
from django.core.paginator import Paginator
from django.http import FileResponse, Http404, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from marketplace.core.decorators import staff_required
from marketplace.core.money import format_cents
from marketplace.packs import selectors, services
from marketplace.packs.datasheet import render_html
from marketplace.packs.forms import PackForm
from marketplace.packs.models import Pack, PackExport

THUMBNAILS_PER_PAGE = 48


# --- public -----------------------------------------------------------------------------------------


def pack_list(request):
    return render(request, "packs/pack_list.html", {"listed": selectors.listed_packs()})


def pack_detail(request, slug):
    pack = get_object_or_404(Pack, slug=slug)
    latest = selectors.latest_version(pack)
    if latest is None:
        raise Http404("This pack has no published version yet.")
    return redirect("packs:version", slug=slug, number=latest.number)


def version_detail(request, slug, number):
    version = selectors.get_version(slug, number)
    latest = selectors.latest_version(version.pack)
    page = Paginator(selectors.public_items(version), THUMBNAILS_PER_PAGE).get_page(request.GET.get("page"))
    sections = [
        {"heading": section["heading"], "html": render_html(section["text"])}
        for section in version.datasheet.get("sections", [])
    ]
    # Buy only what checkout sells; a version no longer sold says why and offers the one that is.
    sale = selectors.sale_status(version)
    context = {
        "version": version,
        "latest": latest,
        "sale": sale,
        "current_price": format_cents(sale.current.price_cents, sale.current.currency) if sale.current else "",
        "page": page,
        "stats": selectors.version_stats(version),
        "sections": sections,
        "terms": version.licence_terms,
        "price": format_cents(version.price_cents, version.currency),
    }
    return render(request, "packs/version_detail.html", context)


def revocation_list(request, slug, number):
    version = selectors.get_version(slug, number)
    revocations = selectors.revocations(version)
    if request.GET.get("format") == "json":
        # Who took each item out is public: "takedown" is the platform's act, never reported as the creator's.
        return JsonResponse(
            {
                "pack": version.pack.slug,
                "version": version.number,
                "manifest_sha256": version.manifest_sha256,
                "revocations": [
                    {
                        "key": revocation.item.key,
                        "title": revocation.item.title,
                        "creator": revocation.item.creator.username,
                        "reason": revocation.reason,
                        "reason_label": revocation.get_reason_display(),
                        "revoked_at": revocation.revoked_at.isoformat(),
                    }
                    for revocation in revocations
                ],
            }
        )
    return render(request, "packs/revocations.html", {"version": version, "revocations": revocations})


def item_thumbnail(request, slug, number, item_pk):
    """The small thumbnail of an item still in this version; never a larger file, never another item's."""
    version = selectors.get_version(slug, number)
    item = selectors.public_items(version).select_related("asset").filter(pk=item_pk).first()
    if item is None or not item.asset.thumbnail:
        raise Http404("No such image in this pack version.")
    name = item.asset.thumbnail.name
    try:
        handle = default_storage.open(name, "rb")
    except OSError:
        raise Http404("This thumbnail is not available.") from None
    response = FileResponse(handle, content_type=mimetypes.guess_type(name)[0] or "application/octet-stream")
    # Short public caching: a withdrawn image leaves the page within minutes.
    response["Cache-Control"] = "public, max-age=300"
    response["Content-Security-Policy"] = "default-src 'none'; img-src 'self'; sandbox"
    return response


# --- staff --------------------------------------------------------------------------------------------


@staff_required
def staff_pack_list(request):
    return render(request, "packs/staff_list.html", {"packs": selectors.staff_packs()})


def _add_errors(form: PackForm, error: ValidationError) -> None:
    if not hasattr(error, "error_dict"):
        form.add_error(None, error)
        return
    for name, errors in error.error_dict.items():
        form.add_error(name if name in form.fields else None, errors)


@staff_required
def staff_pack_edit(request, pk=None):
    pack = get_object_or_404(Pack, pk=pk) if pk else None
    if request.method == "POST":
        form = PackForm(request.POST)
        if form.is_valid():
            try:
                pack = services.save_pack(actor=request.user, pack=pack, **form.pack_fields())
            except ValidationError as error:
                _add_errors(form, error)
            else:
                messages.success(request, "Pack saved. The preview shows what publishing would freeze now.")
                return redirect("packs:staff-edit", pk=pack.pk)
    else:
        form = PackForm(initial=PackForm.initial_for(pack) if pack else None)

    selection, selection_error = None, ""
    if pack is not None and request.method == "GET":
        try:
            selection = services.preview_selection(pack)
        except ValidationError as error:
            selection_error = " ".join(error.messages)
    context = {
        "pack": pack,
        "form": form,
        "selection": selection,
        "selection_error": selection_error,
        "versions": pack.versions.prefetch_related("exports") if pack else [],
    }
    return render(request, "packs/staff_edit.html", context)


@staff_required
@require_POST
def staff_export_rebuild(request, pk, export_pk):
    """Build a download again: one that failed, or whose build was lost with its worker or broker."""
    from marketplace.packs.exports import ExportError, retry_export

    export = get_object_or_404(PackExport.objects.select_related("version"), pk=export_pk, version__pack_id=pk)
    try:
        retry_export(export)
    except ExportError as error:
        messages.error(request, str(error))
    else:
        messages.success(request, f"{export.get_kind_display()} of v{export.version.number} queued for building.")
    return redirect("packs:staff-edit", pk=pk)


@staff_required
@require_POST
def staff_pack_publish(request, pk):
    pack = get_object_or_404(Pack, pk=pk)
    try:
        version = services.publish_version(pack, actor=request.user)
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
        return redirect("packs:staff-edit", pk=pack.pk)
    if version.is_new:
        messages.success(request, f"Published version {version.number} with {version.item_count} images.")
    else:
        messages.info(request, f"Nothing changed since version {version.number}: no new version was published.")
    return redirect("packs:version", slug=pack.slug, number=version.number)
