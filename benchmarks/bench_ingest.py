"""Ingest throughput: `latent add` (the real CLI, run as a whole subprocess) against the bare
encoder on the same inputs, for texts and for images.

- Texts, encoder minilm (all-MiniLM-L6-v2, 384-d): N distinct lines, each two or three real
  sentences of indexer/data/sentences.jsonl chosen with a seeded RNG, in a .txt file (one item
  a line). Bare encoder: `get_encoder("minilm").encode(batch)` on batches of the size `latent
  add` uses (the encoder's default_batch_size unless --text-batch-size), model loaded, one
  warm-up batch, only the encode calls timed.
- Images, encoder efficientnet: distinct JPEG photos from `make_photos` of
  bench_ingest_images.py. Bare model as bench_ingest_images.py defines it: the forward pass
  (`encode_preprocessed`) on batches preprocessed beforehand; the ratio uses this one. Also
  shown: `encode_images` on decoded PIL images (preprocessing on the calling thread, decoding
  not timed).

The bare figures come from a child process running this script with --bare-worker (the model
in-process there), so each has its own peak memory. `latent add -v --json` runs after an untimed
`latent create`, in a fresh index directory each time; figures per run:
- whole-process items/s: items / (start of the process to its exit): Python start, imports,
  model load, reading, encoding, SQLite, FAISS, the final save;
- steady-state items/s: items committed after the first "committed generation G: N items"
  line / time from the first such line to the last (lines timestamped as they arrive);
- peak RSS (/usr/bin/time -v where present, and VmHWM) and peak anonymous memory (RssAnon,
  polled every 50 ms from /proc).
Each runtime of the bundled networks (--runtimes, default torch then onnx) is measured on the
same inputs in one run: the bare worker runs with LATENT_RUNTIME set, and the index is created
with `latent create --runtime`. (The onnx export is made, if it is not cached yet, by the
bare worker before anything is timed.)

Measurements are interleaved (bare, then latent add, per kind, runtime and repeat) and reported
as median (min-max). Targets: steady-state latent add / bare >= 0.9 for texts, >= 0.85 for
images; onnx / torch latent add items/s >= 2 for texts with peak RSS <= 700 MB, >= 1.5 for
images. Results are appended to benchmarks/results/ingest.jsonl (not with --quick).

    python benchmarks/bench_ingest.py [--texts 8000] [--images 256] [--repeat 3] [--only {text,images}]
                                      [--runtimes torch onnx] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

from bench_data import append_result, environment, peak_rss_mib  # noqa: E402

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

SENTENCES = ROOT / "indexer" / "data" / "sentences.jsonl"
TARGETS = {"text": 0.9, "images": 0.85}
SPEEDUP_TARGETS = {"text": 2.0, "images": 1.5}  # onnx / torch, latent add items/s
RSS_TARGET_MB = {"text": 700}  # peak RSS of latent add on onnx
ENCODERS = {"text": "minilm", "images": "efficientnet"}
COMMITTED = re.compile(r"committed generation (\d+): (\d+) items")
RESULT_TAG = "BENCH_INGEST_RESULT "
TIME = Path("/usr/bin/time")


# -- inputs -------------------------------------------------------------------------------------------
def make_texts(path: Path, count: int, seed: int = 0) -> list[str]:
    """`count` distinct lines, each two or three distinct sentences of sentences.jsonl, one a line."""
    import numpy as np

    sentences = [json.loads(line)["text"].strip() for line in SENTENCES.read_text().splitlines() if line.strip()]
    rng = np.random.default_rng(seed)
    lines: list[str] = []
    seen: set[str] = set()
    while len(lines) < count:
        picked = rng.choice(len(sentences), size=int(rng.integers(2, 4)), replace=False)
        line = " ".join(sentences[i] for i in picked)
        if line not in seen:
            seen.add(line)
            lines.append(line)
    path.write_text("\n".join(lines) + "\n")
    return lines


def make_images(directory: Path, count: int) -> list[Path]:
    from bench_ingest_images import make_photos

    directory.mkdir(parents=True, exist_ok=True)
    return make_photos(directory, count)


# -- the bare encoder (child process: --bare-worker) --------------------------------------------------
def threads() -> int:
    """The intra-op threads of the runtime in use (torch is imported only when it runs the model)."""
    if os.environ.get("LATENT_RUNTIME") == "torch":
        import torch

        return torch.get_num_threads()
    from latent.indexer.encoders.runtime import threads as onnx_threads

    return onnx_threads()


def bare_text(work: Path, batch_size: int | None) -> dict:
    from latent.indexer.encoders import get_encoder

    lines = [t.strip() for t in (work / "texts.txt").read_text().splitlines() if t.strip()]
    started = time.perf_counter()
    encoder = get_encoder(ENCODERS["text"])
    load_s = time.perf_counter() - started
    bs = int(batch_size or encoder.default_batch_size)
    encoder.encode(lines[:bs])  # warm-up
    elapsed = 0.0
    for i in range(0, len(lines), bs):
        chunk = lines[i:i + bs]
        t0 = time.perf_counter()
        encoder.encode(chunk)
        elapsed += time.perf_counter() - t0
    return {"items": len(lines), "batch_size": bs, "items_per_s": len(lines) / elapsed, "load_s": load_s,
            "peak_rss_mib": peak_rss_mib(), "threads": threads()}


def bare_images(work: Path, batch_size: int | None) -> dict:
    import numpy as np

    from latent.indexer.encoders import get_encoder
    from latent.indexer.images import decode_image

    paths = sorted((work / "photos").glob("*.jpg"))
    started = time.perf_counter()
    encoder = get_encoder(ENCODERS["images"])
    load_s = time.perf_counter() - started
    bs = int(batch_size or encoder.default_batch_size)
    # the bare model of bench_ingest_images.py: the forward pass on batches preprocessed beforehand
    batch = np.stack([encoder.preprocess(decode_image(p.read_bytes())[0]) for p in paths])
    encoder.encode_preprocessed(batch[:bs])  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(batch), bs):
        encoder.encode_preprocessed(batch[i:i + bs])
    forward = len(batch) / (time.perf_counter() - t0)
    peak_forward = peak_rss_mib()
    del batch
    # encode_images on decoded PIL images: preprocessing (on this thread) and the forward pass timed
    elapsed = 0.0
    for i in range(0, len(paths), bs):
        images = [decode_image(p.read_bytes())[0] for p in paths[i:i + bs]]  # decoding not timed
        t0 = time.perf_counter()
        encoder.encode_images(images)
        elapsed += time.perf_counter() - t0
    # the same files to vectors, as a user of the bare encoder would write it: read, decode,
    # preprocess and forward in one loop on this thread, all timed
    t0 = time.perf_counter()
    for i in range(0, len(paths), bs):
        encoder.encode_preprocessed(np.stack([encoder.preprocess(decode_image(p.read_bytes())[0])
                                              for p in paths[i:i + bs]]))
    files = len(paths) / (time.perf_counter() - t0)
    return {"items": len(paths), "batch_size": bs, "items_per_s": forward, "files_per_s": files,
            "encode_images_per_s": len(paths) / elapsed, "load_s": load_s,
            "peak_rss_mib": peak_forward, "peak_rss_mib_after_encode_images": peak_rss_mib(),
            "threads": threads()}


def run_bare(kind: str, work: Path, batch_size: int | None, runtime: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--bare-worker", kind, "--work", str(work)]
    if batch_size:
        cmd += ["--batch-size", str(batch_size)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "LATENT_RUNTIME": runtime},
                          cwd=ROOT)
    found = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not found:
        raise SystemExit(f"bare {kind} worker failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n"
                         f"{proc.stderr[-4000:]}")
    return json.loads(found[-1][len(RESULT_TAG):])


# -- latent add (a whole subprocess) ---------------------------------------------------------------------
def latent_command() -> list[str]:
    beside = Path(sys.executable).with_name("latent")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("latent")
    return [found] if found else [sys.executable, str(ROOT / "cli.py")]


def _status_kib(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name in ("VmHWM", "VmRSS", "RssAnon"):
                    out[name] = int(value.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return out


def _child_of(pid: int) -> int | None:
    """The first child of `pid` (the Python under /usr/bin/time), or None."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return int(children[0]) if children else None
    except OSError:
        pass
    for entry in Path("/proc").iterdir():  # without CONFIG_PROC_CHILDREN
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    return int(entry.name)
            except (OSError, ValueError, IndexError):
                continue
    return None


