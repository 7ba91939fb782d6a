"""Diverse sampling of a ranked candidate list (numpy only, no Django): which images a sized pack takes.

Rows of `embeddings` are L2-normalised image embeddings in rank order (best first); a zero row stands for
an image without a comparable embedding (it is never a near-duplicate of anything). Every function is
deterministic: ties go to the better-ranked candidate.
"""

from collections.abc import Sequence

import numpy as np

# MMR's balance between relevance to the query and novelty. Relevance is rescaled to 0..1 over the pool
# first: raw CLIP text-image cosines span a few hundredths, which novelty would otherwise swamp.
TRADE_OFF = 0.5
_BLOCK = 256


def _as_matrix(embeddings) -> np.ndarray:
    matrix = np.asarray(embeddings, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError("embeddings must be a 2-d array (one row per candidate).")
    return matrix


def _unique(indices: Sequence[int], n: int) -> list[int]:
    result = list(dict.fromkeys(int(i) for i in indices))
    if any(i < 0 or i >= n for i in result):
        raise ValueError("a required index is out of range.")
    return result


def _rescaled(relevance, n: int) -> np.ndarray:
    if relevance is None:
        return np.zeros(n, dtype=np.float32)
    values = np.asarray(relevance, dtype=np.float32).ravel()
    if values.shape != (n,):
        raise ValueError("relevance needs one value per candidate.")
    spread = float(values.max() - values.min()) if n else 0.0
    return (values - values.min()) / spread if spread > 0 else np.zeros(n, dtype=np.float32)


def diverse_sample(
    embeddings,
    k: int,
    *,
    max_cosine: float,
    relevance=None,
    required: Sequence[int] = (),
    trade_off: float = TRADE_OFF,
) -> list[int]:
    """Up to k indices: `required` first (in their order), then maximal-marginal-relevance picks.

    Each step takes the candidate with the best `trade_off * relevance - (1 - trade_off) * max cosine to
    the chosen`, so the sample spreads across the ranking instead of taking its top k. With no relevance
    this is farthest-point sampling from the top-ranked candidate. A candidate whose cosine to anything
    chosen reaches `max_cosine` is never taken, so no two near-identical images end up together (required
    indices excepted: staff picked them). The sampled part is returned in rank order.
    """
    matrix = _as_matrix(embeddings)
    n = len(matrix)
    chosen = _unique(required, n)
    if k <= len(chosen) or n == 0:
        return chosen
    relevance = _rescaled(relevance, n)
    available = np.ones(n, dtype=bool)
    closest = np.full(n, -np.inf, dtype=np.float32)  # max cosine to anything chosen so far
    for index in chosen:
        available[index] = False
        np.maximum(closest, matrix @ matrix[index], out=closest)
    sampled: list[int] = []
    while len(chosen) + len(sampled) < k:
        open_ = available & ~(closest >= max_cosine)
        if not open_.any():
            break
        redundancy = np.where(np.isfinite(closest), closest, 0.0)
        score = trade_off * relevance - (1.0 - trade_off) * redundancy
        score[~open_] = -np.inf
        best = int(np.argmax(score))  # the first maximum: the better-ranked one wins a tie
        sampled.append(best)
        available[best] = False
        np.maximum(closest, matrix @ matrix[best], out=closest)
    return chosen + sorted(sampled)


def drop_near_duplicates(embeddings, *, max_cosine: float, required: Sequence[int] = ()) -> list[int]:
    """Every index in rank order, `required` first, skipping any that is near-identical to one kept before."""
    matrix = _as_matrix(embeddings)
    n = len(matrix)
    kept = _unique(required, n)
    skip = np.zeros(n, dtype=bool)
    skip[kept] = True
    kept_vectors = matrix[kept] if kept else np.zeros((0, matrix.shape[1]), dtype=np.float32)
    for start in range(0, n, _BLOCK):
        block = np.arange(start, min(start + _BLOCK, n))
        block = block[~skip[block]]
        if not len(block):
            continue
        vectors = matrix[block]
        near_kept = (
            (vectors @ kept_vectors.T >= max_cosine).any(axis=1) if len(kept_vectors) else np.zeros(len(block), bool)
        )
        within = vectors @ vectors.T >= max_cosine
        taken: list[int] = []
        for row in range(len(block)):
            if near_kept[row] or any(within[row, earlier] for earlier in taken):
                continue
            taken.append(row)
        kept.extend(int(block[row]) for row in taken)
        kept_vectors = np.concatenate([kept_vectors, vectors[taken]])
    return kept
