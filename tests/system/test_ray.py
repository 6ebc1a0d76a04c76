"""latent on a Ray cluster: `add --ray` (Ray Data reading and encoding, the one local writer)
and IVF-PQ built in parts (`rebuild --ray`), on a two-node ray.cluster_utils.Cluster started
and stopped here, on the loopback interface only.

Each node has 4 logical CPUs (scheduling slots, not cores): a pool of 2 encoder actors of
1 CPU each leaves room for the reader tasks, which a node of 1 CPU would starve (Ray Data
then waits forever). The encoder is the real MiniLM (its model loads once per actor)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# every node, driver and worker on the loopback interface (Ray would take the address of the
# interface with a default route), and no token to set up; read when ray is imported
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
ray = pytest.importorskip("ray", reason="the [ray] extra (in the test extra) is not installed")
from ray.cluster_utils import Cluster  # noqa: E402

from latent.indexer import Index, read_inputs  # noqa: E402
from latent.indexer import distributed  # noqa: E402
from latent.indexer.encoders import get_encoder  # noqa: E402
from latent.indexer.records import content_hash  # noqa: E402
from latent.search.query import search  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
NODE = {"num_cpus": 4, "include_dashboard": False}
ENCODER_ACTOR = "MapWorker(MapBatches(EncodeBatch))"


@pytest.fixture(scope="module")
def cluster():
    """A head and a worker node on this machine; this process is connected to it as a driver."""
    c = Cluster(initialize_head=True, head_node_args=NODE)
    c.add_node(**{k: v for k, v in NODE.items() if k != "include_dashboard"})
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    try:
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="module")
def lines(sentences, tmp_path_factory) -> Path:
    """200 of the demo sentences as JSON Lines keyed by id, with what a local add skips or
    reports: a malformed line, a row without its key, and a later row with a taken key."""
    path = tmp_path_factory.mktemp("ray-inputs") / "sentences.jsonl"
    rows = [json.dumps(s) for s in sentences[:200]]
    rows[10:10] = ['{"id": "broken", "text": ', json.dumps({"topic": "none", "text": "a row without its key"})]
    rows.append(json.dumps({"id": sentences[3]["id"], "topic": "again", "text": "the same key as an earlier row"}))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def _items(index: Index) -> dict[str, tuple]:
    """{key: (kind, text, metadata, vector)} of every item."""
    ids = index.ids()
    rows = index.fetch(ids)
    vectors = index.vectors_of(ids)
    return {rows[i]["key"]: (rows[i]["kind"], rows[i]["text"], rows[i]["metadata"], v)
            for i, v in zip(ids.tolist(), vectors)}


def _same_items(a: Index, b: Index) -> None:
    left, right = _items(a), _items(b)
    assert sorted(left) == sorted(right)
    for key, (kind, text, metadata, vector) in left.items():
        assert right[key][:3] == (kind, text, metadata), key
        np.testing.assert_allclose(right[key][3], vector, atol=1e-6, err_msg=key)


def test_ray_add_equals_local_add(cluster, lines, tmp_path):
    get_encoder("minilm")  # the local add's model, loaded before either run
    with Index.create(tmp_path / "local", encoder="minilm", index_type="flat") as local, \
            Index.create(tmp_path / "ray", encoder="minilm", index_type="flat") as remote:
        expected = local.add(read_inputs([str(lines)], key_field="id"), batch_size=64)
        got = remote.add(distributed.encoded_items([str(lines)], encoder="minilm", key_field="id", batch_size=32,
                                                   concurrency=2), batch_size=64)
        assert expected.as_dict() == got.as_dict()  # the same counts, batches and skip reports
        assert got.added == 200 and got.skipped == 3
        _same_items(local, remote)
        hits = search(remote, "vaccines and the immune system", k=5)
        assert [h.key for h in hits] == [h.key for h in search(local, "vaccines and the immune system", k=5)]

        # the export of it goes back in through Ray: vectors as they are, keys and metadata kept
        out = tmp_path / "export.parquet"
        assert subprocess.run([sys.executable, "-m", "latent.cli", "-q", "export", str(tmp_path / "ray"), "-o",
                               str(out)], cwd=ROOT, capture_output=True, text=True).returncode == 0
    with Index.create(tmp_path / "copy", encoder="minilm", index_type="flat") as copy, Index.open(tmp_path / "ray") as remote:
        report = copy.add(distributed.encoded_items([str(out)], encoder="minilm", batch_size=64, concurrency=2),
                          batch_size=64)
        assert report.added == 200 and report.skipped == 0
        for query in ("how do planets form", "a recipe for bread"):
            assert [(h.key, round(h.score, 5), h.metadata) for h in search(copy, query, k=10)] == \
                   [(h.key, round(h.score, 5), h.metadata) for h in search(remote, query, k=10)]


def _encoder_actor_pids() -> list[int]:
    """The processes of this cluster's encoder actors (Ray names them in their titles)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if ENCODER_ACTOR in cmdline:
                pids.append(int(entry.name))
    return pids