class MemoryPoller(threading.Thread):
    """Peak VmHWM and RssAnon (KiB) of a process (or of its first child), polled every 50 ms until it exits."""

    def __init__(self, proc: subprocess.Popen, wrapped: bool):
        super().__init__(daemon=True)
        self.proc, self.wrapped = proc, wrapped
        self.hwm_kib = self.anon_kib = 0

    def run(self) -> None:
        target = None if self.wrapped else self.proc.pid
        while self.proc.poll() is None:
            if target is None:
                target = _child_of(self.proc.pid)
            if target is not None:
                status = _status_kib(target)
                self.hwm_kib = max(self.hwm_kib, status.get("VmHWM", 0), status.get("VmRSS", 0))
                self.anon_kib = max(self.anon_kib, status.get("RssAnon", 0))
            time.sleep(0.05)


def run_latent_add(kind: str, work: Path, run: int, inputs: list[str], expected: int,
                   batch_size: int | None, runtime: str) -> dict:
    latent, env = latent_command(), os.environ.copy()
    directory = work / f"index-{kind}-{runtime}-{run}"
    created = subprocess.run([*latent, "create", str(directory), "--encoder", ENCODERS[kind], "--runtime", runtime],
                             capture_output=True, text=True, env=env, cwd=work)
    if created.returncode != 0:
        raise SystemExit(f"latent create failed: {created.stdout}{created.stderr}")
    cmd = [*latent, "add", str(directory), *inputs, "-v", "--json"]
    if batch_size:
        cmd += ["--batch-size", str(batch_size)]
    time_file = work / f"time-{kind}-{runtime}-{run}.txt"
    wrapped = TIME.exists()
    if wrapped:
        cmd = [str(TIME), "-v", "-o", str(time_file), *cmd]
    commits: list[tuple[float, int]] = []
    stderr_lines: list[str] = []

    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
                            env=env, cwd=work)

    def read_stderr() -> None:
        for line in proc.stderr:
            now = time.perf_counter()
            stderr_lines.append(line.rstrip("\n"))
            m = COMMITTED.search(line)
            if m:
                commits.append((now - started, int(m[2])))

    reader, poller = threading.Thread(target=read_stderr, daemon=True), MemoryPoller(proc, wrapped)
    reader.start()
    poller.start()
    stdout = proc.stdout.read()
    proc.wait()
    elapsed = time.perf_counter() - started
    reader.join()
    poller.join()
    if proc.returncode != 0:
        raise SystemExit(f"latent add failed ({proc.returncode}): {' '.join(cmd)}\n{stdout[-2000:]}\n"
                         + "\n".join(stderr_lines[-40:]))
    report = json.loads(stdout)
    if report["added"] != expected or report["skipped"] or report["count"] != expected:
        raise SystemExit(f"check failed: expected {expected} items, latent add reported {report}")
    if sum(n for _, n in commits) != expected:
        raise SystemExit(f"check failed: committed lines sum to {sum(n for _, n in commits)}, expected {expected}")
    peak_kib = poller.hwm_kib
    if wrapped and time_file.exists():
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_file.read_text())
        if m:
            peak_kib = max(peak_kib, int(m[1]))
    steady = None
    if len(commits) >= 2 and commits[-1][0] > commits[0][0]:
        steady = sum(n for _, n in commits[1:]) / (commits[-1][0] - commits[0][0])
    shutil.rmtree(directory, ignore_errors=True)
    return {"whole_items_per_s": expected / elapsed, "seconds": elapsed, "steady_items_per_s": steady,
            "first_commit_s": commits[0][0], "last_commit_s": commits[-1][0], "batches": len(commits),
            "cli_seconds": report.get("seconds"), "peak_rss_mib": peak_kib / 1024,
            "peak_anon_mib": poller.anon_kib / 1024}


