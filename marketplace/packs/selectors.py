"""Reads of packs: which images may enter a pack, and the published versions people browse."""

from dataclasses import dataclass

from django.db.models import Count, Exists, F, OuterRef, Q, QuerySet, Subquery
from django.http import Http404

from marketplace.catalog import licences
from marketplace.catalog.models import Asset
from marketplace.core.money import format_cents
from marketplace.curation.models import AssetAnalysis, Flag, Hold
from marketplace.packs.models import Pack, PackItem, PackVersion, Revocation

# --- eligibility -------------------------------------------------------------------------------


def allowed_licence_codes(use: str) -> list[str]:
    """Licences that let buyers train on an image, and for commercial packs sell what they train."""
    if use not in Pack.Use.values:
        raise ValueError(f"Unknown pack use {use!r}.")
    return [
        licence.code
        for licence in licences.LICENCES
        if licence.allows_ai_training and (use != Pack.Use.COMMERCIAL or licence.allows_commercial_models)
    ]


def eligible_assets(use: str) -> QuerySet[Asset]:
    """Every image that may enter a pack of this use, as one query.

    Ready, consented to AI training, under a licence that fits the use, not withdrawn, not taken down, not held,
    analysed and passing quality, the representative of its near-duplicate cluster (if any), and with
    its location-free delivery copy made.
    """
    active_hold = Hold.objects.active().filter(asset=OuterRef("pk"))
    return (
        Asset.objects.filter(
            status=Asset.Status.READY,
            ai_training_consent=True,
            withdrawn_at__isnull=True,
            taken_down_at__isnull=True,
            licence__in=allowed_licence_codes(use),
            analysis__status=AssetAnalysis.Status.DONE,
            analysis__quality_ok=True,
        )
        .filter(Q(analysis__cluster__isnull=True) | Q(analysis__cluster__representative_id=F("pk")))
        .exclude(delivery="")
        .exclude(Exists(active_hold))
    )


def apply_filters(assets: QuerySet[Asset], filters: dict) -> QuerySet[Asset]:
    """A pack's filters: tag (the creator's or a zero-shot one), licence, creator, minimum short side."""
    tag = (filters.get("tag") or "").strip().lower()
    if tag:
        creator_tag = Asset.tags.through.objects.filter(asset_id=OuterRef("pk"), tag__name=tag)
        assets = assets.filter(Exists(creator_tag) | Q(analysis__tags__icontains=f'"{tag}"'))
    if filters.get("licence"):
        assets = assets.filter(licence=filters["licence"])
    if filters.get("creator"):
        assets = assets.filter(owner__username__iexact=filters["creator"].strip())
    side = filters.get("min_short_side") or 0
    if side:
        assets = assets.filter(width__gte=side, height__gte=side)
    return assets


_HOLD_REASONS = {
    Flag.Kind.CROSS_CREATOR: "possibly stolen",
    Flag.Kind.EXACT_DUPLICATE: "possibly stolen",
    Flag.Kind.RIGHTS: "rights conflict",
}


