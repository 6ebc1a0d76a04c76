"""Segmented vector files (indexer/segments.py): a base plus delta segments searched as one index,
tombstones across them, merges by size ratio (where `auto` switches type), log-structured segment
merges, and vectors.faiss files of the earlier single-file format opening as the base."""

from __future__ import annotations

import gc
import json
import sqlite3
import struct

import faiss
import numpy as np
import pytest

import latent.indexer.segments as sg
import latent.indexer.vector_index as vx
from latent.indexer import Index
from latent.search.query import search_vectors

DIM = 8


def unit(rng, n):
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute(queries, vectors, ids, k):
    scores = queries @ vectors.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), ids[order]


@pytest.mark.parametrize("with_filter", [False, True])
def test_base_and_segments_search_as_one_exact_index(with_filter):
    rng = np.random.default_rng(1)
    vectors = unit(rng, 900)
    ids = np.arange(900, dtype=np.int64) * 3 + 1  # ids never reused, not positions
    base = vx.VectorIndex.new("Flat", DIM)
    base.add(ids[:500], vectors[:500])
    index = sg.SegmentedIndex(base)
    for lo, hi in ((500, 700), (700, 850), (850, 900)):
        index.add(ids[lo:hi], vectors[lo:hi])
        index.segments[-1].name = f"seg-{lo}"  # as if saved: the next add opens a new segment
    dead = ids[rng.choice(900, 120, replace=False)]  # in the base and in every segment
    index.remove(dead)
    assert len(index.segments) == 4 and index.live == 780 and index.ntotal == 900
    live = ~np.isin(ids, dead)
    allowed = np.sort(ids[rng.choice(900, 400, replace=False)]) if with_filter else None
    keep = live & (np.isin(ids, allowed) if with_filter else True)
    queries = unit(rng, 20)
    scores, found = index.search(queries, 10, allowed=allowed)
    want_s, want_i = brute(queries, vectors[keep], ids[keep], 10)
    np.testing.assert_array_equal(found, want_i)
    np.testing.assert_allclose(scores, want_s, atol=1e-5)
    assert np.array_equal(index.ids(), np.sort(ids[live]))
    some = np.sort(ids[live][::7])
    np.testing.assert_allclose(index.exact_vectors(some), vectors[np.searchsorted(ids, some)], atol=1e-6)


def test_a_flat_base_merges_from_its_file_as_the_copy_of_it_does(tmp_path, monkeypatch):
    """merged_flat_base (read from the file a block at a time, into an index allocated once) gives
    the index merged_base gives from a copy read whole: the same ids in the same order, the same
    vectors, the same search results; deletions in the base and in the segments left out."""
    monkeypatch.setattr(vx, "_FLAT_CHUNK", 37)  # many blocks, the last one short
    rng = np.random.default_rng(4)
    vectors = unit(rng, 700)
    ids = np.arange(700, dtype=np.int64) * 2 + 5
    base = vx.VectorIndex.new("Flat", DIM)
    base.add(ids[:500], vectors[:500])
    base.save(tmp_path, 3)
    index = sg.SegmentedIndex(vx.VectorIndex.load(tmp_path, mmap=True), base_saved=True)
    for lo, hi in ((500, 640), (640, 700)):
        index.add(ids[lo:hi], vectors[lo:hi])
        index.segments[-1].name = f"seg-{lo}"
    index.generation = 5
    dead = ids[rng.choice(700, 90, replace=False)]
    index.remove(dead)
    seen = []
    streamed = index.merged_flat_base(tmp_path / vx.FILE_NAME, lambda done, total: seen.append((done, total)))
    copied = index.merged_base(vx.VectorIndex.load(tmp_path))
    assert streamed is not None and streamed.generation == copied.generation == 5
    assert streamed.ntotal == copied.ntotal == 610
    raw = streamed._raw_ids()
    assert np.array_equal(raw, copied._raw_ids()) and not np.isin(raw, dead).any()
    np.testing.assert_array_equal(streamed.index.reconstruct_batch(raw), copied.index.reconstruct_batch(raw))
    gc.collect()  # the inner Flat index, made in merge_flat_file, lives as long as the id map around it
    queries = unit(rng, 15)
    np.testing.assert_array_equal(streamed.search(queries, 10)[1], copied.search(queries, 10)[1])
    assert seen[-1] == (seen[-1][1], 500 + 200 - int(np.isin(dead, ids[500:]).sum()))  # every row once
    streamed.save(tmp_path, 5, name="merged.faiss")  # FAISS writes it as any Flat index
    again = vx.VectorIndex.load(tmp_path, name="merged.faiss")
    assert np.array_equal(again._raw_ids(), raw)


