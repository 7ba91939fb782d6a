"""Writes of packs: the staff recipe, the selection it makes, publishing frozen versions, revocations."""

import hashlib
import logging
from dataclasses import dataclass, field
from functools import partial

import numpy as np
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from marketplace.catalog import licences
from marketplace.catalog.models import Asset
from marketplace.core.ids import ID_RANGE, parse_id
from marketplace.curation import services as curation
from marketplace.curation.engine import clip
from marketplace.packs import datasheet, diversity, selectors, signals
from marketplace.packs.manifest import build_manifest, manifest_sha256
from marketplace.packs.models import Pack, PackItem, PackVersion, Revocation

logger = logging.getLogger(__name__)

FILTER_KEYS = ("tag", "licence", "creator", "min_short_side")
_READ_CHUNK = 1 << 20


# --- the staff recipe ------------------------------------------------------------------------


def save_pack(*, actor, pack: Pack | None = None, **fields) -> Pack:
    """Create or change a pack's recipe. Errors are keyed by the staff form's field names.

    Fields: title, slug, description, use, price_cents, query, filters (dict of FILTER_KEYS), picks and
    removals (asset ids), size (None for every eligible image), is_listed.
    """
    if not actor.is_staff:
        raise PermissionDenied("Only staff build packs.")
    pack = pack or Pack(created_by=actor)
    errors: dict[str, list[str]] = {}
    published = pack.pk is not None and pack.versions.exists()
    if published and fields.get("slug", pack.slug) != pack.slug:
        errors.setdefault("slug", []).append(
            "The slug cannot change once a version is published: its pages and manifests name it."
        )

    price = fields.get("price_cents", pack.price_cents)
    if not isinstance(price, int) or isinstance(price, bool) or price <= 0:
        errors.setdefault("price", []).append("The price must be a positive amount.")

    filters = {key: value for key, value in (fields.get("filters", pack.filters) or {}).items() if value}
    unknown_filters = set(filters) - set(FILTER_KEYS)
    if unknown_filters:
        raise ValidationError(f"Unknown filters: {', '.join(sorted(unknown_filters))}.")
    if filters.get("licence") and licences.get(filters["licence"]) is None:
        errors.setdefault("licence", []).append(f"Unknown licence “{filters['licence']}”.")
    if filters.get("creator"):
        if not get_user_model().objects.filter(username__iexact=filters["creator"].strip()).exists():
            errors.setdefault("creator", []).append(f"No creator is called “{filters['creator']}”.")
    if filters.get("min_short_side") is not None and int(filters.get("min_short_side") or 0) < 0:
        errors.setdefault("min_short_side", []).append("The minimum short side cannot be negative.")

    picks = _ids(fields.get("picks", pack.picks))
    removals = _ids(fields.get("removals", pack.removals))
    known = set(Asset.objects.filter(pk__in=set(picks) | set(removals)).values_list("pk", flat=True))
    for name, ids in (("picks", picks), ("removals", removals)):
        missing = [pk for pk in ids if pk not in known]
        if missing:
            errors.setdefault(name, []).append(f"No image has the id {', '.join(map(str, missing))}.")
    both = sorted(set(picks) & set(removals))
    if both:
        errors.setdefault("removals", []).append(
            f"Image {', '.join(map(str, both))} is both picked and removed: choose one."
        )
    size = fields.get("size", pack.size)
    if size is not None and size < 1:
        errors.setdefault("size", []).append("A pack holds at least one image; leave the size empty for all.")
    elif size is not None and len(picks) > size:
        errors.setdefault("size", []).append(f"{len(picks)} images are picked but the size is {size}.")
    if errors:
        raise ValidationError(errors)

    for name in ("title", "slug", "description", "use", "query", "is_listed"):
        if name in fields:
            setattr(pack, name, fields[name].strip() if isinstance(fields[name], str) else fields[name])
    pack.price_cents, pack.filters, pack.picks, pack.removals, pack.size = price, filters, picks, removals, size
    pack.full_clean()
    pack.save()
    return pack


def _ids(values) -> list[int]:
    """Asset ids in their first-given order, once each."""
    ids = [parse_id(value) for value in values or []]
    if None in ids:
        raise ValidationError(f"Image ids are whole numbers. {ID_RANGE}")
    return list(dict.fromkeys(ids))