# -- summary -------------------------------------------------------------------------------------------
def spread(values: list) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
            "max": round(max(values), 2), "runs": [round(v, 2) for v in values]}


def show(s: dict | None, digits: int = 1) -> str:
    if s is None:
        return "n/a"
    if s["min"] == s["max"]:
        return f"{s['median']:.{digits}f}"
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def summarise(kind: str, runtime: str, bare: list[dict], adds: list[dict]) -> dict:
    out = {
        "kind": kind, "runtime": runtime,
        "encoder": ENCODERS[kind], "items": bare[0]["items"], "batch_size": bare[0]["batch_size"],
        "threads": bare[0]["threads"], "bare_items_per_s": spread([b["items_per_s"] for b in bare]),
        "bare_peak_rss_mib": spread([b["peak_rss_mib"] for b in bare]),
        "add_steady_items_per_s": spread([a["steady_items_per_s"] for a in adds]),
        "add_whole_items_per_s": spread([a["whole_items_per_s"] for a in adds]),
        "add_first_commit_s": spread([a["first_commit_s"] for a in adds]),
        "add_batches": adds[0]["batches"], "add_peak_rss_mib": spread([a["peak_rss_mib"] for a in adds]),
        "add_peak_anon_mib": spread([a["peak_anon_mib"] for a in adds]), "target": TARGETS[kind],
        "bare_runs": bare, "add_runs": adds,
    }
    if kind == "images":
        out["bare_definition"] = "encode_preprocessed (forward pass on preprocessed batches)"
        out["bare_encode_images_per_s"] = spread([b["encode_images_per_s"] for b in bare])
        out["bare_files_per_s"] = spread([b["files_per_s"] for b in bare])
        out["bare_peak_rss_mib_after_encode_images"] = spread([b["peak_rss_mib_after_encode_images"] for b in bare])
    bare_median = out["bare_items_per_s"]["median"]
    steady = out["add_steady_items_per_s"]
    out["ratio"] = round(steady["median"] / bare_median, 3) if steady else None
    out["whole_ratio"] = round(out["add_whole_items_per_s"]["median"] / bare_median, 3)
    out["met"] = None if out["ratio"] is None else out["ratio"] >= TARGETS[kind]
    return out


