"""Writes to the catalog: uploads, metadata and consent, withdrawal, staff takedowns, post-upload processing."""

import logging
import uuid
from contextlib import contextmanager
from datetime import UTC
from functools import partial

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.utils import timezone

from marketplace.catalog import imagemeta, imaging, licences, signals
from marketplace.catalog.models import Asset, AssetEvent, Tag
from marketplace.catalog.validation import (
    UploadRejected,
    check_size,
    clean_filename,
    inspect_image,
    inspect_release,
)
from marketplace.core import metrics

logger = logging.getLogger(__name__)

MAX_TAGS = 30
MAX_TAG_LENGTH = 50
METADATA_FIELDS = (
    "title",
    "description",
    "tags",
    "licence",
    "ai_training_consent",
    "rights_override_confirmed",
    "people_identifiable",
)
RELEASE_FIELDS = ("model_release", "property_release")
# The creator's offer and agreement: what they license, to whom it may be trained on, their word on the
# rights and on the people in it, and the releases that back that word. Only the owner may set them.
RIGHTS_FIELDS = {
    "licence": "licence",
    "ai_training_consent": "AI-training consent",
    "rights_override_confirmed": "rights confirmation",
    "people_identifiable": "people-identifiable declaration",
    "model_release": "model release",
    "property_release": "property release",
}
# What staff may correct on someone else's image (moderation of its public text); each change is in the
# image's history under the staff member's name.
MODERATION_FIELDS = ("title", "description", "tags")
TAKEDOWN_REASON_MAX = Asset._meta.get_field("takedown_reason").max_length


class DuplicateUpload(UploadRejected):
    def __init__(self, existing: Asset):
        super().__init__("duplicate", "You already uploaded this exact image.")
        self.existing = existing


# --- helpers -------------------------------------------------------------------------


@contextmanager
def _files_removed_on_failure():
    """Collect stored file names; delete them all if the block fails, so nothing is left half-written."""
    saved: list[str] = []
    try:
        yield saved
    except BaseException:
        for name in saved:
            try:
                default_storage.delete(name)
            except Exception:  # pragma: no cover - best effort, the original error matters more
                logger.exception("could not remove %s after a failed write", name)
        raise


def _read_upload(uploaded_file) -> bytes:
    if uploaded_file.size is not None:
        check_size(uploaded_file.size)  # refuse before reading the body into memory
    uploaded_file.seek(0)
    return uploaded_file.read()


def normalise_tags(raw) -> list[str]:
    if raw is None:
        return []
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    tags: list[str] = []
    for item in items:
        tag = " ".join(str(item).split()).lower()
        if not tag:
            continue
        if len(tag) > MAX_TAG_LENGTH:
            raise ValidationError({"tags": f"Tags are at most {MAX_TAG_LENGTH} characters: “{tag[:20]}…” is longer."})
        if tag not in tags:
            tags.append(tag)
    if len(tags) > MAX_TAGS:
        raise ValidationError({"tags": f"At most {MAX_TAGS} tags per image."})
    return tags


def ensure_can_edit(actor, asset: Asset, fields=()) -> None:
    """The owner may change anything; staff only the moderation fields (and may retry processing)."""
    if asset.owner_id == actor.pk:
        return
    if not actor.is_staff:
        raise PermissionDenied("Only the image's creator can change it.")
    rights = [label for name, label in RIGHTS_FIELDS.items() if name in fields]
    if rights:
        raise PermissionDenied(
            f"Only the image's creator can change its {', '.join(rights)}. "
            f"Staff may correct its {', '.join(MODERATION_FIELDS)}, or take it down."
        )


def ensure_can_withdraw(actor, asset: Asset) -> None:
    """Withdrawal is the creator's act alone (the service and the page that asks to confirm it)."""
    if asset.owner_id != actor.pk:
        raise PermissionDenied(
            "Only the image's creator can withdraw it; staff take an image down instead, with a reason."
        )


def ensure_staff(actor, *, act: str) -> None:
    if not actor.is_staff:
        raise PermissionDenied(f"Only staff can {act}.")


def ensure_can_take_down(actor) -> None:
    ensure_staff(actor, act="take an image down")


# --- uploading -----------------------------------------------------------------------


