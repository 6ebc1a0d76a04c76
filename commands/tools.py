"""The commands that look at a whole index rather than a query: dupes (groups of near-duplicate
items), cluster (k-means, stored as a metadata field), ls (list the items) and get (one item)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import numpy as np

from latent.search.clusters import cluster as run_kmeans
from latent.search.dupes import DEFAULT_THRESHOLD, find_duplicates
from latent.search.query import get_item, list_items
from .common import (echo_json, echo_records, hits_json, index_dir, note, open_index, output_format, output_options,
                     progress_bars, where_option)


@click.command()
@index_dir
@click.option("--threshold", type=click.FloatRange(0.0, 1.0, min_open=True), default=DEFAULT_THRESHOLD,
              show_default=True, help="Cosine similarity from which two items are near-duplicates.")
@where_option
@output_options
def dupes(directory: Path, threshold: float, where: str | None):
    """Groups of near-duplicate items of DIRECTORY: items linked by pairs whose cosine similarity
    is at least --threshold (transitively: A~B and B~C make one group). Each group's
    representative (the member nearest to the group's mean, marked *) comes first, then the
    others by their similarity to it. An exact FAISS range search over the stored vectors.

    \b
    Example:
        latent dupes photos --threshold 0.9
        latent dupes notes --where "topic=law" --format csv > dupes.csv
    """
    started = time.perf_counter()
    progress = progress_bars()
    try:
        with open_index(directory) as index:
            groups = find_duplicates(index, threshold=threshold, where=where, progress=progress)
    finally:
        progress.close()
    seconds = time.perf_counter() - started
    rows = [{"group": g, "rep": "*" if i == 0 else "", "key": m.key, "score": m.score, "kind": m.kind,
             "text": m.text, "metadata": m.metadata}
            for g, group in enumerate(groups, start=1) for i, m in enumerate(group.members)]
    echo_records([g.as_dict() for g in groups], ["group", "rep", "score", "key", "text"], key="groups",
                 extra={"threshold": threshold, "where": where}, rows=rows, empty="(no near-duplicates)")
    note(f"{len(groups)} group(s) holding {len(rows)} items at cosine >= {threshold} ({seconds:.1f} s)")


@click.command("cluster")
@index_dir
@click.option("-k", "k", default=20, show_default=True, type=click.IntRange(2, 100_000), help="Number of clusters.")
@click.option("--field", default="cluster", show_default=True,
              help="Metadata field that receives each item's cluster number (0 is the largest cluster).")
@click.option("--replace", is_flag=True,
              help="Overwrite the field where items already hold a value that no earlier clustering wrote.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of k-means.")
@click.option("--top", type=click.IntRange(1, 50), default=5, show_default=True,
              help="Most central items (and distinctive words) shown per cluster.")
@where_option
@output_options
def cluster_(directory: Path, k: int, field: str, replace: bool, seed: int, top: int, where: str | None):
    """Cluster the items of DIRECTORY by FAISS k-means (spherical: by cosine similarity) and store
    each item's cluster number in the metadata field --field (filter with --where "cluster=3",
    colour a map with `latent map DIR --color-by cluster`). Prints each cluster's size, its most
    central items and, for texts and words, a few words that set it apart. Running it again
    replaces the field it wrote; a field a user set is left alone unless --replace.

    \b
    Example:
        latent cluster notes -k 20
        latent cluster @words -k 50 --where "rank <= 20000" --field topic50
    """
    progress = progress_bars()
    try:
        with open_index(directory) as index:
            result = run_kmeans(index, k=k, field=field, where=where, seed=seed, top=top, replace=replace,
                                progress=progress)
    finally:
        progress.close()
    rows = [{"cluster": c.id, "size": c.size, "words": ", ".join(c.words),
             "central": ", ".join(m.key if not m.text or m.text == m.key else m.text for m in c.central)}
            for c in result.clusters]
    columns = ["cluster", "size"] + (["words"] if any(c.words for c in result.clusters) else []) + ["central"]
    echo_records([c.as_dict() for c in result.clusters], columns, key="clusters", rows=rows, metadata=False,
                 extra={k: v for k, v in result.as_dict().items() if k != "clusters"})
    note(f"stored the field {field!r} on {result.items:,} items ({result.changed:,} changed)"
         + (f"; it replaced the values of {result.replaced_user_values:,} items that held their own {field!r}"
            if result.replaced_user_values else ""))


@click.command("ls")
@index_dir
@where_option
@click.option("--limit", type=click.IntRange(0), default=20, show_default=True, help="At most this many items; 0: all.")
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True, help="Skip this many first.")
@output_options
def ls(directory: Path, where: str | None, limit: int, offset: int):
    """List the items of DIRECTORY (those matching --where) in the order they were added.

    \b
    Example:
        latent ls notes --where "topic=medicine" --limit 5
        latent ls photos --limit 0 --format csv --fields width,height > photos.csv
    """
    with open_index(directory) as index:
        items = list_items(index, where=where, limit=limit or None, offset=offset)
    records = [{k: v for k, v in r.items() if k != "score"} for r in hits_json(items)]
    for r, item in zip(records, items):
        r["id"] = item.id
    echo_records(records, ["rank", "key", "text"], key="items", extra={"where": where},
                 empty="(no items)")


@click.command("get")
@index_dir
@click.argument("key")
@click.option("--vector", "with_vector", is_flag=True, help="Show the stored vector too.")
@output_options
def get(directory: Path, key: str, with_vector: bool):
    """Show the item of DIRECTORY whose key is KEY: its text or path, kind, metadata and, with
    --vector, its stored (unit-length) vector.

    \b
    Example:
        latent get notes s0081
        latent get @words king --vector --format json
    """
    with open_index(directory) as index:
        item = get_item(index, key, vector=with_vector)
    if with_vector:
        item["vector"] = [round(float(x), 7) for x in np.asarray(item["vector"])]
    fmt = output_format()
    if fmt in ("json", "jsonl"):
        if fmt == "json":
            echo_json(item)
        else:
            click.echo(json.dumps(item, ensure_ascii=False))
        return
    pairs = [("key", item["key"]), ("id", item["id"]), ("kind", item["kind"]), ("text", item["text"]),
             ("path", item["path"])] + [(f"metadata.{k}", v) for k, v in (item["metadata"] or {}).items()]
    if with_vector:
        pairs.append(("vector", item["vector"]))
    pairs = [(f, v) for f, v in pairs if v is not None]
    rows = [{"field": f, "value": v} for f, v in pairs]
    if fmt == "csv":
        echo_records(rows, ["field", "value"], metadata=False)
    else:  # field: value lines, the text whole
        width = max(len(f) for f, _ in pairs)
        for f, v in pairs:
            click.echo(f"{f.ljust(width)}  {_shown(v)}")


def _shown(value) -> str:
    if isinstance(value, list) and value and all(isinstance(x, float) for x in value):
        return f"[{', '.join(f'{x:.4f}' for x in value[:6])}, ...] ({len(value)} floats; --format json: all)"
    return " ".join(value.split()) if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


COMMANDS = [dupes, cluster_, ls, get]
