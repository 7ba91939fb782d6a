"""Reads of commerce: a buyer's licences, orders, downloads and revocation notices."""

from django.db.models import QuerySet
from django.http import Http404
from django.urls import reverse

from marketplace.commerce import downloads
from marketplace.commerce.models import Order, PackLicence
from marketplace.packs.models import PackExport, Revocation


def buyer_licences(user) -> QuerySet[PackLicence]:
    return PackLicence.objects.filter(buyer=user).select_related("version", "version__pack", "order")


def buyer_orders(user) -> QuerySet[Order]:
    return Order.objects.filter(buyer=user).select_related("version", "version__pack")


def revocation_notices(user) -> QuerySet[Revocation]:
    """Items withdrawn from versions the buyer licenses (or licensed), newest first."""
    versions = PackLicence.objects.filter(buyer=user).values("version_id")
    return (
        Revocation.objects.filter(version_id__in=versions)
        .select_related("version", "version__pack", "item", "item__creator")
        .order_by("-revoked_at", "-id")
    )


def visible_order(user, pk) -> Order:
    """The buyer's own order; staff see every order. Anyone else: 404."""
    orders = Order.objects.select_related("version", "version__pack", "buyer")
    if not user.is_staff:
        orders = orders.filter(buyer=user)
    try:
        return orders.get(pk=pk)
    except Order.DoesNotExist:
        raise Http404("No such order") from None


def own_licence(user, pk) -> PackLicence:
    try:
        return buyer_licences(user).get(pk=pk)
    except PackLicence.DoesNotExist:
        raise Http404("No such licence") from None


def licence_exports(licence: PackLicence) -> list[PackExport]:
    return list(PackExport.objects.filter(version_id=licence.version_id).order_by("kind"))


def download_listing(licence: PackLicence) -> list[dict]:
    """Each download format of the licensed version with, once built, its files and fresh signed links."""
    rows = []
    for export in licence_exports(licence):
        files = []
        if export.status == PackExport.Status.READY:
            for entry in export.files:
                token = downloads.make_token(licence, export, entry["name"])
                files.append({**entry, "url": reverse("commerce:download-file", args=[token])})
        rows.append({"export": export, "files": files})
    return rows
