"""Automatic tuning of search parameters to a recall target (indexer/tuning.py): measured on
held-out items, stored in the manifest, re-tuned as the index grows, and true for queries the
index has never seen (GloVe words left out of the index, against brute force)."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from latent.cli import cli
from latent.indexer import Index
from latent.indexer.encoders import get_encoder
from latent.indexer.errors import InputError
from latent.indexer.tuning import MIN_ITEMS, goal_for, recall
from latent.search import search_vectors

from conftest import word_records


def unseen_recall(index: Index, words: list[str], k: int = 10) -> float:
    """recall@k of the engine for words that are not in the index, against brute force."""
    queries = get_encoder("glove").encode(words)
    ids, vectors = zip(*index.store.iter_vectors(index.dim))
    ids, vectors = np.concatenate(ids), np.concatenate(vectors)
    truth = ids[np.argsort(-(queries @ vectors.T), axis=1)[:, :k]]
    found = np.array([[h.id for h in hits] + [-1] * (k - len(hits)) for hits in search_vectors(index, queries, k=k)])
    return recall(found, truth, k)


@pytest.mark.parametrize("index_type, target", [("hnsw", 0.98), ("ivf", 0.95), ("ivfpq", 0.9)])
def test_tuned_parameters_reach_the_target_on_unseen_queries(tmp_path, glove_words, index_type, target):
    pool = glove_words[100:12600]
    unseen = set(np.random.default_rng(7).choice(len(pool), 500, replace=False).tolist())
    index = Index.create(tmp_path / index_type, encoder="glove", index_type=index_type, target_recall=target)
    index.add(word_records([w for i, w in enumerate(pool) if i not in unseen]))
    tuning = index.manifest["tuning"]
    assert tuning["reached"] and tuning["recall"] >= tuning["goal"] == pytest.approx(goal_for(target, 1000, 10), abs=1e-4)
    assert tuning["count"] == 12_000 and tuning["queries"] == 1000 and tuning["target_recall"] == target
    assert tuning["params"] and index.params.items() >= tuning["params"].items()
    assert len(tuning["tried"]) >= 2  # a sweep, not a guess
    assert index.check()["ok"]  # the held-out items were added back: FAISS ids == item ids
    assert index.vectors.ntotal == index.count() == 12_000
    # the cheapest setting: one step cheaper misses the goal
    name = {"hnsw": "efSearch", "ivf": "nprobe", "ivfpq": "nprobe"}[index_type]
    cheaper = [t for t in tuning["tried"] if t[name] < tuning["params"][name]
               and t.get("rerank", tuning["params"].get("rerank")) == tuning["params"].get("rerank")]
    assert all(t["recall"] < tuning["goal"] for t in cheaper)
    # queries the index has never seen, from the same words, reach the target too (500 words: about +-0.01)
    got = unseen_recall(index, [pool[i] for i in sorted(unseen)])
    assert target - 0.02 <= got <= 1.0, got
    params = dict(index.params)
    index.close()
    with Index.open(tmp_path / index_type) as again:  # stored: a new process searches with them
        assert again.vectors.params.items() >= params.items()


def test_growth_is_checked_without_a_rebuild_and_retuned_at_4x(tmp_path, glove_words):
    index = Index.create(tmp_path / "grow", encoder="glove", index_type="hnsw", target_recall=0.9)
    index.add(word_records(glove_words[100:100 + MIN_ITEMS - 1]))
    assert index.manifest.get("tuning") is None  # too few to hold any out:
    assert index.vectors.factory == "Flat"  # exact until the tuning build, so nothing is built twice
    index.add(word_records(glove_words[2000:3000]))
    first = index.manifest["tuning"]
    assert first["count"] == MIN_ITEMS - 1 + 1000 and first["queries"] == first["count"] // 10
    assert first["factory"] == "HNSW32" and first["probe"]["count"] == first["count"]
    index.add(word_records(glove_words[5000:6000]))  # +50%: the probes are measured again, nothing rebuilt
    checked = index.manifest["tuning"]
    assert checked["at"] == first["at"] and checked["probe"]["count"] == 2_999
    assert checked["params"]["efSearch"] >= first["params"]["efSearch"]
    assert checked["probe"]["last"]["recall"] >= checked["probe"]["last"]["goal"]
    index.add(word_records(glove_words[8000:13000]))  # 7,999 >= 4 x 1,999: a new tuning, new probes
    second = index.manifest["tuning"]
    assert second["count"] == 7_999 and second["at"] >= first["at"] and second["generation"] > first["generation"]
    assert second["probe"]["pairs"] != first["probe"]["pairs"]
    assert index.check()["ok"] and index.vectors.ntotal == 7_999
    index.close()


def test_checks_keep_the_target_for_unseen_words_as_the_index_grows(tmp_path, glove_words):
    """Tuned at 3,000 words, checked after each 20-30% of growth up to 11,000 (under the 4x of a
    new tuning): unseen words (never added) keep recall@10 at the target."""
    pool = glove_words[100:20100]
    order = np.random.default_rng(3).permutation(len(pool))
    unseen, words = [pool[i] for i in order[:500]], [pool[i] for i in order[500:]]
    index = Index.create(tmp_path / "checked", encoder="glove", index_type="hnsw", target_recall=0.95)
    index.add(word_records(words[:3000]))
    tuned_at_3000 = index.params["efSearch"]
    for start, stop in [(3000, 4000), (4000, 5200), (5200, 6800), (6800, 8800), (8800, 11000)]:
        index.add(word_records(words[start:stop]))
    assert index.manifest["tuning"]["count"] == 3000 and index.manifest["tuning"]["probe"]["count"] == 11_000
    assert index.params["efSearch"] >= tuned_at_3000
    assert unseen_recall(index, unseen) >= 0.95 - 0.01  # 500 words: about +-0.01
    index.close()


def test_exact_and_small_indexes_have_nothing_to_tune(tmp_path, glove_words):
    index = Index.create(tmp_path / "flat", encoder="glove", index_type="auto")
    index.add(word_records(glove_words[100:3100]))  # auto: Flat while small
    record = index.tune(0.95)
    assert record["recall"] == 1.0 and record["reached"] and "exact" in record["note"]
    assert index.manifest["target_recall"] == 0.95 and index.vectors.factory == "Flat"
    index.close()
    small = Index.create(tmp_path / "small", encoder="glove", index_type="hnsw")
    small.add(word_records(glove_words[100:400]))
    record = small.tune(0.95)
    assert record["recall"] is None and not record["reached"] and "fewer than" in record["note"]
    with pytest.raises(InputError, match="no recall target"):
        Index.create(tmp_path / "none", encoder="glove", index_type="hnsw").tune()
    for bad in (0, 1.5, -1, True, "0.9", float("nan")):
        with pytest.raises(InputError, match="target recall"):
            small.tune(bad)
    small.close()


def test_cli_create_with_a_target_and_tune(tmp_path, glove_words):
    runner = CliRunner()

    def run(*args):
        return runner.invoke(cli, [str(a) for a in args])

    words = tmp_path / "words.txt"
    words.write_text("\n".join(glove_words[100:5100]) + "\n")
    directory = tmp_path / "idx"
    result = run("create", directory, "--encoder", "glove", "--index", "hnsw", "--target-recall", "0.9")
    assert result.exit_code == 0 and "tuned to recall@10 >= 0.9" in result.output, result.output
    assert run("add", directory, words, "--format", "words").exit_code == 0
    result = run("tune", directory, "--target-recall", "0.97", "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["target_recall"] == 0.97 and record["reached"] and record["recall"] >= record["goal"] > 0.97
    assert record["factory"] == "HNSW32" and record["count"] == 5000 and set(record["params"]) == {"efSearch"}
    result = run("tune", directory)  # the stored target
    assert result.exit_code == 0 and "Tuned" in result.output and "target 0.97" in result.output, result.output
    info = json.loads(run("info", directory, "--json").output)
    assert info["search_params"]["efSearch"] == record["params"]["efSearch"]
    assert run("tune", directory, "--target-recall", "1.5").exit_code == 2
    assert run("create", tmp_path / "x", "--target-recall", "0").exit_code == 2
