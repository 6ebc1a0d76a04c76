"""Vector, keyword and hybrid search compared on a labelled retrieval set built from a real
corpus latent did not write: the long descriptions (READMEs) in the METADATA files of the
packages installed beside latent (latent's own left out). Each README is cut into sections
at its headings (Markdown `#` headings, and Markdown/reStructuredText headings underlined
with = - ~ ^ * + #); a section's body, without its heading, is one item. A heading that occurs once in the whole corpus
(case-folded), has two words or more and heads a body of 25 words or more is a query, and
its own section is its one relevant item (a known-item search, like a reader who remembers a
section's title). Reports nDCG@10 and recall@10 of each mode through the engine
(`Collection.search(mode=...)`, minilm, flat index), keyword search under three FTS5
tokenizers, query latency per mode, the time of the keyword-index migration and the cost of
the FTS triggers on writes. Prints a table; appends JSON lines to benchmarks/results/hybrid.jsonl.

    python benchmarks/bench_hybrid.py [--queries 300] [--items 0 (all)] [--seed 0]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import re
import sqlite3
import statistics
import sys
import sysconfig
import tempfile
import time
from email.parser import Parser
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = Path(__file__).parent / "results" / "hybrid.jsonl"
K = 10
_ATX = re.compile(r"^ {0,3}(#{1,6})\s+(.+?)\s*#*\s*$")
_UNDERLINE = re.compile(r"^([=\-~^*+#])\1{2,}\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_MARKUP = re.compile(r"[`*_\[\]<>|]|\(http[^)]*\)")


def readmes(site: Path) -> dict[str, str]:
    """{distribution name: long description} of every installed distribution that has one,
    latent's own (an editable install puts it there) excepted: the corpus is others' writing."""
    from latent.indexer.errors import DISTRIBUTION

    out = {}
    for meta in sorted(site.glob("*.dist-info/METADATA")):
        message = Parser().parsestr(meta.read_text(encoding="utf-8", errors="replace"))
        body = message.get_payload() or message.get("Description") or ""
        if (message.get("Name") or "").lower() == DISTRIBUTION:
            continue
        if isinstance(body, str) and body.strip():
            out[message.get("Name") or meta.parent.name] = body
    return out


def sections(text: str) -> list[tuple[str, str]]:
    """(heading, body) of a README, in order; code fences are body, never headings."""
    lines = text.splitlines()
    out: list[tuple[str, list[str]]] = [("", [])]
    fenced = False
    i = 0
    while i < len(lines):
        line = lines[i]
        if _FENCE.match(line):
            fenced = not fenced
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        atx = None if fenced else _ATX.match(line)
        if atx:
            out.append((atx.group(2), []))
        elif (not fenced and line.strip() and _UNDERLINE.match(nxt) and len(nxt.strip()) >= len(line.strip()) * 0.6
              and not _UNDERLINE.match(line)):
            out.append((line.strip(), []))
            i += 1
        elif not _UNDERLINE.match(line):
            out[-1][1].append(line)
        i += 1
    return [(_plain(h), " ".join(" ".join(body).split())) for h, body in out]


def _plain(heading: str) -> str:
    return " ".join(_MARKUP.sub(" ", heading).split())


def build_set(site: Path, n_queries: int, n_items: int, seed: int):
    """(items [(key, text, package)], queries [(heading, key)], facts)."""
    docs = readmes(site)
    items, headings = [], []
    for package, text in docs.items():
        for number, (heading, body) in enumerate(sections(text)):
            if len(body.split()) < 25:
                continue
            key = f"{package}#{number}"
            items.append((key, body[:4000], package))
            headings.append((heading, key))
    counts: dict[str, int] = {}
    for heading, _ in headings:
        counts[heading.casefold()] = counts.get(heading.casefold(), 0) + 1
    candidates = [(h, key) for h, key in headings
                  if counts[h.casefold()] == 1 and len(h.split()) >= 2 and any(c.isalpha() for c in h)]
    rng = np.random.default_rng(seed)
    chosen = [candidates[i] for i in sorted(rng.choice(len(candidates), min(n_queries, len(candidates)),
                                                       replace=False))]
    if n_items and n_items < len(items):
        wanted = {key for _, key in chosen}
        rest = [it for it in items if it[0] not in wanted]
        keep = [rest[i] for i in sorted(rng.choice(len(rest), max(n_items - len(wanted), 0), replace=False))]
        items = [it for it in items if it[0] in wanted] + keep
    digest = hashlib.sha256("\n".join(sorted(docs)).encode()).hexdigest()[:12]
    facts = {"packages": len(docs), "package_list_sha256": digest, "sections": len(items),
             "candidate_queries": len(candidates), "queries": len(chosen)}
    return items, chosen, facts


def scores(ranked: list[list[str]], relevant: list[str]) -> dict[str, float]:
    """nDCG@10 and recall@10 with one relevant item per query (ideal DCG = 1)."""
    ndcg = recall = 0.0
    for keys, want in zip(ranked, relevant):
        top = keys[:K]
        if want in top:
            ndcg += 1 / math.log2(top.index(want) + 2)
            recall += 1
    return {"ndcg@10": ndcg / len(relevant), "recall@10": recall / len(relevant)}


def tokenizer_rankings(texts: list[tuple[int, str]], queries: list[str], tokenize: str, depth: int) -> list[list[int]]:
    """BM25 rankings (ids) of each query under an FTS5 tokenizer, in a private in-memory table."""
    from latent.search.keyword import match_expression

    conn = sqlite3.connect(":memory:")
    conn.execute(f"CREATE VIRTUAL TABLE t USING fts5(text, tokenize='{tokenize}')")
    conn.executemany("INSERT INTO t(rowid, text) VALUES (?, ?)", texts)
    out = []
    for q in queries:
        match = match_expression(q)
        out.append([r[0] for r in conn.execute("SELECT rowid FROM t WHERE t MATCH ? ORDER BY rank LIMIT ?",
                                               [match, depth])])
    conn.close()
    return out


def timed_migration(directory: Path) -> float:
    """Seconds to open the index when its keyword index must be made (the migration, from scratch)."""
    import latent
    from latent.indexer.store import DB_NAME, FTS_TABLE, MIGRATIONS

    conn = sqlite3.connect(directory / DB_NAME)
    for trigger in ("items_fts_insert", "items_fts_delete", "items_fts_update"):
        conn.execute(f"DROP TRIGGER {trigger}")
    conn.execute(f"DROP TABLE {FTS_TABLE}")
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) - 1}")
    conn.commit()
    conn.close()
    started = time.perf_counter()
    latent.open(directory).close()
    return time.perf_counter() - started


def write_cost(root: Path, keys: list[str], vectors: np.ndarray, texts: list[str]) -> dict[str, float]:
    """Seconds of add_vectors (no encoding) of the same rows with and without the FTS triggers."""
    import latent

    out = {}
    for label in ("with_fts", "without_fts"):
        ix = latent.create(root / label, encoder="minilm", index_type="flat")
        if label == "without_fts":
            for trigger in ("items_fts_insert", "items_fts_delete", "items_fts_update"):
                ix.store.db.execute(f"DROP TRIGGER {trigger}")
        started = time.perf_counter()
        for start in range(0, len(keys), 1000):
            ix.add_vectors(keys[start:start + 1000], vectors[start:start + 1000], texts=texts[start:start + 1000])
        out[label] = time.perf_counter() - started
        ix.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=300, help="held-out headings used as queries")
    parser.add_argument("--items", type=int, default=0, help="at most this many sections (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--site", type=Path, default=Path(sysconfig.get_paths()["purelib"]),
                        help="the site-packages whose READMEs make the corpus")
    parser.add_argument("--examples", type=int, default=3, help="print this many queries vectors miss and hybrid finds")
    args = parser.parse_args()

    import latent
    from latent.indexer.store import FTS_TOKENIZE
    from latent.search.keyword import HYBRID_DEPTH, RRF_K, fuse

    items, queries, facts = build_set(args.site, args.queries, args.items, args.seed)
    print(f"corpus: {facts['packages']} package READMEs in {args.site} -> {facts['sections']} sections; "
          f"{facts['candidate_queries']} unique headings, {facts['queries']} used as queries (seed {args.seed})")
    print(f"python {platform.python_version()}, sqlite {sqlite3.sqlite_version}, cores {os.cpu_count()}, "
          f"load {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ix = latent.create(root / "readmes", encoder="minilm", index_type="flat")
        started = time.perf_counter()
        ix.add([{"key": key, "text": text, "metadata": {"package": package}} for key, text, package in items])
        build_s = time.perf_counter() - started
        texts = [q for q, _ in queries]
        relevant = [key for _, key in queries]
        ix.search(texts[0], mode="hybrid")  # warm up: the model and the vector index load
        results, latency, rankings = {}, {}, {}
        for mode in ("vector", "keyword", "hybrid"):
            took, ranked = [], []
            for q in texts:
                t0 = time.perf_counter()
                hits = ix.search(q, k=K, mode=mode)
                took.append(time.perf_counter() - t0)
                ranked.append([h.key for h in hits])
            rankings[mode] = ranked
            results[mode] = scores(ranked, relevant)
            latency[mode] = {"median_ms": 1000 * statistics.median(took),
                             "p95_ms": 1000 * float(np.percentile(took, 95))}
        # keyword search under other tokenizers, and hybrid with each (fused with the same vector ranking)
        depth = max(K, HYBRID_DEPTH)
        id_of = {key: i for i, (key, _, _) in enumerate(items)}
        vector_deep = [[id_of[h.key] for h in ix.search(q, k=depth, mode="vector")] for q in texts]
        tokenizers = {}
        for tokenize in ("unicode61 remove_diacritics 2", "porter unicode61 remove_diacritics 2", "trigram"):
            kw = tokenizer_rankings([(i, text) for i, (_, text, _) in enumerate(items)], texts, tokenize, depth)
            by_key = [[items[i][0] for i in row] for row in kw]
            fused = [[items[i][0] for i, _ in fuse([v, w], constant=RRF_K)] for v, w in zip(vector_deep, kw)]
            tokenizers[tokenize] = {"keyword": scores(by_key, relevant), "hybrid": scores(fused, relevant)}
        examples = []
        for q, want, v, h in zip(texts, relevant, rankings["vector"], rankings["hybrid"]):
            if want not in v and want in h[:3]:
                examples.append({"query": q, "relevant": want, "hybrid_rank": h.index(want) + 1})
        n = len(items)
        keys = [f"w{i}" for i in range(n)]
        vectors = np.random.default_rng(0).standard_normal((n, ix.dim)).astype(np.float32)  # writes only
        ix.close()
        migration_s = timed_migration(root / "readmes")
        writes = write_cost(root, keys, vectors, [text for _, text, _ in items])

    print(f"\nindex: {n} sections, minilm, flat; built in {build_s:.0f} s; k={K}, RRF k={RRF_K}, "
          f"{HYBRID_DEPTH} candidates per side; keyword index tokenizer: {FTS_TOKENIZE}\n")
    print(f"{'mode':8}  {'nDCG@10':>8}  {'recall@10':>9}  {'median ms':>9}  {'p95 ms':>7}")
    for mode in ("vector", "keyword", "hybrid"):
        r, t = results[mode], latency[mode]
        print(f"{mode:8}  {r['ndcg@10']:8.3f}  {r['recall@10']:9.3f}  {t['median_ms']:9.1f}  {t['p95_ms']:7.1f}")
    print("\nFTS5 tokenizer (keyword alone / fused with the vector ranking):")
    print(f"{'tokenizer':38}  {'kw nDCG':>7}  {'kw R@10':>7}  {'hy nDCG':>7}  {'hy R@10':>7}")
    for name, r in tokenizers.items():
        print(f"{name:38}  {r['keyword']['ndcg@10']:7.3f}  {r['keyword']['recall@10']:7.3f}  "
              f"{r['hybrid']['ndcg@10']:7.3f}  {r['hybrid']['recall@10']:7.3f}")
    print(f"\nkeyword-index migration of the {n}-item index on open: {migration_s:.2f} s")
    print(f"add_vectors of {n} rows with texts: {writes['with_fts']:.2f} s with the FTS triggers, "
          f"{writes['without_fts']:.2f} s without ({writes['with_fts'] / writes['without_fts']:.2f}x)")
    print(f"\n{len(examples)} queries whose section vectors miss (not in the top {K}) and hybrid ranks in its top 3; "
          "the first ones:")
    for e in examples[:args.examples]:
        print(f"  {e['query']!r} -> {e['relevant']} (hybrid rank {e['hybrid_rank']})")
    RESULTS.parent.mkdir(exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps({"bench": "hybrid", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "args": vars(args) | {
            "site": str(args.site)}, **facts, "items": n, "build_s": build_s, "results": results, "latency": latency,
            "tokenizers": tokenizers, "migration_s": migration_s, "writes_s": writes, "rrf_k": RRF_K,
            "depth": HYBRID_DEPTH, "engine_tokenize": FTS_TOKENIZE, "load": os.getloadavg()[0],
            "examples": examples[:20]}) + "\n")


if __name__ == "__main__":
    main()
