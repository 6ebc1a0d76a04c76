"""The commands that make and look after an index: create, add, delete, info, check, rebuild,
compact, tune, skipped, index-field and export."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from latent.indexer import Index, read_inputs
from latent.indexer.errors import EncoderMismatch
from latent.indexer.export import export
from latent.indexer.readers import check_inputs, detect_format, is_export, parquet_vector_dim
from latent.indexer.records import SKIP_EXAMPLES
from .common import cell, echo_json, flags, index_dir, open_index, progress_bars, render_table


@click.command()
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
@click.option("--runtime", type=click.Choice(["onnx", "torch"]),
              help="What runs the bundled networks (minilm, efficientnet, conse): onnx (onnxruntime, the "
                   "default) or torch; recorded in the index, whose queries use it. Default: $LATENT_RUNTIME, "
                   "else onnx.")
def create(directory: Path, encoder: str, index_type: str, target_recall: float | None, runtime: str | None):
    """Create an empty index in DIRECTORY; with --json, print its `latent info`.

    \b
    Example:
        latent create words --encoder glove --index hnsw
        latent create big --index auto --target-recall 0.95
    """
    with Index.create(directory, encoder=encoder, index_type=index_type, target_recall=target_recall,
                      runtime=runtime) as index:
        info = index.info()
    if flags().json:
        echo_json(info)
        return
    target = f", tuned to recall@10 >= {target_recall}" if target_recall else ""
    click.echo(f"Created {directory}: encoder {info['encoder']} ({info['dim']}-d), index {info['index_type']}{target}")


@click.command()
@index_dir
@click.argument("inputs", nargs=-1, required=True)
@click.option("--format", "fmt", type=click.Choice(["lines", "words", "csv", "jsonl", "parquet", "images"]),
              help="Input format (default: folders and image files are images; .csv, .jsonl/.ndjson, .parquet; "
                   "else lines). A folder read as parquet is the .parquet files in it.")
@click.option("--text-field", default="text", show_default=True, help="CSV/JSONL/Parquet field holding the text.")
@click.option("--key-field", help="CSV/JSONL/Parquet field holding the item key (default: a hash of the text).")
@click.option("--vector-field", metavar="FIELD",
              help="Parquet column holding vectors made elsewhere, stored as they are (normalised) instead of "
                   "encoding; refused unless their dimension is the index's. A file from `latent export` "
                   "uses its `vector` and `key` columns without being told.")
@click.option("--image-field", metavar="FIELD",
              help="Parquet column holding image paths (relative to the Parquet file's folder) to encode.")
@click.option("--batch-size", type=click.IntRange(1, 1_000_000), help="Items per batch and transaction.")
@click.option("--encoder", "-e", help="Refuse unless the index uses this encoder.")
@click.option("--verbose", "-v", is_flag=True,
              help="Print a line on stderr as each batch is committed (durable: kept whatever happens next).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Read and encode on a Ray cluster (the [ray] extra): ADDRESS is auto, a head node's host:port "
                   "or ray://host:port; with no value, a Ray started here on the loopback interface. Give it "
                   "after the inputs (or as --ray=ADDRESS). The inputs must be readable at the same path on every "
                   "node; this process stores the items, as without --ray.")
@click.option("--ray-batch-size", type=click.IntRange(1, 100_000), default=256, show_default=True,
              help="With --ray: items per batch given to an encoder actor.")
@click.option("--concurrency", type=click.IntRange(1, 10_000), default=2, show_default=True,
              help="With --ray: how many encoder actors (each loads the model once).")
@click.option("--actor-cpus", type=click.FloatRange(0.01, 1024), default=1.0, show_default=True,
              help="With --ray: logical CPUs each encoder actor takes (leave some for the readers).")
def add(directory: Path, inputs, fmt, text_field, key_field, vector_field, image_field, batch_size, encoder, verbose,
        ray_address, ray_batch_size, concurrency, actor_cpus):
    """Add the items of INPUTS (files, folders of images, Parquet files or globs of them, or -
    for stdin) to DIRECTORY.

    Existing keys are replaced (upsert); unchanged items are not re-encoded. Bad lines and
    bad image files are skipped and reported; everything else is added. Image keys are the
    paths relative to the folder given; the same image content is stored once.

    \b
    Example:
        latent add notes notes.csv --text-field body --key-field id
        latent add photos ~/Pictures/holiday --format images
        latent add notes 'parts/*.parquet' --key-field id --ray auto
        latent add copy exported.parquet
    """
    inputs = check_inputs(inputs, fmt)
    if ray_address is not None and ray_address != "local" and Path(ray_address).exists():
        raise click.UsageError(f"--ray took {ray_address!r}, an input, as its address: give --ray after the inputs, "
                               "or as --ray=ADDRESS")
    progress = progress_bars()
    started = time.perf_counter()
    with Index.open(directory) as index:
        _check_vector_inputs(index, inputs, fmt, vector_field)
        options = dict(fmt=fmt, text_field=text_field, key_field=key_field, vector_field=vector_field,
                       image_field=image_field)
        if ray_address is None:
            items = read_inputs(inputs, **options)
        else:
            from latent.indexer.distributed import encoded_items

            if encoder is not None:
                index.check_encoder(encoder)
            items = encoded_items(inputs, encoder=index.encoder_name, runtime=index.manifest.get("runtime"),
                                  batch_size=ray_batch_size, concurrency=concurrency, num_cpus=actor_cpus,
                                  address=None if ray_address == "local" else ray_address, **options)
            batch_size = batch_size or ray_batch_size
        try:
            def committed(generation: int, n: int) -> None:
                progress.write(f"committed generation {generation}: {n} items")

            report = index.add(items, batch_size=batch_size, encoder=encoder, progress=progress,
                               on_commit=committed if verbose else None)
        finally:
            progress.close()
        count = index.count()
    elapsed = time.perf_counter() - started
    if flags().json:
        echo_json({**report.as_dict(), "count": count, "seconds": round(elapsed, 3)})
        return
    click.echo(f"Added {report.added}, replaced {report.replaced}, metadata updated {report.metadata_updated}, "
               f"unchanged {report.unchanged}, skipped {report.skipped} "
               f"({len(report.committed)} batches committed in {elapsed:.1f}s); {count} items in {directory}")
    if report.skipped:
        echo_skips(report)


def _check_vector_inputs(index: Index, inputs: list[str], fmt: str | None, vector_field: str | None) -> None:
    """Refuse, before anything is written, Parquet vectors whose dimension is not the index's."""
    for path in inputs:
        if path == "-" or (fmt or detect_format(path)) != "parquet":
            continue
        field = vector_field
        if field is None and is_export(path):
            field = "vector"
        if field is None:
            continue
        dim = parquet_vector_dim(path, field)
        if dim is not None and dim != index.dim:
            raise EncoderMismatch(f"{path} holds {dim}-d vectors in {field!r}; {index.directory} holds "
                                  f"{index.dim}-d vectors of {index.encoder_name!r}: nothing was added")