def upload_asset(*, owner, uploaded_file, metadata: dict | None = None, releases: dict | None = None) -> Asset:
    """Validate and store one uploaded image; its processing is queued once the row is committed.

    Either everything is stored (file, row, history) or nothing is.
    """
    if not owner.is_creator:
        raise PermissionDenied("Only creators can upload images. Turn on the creator role in your account.")
    filename = clean_filename(uploaded_file.name)  # a name that is refused is refused before the bytes are read
    data = _read_upload(uploaded_file)
    inspected = inspect_image(data)
    existing = Asset.objects.filter(owner=owner, sha256=inspected.sha256).first()
    if existing:
        raise DuplicateUpload(existing)
    embedded = imagemeta.read_embedded_metadata(data)

    from marketplace.catalog import tasks

    try:
        with _files_removed_on_failure() as saved, transaction.atomic():
            asset = Asset(
                owner=owner,
                original_filename=filename,
                sha256=inspected.sha256,
                format=inspected.format,
                byte_size=inspected.byte_size,
                width=inspected.width,
                height=inspected.height,
                embedded_creator=embedded.creator[:300],
                embedded_copyright=embedded.copyright[:500],
                embedded_data_mining=embedded.data_mining[:100],
                embedded_prohibits_ai_training=embedded.ai_training_prohibited,
            )
            asset.original.save(uploaded_file.name or "upload", ContentFile(data), save=False)
            saved.append(asset.original.name)
            asset.save()
            AssetEvent.objects.create(
                asset=asset,
                actor=owner,
                kind=AssetEvent.Kind.UPLOADED,
                details={"filename": asset.original_filename, "sha256": asset.sha256, "bytes": asset.byte_size},
            )
            if metadata or releases:
                _apply_metadata(asset, actor=owner, changes=metadata or {}, releases=releases or {}, saved=saved)
            transaction.on_commit(partial(tasks.prepare_asset.delay, asset.pk))
            transaction.on_commit(metrics.record_upload)
    except IntegrityError:
        # Two uploads of the same file raced: the unique constraint let only one in.
        existing = Asset.objects.filter(owner=owner, sha256=inspected.sha256).first()
        if existing:
            raise DuplicateUpload(existing) from None
        raise
    return asset


# --- metadata and consent --------------------------------------------------------------


def update_asset_metadata(asset: Asset, *, actor, changes: dict, releases: dict | None = None) -> Asset:
    ensure_can_edit(actor, asset, [*changes, *(releases or {})])
    with _files_removed_on_failure() as saved, transaction.atomic():
        locked = Asset.objects.select_for_update().get(pk=asset.pk)
        _apply_metadata(locked, actor=actor, changes=changes, releases=releases or {}, saved=saved)
    return locked


def bulk_update_metadata(*, actor, assets: list[Asset], changes: dict, releases: dict | None = None) -> list[Asset]:
    """Apply the same changes to many images at once: all of them change, or none (errors name each image)."""
    if not assets:
        raise ValidationError({"assets": "Choose at least one image."})
    for asset in assets:
        ensure_can_edit(actor, asset, [*changes, *(releases or {})])
    errors: dict[str, list[str]] = {}
    updated: list[Asset] = []
    with _files_removed_on_failure() as saved, transaction.atomic():
        # Lock in primary-key order so that concurrent batch edits cannot deadlock.
        locked = list(Asset.objects.select_for_update().filter(pk__in=[a.pk for a in assets]).order_by("pk"))
        for asset in locked:
            label = asset.display_title  # before the batch's own title is applied to it
            try:
                with transaction.atomic():
                    _apply_metadata(asset, actor=actor, changes=changes, releases=releases or {}, saved=saved)
                updated.append(asset)
            except ValidationError as error:
                for message in _messages(error):
                    errors.setdefault(str(asset.pk), []).append(f"{label}: {message}")
        if errors:
            raise ValidationError(errors)
    return updated


def _messages(error: ValidationError) -> list[str]:
    if hasattr(error, "error_dict"):
        return [m for messages in error.message_dict.values() for m in messages]
    return list(error.messages)


