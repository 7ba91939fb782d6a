"""Signed, expiring, per-buyer download links for licensed pack files.

A link names the licence, the export's build and the file, and is signed with the site's secret. It is
a bearer credential, so that `curl` and scripts work without a session: whoever holds it can download
with it until it expires (DOWNLOAD_LINK_SECONDS, short, because a link leaks: chat, browser history,
proxy logs). It is bound to its buyer all the same: it stops working when it expires, when the licence
is revoked (a refund), when the export is built again (a link names the files it was listed with, never
whatever a later build put under that name), and in anyone else's logged-in session. Fresh links come
from the downloads page or, for scripts, the API's `downloads_url` with the buyer's token.
"""

import datetime as dt

from django.conf import settings
from django.core import signing

from marketplace.commerce.models import PackLicence
from marketplace.packs import exports
from marketplace.packs.models import PackExport

SALT = "marketplace.commerce.download"


class DownloadRefused(Exception):
    """403: the message says why; `licence_id` is the licence whose downloads page gives fresh links, when
    the link was genuine."""

    def __init__(self, message: str, *, licence_id: str = ""):
        super().__init__(message)
        self.licence_id = licence_id


def _build_stamp(export: PackExport) -> int:
    """Which build of the export a link was made for: the moment it finished, in whole microseconds."""
    if export.finished_at is None:
        return 0
    return (export.finished_at - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)


def make_token(licence: PackLicence, export: PackExport, name: str) -> str:
    payload = {"l": str(licence.pk), "b": licence.buyer_id, "e": export.pk, "v": _build_stamp(export), "f": name}
    return signing.dumps(payload, salt=SALT, compress=True)


def resolve(token: str, user) -> dict:
    """The {name, path, bytes, sha256} entry of the ready export's file that this link gives `user` (every
    check done: the caller only serves `path`), or DownloadRefused."""
    try:
        payload = signing.loads(token, salt=SALT, max_age=settings.DOWNLOAD_LINK_SECONDS)
    except signing.SignatureExpired:
        minutes = max(settings.DOWNLOAD_LINK_SECONDS // 60, 1)
        genuine = signing.loads(token, salt=SALT)  # signed by us, only too old: say where fresh links are
        raise DownloadRefused(
            f"This download link has expired: links work for {minutes} minutes. Open your licence's downloads "
            "page (or ask the API's downloads_url) for a fresh one.",
            licence_id=str(genuine.get("l", "")),
        ) from None
    except signing.BadSignature:
        raise DownloadRefused("This download link is not valid.") from None
    if user.is_authenticated and user.pk != payload["b"]:
        raise DownloadRefused("This download link belongs to another buyer.")
    licence_id = payload["l"]
    licence = PackLicence.objects.filter(pk=licence_id, buyer_id=payload["b"]).first()
    if licence is None or not licence.is_active:
        raise DownloadRefused("The licence for this download is not active.", licence_id=licence_id)
    export = PackExport.objects.filter(pk=payload["e"], version_id=licence.version_id).first()
    if export is None:
        raise DownloadRefused("This download is not ready.", licence_id=licence_id)
    try:
        entry = exports.export_file(export, payload["f"])
    except exports.ExportFileNotFound as error:
        raise DownloadRefused(str(error), licence_id=licence_id) from None
    if payload.get("v") != _build_stamp(export):
        raise DownloadRefused(
            "This download was built again since this link was made. Open your licence's downloads page for a "
            "fresh link.",
            licence_id=licence_id,
        )
    return entry
