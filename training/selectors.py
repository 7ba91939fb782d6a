"""Reads of training: who sees which runs, the list's filters, and a run's usage per creator."""

from __future__ import annotations

from types import SimpleNamespace

from django.db.models import Count, QuerySet, Sum
from django.http import Http404

from marketplace.packs.datasheet import creator_name
from marketplace.packs.models import PackItem
from training.models import TrainingRun, TrainingUsage


def visible_runs(user) -> QuerySet[TrainingRun]:
    """Staff see every run; anyone else the runs of their own licences (none when they hold none)."""
    runs = TrainingRun.objects.select_related("licence", "licence__buyer", "licence__version__pack", "launched_by")
    if not user.is_authenticated:
        return runs.none()
    if user.is_staff:
        return runs
    return runs.filter(licence__buyer=user)


def run_for(user, pk) -> TrainingRun:
    try:
        return visible_runs(user).get(pk=pk)
    except TrainingRun.DoesNotExist:
        raise Http404("No such training run.") from None


def filter_runs(runs: QuerySet[TrainingRun], *, status: str = "", pack: str = "", buyer: str = "") -> QuerySet:
    if status:
        runs = runs.filter(status=status)
    if pack:
        runs = runs.filter(licence__version__pack__slug=pack)
    if buyer:
        runs = runs.filter(licence__buyer__username__iexact=buyer.strip())
    return runs


def usage_by_creator(run: TrainingRun) -> list[dict]:
    """[{creator, username, assets, times_seen}], the most seen first."""
    rows = (
        TrainingUsage.objects.filter(run=run)
        .values("creator")
        .annotate(assets=Count("asset"), times_seen=Sum("times_seen"))
        .order_by("-times_seen", "creator")
    )
    from django.contrib.auth import get_user_model

    users = get_user_model().objects.in_bulk([row["creator"] for row in rows])
    return [
        {
            "creator": creator_name(users[row["creator"]]),
            "username": users[row["creator"]].username,
            "assets": row["assets"],
            "times_seen": row["times_seen"],
        }
        for row in rows
    ]


def usage_rows(run: TrainingRun) -> list[tuple[str, SimpleNamespace]]:
    """(pack item key, usage with the item's title and creator name) for each asset the run saw."""
    items = {
        item.asset_id: item
        for item in PackItem.objects.filter(version_id=run.licence.version_id).select_related("creator")
    }
    rows = []
    for usage in TrainingUsage.objects.filter(run=run):
        item = items.get(usage.asset_id)
        rows.append(
            (
                item.key if item else "",
                SimpleNamespace(
                    asset_id=usage.asset_id,
                    title=item.title if item else "",
                    creator_name=creator_name(item.creator) if item else "",
                    times_seen=usage.times_seen,
                ),
            )
        )
    return sorted(rows, key=lambda row: row[0])