def _apply_metadata(asset: Asset, *, actor, changes: dict, releases: dict, saved: list[str]) -> None:
    unknown = set(changes) - set(METADATA_FIELDS)
    if unknown:
        raise ValidationError({name: "This field cannot be changed." for name in sorted(unknown)})
    if asset.is_withdrawn:
        raise ValidationError("This image was withdrawn; it can no longer be changed.")
    now = timezone.now()
    changed: dict[str, list] = {}
    errors: dict[str, str] = {}

    for field, limit in (("title", 200), ("description", 5000)):
        if field in changes:
            value = " ".join(str(changes[field] or "").split()) if field == "title" else str(changes[field] or "")
            if len(value) > limit:
                errors[field] = f"At most {limit} characters."
            elif value != getattr(asset, field):
                changed[field] = [getattr(asset, field), value]
                setattr(asset, field, value)

    if "licence" in changes:
        code = changes["licence"] or ""
        if code and licences.get(code) is None:
            errors["licence"] = f"Unknown licence “{code}”. Choose one of: {', '.join(licences.BY_CODE)}."
        elif code != asset.licence:
            changed["licence"] = [asset.licence, code]
            asset.licence = code

    new_tags = None
    if "tags" in changes:
        try:
            new_tags = normalise_tags(changes["tags"])
        except ValidationError as error:
            errors["tags"] = _messages(error)[0]

    override_now = bool(changes.get("rights_override_confirmed"))
    if "rights_override_confirmed" in changes and not override_now and asset.rights_override_confirmed_at:
        asset.rights_override_confirmed_at = None
        changed["rights_override_confirmed"] = [True, False]
    if override_now and not asset.rights_override_confirmed_at:
        asset.rights_override_confirmed_at = now
        AssetEvent.objects.create(asset=asset, actor=actor, kind=AssetEvent.Kind.RIGHTS_OVERRIDE_CONFIRMED)
        transaction.on_commit(partial(signals.rights_override_confirmed.send, sender=Asset, asset_id=asset.pk))

    consent = bool(changes.get("ai_training_consent", asset.ai_training_consent))
    if consent and asset.embedded_prohibits_ai_training and not asset.rights_override_confirmed_at:
        errors["ai_training_consent"] = (
            f"The file's embedded metadata prohibits AI training ({asset.embedded_data_mining or 'IPTC Data Mining'}). "
            "Confirm that you hold the rights to override it before you consent."
        )
    elif consent != asset.ai_training_consent:
        asset.ai_training_consent = consent
        asset.consent_given_at = now if consent else None
        AssetEvent.objects.create(
            asset=asset,
            actor=actor,
            kind=AssetEvent.Kind.CONSENT_GIVEN if consent else AssetEvent.Kind.CONSENT_WITHDRAWN,
            details={"licence": asset.licence},
        )
        if not consent:
            transaction.on_commit(
                partial(signals.asset_withdrawn.send, sender=Asset, asset_id=asset.pk, reason="consent_withdrawn")
            )

    release_data: dict[str, tuple[bytes, str]] = {}
    for field in RELEASE_FIELDS:
        upload = releases.get(field)
        if upload is None:
            continue
        upload.seek(0)
        data = upload.read()
        try:
            release_data[field] = (data, inspect_release(data))
        except UploadRejected as rejection:
            errors[field] = rejection.message

    people = bool(changes.get("people_identifiable", asset.people_identifiable))
    if people and not asset.model_release and "model_release" not in release_data:
        errors["model_release"] = "A model release is required when people are identifiable. Attach it as PDF or scan."
    elif people != asset.people_identifiable:
        changed["people_identifiable"] = [asset.people_identifiable, people]
        asset.people_identifiable = people

    if errors:
        raise ValidationError(errors)

    for field, (data, extension) in release_data.items():
        name = default_storage.save(f"releases/{asset.owner_id}/{uuid.uuid4().hex}.{extension}", ContentFile(data))
        saved.append(name)
        changed[field] = [bool(getattr(asset, field)), "replaced" if getattr(asset, field) else "attached"]
        setattr(asset, field, name)

    asset.save()
    if new_tags is not None and new_tags != asset.tag_names:
        changed["tags"] = [asset.tag_names, new_tags]
        asset.tags.set([Tag.objects.get_or_create(name=name)[0] for name in new_tags])
    if changed:
        AssetEvent.objects.create(asset=asset, actor=actor, kind=AssetEvent.Kind.METADATA_CHANGED, details=changed)


