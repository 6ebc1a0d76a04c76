"""The engine end to end: round trips with the real models, upserts, deletes, index
types against flat, encoder checks."""

import shutil

import numpy as np
import pytest

from latent.indexer import Index, Record
from latent.indexer.errors import EncoderMismatch, IndexExists, IndexNotFound
from latent.search import search, search_vectors, similar

from conftest import word_records


def test_sentence_round_trip_survives_reopen(sentence_index_dir, tmp_path):
    directory = tmp_path / "copy"
    shutil.copytree(sentence_index_dir, directory)
    with Index.open(directory) as index:
        assert index.count() == 400
        before = search(index, "a dog running on the sand by the sea", k=5)
        assert before[0].metadata["topic"] == "animals"
        assert "beach" in before[0].text
        assert [h.rank for h in before] == [1, 2, 3, 4, 5]
        assert all(a.score >= b.score for a, b in zip(before, before[1:]))
    with Index.open(directory) as index:  # a fresh process would see the same
        after = search(index, "a dog running on the sand by the sea", k=5)
    assert [(h.key, round(h.score, 5)) for h in after] == [(h.key, round(h.score, 5)) for h in before]


@pytest.mark.parametrize("query,topic", [
    ("how do vaccines work", "medicine"), ("interest rates and mortgages", "finance"),
    ("telescopes and planets", "astronomy"), ("programming languages", "computing"),
    ("a thunderstorm with heavy rain", "weather"), ("baking bread", "cooking"),
])
def test_sentence_queries_find_their_topic(sentence_index_dir, query, topic):
    with Index.open(sentence_index_dir) as index:
        hits = search(index, query, k=3)
    assert [h.metadata["topic"] for h in hits] == [topic] * 3


def test_upsert_and_delete(sentence_index_dir, tmp_path):
    directory = tmp_path / "copy"
    shutil.copytree(sentence_index_dir, directory)
    with Index.open(directory) as index:
        old_id = index.store.lookup(["s0202"])["s0202"][0]
        report = index.add([Record(text="Quarterly earnings beat expectations and the shares jumped.",
                                   key="s0202", metadata={"topic": "finance"})])
        assert (report.added, report.replaced) == (0, 1)
        assert index.count() == 400
        hits = search(index, "company profits lift the stock price", k=3)
        assert "s0202" in [h.key for h in hits]
        assert old_id not in index.vectors.ids()

        deleted, missing = index.delete(["s0201", "s0203", "nope"])
        assert (deleted, missing) == (2, ["nope"])
        assert index.count() == 398
        for q in ["a dog", "dogs", "a loyal pet"]:
            keys = [h.key for h in search(index, q, k=398)]
            assert "s0201" not in keys and "s0203" not in keys
            assert len(keys) == 398 and len(set(keys)) == 398
    with Index.open(directory) as index:
        keys = [h.key for h in search(index, "a dog", k=400)]
        assert len(keys) == 398 and "s0201" not in keys
        assert index.check()["ok"]


def test_unchanged_items_are_not_reencoded(tmp_path, sentences):
    index = Index.create(tmp_path / "idx", encoder="minilm")
    records = [Record(text=s["text"], key=s["id"], metadata={"topic": s["topic"]}) for s in sentences[:50]]
    first = index.add(records)
    assert (first.added, first.unchanged) == (50, 0)
    calls = []
    real_encode = index.encoder.encode
    index.encoder.encode = lambda texts: calls.append(len(texts)) or real_encode(texts)
    try:
        second = index.add(records)
        assert (second.added, second.replaced, second.unchanged) == (0, 0, 50)
        assert sum(calls) == 0
        records[0].metadata = {"topic": "changed"}
        third = index.add(records)
        assert (third.metadata_updated, third.unchanged) == (1, 49) and sum(calls) == 0
    finally:
        del index.encoder.encode
    assert search(index, sentences[0]["text"], k=1)[0].metadata == {"topic": "changed"}


def test_default_keys_are_content_hashes(tmp_path):
    index = Index.create(tmp_path / "idx", encoder="glove")
    index.add([Record(text="cat"), Record(text="dog"), Record(text="cat")])
    assert index.count() == 2
    hit = search(index, "cat", k=1)[0]
    assert hit.text == "cat" and len(hit.key) == 20