def echo_skips(report) -> None:
    """On stderr: the skips of an add per reason, then the examples kept, in input order."""
    click.echo(f"Skipped {report.skipped:,} input(s):", err=True)
    for reason, n in report.skip_counts().items():
        click.echo(f"  {n:>9,}  {reason}", err=True)
    examples = report.skip_examples()
    click.echo(f"{'Examples' if len(examples) < report.skipped else 'Each'} (at most {SKIP_EXAMPLES} per reason; all "
               "are kept in the index's skipped table):", err=True)
    for s in examples:
        where = f"{s.source}:{s.line}" if s.line else s.source
        click.echo(f"  {where}: {s.reason}", err=True)


@click.command()
@index_dir
@click.argument("keys", nargs=-1, required=True)
def delete(directory: Path, keys):
    """Delete items by key from DIRECTORY.

    \b
    Example:
        latent delete notes s0001 s0002
        latent delete notes s0003 --json
    """
    with Index.open(directory) as index:
        deleted, missing = index.delete(list(keys))
        count = index.count()
    if flags().json:
        echo_json({"deleted": deleted, "missing": missing, "count": count})
        return
    click.echo(f"Deleted {deleted}; {count} items left in {directory}")
    if missing:
        click.echo(f"Not found: {', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}", err=True)


@click.command()
@index_dir
def info(directory: Path):
    """Count, encoder, dimension, metric, index type, size on disk and generation of DIRECTORY.

    \b
    Example:
        latent info notes --json
    """
    with open_index(directory) as index:
        facts = index.info()
    if flags().json:
        echo_json(facts)
        return
    width = max(len(k) for k in facts)
    for key, value in facts.items():
        click.echo(f"{key.ljust(width)}  {cell(value, 200)}")


