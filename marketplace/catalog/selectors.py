"""Reads of the catalog, with who-may-see-what applied."""

from django.db.models import Count, Q, QuerySet
from django.http import Http404

from marketplace.catalog.models import Asset

STATUS_FILTERS = ("processing", "ready", "failed", "taken-down", "withdrawn")


def visible_assets(user) -> QuerySet[Asset]:
    """Staff see every asset; anyone else only their own."""
    if not user.is_authenticated:
        return Asset.objects.none()
    # "holds" is curation's reverse relation: lists show whether an image is held out of packs.
    assets = Asset.objects.select_related("owner").prefetch_related("tags", "holds")
    return assets if user.is_staff else assets.filter(owner=user)


def get_visible_asset(user, pk) -> Asset:
    """The asset if this user may see it; 404 otherwise, so that others learn nothing about it."""
    try:
        return visible_assets(user).get(pk=pk)  # an int: the `id` URL converter or a row's own pk
    except Asset.DoesNotExist:
        raise Http404("No such image.") from None


def filter_assets(
    assets: QuerySet[Asset],
    *,
    status: str = "",
    licence: str = "",
    consent: str = "",
    tag: str = "",
    search: str = "",
) -> QuerySet[Asset]:
    # As `Asset.display_status`: withdrawn shows over taken down, and both over the processing status.
    if status == "withdrawn":
        assets = assets.filter(withdrawn_at__isnull=False)
    elif status == "taken-down":
        assets = assets.filter(taken_down_at__isnull=False, withdrawn_at__isnull=True)
    elif status in STATUS_FILTERS:
        assets = assets.filter(status=status, withdrawn_at__isnull=True, taken_down_at__isnull=True)
    if licence == "none":
        assets = assets.filter(licence="")
    elif licence:
        assets = assets.filter(licence=licence)
    if consent in ("yes", "no"):
        assets = assets.filter(ai_training_consent=(consent == "yes"))
    if tag:
        assets = assets.filter(tags__name=tag.strip().lower())
    if search:
        assets = assets.filter(
            Q(title__icontains=search) | Q(description__icontains=search) | Q(original_filename__icontains=search)
        )
    return assets.distinct()


def status_counts(assets: QuerySet[Asset]) -> dict[str, int]:
    live = assets.filter(withdrawn_at__isnull=True, taken_down_at__isnull=True)
    counts = {row["status"]: row["n"] for row in live.values("status").annotate(n=Count("id"))}
    counts["taken-down"] = assets.filter(taken_down_at__isnull=False, withdrawn_at__isnull=True).count()
    counts["withdrawn"] = assets.filter(withdrawn_at__isnull=False).count()
    return {status: counts.get(status, 0) for status in STATUS_FILTERS}


def tags_in_use(assets: QuerySet[Asset]) -> list[str]:
    return sorted(set(assets.values_list("tags__name", flat=True)) - {None})
