"""dupes, --collapse, cluster, ls, get and the shared output options (--format, --fields,
--min-score, --json as an alias) on the `fake` encoder: planted vectors, no model."""

from __future__ import annotations

import csv
import io
import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

import latent
from latent.cli import cli
from latent.search.dupes import collapse_hits

DIM = 32


def unit(v):
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture
def planted(tmp_path):
    """40 random items and two planted groups: a0 ~ a1 ~ a2 (a chain: a0 and a2 are further
    apart than the threshold) and b0 ~ b1."""
    rng = np.random.default_rng(7)
    base = unit(rng.standard_normal((40, DIM)))
    a0 = unit(rng.standard_normal(DIM))
    step = rng.standard_normal(DIM)
    step = unit(step - (step @ a0) * a0)  # at right angles to a0: a1 at 16.7 degrees, a2 at 31.0
    a1, a2 = unit(a0 + 0.3 * step), unit(a0 + 0.6 * step)
    b0 = unit(rng.standard_normal(DIM))
    b1 = unit(b0 + 0.05 * unit(rng.standard_normal(DIM)))
    keys = [f"r{i:02d}" for i in range(40)] + ["a0", "a1", "a2", "b0", "b1"]
    vectors = np.vstack([base, a0, a1, a2, b0, b1])
    meta = [{"n": i, "id": k, "group": "a" if k[0] == "a" else "b" if k[0] == "b" else "r"}
            for i, k in enumerate(keys)]
    ix = latent.create(tmp_path / "v", encoder=f"vectors:{DIM}")
    ix.add_vectors(keys, vectors, metadata=meta, texts=[f"text of {k}" for k in keys])
    assert float(a0 @ a2) < 0.95 < min(float(a0 @ a1), float(a1 @ a2))
    yield ix
    ix.close()


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result


def test_dupes_groups_chains_and_representatives(planted):
    groups = planted.duplicates(threshold=0.95)
    assert [sorted(m.key for m in g.members) for g in groups] == [["a0", "a1", "a2"], ["b0", "b1"]]
    assert groups[0].representative.key == "a1"  # the middle of the chain is nearest to the mean
    assert groups[0].min_score >= 0.95 and groups[0].members[0].score == pytest.approx(1.0)
    assert groups[1].representative.key == "b0"  # equally central: the earlier key
    assert [sorted(m.key for m in g.members) for g in planted.duplicates(threshold=0.95, where="group != a")] == \
        [["b0", "b1"]]
    with pytest.raises(latent.InputError, match="threshold"):
        planted.duplicates(threshold=1.5)


def test_collapse_folds_near_identical_hits_and_keeps_k(planted):
    query = planted.get("a0", vector=True)["vector"]
    plain = planted.search(query, k=4)
    assert [h.key for h in plain[:3]] == ["a0", "a1", "a2"]
    folded = planted.search(query, k=4, collapse=0.95)
    assert folded[0].key == "a0" and folded[0].folded == ["a1", "a2"]  # a2 is linked through a1
    assert len(folded) == 4 and [h.rank for h in folded] == [1, 2, 3, 4]
    assert not any(h.key in ("a1", "a2") for h in folded)
    assert planted.search(query, k=4, min_score=0.85) == plain[:3] and len(plain) == 4
    assert collapse_hits(planted, [], threshold=0.9) == []


def test_cluster_writes_a_field_once_and_guards_user_fields(planted):
    generation = planted.generation()
    result = planted.cluster(3, field="c", seed=0)
    assert planted.generation() == generation + 1
    assert result.items == 45 and sum(c.size for c in result.clusters) == 45
    stored = {h.key: h.metadata["c"] for h in planted.items(limit=None)}
    assert set(stored.values()) == {0, 1, 2} and stored["b0"] == stored["b1"]
    assert planted.cluster(3, field="c", seed=1).replaced_user_values == 0  # its own field: replaced
    with pytest.raises(latent.InputError, match="3 item\\(s\\) already have a metadata field 'group'|45 item"):
        planted.cluster(3, field="group")
    assert planted.items(limit=1)[0].metadata["group"] == "r"  # untouched
    replaced = planted.cluster(3, field="group", replace=True)
    assert replaced.replaced_user_values == 45
    with pytest.raises(latent.InputError, match="too few"):
        planted.cluster(50)