def ineligibility_reasons(asset: Asset, use: str) -> list[str]:
    """Why this image may not enter a pack of this use, in words staff act on. Empty when it may.

    Expects `analysis__cluster` selected and `active_holds` (with their flags) prefetched, as
    `assets_with_reasons` does.
    """
    reasons = []
    if asset.is_withdrawn:
        reasons.append("withdrawn by the creator")
    if asset.is_taken_down:
        reasons.append(f"taken down by the platform: {asset.takedown_reason}")
    if asset.status != Asset.Status.READY:
        reasons.append(f"not ready ({asset.get_status_display().lower()})")
    if not asset.ai_training_consent:
        reasons.append("no consent to AI training")
    licence = licences.get(asset.licence)
    if licence is None:
        reasons.append("no licence")
    elif not licence.allows_ai_training:
        reasons.append(f"licence “{licence.name}” does not allow AI training")
    elif use == Pack.Use.COMMERCIAL and not licence.allows_commercial_models:
        reasons.append(f"licence “{licence.name}” does not allow commercial models")
    for hold in asset.active_holds:
        reasons.append(f"held: {_HOLD_REASONS.get(hold.flag.kind, hold.flag.get_kind_display().lower())}")
    analysis = getattr(asset, "analysis", None)
    if analysis is None or analysis.status == AssetAnalysis.Status.PENDING:
        reasons.append("not analysed yet")
    elif analysis.status == AssetAnalysis.Status.FAILED:
        reasons.append("analysis failed")
    elif not analysis.quality_ok:
        why = "; ".join(analysis.quality.get("reasons", [])) if isinstance(analysis.quality, dict) else ""
        reasons.append(f"failed quality{': ' + why if why else ''}")
    if analysis is not None and analysis.cluster_id and analysis.cluster.representative_id != asset.pk:
        reasons.append(f"near-duplicate: image {analysis.cluster.representative_id} represents its cluster")
    if asset.status == Asset.Status.READY and not asset.delivery:
        reasons.append("no delivery copy")
    return reasons


def assets_with_reasons(asset_ids) -> dict[int, Asset]:
    """The assets by id, ready for `ineligibility_reasons` (three queries, whatever the count)."""
    from django.db.models import Prefetch

    holds = Prefetch("holds", queryset=Hold.objects.active().select_related("flag"), to_attr="active_holds")
    assets = Asset.objects.filter(pk__in=list(asset_ids)).select_related("owner", "analysis__cluster")
    return assets.prefetch_related(holds).in_bulk()


def candidate_embeddings(assets: QuerySet[Asset]) -> list[tuple[int, bytes | None, str]]:
    """(asset id, float16 embedding, model identity) for each candidate, in one query."""
    rows = assets.values_list("pk", "analysis__embedding", "analysis__model_name", "analysis__model_pretrained")
    return [
        (pk, bytes(blob) if blob is not None else None, f"{name}:{pretrained}") for pk, blob, name, pretrained in rows
    ]


def assets_for_selection(asset_ids: list[int]) -> list[Asset]:
    """The chosen assets in the given order, with what publishing and previews read (a few queries)."""
    by_pk = (
        Asset.objects.filter(pk__in=asset_ids)
        .select_related("owner", "owner__creator_profile", "analysis")
        .prefetch_related("tags")
        .in_bulk()
    )
    return [by_pk[pk] for pk in asset_ids if pk in by_pk]


# --- published versions -----------------------------------------------------------------------


@dataclass(frozen=True)
class ListedPack:
    pack: Pack
    latest: PackVersion

    @property
    def price(self) -> str:
        return format_cents(self.latest.price_cents, self.latest.currency)


def listed_packs() -> list[ListedPack]:
    """Listed packs that have a published version, each with its latest version (two queries)."""
    latest_pk = PackVersion.objects.filter(pack=OuterRef("pk")).order_by("-number").values("pk")[:1]
    packs = list(Pack.objects.filter(is_listed=True).annotate(latest_pk=Subquery(latest_pk)).exclude(latest_pk=None))
    versions = PackVersion.objects.in_bulk([pack.latest_pk for pack in packs])
    return [ListedPack(pack, versions[pack.latest_pk]) for pack in packs]


def latest_version(pack: Pack) -> PackVersion | None:
    return pack.versions.order_by("-number").first()


def get_version(slug: str, number: int) -> PackVersion:
    try:
        return PackVersion.objects.select_related("pack").get(pack__slug=slug, number=number)
    except PackVersion.DoesNotExist:
        raise Http404("No such pack version.") from None


@dataclass(frozen=True)
class SaleStatus:
    """Whether a version is sold now; if not, why (in words for the buyer) and which version is sold instead."""

    on_sale: bool
    reason: str = ""
    current: PackVersion | None = None  # the version a buyer can license instead, when there is one


_CREATOR_REVOCATIONS = {Revocation.Reason.WITHDRAWN, Revocation.Reason.CONSENT_WITHDRAWN}