def withdraw_asset(asset: Asset, *, actor) -> Asset:
    """The creator takes an image out of every future pack. Its row, files and history stay for the record.

    Only the creator: staff remove an image with `take_down_asset`, which records the platform's act.
    """
    ensure_can_withdraw(actor, asset)
    with transaction.atomic():
        locked = Asset.objects.select_for_update().get(pk=asset.pk)
        if locked.withdrawn_at is None:
            locked.withdrawn_at = timezone.now()
            locked.save(update_fields=["withdrawn_at", "updated_at"])
            AssetEvent.objects.create(asset=locked, actor=actor, kind=AssetEvent.Kind.WITHDRAWN)
            transaction.on_commit(
                partial(signals.asset_withdrawn.send, sender=Asset, asset_id=locked.pk, reason="withdrawn")
            )
    return locked


# --- staff takedowns -------------------------------------------------------------------------------


def take_down_asset(asset: Asset, *, actor, reason: str) -> Asset:
    """Staff remove an image from sale and from every pack, for a reason the creator is shown.

    Like a withdrawal it revokes the image from published versions (as a takedown by the platform), but it
    is the platform's act: recorded as such, never shown as the creator's, and liftable by `reinstate_asset`.
    """
    ensure_can_take_down(actor)
    reason = reason.strip() if isinstance(reason, str) else ""
    if not reason:
        raise ValidationError({"reason": "Give the reason for the takedown: the creator is shown it."})
    if len(reason) > TAKEDOWN_REASON_MAX:
        raise ValidationError({"reason": f"At most {TAKEDOWN_REASON_MAX} characters."})
    with transaction.atomic():
        locked = Asset.objects.select_for_update().get(pk=asset.pk)
        if locked.is_withdrawn:
            raise ValidationError("Its creator already withdrew this image: it is in no pack and not for sale.")
        if locked.is_taken_down:
            raise ValidationError("This image is already taken down.")
        locked.taken_down_at = timezone.now()
        locked.takedown_reason = reason
        locked.save(update_fields=["taken_down_at", "takedown_reason", "updated_at"])
        AssetEvent.objects.create(
            asset=locked, actor=actor, kind=AssetEvent.Kind.TAKEN_DOWN, details={"reason": reason}
        )
        transaction.on_commit(
            partial(signals.asset_withdrawn.send, sender=Asset, asset_id=locked.pk, reason="takedown")
        )
    return locked


def reinstate_asset(asset: Asset, *, actor) -> Asset:
    """Staff lift their takedown, so the image may enter future packs again; the creator cannot.

    Refused once a published pack version depends on the takedown: packs decide that (see
    `marketplace.packs.receivers.refuse_lifting_a_published_takedown`) through `signals.takedown_lifting`.
    """
    ensure_staff(actor, act="reinstate an image the platform took down")
    with transaction.atomic():
        locked = Asset.objects.select_for_update().get(pk=asset.pk)
        if not locked.is_taken_down:
            raise ValidationError("This image is not taken down.")
        signals.takedown_lifting.send(sender=Asset, asset_id=locked.pk)
        details = {"takedown_reason": locked.takedown_reason, "taken_down_at": locked.taken_down_at.isoformat()}
        locked.taken_down_at = None
        locked.takedown_reason = ""
        locked.save(update_fields=["taken_down_at", "takedown_reason", "updated_at"])
        AssetEvent.objects.create(asset=locked, actor=actor, kind=AssetEvent.Kind.REINSTATED, details=details)
    return locked


# --- post-upload processing -----------------------------------------------------------------


def _derived_name(asset: Asset, kind: str, extension: str) -> str:
    return f"derived/{asset.pk}/{kind}.{extension}"


def _store_derived(name: str, data: bytes) -> str:
    # A retry rewrites the same names; delete first so storage does not pick a new name.
    if default_storage.exists(name):
        default_storage.delete(name)
    return default_storage.save(name, ContentFile(data))