INDEX_TYPES = ["hnsw", "ivf", "ivfpq", "auto", "HNSW16", "IVF64,SQ8"]


@pytest.fixture(scope="module")
def word_indexes(tmp_path_factory, glove_words):
    """A flat index and one of each other type over the same 20,000 GloVe words."""
    root = tmp_path_factory.mktemp("types")
    records = word_records(glove_words[200:20200])
    out = {}
    for spec in ["flat"] + INDEX_TYPES:
        index = Index.create(root / spec.replace(",", "_"), encoder="glove", index_type=spec)
        index.add(records)
        out[spec] = index
    return out


@pytest.mark.parametrize("spec", INDEX_TYPES)
def test_index_types_match_flat(word_indexes, glove_words, spec):
    flat, other = word_indexes["flat"], word_indexes[spec]
    if spec in ("ivf", "ivfpq", "IVF64,SQ8"):
        assert other.vectors.factory != "Flat", "20,000 vectors are enough to train"
    rng = np.random.default_rng(1)
    keys = [glove_words[200 + i] for i in rng.choice(20000, size=300, replace=False)]
    queries = np.stack([flat.store.vector_of_key(k, 50) for k in keys])
    exact = search_vectors(flat, queries, k=10)
    approx = search_vectors(other, queries, k=10)
    assert [h[0].key for h in approx] == keys  # each word's nearest item is itself
    recall = np.mean([len({h.key for h in a} & {h.key for h in e}) / 10 for a, e in zip(approx, exact)])
    assert recall >= 0.95, f"{spec}: recall@10 {recall:.3f}"
    if spec != "ivfpq":
        return
    # re-ranked from exact stored vectors: the scores are the exact cosines
    for a in approx[:20]:
        for h in a:
            exact_score = float(flat.store.vector_of_key(h.key, 50) @ queries[approx.index(a)])
            assert h.score == pytest.approx(exact_score, abs=1e-5)


def test_ivf_is_exact_until_trained(tmp_path, glove_words):
    index = Index.create(tmp_path / "ivf", encoder="glove", index_type="ivf")
    index.add(word_records(glove_words[:500]))
    assert index.vectors.factory == "Flat"
    assert similar(index, key=glove_words[10], k=1)[0].key != glove_words[10]
    index.add(word_records(glove_words[500:21000]))
    assert index.vectors.factory.startswith("IVF")
    assert Index.open(tmp_path / "ivf").info()["faiss_factory"].startswith("IVF")


def test_similar_excludes_the_item_itself(make_word_index):
    index = make_word_index(n=5000)
    hits = similar(index, key="king", k=5)
    assert "king" not in [h.key for h in hits]
    assert "queen" in [h.key for h in hits]
    vector = index.store.vector_of_key("king", 50)
    assert similar(index, vector=vector, k=1)[0].key == "king"


def test_encoder_and_dimension_mismatch_are_refused(make_word_index, sentence_index_dir):
    words = make_word_index(n=100)
    with pytest.raises(EncoderMismatch, match="glove.*minilm|minilm.*glove"):
        words.add([Record(text="dog", key="dog")], encoder="minilm")
    with Index.open(sentence_index_dir) as sentences:
        with pytest.raises(EncoderMismatch, match="384"):
            search_vectors(sentences, np.ones((1, 50), dtype=np.float32))


def test_create_and_open_errors(tmp_path):
    Index.create(tmp_path / "a", encoder="glove")
    with pytest.raises(IndexExists):
        Index.create(tmp_path / "a", encoder="glove")
    with pytest.raises(IndexNotFound, match="latent create"):
        Index.open(tmp_path / "nothing-here")


def test_training_rebuild_is_saved_after_periodic_saves(tmp_path, glove_words, monkeypatch):
    monkeypatch.setattr("latent.indexer.index.SAVE_EVERY_S", 0.0)  # save after every batch
    index = Index.create(tmp_path / "ivf", encoder="glove", index_type="ivf")
    index.add(word_records(glove_words[:21000]), batch_size=7000)
    reopened = Index.open(tmp_path / "ivf")
    assert reopened.info()["faiss_factory"].startswith("IVF")
    assert reopened.vectors.factory.startswith("IVF") and reopened.recovered is None
    assert reopened.check()["ok"]