def compare(results: dict) -> dict:
    """onnx against torch per kind: latent add items/s (steady and whole process) and peak RSS."""
    out = {}
    for kind in SPEEDUP_TARGETS:
        torch, onnx = results.get(f"{kind}/torch"), results.get(f"{kind}/onnx")
        if not torch or not onnx:
            continue
        def ratio(field: str) -> float | None:
            a, b = onnx[field], torch[field]
            return round(a["median"] / b["median"], 3) if a and b else None
        rss = onnx["add_peak_rss_mib"]["median"] * 1.048576  # MiB to MB
        out[kind] = {"steady_speedup": ratio("add_steady_items_per_s"), "whole_speedup": ratio("add_whole_items_per_s"),
                     "bare_speedup": ratio("bare_items_per_s"), "target": SPEEDUP_TARGETS[kind],
                     "torch_peak_rss_mb": round(torch["add_peak_rss_mib"]["median"] * 1.048576),
                     "onnx_peak_rss_mb": round(rss), "rss_target_mb": RSS_TARGET_MB.get(kind)}
        speed = out[kind]["steady_speedup"] or out[kind]["whole_speedup"]
        out[kind]["met"] = bool(speed and speed >= SPEEDUP_TARGETS[kind]
                                and (kind not in RSS_TARGET_MB or rss <= RSS_TARGET_MB[kind]))
    return out


