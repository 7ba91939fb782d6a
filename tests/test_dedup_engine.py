"""The near-duplicate engine (marketplace.curation.engine.dedup): plain numpy, no Django."""

from __future__ import annotations

import numpy as np
import pytest

from marketplace.curation.engine import dedup
from marketplace.curation.engine.dedup import MIN_TRAIN_SIZE, HammingIndex, Pair, VectorIndex, match_new, pairs_within

DIM = 64


def unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def at_cosine(rng: np.random.Generator, vector: np.ndarray, cosine: float) -> np.ndarray:
    """A unit vector at exactly ``cosine`` from ``vector``."""
    other = rng.standard_normal(len(vector))
    other -= (other @ vector) * vector
    other /= np.linalg.norm(other)
    return (cosine * vector + np.sqrt(1 - cosine**2) * other).astype(np.float32)


def flipped(code: np.uint64, bits: int) -> np.uint64:
    """code with ``bits`` bits flipped, 7 apart, so that they spread over the index's chunks (bits <= 10)."""
    return np.uint64(int(code) ^ sum(1 << (7 * i) for i in range(bits)))


def random_codes(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


@pytest.fixture
def planted(rng):
    """200 unrelated items, then a copy of item 0 close by embedding only, of item 1 by hash only, of 2 by both."""
    vectors, codes = unit_vectors(rng, 203), random_codes(rng, 203)
    vectors[200], codes[200] = at_cosine(rng, vectors[0], 0.97), codes[0] ^ np.uint64(0xFFFF_FFFF_0000_0000)
    vectors[201], codes[201] = at_cosine(rng, vectors[1], 0.80), flipped(codes[1], 5)
    vectors[202], codes[202] = at_cosine(rng, vectors[2], 0.99), flipped(codes[2], 2)
    return np.arange(1000, 1203), vectors, codes


def pair_summary(pairs: list[Pair]) -> list[tuple[int, int, int | None, str]]:
    return [(p.a, p.b, p.hamming, p.reason) for p in pairs]


def test_planted_pairs_are_found_by_each_measure(planted):
    ids, vectors, codes = planted
    pairs = pairs_within(ids, vectors, codes)
    assert pair_summary(pairs) == [(1000, 1200, 32, "embedding"), (1001, 1201, 5, "hash"), (1002, 1202, 2, "both")]
    assert [round(p.cosine, 4) for p in pairs] == [0.97, 0.80, 0.99]


def test_unrelated_items_are_not_matched(rng):
    assert pairs_within(np.arange(500), unit_vectors(rng, 500), random_codes(rng, 500)) == []


def test_hex_hashes_as_imagehash_writes_them(planted):
    ids, vectors, codes = planted
    hex_hashes = [f"{int(code):016x}" for code in codes]
    assert pairs_within(ids, vectors, hex_hashes) == pairs_within(ids, vectors, codes)
    assert dedup.hash_codes(["8000000000000001"]).tolist() == [2**63 + 1]
    with pytest.raises(ValueError):
        dedup.hash_codes(["xyz"])


@pytest.mark.parametrize("delta, found", [(1e-4, True), (-1e-4, False)])
def test_cosine_threshold_is_inclusive_at_the_boundary(rng, delta, found):
    vectors = unit_vectors(rng, 2)
    vectors[1] = at_cosine(rng, vectors[0], 0.95 + delta)
    codes = np.array([0, 2**64 - 1], np.uint64)
    assert bool(pairs_within([1, 2], vectors, codes, min_cosine=0.95)) is found
    index = VectorIndex(DIM)
    index.add([1], vectors[:1])
    # float16 storage: the index is exact to about 1e-4, so it is tested 1e-3 away from the threshold
    vectors[1] = at_cosine(rng, vectors[0], 0.95 + 10 * delta)
    assert bool(index.neighbours(vectors[1:], 0.95)) is found


@pytest.mark.parametrize("bits, found", [(8, True), (9, False), (0, True)])
def test_hamming_threshold_is_inclusive_at_the_boundary(rng, bits, found):
    codes = random_codes(rng, 1)
    codes = np.array([codes[0], flipped(codes[0], bits)], np.uint64)
    vectors = unit_vectors(rng, 2)
    assert bool(pairs_within([1, 2], vectors, codes, max_hamming=8)) is found
    index = HammingIndex()
    index.add([1], codes[:1])
    assert index.within(codes[1:], 8) == ([(0, 1, bits)] if found else [])


@pytest.mark.parametrize("max_distance", [0, 1, 3, 8, 10])
def test_hamming_index_is_exact(rng, max_distance):
    """Clustered hashes, so that many pairs are close; the index must return exactly the brute-force set."""
    centres = random_codes(rng, 5)
    noise = np.packbits(rng.random((3000, 64)) < 0.06, axis=1).view(np.uint64).ravel()
    codes = centres[rng.integers(0, 5, 3000)] ^ noise
    index = HammingIndex()
    for part in np.array_split(np.arange(2000), 3):  # several adds: the in-place bucket updates
        index.add(part, codes[part])
    distances = np.bitwise_count(codes[2000:, None] ^ codes[None, :2000])
    rows, stored = np.nonzero(distances <= max_distance)
    expected = sorted(zip(rows.tolist(), stored.tolist(), distances[rows, stored].tolist(), strict=True))
    assert sorted(index.within(codes[2000:], max_distance)) == expected
    a, b, _ = dedup._hash_self_join(codes, max_distance)
    all_distances = np.bitwise_count(codes[:, None] ^ codes[None, :])
    assert sorted(zip(a.tolist(), b.tolist(), strict=True)) == sorted(
        zip(*np.nonzero(np.triu(all_distances <= max_distance, 1)), strict=True)
    )


def test_incremental_matching_equals_the_batch_self_join(planted):
    ids, vectors, codes = planted
    # The planted copies arrive as new items: 1200 with its original 1000, the others after theirs.
    new = np.r_[0, 150:203]
    stored = np.setdiff1d(np.arange(203), new)
    index_v, index_h = VectorIndex(DIM), HammingIndex()
    index_v.add(ids[stored], vectors[stored])
    index_h.add(ids[stored], codes[stored])
    matched = match_new(index_v, index_h, ids[new], vectors[new], codes[new])
    incremental = sorted(pairs_within(ids[stored], vectors[stored], codes[stored]) + matched, key=lambda p: (p.a, p.b))
    batch = pairs_within(ids, vectors, codes)
    assert pair_summary(incremental) == pair_summary(batch) == [
        (1000, 1200, 32, "embedding"), (1001, 1201, 5, "hash"), (1002, 1202, 2, "both")
    ]  # fmt: skip
    assert [p.cosine for p in incremental] == pytest.approx([p.cosine for p in batch], abs=1e-3)
    # Adding the batch before matching it gives the same pairs: stored entries under the new ids are ignored.
    index_v.add(ids[new], vectors[new])
    index_h.add(ids[new], codes[new])
    assert match_new(index_v, index_h, ids[new], vectors[new], codes[new]) == matched


def test_match_new_with_a_stored_item_missing_from_one_index(planted):
    ids, vectors, codes = planted
    index_v, index_h = VectorIndex(DIM), HammingIndex()
    index_v.add(ids[:1], vectors[:1])  # item 1000 has an embedding but no hash yet
    (pair,) = match_new(index_v, index_h, [1200], vectors[200:201], codes[200:201])
    assert (pair.a, pair.b, pair.hamming, pair.reason) == (1000, 1200, None, "embedding")


def clustered(rng: np.random.Generator, n: int, copies: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors in 40 topics (same-topic cosine about 0.6), the last ``copies`` near-copies of others."""
    topics = unit_vectors(rng, 40)
    vectors = topics[rng.integers(0, 40, n)] + 0.8 * unit_vectors(rng, n)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    originals = rng.choice(n - copies, copies, replace=False)
    for row, original in zip(range(n - copies, n), originals, strict=True):
        vectors[row] = at_cosine(rng, vectors[original], rng.uniform(0.95, 0.99))
    return vectors.astype(np.float32), originals


def brute_force_pairs(vectors: np.ndarray) -> set[tuple[int, int]]:
    a, b = np.nonzero(np.triu(vectors @ vectors.T >= 0.95, 1))
    return set(zip(a.tolist(), b.tolist(), strict=True))


def test_trained_cells_keep_recall(rng):
    """Above MIN_TRAIN_SIZE the vector search probes cells: compare with brute force."""
    n = MIN_TRAIN_SIZE + 1000
    vectors, _ = clustered(rng, n, 150)
    truth = brute_force_pairs(vectors)
    assert len(truth) >= 150
    batch = {(p.a, p.b) for p in pairs_within(np.arange(n), vectors, np.zeros(n, np.uint64), max_hamming=-1)}
    assert len(batch & truth) >= 0.99 * len(truth) and batch <= truth
    index = VectorIndex(DIM)
    index.add(np.arange(n - 150), vectors[: n - 150])
    assert len(index._partition) > 1
    found = {(stored, n - 150 + row) for row, stored, _ in index.neighbours(vectors[n - 150 :], 0.95)}
    expected = {(a, b) for a, b in truth if b >= n - 150 > a}
    assert len(found & expected) >= 0.99 * len(expected) and found <= expected


def test_remove(planted):
    ids, vectors, codes = planted
    index_v, index_h = VectorIndex(DIM), HammingIndex()
    index_v.add(ids[:200], vectors[:200])
    index_h.add(ids[:200], codes[:200])
    assert index_v.remove([1000, 999]) == 1 and index_h.remove([1001, 5]) == 1
    assert len(index_v) == len(index_h) == 199
    assert index_v.neighbours(vectors[200:201], 0.95) == []
    assert index_h.within(codes[201:202], 8) == []
    assert index_v.neighbours(vectors[202:203], 0.95)[0][1] == 1002
    assert index_v.remove([1002, 1002]) == 1 and len(index_v) == 198


def test_removing_most_items_compacts_the_storage(rng):
    vectors, codes = unit_vectors(rng, 3000), random_codes(rng, 3000)
    index_v, index_h = VectorIndex(DIM), HammingIndex()
    index_v.add(np.arange(3000), vectors)
    index_h.add(np.arange(3000), codes)
    index_v.remove(np.arange(2500))
    index_h.remove(np.arange(2500))
    assert len(index_v) == len(index_h) == 500
    assert index_v._rows.size == index_h._rows.size == 500  # tombstones dropped
    assert [i for _, i, _ in index_v.neighbours(vectors[2498:2502], 0.999)] == [2500, 2501]
    assert [i for _, i, _ in index_h.within(codes[2498:2502], 0)] == [2500, 2501]


def test_re_adding_an_id_replaces_it(planted):
    ids, vectors, codes = planted
    index_v, index_h = VectorIndex(DIM), HammingIndex()
    for _ in range(2):
        index_v.add(ids[:3], vectors[:3])
        index_h.add(ids[:3], codes[:3])
    assert len(index_v) == len(index_h) == 3
    assert [i for _, i, _ in index_v.neighbours(vectors[:3], 0.999)] == [1000, 1001, 1002]
    assert [i for _, i, _ in index_h.within(codes[:3], 0)] == [1000, 1001, 1002]
    index_v.add([1000], vectors[5:6])  # a new embedding for asset 1000: the old one no longer matches
    index_h.add([1000], codes[5:6])
    assert index_v.neighbours(vectors[200:201], 0.95) == []
    assert index_h.within(codes[:1], 0) == []
    assert len(index_v) == len(index_h) == 3
    with pytest.raises(ValueError, match="duplicate"):
        index_v.add([7, 7], vectors[:2])


@pytest.mark.parametrize("n", [150, MIN_TRAIN_SIZE + 500])
def test_save_and_load_round_trip(tmp_path, rng, n):
    vectors, _ = clustered(rng, n, 50)
    codes = random_codes(rng, n)
    index_v, index_h = VectorIndex(DIM), HammingIndex()
    index_v.add(np.arange(n), vectors)
    index_h.add(np.arange(n), codes)
    index_v.remove([0, 1])
    index_h.remove([0, 1])
    index_v.save(tmp_path / "vectors.npz")
    index_h.save(tmp_path / "hashes.npz")
    loaded_v, loaded_h = VectorIndex.load(tmp_path / "vectors.npz"), HammingIndex.load(tmp_path / "hashes.npz")
    assert len(loaded_v) == len(loaded_h) == n - 2
    queries = vectors[-50:]
    assert loaded_v.neighbours(queries, 0.9) == index_v.neighbours(queries, 0.9)
    assert loaded_h.within(codes[-50:], 12) == index_h.within(codes[-50:], 12)
    loaded_v.add([10**9], queries[:1])  # a loaded index keeps working in place
    assert (0, 10**9, pytest.approx(1.0, abs=1e-3)) in loaded_v.neighbours(queries[:1], 0.99)


def test_a_failed_save_leaves_the_old_file(tmp_path, monkeypatch, planted):
    ids, vectors, codes = planted
    folder = tmp_path / "indexes"
    folder.mkdir()
    index_v, index_h = VectorIndex(DIM), HammingIndex()
    index_v.add(ids[:2], vectors[:2])
    index_h.add(ids[:2], codes[:2])
    index_v.save(folder / "vectors.npz")
    index_h.save(folder / "hashes.npz")
    index_v.add(ids[2:4], vectors[2:4])
    index_h.add(ids[2:4], codes[2:4])

    def crash_midway(file, **arrays):
        file.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash_midway)
    for index, name in ((index_v, "vectors.npz"), (index_h, "hashes.npz")):
        with pytest.raises(OSError, match="disk full"):
            index.save(folder / name)
    monkeypatch.undo()
    assert sorted(p.name for p in folder.iterdir()) == ["hashes.npz", "vectors.npz"]  # no temporary left
    assert len(VectorIndex.load(folder / "vectors.npz")) == len(HammingIndex.load(folder / "hashes.npz")) == 2


def test_empty_index_and_empty_batch(tmp_path):
    index_v, index_h = VectorIndex(DIM), HammingIndex()
    assert len(index_v) == len(index_h) == 0
    query = np.eye(1, DIM, dtype=np.float32)
    assert index_v.neighbours(query, 0.5) == [] and index_h.within([0], 12) == []
    assert match_new(index_v, index_h, [1], query, [0]) == []
    assert pairs_within([], np.empty((0, DIM), np.float32), []) == []
    index_v.save(tmp_path / "v.npz")
    index_h.save(tmp_path / "h.npz")
    assert len(VectorIndex.load(tmp_path / "v.npz")) == len(HammingIndex.load(tmp_path / "h.npz")) == 0


def test_limit_keeps_the_closest_per_query(rng):
    base = unit_vectors(rng, 1)[0]
    stored = np.stack([at_cosine(rng, base, c) for c in (0.96, 0.99, 0.97)])
    index = VectorIndex(DIM)
    index.add([1, 2, 3], stored)
    assert [i for _, i, _ in index.neighbours(base[None], 0.95, limit=2)] == [2, 3]
    codes = HammingIndex()
    codes.add([1, 2, 3], [flipped(np.uint64(0), 3), flipped(np.uint64(0), 1), flipped(np.uint64(0), 2)])
    assert codes.within([0], 8, limit=2) == [(0, 2, 1), (0, 3, 2)]


def test_vectors_must_be_unit_length(rng):
    with pytest.raises(ValueError, match="L2-normalised"):
        VectorIndex(DIM).add([1], 2 * unit_vectors(rng, 1))
    with pytest.raises(ValueError, match="shape"):
        VectorIndex(DIM).add([1], unit_vectors(rng, 1)[:, :10])
