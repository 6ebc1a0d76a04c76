"""The `latent` command line: parse, call the Python API (indexer/, search/), render.

Errors from the library are one line on stderr and exit code 1 (2 for usage errors);
--debug shows the traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sys
import time
from pathlib import Path

import click

from latent.indexer.errors import LatentError

MAX_CELL = 60


# -- output ---------------------------------------------------------------------------------------
def _cell(value, width: int = MAX_CELL) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def render_table(rows: list[dict], columns: list[str]) -> str:
    """An aligned text table; numbers right-aligned."""
    cells = [[_cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    numeric = [all(isinstance(r.get(c), (int, float)) for r in rows) for c in columns]

    def line(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(row) for row in cells])


def hits_table(hits) -> str:
    if not hits:
        return "(no hits)"
    rows = [{"rank": h.rank, "score": f"{h.score:.4f}", "key": h.key, "text": h.text or "",
             "metadata": h.metadata or "", "label": _label(h.metadata)} for h in hits]
    columns = ["rank", "score", "key"]
    if any(h.text and h.text != h.key for h in hits):
        columns.append("text")
    if all(h.kind == "image" for h in hits):  # image metadata is long: show what the CNN saw
        columns.append("label")
    elif any(h.metadata for h in hits):
        columns.append("metadata")
    return render_table(rows, columns)


def _label(metadata: dict) -> str:
    labels = metadata.get("labels") if isinstance(metadata, dict) else None
    if not labels:
        return ""
    return ", ".join(f"{x['label']} {x['p']:.2f}" for x in labels[:3])


def echo_hits(hits, as_json: bool, **extra) -> None:
    if as_json:
        click.echo(json.dumps({**extra, "hits": [
            {"rank": h.rank, "key": h.key, "score": round(h.score, 6), "metadata": h.metadata, "text": h.text,
             "kind": h.kind}
            for h in hits]}, ensure_ascii=False, indent=2))
    else:
        click.echo(hits_table(hits))


class Progress:
    """tqdm bars on stderr, one per stage; silent when stdout is not a terminal or with --quiet."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bars: dict = {}

    def __call__(self, stage: str, n: int, total: int | None) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        bar = self.bars.get(stage)
        if bar is None:
            # shutil falls back to 80x24 where a terminal reports 0x0 (tqdm would then draw nothing)
            size = shutil.get_terminal_size()
            bar = self.bars[stage] = tqdm(total=total, desc=stage, unit=" items", file=sys.stderr,
                                          ncols=size.columns, nrows=size.lines, leave=False)
        elif n == 0 and total is not None:
            bar.reset(total=total)
        if n:
            bar.update(n)

    def write(self, line: str) -> None:
        """A line on stderr (flushed at once) that does not break the bars."""
        if self.bars:
            from tqdm import tqdm

            tqdm.write(line, file=sys.stderr)
        else:
            click.echo(line, err=True)
        sys.stderr.flush()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


def _progress(ctx: click.Context) -> Progress:
    quiet = ctx.find_root().params.get("quiet", False)
    return Progress(enabled=not quiet and sys.stdout.isatty())


# -- shared options ---------------------------------------------------------------------------------
def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")(f)


def k_option(f):
    return click.option("-k", "k", default=10, show_default=True, type=click.IntRange(1, 10_000),
                        help="Number of neighbours.")(f)


def where_option(f):
    return click.option("--where", metavar="EXPR",
                        help="Metadata filter applied before ranking, e.g. \"lang=en and year>=2000\".")(f)


def index_dir(f):
    return click.argument("directory", type=click.Path(file_okay=False, path_type=Path))(f)


def _open(ctx: click.Context, directory: Path):
    """An index directory, or a built-in index (@words, @sentences, @photos), built on first use."""
    from latent.indexer.builtin import open_index

    progress = _progress(ctx)
    try:
        return open_index(directory, progress=progress)
    finally:
        progress.close()