@click.command()
@index_dir
def check(directory: Path):
    """Check DIRECTORY: SQLite integrity, damaged rows, the vectors file's checksum and
    generation, FAISS ids == item ids. Changes nothing.

    Exits 1 when a problem is found, naming it and what repairs it. A vectors file that is
    only behind the store (a crash before its save) is a note: opening catches it up.

    \b
    Example:
        latent check notes
    """
    with Index.open(directory) as index:
        report = index.check()
    if flags().json:
        echo_json(report)
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


def _with_progress(directory: Path, work):
    """work(index, progress bars) on the opened index; (what it returned, seconds taken)."""
    progress = progress_bars()
    started = time.perf_counter()
    with Index.open(directory) as index:
        try:
            result = work(index, progress)
        finally:
            progress.close()
    return result, time.perf_counter() - started


@click.command()
@index_dir
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Build the vector index of an IVF or IVF-PQ index on a Ray cluster (the [ray] extra): trained "
                   "once here, filled in parts by Ray tasks, merged here; the same index a local rebuild makes. "
                   "ADDRESS as for `add --ray`. Damaged rows are not repaired on this path.")
def rebuild(directory: Path, ray_address: str | None):
    """Repair DIRECTORY from its store (SQLite, the source of truth): re-encode damaged
    vectors from their text, keep unreadable metadata as text, and rebuild the FAISS index.

    \b
    Example:
        latent rebuild notes
        latent rebuild big --ray auto
    """
    def work(index, bars):
        if ray_address is None:
            return index.rebuild(progress=bars), index.info()
        index.rebuild_in_parts(address=None if ray_address == "local" else ray_address, progress=bars)
        return [], index.info()

    (repaired, facts), elapsed = _with_progress(directory, work)
    if flags().json:
        echo_json({"repaired": repaired, "count": facts["count"], "faiss_factory": facts["faiss_factory"],
                   "generation": facts["generation"], "seconds": round(elapsed, 3)})
        return
    for line in repaired:
        click.echo(f"Repaired: {line}")
    click.echo(f"Rebuilt {directory}: {facts['count']} items, {facts['faiss_factory']}, "
               f"generation {facts['generation']} in {elapsed:.1f}s")


@click.command()
@index_dir
def compact(directory: Path):
    """Merge the delta segments of DIRECTORY's vector index into its base file now.

    Each write adds a small segment file (vectors-SINCE-GENERATION.seg) next to the base
    vectors.faiss; writes merge them into the base once they hold more than a tenth of its
    items ($LATENT_MERGE_RATIO, at least $LATENT_MERGE_MIN = 10,000 items), and the index
    type `auto` picks for the total (Flat, HNSW, IVF-PQ) is taken there. This forces that
    merge, e.g. before copying the index or timing queries.

    \b
    Example:
        latent compact notes
    """
    done, elapsed = _with_progress(directory, lambda index, bars: index.compact(progress=bars))
    if flags().json:
        echo_json({**done, "seconds": round(elapsed, 3)})
        return
    if done["how"] == "nothing to merge":
        click.echo(f"{directory}: no segments to merge ({done['items']:,} items in the base, {done['factory']})")
        return
    click.echo(f"Compacted {directory}: {done['segments']} segment(s), {done['segment_items']:,} items, "
               f"{done['how']} into the base ({done['items']:,} items, {done['factory']} -> {done['factory_after']}) "
               f"in {elapsed:.1f}s")


@click.command()
@index_dir
@click.option("--target-recall", type=click.FloatRange(0, 1, min_open=True), metavar="R",
              help="Recall@10 to reach (kept for re-tuning as the index grows). [default: the index's own]")