def test_a_flat_file_not_laid_out_as_expected_is_merged_from_a_copy(tmp_path):
    rng = np.random.default_rng(5)
    base = vx.VectorIndex.new("Flat", DIM)
    base.add(np.arange(50), unit(rng, 50))
    base.save(tmp_path, 1)
    index = sg.SegmentedIndex(vx.VectorIndex.load(tmp_path), base_saved=True)
    path = tmp_path / vx.FILE_NAME
    data = bytearray(path.read_bytes())
    at = data.find(b"IxFI")
    data[at:at + 4] = b"IxFX"  # not the inner index FAISS writes for Flat
    path.write_bytes(bytes(data))
    assert vx.merge_flat_file(path, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, DIM))) is None
    assert index.merged_flat_base(path) is None  # _merge_vectors then merges a copy, as for any other type
    hnsw = vx.VectorIndex.new("HNSW32", DIM)
    hnsw.add(np.arange(50), unit(rng, 50))
    assert sg.SegmentedIndex(hnsw).merged_flat_base(path) is None  # not a Flat base: copied


def test_tier_merges_keep_few_segments_and_keep_tombstones_of_older_parts():
    rng = np.random.default_rng(2)
    base = vx.VectorIndex.new("Flat", DIM)
    base.add(np.arange(100), unit(rng, 100))
    index = sg.SegmentedIndex(base)
    next_id = 100
    for step in range(64):
        index.add(np.arange(next_id, next_id + 5), unit(rng, 5))
        index.remove(np.array([step]))  # a base item dies in every segment
        next_id += 5
        index.segments[-1].name = f"s{step}"
        while (run := index.tier_run()) is not None:
            merged = index.merged_tier(*run)
            merged.name = f"m{step}-{run[0]}"
            index.replace_run(*run, merged)
    assert len(index.segments) <= 8, [s.size for s in index.segments]
    assert index.ntotal == 100 + 64 * 5 and index.live == index.ntotal - 64
    assert np.array_equal(index.ids(), np.arange(64, next_id))


def test_writes_append_segments_and_merge_past_the_ratio_where_auto_switches(tmp_path, monkeypatch):
    monkeypatch.setattr(sg, "MERGE_MIN", 100)
    monkeypatch.setattr(vx, "AUTO_FLAT_MAX_FLOATS", 300 * DIM)  # auto: HNSW32 beyond 300 items
    rng = np.random.default_rng(3)
    index = Index.create(tmp_path / "idx", encoder="vectors:8")
    index.add_vectors([f"a{i}" for i in range(60)], unit(rng, 60))
    base = (tmp_path / "idx" / vx.FILE_NAME).read_bytes()
    index.add_vectors([f"b{i}" for i in range(30)], unit(rng, 30))
    assert (tmp_path / "idx" / vx.FILE_NAME).read_bytes() == base  # a write never rewrites the base
    assert index.vectors.segment_items == 90 and index.vectors.base.ntotal == 0
    index.add_vectors([f"c{i}" for i in range(20)], unit(rng, 20))  # 110 >= MERGE_MIN: merged
    assert not index.vectors.segments and index.vectors.base.ntotal == 110
    assert index.vectors.factory == "Flat"
    for batch in range(4):  # 110 -> 350 items: beyond 300 the merge builds the type auto now means
        index.add_vectors([f"d{batch}_{i}" for i in range(60)], unit(rng, 60))
    assert index.vectors.factory == "HNSW32" and not index.vectors.segments
    assert sorted(p.name for p in (tmp_path / "idx").glob("vectors*")) == [vx.FILE_NAME]
    index.add_vectors(["e0"], unit(rng, 1))  # a small write: one segment, no merge
    assert len(index.vectors.segments) == 1 and index.vectors.factory == "HNSW32"
    manifest = index.store.manifest()
    assert [e["name"] for e in manifest["vectors_segments"]] == [index.vectors.segments[0].name]
    index.close()
    with Index.open(tmp_path / "idx") as reopened:
        assert reopened.check()["ok"] and reopened.recovered is None
        assert reopened.vectors.base.ntotal == 350 and len(reopened.vectors.segments) == 1
        hit = search_vectors(reopened, reopened.vector_of("e0"), k=1)[0][0]
        assert hit.key == "e0"
        done = reopened.compact()
        assert done["segments"] == 1 and done["how"] == "merged" and not reopened.vectors.segments


