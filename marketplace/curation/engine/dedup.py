"""Near-duplicate detection: a vector index for CLIP embeddings and a Hamming index for 64-bit pHashes.

Two images are near-duplicates when their pHashes differ in at most ``max_hamming`` bits OR their
embeddings' cosine similarity is at least ``min_cosine``. pHash alone misses most near-duplicates
(crops, re-encodes, small edits); CLIP alone misses some low-level copies. Both indexes are kept
on disk and updated in place, so a new upload is compared with the whole collection without a rescan.

Vector index, an inverted file (IVF) in a projected space:
- Filter. Vectors are projected on their top 128 principal components. A projection cannot lengthen a
  distance, and unit vectors with cosine >= t are within sqrt(2 - 2t) of each other, so comparing
  projections loses no pair; it lets through about 4e-4 of unrelated same-topic pairs (CLIP-like data),
  which are then checked exactly in full dimension. The filter costs a quarter of the full products.
- Cells. k-means cuts the projected space into about 4 sqrt(n) cells; an item is compared with the
  items of every cell whose centroid is almost as near as its own one: within a margin of
  breadth * sqrt(2 - 2t) * (median distance between neighbouring centroids), at most 64 cells. On
  CLIP-like data at 1M items it missed 5 of 8,006 pairs for the scan cost of 8 fixed probes per item,
  which missed 51. Grouping the queries by cell makes each cell one matrix product, at BLAS speed.
  Recall is measured (bench/dedup.py), not guaranteed; below MIN_TRAIN_SIZE there is one cell and
  the search is exact. Rejected after measuring: exact pruning by Voronoi bisectors (scans 10-35 % of
  the collection per query), two-level routing and centroid-neighbour routing (far lower recall: in
  high dimension an item's nearest centroids are not its own centroid's neighbours).
- Storage: float16 vectors and projections (1M x 512 in 1.25 GB), products in float32; cosines read
  back from the index are within about 1e-4.

Hamming index: multi-index hashing (Norouzi et al., 2012). The 64 bits are cut into 3 chunks of 21-22
bits, with a probe radius r_i per chunk such that sum(r_i + 1) > max_distance; by the pigeonhole
principle two hashes within max_distance differ in at most r_i bits on at least one chunk i. Each chunk
has a dense table (CSR offsets over all 2^21..2^22 values), so a probe is one array lookup; for a
distance of 8 a query makes 3 x 254 probes and meets about 1e-4 of the collection as candidates,
which are then checked exactly. Results are exact. Three chunks is the optimum of the method at about
a million items (m = 64 / log2 N). A faiss binary index would be a 30 MB dependency without removal
for its multi-hash index; faiss's IVF range search scans lists without the per-cell matrix products.

Work is spread over the cores by a thread pool (numpy releases the GIL in products and most array
operations). Run with one BLAS thread per process (OPENBLAS_NUM_THREADS=1, the norm for prefork
workers): threaded BLAS on busy cores measured 3-9x slower on these mid-sized products.
Everything is deterministic. No Django imports: the Django layer maps ids to assets.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import numpy as np

__all__ = [
    "MAX_HAMMING",
    "MIN_TRAIN_SIZE",
    "HammingIndex",
    "Pair",
    "VectorIndex",
    "hash_codes",
    "match_new",
    "pairs_within",
]

MIN_TRAIN_SIZE = 4096  # below this, one cell: the vector search is exact and cheap anyway
_RETRAIN_GROWTH = 4  # retrain the cells each time the collection has grown 4x (amortised O(k d) per add)
_KMEANS_ITERATIONS = 5
_KMEANS_SAMPLE_PER_CELL = 16  # cells are only a filter (every match is checked exactly): a coarse fit is enough
_PROJECTED_DIM = 128
_PCA_SAMPLE = 20000
_PROJECTION_SLACK = 1e-3  # on -|y - x|^2 / 2: covers float16 storage of the projections (error < 4e-4)
# Probe margins (see the module docstring), measured on bench/dedup.py's data at 1M items, embedding
# pairs alone (8,006): a self-join finds a pair from either of its items (0.3: recall 0.997, 0.4: 0.9994);
# a one-sided query needs a wider margin (0.6: 0.999, 0.8: 0.9998).
_SELF_JOIN_BREADTH = 0.35
_QUERY_BREADTH = 0.8
_MAX_PROBES = 64
_ROWS_PER_BLOCK = 4096  # rows per matrix product when projecting or scoring centroids
_SIMS_PER_BLOCK = 1 << 22  # entries per matrix product in a cell: 16 MB, however large the cell
_PROBES_PER_BLOCK = 1 << 20  # Hamming probes per vectorised step: about 30 MB of temporaries
_HASH_CHUNKS = ((0, 21), (21, 21), (42, 22))  # (first bit, width) of each multi-index-hashing chunk
MAX_HAMMING = 12  # probes per query grow as C(21, max_distance / 3): 762 at 8, 10,900 at 12
_WORKERS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
_FORMAT = 1

_T = TypeVar("_T")
_R = TypeVar("_R")


@dataclass(frozen=True, slots=True)
class Pair:
    """Two near-duplicate items, ``a < b``. ``reason``: "embedding", "hash" or "both".

    ``cosine``/``hamming`` are None only in ``match_new`` when the other index lacks the stored item.
    """

    a: int
    b: int
    cosine: float | None
    hamming: int | None
    reason: str


# --- shared storage ----------------------------------------------------------------------------------


def _parallel(function: Callable[[_T], _R], items: Sequence[_T] | np.ndarray) -> list[_R]:
    """function over items on every core, results in order (so deterministic).

    A pool per call, not one per module: a pool's threads do not survive a fork (Celery's prefork workers).
    """
    if len(items) <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(_WORKERS) as pool:
        return list(pool.map(function, items))


def _with_room(array: np.ndarray, rows: int) -> np.ndarray:
    """The array itself, or a copy with capacity for ``rows`` rows (doubling: amortised O(1) appends)."""
    if len(array) >= rows:
        return array
    bigger = np.empty((max(rows, 2 * len(array)), *array.shape[1:]), array.dtype)
    bigger[: len(array)] = array
    return bigger


def _offsets(keys: np.ndarray, n_keys: int) -> np.ndarray:
    """offsets[k] = number of keys < k, for k in 0..n_keys (int32: up to 2^31 items, half the cache lines)."""
    offsets = np.zeros(n_keys + 1, np.int32)
    np.cumsum(np.bincount(keys, minlength=n_keys), out=offsets[1:])
    return offsets


def _lookup_sorted(sorted_keys: np.ndarray, payload: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """payload at the position of each query in sorted_keys; -1 where the query is absent."""
    if not len(sorted_keys):
        return np.full(len(queries), -1, np.int64)
    pos = np.minimum(np.searchsorted(sorted_keys, queries), len(sorted_keys) - 1)
    return np.where(sorted_keys[pos] == queries, payload[pos], -1)


def _check_unique(ids: np.ndarray) -> None:
    ordered = np.sort(ids)
    if np.any(ordered[1:] == ordered[:-1]):
        raise ValueError("duplicate ids in one batch")


def _expand(starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every element of the ranges [start, start + count): (index of its range, its position)."""
    owner = np.repeat(np.arange(len(counts)), counts)
    first = np.cumsum(counts) - counts
    return owner, starts[owner] + (np.arange(owner.size) - first[owner])


