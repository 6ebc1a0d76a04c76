"""Bad vectors and queries: NaN/inf, the wrong dimension, zero vectors, duplicate or empty
keys, empty queries, k <= 0 or huge: each is a clear error and nothing is stored; FAISS's
-1 padding never becomes a hit."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from latent.cli import cli
from latent.indexer import Index, Record
from latent.indexer.errors import EncoderMismatch, InputError, LatentError
from latent.search import search, search_vectors, similar
from latent.search.query import MAX_K

DIM = 50


@pytest.fixture
def small(make_word_index):
    index = make_word_index(n=300)
    yield index
    index.close()


def snapshot(index):
    ids = index.store.ids()
    return index.store.generation(), ids.tolist(), index.store.vectors(ids, DIM).tobytes()


def good(n=3, seed=0):
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


@pytest.mark.parametrize("name, vectors, keys, error, message", [
    ("nan", lambda: np.where(np.eye(3, DIM, dtype=bool), np.nan, good()), ["a", "b", "c"], EncoderMismatch, "NaN"),
    ("inf", lambda: np.where(np.eye(3, DIM, dtype=bool), np.inf, good()), ["a", "b", "c"], EncoderMismatch,
     "infinite"),
    ("-inf in one row", lambda: np.vstack([good(2), np.full((1, DIM), -np.inf, np.float32)]), ["a", "b", "c"],
     EncoderMismatch, "infinite"),
    ("wrong dimension", lambda: np.ones((3, DIM + 1), np.float32), ["a", "b", "c"], EncoderMismatch, "51"),
    ("3-d array", lambda: np.ones((3, DIM, 1), np.float32), ["a", "b", "c"], EncoderMismatch, "shape"),
    ("zero vector", lambda: np.vstack([good(2), np.zeros((1, DIM), np.float32)]), ["a", "b", "c"], InputError,
     "all zeros"),
    ("duplicate keys", lambda: good(), ["a", "b", "a"], InputError, "given twice"),
    ("empty key", lambda: good(), ["a", "", "c"], InputError, "non-empty"),
    ("key not a string", lambda: good(), ["a", 7, "c"], InputError, "non-empty strings"),
    ("fewer keys", lambda: good(), ["a", "b"], InputError, "2 keys for 3 vectors"),
])
def test_bad_vectors_are_refused_and_nothing_is_stored(small, name, vectors, keys, error, message):
    before = snapshot(small)
    with pytest.raises(error, match=message):
        small.add_vectors(keys, vectors())
    assert snapshot(small) == before, name
    assert small.check()["ok"]


def test_bad_metadata_count_is_refused(small):
    before = snapshot(small)
    with pytest.raises(InputError, match="one each"):
        small.add_vectors(["a", "b"], good(2), metadata=[{}])
    with pytest.raises(InputError, match="cannot be stored as JSON"):
        small.add_vectors(["a"], good(1), metadata=[{"x": float("nan")}])
    assert snapshot(small) == before


def test_good_vectors_after_refusals_are_stored_normalised(small):
    vectors = good(3) * 7
    small.add_vectors(["a", "b", "c"], vectors)
    stored = small.store.vectors([small.store.lookup(["a"])["a"][0]], DIM)[0]
    assert np.linalg.norm(stored) == pytest.approx(1.0, abs=1e-6)
    assert similar(small, vector=vectors[0], k=1)[0].key == "a"


def test_an_encoder_giving_a_zero_vector_is_a_skip_not_an_item(tmp_path):
    from latent.indexer.encoders import get_encoder
    from latent.indexer.encoders.glove import GloveEncoder

    class Blind(GloveEncoder):  # the real GloVe, except that it sees nothing in one word
        def _embed(self, items):
            vectors = super()._embed(items)
            vectors[[i for i, t in enumerate(items) if t == "zebra"]] = 0
            return vectors

    blind = Blind.__new__(Blind)
    blind.__dict__.update(get_encoder("glove").__dict__)
    with Index.create(tmp_path / "blind", encoder=blind) as index:
        report = index.add([Record(text=w, key=w, kind="word") for w in ("king", "zebra", "queen")])
        assert report.added == 2
        assert [(s.line, s.reason) for s in report.skip_examples()] == [(None, "the encoder gave it a zero vector")]
        assert sorted(index.store.lookup(["king", "zebra", "queen"])) == ["king", "queen"]
        assert index.check()["ok"]


@pytest.mark.parametrize("query, k, error, message", [
    ("", 10, LatentError, "empty"),
    ("   \t", 10, LatentError, "empty"),
    ("king", 0, InputError, "k must be"),
    ("king", -5, InputError, "k must be"),
    ("king", MAX_K + 1, InputError, "k must be"),
    ("king", 10**18, InputError, "k must be"),
    ("king", 2.5, InputError, "k must be"),
    ("king", True, InputError, "k must be"),
    ("king", "10", InputError, "k must be"),
])
def test_bad_queries_are_clear_errors(small, query, k, error, message):
    before = snapshot(small)
    with pytest.raises(error, match=message):
        search(small, query, k=k)
    assert snapshot(small) == before


@pytest.mark.parametrize("vector, error, message", [
    (np.zeros(DIM, np.float32), InputError, "all zeros"),
    (np.full(DIM, np.nan, np.float32), EncoderMismatch, "NaN"),
    (np.full(DIM, np.inf, np.float32), EncoderMismatch, "infinite"),
    (np.ones(DIM - 1, np.float32), EncoderMismatch, "49"),
    (np.ones((2, 2, DIM), np.float32), EncoderMismatch, "shape"),
])
def test_bad_query_vectors_are_clear_errors(small, vector, error, message):
    with pytest.raises(error, match=message):
        search_vectors(small, vector, k=5)


@pytest.mark.parametrize("index_type", ["flat", "HNSW16", "IVF4,Flat"])
def test_k_beyond_the_count_returns_every_item_once_and_never_a_padding_id(make_word_index, index_type):
    index = make_word_index(n=200, index_type=index_type)
    index.delete([h.key for h in search(index, "king", k=5)])  # HNSW hides them (tombstones)
    for k in (195, 196, 1000, MAX_K):
        hits = search(index, "king", k=k)
        keys = [h.key for h in hits]
        assert len(keys) == len(set(keys)) == index.count() == 195
        assert all(h.id > 0 for h in hits) and [h.rank for h in hits] == list(range(1, 196))
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    filtered = search(index, "king", k=MAX_K, where="nothing = 1")
    assert filtered == []
    index.close()


def test_cli_refuses_bad_k_and_empty_queries(make_word_index):
    index = make_word_index(n=100)
    directory = str(index.directory)
    index.close()
    for args in (["search", directory, "king", "-k", "0"], ["search", directory, "king", "-k", "-1"],
                 ["search", directory, "king", "-k", "1000000"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2 and "-k" in result.stderr, result.output
    result = CliRunner().invoke(cli, ["search", directory, ""])
    assert result.exit_code == 1 and "empty" in result.stderr
