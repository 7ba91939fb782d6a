"""Signed, expiring, per-buyer download links for licensed pack files.

A link names the licence, the export and the file, and is signed with the site's secret; it is the
credential (so that `curl` works) but is bound to its buyer: it stops working when it expires, when the
licence is revoked, and in anyone else's logged-in session.
"""

from django.conf import settings
from django.core import signing

from marketplace.commerce.models import PackLicence
from marketplace.packs import exports
from marketplace.packs.models import PackExport

SALT = "marketplace.commerce.download"


class DownloadRefused(Exception):
    """403: the message says why."""


def make_token(licence: PackLicence, export: PackExport, name: str) -> str:
    payload = {"l": str(licence.pk), "b": licence.buyer_id, "e": export.pk, "f": name}
    return signing.dumps(payload, salt=SALT, compress=True)


def resolve(token: str, user) -> tuple[PackExport, str]:
    """The ready export and the name of its file that this link gives `user`, or DownloadRefused."""
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
    if export is None:
        raise DownloadRefused("This download is not ready.")
    try:
        entry = exports.export_file(export, payload["f"])
    except exports.ExportFileNotFound as error:
        raise DownloadRefused(str(error)) from None
    return export, entry["name"]
