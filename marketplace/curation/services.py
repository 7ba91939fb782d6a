"""Writes of curation: analysis of ready assets, near-duplicate indexing, flags, holds, decisions."""

import logging
import os
import tempfile
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial

import numpy as np
from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from marketplace.catalog.models import Asset
from marketplace.curation import selectors, signals
from marketplace.curation.engine import captions, clip, dedup, quality
from marketplace.curation.models import AssetAnalysis, DuplicateCluster, Flag, FlagDecision, Hold, IndexState

logger = logging.getLogger(__name__)

VECTOR_INDEX = "clip-embeddings"
HASH_INDEX = "phash"


def model_spec() -> clip.ModelSpec:
    return clip.ModelSpec(
        name=settings.CURATION_CLIP_MODEL,
        pretrained=settings.CURATION_CLIP_PRETRAINED,
        device=settings.CURATION_DEVICE,
        batch_size=settings.CURATION_BATCH_SIZE,
        num_workers=settings.CURATION_NUM_WORKERS,
    )


def model_identity() -> str:
    return f"{settings.CURATION_CLIP_MODEL}:{settings.CURATION_CLIP_PRETRAINED}"


def is_current(analysis: AssetAnalysis) -> bool:
    """Done, by the configured model: nothing to redo."""
    return analysis.status == AssetAnalysis.Status.DONE and analysis.model_identity == model_identity()


# --- queueing ----------------------------------------------------------------------------


CLAIM_TIMEOUT = timedelta(minutes=15)


def queue_analysis(asset_ids: list[int]) -> int:
    """Mark assets as awaiting analysis; once committed, a task analyses whatever is pending in batches."""
    from marketplace.curation import tasks

    ready = list(Asset.objects.filter(pk__in=asset_ids, status=Asset.Status.READY).values_list("pk", flat=True))
    for asset_id in ready:
        AssetAnalysis.objects.get_or_create(asset_id=asset_id)
    if ready:
        countdown = settings.CURATION_BATCH_WAIT_SECONDS
        transaction.on_commit(partial(tasks.analyse_pending.apply_async, countdown=countdown))
    return len(ready)


def claim_pending(limit: int) -> list[int]:
    """Take up to `limit` assets awaiting analysis for this worker; others skip them.

    A claim older than CLAIM_TIMEOUT is taken to belong to a worker that died.
    """
    now = timezone.now()
    with transaction.atomic():
        rows = (
            AssetAnalysis.objects.select_for_update(skip_locked=True)
            .filter(status=AssetAnalysis.Status.PENDING, asset__status=Asset.Status.READY)
            .filter(Q(claimed_at__isnull=True) | Q(claimed_at__lt=now - CLAIM_TIMEOUT))
            .order_by("created_at", "pk")[:limit]
        )
        ids = [row.asset_id for row in rows]
        AssetAnalysis.objects.filter(asset_id__in=ids).update(claimed_at=now)
    return ids


def release_claims(asset_ids: list[int]) -> None:
    AssetAnalysis.objects.filter(asset_id__in=asset_ids).update(claimed_at=None)


def pending_asset_ids() -> list[int]:
    """Ready assets never analysed, or analysed by another model than the configured one."""
    missing = Asset.objects.filter(status=Asset.Status.READY, analysis__isnull=True).values_list("pk", flat=True)
    current = selectors.current_analyses().values_list("pk", flat=True)
    stale = (
        AssetAnalysis.objects.exclude(pk__in=current)
        .filter(asset__status=Asset.Status.READY)
        .values_list("asset_id", flat=True)
    )
    return sorted(set(missing) | set(stale))


# --- analysis -----------------------------------------------------------------------------


@dataclass
class AnalysisReport:
    analysed: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)