def test_rows_cached_by_searches_follow_every_write(make_word_index, glove_words):
    """A search serves the rows of its hits from memory while the generation stays the same;
    a metadata update, a deletion or an upsert by this handle or by another one is seen by
    the very next search."""
    index = make_word_index(n=300, metadata=lambda w, i: {"n": i})
    other = Index.open(index.directory)
    try:
        first = search(index, "king", k=5)
        assert search(index, "king", k=5) == first
        top = first[0].key
        assert search(index, "king", k=5, where="n < 0") == []
        assert len(index.store._cache.filters) == 1  # the filter's answer, kept for this generation
        # the same text with new metadata: the row keeps its id, only the metadata changes
        other.add(word_records([top], metadata=lambda w, i: {"n": -1, "by": "other"}))
        again = search(index, "king", k=5)
        assert again[0].key == top and again[0].metadata == {"n": -1, "by": "other"}
        assert [h.key for h in search(index, "king", k=5, where="n < 0")] == [top]
        index.add(word_records([top], metadata=lambda w, i: {"n": -2}))
        assert search(index, "king", k=5)[0].metadata == {"n": -2}
        other.delete([top])
        assert top not in [h.key for h in search(index, "king", k=5)]
        assert index.store._cache.bytes > 0  # in use, not bypassed
    finally:
        other.close()
        index.close()


def test_auto_goes_flat_then_hnsw_then_ivfpq_as_the_index_grows(make_word_index, glove_words, monkeypatch):
    """The size rule of `auto` (thresholds scaled down here; the real ones are 2^25 and 2^30 floats)."""
    from latent.indexer import vector_index as vx

    monkeypatch.setattr(vx, "AUTO_FLAT_MAX_FLOATS", 50 * 1000)
    monkeypatch.setattr(vx, "AUTO_HNSW_MAX_FLOATS", 50 * 5000)
    index = make_word_index(n=800, index_type="auto")
    assert index.vectors.factory == "Flat"
    index.add(word_records(glove_words[1000:3000]))
    assert index.vectors.factory == "HNSW32"
    index.add(word_records(glove_words[3000:12500]))
    assert index.vectors.factory.startswith("IVF") and "PQ" in index.vectors.factory and index.vectors.lossy
    assert index.check()["ok"] and index.count() == 12_300
    hits = search(index, "king", k=5)
    assert len(hits) == 5 and hits[0].score == pytest.approx(max(h.score for h in hits))  # re-ranked, exact scores
    index.close()


def test_ivf_is_retrained_once_it_has_outgrown_its_lists(make_word_index, glove_words):
    """nlist is chosen for the count at training time; a named IVF type is retrained when the
    count calls for 4x the lists (about 16x the items), not left with ever longer lists."""
    index = make_word_index(n=2500, index_type="ivf")
    assert index.vectors.factory == "IVF64,Flat"
    index.add(word_records(glove_words[3000:6000]))  # 5,500 items: 128 lists would be right, keep 64
    assert index.vectors.factory == "IVF64,Flat"
    index.add(word_records(glove_words[6000:12000]))  # 11,500 items: 256 lists
    assert index.vectors.factory == "IVF256,Flat" and index.check()["ok"]
    assert search(index, "king", k=3)[0].key in {"king", "queen", "prince", "throne"}
    index.close()


def test_filtered_exact_scans_read_vectors_from_the_index_when_it_holds_them(make_word_index, glove_words):
    index = make_word_index(n=3000, index_type="hnsw", metadata=lambda w, i: {"n": i})
    vindex = index.vectors
    ids = index.store.ids()[:500]
    assert np.array_equal(vindex.exact_vectors(ids), index.store.vectors(ids, index.dim))  # the same floats
    assert vindex.exact_vectors(np.array([10**9])) is None  # an id it does not hold: SQLite instead
    query = index.store.vectors(ids[:1], index.dim)[0]
    hits = search_vectors(index, query, k=5, where="n < 400")[0]
    stored = index.store.vectors(ids[:400], index.dim)  # ids follow n here (one batch, in order)
    expected = ids[:400][np.argsort(-(stored @ query), kind="stable")[:5]]
    assert [h.id for h in hits] == expected.tolist()
    index.close()
    pq = make_word_index(n=12_000, index_type="ivfpq", name="pq")
    assert pq.vectors.lossy and pq.vectors.exact_vectors(pq.store.ids()[:3]) is None  # codes are not vectors
    pq.close()
