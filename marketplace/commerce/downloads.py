"""Signed, expiring, per-buyer download links for licensed pack files.

A link names the licence, the export and the file, and is signed with the site's secret; it is the
credential (so that `curl` works) but is bound to its buyer: it stops working when it expires, when the
licence is revoked, and in anyone else's logged-in session.
"""

from dataclasses import dataclass

from django.conf import settings
from django.core import signing

from marketplace.commerce.models import PackLicence
from marketplace.packs.models import PackExport

SALT = "marketplace.commerce.download"


class DownloadRefused(Exception):
    """403: the message says why."""


@dataclass(frozen=True)
class DownloadFile:
    path: str
    name: str
    size: int


def make_token(licence: PackLicence, export: PackExport, name: str) -> str:
    payload = {"l": str(licence.pk), "b": licence.buyer_id, "e": export.pk, "f": name}
    return signing.dumps(payload, salt=SALT, compress=True)


def resolve(token: str, user) -> DownloadFile:
    try:
        payload = signing.loads(token, salt=SALT, max_age=settings.DOWNLOAD_LINK_SECONDS)
    except signing.SignatureExpired:
        raise DownloadRefused(
            "This download link has expired. Open your licence's downloads page for a new one."
        ) from None
    except signing.BadSignature:
        raise DownloadRefused("This download link is not valid.") from None
    if user.is_authenticated and user.pk != payload["b"]:
        raise DownloadRefused("This download link belongs to another buyer.")
    licence = PackLicence.objects.filter(pk=payload["l"], buyer_id=payload["b"]).first()
    if licence is None or not licence.is_active:
        raise DownloadRefused("The licence for this download is not active.")
    export = PackExport.objects.filter(pk=payload["e"], version_id=licence.version_id).first()
    if export is None or export.status != PackExport.Status.READY:
        raise DownloadRefused("This download is not ready.")
    for entry in export.files:
        if entry["name"] == payload["f"]:
            return DownloadFile(path=entry["path"], name=entry["name"], size=entry["bytes"])
    raise DownloadRefused("This file is not part of the download.")