def analyse_assets(asset_ids: list[int]) -> AnalysisReport:
    """Analyse a batch of ready assets and index them for near-duplicates. Idempotent.

    Raises clip.ModelUnavailable when the configured model cannot be loaded: the assets stay
    "awaiting analysis" with the reason recorded, and a later run picks them up.
    """
    report = AnalysisReport()
    todo: list[Asset] = []
    for asset in Asset.objects.filter(pk__in=asset_ids).select_related("owner").prefetch_related("tags"):
        analysis, _ = AssetAnalysis.objects.get_or_create(asset=asset)
        if asset.status != Asset.Status.READY or is_current(analysis):
            report.skipped.append(asset.pk)
        else:
            todo.append(asset)
    if not todo:
        return report

    try:
        loaded = clip.load_model(model_spec())
    except clip.ModelUnavailable as error:
        AssetAnalysis.objects.filter(asset__in=todo).update(error=str(error), attempts=F("attempts") + 1)
        raise

    previews: list[bytes] = []
    readable: list[Asset] = []
    for asset in todo:
        try:
            with default_storage.open(asset.preview.name, "rb") as handle:
                previews.append(handle.read())
            readable.append(asset)
        except OSError as error:
            report.failed[asset.pk] = f"The preview could not be read ({error})."
    results = clip.analyse_images(
        loaded,
        previews,
        titles=[asset.title for asset in readable],
        tags_lists=[asset.tag_names for asset in readable],
    )
    now = timezone.now()
    done: list[AssetAnalysis] = []
    for asset, image_bytes, result in zip(readable, previews, results, strict=True):
        verdict = quality.assess_quality(image_bytes, asset.width, asset.height)
        text, sources = captions.training_caption(result.caption, asset.title, asset.tag_names)
        with transaction.atomic():
            analysis = AssetAnalysis.objects.select_for_update().get(asset=asset)
            analysis.asset = asset  # the instance at hand: indexing reads its pHash
            analysis.status = AssetAnalysis.Status.DONE
            analysis.error = ""
            analysis.attempts += 1
            analysis.model_name = settings.CURATION_CLIP_MODEL
            analysis.model_pretrained = settings.CURATION_CLIP_PRETRAINED
            analysis.embedding = np.asarray(result.embedding, dtype=np.float16).tobytes()
            analysis.embedding_dim = len(result.embedding)
            analysis.caption = result.caption
            analysis.caption_source = result.caption_source
            analysis.caption_parts = _jsonable(result.caption_parts)
            analysis.tags = [[tag, round(float(score), 4)] for tag, score in result.tags]
            analysis.metadata_score = None if result.metadata_score is None else float(result.metadata_score)
            analysis.dhash = verdict.dhash
            analysis.sharpness = verdict.sharpness
            analysis.quality_ok = verdict.ok
            analysis.quality = _jsonable(verdict.as_dict())
            analysis.training_caption = text
            analysis.training_caption_sources = _jsonable(sources)
            analysis.analysed_at = now
            analysis.indexed_at = None
            analysis.save()
            _flag_analysis(analysis, asset)
        done.append(analysis)
        report.analysed.append(asset.pk)
    for asset_id, reason in report.failed.items():
        AssetAnalysis.objects.filter(asset_id=asset_id).update(
            status=AssetAnalysis.Status.FAILED, error=reason, attempts=F("attempts") + 1
        )
    if done:
        index_analyses(done)
        analysed_ids = [analysis.asset_id for analysis in done]
        transaction.on_commit(lambda: signals.assets_analysed.send(sender=AssetAnalysis, asset_ids=analysed_ids))
    return report