class LatentGroup(click.Group):
    """Turns library errors into one line on stderr and exit code 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except LatentError as e:
            if ctx.params.get("debug"):
                raise
            click.echo(f"Error: {e}", err=True)
            ctx.exit(1)
        except sqlite3.DatabaseError as e:  # damage found by a query after the store opened
            if ctx.params.get("debug"):
                raise
            click.echo(f"Error: latent.db is damaged or unreadable ({e}); it is the source of truth: restore it "
                       "from a backup (`latent check` reports what it can)", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("Interrupted; every batch reported as committed is kept.", err=True)
            ctx.exit(130)
        except BrokenPipeError:  # `latent ... | head`: the reader left; say nothing more
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(0)
        except Exception as e:  # a bug: say so briefly, traceback on --debug
            if ctx.params.get("debug"):
                raise
            click.echo(f"Error: unexpected {type(e).__name__}: {e} (run with --debug for the traceback)", err=True)
            ctx.exit(1)


@click.group(cls=LatentGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="latent-search")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option("--debug", is_flag=True, help="Show tracebacks of errors.")
def cli(quiet: bool, debug: bool):
    """latent: search and explore the latent spaces of words, sentences and images.

    Indexes are directories holding a SQLite store (items, metadata, vectors) and a
    FAISS index derived from it. Encoders: minilm (sentences, default), glove (words),
    efficientnet and conse (images; conse also takes text), st:<sentence-transformers
    model or path>, clip:<arch>/<pretrained or file>; `latent encoders` lists them.

    \b
    Example:
        latent create notes --encoder minilm
        latent add notes notes.jsonl --key-field id
        latent search notes "how do vaccines work" -k 5
    """


# -- commands -----------------------------------------------------------------------------------------
@cli.command()
@index_dir
@click.option("--encoder", "-e", default="minilm", show_default=True,
              help="minilm, glove, efficientnet, conse, st:<name or path>, clip:<arch>/<pretrained>, or "
                   "vectors:<dim> for vectors made elsewhere (`latent encoders` lists them).")
@click.option("--index", "index_type", default="auto", show_default=True, metavar="TYPE",
              help="flat, hnsw, ivf, ivfpq, auto (exact up to 2^25 floats, e.g. 87k 384-d items; HNSW32 up to "
                   "2^30; IVF-PQ re-ranked beyond), or a FAISS factory string.")
@click.option("--target-recall", type=click.FloatRange(0, 1, min_open=True), metavar="R",
              help="Tune search parameters to reach recall@10 >= R on held-out items whenever the index is "
                   "built as an approximate type, and again each time it doubles.")
def create(directory: Path, encoder: str, index_type: str, target_recall: float | None):
    """Create an empty index in DIRECTORY.

    \b
    Example:
        latent create words --encoder glove --index hnsw
        latent create big --index auto --target-recall 0.95
    """
    from latent.indexer import Index

    with Index.create(directory, encoder=encoder, index_type=index_type, target_recall=target_recall) as index:
        info = index.info()
    target = f", tuned to recall@10 >= {target_recall}" if target_recall else ""
    click.echo(f"Created {directory}: encoder {info['encoder']} ({info['dim']}-d), index {info['index_type']}{target}")


@cli.command()
@index_dir
@click.argument("inputs", nargs=-1, required=True)
@click.option("--format", "fmt", type=click.Choice(["lines", "words", "csv", "jsonl", "images"]),
              help="Input format (default: folders and image files are images; .csv, .jsonl/.ndjson; "
                   "else lines).")
@click.option("--text-field", default="text", show_default=True, help="CSV/JSONL field holding the text.")
@click.option("--key-field", help="CSV/JSONL field holding the item key (default: a hash of the text).")
@click.option("--batch-size", type=click.IntRange(1, 1_000_000), help="Items per batch and transaction.")
@click.option("--encoder", "-e", help="Refuse unless the index uses this encoder.")
@click.option("--verbose", "-v", is_flag=True,
              help="Print a line on stderr as each batch is committed (durable: kept whatever happens next).")
@json_option
@click.pass_context
def add(ctx, directory: Path, inputs, fmt, text_field, key_field, batch_size, encoder, verbose, as_json):
    """Add the items of INPUTS (files, folders of images, or - for stdin) to DIRECTORY.

    Existing keys are replaced (upsert); unchanged items are not re-encoded. Bad lines and
    bad image files are skipped and reported; everything else is added. Image keys are the
    paths relative to the folder given; the same image content is stored once.

    \b
    Example:
        latent add notes notes.csv --text-field body --key-field id
        latent add photos ~/Pictures/holiday --format images
    """
    from latent.indexer import Index, read_inputs
    from latent.indexer.readers import check_inputs

    check_inputs(inputs, fmt)
    progress = _progress(ctx)
    started = time.perf_counter()
    with Index.open(directory) as index:
        try:
            def committed(generation: int, n: int) -> None:
                progress.write(f"committed generation {generation}: {n} items")

            report = index.add(read_inputs(inputs, fmt=fmt, text_field=text_field, key_field=key_field),
                               batch_size=batch_size, encoder=encoder, progress=progress,
                               on_commit=committed if verbose else None)
        finally:
            progress.close()
        count = index.count()
    elapsed = time.perf_counter() - started
    if as_json:
        click.echo(json.dumps({**report.as_dict(), "count": count, "seconds": round(elapsed, 3)}, indent=2))
        return
    click.echo(f"Added {report.added}, replaced {report.replaced}, metadata updated {report.metadata_updated}, "
               f"unchanged {report.unchanged}, skipped {len(report.skipped)} "
               f"({len(report.committed)} batches committed in {elapsed:.1f}s); {count} items in {directory}")
    if report.skipped:
        click.echo(f"Skipped {len(report.skipped)} input(s):", err=True)
        for s in report.skipped[:50]:
            where = f"{s.source}:{s.line}" if s.line else s.source
            click.echo(f"  {where}: {s.reason}", err=True)
        if len(report.skipped) > 50:
            click.echo(f"  ... and {len(report.skipped) - 50} more (all are kept in the index's skipped table)",
                       err=True)


@cli.command("search")
@index_dir
@click.argument("query", required=False)
@click.option("--expr", metavar="EXPR",
              help="A vector expression instead of QUERY: keys, quoted texts and image files with + - and "
                   "weights, e.g. 'king - man + woman' or '0.5*\"a red car\" + photo.jpg'.")
@click.option("--include-terms", is_flag=True, help="With --expr: keep the keys it names among the hits.")
@k_option
@where_option
@json_option
@click.pass_context
def search_cmd(ctx, directory: Path, query: str | None, expr: str | None, include_terms: bool, k: int,
               where: str | None, as_json: bool):
    """Search DIRECTORY for the items nearest to QUERY (encoded by the index's encoder), or
    to a vector expression (--expr). DIRECTORY may be a built-in index: @words, @sentences, @photos.

    \b
    Example:
        latent search notes "a dog on the beach" -k 5 --where "topic=animals"
        latent search @words --expr "king - man + woman" -k 3
    """
    from latent.search import search
    from latent.search.explore import search_expression

    if (query is None) == (expr is None):
        raise click.UsageError("give a QUERY or --expr, not both")
    with _open(ctx, directory) as index:
        if expr is not None:
            hits = search_expression(index, expr, k=k, where=where, include_terms=include_terms)
        else:
            hits = search(index, query, k=k, where=where)
    echo_hits(hits, as_json, **({"query": query} if query is not None else {"expr": expr}))


@cli.command()
@index_dir
@click.option("--key", help="Key of an item in the index (excluded from its own results).")
@click.option("--vector", "vector_file", type=click.Path(exists=True, dir_okay=False),
              help="A .npy file holding one vector of the index's dimension.")
@click.option("--image", "image_file", type=click.Path(exists=True, dir_okay=False),
              help="An image file (need not be in the index), for image encoders.")
@k_option
@where_option
@json_option
def similar(directory: Path, key: str | None, vector_file: str | None, image_file: str | None, k: int,
            where: str | None, as_json: bool):
    """Items of DIRECTORY nearest to a stored item (--key), a vector (--vector) or an image (--image).

    \b
    Example:
        latent similar notes --key s0202 -k 5
        latent similar photos --image cat.jpg --where "label=tabby"
    """
    import numpy as np

    from latent.search import similar as find_similar

    if sum(x is not None for x in (key, vector_file, image_file)) != 1:
        raise click.UsageError("give exactly one of --key, --vector or --image")
    vector = None
    if vector_file:
        try:
            vector = np.load(vector_file, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise LatentError(f"cannot read {vector_file} as a .npy array ({e})") from e
    with _open(click.get_current_context(), directory) as index:
        hits = find_similar(index, key=key, vector=vector, image=image_file, k=k, where=where)
    echo_hits(hits, as_json)


@cli.command()
@index_dir
@click.argument("keys", nargs=-1, required=True)
def delete(directory: Path, keys):
    """Delete items by key from DIRECTORY.

    \b
    Example:
        latent delete notes s0001 s0002
    """
    from latent.indexer import Index

    with Index.open(directory) as index:
        deleted, missing = index.delete(list(keys))
        count = index.count()
    click.echo(f"Deleted {deleted}; {count} items left in {directory}")
    if missing:
        click.echo(f"Not found: {', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}", err=True)


@cli.command()
@index_dir
@json_option
def info(directory: Path, as_json: bool):
    """Count, encoder, dimension, metric, index type, size on disk and generation of DIRECTORY.

    \b
    Example:
        latent info notes --json
    """
    with _open(click.get_current_context(), directory) as index:
        facts = index.info()
    if as_json:
        click.echo(json.dumps(facts, indent=2))
        return
    width = max(len(k) for k in facts)
    for key, value in facts.items():
        click.echo(f"{key.ljust(width)}  {_cell(value, 200)}")


@cli.command()
@index_dir
@json_option
def check(directory: Path, as_json: bool):
    """Check DIRECTORY: SQLite integrity, damaged rows, the vectors file's checksum and
    generation, FAISS ids == item ids. Changes nothing.

    Exits 1 when a problem is found, naming it and what repairs it. A vectors file that is
    only behind the store (a crash before its save) is a note: opening catches it up.

    \b
    Example:
        latent check notes
    """
    from latent.indexer import Index

    with Index.open(directory) as index:
        report = index.check()
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        for note in report["notes"]:
            click.echo(f"Note: {note}", err=True)
        for problem in report["problems"]:
            click.echo(f"Problem: {problem}", err=True)
        if report["ok"]:
            click.echo(f"OK: {report['count']} items, generation {report['generation']}, "
                       f"SQLite {report['sqlite_integrity']}, vector index in step with the store")
    if not report["ok"]:
        sys.exit(1)


@cli.command()
@index_dir
@click.pass_context
def rebuild(ctx, directory: Path):
    """Repair DIRECTORY from its store (SQLite, the source of truth): re-encode damaged
    vectors from their text, keep unreadable metadata as text, and rebuild the FAISS index.

    \b
    Example:
        latent rebuild notes
    """
    from latent.indexer import Index

    progress = _progress(ctx)
    started = time.perf_counter()
    with Index.open(directory) as index:
        try:
            repaired = index.rebuild(progress=progress)
        finally:
            progress.close()
        facts = index.info()
    for line in repaired:
        click.echo(f"Repaired: {line}")
    click.echo(f"Rebuilt {directory}: {facts['count']} items, {facts['faiss_factory']}, "
               f"generation {facts['generation']} in {time.perf_counter() - started:.1f}s")


@cli.command()
@index_dir
@click.option("--target-recall", type=click.FloatRange(0, 1, min_open=True), metavar="R",
              help="Recall@10 to reach (kept for re-tuning as the index grows). [default: the index's own]")
@json_option
@click.pass_context
def tune(ctx, directory: Path, target_recall: float | None, as_json: bool):
    """Tune the search parameters of DIRECTORY to a recall target, measured on held-out items.

    The vector index is rebuilt without a random sample of 1,000 items (a tenth of a small
    index), whose exact neighbours are found meanwhile; the cheapest efSearch (HNSW), nprobe
    (IVF) or nprobe and re-ranking depth (IVF-PQ) reaching the target is kept in the manifest,
    and the sample is added back. The index is re-tuned each time it has doubled.

    \b
    Example:
        latent tune notes --target-recall 0.95
    """
    from latent.indexer import Index

    progress = _progress(ctx)
    with Index.open(directory) as index:
        try:
            record = index.tune(target_recall, progress=progress)
        finally:
            progress.close()
    if as_json:
        click.echo(json.dumps(record, indent=2))
        return
    if record.get("note"):
        click.echo(f"{directory}: {record['note']} (target {record['target_recall']} kept)")
        return
    params = ", ".join(f"{k} {v}" for k, v in record["params"].items())
    verdict = "reached" if record["reached"] else "NOT reached: these are the most thorough settings tried"
    click.echo(f"Tuned {directory} ({record['factory']}, {record['count']:,} items): {params}; recall@{record['k']} "
               f"{record['recall']:.3f} on {record['queries']:,} held-out items, goal {record['goal']:.3f} "
               f"for target {record['target_recall']} ({verdict}); {record['seconds']:.1f}s of measuring")


@cli.command("map")
@index_dir
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="File to write: NAME.png, or NAME.html for the interactive page. "
                   "[default: map.png, or map.html with --html]")
@click.option("--method", type=click.Choice(["pca", "tsne", "umap"], case_sensitive=False), default="pca",
              show_default=True,
              help="pca: fast, linear, axes mean something; tsne: neighbourhoods and clusters (slower); "
                   "umap: like tsne, needs `pip install umap-learn`.")
@click.option("--color-by", "color_by", metavar="FIELD",
              help="Metadata field to colour by (a.b for nested fields): a legend for text values "
                   "(20 named, the rest 'other'), a colour scale for numbers.")
@click.option("--labels", type=click.IntRange(0, 500), default=20, show_default=True,
              help="PNG: how many spread-out points to label (their text or key; images get a thumbnail).")
@click.option("--sample", type=click.IntRange(3, 1_000_000), default=5000, show_default=True,
              help="Map at most this many items: a uniform random sample (see --seed) when more match.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sample and of t-SNE/UMAP.")
@click.option("--html", "as_html", is_flag=True,
              help="Write the interactive HTML page (pan, zoom, hover); same as giving -o NAME.html.")
@click.option("--title", help="Title of the picture (default: the index name and the method).")
@where_option
@json_option
@click.pass_context
def map_cmd(ctx, directory: Path, output: Path | None, method: str, color_by: str | None, labels: int, sample: int,
            seed: int, as_html: bool, title: str | None, where: str | None, as_json: bool):
    """Draw a 2-D map of the items of DIRECTORY (PCA, t-SNE or UMAP of their vectors).

    Writes a PNG (points coloured by --color-by, spread-out labels, thumbnails for
    images) or, with an .html output, one self-contained page that works offline:
    drag to pan, wheel to zoom, hover for an item, click the legend to single out a class.

    \b
    Example:
        latent map notes -o notes.png --method tsne --color-by topic
        latent map photos --html --method tsne --color-by label
        latent map @words -o words.png --sample 3000 --labels 40
    """
    from latent.search.map_html import render_html
    from latent.search.map_png import render_png
    from latent.search.maps import compute_map

    if output is None:
        output = Path("map.html" if as_html else "map.png")
    suffix = output.suffix.lower()
    if suffix not in (".png", ".html", ".htm"):
        raise click.UsageError(f"-o {output}: give a file name ending in .png, or .html for the interactive page")
    if as_html and suffix == ".png":
        raise click.UsageError(f"--html writes an HTML page; give -o a name ending in .html, not {output}")
    html_out = suffix in (".html", ".htm")
    started = time.perf_counter()
    with _open(ctx, directory) as index:
        the_map = compute_map(index, method=method.lower(), sample=sample, seed=seed, where=where)
    if html_out:
        rendered = render_html(the_map, output, color_by=color_by, title=title)
    else:
        rendered = render_png(the_map, output, color_by=color_by, labels=labels, title=title)
    elapsed = time.perf_counter() - started
    if as_json:
        click.echo(json.dumps({
            "path": str(rendered.path), "format": "html" if html_out else "png", "method": the_map.method,
            "points": rendered.points, "total": the_map.total, "seed": seed, "color_by": color_by,
            "legend": rendered.legend, "labels": rendered.labels, "thumbnails": rendered.thumbnails,
            "explained_variance": the_map.explained_variance, "bytes": rendered.bytes,
            "map_seconds": round(the_map.seconds, 3), "seconds": round(elapsed, 3)}, ensure_ascii=False, indent=2))
        return
    name = {"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}[the_map.method]
    shown = f"{rendered.points:,} items" if rendered.points == the_map.total else \
        f"{rendered.points:,} of {the_map.total:,} items (sample, seed {seed})"
    details = [f"coloured by {color_by}" if color_by else ""]
    if not html_out:
        details.append(f"{len(rendered.labels)} labels" + (f", {len(rendered.thumbnails)} thumbnails"
                                                            if rendered.thumbnails else ""))
    elif rendered.thumbnails:
        details.append(f"{len(rendered.thumbnails)} thumbnails")
    if the_map.explained_variance:
        details.append(f"PC1+PC2 explain {sum(the_map.explained_variance):.0%} of the variance")
    extra = "; ".join(d for d in details if d)
    click.echo(f"Wrote {output} ({rendered.bytes / 1024:,.0f} KiB): {name} map of {shown}"
               f"{'; ' + extra if extra else ''} in {elapsed:.1f}s")


@cli.command()
@click.argument("word")
@k_option
@json_option
@click.pass_context
def words(ctx, word: str, k: int, as_json: bool):
    """Nearest GloVe words to WORD (builds a cached word index on first use).

    \b
    Example:
        latent words toilet -k 5
    """
    from latent.search.words import neighbours

    progress = _progress(ctx)
    try:
        hits = neighbours(word, k=k, progress=progress)
    finally:
        progress.close()
    echo_hits(hits, as_json, word=word)


@cli.command()
@index_dir
@click.argument("a")
@click.argument("b")
@click.option("--steps", default=10, show_default=True, type=click.IntRange(2, 1000),
              help="Points on the path, both ends included.")
@click.option("--slerp/--lerp", "spherical", default=True, show_default=True,
              help="Walk on the great circle between the unit vectors, or on the straight line.")
@click.option("--exclude-endpoints", is_flag=True, help="Leave the two ends out of the path.")
@where_option
@json_option
@click.pass_context
def interpolate(ctx, directory: Path, a: str, b: str, steps: int, spherical: bool, exclude_endpoints: bool,
                where: str | None, as_json: bool):
    """Walk from A to B through DIRECTORY's latent space: the nearest item at each step.

    A and B are keys, texts (for text encoders) or image files. Between the ends, A and B
    themselves are skipped so the path shows what lies between them; repeats are folded.

    \b
    Example:
        latent interpolate @words france germany --steps 12
        latent interpolate photos cat.jpg dog.jpg --json
    """
    from latent.search.explore import interpolate as walk

    with _open(ctx, directory) as index:
        path = walk(index, a, b, steps=steps, method="slerp" if spherical else "lerp",
                    exclude_endpoints=exclude_endpoints, where=where)
    if as_json:
        click.echo(json.dumps({"a": a, "b": b, "steps": steps, "method": "slerp" if spherical else "lerp",
                               "path": [s.as_dict() for s in path]}, ensure_ascii=False, indent=2))
        return
    rows = [{"steps": f"{s.first}" if s.first == s.last else f"{s.first}-{s.last}", "t": f"{s.t:.2f}",
             "score": f"{s.score:.4f}", "key": s.key, "text": s.text or "", "label": _label(s.metadata)}
            for s in path]
    columns = ["steps", "t", "score", "key"]
    if any(s.text and s.text != s.key for s in path):
        columns.append("text")
    if any(s.kind == "image" for s in path):
        columns.append("label")
    click.echo(render_table(rows, columns) if rows else "(no items)")
    click.echo(" -> ".join(s.key for s in path))


@cli.command()
@click.argument("a")
@click.argument("b")
@click.argument("c")
@k_option
@click.option("--method", type=click.Choice(["add", "mul"]), default="add", show_default=True,
              help="3CosAdd or 3CosMul (Levy & Goldberg 2014).")
@click.option("--include-inputs", is_flag=True, help="Rank A, B and C too, where their scores put them.")
@click.option("--index", "directory", default="@words", show_default=True,
              help="The index to use: a directory or a built-in index.")
@json_option
@click.pass_context
def analogy(ctx, a: str, b: str, c: str, k: int, method: str, include_inputs: bool, directory: str,
            as_json: bool):
    """A is to B as C is to ?  (on the GloVe words by default)

    \b
    Example:
        latent analogy man king woman
        latent analogy paris france rome --method mul -k 3
    """
    from latent.search.explore import analogy as solve

    with _open(ctx, Path(directory)) as index:
        hits = solve(index, a, b, c, k=k, method=method, include_inputs=include_inputs)
    echo_hits(hits, as_json, analogy=[a, b, c], method=method)


@cli.command()
@click.option("-k", "k", default=5, show_default=True, type=click.IntRange(1, 50), help="Neighbours per query.")
@click.pass_context
def demo(ctx, k: int):
    """Nearest neighbours of a few words, sentences and photos on the bundled models (no network).

    The first run builds the cached indexes (all GloVe words, the demo sentences, the photos);
    later runs reuse them.

    \b
    Example:
        latent demo
    """
    from latent.indexer.paths import cache_dir
    from latent.search.demo import run_demo

    started = time.perf_counter()
    progress = _progress(ctx)
    try:
        results = run_demo(k=k, progress=progress)
    finally:
        progress.close()
    for title, hits in results:
        click.echo(f"\n{title}")
        click.echo(hits_table(hits))
    click.echo(f"\nDone in {time.perf_counter() - started:.1f}s (indexes cached in {cache_dir()})")


@cli.command()
def encoders():
    """List the encoders.

    \b
    Example:
        latent encoders
    """
    from latent.indexer import list_encoders

    for name, desc in list_encoders().items():
        click.echo(f"{name:<20} {desc}")


# -- generative latent spaces: `latent vae ...` and `latent gan ...` --------------------------------------
# Draft for cli.py: paste above `def main()`. Uses cli.py's own names (click, json, time, sys, Path,
# LatentError, cli, json_option, k_option, _progress). The library (indexer.generative) never prints:
# training reports through on_epoch, ingestion through progress.


def _epoch_printer(ctx: click.Context, line):
    """An on_epoch callback: `line(figures)` on stderr about ten times per run (and the first and last
    epoch), unless --quiet."""
    quiet = ctx.find_root().params.get("quiet", False)

    def on_epoch(figures: dict) -> None:
        every = max(1, figures["epochs"] // 10)
        if not quiet and (figures["epoch"] % every == 0 or figures["epoch"] in (1, figures["epochs"])):
            click.echo(line(figures), err=True)

    return on_epoch


def _png_option(f):
    return click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False, path_type=Path),
                        help="The PNG file to write.")(f)


def _train_options(f):
    for option in reversed([
        click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False, path_type=Path),
                     help="The model file to write."),
        click.option("--size", type=click.IntRange(8, 64), help="Image size (a multiple of 4) "
                     "[default: 16 for digits (8x8 upsampled), 28 for folders]."),
        click.option("--seed", default=0, show_default=True, type=int, help="Seed of weights, batches and noise."),
        click.option("--threads", default=1, show_default=True, type=click.IntRange(1, 256),
                     help="Torch threads (1 is fastest on a busy machine, and reproducible everywhere)."),
        json_option,
    ]):
        f = option(f)
    return f


def _sample_options(f):
    for option in reversed([
        click.option("-n", "count", default=64, show_default=True, type=click.IntRange(1, 10_000)),
        click.option("--cols", default=8, show_default=True, type=click.IntRange(1, 1000)),
        click.option("--seed", default=0, show_default=True, type=int),
    ]):
        f = option(f)
    return f


def _report_training(model, dataset, output: Path, as_json: bool, kind: str, losses) -> None:
    """Save a trained model and say so: JSON, or one line with `losses(last epoch)`."""
    model.save(output)
    last = model.history[-1]
    if as_json:
        click.echo(json.dumps({"model": str(output), "config": model.config, "final": last,
                               "skipped": len(dataset.skipped)}, indent=2))
    else:
        click.echo(f"Trained a {kind} on {len(dataset)} images ({model.size}x{model.size}, latent "
                   f"{model.latent_dim}-d) in {last['seconds']:.1f}s: {losses(last)}; saved {output}")
    if dataset.skipped:
        click.echo(f"Skipped {len(dataset.skipped)} file(s), e.g. {dataset.skipped[0].source}: "
                   f"{dataset.skipped[0].reason}", err=True)


def _grid_saved(info: dict, what: str) -> None:
    click.echo(f"Wrote {info['path']}: {what} ({info['width']}x{info['height']} px, {info['bytes']:,} bytes)")


@cli.group()
def vae():
    """A variational autoencoder on small grey images: train it, index images by their
    latent means (encoder vae:<model path>), interpolate between images, sample the prior.

    DATA is `digits` (scikit-learn's 1,797 handwritten digits, 8x8, upsampled) or a
    folder of images (grey, resized to the model size).

    \b
    Example:
        latent vae train digits -o digits.vae
        latent vae encode digits.vae digits-idx digits
        latent similar digits-idx --key digits/00042 -k 5 --where label=3
        latent vae interpolate digits.vae digits:0 digits:42 -o path.png
        latent vae sample digits.vae -o samples.png
    """


@vae.command("train")
@click.argument("data")
@_train_options
@click.option("--epochs", default=100, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--latent-dim", default=10, show_default=True, type=click.IntRange(1, 1024),
              help="Dimensions of the latent space (and of the index vectors).")
@click.option("--width", default=32, show_default=True, type=click.IntRange(1, 1024),
              help="Channels of the first convolution (the second has twice as many).")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(2, 100_000))
@click.option("--lr", default=2e-3, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="Adam learning rate (cosine-annealed to 5% of it).")
@click.option("--beta", default=1.0, show_default=True, type=click.FloatRange(0, 100),
              help="Weight of the KL term.")
@click.pass_context
def vae_train(ctx, data: str, output: Path, size, seed: int, threads: int, as_json: bool, epochs: int,
              latent_dim: int, width: int, batch_size: int, lr: float, beta: float):
    """Train a VAE on DATA (`digits` or a folder of images) and save it to -o MODEL.

    Every tenth of the run prints the epoch's loss = reconstruction (binary cross-entropy,
    summed over pixels) + KL divergence from the prior, per image.

    \b
    Example:
        latent vae train digits -o digits.vae
        latent vae train ~/glyphs --size 28 --epochs 60 -o glyphs.vae
    """
    from latent.generative import check_model_path, load_dataset, train_vae

    check_model_path(output, "vae")
    dataset = load_dataset(data, size)
    model = train_vae(dataset, epochs=epochs, latent_dim=latent_dim, width=width, batch_size=batch_size, lr=lr,
                      beta=beta, seed=seed, threads=threads, on_epoch=_epoch_printer(ctx, lambda f: (
                          f"epoch {f['epoch']:>4}/{f['epochs']}  loss {f['loss']:8.3f} = reconstruction "
                          f"{f['recon']:8.3f} + KL {f['kl']:7.3f}  ({f['seconds']:.1f}s)")))
    _report_training(model, dataset, output, as_json, "VAE", lambda last: (
        f"loss {last['loss']:.2f} = reconstruction {last['recon']:.2f} + KL {last['kl']:.2f}"))


@vae.command("encode")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.argument("data", nargs=-1, required=True)
@click.option("--index", "index_type", default="auto", show_default=True, metavar="TYPE",
              help="Index type when DIRECTORY is created (see `latent create`).")
@click.option("--batch-size", type=click.IntRange(1, 1_000_000), help="Images per batch and transaction.")
@json_option
@click.pass_context
def vae_encode(ctx, model: Path, directory: Path, data, index_type: str, batch_size, as_json: bool):
    """Add DATA (`digits`, folders or image files) to the index DIRECTORY by their latent means
    under MODEL; DIRECTORY is created (encoder vae:<MODEL's absolute path>) when it holds no index.

    Digits get keys digits/00000.. and metadata {"label": <digit>}; image files are ingested
    like `latent add` (keys are paths relative to the folder given).

    \b
    Example:
        latent vae encode digits.vae digits-idx digits
        latent similar digits-idx --key digits/00042 -k 10 --where label=3
    """
    from latent.generative import DIGITS, add_dataset, add_images, load_digits, load_vae_encoder, open_index

    encoder = load_vae_encoder(model)
    progress = _progress(ctx)
    started = time.perf_counter()
    added = replaced = unchanged = 0
    skipped = []
    with open_index(directory, encoder, index_type=index_type) as index:
        try:
            for source in data:
                if source == DIGITS and not Path(source).exists():
                    report = add_dataset(index, encoder, load_digits(encoder.size), progress=progress)
                else:
                    report = add_images(index, [source], batch_size=batch_size, progress=progress)
                added, replaced, unchanged = (added + report.added, replaced + report.replaced,
                                              unchanged + report.unchanged)
                skipped.extend(report.skipped)
        finally:
            progress.close()
        count = index.count()
    elapsed = time.perf_counter() - started
    if as_json:
        click.echo(json.dumps({"encoder": encoder.name, "added": added, "replaced": replaced, "unchanged": unchanged,
                               "skipped": len(skipped), "count": count, "seconds": round(elapsed, 3)}, indent=2))
        return
    click.echo(f"Added {added}, replaced {replaced}, unchanged {unchanged}, skipped {len(skipped)} in "
               f"{elapsed:.1f}s; {count} items in {directory} (encoder {encoder.name}, {encoder.dim}-d)")
    for s in skipped[:20]:
        click.echo(f"  {s.source}: {s.reason}", err=True)


@vae.command("interpolate")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("a")
@click.argument("b")
@_png_option
@click.option("--steps", default=10, show_default=True, type=click.IntRange(2, 200),
              help="Decoded points on the line, both ends included.")
@click.option("--scale", type=click.IntRange(1, 64), help="Pixels per image pixel [default: cells of ~64 px].")
def vae_interpolate(model: Path, a: str, b: str, output: Path, steps: int, scale):
    """Decode the straight line between the latent means of images A and B into a strip:
    A, then STEPS decoded points, then B.

    A and B are image files or digits by index (digits:42).

    \b
    Example:
        latent vae interpolate digits.vae digits:0 digits:42 -o path.png --steps 12
    """
    from latent.generative import load_reference, load_vae, save_grid

    vae_model = load_vae(model)
    (image_a, name_a), (image_b, name_b) = (load_reference(r, vae_model.size) for r in (a, b))
    path = vae_model.interpolate(image_a, image_b, steps)
    info = save_grid([[image_a[0], *path, image_b[0]]], output, scale=scale, wide_after=(0, steps))
    _grid_saved(info, f"{name_a}, {steps} decoded points, {name_b}")


@vae.command("sample")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@_png_option
@_sample_options
@click.option("--temperature", default=1.0, show_default=True, type=click.FloatRange(0, 10),
              help="Standard deviation of the prior draws.")
@click.option("--scale", type=click.IntRange(1, 64), help="Pixels per image pixel [default: cells of ~64 px].")
def vae_sample(model: Path, output: Path, count: int, cols: int, seed: int, temperature: float, scale):
    """Decode N draws from the prior N(0, I) of MODEL into a grid.

    \b
    Example:
        latent vae sample digits.vae -o samples.png -n 100 --cols 10 --seed 3
    """
    from latent.generative import load_vae, save_grid
    from latent.generative.grids import chunk

    images = load_vae(model).sample(count, seed=seed, temperature=temperature)
    _grid_saved(save_grid(chunk(images, cols), output, scale=scale), f"{count} samples, seed {seed}")


@cli.group()
def gan():
    """A small DCGAN on small grey images: train it, walk straight lines in its latent space,
    and move samples along an attribute direction found by nearest-neighbour labels.

    \b
    Example:
        latent gan train digits -o digits.gan
        latent gan sample digits.gan -o samples.png
        latent gan interpolate digits.gan -o lines.png
        latent gan direction digits.gan --from 1 --to 7 -o one-to-seven.png
    """


@gan.command("train")
@click.argument("data")
@_train_options
@click.option("--epochs", default=120, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--latent-dim", default=32, show_default=True, type=click.IntRange(1, 1024))
@click.option("--width", default=32, show_default=True, type=click.IntRange(1, 1024),
              help="Channels of the last generator / first discriminator layer (the other has twice as many).")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(2, 100_000))
@click.option("--lr", default=2e-4, show_default=True, type=click.FloatRange(0, 1, min_open=True))
@click.pass_context
def gan_train(ctx, data: str, output: Path, size, seed: int, threads: int, as_json: bool, epochs: int,
              latent_dim: int, width: int, batch_size: int, lr: float):
    """Train a DCGAN on DATA (`digits` or a folder of images) and save it to -o MODEL.

    Every tenth of the run prints the epoch's discriminator and generator losses and the
    discriminator's mean P(real) on real and on generated images.

    \b
    Example:
        latent gan train digits -o digits.gan --epochs 120
    """
    from latent.generative import check_model_path, load_dataset, train_gan

    check_model_path(output, "gan")
    dataset = load_dataset(data, size)
    model = train_gan(dataset, epochs=epochs, latent_dim=latent_dim, width=width, batch_size=batch_size, lr=lr,
                      seed=seed, threads=threads, on_epoch=_epoch_printer(ctx, lambda f: (
                          f"epoch {f['epoch']:>4}/{f['epochs']}  D loss {f['d_loss']:.3f}  G loss {f['g_loss']:.3f}"
                          f"  D(real) {f['d_real']:.2f}  D(fake) {f['d_fake']:.2f}  ({f['seconds']:.1f}s)")))
    _report_training(model, dataset, output, as_json, "GAN", lambda last: (
        f"D loss {last['d_loss']:.3f}, G loss {last['g_loss']:.3f}, D(real) {last['d_real']:.2f}, "
        f"D(fake) {last['d_fake']:.2f}"))


@gan.command("sample")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@_png_option
@_sample_options
@click.option("--scale", type=click.IntRange(1, 64), help="Pixels per image pixel [default: cells of ~64 px].")
def gan_sample(model: Path, output: Path, count: int, cols: int, seed: int, scale):
    """Generate N images from random latent vectors into a grid.

    \b
    Example:
        latent gan sample digits.gan -o samples.png -n 100 --cols 10
    """
    from latent.generative import load_gan, save_grid
    from latent.generative.grids import chunk

    images = load_gan(model).sample(count, seed=seed)
    _grid_saved(save_grid(chunk(images, cols), output, scale=scale), f"{count} samples, seed {seed}")


@gan.command("interpolate")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@_png_option
@click.option("--rows", default=6, show_default=True, type=click.IntRange(1, 1000), help="Lines, one per row.")
@click.option("--steps", default=10, show_default=True, type=click.IntRange(2, 200),
              help="Points per line, both ends included.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the lines' end points.")
@click.option("--scale", type=click.IntRange(1, 64), help="Pixels per image pixel [default: cells of ~64 px].")
def gan_interpolate(model: Path, output: Path, rows: int, steps: int, seed: int, scale):
    """Decode straight lines between pairs of random latent vectors: one row per line.

    \b
    Example:
        latent gan interpolate digits.gan -o lines.png --rows 8 --steps 12 --seed 1
    """
    from latent.generative import load_gan, save_grid

    grid = load_gan(model).interpolate(rows, steps, seed=seed)
    _grid_saved(save_grid([list(row) for row in grid], output, scale=scale),
                f"{rows} lines of {steps} points, seed {seed}")


@gan.command("direction")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--from", "source", required=True, help="The label to move away from, e.g. 1.")
@click.option("--to", "target", required=True, help="The label to move toward, e.g. 7.")
@_png_option
@click.option("--index", "index_dir", type=click.Path(file_okay=False, path_type=Path),
              help="An image index whose items carry the label (e.g. one made by `latent vae encode`) "
                   "[default: the digits as pixel vectors, for models trained on digits].")
@click.option("--label-field", default="label", show_default=True, help="The metadata field holding labels.")
@click.option("--samples", default=2000, show_default=True, type=click.IntRange(10, 1_000_000),
              help="Generated samples labelled to find the direction.")
@k_option
@click.option("--rows", default=6, show_default=True, type=click.IntRange(1, 100),
              help="Samples labelled --from to move, one per row.")
@click.option("--steps", default=7, show_default=True, type=click.IntRange(2, 100))
@click.option("--strength", default=1.5, show_default=True, type=click.FloatRange(0, 100),
              help="How far the last column moves, in units of the direction (1: from the --from mean to "
                   "the --to mean).")
@click.option("--seed", default=0, show_default=True, type=int)
@json_option
def gan_direction(model: Path, source: str, target: str, output: Path, index_dir, label_field: str, samples: int,
                  k: int, rows: int, steps: int, strength: float, seed: int, as_json: bool):
    """Find the latent direction from label --from to label --to and move samples along it.

    Generated samples are labelled by their k nearest neighbours in a labelled index (the
    engine's own search); the direction is mean(z labelled --to) - mean(z labelled --from).
    Rows of the picture are samples labelled --from, moved by 0 .. --strength times the
    direction. Also measured on up to 200 such samples: how often the move gives label --to,
    against a random direction of the same length.

    \b
    Example:
        latent gan direction digits.gan --from 1 --to 7 -o one-to-seven.png
        latent gan direction digits.gan --from 0 --to 6 --index digits-idx -o zero-to-six.png
    """
    import numpy as np

    from latent.generative import (evaluate_direction, find_direction, load_gan, reference, save_grid,
                                    source_samples, walk)

    gan_model = load_gan(model)
    with reference(gan_model, index_dir) as (index, encoder):
        opts = {"k": k, "field": label_field, "encoder": encoder}
        direction = find_direction(gan_model, index, source, target, samples=samples, seed=seed, **opts)
        moved = source_samples(gan_model, index, source, max(rows, 200), seed=seed + 1, **opts)
        measured = evaluate_direction(gan_model, index, direction, moved, strength=strength, seed=seed,
                                      encoder=encoder)
    grid = walk(gan_model, moved[:rows], direction.vector, np.linspace(0.0, strength, steps))
    info = save_grid([list(row) for row in grid], output, wide_after=(0,))
    if as_json:
        click.echo(json.dumps({"direction": direction.as_dict(), "measured": measured, "picture": info}, indent=2))
        return
    _grid_saved(info, f"{len(grid)} samples labelled {source}, moved 0 to {strength:g} x the direction")
    d, r = measured["direction"], measured["random"]
    click.echo(f"Direction {source} -> {target}: |d| = {direction.norm:.2f}, from {direction.samples} samples "
               f"({direction.counts.get(source, 0)} labelled {source}, {direction.counts.get(target, 0)} labelled "
               f"{target}). Moving {measured['n']} samples labelled {source} by {strength:g} x d: labelled {target} "
               f"{d['target']:.0%} (random direction of the same length: {r['target']:.0%}), still {source} "
               f"{d['source']:.0%} (random: {r['source']:.0%})")


@cli.command()
@click.argument("directories", nargs=-1, required=True)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but a loopback address needs --public.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--public", is_flag=True, help="Allow a non-loopback --host (then a token is required).")
@click.option("--token", envvar="LATENT_TOKEN", metavar="TOKEN",
              help="Require 'Authorization: Bearer TOKEN' (or ?token=TOKEN) on every request [env: LATENT_TOKEN].")
@click.option("--max-upload-mb", default=20.0, show_default=True, type=click.FloatRange(0.01, 1024),
              help="Largest image upload, in MiB.")
@click.pass_context
def serve(ctx, directories, host: str, port: int, public: bool, token: str | None, max_upload_mb: float):
    """Serve DIRECTORIES (index folders or @words, @sentences, @photos) over HTTP: the web page
    at / and the JSON API under /api (schema at /openapi.json).

    \b
    Example:
        latent serve photos notes @words
        LATENT_TOKEN=... latent serve photos --host 0.0.0.0 --public
    """
    from latent.search.server import Limits, serve as run_server

    progress = _progress(ctx)
    try:
        run_server(list(directories), host=host, port=port, token=token, public=public,
                   limits=Limits(max_upload_bytes=int(max_upload_mb * 2**20)), progress=progress,
                   announce=lambda line: click.echo(line, err=True))
    finally:
        progress.close()


def main() -> None:
    """The `latent` command. It ends with os._exit once its output is flushed: every index
    is closed by then (each write is committed, and durable, before the command returns),
    and skipping the interpreter's teardown saves about 0.3 s and 120 MiB of peak memory
    that torch's teardown touches."""
    try:
        cli(prog_name="latent")
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, (int, type(None))):
            print(e.code, file=sys.stderr)
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # `latent ... | head`: the reader left
        pass
    finally:
        sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
