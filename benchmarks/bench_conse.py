"""ConSE retrieval on real photos: for text queries, the rank of the right photo among the
photos bundled with scikit-image and scikit-learn, for several top-T and class prompts.
Prints top-1 and MRR per setting (the engine's default marked) and appends JSON lines to
benchmarks/results/conse.jsonl. The queries and photos are few: read the figures as a
sanity check of the choice, not as a general accuracy.

    python benchmarks/bench_conse.py
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).parent / "results" / "conse.jsonl"
# query -> the photo that answers it
QUERIES = {
    "a cat": "chelsea", "a kitten": "chelsea", "a cup of coffee": "coffee", "espresso": "coffee",
    "a rocket": "rocket", "a rocket launch": "rocket", "a clock": "clock", "an astronaut": "astronaut",
    "a photographer with a camera": "camera", "coins": "coins", "a temple": "china.jpg",
    "a flower": "flower.jpg", "galaxies in space": "hubble_deep_field", "a page of text": "page",
}


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from PIL import Image
    from sklearn.datasets import load_sample_images
    import skimage.data

    from latent.indexer.builtin import DEMO_PHOTOS
    from latent.indexer.encoders import get_encoder
    from latent.indexer.encoders import conse

    photos = {n: Image.fromarray(np.asarray(getattr(skimage.data, n)())).convert("RGB") for n in DEMO_PHOTOS}
    for p in load_sample_images().filenames:
        photos[Path(p).name] = Image.open(p).convert("RGB")
    names = list(photos)
    cnn = get_encoder("efficientnet")
    _, logits = cnn.forward(np.stack([cnn.preprocess(im) for im in photos.values()]))
    default = (conse.TOP_T, conse.PROMPTS, conse.DEFINITIONS)
    print(f"{len(QUERIES)} queries, {len(names)} photos; default T={conse.TOP_T}, prompts={conse.PROMPTS}, "
          f"definitions={conse.DEFINITIONS}")
    settings = [((p,), False) for p in ("{}", "a photo of a {}", "a photo of a {}.", "an image of {}")]
    settings += [(conse.PROMPTS, False), (conse.PROMPTS, True)]
    for top_t in (1, 3, 5, 10, 20):
        for prompts, definitions in settings:
            enc = conse.ConseEncoder(get_encoder("minilm"), cnn, top_t=top_t, prompts=prompts, definitions=definitions)
            prompt = " / ".join(prompts) + (" + name: definition" if definitions else "")
            images = enc.combine(logits)
            images /= np.linalg.norm(images, axis=1, keepdims=True)
            sims = enc.encode(list(QUERIES)) @ images.T
            ranks = [[names[j] for j in np.argsort(-row)].index(target) + 1
                     for row, target in zip(sims, QUERIES.values())]
            top1, mrr = float(np.mean([r == 1 for r in ranks])), float(np.mean([1 / r for r in ranks]))
            mark = "  <- default" if (top_t, prompts, definitions) == default else ""
            print(f"T={top_t:2d} prompts={prompt!r:20} top-1 {top1:.3f}  MRR {mrr:.3f}  ranks {ranks}{mark}")
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            with open(RESULTS, "a") as f:
                f.write(json.dumps({"bench": "conse", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "top_t": top_t,
                                    "prompt": prompt, "top1": round(top1, 4), "mrr": round(mrr, 4),
                                    "ranks": ranks, "queries": len(QUERIES), "photos": len(names)}) + "\n")


if __name__ == "__main__":
    main()
