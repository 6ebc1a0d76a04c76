"""The one exact top-k (vector_index.exact_topk / ExactTopK) against a brute-force numpy reference."""

from __future__ import annotations

import numpy as np
import pytest

from latent.indexer.vector_index import ExactTopK, exact_topk


def reference(queries, vectors, k, ids=None):
    """Brute force: every score, a stable sort (equal scores in the vectors' order), -inf/-1 padding."""
    if vectors.ndim == 2:
        vectors = np.broadcast_to(vectors, (len(queries), *vectors.shape))
    n = vectors.shape[1]
    ids = np.broadcast_to(np.arange(n) if ids is None else ids, (len(queries), n))
    out_s = np.full((len(queries), k), -np.inf, np.float32)
    out_i = np.full((len(queries), k), -1, np.int64)
    for r, q in enumerate(queries):
        scores = vectors[r] @ q
        keep = np.flatnonzero(ids[r] >= 0)
        order = keep[np.argsort(-scores[keep], kind="stable")][:k]
        out_s[r, :len(order)] = scores[order]
        out_i[r, :len(order)] = ids[r][order]
    return out_s, out_i


def check(got, want):
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("nq", [1, 7, 40])
@pytest.mark.parametrize("k", [1, 10, 250])
def test_exact_topk_matches_brute_force_with_many_ties(nq, k):
    rng = np.random.default_rng(nq * 1000 + k)
    vectors = rng.integers(-1, 2, (3000, 4)).astype(np.float32)  # few distinct scores: ties everywhere
    queries = rng.integers(-1, 2, (nq, 4)).astype(np.float32)
    check(exact_topk(queries, vectors, k), reference(queries, vectors, k))
    ids = rng.permutation(10_000)[:3000].astype(np.int64)
    check(exact_topk(queries, vectors, k, ids=ids), reference(queries, vectors, k, ids))


def test_the_earlier_of_equal_scores_wins_at_the_cut():
    # FAISS's own knn would keep position 1 here; a stable top-k keeps position 0
    scores, ids = exact_topk(np.ones((1, 1), np.float32), np.array([[1], [1], [2]], np.float32), 2)
    assert ids.tolist() == [[2, 0]] and scores.tolist() == [[2.0, 1.0]]


def test_exact_topk_on_real_valued_vectors():
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((5000, 64)).astype(np.float32)
    queries = rng.standard_normal((30, 64)).astype(np.float32)
    check(exact_topk(queries, vectors, 10), reference(queries, vectors, 10))


def test_fewer_vectors_than_k_pad_with_minus_infinity_and_minus_one():
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((3, 8)).astype(np.float32)
    queries = rng.standard_normal((2, 8)).astype(np.float32)
    scores, ids = exact_topk(queries, vectors, 5, ids=np.array([7, 8, 9]))
    check((scores, ids), reference(queries, vectors, 5, np.array([7, 8, 9])))
    assert np.isneginf(scores[:, 3:]).all() and (ids[:, 3:] == -1).all()
    scores, ids = exact_topk(queries, np.zeros((0, 8), np.float32), 4)
    assert scores.shape == (2, 4) and np.isneginf(scores).all() and (ids == -1).all()
    scores, ids = exact_topk(np.zeros((0, 8), np.float32), vectors, 4)
    assert scores.shape == ids.shape == (0, 4)


def test_each_query_its_own_candidates_with_minus_one_passed_over():
    rng = np.random.default_rng(3)
    queries = rng.integers(-1, 2, (6, 4)).astype(np.float32)
    candidates = rng.integers(-1, 2, (6, 50, 4)).astype(np.float32)
    ids = rng.integers(0, 1000, (6, 50))
    ids[rng.random((6, 50)) < 0.3] = -1
    for k in (1, 5, 60):
        check(exact_topk(queries, candidates, k, ids=ids), reference(queries, candidates, k, ids))


def test_blocks_added_one_by_one_give_the_same_as_all_at_once():
    rng = np.random.default_rng(4)
    vectors = rng.integers(-2, 3, (1000, 3)).astype(np.float32)
    queries = rng.integers(-2, 3, (9, 3)).astype(np.float32)
    ids = np.arange(5, 1005)
    top = ExactTopK(queries, 10)
    for start in range(0, 1000, 137):
        top.add(vectors[start:start + 137], ids[start:start + 137])
    check((top.scores, top.ids), reference(queries, vectors, 10, ids))
