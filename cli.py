"""The `latent` command line: parse, call the Python API (indexer/, search/), render.

Errors from the library are one line on stderr and exit code 1 (2 for usage errors);
--debug shows the traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import click

from indexer.errors import LatentError

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
    from indexer.builtin import open_index

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
@click.version_option(package_name="latent")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option("--debug", is_flag=True, help="Show tracebacks of errors.")
def cli(quiet: bool, debug: bool):
    """latent: search and explore the latent spaces of words and sentences.

    Indexes are directories holding a SQLite store (items, metadata, vectors) and a
    FAISS index derived from it. Encoders: minilm (sentences, default), glove (words),
    st:<sentence-transformers model or path>.

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
              help="minilm, glove, or st:<sentence-transformers name or path>.")
@click.option("--index", "index_type", default="auto", show_default=True, metavar="TYPE",
              help="flat, hnsw, ivf, ivfpq, auto (exact while small, HNSW beyond), or a FAISS factory string.")
def create(directory: Path, encoder: str, index_type: str):
    """Create an empty index in DIRECTORY.

    \b
    Example:
        latent create words --encoder glove --index hnsw
    """
    from indexer import Index

    with Index.create(directory, encoder=encoder, index_type=index_type) as index:
        info = index.info()
    click.echo(f"Created {directory}: encoder {info['encoder']} ({info['dim']}-d), index {info['index_type']}")


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
@json_option
@click.pass_context
def add(ctx, directory: Path, inputs, fmt, text_field, key_field, batch_size, encoder, as_json):
    """Add the items of INPUTS (files, folders of images, or - for stdin) to DIRECTORY.

    Existing keys are replaced (upsert); unchanged items are not re-encoded. Bad lines and
    bad image files are skipped and reported; everything else is added. Image keys are the
    paths relative to the folder given; the same image content is stored once.

    \b
    Example:
        latent add notes notes.csv --text-field body --key-field id
        latent add photos ~/Pictures/holiday --format images
    """
    from indexer import Index, read_inputs
    from indexer.readers import check_inputs

    check_inputs(inputs, fmt)
    progress = _progress(ctx)
    started = time.perf_counter()
    with Index.open(directory) as index:
        try:
            report = index.add(read_inputs(inputs, fmt=fmt, text_field=text_field, key_field=key_field),
                               batch_size=batch_size, encoder=encoder, progress=progress)
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
    from search import search
    from search.explore import search_expression

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

    from search import similar as find_similar

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
    from indexer import Index

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
    """Check DIRECTORY: SQLite integrity, FAISS ids == item ids, generations match. Changes nothing.

    Exits 1 when a problem is found.

    \b
    Example:
        latent check notes
    """
    from indexer import Index

    with Index.open(directory) as index:
        report = index.check()
    if as_json:
        click.echo(json.dumps(report, indent=2))
    elif report["ok"]:
        click.echo(f"OK: {report['count']} items, generation {report['generation']}, "
                   f"SQLite {report['sqlite_integrity']}, vector index in step with the store")
    else:
        for problem in report["problems"]:
            click.echo(f"Problem: {problem}", err=True)
    if not report["ok"]:
        sys.exit(1)


@cli.command()
@index_dir
@click.pass_context
def rebuild(ctx, directory: Path):
    """Rebuild the FAISS index of DIRECTORY from its store.

    \b
    Example:
        latent rebuild notes
    """
    from indexer import Index

    progress = _progress(ctx)
    started = time.perf_counter()
    with Index.open(directory) as index:
        try:
            index.rebuild(progress=progress)
        finally:
            progress.close()
        facts = index.info()
    click.echo(f"Rebuilt {directory}: {facts['count']} items, {facts['faiss_factory']}, "
               f"generation {facts['generation']} in {time.perf_counter() - started:.1f}s")


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
    from search.maps import compute_map, render_html, render_png

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
    from search.words import neighbours

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
    from search.explore import interpolate as walk

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
    from search.explore import analogy as solve

    with _open(ctx, Path(directory)) as index:
        hits = solve(index, a, b, c, k=k, method=method, include_inputs=include_inputs)
    echo_hits(hits, as_json, analogy=[a, b, c], method=method)


@cli.command()
@click.option("-k", "k", default=5, show_default=True, type=click.IntRange(1, 50), help="Neighbours per query.")
@click.pass_context
def demo(ctx, k: int):
    """Nearest neighbours of a few words and sentences on the bundled models (no network).

    The first run builds the cached indexes (all GloVe words, the demo sentences);
    later runs reuse them.

    \b
    Example:
        latent demo
    """
    from indexer.builtin import cache_dir
    from search.demo import run_demo

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
    from indexer import list_encoders

    for name, desc in list_encoders().items():
        click.echo(f"{name:<20} {desc}")


def main() -> None:
    cli(prog_name="latent")


if __name__ == "__main__":
    main()
