"""Retrieval quality and speed of `minilm-int8` (dynamic int8 quantization of the ONNX export)
against fp32 `minilm` on onnxruntime: the overlap of their top-10 neighbour lists.

Two corpora, each searched with itself as queries (the query left out of its own list), the
corpus and the queries encoded by the same model, exact inner product:
- the 400 bundled sentences (indexer/data/sentences.jsonl);
- GloVe-vocabulary phrases: 3,000 phrases of two or three words drawn (seeded) from the 20,000
  most frequent words of the bundled GloVe vocabulary, alphabetic words only.
Reported: mean and 5th-percentile overlap@10 (|top-10 fp32 & top-10 int8| / 10), the minimum
and median cosine between a text's fp32 and int8 vectors, and texts/s of each. int8 is offered
when the mean overlap@10 is at least OFFER_OVERLAP on both corpora. Appended to
benchmarks/results/int8.jsonl.

    python benchmarks/bench_int8.py [--phrases 3000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import append_result, environment  # noqa: E402

from latent.indexer.builtin import SENTENCES  # noqa: E402
from latent.indexer.encoders import get_encoder  # noqa: E402
from latent.indexer.encoders.glove import load_glove  # noqa: E402
from latent.indexer.encoders.minilm import load_minilm_int8  # noqa: E402

K = 10
OFFER_OVERLAP = 0.9


def phrases(n: int, seed: int = 0) -> list[str]:
    words, _, _ = load_glove()
    common = [w for w in words[:20_000] if w.isalpha()]
    rng = np.random.default_rng(seed)
    out: set[str] = set()
    while len(out) < n:
        out.add(" ".join(rng.choice(common, size=int(rng.integers(2, 4)), replace=False)))
    return sorted(out)


def top_k(vectors: np.ndarray) -> np.ndarray:
    scores = vectors @ vectors.T
    np.fill_diagonal(scores, -np.inf)
    return np.argsort(-scores, axis=1, kind="stable")[:, :K]


def timed(encoder, texts: list[str]) -> tuple[np.ndarray, float]:
    encoder.encode(texts[:64])  # warm-up
    t0 = time.perf_counter()
    vectors = encoder.encode(texts)
    return vectors, len(texts) / (time.perf_counter() - t0)


def compare(name: str, texts: list[str], fp32, int8) -> dict:
    a, speed_a = timed(fp32, texts)
    b, speed_b = timed(int8, texts)
    ta, tb = top_k(a), top_k(b)
    overlap = np.array([len(set(x) & set(y)) / K for x, y in zip(ta.tolist(), tb.tolist())])
    cosine = (a * b).sum(1)
    out = {"corpus": name, "texts": len(texts), "overlap_at_10_mean": round(float(overlap.mean()), 4),
           "overlap_at_10_p05": round(float(np.percentile(overlap, 5)), 4),
           "top1_same": round(float((ta[:, 0] == tb[:, 0]).mean()), 4),
           "cosine_min": round(float(cosine.min()), 4), "cosine_median": round(float(np.median(cosine)), 5),
           "fp32_texts_per_s": round(speed_a, 1), "int8_texts_per_s": round(speed_b, 1)}
    print(f"{name}: {len(texts)} texts; overlap@10 mean {out['overlap_at_10_mean']:.3f} (p05 "
          f"{out['overlap_at_10_p05']:.2f}), same top-1 {out['top1_same']:.3f}; cosine int8/fp32 min "
          f"{out['cosine_min']:.3f}, median {out['cosine_median']:.4f}; texts/s fp32 {speed_a:.0f}, int8 {speed_b:.0f} "
          f"({speed_b / speed_a:.2f}x)", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phrases", type=int, default=3000)
    args = parser.parse_args()
    fp32, int8 = get_encoder("minilm", "onnx"), load_minilm_int8("onnx")
    sentences = [json.loads(line)["text"] for line in Path(SENTENCES).read_text().splitlines() if line.strip()]
    results = [compare("bundled sentences", sentences, fp32, int8),
               compare("GloVe-vocabulary phrases", phrases(args.phrases), fp32, int8)]
    offered = all(r["overlap_at_10_mean"] >= OFFER_OVERLAP for r in results)
    print(f"offer minilm-int8 (mean overlap@10 >= {OFFER_OVERLAP} on both): {'yes' if offered else 'no'}")
    path = append_result("int8", {"environment": environment(), "k": K, "offer_threshold": OFFER_OVERLAP,
                                  "offered": offered, "results": results})
    print(f"appended to {path}")


if __name__ == "__main__":
    main()
