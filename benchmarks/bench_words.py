"""Word analogies and word similarity on the bundled GloVe (6B, 50-d, 400k words), exact
(brute-force numpy over the whole vocabulary) and through the engine (`search.explore.analogy`
on HNSW and IVF indexes, as users call it). Test sets from gensim's test data (see
benchmarks/data/README.md): the Google analogy set (accuracy per section and overall,
3CosAdd and 3CosMul), WordSim-353 and SimLex-999 (Spearman rho). Target: the engine's
analogy accuracy within 0.5 points of exact. Prints the figures and appends JSON lines
to benchmarks/results/words.jsonl.

    python benchmarks/bench_words.py [--types hnsw ivf] [--per-section 0 (all)] [--methods add mul]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DATA = Path(__file__).parent / "data"
RESULTS = Path(__file__).parent / "results" / "words.jsonl"


def read_analogies(path: Path, rows: dict[str, int], per_section: int, seed: int = 0):
    """(section, a, b, c, d) with every word in the vocabulary (lower-cased), and the count skipped."""
    sections: dict[str, list] = defaultdict(list)
    section, skipped = "", 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith(":"):
            section = line[1:].strip()
            continue
        words = line.lower().split()
        if len(words) != 4:
            continue
        if all(w in rows for w in words):
            sections[section].append(words)
        else:
            skipped += 1
    rng = np.random.default_rng(seed)
    out = []
    for name, questions in sections.items():
        if per_section and len(questions) > per_section:
            questions = [questions[i] for i in sorted(rng.choice(len(questions), per_section, replace=False))]
        out += [(name, *q) for q in questions]
    return out, skipped


def read_pairs(path: Path, rows: dict[str, int]):
    pairs, skipped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or not line.strip():
            continue
        a, b, score = line.split("\t")[:3]
        a, b = a.lower(), b.lower()
        if a in rows and b in rows:
            pairs.append((a, b, float(score)))
        else:
            skipped += 1
    return pairs, skipped


def exact_answers(vectors: np.ndarray, rows: dict[str, int], questions, method: str, block: int = 512):
    """Top answer (a row) per question by brute force over the whole vocabulary, inputs excluded."""
    from latent.search.explore import MUL_EPSILON

    idx = np.array([[rows[w] for w in q[1:4]] for q in questions])
    answers = np.empty(len(questions), dtype=np.int64)
    for start in range(0, len(questions), block):
        part = idx[start:start + block]
        a, b, c = (vectors[part[:, j]] for j in range(3))
        if method == "add":
            scores = (b - a + c) @ vectors.T
        else:
            sa, sb, sc = ((x @ vectors.T + 1) / 2 for x in (a, b, c))
            scores = sb * sc / (sa + MUL_EPSILON)
        np.put_along_axis(scores, part, -np.inf, axis=1)
        answers[start:start + block] = scores.argmax(axis=1)
    return answers


def report(name: str, questions, correct: np.ndarray) -> dict:
    by_section = defaultdict(list)
    for q, ok in zip(questions, correct):
        by_section[q[0]].append(bool(ok))
    return {"overall": round(100 * float(np.mean(correct)), 2),
            "sections": {s: round(100 * float(np.mean(v)), 2) for s, v in by_section.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--types", nargs="+", default=["hnsw", "ivf"], help="engine index types")
    parser.add_argument("--methods", nargs="+", default=["add", "mul"], choices=["add", "mul"])
    parser.add_argument("--per-section", type=int, default=0,
                        help="questions per section for the engine runs (0: all 19,544)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import faiss
    from scipy.stats import spearmanr

    from latent.indexer import Index, Record
    from latent.indexer.encoders import normalize
    from latent.indexer.encoders.glove import load_glove
    from latent.search.explore import analogy

    words, rows, raw = load_glove()
    vectors = normalize(np.asarray(raw))
    questions, oov = read_analogies(DATA / "questions-words.txt", rows, args.per_section)
    print(f"python {platform.python_version()}, numpy {np.__version__}, faiss {faiss.__version__}, "
          f"{os.cpu_count()} cpus, faiss threads {faiss.omp_get_max_threads()}")
    print(f"GloVe 6B 50-d: {len(words):,} words; analogies: {len(questions):,} questions "
          f"({oov} skipped: a word not in the vocabulary); types {args.types}; methods {args.methods}")
    results = {"bench": "words", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "cpus": os.cpu_count(),
               "questions": len(questions), "skipped_oov": oov, "exact": {}, "engine": {}, "similarity": {}}
    gold = np.array([rows[q[4]] for q in questions])
    exact_by_method = {}
    for method in args.methods:
        started = time.perf_counter()
        answers = exact_by_method[method] = exact_answers(vectors, rows, questions, method)
        results["exact"][method] = report("exact", questions, answers == gold)
        results["exact"][method]["seconds"] = round(time.perf_counter() - started, 1)
        print(f"exact  3Cos{method.capitalize():3}: {results['exact'][method]['overall']:6.2f}%  "
              f"({results['exact'][method]['seconds']} s)")

    work = Path(tempfile.mkdtemp(prefix="latent-bench-words-"))
    try:
        for spec in args.types:
            started = time.perf_counter()
            index = Index.create(work / spec, encoder="glove", index_type=spec)
            index.add((Record(text=w, key=w, kind="word") for w in words), batch_size=20_000)
            build = time.perf_counter() - started
            factory = index.vectors.factory
            results["engine"][spec] = {"factory": factory, "build_seconds": round(build, 1),
                                       "params": index.vectors.params}
            for method in args.methods:
                started = time.perf_counter()
                got = np.array([rows.get((analogy(index, a, b, c, k=1, method=method) or [None])[0].key, -1)
                                for _, a, b, c, _ in questions])
                elapsed = time.perf_counter() - started
                res = report(spec, questions, got == gold)
                exact = results["exact"][method]["overall"]
                res.update({"seconds": round(elapsed, 1), "queries_per_s": round(len(questions) / elapsed, 1),
                            "delta_points": round(res["overall"] - exact, 2),
                            "agreement_with_exact": round(100 * float(np.mean(got == exact_by_method[method])), 2)})
                results["engine"][spec][method] = res
                ok = "OK" if abs(res["delta_points"]) <= 0.5 else "MISSED"
                print(f"engine {spec:5} {factory:14} 3Cos{method.capitalize():3}: {res['overall']:6.2f}%  "
                      f"(exact {exact:.2f}%, delta {res['delta_points']:+.2f} points: {ok} within 0.5; same answer "
                      f"as exact {res['agreement_with_exact']:.2f}%; {res['queries_per_s']} analogies/s; "
                      f"build {build:.0f} s)")
            # similarity through the engine: the stored vectors, as `latent` scores them
            for name, file in (("wordsim353", "wordsim353.tsv"), ("simlex999", "simlex999.txt")):
                pairs, skipped = read_pairs(DATA / file, rows)
                human = [p[2] for p in pairs]
                exact_cos = [float(vectors[rows[a]] @ vectors[rows[b]]) for a, b, _ in pairs]
                engine_cos = [float(index.store.vector_of_key(a, 50) @ index.store.vector_of_key(b, 50))
                              for a, b, _ in pairs]
                rho_exact, rho_engine = spearmanr(human, exact_cos)[0], spearmanr(human, engine_cos)[0]
                results["similarity"][name] = {"pairs": len(pairs), "skipped_oov": skipped,
                                               "rho_exact": round(float(rho_exact), 4),
                                               f"rho_engine_{spec}": round(float(rho_engine), 4)}
                print(f"{name:10}: {len(pairs)} pairs ({skipped} skipped), Spearman rho exact {rho_exact:.4f}, "
                      f"engine ({spec}) {rho_engine:.4f}")
            index.close()
            shutil.rmtree(work / spec)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("per section (exact 3CosAdd):",
          ", ".join(f"{s} {v:.1f}" for s, v in results["exact"].get("add", {}).get("sections", {}).items()))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(results) + "\n")


if __name__ == "__main__":
    main()
