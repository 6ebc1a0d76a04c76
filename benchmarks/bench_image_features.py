"""Image feature variants of `efficientnet` and `conse` on the dev set ../shared/data/imagenet-dev/
(500 labelled photos, one per even ImageNet class; read its README; never shipped).

Per variant: coarse@5, the share of a photo's 5 nearest other photos in its coarse class (dogs,
cats, birds, fish, primates, insects, ...; over the photos that have one), cosine similarity.
For efficientnet also the top-1 accuracy of the stored label; for conse, text->image R@1 and
R@10 with the 500 class short names as queries (the right photo is the one of that class).
The network runs once (onnx runtime); variants are computed from its pooled features and
logits. Appended to benchmarks/results/image_features.jsonl.

    python benchmarks/bench_image_features.py [--dev ../shared/data/imagenet-dev]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import append_result, environment  # noqa: E402

from latent.indexer.encoders import get_encoder, normalize  # noqa: E402
from latent.indexer.encoders.conse import ConseEncoder  # noqa: E402
from latent.indexer.images import decode_image  # noqa: E402

COARSE = {"dog": (151, 268), "cat": (281, 285), "frog": (30, 32), "turtle": (33, 37), "bird": (80, 100),
          "primate": (365, 382), "fish": (389, 397), "crab": (118, 121), "insect": (300, 319)}
DEFAULT_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-dev"  # beside the checkout


def coarse_of(c: int) -> str | None:
    return next((name for name, (lo, hi) in COARSE.items() if lo <= c <= hi), None)


def coarse_at_5(vectors: np.ndarray, classes: list[int]) -> float:
    v = normalize(vectors)
    scores = v @ v.T
    np.fill_diagonal(scores, -np.inf)
    top = np.argsort(-scores, axis=1)[:, :5]
    kinds = [coarse_of(c) for c in classes]
    shares = [np.mean([kinds[j] == kinds[i] for j in row]) for i, row in enumerate(top) if kinds[i]]
    return float(np.mean(shares))


def recall(queries: np.ndarray, images: np.ndarray) -> tuple[float, float]:
    ranks = np.argsort(-(normalize(queries) @ normalize(images).T), axis=1)
    right = np.arange(len(queries))[:, None]
    return float((ranks[:, :1] == right).any(1).mean()), float((ranks[:, :10] == right).any(1).mean())


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dev", type=Path, default=DEFAULT_DEV)
    args = parser.parse_args()
    files = sorted(args.dev.glob("*.jpg"))
    classes = [int(re.match(r"(\d+)_", f.name)[1]) for f in files]
    cnn, text = get_encoder("efficientnet", "onnx"), get_encoder("minilm", "onnx")
    batch = np.stack([cnn.preprocess(decode_image(f.read_bytes())[0]) for f in files])
    features, logits = cnn.forward(batch)
    probs = softmax(logits)
    top1 = float((logits.argmax(1) == np.array(classes)).mean())
    print(f"{len(files)} photos; efficientnet top-1 of the stored label: {top1:.3f}", flush=True)

    rows = []

    def report(encoder: str, variant: str, vectors: np.ndarray, queries: np.ndarray | None = None) -> None:
        row = {"encoder": encoder, "variant": variant, "dim": int(vectors.shape[1]),
               "coarse_at_5": round(coarse_at_5(vectors, classes), 3)}
        if queries is not None:
            row["r_at_1"], row["r_at_10"] = (round(x, 3) for x in recall(queries, vectors))
        rows.append(row)
        extra = f", text->image R@1 {row['r_at_1']:.3f} R@10 {row['r_at_10']:.3f}" if queries is not None else ""
        print(f"{encoder:<13} {variant:<46} coarse@5 {row['coarse_at_5']:.3f}{extra}", flush=True)

    signed_sqrt = np.sign(features) * np.sqrt(np.abs(features))
    report("efficientnet", "pooled pre-logit features (default)", features)
    report("efficientnet", "pooled, signed square root", signed_sqrt)
    report("efficientnet", "class probabilities", probs)
    report("efficientnet", "class probabilities, square root (Hellinger)", np.sqrt(probs))
    report("efficientnet", "logits", logits)
    for temperature in (2.0, 4.0, 8.0):
        report("efficientnet", f"class probabilities, temperature {temperature:g}", softmax(logits, temperature))
    report("efficientnet", "pooled + sqrt probabilities (each L2, concat)",
           np.hstack([normalize(features), normalize(np.sqrt(probs))]))
    report("efficientnet", "signed-sqrt pooled + sqrt probs (concat)",
           np.hstack([normalize(signed_sqrt), normalize(np.sqrt(probs))]))

    names = [cnn.labels[c] for c in classes]
    plain = text.encode(names)
    from latent.indexer.encoders import conse as conse_module

    default = (conse_module.TOP_T, conse_module.PROMPTS, conse_module.DEFINITIONS)
    one, four = ("an image of {}",), conse_module.PROMPTS
    semantic = {}
    for prompts, definitions in ((one, False), (four, False), (four, True)):
        for top_t in (1, 5, 10, 20):
            conse = ConseEncoder(text, cnn, top_t=top_t, prompts=prompts, definitions=definitions)
            label = (f"T={top_t}, {'ensemble of ' + str(len(prompts)) if len(prompts) > 1 else repr(prompts[0])}"
                     + (" + name: definition" if definitions else ""))
            mark = " (default)" if (top_t, prompts, definitions) == default else \
                " (first default)" if (top_t, prompts, definitions) == (5, one, False) else ""
            vectors = conse.combine(logits)
            report("conse", label + mark, vectors, plain)
            if definitions:
                semantic[top_t] = vectors
            if top_t == 10 and len(prompts) > 1:
                for temperature in (0.5, 2.0):
                    report("conse", f"{label}, temperature {temperature:g}", conse.combine(logits / temperature), plain)
    # the same semantic vectors as image features for efficientnet: a class-level part beside the pooled one
    for top_t in (5, 10):
        report("efficientnet", f"pooled + conse T={top_t} with definitions (each L2, concat)",
               np.hstack([normalize(features), normalize(semantic[top_t])]))
        report("efficientnet", f"conse T={top_t} with definitions alone", semantic[top_t])
    path = append_result("image_features", {"environment": environment(), "photos": len(files),
                                            "efficientnet_top1": round(top1, 3), "variants": rows,
                                            "queries": "the class short names as they are (conse's text side); "
                                                       "ensemble rows average the prompts for the class vectors"})
    print(f"appended to {path}")


if __name__ == "__main__":
    main()