def print_comparison(comparison: dict) -> None:
    for kind, c in comparison.items():
        rss = f", onnx peak RSS {c['onnx_peak_rss_mb']} MB (target <= {c['rss_target_mb']})" if c["rss_target_mb"] else ""
        print(f"{kind}: onnx / torch latent add steady {c['steady_speedup']}x, whole process {c['whole_speedup']}x, "
              f"bare encoder {c['bare_speedup']}x (target >= {c['target']}x){rss}; torch peak RSS "
              f"{c['torch_peak_rss_mb']} MB: {'MET' if c['met'] else 'NOT MET'}")


def print_table(results: dict) -> None:
    head = ("kind", "bare items/s", "latent add steady items/s", "ratio", "target", "whole-process items/s",
            "peak RSS / anon MiB")
    rows = []
    for kind, r in results.items():
        ratio = "n/a" if r["ratio"] is None else f"{r['ratio']:.3f}"
        verdict = "n/a" if r["met"] is None else ("MET" if r["met"] else "NOT MET")
        memory = f"{r['add_peak_rss_mib']['median']:.0f} / {r['add_peak_anon_mib']['median']:.0f}"
        rows.append((f"{r['kind']} ({r['runtime']})", show(r["bare_items_per_s"]), show(r["add_steady_items_per_s"]), ratio,
                     f">= {r['target']} {verdict}", show(r["add_whole_items_per_s"]), memory))
    widths = [max(len(str(row[i])) for row in [head, *rows]) for i in range(len(head))]
    line = lambda row: " | ".join(str(c).ljust(w) for c, w in zip(row, widths))  # noqa: E731
    print(line(head))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(line(row))
    print()
    for kind, r in results.items():
        print(f"{kind}: {r['items']} items, encoder {r['encoder']}, batch {r['batch_size']} "
              f"({r['add_batches']} committed batches), threads {r['threads']}")
        print(f"  whole-process ratio (latent add whole / bare): {r['whole_ratio']:.3f}; first commit after "
              f"{show(r['add_first_commit_s'], 2)} s (start, imports, model load, first batch)")
        print(f"  peak memory: latent add RSS {show(r['add_peak_rss_mib'], 0)} MiB, anon "
              f"{show(r['add_peak_anon_mib'], 0)} MiB; bare encoder process RSS {show(r['bare_peak_rss_mib'], 0)} MiB")
        if r["kind"] == "images":
            enc_images = r["bare_encode_images_per_s"]
            print(f"  bare = {r['bare_definition']} (the ratio uses this); encode_images on decoded PIL images: "
                  f"{show(enc_images)} items/s, steady latent add / that: "
                  + (f"{r['add_steady_items_per_s']['median'] / enc_images['median']:.3f}"
                     if r["add_steady_items_per_s"] else "n/a"))
            files = r["bare_files_per_s"]
            print(f"  bare encoder from the files (read, decode, preprocess, forward in one loop): {show(files)} "
                  "items/s, steady latent add / that: "
                  + (f"{r['add_steady_items_per_s']['median'] / files['median']:.3f}"
                     if r["add_steady_items_per_s"] else "n/a"))
            print("  (the bare process peak holds every preprocessed image at once, as bench_ingest_images.py does; "
                  f"after encode_images: {show(r['bare_peak_rss_mib_after_encode_images'], 0)} MiB)")
        if r["ratio"] is None:
            print("  steady state needs at least two committed batches: give more items or a smaller batch size")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, help="lines of text (default 8000; --quick 300)")
    parser.add_argument("--images", type=int, help="JPEG photos (default 256; --quick 24)")
    parser.add_argument("--repeat", type=int, help="runs of each measurement (default 3; --quick 1)")
    parser.add_argument("--only", choices=["text", "images"], help="measure one kind only")
    parser.add_argument("--runtimes", nargs="+", choices=["torch", "onnx"], default=["torch", "onnx"],
                        help="runtimes of the bundled networks to measure, side by side")
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run; no result is appended")
    parser.add_argument("--text-batch-size", type=int, help="default: the encoder's, as latent add")
    parser.add_argument("--image-batch-size", type=int, help="default: the encoder's, as latent add")
    parser.add_argument("--bare-worker", choices=["text", "images"], help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.bare_worker:
        result = (bare_text if args.bare_worker == "text" else bare_images)(args.work, args.batch_size)
        print(RESULT_TAG + json.dumps(result), flush=True)
        return

    args.texts = args.texts or (300 if args.quick else 8000)
    args.images = args.images or (24 if args.quick else 256)
    args.repeat = args.repeat or (1 if args.quick else 3)
    kinds = [args.only] if args.only else ["text", "images"]
    batch_sizes = {"text": args.text_batch_size, "images": args.image_batch_size}
    arguments = {k: v for k, v in vars(args).items() if k not in ("bare_worker", "work", "batch_size")}
    print(f"arguments: {json.dumps(arguments)}")
    env = environment()
    print(f"environment: {json.dumps(env)}")
    print(f"latent: {' '.join(latent_command())}; peak memory via "
          f"{'/usr/bin/time -v and ' if TIME.exists() else ''}/proc polling every 50 ms", flush=True)

    work = Path(tempfile.mkdtemp(prefix="latent-bench-ingest-"))
    try:
        inputs: dict[str, tuple[list[str], int]] = {}
        if "text" in kinds:
            lines = make_texts(work / "texts.txt", args.texts)
            inputs["text"] = ([str(work / "texts.txt")], len(lines))
        if "images" in kinds:
            photos = make_images(work / "photos", args.images)
            inputs["images"] = ([str(work / "photos")], len(photos))
        cases = [(kind, runtime) for kind in kinds for runtime in args.runtimes]
        bare: dict[tuple, list[dict]] = {c: [] for c in cases}
        adds: dict[tuple, list[dict]] = {c: [] for c in cases}
        for run in range(args.repeat):  # interleaved, so drift hits both alike
            for kind, runtime in cases:
                b = run_bare(kind, work, batch_sizes[kind], runtime)
                a = run_latent_add(kind, work, run, inputs[kind][0], inputs[kind][1], batch_sizes[kind], runtime)
                bare[kind, runtime].append(b)
                adds[kind, runtime].append(a)
                steady = "n/a" if a["steady_items_per_s"] is None else f"{a['steady_items_per_s']:.1f}"
                print(f"run {run + 1}/{args.repeat} {kind} ({runtime}): bare {b['items_per_s']:.1f} items/s; latent add steady "
                      f"{steady}, whole {a['whole_items_per_s']:.1f} items/s ({a['seconds']:.1f} s, "
                      f"{a['batches']} batches), peak RSS {a['peak_rss_mib']:.0f} MiB, anon {a['peak_anon_mib']:.0f}",
                      flush=True)
        results = {f"{kind}/{runtime}": summarise(kind, runtime, bare[kind, runtime], adds[kind, runtime])
                   for kind, runtime in cases}
        comparison = compare(results)
        print()
        print_table(results)
        print()
        print_comparison(comparison)
        if args.quick:
            print("\n--quick: nothing appended")
        else:
            path = append_result("ingest", {"bench": "ingest", "args": arguments,
                                            "environment": env, "results": results,
                                            "onnx_vs_torch": comparison})
            print(f"\nappended to {path}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
