"""Reads of curation: text-to-image search, the review queue, holds, pack eligibility hints."""

from dataclasses import dataclass

import numpy as np
from django.conf import settings
from django.db.models import Q, QuerySet

from marketplace.catalog.models import Asset
from marketplace.curation.models import AssetAnalysis, Flag, Hold


def active_holds(asset: Asset) -> QuerySet[Hold]:
    return Hold.objects.active().filter(asset=asset).select_related("flag")


def open_flags(kind: str = "") -> QuerySet[Flag]:
    flags = Flag.objects.filter(status=Flag.Status.OPEN).select_related(
        "asset", "asset__owner", "other_asset", "other_asset__owner"
    )
    return flags.filter(kind=kind) if kind else flags


def flag_counts() -> dict[str, int]:
    counts = dict.fromkeys(Flag.Kind.values, 0)
    for kind in Flag.objects.filter(status=Flag.Status.OPEN).values_list("kind", flat=True):
        counts[kind] += 1
    return counts


@dataclass(frozen=True)
class SearchFilters:
    quality_ok: bool = False
    tag: str = ""
    licence: str = ""
    consent: bool = False
    creator: str = ""
    min_short_side: int = 0


@dataclass(frozen=True)
class SearchHit:
    asset: Asset
    score: float | None


def current_analyses() -> QuerySet[AssetAnalysis]:
    """Finished analyses by the configured model: the only ones whose embeddings compare."""
    return AssetAnalysis.objects.filter(
        status=AssetAnalysis.Status.DONE,
        model_name=settings.CURATION_CLIP_MODEL,
        model_pretrained=settings.CURATION_CLIP_PRETRAINED,
    )


def filtered_analyses(filters: SearchFilters) -> QuerySet[AssetAnalysis]:
    analyses = current_analyses().filter(asset__withdrawn_at__isnull=True)
    if filters.quality_ok:
        analyses = analyses.filter(quality_ok=True)
    if filters.tag:
        tag = filters.tag.strip().lower()
        # Either the creator's own tag or a zero-shot tag from the model.
        analyses = analyses.filter(Q(asset__tags__name=tag) | Q(tags__icontains=f'"{tag}"'))
    if filters.licence:
        analyses = analyses.filter(asset__licence=filters.licence)
    if filters.consent:
        analyses = analyses.filter(asset__ai_training_consent=True)
    if filters.creator:
        analyses = analyses.filter(asset__owner__username__iexact=filters.creator.strip())
    if filters.min_short_side:
        side = filters.min_short_side
        analyses = analyses.filter(asset__width__gte=side, asset__height__gte=side)
    return analyses.distinct()


def search(query_vector: np.ndarray | None, filters: SearchFilters, *, limit: int = 60) -> list[SearchHit]:
    """Assets ranked by cosine to the query's text embedding, within the filters.

    Scores the filtered set exactly, in chunks, so filters never starve the results.
    """
    analyses = filtered_analyses(filters).select_related("asset", "asset__owner")
    if query_vector is None:
        return [SearchHit(a.asset, None) for a in analyses.order_by("-asset__created_at")[:limit]]
    query = np.asarray(query_vector, dtype=np.float32).ravel()
    best: list[tuple[float, int]] = []
    rows = analyses.values_list("pk", "embedding")
    chunk: list[tuple[int, bytes]] = []

    def score(batch):
        ids = np.array([pk for pk, _ in batch])
        matrix = np.stack([np.frombuffer(bytes(blob), dtype=np.float16) for _, blob in batch]).astype(np.float32)
        best.extend(zip((matrix @ query).tolist(), ids.tolist(), strict=True))
        best.sort(reverse=True)
        del best[limit:]

    for row in rows.iterator(chunk_size=2000):
        chunk.append(row)
        if len(chunk) == 2000:
            score(chunk)
            chunk = []
    if chunk:
        score(chunk)
    by_pk = analyses.in_bulk([pk for _, pk in best])
    return [SearchHit(by_pk[pk].asset, round(value, 4)) for value, pk in best if pk in by_pk]


def dedup_report_rows():
    """Rows for `dedup_report`: every cluster member, then every cross-creator finding."""
    from marketplace.curation.models import DuplicateCluster

    for cluster in DuplicateCluster.objects.select_related("representative").order_by("pk"):
        for analysis in cluster.members.select_related("asset", "asset__owner").order_by("asset_id"):
            asset = analysis.asset
            is_rep = asset.pk == cluster.representative_id
            yield [
                "cluster",
                cluster.pk,
                asset.pk,
                asset.owner.username,
                asset.display_title,
                is_rep,
                "",
                "",
                "",
                "",
                "",
            ]
    cross = Flag.objects.filter(kind__in=[Flag.Kind.CROSS_CREATOR, Flag.Kind.EXACT_DUPLICATE]).select_related(
        "asset__owner", "other_asset__owner"
    )
    for flag in cross.order_by("pk"):
        yield [
            flag.kind, flag.pk, flag.asset_id, flag.asset.owner.username, flag.asset.display_title, "",
            flag.other_asset_id, flag.other_asset.owner.username if flag.other_asset else "",
            flag.evidence.get("cosine", ""), flag.evidence.get("hamming", ""), flag.status,
        ]  # fmt: skip