# --- the selection ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExcludedPick:
    asset_id: int
    title: str
    reasons: list[str]


@dataclass
class Selection:
    """What publishing now would put in the pack, in order: eligible picks first, then the sample."""

    assets: list[Asset]
    excluded_picks: list[ExcludedPick] = field(default_factory=list)
    scores: dict[int, float] = field(default_factory=dict)  # by asset id, when a query ranked them
    candidate_count: int = 0  # eligible images matching the filters, before sampling

    @property
    def asset_ids(self) -> list[int]:
        return [asset.pk for asset in self.assets]

    def __len__(self) -> int:
        return len(self.assets)


def embed_query(text: str) -> np.ndarray:
    """The CLIP text embedding of a pack's query, by the configured curation model."""
    try:
        return clip.load_model(curation.model_spec()).embed_texts([text])[0]
    except clip.ModelUnavailable as unavailable:
        raise ValidationError(f"The query cannot be ranked: {unavailable}") from None


def preview_selection(pack: Pack, *, query_vector: np.ndarray | None = None) -> Selection:
    """The selection publishing would freeze now. Embeds the query unless a vector is given."""
    if pack.query and query_vector is None:
        query_vector = embed_query(pack.query)
    return _select(pack, query_vector)


def _embedding_matrix(rows, dim: int, identity: str) -> np.ndarray:
    """Stored embeddings as rows; zeros where the model differs (such vectors do not compare)."""
    matrix = np.zeros((len(rows), dim), dtype=np.float32)
    for index, (_pk, blob, row_identity) in enumerate(rows):
        if blob and row_identity == identity and len(blob) == dim * 2:
            matrix[index] = np.frombuffer(blob, dtype=np.float16)
    return matrix


