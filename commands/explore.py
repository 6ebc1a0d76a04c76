"""The commands that explore a latent space: interpolate (a walk from A to B), analogy (A is to B
as C is to ?) and map (a 2-D picture or page of the items)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from latent.search.explore import Term, analogy as solve, interpolate as walk, read_term
from latent.search.map_html import render_html
from latent.search.map_png import render_png
from latent.search.maps import compute_map
from .common import (echo_hits, echo_json, flags, index_dir, k_option, label, note, open_index, output_options,
                     render_table, where_option)


@click.command()
@index_dir
@click.argument("a")
@click.argument("b")
@click.option("--steps", default=10, show_default=True, type=click.IntRange(2, 1000),
              help="Points on the path, both ends included.")
@click.option("--slerp/--lerp", "spherical", default=True, show_default=True,
              help="Walk on the great circle between the unit vectors, or on the straight line.")
@click.option("--exclude-endpoints", is_flag=True, help="Leave the two ends out of the path.")
@where_option
def interpolate(directory: Path, a: str, b: str, steps: int, spherical: bool, exclude_endpoints: bool,
                where: str | None):
    """Walk from A to B through DIRECTORY's latent space: the nearest item at each step.

    A and B are keys, texts (for text encoders) or image files. Between the ends, A and B
    themselves are skipped so the path shows what lies between them; repeats are folded.

    \b
    Example:
        latent interpolate @words france germany --steps 12
        latent interpolate photos cat.jpg dog.jpg --json
    """
    method = "slerp" if spherical else "lerp"
    with open_index(directory) as index:
        ends = [read_term(index, a), read_term(index, b)]
        note("; ".join(f"{name}: {_reading(term)}" for name, term in zip("AB", ends)))
        path = walk(index, *ends, steps=steps, method=method, exclude_endpoints=exclude_endpoints, where=where)
    if flags().json:
        echo_json({"a": a, "b": b, "steps": steps, "method": method, "path": [s.as_dict() for s in path]})
        return
    rows = [{"steps": f"{s.first}" if s.first == s.last else f"{s.first}-{s.last}", "t": f"{s.t:.2f}",
             "score": f"{s.score:.4f}", "key": s.key, "text": s.text or "", "label": label(s.metadata)}
            for s in path]
    columns = ["steps", "t", "score", "key"]
    if any(s.text and s.text != s.key for s in path):
        columns.append("text")
    if any(s.kind == "image" for s in path):
        columns.append("label")
    click.echo(render_table(rows, columns) if rows else "(no items)")
    click.echo(" -> ".join(s.key for s in path))


def _reading(term: Term) -> str:
    """How an argument was read, for the note on stderr."""
    if term.kind == "text":
        return f"the text {term.value!r} (no item has it as its key)"
    return f"the {'key' if term.kind == 'key' else 'image file'} {term.value!r}"


@click.command()
@click.argument("a")
@click.argument("b")
@click.argument("c")
@k_option
@click.option("--method", type=click.Choice(["add", "mul"]), default="add", show_default=True,
              help="3CosAdd or 3CosMul (Levy & Goldberg 2014).")
@click.option("--include-inputs", is_flag=True, help="Rank A, B and C too, where their scores put them.")
@click.option("--index", "directory", default="@words", show_default=True,
              help="The index to use: a directory or a built-in index.")
@output_options
def analogy(a: str, b: str, c: str, k: int, method: str, include_inputs: bool, directory: str):
    """A is to B as C is to ?  (on the GloVe words by default)

    \b
    Example:
        latent analogy man king woman
        latent analogy paris france rome --method mul -k 3
    """
    with open_index(Path(directory)) as index:
        hits = solve(index, a, b, c, k=k, method=method, include_inputs=include_inputs)
    echo_hits(hits, analogy=[a, b, c], method=method)


@click.command("map")
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
                   "(20 named, the rest 'other') and for at most 20 distinct whole numbers (the clusters of "
                   "`latent cluster`), a colour scale for other numbers.")
@click.option("--labels", type=click.IntRange(0, 500), default=20, show_default=True,
              help="PNG: how many spread-out points to label (their text or key; images get a thumbnail).")
@click.option("--sample", type=click.IntRange(3, 1_000_000), default=5000, show_default=True,
              help="Map at most this many items: a uniform random sample (see --seed) when more match.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sample and of t-SNE/UMAP.")
@click.option("--html", "as_html", is_flag=True,
              help="Write the interactive HTML page (pan, zoom, hover); same as giving -o NAME.html.")
@click.option("--title", help="Title of the picture (default: the index name and the method).")
@where_option
def map_(directory: Path, output: Path | None, method: str, color_by: str | None, labels: int, sample: int,
         seed: int, as_html: bool, title: str | None, where: str | None):
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
    if output is None:
        output = Path("map.html" if as_html else "map.png")
    suffix = output.suffix.lower()
    if suffix not in (".png", ".html", ".htm"):
        raise click.UsageError(f"-o {output}: give a file name ending in .png, or .html for the interactive page")
    if as_html and suffix == ".png":
        raise click.UsageError(f"--html writes an HTML page; give -o a name ending in .html, not {output}")
    html_out = suffix in (".html", ".htm")
    started = time.perf_counter()
    with open_index(directory) as index:
        the_map = compute_map(index, method=method.lower(), sample=sample, seed=seed, where=where)
    if html_out:
        rendered = render_html(the_map, output, color_by=color_by, title=title)
    else:
        rendered = render_png(the_map, output, color_by=color_by, labels=labels, title=title)
    elapsed = time.perf_counter() - started
    if flags().json:
        echo_json({
            "path": str(rendered.path), "format": "html" if html_out else "png", "method": the_map.method,
            "points": rendered.points, "total": the_map.total, "seed": seed, "color_by": color_by,
            "legend": rendered.legend, "labels": rendered.labels, "thumbnails": rendered.thumbnails,
            "explained_variance": the_map.explained_variance, "bytes": rendered.bytes,
            "map_seconds": round(the_map.seconds, 3), "seconds": round(elapsed, 3)})
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


COMMANDS = [interpolate, analogy, map_]