def test_ls_and_get(planted):
    items = planted.items(where="group = b")
    assert [h.key for h in items] == ["b0", "b1"] and items[0].text == "text of b0"
    assert [h.key for h in planted.items(limit=2, offset=40)] == ["a0", "a1"]
    item = planted.get("b1", vector=True)
    assert item["metadata"]["group"] == "b" and item["vector"].shape == (DIM,)
    assert float(np.linalg.norm(item["vector"])) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(latent.KeyNotFound, match="nope"):
        planted.get("nope")


def test_cli_formats_fields_and_min_score(planted):
    d = planted.directory
    table = run("similar", d, "--key", "a0", "-k", "3")
    assert table.exit_code == 0, table.output
    header = table.stdout.splitlines()[0].split()
    assert header == ["rank", "score", "key", "text", "group", "n"]  # no `id`: it repeats the key
    assert "{" not in table.stdout  # no JSON in the cells
    fields = run("similar", d, "--key", "a0", "-k", "3", "--fields", "n,id")
    assert fields.stdout.splitlines()[0].split() == ["rank", "score", "key", "text", "n", "id"]
    rows = list(csv.DictReader(io.StringIO(run("similar", d, "--key", "a0", "-k", "3", "--format", "csv").stdout)))
    assert [r["key"] for r in rows] == ["a1", "a2", "b0"] or [r["key"] for r in rows][:2] == ["a1", "a2"]
    assert rows[0]["text"] == "text of a1" and float(rows[0]["score"]) > 0.95
    lines = run("similar", d, "--key", "a0", "-k", "3", "--format", "jsonl").stdout.splitlines()
    assert [json.loads(line)["key"] for line in lines][:2] == ["a1", "a2"]
    as_json = json.loads(run("similar", d, "--key", "a0", "-k", "3", "--json").stdout)
    assert as_json == json.loads(run("similar", d, "--key", "a0", "-k", "3", "--format", "json").stdout)
    high = json.loads(run("similar", d, "--key", "a0", "--min-score", "0.85", "--json").stdout)
    assert [h["key"] for h in high["hits"]] == ["a1", "a2"]
    collapsed = json.loads(run("similar", d, "--key", "a0", "-k", "2", "--collapse", "--json").stdout)
    assert collapsed["hits"][0]["key"] == "a1" and collapsed["hits"][0]["folded"] == ["a2"]
    assert run("similar", d, "--key", "a0", "--fields", "a b").exit_code == 2


def test_cli_dupes_cluster_ls_get(planted):
    d = planted.directory
    out = run("dupes", d, "--threshold", "0.95")
    assert out.exit_code == 0, out.output
    lines = out.stdout.splitlines()
    assert lines[0].split()[:4] == ["group", "rep", "score", "key"] and len(lines) == 2 + 5
    groups = json.loads(run("dupes", d, "--json").stdout)["groups"]
    assert [(g["representative"], g["size"]) for g in groups] == [("a1", 3), ("b0", 2)]
    rows = list(csv.DictReader(io.StringIO(run("dupes", d, "--format", "csv").stdout)))
    assert [(r["group"], r["rep"], r["key"]) for r in rows][:1] == [("1", "*", "a1")] and len(rows) == 5
    clustered = json.loads(run("cluster", d, "-k", "3", "--json").stdout)
    assert clustered["field"] == "cluster" and sum(c["size"] for c in clustered["clusters"]) == 45
    refused = run("cluster", d, "-k", "3", "--field", "group")
    assert refused.exit_code == 1 and "--replace" in refused.output
    listed = run("ls", d, "--where", "group=b")
    assert [line.split()[1] for line in listed.stdout.splitlines()[2:]] == ["b0", "b1"]
    got = run("get", d, "b0")
    assert re.search(r"^metadata.group +b$", got.stdout, re.M) and not re.search(r"^vector ", got.stdout, re.M)
    doc = json.loads(run("get", d, "b0", "--vector", "--json").stdout)
    assert len(doc["vector"]) == DIM and doc["key"] == "b0"
    missing = run("get", d, "zz")
    assert missing.exit_code == 1 and "no item with key 'zz'" in missing.output