def _select(pack: Pack, query_vector: np.ndarray | None) -> Selection:
    use = pack.use
    removals = set(pack.removals)
    picks = [pk for pk in _ids(pack.picks) if pk not in removals]
    eligible = selectors.eligible_assets(use)

    # Picks ignore the query and filters but not eligibility; each refused one is explained.
    eligible_picks = set(eligible.filter(pk__in=picks).values_list("pk", flat=True))
    refused = [pk for pk in picks if pk not in eligible_picks]
    found = selectors.assets_with_reasons(refused) if refused else {}
    excluded = [
        ExcludedPick(pk, found[pk].display_title, selectors.ineligibility_reasons(found[pk], use) or ["not eligible"])
        if pk in found
        else ExcludedPick(pk, "", ["no such image"])
        for pk in refused
    ]
    picked = [pk for pk in picks if pk in eligible_picks]

    matching = selectors.apply_filters(eligible, pack.filters).exclude(pk__in=removals | set(picked))
    others = selectors.candidate_embeddings(matching.order_by("pk"))
    picked_rows = {row[0]: row for row in selectors.candidate_embeddings(eligible.filter(pk__in=picked))}
    rows = [picked_rows[pk] for pk in picked] + others

    identity = curation.model_identity()
    if query_vector is not None:
        query = np.asarray(query_vector, dtype=np.float32).ravel()
        dim = query.size
    else:
        query = None
        dim = next((len(blob) // 2 for _pk, blob, ident in rows if blob and ident == identity), 1)
    matrix = _embedding_matrix(rows, dim, identity)

    scores: dict[int, float] = {}
    relevance = None
    if query is not None and others:
        raw = matrix[len(picked) :] @ query
        known = np.abs(matrix[len(picked) :]).sum(axis=1) > 0
        # Best first; images without a comparable embedding go last; the id breaks ties (deterministic).
        order = sorted(
            range(len(others)), key=lambda i: (not known[i], -float(raw[i]) if known[i] else 0.0, others[i][0])
        )
        order_all = list(range(len(picked))) + [len(picked) + i for i in order]
        rows = [rows[i] for i in order_all]
        matrix = matrix[order_all]
        floor = float(raw[known].min()) if known.any() else 0.0
        ranked = np.array([float(raw[i]) if known[i] else floor for i in order], dtype=np.float32)
        relevance = np.concatenate([np.full(len(picked), ranked.max() if len(ranked) else 0.0), ranked])
        scores = {others[i][0]: round(float(raw[i]), 4) for i in order if known[i]}

    max_cosine = settings.CURATION_MIN_COSINE
    required = range(len(picked))
    if pack.size:
        chosen = diversity.diverse_sample(
            matrix, pack.size, max_cosine=max_cosine, relevance=relevance, required=required
        )
    else:
        chosen = diversity.drop_near_duplicates(matrix, max_cosine=max_cosine, required=required)
    assets = selectors.assets_for_selection([rows[index][0] for index in chosen])
    return Selection(assets=assets, excluded_picks=excluded, scores=scores, candidate_count=len(others))


# --- publishing ------------------------------------------------------------------------------------


def _read_delivery(asset: Asset) -> tuple[str, int]:
    """SHA-256 and size of the delivery copy, hashed while it is read (the bytes buyers get)."""
    digest, size = hashlib.sha256(), 0
    try:
        with default_storage.open(asset.delivery.name, "rb") as handle:
            while chunk := handle.read(_READ_CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except OSError as error:
        raise ValidationError(
            f"The delivery copy of image {asset.pk} (“{asset.display_title}”) cannot be read ({error}); "
            "re-run its processing or remove it from the pack."
        ) from None
    return digest.hexdigest(), size


def items_for(assets: list[Asset]) -> list[PackItem]:
    """Unsaved PackItems for these assets, in order, each hashed from its delivery copy."""
    items = []
    for position, asset in enumerate(assets):
        sha256, byte_size = _read_delivery(asset)
        items.append(
            PackItem(
                asset=asset,
                creator=asset.owner,
                position=position,
                key=f"{position:06d}",
                file_name=asset.delivery.name,
                file_format=asset.format,
                sha256=sha256,
                byte_size=byte_size,
                width=asset.width,
                height=asset.height,
                training_caption=asset.analysis.effective_training_caption,
                licence=asset.licence,
                title=asset.title,
            )
        )
    return items


USE_SUMMARIES = {
    Pack.Use.COMMERCIAL: (
        "You may train machine-learning models on these images, and use and sell those models and their "
        "outputs commercially. The images themselves may not be redistributed or resold."
    ),
    Pack.Use.RESEARCH: (
        "You may train machine-learning models on these images for non-commercial research only. Models "
        "trained on them may not be sold or used in a commercial product or service, and the images "
        "themselves may not be redistributed."
    ),
}


def licence_terms(use: str, items: list[PackItem]) -> dict:
    """The terms a buyer agrees to, frozen with the version: the pack's use, each image licence in it,
    and the credits that attribution licences require."""
    codes = sorted({item.licence for item in items})
    attribution_codes = {code for code in codes if licences.get(code).requires_attribution}
    return {
        "use": use,
        "use_label": Pack.Use(use).label,
        "summary": USE_SUMMARIES[use],
        "licences": [datasheet.licence_summary(code) for code in codes],
        "attribution": [
            {
                "key": item.key,
                "title": item.title,
                "creator": item.creator.username,
                "name": datasheet.creator_name(item.creator),
                "licence": item.licence,
            }
            for item in items
            if item.licence in attribution_codes
        ],
    }


def _contents(pack: Pack, number: int, items: list[PackItem], assets: list[Asset]) -> tuple[dict, dict]:
    """The licence terms and datasheet of version `number` of the pack holding these items."""
    terms = licence_terms(pack.use, items)
    stats = datasheet.compute_stats(items, assets)
    sheet = datasheet.build_datasheet(
        title=pack.title, number=number, description=pack.description, use=pack.use, stats=stats, licence_terms=terms
    )
    return terms, sheet


def _manifest(pack: Pack, *, number: int, published_at, items: list[PackItem], terms: dict, sheet: dict) -> dict:
    return build_manifest(
        slug=pack.slug,
        title=pack.title,
        number=number,
        use=pack.use,
        published_at=published_at,
        price_cents=pack.price_cents,
        currency=pack.currency,
        licence_terms=terms,
        datasheet=sheet,
        items=items,
    )


def freeze_version(
    pack: Pack, *, number: int, published_at, items: list[PackItem], actor, terms: dict, datasheet: dict
) -> PackVersion:
    """Save version `number` of the pack as it is now, holding `items` (unsaved, in order: see `items_for`),
    with these terms and datasheet and the manifest they make. Checks nothing: `publish_version` does."""
    manifest = _manifest(pack, number=number, published_at=published_at, items=items, terms=terms, sheet=datasheet)
    version = PackVersion.objects.create(
        pack=pack,
        number=number,
        title=pack.title,
        use=pack.use,
        price_cents=pack.price_cents,
        currency=pack.currency,
        item_count=len(items),
        creator_count=len({item.creator_id for item in items}),
        licence_terms=terms,
        datasheet=datasheet,
        manifest=manifest,
        manifest_sha256=manifest_sha256(manifest),
        published_by=actor,
        published_at=published_at,
    )
    for item in items:
        item.version = version
    PackItem.objects.bulk_create(items)
    return version


def publish_version(pack: Pack, *, actor, query_vector: np.ndarray | None = None) -> PackVersion:
    """Freeze the pack's current selection as its next version, and queue its downloads.

    When neither items nor price, captions, terms or descriptions changed since the latest version, no
    version is made: the latest is returned with `is_new = False` (a new one has `is_new = True`).
    """
    if not actor.is_staff:
        raise PermissionDenied("Only staff publish packs.")
    if pack.query and query_vector is None:
        query_vector = embed_query(pack.query)  # before the transaction: a model load can take a while
    from marketplace.packs.exports import ensure_exports  # the export builder's module, loaded when needed

    with transaction.atomic():
        pack = Pack.objects.select_for_update().get(pk=pack.pk)
        selection = _select(pack, query_vector)
        if not selection.assets:
            raise ValidationError("Nothing to publish: no eligible image matches this pack's query, filters and picks.")
        items = items_for(selection.assets)
        latest = selectors.latest_version(pack)
        if latest is not None:
            terms, sheet = _contents(pack, latest.number, items, selection.assets)
            unchanged = _manifest(
                pack, number=latest.number, published_at=latest.published_at, items=items, terms=terms, sheet=sheet
            )
            if manifest_sha256(unchanged) == latest.manifest_sha256:
                latest.is_new = False
                return latest

        published_at = timezone.now().replace(microsecond=0)
        number = latest.number + 1 if latest else 1
        terms, sheet = _contents(pack, number, items, selection.assets)
        version = freeze_version(
            pack, number=number, published_at=published_at, items=items, actor=actor, terms=terms, datasheet=sheet
        )
        ensure_exports(version)
    logger.info("published %s with %d items", version, len(items))
    version.is_new = True
    return version


def publish_waiting_packs() -> list[PackVersion]:
    """Publish the first version of each pack set to publish itself once images are eligible."""
    published = []
    waiting = Pack.objects.filter(publish_when_eligible=True, versions__isnull=True, created_by__is_staff=True)
    for pack in waiting.select_related("created_by"):
        try:
            published.append(publish_version(pack, actor=pack.created_by))
        except ValidationError as error:  # nothing eligible yet: the next analysed batch tries again
            logger.info("%s is not publishable yet: %s", pack, error)
    return published


# --- withdrawals -----------------------------------------------------------------------------------


def revoke_asset(asset_id: int, *, reason: str) -> list[Revocation]:
    """Name a withdrawn image on the revocation list of every published version holding it. Idempotent:
    returns only the revocations made now, and tells licensees (after commit) about those."""
    if reason not in Revocation.Reason.values:
        raise ValueError(f"Unknown revocation reason {reason!r}.")
    created = []
    with transaction.atomic():
        for item in PackItem.objects.filter(asset_id=asset_id).order_by("version_id"):
            revocation, is_new = Revocation.objects.get_or_create(
                version_id=item.version_id, item=item, defaults={"reason": reason}
            )
            if is_new:
                created.append(revocation)
        if created:
            ids = [revocation.pk for revocation in created]
            transaction.on_commit(partial(signals.items_revoked.send, sender=Revocation, revocation_ids=ids))
    return created