def test_an_encoder_actor_killed_mid_job_loses_and_doubles_nothing(cluster, sentences, tmp_path):
    path = tmp_path / "lines.txt"
    texts = [s["text"] for s in sentences]
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    killed: list[int] = []

    def kill_one(generation: int, n: int) -> None:
        if not killed:  # mid-job: the first batch is stored, the actors are encoding later ones
            pids = _encoder_actor_pids()
            assert pids, "no encoder actor found"
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    with Index.create(tmp_path / "index", encoder="minilm", index_type="flat") as index:
        report = index.add(distributed.encoded_items([str(path)], encoder="minilm", batch_size=16, concurrency=2),
                           batch_size=16, on_commit=kill_one)
        assert killed
        assert not Path(f"/proc/{killed[0]}").exists() or b"zombie" in Path(f"/proc/{killed[0]}/status").read_bytes()
        assert report.added == len(set(texts)) and sum(n for _, n in report.committed) == report.added
        assert report.skipped == len(texts) - len(set(texts))  # repeated lines only, reported as such
        assert index.count() == len(set(texts))
        stored = index.lookup([content_hash(t)[:20] for t in texts])
        assert len(stored) == len(set(texts))
        assert index.check()["ok"]


def test_driver_killed_keeps_every_reported_batch(cluster, sentences, tmp_path):
    path = tmp_path / "lines.txt"
    texts = list(dict.fromkeys(s["text"] for s in sentences))
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    directory = tmp_path / "index"
    cli = [sys.executable, "-m", "latent.cli"]
    assert subprocess.run([*cli, "-q", "create", str(directory), "--encoder", "minilm", "--index", "flat"],
                          cwd=ROOT, capture_output=True).returncode == 0
    driver = subprocess.Popen([*cli, "add", str(directory), str(path), "-v", "--batch-size", "16", "--ray-batch-size",
                               "16", f"--ray={cluster.address}"], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "LATENT_SAVE_EVERY_S": "0"})
    reported: list[tuple[int, int]] = []
    try:
        for line in driver.stderr:
            if line.startswith("committed generation"):
                generation, n = line.split("generation ")[1].split(": ")
                reported.append((int(generation), int(n.split()[0])))
                if len(reported) == 3:
                    os.kill(driver.pid, signal.SIGKILL)
                    break
    finally:
        driver.kill()
        driver.wait()
    assert driver.returncode == -signal.SIGKILL and len(reported) == 3
    check = subprocess.run([*cli, "check", str(directory), "--json"], cwd=ROOT, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout)["ok"]
    with Index.open(directory) as index:
        kept = sum(n for _, n in reported)
        assert index.generation() >= reported[-1][0]
        stored = index.lookup([content_hash(t)[:20] for t in texts[:kept]])
        assert len(stored) == kept  # every line of every reported batch is there
        assert index.count() >= kept


def _inverted_lists(vindex) -> list[tuple[np.ndarray, bytes]]:
    import faiss

    ivf = faiss.extract_index_ivf(vindex.index)
    lists = ivf.invlists
    out = []
    for i in range(ivf.nlist):
        size = lists.list_size(i)
        ids = faiss.rev_swig_ptr(lists.get_ids(i), size).copy()
        codes = faiss.rev_swig_ptr(lists.get_codes(i), size * lists.code_size).tobytes()
        out.append((ids, codes))
    return out


def test_ivfpq_built_in_parts_equals_the_local_build(cluster, tmp_path):
    from latent.indexer.encoders.glove import load_glove

    words, _, table = load_glove()  # real vectors: 3,000 GloVe words
    words, vectors = words[100:3100], np.asarray(table[100:3100], dtype=np.float32)
    n = len(words)
    with Index.create(tmp_path / "ivf", encoder="vectors:50", index_type="IVF16,PQ10x4") as index:
        index.add_vectors(words, vectors)
        index.rebuild()
        local = index.vectors
        assert local.factory == "IVF16,PQ10x4" and local.ntotal == n
        local_lists = _inverted_lists(local)
        assert sum(len(ids) for ids, _ in local_lists) == n and sum(len(ids) > 0 for ids, _ in local_lists) > 8
        queries = vectors[::97] / np.linalg.norm(vectors[::97], axis=1, keepdims=True)
        local_hits = local.search(queries, 10)
        result = index.rebuild_in_parts(block=max(1, n // 5))
        assert result["blocks"] >= 5
        parts = index.vectors
        assert parts is not local and parts.factory == local.factory
        for (ids, codes), (ids2, codes2) in zip(local_lists, _inverted_lists(parts)):
            np.testing.assert_array_equal(ids, ids2)
            assert codes == codes2
        for a, b in zip(local_hits, parts.search(queries, 10)):
            np.testing.assert_array_equal(a, b)
        assert index.check()["ok"]
    with Index.open(tmp_path / "ivf") as index:  # what was saved is what was built
        for a, b in zip(local_hits, index.vectors.search(queries, 10)):
            np.testing.assert_array_equal(a, b)
