"""Image ingest speed: images/s of `latent add` (read, hash, decode, preprocess in worker
threads, model, SQLite, FAISS) against the bare model forward pass on the same
preprocessed batches. Target: ratio >= 0.85. Prints the figures and appends a JSON line
to benchmarks/results/ingest_images.jsonl.

    python benchmarks/bench_ingest_images.py [--images 256] [--repeat 3] [--encoder efficientnet]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).parent / "results" / "ingest_images.jsonl"
SOURCES = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "hubble_deep_field",
           "immunohistochemistry", "retina", "clock")


def make_photos(directory: Path, count: int) -> list[Path]:
    """Distinct JPEGs (random crops, scales and flips of the bundled photos), 300-900 px."""
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(0)
    bases = [Image.fromarray(np.asarray(getattr(skimage.data, n)())).convert("RGB") for n in SOURCES]
    paths = []
    for i in range(count):
        img = bases[i % len(bases)]
        w, h = img.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = img.crop((x, y, x + cw, y + ch))
        scale = rng.uniform(300, 900) / max(crop.size)
        crop = crop.resize((max(32, int(crop.width * scale)), max(32, int(crop.height * scale))))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        path = directory / f"photo-{i:05d}.jpg"
        crop.save(path, quality=90)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--encoder", default="efficientnet")
    args = parser.parse_args()

    import torch

    from latent.indexer import Index, read_inputs
    from latent.indexer.encoders import get_encoder
    from latent.indexer.images import decode_image

    work = Path(tempfile.mkdtemp(prefix="latent-bench-images-"))
    try:
        (work / "photos").mkdir()
        paths = make_photos(work / "photos", args.images)
        encoder = get_encoder(args.encoder)
        print(f"python {platform.python_version()}, torch {torch.__version__}, torch threads "
              f"{torch.get_num_threads()}, {os.cpu_count()} cpus; {len(paths)} images, batch {args.batch_size}, "
              f"encoder {encoder.name}, repeat {args.repeat}")
        batch = np.stack([encoder.preprocess(decode_image(p.read_bytes())[0]) for p in paths])
        encoder.encode_preprocessed(batch[: args.batch_size])  # warm up

        def bare() -> float:
            started = time.perf_counter()
            for i in range(0, len(batch), args.batch_size):
                encoder.encode_preprocessed(batch[i:i + args.batch_size])
            return len(batch) / (time.perf_counter() - started)

        def latent_add(run: int) -> float:
            directory = work / f"index-{run}"
            index = Index.create(directory, encoder=args.encoder)
            started = time.perf_counter()
            report = index.add(read_inputs([str(work / "photos")]), batch_size=args.batch_size)
            elapsed = time.perf_counter() - started
            if report.added != len(paths) or report.skipped or index.count() != len(paths):
                raise SystemExit(f"check failed: added {report.added}, skipped {report.skipped}")
            index.close()
            shutil.rmtree(directory)
            return len(paths) / elapsed

        model, ingest = [], []
        for run in range(args.repeat):  # interleaved, so drift hits both alike
            model.append(bare())
            ingest.append(latent_add(run))
        ratio = statistics.median(ingest) / statistics.median(model)
        result = {
            "bench": "ingest_images", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "cpus": os.cpu_count(),
            "encoder": encoder.name, "images": len(paths), "batch_size": args.batch_size,
            "model_images_per_s": [round(x, 2) for x in model], "add_images_per_s": [round(x, 2) for x in ingest],
            "model_median": round(statistics.median(model), 2), "add_median": round(statistics.median(ingest), 2),
            "ratio": round(ratio, 3), "target_ratio": 0.85,
        }
        print(f"bare model: {result['model_median']} images/s (runs {result['model_images_per_s']})")
        print(f"latent add: {result['add_median']} images/s (runs {result['add_images_per_s']})")
        print(f"ratio add/model: {ratio:.3f} (target >= 0.85)")
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with open(RESULTS, "a") as f:
            f.write(json.dumps(result) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