def tune(directory: Path, target_recall: float | None):
    """Tune the search parameters of DIRECTORY to a recall target, measured on held-out items.

    The vector index is rebuilt without a random sample of 1,000 items (a tenth of a small
    index), whose exact neighbours are found meanwhile; the cheapest efSearch (HNSW), nprobe
    (IVF) or nprobe and re-ranking depth (IVF-PQ) reaching the target is kept in the manifest,
    and the sample is added back. As the index grows, every 10% a check of 1,000 probes raises
    efSearch or nprobe without a rebuild; at 4x the tuned size it is tuned again.

    \b
    Example:
        latent tune notes --target-recall 0.95
    """
    progress = progress_bars()
    with Index.open(directory) as index:
        try:
            record = index.tune(target_recall, progress=progress)
        finally:
            progress.close()
    if flags().json:
        echo_json(record)
        return
    if record.get("note"):
        click.echo(f"{directory}: {record['note']} (target {record['target_recall']} kept)")
        return
    params = ", ".join(f"{k} {v}" for k, v in record["params"].items())
    verdict = "reached" if record["reached"] else "NOT reached: these are the most thorough settings tried"
    click.echo(f"Tuned {directory} ({record['factory']}, {record['count']:,} items): {params}; recall@{record['k']} "
               f"{record['recall']:.3f} on {record['queries']:,} held-out items, goal {record['goal']:.3f} "
               f"for target {record['target_recall']} ({verdict}); {record['seconds']:.1f}s of measuring")


@click.command()
@index_dir
@click.option("--source", help="Only the skips of this input (as `add` named it).")
@click.option("--limit", type=click.IntRange(1, 1_000_000), default=50, show_default=True,
              help="Show at most this many, the latest first.")
@click.option("--clear", is_flag=True, help="Forget the recorded skips (of --source only, if given).")
def skipped(directory: Path, source: str | None, limit: int, clear: bool):
    """List the inputs that `add` skipped into DIRECTORY, with their reasons (each once per
    input, line and reason), or forget them with --clear.

    \b
    Example:
        latent skipped notes --limit 20
        latent skipped notes --source notes.csv --clear
    """
    with open_index(directory) as index:
        if clear:
            dropped = index.clear_skipped(source=source)
            if flags().json:
                echo_json({"cleared": dropped})
            else:
                click.echo(f"Cleared {dropped:,} recorded skip{'s' if dropped != 1 else ''} from {directory}")
            return
        rows, total = index.skipped(limit=limit, source=source)
    if flags().json:
        echo_json({"total": total, "skipped": rows})
        return
    click.echo(render_table(rows, ["source", "line", "reason", "at"]) if rows else "(no skipped inputs recorded)")
    if total > len(rows):
        click.echo(f"({len(rows):,} of {total:,} shown; --limit shows more)")


@click.command("index-field")
@index_dir
@click.argument("fields", nargs=-1)
@click.option("--drop", is_flag=True, help="Remove the indexes of FIELDS instead.")
def index_field(directory: Path, fields, drop: bool):
    """Index metadata FIELDS of DIRECTORY for filters, or list the indexed fields (no FIELDS).

    A filter on an indexed field (=, in, <, <=, >, >=; not under `not`) reads an SQLite index
    instead of scanning every item: the first search with a new filter takes milliseconds
    instead of a scan of all items. Each index costs space and a little time on every write,
    so index the fields that filters use often and that single out few items. Nothing is
    indexed unless asked. Dotted names reach nested fields (a.b).

    \b
    Example:
        latent index-field notes year lang
        latent index-field notes
        latent index-field notes lang --drop
    """
    with open_index(directory) as index:
        changed = [field for field in fields if index.index_field(field, drop=drop)]
        indexed = index.indexed_fields()
    if flags().json:
        echo_json({"changed": changed, "indexed": indexed})
        return
    for field in fields:
        verb = ("Dropped the index of" if drop else "Indexed") if field in changed else \
            ("No index on" if drop else "Already indexed:")
        click.echo(f"{verb} {field}")
    click.echo(f"Indexed fields of {directory}: {', '.join(indexed) if indexed else '(none)'}")



@click.command("export")
@index_dir
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The file to write: .parquet, .jsonl or .npy (the vectors; their items go to NAME.items.jsonl).")
def export_command(directory: Path, output: Path):
    """Write every item of DIRECTORY (key, kind, text, path, metadata, vector) to a file.

    A Parquet export goes back in with `latent add` (keys, metadata and vectors as they
    are, not encoded again), so an index moves between machines and tools.

    \b
    Example:
        latent export notes -o notes.parquet
        latent add notes-copy notes.parquet
    """
    progress = progress_bars()
    with open_index(directory) as index:
        try:
            result = export(index, output, progress=progress)
        finally:
            progress.close()
    if flags().json:
        echo_json(result)
        return
    click.echo(f"Exported {result['count']:,} items ({result['dim']}-d) of {directory} to "
               f"{' and '.join(result['files'])}")


COMMANDS = [create, add, delete, info, check, rebuild, compact, tune, skipped, index_field, export_command]