def _format_1(vindex: vx.VectorIndex, generation: int) -> bytes:
    """vectors.faiss as versions before the segmented files wrote it: header first."""
    tombs = vindex.tombstones.astype("<i8").tobytes()
    payload = tombs + faiss.serialize_index(vindex.index).tobytes()
    fields = {"format": 1, "generation": generation, "factory": vindex.factory, "dim": vindex.dim,
              "ntotal": vindex.ntotal, "tombstones": len(vindex.tombstones), "bytes": len(payload)}
    header = json.dumps({**fields, "crc32": vx._checksum(fields, payload)}).encode()
    return vx.MAGIC + struct.pack("<I", len(header)) + header + payload


def test_an_index_with_a_single_file_of_the_earlier_format_opens_and_keeps_working(tmp_path):
    rng = np.random.default_rng(4)
    queries = unit(rng, 5)
    directory = tmp_path / "old"
    with Index.create(directory, encoder="vectors:8") as index:
        index.add_vectors([f"k{i}" for i in range(200)], unit(rng, 200))
        index.delete(["k3", "k4"])
        index.compact()
        expected = [[(h.key, round(h.score, 5)) for h in hits] for hits in search_vectors(index, queries, k=10)]
        old = _format_1(vx.VectorIndex.load(directory), index.generation())
    (directory / vx.FILE_NAME).write_bytes(old)  # and a manifest that lists no segments
    conn = sqlite3.connect(directory / "latent.db")
    with conn:
        conn.execute("DELETE FROM manifest WHERE key = 'vectors_segments'")
    conn.close()
    with Index.open(directory) as index:
        assert [[(h.key, round(h.score, 5)) for h in hits] for hits in search_vectors(index, queries, k=10)] == expected
        assert index.check()["ok"] and index.recovered is None and index.vectors.base.ntotal == 198
        index.add_vectors(["new"], unit(rng, 1))  # a segment on top of the old file
        assert (directory / vx.FILE_NAME).read_bytes() == old
        assert search_vectors(index, index.vector_of("new"), k=1)[0][0].key == "new"
        index.compact()  # the base is written anew, in the current format
        assert vx.read_header(directory / vx.FILE_NAME)[0]["format"] == 2
        assert index.check()["ok"] and index.count() == 199


def test_latent_compact_merges_the_segments_and_says_so(tmp_path):
    from click.testing import CliRunner

    from latent.cli import cli

    rng = np.random.default_rng(5)
    with Index.create(tmp_path / "idx", encoder="vectors:8", index_type="hnsw") as index:
        for batch in range(3):
            index.add_vectors([f"k{batch}_{i}" for i in range(40)], unit(rng, 40))
        assert len(index.vectors.segments) >= 1
    result = CliRunner().invoke(cli, ["compact", str(tmp_path / "idx"), "--json"])
    assert result.exit_code == 0, result.output
    done = json.loads(result.stdout)
    assert done["segment_items"] == 120 and done["items"] == 120 and done["factory_after"] == "HNSW32"
    assert not list((tmp_path / "idx").glob("vectors-*.seg"))
    result = CliRunner().invoke(cli, ["compact", str(tmp_path / "idx")])
    assert result.exit_code == 0 and "no segments to merge" in result.stdout
    assert CliRunner().invoke(cli, ["check", str(tmp_path / "idx")]).exit_code == 0