def _jsonable(value):
    """Engine results may hold numpy scalars; JSON columns need plain Python."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _flag_analysis(analysis: AssetAnalysis, asset: Asset) -> None:
    if analysis.quality_ok is False:
        Flag.objects.get_or_create(
            kind=Flag.Kind.QUALITY, asset=asset, other_asset=None, defaults={"evidence": analysis.quality}
        )
    if analysis.metadata_score is not None and analysis.metadata_score < settings.CURATION_MIN_METADATA_SCORE:
        Flag.objects.get_or_create(
            kind=Flag.Kind.MISLEADING,
            asset=asset,
            other_asset=None,
            defaults={"evidence": {"metadata_score": analysis.metadata_score, "caption": analysis.caption}},
        )
    for other in Asset.objects.filter(sha256=asset.sha256).exclude(owner=asset.owner).exclude(pk=asset.pk):
        record_pair(asset, other, {"reason": "identical file (SHA-256)", "sha256": asset.sha256}, exact=True)


def _names_of(user) -> set[str]:
    profile = getattr(user, "creator_profile", None)
    words = f"{user.username} {user.get_full_name()} {profile.display_name if profile else ''}"
    return {word for word in words.lower().replace(".", " ").split() if len(word) > 2}


def rights_conflicts(asset: Asset) -> list[str]:
    """Why the embedded rights metadata disagrees with the upload, in words for staff and the creator."""
    reasons = []
    if asset.embedded_prohibits_ai_training and asset.rights_override_confirmed_at:
        reasons.append(
            f"The file's metadata prohibits AI training ({asset.embedded_data_mining}); the creator confirmed "
            "they hold the rights to override it."
        )
    embedded = f"{asset.embedded_creator} {asset.embedded_copyright}".lower()
    if embedded.strip() and not any(name in embedded for name in _names_of(asset.owner)):
        named = asset.embedded_creator or asset.embedded_copyright
        reasons.append(f"The file's metadata names “{named}” as its creator or rights holder.")
    return reasons


def flag_rights_conflicts(asset_id: int) -> Flag | None:
    """A rights conflict holds the asset out of packs until staff have checked it."""
    asset = Asset.objects.select_related("owner").get(pk=asset_id)
    reasons = rights_conflicts(asset)
    if not reasons:
        return None
    with transaction.atomic():
        flag, created = Flag.objects.get_or_create(
            kind=Flag.Kind.RIGHTS, asset=asset, other_asset=None, defaults={"evidence": {"reasons": reasons}}
        )
        if created:
            Hold.objects.create(
                asset=asset,
                flag=flag,
                reason=" ".join(reasons) + " It stays out of packs until our staff have checked the rights.",
            )
    return flag


# --- near-duplicate indexes ------------------------------------------------------------------

_loaded_indexes: dict[str, tuple[int, object]] = {}


def _load_index(state: IndexState, index_class, *args):
    """The index at the state's version: from this process's memory, or from shared storage."""
    cached = _loaded_indexes.get(state.name)
    if cached and cached[0] == state.version:
        return cached[1]
    if not state.path:
        index = index_class(*args)
    else:
        with default_storage.open(state.path, "rb") as source, tempfile.NamedTemporaryFile(suffix=".idx") as local:
            for chunk in iter(partial(source.read, 1 << 20), b""):
                local.write(chunk)
            local.flush()
            index = index_class.load(local.name)
    _loaded_indexes[state.name] = (state.version, index)
    return index


def _save_index(state: IndexState, index) -> None:
    old_path = state.path
    with tempfile.TemporaryDirectory() as folder:
        local = os.path.join(folder, "index")
        index.save(local)
        with open(local, "rb") as handle:
            state.path = default_storage.save(f"indexes/{state.name}-{state.version + 1}.idx", File(handle))
    state.version += 1
    state.items = len(index)
    state.model_identity = model_identity()
    state.save()
    _loaded_indexes[state.name] = (state.version, index)
    if old_path:
        transaction.on_commit(partial(default_storage.delete, old_path))


def index_analyses(analyses: list[AssetAnalysis]) -> list[dedup.Pair]:
    """Compare new analyses with the whole collection through the persisted indexes, then add them."""
    if not analyses:
        return []
    with transaction.atomic():
        # Fixed lock order (vectors, then hashes) so concurrent workers cannot deadlock.
        vector_state, _ = IndexState.objects.select_for_update().get_or_create(name=VECTOR_INDEX)
        hash_state, _ = IndexState.objects.select_for_update().get_or_create(name=HASH_INDEX)
        dim = analyses[0].embedding_dim
        if vector_state.model_identity and vector_state.model_identity != model_identity():
            raise ValidationError("The embedding index was built with another model: run `manage.py reindex`.")
        vectors_index = _load_index(vector_state, dedup.VectorIndex, dim)
        hashes_index = _load_index(hash_state, dedup.HammingIndex)
        ids, vectors, hashes = _index_inputs(analyses)
        pairs = dedup.match_new(
            vectors_index,
            hashes_index,
            ids,
            vectors,
            hashes,
            min_cosine=settings.CURATION_MIN_COSINE,
            max_hamming=settings.CURATION_PHASH_MAX_DISTANCE,
        )
        vectors_index.add(ids, vectors)
        hashes_index.add(ids, hashes)
        _save_index(vector_state, vectors_index)
        _save_index(hash_state, hashes_index)
        AssetAnalysis.objects.filter(pk__in=[a.pk for a in analyses]).update(indexed_at=timezone.now())
        _record_pairs(pairs)
    return pairs


def _round(value):
    return None if value is None else round(float(value), 4)


def rebuild_indexes(*, progress: bool = False) -> int:
    """Rebuild both indexes from the stored embeddings of the configured model (`reindex`).

    One batch self-join and one save: re-adding in slices would save the whole index per slice.
    """
    analyses = list(
        selectors.current_analyses()
        .filter(asset__withdrawn_at__isnull=True)
        .select_related("asset")
        .order_by("asset_id")
    )
    with transaction.atomic():
        vector_state, _ = IndexState.objects.select_for_update().get_or_create(name=VECTOR_INDEX)
        hash_state, _ = IndexState.objects.select_for_update().get_or_create(name=HASH_INDEX)
        dim = analyses[0].embedding_dim if analyses else 0
        vectors_index, hashes_index = dedup.VectorIndex(max(dim, 1)), dedup.HammingIndex()
        pairs: list[dedup.Pair] = []
        if analyses:
            ids, vectors, hashes = _index_inputs(analyses)
            vectors_index.add(ids, vectors)
            hashes_index.add(ids, hashes)
            pairs = dedup.pairs_within(
                ids,
                vectors,
                hashes,
                min_cosine=settings.CURATION_MIN_COSINE,
                max_hamming=settings.CURATION_PHASH_MAX_DISTANCE,
            )
        _save_index(vector_state, vectors_index)
        _save_index(hash_state, hashes_index)
        AssetAnalysis.objects.update(indexed_at=None)
        AssetAnalysis.objects.filter(pk__in=[a.pk for a in analyses]).update(indexed_at=timezone.now())
        _record_pairs(pairs, progress=progress)
    return len(analyses)


def _index_inputs(analyses: list[AssetAnalysis]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    ids = np.array([a.asset_id for a in analyses], dtype=np.int64)
    vectors = np.stack([np.frombuffer(bytes(a.embedding), dtype=np.float16) for a in analyses]).astype(np.float32)
    return ids, vectors, [a.asset.phash for a in analyses]  # the ingest pipeline's pHash


def _record_pairs(pairs: list[dedup.Pair], *, progress: bool = False) -> None:
    from tqdm import tqdm

    assets = Asset.objects.in_bulk({int(p.a) for p in pairs} | {int(p.b) for p in pairs})
    for pair in tqdm(pairs, unit="pair", desc="Recording", disable=not progress):
        evidence = {"cosine": _round(pair.cosine), "hamming": pair.hamming, "reason": pair.reason}
        record_pair(assets[int(pair.a)], assets[int(pair.b)], evidence)


# --- pairs, clusters, holds --------------------------------------------------------------


def _quality_rank(asset: Asset):
    """Passing quality first, then resolution; the first upload wins a tie (edits tend to come later)."""
    analysis = getattr(asset, "analysis", None)
    return (bool(analysis and analysis.quality_ok), asset.width * asset.height, -asset.pk)


def record_pair(a: Asset, b: Asset, evidence: dict, *, exact: bool = False) -> Flag:
    """A near-duplicate (or identical) pair: cluster it, or flag and hold the later upload."""
    earlier, later = sorted((a, b), key=lambda asset: (asset.created_at, asset.pk))
    if earlier.owner_id == later.owner_id:
        _cluster_together(earlier, later)
        flag, _ = Flag.objects.get_or_create(
            kind=Flag.Kind.NEAR_DUPLICATE, asset=later, other_asset=earlier, defaults={"evidence": evidence}
        )
        return flag
    kind = Flag.Kind.EXACT_DUPLICATE if exact else Flag.Kind.CROSS_CREATOR
    identical = Flag.objects.filter(kind=Flag.Kind.EXACT_DUPLICATE, asset=later, other_asset=earlier).first()
    if identical and not exact:
        return identical  # one finding, one flag: "identical" already says more than "near"
    flag, created = Flag.objects.get_or_create(
        kind=kind, asset=later, other_asset=earlier, defaults={"evidence": evidence}
    )
    if created:
        Hold.objects.get_or_create(
            asset=later,
            flag=flag,
            defaults={
                "reason": "It closely matches an image another creator uploaded earlier. It stays out of packs "
                "until our staff have checked who holds the rights."
            },
        )
    return flag


def _cluster_together(first: Asset, second: Asset) -> DuplicateCluster:
    analyses = {a.asset_id: a for a in AssetAnalysis.objects.select_for_update().filter(asset__in=[first, second])}
    clusters = {a.cluster_id for a in analyses.values() if a.cluster_id}
    if clusters:
        keep = DuplicateCluster.objects.get(pk=min(clusters))
        for other in clusters - {keep.pk}:  # two clusters joined by this pair become one
            AssetAnalysis.objects.filter(cluster_id=other).update(cluster=keep)
            DuplicateCluster.objects.filter(pk=other).delete()
    else:
        keep = DuplicateCluster.objects.create(owner_id=first.owner_id, representative=first)
    for asset in (first, second):
        AssetAnalysis.objects.update_or_create(asset=asset, defaults={"cluster": keep})
    members = Asset.objects.filter(analysis__cluster=keep).select_related("analysis")
    keep.representative = max(members, key=_quality_rank)
    keep.save(update_fields=["representative", "updated_at"])
    return keep


# --- staff decisions ------------------------------------------------------------------------


def decide_flag(flag: Flag, *, actor, action: str, note: str = "") -> Flag:
    """Keep, reject or merge; every decision is kept in the audit trail."""
    if not actor.is_staff:
        raise PermissionDenied("Only staff review flags.")
    if action not in FlagDecision.Action.values:
        raise ValidationError(f"Unknown action “{action}”.")
    with transaction.atomic():
        flag = Flag.objects.select_for_update().get(pk=flag.pk)
        now = timezone.now()
        if action == FlagDecision.Action.MERGE:
            if flag.other_asset is None or flag.other_asset.owner_id != flag.asset.owner_id:
                raise ValidationError("Only near-duplicates from the same creator can be merged.")
            _cluster_together(flag.other_asset, flag.asset)
            flag.status = Flag.Status.MERGED
        elif action == FlagDecision.Action.KEEP:
            flag.status = Flag.Status.KEPT
            Hold.objects.active().filter(flag=flag).update(released_at=now, released_by=actor)
            if flag.kind == Flag.Kind.NEAR_DUPLICATE:
                _split_from_cluster(flag.asset)
        else:
            flag.status = Flag.Status.REJECTED
            Hold.objects.filter(flag=flag).update(reason="Rejected by staff after review: it stays out of packs.")
        flag.decided_by, flag.decided_at = actor, now
        flag.save(update_fields=["status", "decided_by", "decided_at"])
        FlagDecision.objects.create(flag=flag, actor=actor, action=action, note=note)
    return flag


def _split_from_cluster(asset: Asset) -> None:
    analysis = AssetAnalysis.objects.select_for_update().filter(asset=asset, cluster__isnull=False).first()
    if analysis is None:
        return
    cluster = analysis.cluster
    analysis.cluster = None
    analysis.save(update_fields=["cluster"])
    members = list(Asset.objects.filter(analysis__cluster=cluster).select_related("analysis"))
    if len(members) < 2:
        AssetAnalysis.objects.filter(cluster=cluster).update(cluster=None)
        cluster.delete()
    else:
        cluster.representative = max(members, key=_quality_rank)
        cluster.save(update_fields=["representative", "updated_at"])


def override_training_caption(analysis: AssetAnalysis, *, actor, text: str) -> AssetAnalysis:
    """Staff edit of the training caption, kept apart from the model's."""
    if not actor.is_staff:
        raise PermissionDenied("Only staff edit training captions.")
    text = " ".join(text.split())
    if len(text) > 1000:
        raise ValidationError("A training caption is at most 1000 characters.")
    analysis.caption_override = text
    analysis.caption_override_by = actor if text else None
    analysis.caption_override_at = timezone.now() if text else None
    analysis.save(update_fields=["caption_override", "caption_override_by", "caption_override_at"])
    return analysis