def prepare_asset(asset_id: int) -> Asset | None:
    """Make thumbnails, hashes and the location-free delivery copy. Idempotent: safe to run twice."""
    asset = Asset.objects.filter(pk=asset_id).first()
    if asset is None or asset.status == Asset.Status.READY:
        return asset
    with default_storage.open(asset.original.name, "rb") as handle:
        data = handle.read()
    try:
        prepared = imaging.prepare_image(data, preview_px=settings.PREVIEW_PX, thumb_px=settings.THUMBNAIL_PX)
    except imaging.ImageProcessingError as error:
        return mark_processing_failed(asset_id, str(error))
    if prepared.sha256 != asset.sha256:
        return mark_processing_failed(asset_id, "The stored file does not match the upload's checksum.")

    extension = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}[prepared.format]
    names = {
        "thumbnail": _store_derived(_derived_name(asset, "thumbnail", "jpg"), prepared.thumbnail),
        "preview": _store_derived(_derived_name(asset, "preview", "jpg"), prepared.preview),
        "delivery": _store_derived(_derived_name(asset, "delivery", extension), prepared.delivery),
    }
    meta = prepared.metadata
    captured_at = meta.captured_at
    if captured_at is not None and timezone.is_naive(captured_at):
        captured_at = captured_at.replace(tzinfo=UTC)  # camera clocks carry no zone: read as UTC
    with transaction.atomic():
        locked = Asset.objects.select_for_update().filter(pk=asset_id).first()
        if locked is None or locked.status == Asset.Status.READY:
            return locked
        for field, name in names.items():
            setattr(locked, field, name)
        locked.width, locked.height = prepared.width, prepared.height
        locked.phash = prepared.phash
        locked.delivery_lossless = prepared.delivery_lossless
        locked.location_removed = bool(prepared.removed_metadata)
        locked.camera_make = meta.camera_make[:100]
        locked.camera_model = meta.camera_model[:100]
        locked.lens_model = meta.lens_model[:150]
        locked.captured_at = captured_at
        locked.status = Asset.Status.READY
        locked.failure_reason = ""
        locked.processed_at = timezone.now()
        locked.save()
        AssetEvent.objects.create(
            asset=locked,
            kind=AssetEvent.Kind.PROCESSED,
            details={"removed_metadata": list(prepared.removed_metadata), "lossless": prepared.delivery_lossless},
        )
        transaction.on_commit(partial(signals.asset_ready.send, sender=Asset, asset_id=locked.pk))
    return locked


def mark_processing_failed(asset_id: int, reason: str) -> Asset | None:
    with transaction.atomic():
        asset = Asset.objects.select_for_update().filter(pk=asset_id).first()
        if asset is None or asset.status == Asset.Status.READY:
            return asset
        asset.status = Asset.Status.FAILED
        asset.failure_reason = reason
        asset.save(update_fields=["status", "failure_reason", "updated_at"])
        AssetEvent.objects.create(asset=asset, kind=AssetEvent.Kind.PROCESSING_FAILED, details={"reason": reason})
    return asset


def requeue_unfinished(*, include_failed: bool = False) -> int:
    """Queue processing again for images whose task was lost (e.g. a broker wiped); returns how many."""
    from marketplace.catalog import tasks

    statuses = [Asset.Status.PROCESSING] + ([Asset.Status.FAILED] if include_failed else [])
    ids = list(Asset.objects.filter(status__in=statuses).values_list("pk", flat=True))
    if include_failed:
        Asset.objects.filter(pk__in=ids, status=Asset.Status.FAILED).update(
            status=Asset.Status.PROCESSING, failure_reason=""
        )
    for asset_id in ids:
        tasks.prepare_asset.delay(asset_id)
    return len(ids)


def retry_processing(asset: Asset, *, actor) -> Asset:
    """Queue processing again for an image whose processing failed."""
    from marketplace.catalog import tasks

    ensure_can_edit(actor, asset)
    with transaction.atomic():
        locked = Asset.objects.select_for_update().get(pk=asset.pk)
        if locked.status != Asset.Status.FAILED:
            return locked
        locked.status = Asset.Status.PROCESSING
        locked.failure_reason = ""
        locked.save(update_fields=["status", "failure_reason", "updated_at"])
        transaction.on_commit(partial(tasks.prepare_asset.delay, locked.pk))
    return locked