def sale_status(version: PackVersion) -> SaleStatus:
    """Whether `version` may be bought. The one rule that both the pack page (Buy or not) and checkout
    (refuse with 409) follow, so that the page never offers what checkout would refuse.

    A version stops being sold when its pack is taken off sale, when a newer version is published, or
    when an image is revoked from it (a price or content change only ever makes a new version)."""
    if not version.pack.is_listed:
        return SaleStatus(False, "This pack is not for sale.")
    latest = latest_version(version.pack)
    if latest.pk != version.pk:  # the pack is listed: the latest version is sold unless revoked from
        if _revocation_refusal(latest):
            return SaleStatus(
                False,
                f"Version {version.number} has been superseded by version {latest.number}, which is not sold either.",
            )
        return SaleStatus(
            False, f"Version {version.number} has been superseded; version {latest.number} is for sale.", latest
        )
    refusal = _revocation_refusal(version)
    return SaleStatus(False, refusal) if refusal else SaleStatus(True)


def _revocation_refusal(version: PackVersion) -> str:
    """Why a version is no longer sold because images were revoked from it; "" when none were (one query)."""
    reasons = set(version.revocations.values_list("reason", flat=True))
    if not reasons:
        return ""
    if reasons <= _CREATOR_REVOCATIONS:
        return "Creators withdrew images from this version, so it is no longer sold; a new version will replace it."
    return (
        "Images were taken out of this version after it was published (see its revocation list), so it is no "
        "longer sold; a new version will replace it."
    )


def public_items(version: PackVersion) -> QuerySet[PackItem]:
    """Items still shown on public pages: not revoked, and their image not withdrawn or taken down meanwhile."""
    revoked = Revocation.objects.filter(item=OuterRef("pk"))
    return (
        version.items.exclude(Exists(revoked))
        .filter(asset__withdrawn_at__isnull=True, asset__taken_down_at__isnull=True, asset__ai_training_consent=True)
        .select_related("creator")
        .order_by("position")
    )


def versions_depending_on_takedown(asset_id: int) -> list[PackVersion]:
    """Published versions that depend on this image's takedown: while there is one, staff cannot lift it.

    A version depends on a takedown once its public record carries it: a takedown revokes the image from
    every published version holding it, so such a version names it on its (permanent) revocation list as
    taken down by the platform, its licensees were emailed to delete it, and it stopped being sold.
    Reinstating could undo none of that. So: every version holding the image, except those it had already
    been revoked from at its creator's request (their record does not rest on the takedown). Counted from
    the items rather than from the revocations, so that it holds even before the revocation after the
    takedown's commit has run. Versions published while the image was down never held it: nothing in them
    rests on it, and reinstating only lets it into future versions again.
    """
    own_reasons = [Revocation.Reason.WITHDRAWN, Revocation.Reason.CONSENT_WITHDRAWN]
    revoked_by_creator = Revocation.objects.filter(item=OuterRef("pk"), reason__in=own_reasons)
    items = PackItem.objects.filter(asset_id=asset_id).exclude(Exists(revoked_by_creator))
    return list(PackVersion.objects.filter(items__in=items).select_related("pack").order_by("pk").distinct())


def revocations(version: PackVersion) -> QuerySet[Revocation]:
    return version.revocations.select_related("item", "item__creator").order_by("revoked_at", "id")


def version_stats(version: PackVersion) -> dict:
    """What the page shows next to the grid: counts at publication and now."""
    by_reason = dict(version.revocations.values_list("reason").annotate(n=Count("id")))
    taken_down = by_reason.pop(Revocation.Reason.TAKEDOWN, 0)
    return {
        "published_items": version.item_count,
        "withdrawn_items": sum(by_reason.values()),  # by their creators: the image, or consent to training
        "taken_down_items": taken_down,  # by the platform
        "creators": version.creator_count,
    }


def staff_packs() -> QuerySet[Pack]:
    return Pack.objects.annotate(version_count=Count("versions")).select_related("created_by")