class _Rows:
    """Row slots in insertion order, with tombstones for removed rows and a sorted id -> slot lookup."""

    def __init__(self, ids: np.ndarray | None = None) -> None:
        ids = np.empty(0, np.int64) if ids is None else ids
        self.ids = ids.copy()
        self.alive = np.ones(len(ids), bool)
        self.size = len(ids)
        self.live = len(ids)
        self._sorted_slots = np.argsort(ids, kind="stable")
        self._sorted_ids = ids[self._sorted_slots]

    def find(self, ids: np.ndarray) -> np.ndarray:
        """The live slot of each id, -1 where absent."""
        return _lookup_sorted(self._sorted_ids, self._sorted_slots, ids)

    def append(self, ids: np.ndarray) -> slice:
        """The (contiguous) slots of new rows; a row already stored under one of the ids is removed."""
        _check_unique(ids)
        self.remove(ids)
        slots = slice(self.size, self.size + len(ids))
        self.ids = _with_room(self.ids, slots.stop)
        self.alive = _with_room(self.alive, slots.stop)
        self.ids[slots], self.alive[slots] = ids, True
        self.size, self.live = slots.stop, self.live + len(ids)
        pos = np.searchsorted(self._sorted_ids, ids)
        self._sorted_ids = np.insert(self._sorted_ids, pos, ids)
        self._sorted_slots = np.insert(self._sorted_slots, pos, np.arange(slots.start, slots.stop))
        return slots

    def remove(self, ids: np.ndarray) -> int:
        ids = np.unique(ids)
        slots = self.find(ids)
        gone = ids[slots >= 0]
        self.alive[slots[slots >= 0]] = False
        self.live -= gone.size
        pos = np.searchsorted(self._sorted_ids, gone)
        self._sorted_ids = np.delete(self._sorted_ids, pos)
        self._sorted_slots = np.delete(self._sorted_slots, pos)
        return gone.size

    def needs_compaction(self) -> bool:
        return self.size - self.live > max(1024, self.live)

    def live_slots(self) -> np.ndarray:
        return np.flatnonzero(self.alive[: self.size])


class _Buckets:
    """Slots grouped by an integer key in [0, n_keys): CSR offsets plus slots sorted by key.

    Inserting moves memory once (np.insert) and computes no distance: the update in place of both indexes.
    Removed slots stay until the owner compacts; lookups filter them out.
    """

    def __init__(self, n_keys: int, keys: np.ndarray, slots: np.ndarray) -> None:
        self.n_keys = n_keys
        self.slots = slots[np.argsort(keys, kind="stable")].astype(np.int32)
        self.offsets = _offsets(keys, n_keys)

    def insert(self, keys: np.ndarray, slots: np.ndarray) -> None:
        order = np.argsort(keys, kind="stable")  # np.insert keeps the given order among equal positions
        self.slots = np.insert(self.slots, self.offsets[keys[order] + 1], slots[order])
        self.offsets += _offsets(keys, self.n_keys)

    def members(self, key: int) -> np.ndarray:
        return self.slots[self.offsets[key] : self.offsets[key + 1]]


def _atomic_save(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Write a temporary file beside ``path``, fsync it, then rename it over ``path``.

    A crash at any point leaves either the old file or the new one, never a torn file.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)


def _load_arrays(path: str | os.PathLike, kind: str) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    if str(arrays.get("kind")) != kind or int(arrays.get("format", -1)) != _FORMAT:
        raise ValueError(f"{path} is not a {kind} file of format {_FORMAT}")
    return arrays


def _as_ids(ids: Sequence[int] | np.ndarray) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
        raise ValueError("ids must be a 1-d array of integers")
    return ids.astype(np.int64)


def _limit_per_row(rows: np.ndarray, rank_keys: tuple[np.ndarray, ...], limit: int | None) -> np.ndarray:
    """Order of results by row then by ``rank_keys`` (most significant first), at most ``limit`` per row."""
    order = np.lexsort((*reversed(rank_keys), rows))
    if limit is None:
        return order
    sorted_rows = rows[order]
    first = np.searchsorted(sorted_rows, sorted_rows)
    return order[np.arange(order.size) - first < limit]


# --- vectors -----------------------------------------------------------------------------------------


def _as_vectors(vectors: np.ndarray, dim: int | None = None) -> np.ndarray:
    """The vectors as float32 (no copy when they already are), checked for shape and unit length."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or (dim is not None and vectors.shape[1] != dim):
        raise ValueError(f"vectors must have shape (n, {dim or 'dim'}), not {vectors.shape}")
    vectors = vectors.astype(np.float32, copy=False)
    for start in range(0, len(vectors), _ROWS_PER_BLOCK):  # in blocks: no 2 GB temporary at 1M x 512
        norms = np.linalg.norm(vectors[start : start + _ROWS_PER_BLOCK], axis=1)
        if not np.all(np.abs(norms - 1) < 1e-3):
            raise ValueError("vectors must be L2-normalised")
    return vectors


def _blocks_of(n: int) -> range:
    return range(0, n, _ROWS_PER_BLOCK)


def _cell_count(n: int) -> int:
    """Cells for n items: scoring centroids costs n*k, scanning cells about n*probes*n/k; measured least
    near k = 4 sqrt(n) with the margin's 5-10 probes. A multiple of 8, for _nonzero. A single cell (exact
    search) below MIN_TRAIN_SIZE."""
    return 1 if n < MIN_TRAIN_SIZE else 8 * round(np.sqrt(n) / 2)


def _nonzero(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.nonzero of a sparse 2-d mask, scanning it as 64-bit words when rows allow (8x fewer elements)."""
    if mask.shape[1] % 8:
        return np.nonzero(mask)
    word_rows, words = np.nonzero(mask.view(np.uint64))
    byte_rows, byte_columns = np.nonzero(mask.reshape(len(mask), mask.shape[1] // 8, 8)[word_rows, words])
    return word_rows[byte_rows], 8 * words[byte_rows] + byte_columns


def _sample(vectors: np.ndarray, size: int) -> np.ndarray:
    """A deterministic sample of rows as float32, in row order (sequential reads)."""
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(len(vectors), min(size, len(vectors)), replace=False))
    return vectors[rows].astype(np.float32)


def _fit_basis(vectors: np.ndarray) -> np.ndarray:
    """(dim, p) orthonormal columns: the sample's top principal directions. Any orthonormal basis keeps the
    filter exact; the principal one keeps most of the distances between items, so it lets few through."""
    dim = vectors.shape[1]
    p = min(_PROJECTED_DIM, dim)
    if len(vectors) < 2:
        return np.eye(dim, p, dtype=np.float32)
    sample = _sample(vectors, _PCA_SAMPLE)
    sample -= sample.mean(axis=0)
    _, eigenvectors = np.linalg.eigh((sample.T @ sample).astype(np.float64))  # ascending eigenvalues
    return np.ascontiguousarray(eigenvectors[:, ::-1][:, :p], np.float32)


def _project(vectors: np.ndarray, basis: np.ndarray) -> np.ndarray:
    projected = np.empty((len(vectors), basis.shape[1]), np.float32)

    def project_block(start: int) -> None:
        block = vectors[start : start + _ROWS_PER_BLOCK].astype(np.float32, copy=False)
        projected[start : start + _ROWS_PER_BLOCK] = block @ basis

    _parallel(project_block, _blocks_of(len(vectors)))
    return projected


def _half_norms(projected: np.ndarray) -> np.ndarray:
    return 0.5 * np.einsum("ij,ij->i", projected, projected, dtype=np.float32)


def _with_column(block: np.ndarray, column: float | np.ndarray, last: float | np.ndarray) -> np.ndarray:
    """float32 [block | column | last]: folds the norm terms of a squared distance into one matrix product."""
    out = np.empty((len(block), block.shape[1] + 2), np.float32)
    out[:, :-2], out[:, -2], out[:, -1] = block, column, last
    return out


class _Partition:
    """Cells of the projected space: k-means centroids, and the median distance between neighbouring ones."""

    def __init__(self, centroids: np.ndarray, spacing: float) -> None:
        self.centroids, self.spacing = centroids, spacing
        # y.c - |c|^2/2 is largest for the nearest centroid: [y, 1, 0] . [c, -|c|^2/2, 0], one product.
        self._targets = _with_column(centroids, -_half_norms(centroids), 0.0).T

    def __len__(self) -> int:
        return len(self.centroids)

    @classmethod
    def train(cls, projected: np.ndarray, k: int) -> _Partition:
        """k-means (Lloyd) on a deterministic sample; one cell when k == 1."""
        if k == 1:
            return cls(np.zeros((1, projected.shape[1]), np.float32), 0.0)
        sample = _sample(projected, _KMEANS_SAMPLE_PER_CELL * k)
        centroids = sample[np.random.default_rng(0).choice(len(sample), k, replace=False)]
        for _ in range(_KMEANS_ITERATIONS):
            cells = cls(centroids, 0.0).assign(sample)
            order = np.argsort(cells, kind="stable")
            counts = np.bincount(cells, minlength=k)
            filled = counts > 0  # an empty cell keeps its centroid
            sums = np.add.reduceat(sample[order], (np.cumsum(counts) - counts)[filled], axis=0)
            centroids[filled] = sums / counts[filled, None]
        return cls(centroids, cls._median_spacing(centroids))

    @staticmethod
    def _median_spacing(centroids: np.ndarray) -> float:
        """Median distance from a centroid to its nearest other centroid."""
        partition = _Partition(centroids, 0.0)
        half_norms = _half_norms(centroids)
        nearest = np.empty(len(centroids), np.float32)
        for start in _blocks_of(len(centroids)):
            scores = partition._scores(centroids[start : start + _ROWS_PER_BLOCK])
            scores[np.arange(len(scores)), np.arange(start, start + len(scores))] = -np.inf
            # |c - c'|^2 = |c|^2 - 2 (c.c' - |c'|^2/2)
            nearest[start : start + len(scores)] = 2 * half_norms[start : start + len(scores)] - 2 * scores.max(axis=1)
        return float(np.median(np.sqrt(np.maximum(nearest, 0))))

    def _scores(self, block: np.ndarray) -> np.ndarray:
        return _with_column(block.astype(np.float32, copy=False), 1.0, 0.0) @ self._targets

    def assign(self, projected: np.ndarray) -> np.ndarray:
        """Each row's own cell: the nearest centroid."""

        def assign_block(start: int) -> np.ndarray:
            return self._scores(projected[start : start + _ROWS_PER_BLOCK]).argmax(axis=1)

        blocks = _parallel(assign_block, _blocks_of(len(projected)))
        return np.concatenate(blocks) if blocks else np.empty(0, np.int64)

    def probes(
        self, projected: np.ndarray, min_cosine: float, breadth: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, cell) for every cell a row is compared with, and each row's own cell.

        A row probes the cells whose score is within a margin of its own cell's (at most _MAX_PROBES).
        """
        margin = breadth * np.sqrt(2 - 2 * min_cosine) * self.spacing

        def probe_block(start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            scores = self._scores(projected[start : start + _ROWS_PER_BLOCK])
            own = scores.argmax(axis=1)
            near = scores >= (scores[np.arange(len(scores)), own] - margin)[:, None]
            rows, cells = _nonzero(near)
            crowded = np.flatnonzero(np.bincount(rows, minlength=len(scores)) > _MAX_PROBES)
            if crowded.size:  # keep the nearest _MAX_PROBES
                kth = -np.partition(-scores[crowded], _MAX_PROBES - 1, axis=1)[:, _MAX_PROBES - 1]
                keep = ~np.isin(rows, crowded)
                rows, cells = rows[keep], cells[keep]
                extra_rows, extra_cells = np.nonzero(scores[crowded] >= kth[:, None])
                rows, cells = np.concatenate([rows, crowded[extra_rows]]), np.concatenate([cells, extra_cells])
            return start + rows, cells, own

        blocks = _parallel(probe_block, _blocks_of(len(projected)))
        if not blocks:
            return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
        rows, cells, own = zip(*blocks, strict=True)
        return np.concatenate(rows), np.concatenate(cells), np.concatenate(own)


def _candidates(
    queries: np.ndarray,
    probe_rows: np.ndarray,
    probe_cells: np.ndarray,
    cells: _Buckets,
    stored: np.ndarray,
    stored_half_norms: np.ndarray,
    min_cosine: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(query row, stored slot) of every stored item in a probed cell whose projection is close enough.

    Each cell costs one matrix product with all the queries probing it, where
    [y, -|y|^2/2, 1] . [x, 1, -|x|^2/2] = -|y - x|^2/2 >= -(1 - min_cosine) keeps every pair with
    cosine >= min_cosine (the projection of unit vectors cannot lengthen their distance).
    """
    bound = -(1.0 - min_cosine) - _PROJECTION_SLACK
    query_half_norms = _half_norms(queries)
    order = np.argsort(probe_cells, kind="stable")
    rows_by_cell = probe_rows[order]
    bounds = _offsets(probe_cells, cells.n_keys)

    def cell_candidates(cell: int) -> tuple[np.ndarray, np.ndarray]:
        slots = cells.members(cell)
        members = _with_column(stored[slots], 1.0, -stored_half_norms[slots]).T
        cell_rows = rows_by_cell[bounds[cell] : bounds[cell + 1]]
        found_rows, found_slots = [], []
        step = max(1, _SIMS_PER_BLOCK // max(slots.size, 1))
        for rows in (cell_rows[start : start + step] for start in range(0, len(cell_rows), step)):
            closeness = _with_column(queries[rows], -query_half_norms[rows], 1.0) @ members
            hit_rows = np.flatnonzero(closeness.max(axis=1) >= bound)  # most rows have none: skip them early
            r, c = np.nonzero(closeness[hit_rows] >= bound)
            found_rows.append(rows[hit_rows[r]])
            found_slots.append(slots[c])
        return np.concatenate(found_rows), np.concatenate(found_slots)

    probed = np.flatnonzero((np.diff(bounds) > 0) & (np.diff(cells.offsets) > 0))
    found = _parallel(cell_candidates, probed)
    if not found:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    rows, slots = zip(*found, strict=True)
    return np.concatenate(rows).astype(np.int64), np.concatenate(slots).astype(np.int64)


def _row_cosines(left: np.ndarray, left_rows: np.ndarray, right: np.ndarray, right_rows: np.ndarray) -> np.ndarray:
    """Cosines of row pairs, in float32, in blocks (no gathered copy of every candidate at once)."""
    cosines = np.empty(len(left_rows), np.float32)
    for start in _blocks_of(len(left_rows)):
        part = slice(start, start + _ROWS_PER_BLOCK)
        a = left[left_rows[part]].astype(np.float32, copy=False)
        b = right[right_rows[part]].astype(np.float32, copy=False)
        cosines[part] = np.einsum("ij,ij->i", a, b)
    return cosines


class VectorIndex:
    """Unit vectors (CLIP embeddings) by int64 id, searchable by cosine threshold. Not thread-safe.

    ``breadth`` widens the probe margin (see the module docstring): more recall, more time.
    """

    def __init__(self, dim: int, *, breadth: float = _QUERY_BREADTH) -> None:
        self.dim = dim
        self.breadth = breadth
        self._rows = _Rows()
        self._vectors = np.empty((0, dim), np.float16)  # exact checks and retraining
        self._projected = np.empty((0, min(_PROJECTED_DIM, dim)), np.float16)  # the filter
        self._half_norms = np.empty(0, np.float32)
        self._cells = np.empty(0, np.int64)  # cell of each slot
        self._basis = _fit_basis(self._vectors)
        self._partition = _Partition.train(self._projected, 1)
        self._trained_at = 0  # live size when the cells were last trained
        self._buckets = _Buckets(1, self._cells, self._cells)

    def __len__(self) -> int:
        return self._rows.live

    def add(self, ids: Sequence[int] | np.ndarray, vectors: np.ndarray) -> None:
        """Store vectors under ids; an id already stored is replaced."""
        ids, vectors = _as_ids(ids), _as_vectors(vectors, self.dim)
        if len(ids) != len(vectors):
            raise ValueError("ids and vectors differ in length")
        slots = self._rows.append(ids)
        for name in ("_vectors", "_projected", "_half_norms", "_cells"):
            setattr(self, name, _with_room(getattr(self, name), self._rows.size))
        self._vectors[slots] = vectors
        if len(self) >= max(MIN_TRAIN_SIZE, _RETRAIN_GROWTH * self._trained_at):
            self._retrain()  # projects and assigns every row, these included
        else:
            self._store_projection(slots, _project(vectors, self._basis))
            self._buckets.insert(self._cells[slots], np.arange(slots.start, slots.stop))

    def remove(self, ids: Sequence[int] | np.ndarray) -> int:
        """Remove the ids that are stored; returns how many were."""
        removed = self._rows.remove(_as_ids(ids))
        if self._rows.needs_compaction():
            self._keep(self._rows.live_slots())
            self._buckets = _Buckets(len(self._partition), self._cells, np.arange(len(self._cells)))
        return removed

    def neighbours(
        self, vectors: np.ndarray, min_cosine: float, limit: int | None = None
    ) -> list[tuple[int, int, float]]:
        """(query row, stored id, cosine) for stored items with cosine >= min_cosine, per row best first."""
        rows, ids, cosines = self._neighbour_arrays(_as_vectors(vectors, self.dim), min_cosine)
        order = _limit_per_row(rows, (-cosines, ids), limit)
        return list(zip(rows[order].tolist(), ids[order].tolist(), cosines[order].tolist(), strict=True))

    def save(self, path: str | os.PathLike) -> None:
        """Write the index atomically (live rows only)."""
        live = self._rows.live_slots()
        arrays = {
            "kind": np.array("VectorIndex"),
            "format": np.array(_FORMAT),
            "breadth": np.array(self.breadth),
            "ids": self._rows.ids[live],
            "vectors": self._vectors[live],
            "projected": self._projected[live],
            "half_norms": self._half_norms[live],
            "cells": self._cells[live],
            "basis": self._basis,
            "centroids": self._partition.centroids,
            "spacing": np.array(self._partition.spacing),
            "trained_at": np.array(self._trained_at),
        }
        _atomic_save(path, lambda file: np.savez(file, **arrays))

    @classmethod
    def load(cls, path: str | os.PathLike) -> VectorIndex:
        arrays = _load_arrays(path, "VectorIndex")
        index = cls(arrays["vectors"].shape[1], breadth=float(arrays["breadth"]))
        index._rows = _Rows(arrays["ids"])
        for name in ("vectors", "projected", "half_norms", "cells", "basis"):
            setattr(index, f"_{name}", arrays[name])
        index._partition = _Partition(arrays["centroids"], float(arrays["spacing"]))
        index._trained_at = int(arrays["trained_at"])
        index._buckets = _Buckets(len(index._partition), index._cells, np.arange(len(index._cells)))
        return index

    def _neighbour_arrays(self, vectors: np.ndarray, min_cosine: float) -> tuple[np.ndarray, ...]:
        projected = _project(vectors, self._basis)
        probe_rows, probe_cells, _ = self._partition.probes(projected, min_cosine, self.breadth)
        rows, slots = _candidates(
            projected, probe_rows, probe_cells, self._buckets, self._projected, self._half_norms, min_cosine
        )
        alive = self._rows.alive[slots]
        rows, slots = rows[alive], slots[alive]
        cosines = _row_cosines(vectors, rows, self._vectors, slots)
        close = cosines >= min_cosine
        return rows[close], self._rows.ids[slots[close]], cosines[close]

    def _lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(float32 vectors, found mask) for ids; rows of absent ids are zero."""
        slots = self._rows.find(ids)
        vectors = np.zeros((len(ids), self.dim), np.float32)
        vectors[slots >= 0] = self._vectors[slots[slots >= 0]]
        return vectors, slots >= 0

    def _store_projection(self, slots: slice, projected: np.ndarray) -> None:
        """Store the projections of rows (float16: _PROJECTION_SLACK covers the rounding) and their cells."""
        self._projected[slots] = projected
        self._half_norms[slots] = _half_norms(projected)
        self._cells[slots] = self._partition.assign(projected)

    def _keep(self, live: np.ndarray) -> None:
        """Keep only the live slots, renumbered."""
        self._rows = _Rows(self._rows.ids[live])
        for name in ("_vectors", "_projected", "_half_norms", "_cells"):
            setattr(self, name, getattr(self, name)[live])

    def _retrain(self) -> None:
        if self._rows.live < self._rows.size:
            self._keep(self._rows.live_slots())
        n = self._rows.size
        self._basis = _fit_basis(self._vectors[:n])
        projected = _project(self._vectors[:n], self._basis)
        self._partition = _Partition.train(projected, _cell_count(n))
        self._store_projection(slice(0, n), projected)
        self._buckets = _Buckets(len(self._partition), self._cells[:n], np.arange(n))
        self._trained_at = n


def _vector_self_join(vectors: np.ndarray, min_cosine: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row pairs (a < b) of one batch with cosine >= min_cosine, and their cosines."""
    n = len(vectors)
    projected = _project(vectors, _fit_basis(vectors))
    partition = _Partition.train(projected, _cell_count(n))
    probe_rows, probe_cells, own = partition.probes(projected, min_cosine, _SELF_JOIN_BREADTH)
    cells = _Buckets(len(partition), own, np.arange(n))
    rows, slots = _candidates(projected, probe_rows, probe_cells, cells, projected, _half_norms(projected), min_cosine)
    # A pair is often met from both of its items, and every item meets itself: keep each pair once.
    a, b = np.minimum(rows, slots), np.maximum(rows, slots)
    keys = np.unique((a * n + b)[a != b])
    a, b = keys // max(n, 1), keys % max(n, 1)
    cosines = _row_cosines(vectors, a, vectors, b)
    close = cosines >= min_cosine
    return a[close], b[close], cosines[close]


# --- hashes ------------------------------------------------------------------------------------------

_HEX_VALUES = np.full(256, 255, np.uint8)
for _digit in "0123456789abcdefABCDEF":
    _HEX_VALUES[ord(_digit)] = int(_digit, 16)


def hash_codes(hashes: Sequence[str] | Sequence[int] | np.ndarray) -> np.ndarray:
    """64-bit hashes as uint64, from 16-digit hex strings (``str(imagehash.phash(...))``) or integers."""
    array = np.asarray(hashes)
    if array.size == 0:
        return np.empty(0, np.uint64)
    if array.dtype.kind in "iu":
        return array.astype(np.uint64)
    if array.dtype.kind not in "US" or np.any(np.char.str_len(array) != 16):
        raise ValueError("hashes must be uint64 or 16-digit hex strings")
    digits = _HEX_VALUES[array.astype("S16").view(np.uint8).reshape(-1, 16)]
    if np.any(digits == 255):
        raise ValueError("hashes must be uint64 or 16-digit hex strings")
    shifts = np.arange(60, -1, -4, dtype=np.uint64)
    return np.bitwise_or.reduce(digits.astype(np.uint64) << shifts, axis=1)


def _chunk(codes: np.ndarray, first_bit: int, width: int) -> np.ndarray:
    return ((codes >> np.uint64(first_bit)) & np.uint64((1 << width) - 1)).astype(np.int64)


def _chunk_radii(max_distance: int) -> list[int]:
    """Probe radius per chunk with sum(r + 1) = max_distance + 1 (pigeonhole); -1: chunk not probed.

    A negative max_distance matches nothing (no chunk is probed).
    """
    if max_distance > MAX_HAMMING:
        raise ValueError(f"max_distance above {MAX_HAMMING}: too many probes (and far beyond pHash practice)")
    spare = max_distance + 1 - len(_HASH_CHUNKS)
    return [spare // len(_HASH_CHUNKS) + (i < spare % len(_HASH_CHUNKS)) for i in range(len(_HASH_CHUNKS))]


@functools.cache
def _flip_masks(width: int, radius: int) -> np.ndarray:
    """All masks of ``width`` bits with at most ``radius`` bits set (254 for 21 bits, radius 2)."""
    masks = [
        sum(1 << bit for bit in bits) for r in range(radius + 1) for bits in itertools.combinations(range(width), r)
    ]
    return np.array(masks, np.int64)


def _blocks(rows: np.ndarray, probes_per_row: int) -> list[np.ndarray]:
    step = max(1, _PROBES_PER_BLOCK // max(probes_per_row, 1))
    return [rows[start : start + step] for start in range(0, len(rows), step)]


def _probed_pairs(
    codes: np.ndarray,
    keys: np.ndarray,
    stored: np.ndarray,
    buckets: _Buckets,
    chunk: int,
    max_distance: int,
    task: tuple[np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Probe the stored items whose chunk key is keys[row] ^ mask, for task = (rows, masks); keep the close ones."""
    rows, masks = task
    probes = (keys[rows, None] ^ masks).ravel()
    starts = buckets.offsets[probes]
    counts = buckets.offsets[probes + 1] - starts
    hits = np.flatnonzero(counts)
    owner, positions = _expand(starts[hits], counts[hits])
    return _close_pairs(codes, rows[hits[owner] // masks.size], stored, buckets.slots[positions], chunk, max_distance)


def _close_pairs(
    codes: np.ndarray, rows: np.ndarray, stored: np.ndarray, slots: np.ndarray, chunk: int, max_distance: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The candidates (row, slot) within max_distance, with their distances, less those an earlier chunk finds."""
    diff = codes[rows] ^ stored[slots]
    distances = np.bitwise_count(diff)
    keep = distances <= max_distance
    for (bit, width), radius in zip(_HASH_CHUNKS[:chunk], _chunk_radii(max_distance), strict=False):
        keep &= np.bitwise_count(_chunk(diff, bit, width)) > radius
    return rows[keep], slots[keep], distances[keep]


def _concat(found: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not found:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.uint8)
    rows, slots, distances = zip(*found, strict=True)  # rows and slots widened: callers multiply them
    return np.concatenate(rows).astype(np.int64), np.concatenate(slots).astype(np.int64), np.concatenate(distances)


def _probe(
    codes: np.ndarray, max_distance: int, stored: np.ndarray, chunks: list[_Buckets]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query row, stored slot, distance) for every stored code within max_distance, each pair once."""
    found = []
    for j, ((bit, width), radius, buckets) in enumerate(
        zip(_HASH_CHUNKS, _chunk_radii(max_distance), chunks, strict=True)
    ):
        if radius < 0:
            continue
        masks = _flip_masks(width, radius)
        keys = _chunk(codes, bit, width)
        by_key = np.argsort(keys, kind="stable")  # neighbouring queries probe neighbouring table entries
        probe = functools.partial(_probed_pairs, codes, keys, stored, buckets, j, max_distance)
        found += _parallel(probe, [(rows, masks) for rows in _blocks(by_key, masks.size)])
    return _concat(found)


def _same_bucket_pairs(buckets: _Buckets) -> tuple[np.ndarray, np.ndarray]:
    """Every pair of slots that share a bucket, once."""
    counts = np.diff(buckets.offsets)
    shared = np.flatnonzero(counts > 1)
    owner, positions = _expand(buckets.offsets[shared], counts[shared])
    ends = buckets.offsets[shared + 1][owner]
    partner, partner_positions = _expand(positions + 1, ends - positions - 1)
    return buckets.slots[positions[partner]], buckets.slots[partner_positions]


def _hash_buckets(codes: np.ndarray, slots: np.ndarray) -> list[_Buckets]:
    return [_Buckets(1 << width, _chunk(codes, bit, width), slots) for bit, width in _HASH_CHUNKS]


class HammingIndex:
    """64-bit hashes (pHash) by int64 id, searchable by Hamming distance (at most MAX_HAMMING); exact.
    Not thread-safe.

    Memory: 28 bytes per item plus fixed tables of 32 MB (int32 offsets over 2^21, 2^21 and 2^22 keys).
    """

    def __init__(self) -> None:
        self._rows = _Rows()
        self._codes = np.empty(0, np.uint64)
        self._chunks = _hash_buckets(self._codes, np.empty(0, np.int64))

    def __len__(self) -> int:
        return self._rows.live

    def add(self, ids: Sequence[int] | np.ndarray, hashes: Sequence[str] | Sequence[int] | np.ndarray) -> None:
        """Store hashes under ids; an id already stored is replaced."""
        ids, codes = _as_ids(ids), hash_codes(hashes)
        if len(ids) != len(codes):
            raise ValueError("ids and hashes differ in length")
        slots = self._rows.append(ids)
        self._codes = _with_room(self._codes, self._rows.size)
        self._codes[slots] = codes
        for (bit, width), buckets in zip(_HASH_CHUNKS, self._chunks, strict=True):
            buckets.insert(_chunk(codes, bit, width), np.arange(slots.start, slots.stop))

    def remove(self, ids: Sequence[int] | np.ndarray) -> int:
        """Remove the ids that are stored; returns how many were."""
        removed = self._rows.remove(_as_ids(ids))
        if self._rows.needs_compaction():
            live = self._rows.live_slots()
            self._rows, self._codes = _Rows(self._rows.ids[live]), self._codes[live]
            self._chunks = _hash_buckets(self._codes, np.arange(len(live)))
        return removed

    def within(
        self, hashes: Sequence[str] | Sequence[int] | np.ndarray, max_distance: int, limit: int | None = None
    ) -> list[tuple[int, int, int]]:
        """(query row, stored id, distance) for stored hashes within max_distance bits, per row closest first."""
        rows, ids, distances = self._within_arrays(hash_codes(hashes), max_distance)
        order = _limit_per_row(rows, (distances, ids), limit)
        return list(zip(rows[order].tolist(), ids[order].tolist(), distances[order].tolist(), strict=True))

    def save(self, path: str | os.PathLike) -> None:
        """Write the index atomically (live rows only)."""
        live = self._rows.live_slots()
        arrays = {
            "kind": np.array("HammingIndex"),
            "format": np.array(_FORMAT),
            "ids": self._rows.ids[live],
            "codes": self._codes[live],
        }
        _atomic_save(path, lambda file: np.savez(file, **arrays))

    @classmethod
    def load(cls, path: str | os.PathLike) -> HammingIndex:
        arrays = _load_arrays(path, "HammingIndex")
        index = cls()
        index._rows, index._codes = _Rows(arrays["ids"]), arrays["codes"]
        index._chunks = _hash_buckets(index._codes, np.arange(len(index._codes)))
        return index

    def _within_arrays(self, codes: np.ndarray, max_distance: int) -> tuple[np.ndarray, ...]:
        rows, slots, distances = _probe(codes, max_distance, self._codes, self._chunks)
        alive = self._rows.alive[slots]
        return rows[alive], self._rows.ids[slots[alive]], distances[alive]

    def _lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(codes, found mask) for ids; codes of absent ids are zero."""
        slots = self._rows.find(ids)
        codes = np.zeros(len(ids), np.uint64)
        codes[slots >= 0] = self._codes[slots[slots >= 0]]
        return codes, slots >= 0


def _hash_self_join(codes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row pairs (a < b) of one batch within max_distance bits, and their distances.

    Each pair is probed from one of its two items only: the one whose chunk key has a 0 at the highest
    bit where the two keys differ, which is the top bit of the probe mask; pairs with equal keys come
    straight from their bucket. Half the probes of querying every item against the batch.
    """
    found = []
    chunks = _hash_buckets(codes, np.arange(len(codes)))
    for j, ((bit, width), radius, buckets) in enumerate(
        zip(_HASH_CHUNKS, _chunk_radii(max_distance), chunks, strict=True)
    ):
        if radius < 0:
            continue
        rows, slots = _same_bucket_pairs(buckets)
        found.append(_close_pairs(codes, rows, codes, slots, j, max_distance))
        keys = _chunk(codes, bit, width)
        masks = _flip_masks(width, radius)[1:]
        top_bits = np.frexp(masks)[1] - 1
        tasks = []
        for top_bit in np.unique(top_bits):
            group = masks[top_bits == top_bit]
            probing = buckets.slots[(keys[buckets.slots] >> top_bit) & 1 == 0]  # in key order, for locality
            tasks += [(rows, group) for rows in _blocks(probing, group.size)]
        found += _parallel(functools.partial(_probed_pairs, codes, keys, codes, buckets, j, max_distance), tasks)
    rows, slots, distances = _concat(found)
    return np.minimum(rows, slots), np.maximum(rows, slots), distances


# --- pairs -------------------------------------------------------------------------------------------


def _pairs(
    a: np.ndarray, b: np.ndarray, cosines: np.ndarray, distances: np.ndarray, min_cosine: float, max_hamming: int
) -> list[Pair]:
    """Pairs sorted by (a, b), with a < b; a NaN cosine or a negative distance means unknown."""
    a, b = np.minimum(a, b), np.maximum(a, b)
    by_embedding, by_hash = cosines >= min_cosine, (distances >= 0) & (distances <= max_hamming)
    reasons = np.where(by_embedding & by_hash, "both", np.where(by_embedding, "embedding", "hash"))
    order = np.lexsort((b, a))
    return [
        Pair(pa, pb, None if np.isnan(cosine) else cosine, None if distance < 0 else distance, reason)
        for pa, pb, cosine, distance, reason in zip(
            a[order].tolist(),
            b[order].tolist(),
            cosines[order].tolist(),
            distances[order].tolist(),
            reasons[order].tolist(),
            strict=True,
        )
    ]


def _positions(keys: np.ndarray, part: np.ndarray) -> np.ndarray:
    """Where each key sits in ``part``; -1 where absent."""
    order = np.argsort(part, kind="stable")
    return _lookup_sorted(part[order], order, keys)


def _combine(
    vector_hits: tuple[np.ndarray, np.ndarray, np.ndarray],
    hash_hits: tuple[np.ndarray, np.ndarray, np.ndarray],
    stride: int,
    cosine_of: Callable[[np.ndarray, np.ndarray], np.ndarray],
    distance_of: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> tuple[np.ndarray, ...]:
    """Union of the (a, b) pairs found by each criterion, each with both measures.

    A measure a pair was found by is kept as computed; the other one is computed for the pair alone.
    """
    (va, vb, v_cosines), (ha, hb, h_distances) = vector_hits, hash_hits
    v_keys, h_keys = va * stride + vb, ha * stride + hb
    keys = np.union1d(v_keys, h_keys)
    a, b = keys // stride, keys % stride
    in_vectors, in_hashes = _positions(keys, v_keys), _positions(keys, h_keys)
    cosines, distances = np.empty(len(keys)), np.empty(len(keys), np.int64)
    found, missing = in_vectors >= 0, in_vectors < 0
    cosines[found], cosines[missing] = v_cosines[in_vectors[found]], cosine_of(a[missing], b[missing])
    found, missing = in_hashes >= 0, in_hashes < 0
    distances[found], distances[missing] = h_distances[in_hashes[found]], distance_of(a[missing], b[missing])
    return a, b, cosines, distances


def _validated_batch(
    ids: Sequence[int] | np.ndarray, vectors: np.ndarray, hashes: Any, dim: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids, vectors, codes = _as_ids(ids), _as_vectors(vectors, dim), hash_codes(hashes)
    if not len(ids) == len(vectors) == len(codes):
        raise ValueError("ids, vectors and hashes differ in length")
    _check_unique(ids)
    return ids, vectors, codes


def pairs_within(
    ids: Sequence[int] | np.ndarray,
    vectors: np.ndarray,
    hashes: Sequence[str] | Sequence[int] | np.ndarray,
    *,
    min_cosine: float = 0.95,
    max_hamming: int = 8,
) -> list[Pair]:
    """All near-duplicate pairs within one batch (a self-join): for a reindex, or a batch of uploads.

    Hash pairs are exact; embedding pairs have the recall of the vector index (exact below MIN_TRAIN_SIZE).
    """
    ids, vectors, codes = _validated_batch(ids, vectors, hashes)
    if len(ids) < 2:  # no pair, and the hash tables would cost more than matching one upload
        return []
    a, b, cosines, distances = _combine(
        _vector_self_join(vectors, min_cosine),
        _hash_self_join(codes, max_hamming),
        len(ids),
        lambda a, b: _row_cosines(vectors, a, vectors, b),
        lambda a, b: np.bitwise_count(codes[a] ^ codes[b]).astype(np.int64),
    )
    return _pairs(ids[a], ids[b], cosines, distances, min_cosine, max_hamming)


def match_new(
    index_v: VectorIndex,
    index_h: HammingIndex,
    ids: Sequence[int] | np.ndarray,
    vectors: np.ndarray,
    hashes: Sequence[str] | Sequence[int] | np.ndarray,
    *,
    min_cosine: float = 0.95,
    max_hamming: int = 8,
) -> list[Pair]:
    """Near-duplicate pairs of new items, with the stored collection and with each other.

    Does not add the new items. Stored entries under the new ids are ignored, so calling this before
    or after adding the batch gives the same pairs.
    """
    ids, vectors, codes = _validated_batch(ids, vectors, hashes, index_v.dim)
    v_rows, v_ids, v_cosines = index_v._neighbour_arrays(vectors, min_cosine)
    h_rows, h_ids, h_distances = index_h._within_arrays(codes, max_hamming)
    v_new, h_new = ~np.isin(v_ids, ids), ~np.isin(h_ids, ids)
    stored_ids = np.union1d(v_ids[v_new], h_ids[h_new])  # stored ids met, numbered by position here
    stored_vectors, has_vector = index_v._lookup(stored_ids)
    stored_codes, has_code = index_h._lookup(stored_ids)

    def cosine_of(rows: np.ndarray, stored: np.ndarray) -> np.ndarray:
        return np.where(has_vector[stored], _row_cosines(vectors, rows, stored_vectors, stored), np.nan)

    def distance_of(rows: np.ndarray, stored: np.ndarray) -> np.ndarray:
        return np.where(has_code[stored], np.bitwise_count(codes[rows] ^ stored_codes[stored]).astype(np.int64), -1)

    rows, stored, cosines, distances = _combine(
        (v_rows[v_new], np.searchsorted(stored_ids, v_ids[v_new]), v_cosines[v_new]),
        (h_rows[h_new], np.searchsorted(stored_ids, h_ids[h_new]), h_distances[h_new]),
        max(len(stored_ids), 1),
        cosine_of,
        distance_of,
    )
    with_stored = _pairs(ids[rows], stored_ids[stored], cosines, distances, min_cosine, max_hamming)
    among_new = pairs_within(ids, vectors, codes, min_cosine=min_cosine, max_hamming=max_hamming)
    return sorted(with_stored + among_new, key=lambda pair: (pair.a, pair.b))
