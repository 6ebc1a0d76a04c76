"""What every `latent` command shares: the command group class (the error policy, and -q/--quiet,
--json and --debug on every command), the shared options, progress bars on stderr, and the
rendering of tables, hits and JSON documents."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click
from tqdm import tqdm

from latent.indexer.builtin import BUILDING, open_index as open_builtin
from latent.indexer.errors import FilterError, LatentError
from latent.indexer.filters import field_value
from latent.search.query import MAX_K, Hit

MAX_CELL = 60
FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")  # as --where reads field names


# -- -q/--quiet, --json and --debug, before or after a command's arguments ------------------------------------
@dataclass(frozen=True)
class Flags:
    quiet: bool
    json: bool
    debug: bool


_FLAGS = {  # name: (option declarations, help)
    "quiet": (["-q", "--quiet"], "No progress bars or training progress lines on stderr."),
    "json": (["--json"], "Print the result as JSON on stdout."),
    "debug": (["--debug"], "Show tracebacks of errors."),
}


def _given(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    # ctx.meta is one dict for the group's context and its command's: given to either counts
    if value:
        ctx.meta[f"latent.{param.name}"] = True


def flags(ctx: click.Context | None = None) -> Flags:
    """-q/--quiet, --json and --debug, as given to the group or to the command."""
    meta = (ctx or click.get_current_context()).meta
    return Flags(**{name: meta.get(f"latent.{name}", False) for name in _FLAGS})


def add_flag_options(command: click.Command) -> None:
    """Give `command` (and a group's commands) the -q/--quiet, --json and --debug options it lacks;
    their values are read with flags(), not passed to the command's function."""
    taken = {opt for param in command.params for opt in param.opts} | {param.name for param in command.params}
    for name, (decls, help_text) in _FLAGS.items():
        if name not in taken and not taken.intersection(decls):
            command.params.append(click.Option(decls, is_flag=True, expose_value=False, callback=_given,
                                               help=help_text))
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            add_flag_options(sub)


class Group(click.Group):
    """A `latent` command group. Library errors become one line on stderr and exit code 1
    (tracebacks with --debug); every command added, a plugin's too, takes -q/--quiet, --json
    and --debug after its arguments as well as before them."""

    group_class = type  # sub-groups made with group.group() are Groups too

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        add_flag_options(self)

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        add_flag_options(cmd)
        super().add_command(cmd, name)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except LatentError as e:
            if flags(ctx).debug:
                raise
            click.echo(f"Error: {e}", err=True)
            ctx.exit(1)
        except sqlite3.DatabaseError as e:  # damage found by a query after the store opened
            if flags(ctx).debug:
                raise
            click.echo(f"Error: latent.db is damaged or unreadable ({e}); it is the source of truth: restore it "
                       "from a backup (`latent check` reports what it can)", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("Interrupted; every batch reported as committed is kept (the vectors file catches up "
                       "with them when the index is next opened).", err=True)
            ctx.exit(130)
        except BrokenPipeError:  # `latent ... | head`: the reader left; say nothing more
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(0)
        except Exception as e:  # a bug: say so briefly, traceback on --debug
            if flags(ctx).debug:
                raise
            click.echo(f"Error: unexpected {type(e).__name__}: {e} (run with --debug for the traceback)", err=True)
            ctx.exit(1)


# -- shared options ---------------------------------------------------------------------------------------------
def k_option(f):
    return click.option("-k", "k", default=10, show_default=True, type=click.IntRange(1, MAX_K),
                        help=f"Number of neighbours (1 to {MAX_K:,}, as in the Python API).")(f)


def where_option(f):
    return click.option("--where", metavar="EXPR",
                        help="Metadata filter applied before ranking, e.g. \"lang=en and year>=2000\".")(f)


def index_dir(f):
    return click.argument("directory", type=click.Path(file_okay=False, path_type=Path))(f)


# -- progress on stderr -----------------------------------------------------------------------------------------
class Progress:
    """tqdm bars on stderr, one per stage, on a terminal. Elsewhere (a pipe, a log) only the
    long first-time work of a built-in index is told, as a line when it starts and when it ends.
    Nothing with --quiet."""

    def __init__(self, enabled: bool, *, bars: bool = True):
        self.enabled = enabled
        self.use_bars = bars
        self.bars: dict = {}
        self.told: dict[str, float] = {}  # stage -> when its start line was written, until it ends
        self.done: dict[str, int] = {}  # stage -> items done so far

    def __call__(self, stage: str, n: int, total: int | None) -> None:
        if not self.enabled:
            return
        if not self.use_bars:
            if stage.startswith(BUILDING):
                if stage not in self.told:
                    self.told[stage] = time.monotonic()
                    self.done[stage] = 0
                    self.write(f"{stage} ({total:,} items)..." if total else f"{stage}...")
                self.done[stage] += n
                if total and self.done[stage] >= total:
                    self._finished(stage)
            return
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
            tqdm.write(line, file=sys.stderr)
        else:
            click.echo(line, err=True)
        sys.stderr.flush()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()
        for stage in list(self.told):  # a stage that did not say how much it had to do
            self._finished(stage)

    def _finished(self, stage: str) -> None:
        started = self.told.pop(stage)
        self.write(f"{stage}: done in {time.monotonic() - started:.0f} s")


def progress_bars() -> Progress:
    return Progress(enabled=not flags().quiet, bars=sys.stdout.isatty() and sys.stderr.isatty())


def open_index(directory: Path):
    """An index directory, or a built-in index (@words, @sentences, @photos), built on first use."""
    progress = progress_bars()
    try:
        return open_builtin(directory, progress=progress)
    finally:
        progress.close()


# -- output -----------------------------------------------------------------------------------------------------
def note(message: str) -> None:
    """A line on stderr saying how the command read its input (not with --quiet or --json)."""
    given = flags()
    if not (given.quiet or given.json):
        click.echo(message, err=True)


def echo_json(doc) -> None:
    click.echo(json.dumps(doc, ensure_ascii=False, indent=2))


def cell(value, width: int = MAX_CELL) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    text = "" if value is None else value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def render_table(rows: list[dict], columns: list[str]) -> str:
    """An aligned text table; numbers right-aligned."""
    cells = [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    numeric = [all(isinstance(r.get(c), (int, float)) and not isinstance(r.get(c), bool) for r in rows)
               for c in columns]

    def line(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(row) for row in cells])


def label(metadata: dict) -> str:
    """The top three labels an image classifier gave an image, from its metadata."""
    labels = metadata.get("labels") if isinstance(metadata, dict) else None
    if not labels:
        return ""
    return ", ".join(f"{x['label']} {x['p']:.2f}" for x in labels[:3])


# -- --format, --fields, --min-score: one printer for every command that prints items -----------------------
FORMATS = ("table", "json", "jsonl", "csv")
MAX_META_COLUMNS = 4  # metadata columns a table shows unless --fields names them


def _remember(ctx: click.Context, param: click.Parameter, value) -> None:
    if value is not None:
        ctx.meta[f"latent.{param.name}"] = value


def _field_list(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is None:
        return
    names = [n.strip() for n in value.split(",") if n.strip()]
    bad = [n for n in names if not FIELD_NAME.match(n)]
    if bad or not names:
        raise click.BadParameter(f"give metadata field names separated by commas (a.b for nested ones), "
                                 f"got {value!r}", ctx, param)
    ctx.meta["latent.fields"] = names


def output_options(f):
    """--format table|json|jsonl|csv and --fields a,b (read with output_format() and chosen_fields())."""
    f = click.option("--fields", metavar="A,B", expose_value=False, callback=_field_list,
                     help="Metadata fields to show as columns of the table or CSV (a.b for nested ones); "
                          f"by default up to {MAX_META_COLUMNS} short fields that differ from the key.")(f)
    return click.option("--format", "output", type=click.Choice(FORMATS), expose_value=False, callback=_remember,
                        help="table (aligned, the default), json (one document; --json is the same), jsonl (one "
                             "item a line) or csv (a header row, then one item a row).")(f)


def min_score_option(f):
    return click.option("--min-score", type=click.FloatRange(-1.0, 1.0), metavar="S",
                        help="Leave out hits whose cosine similarity is below S.")(f)


def output_format() -> str:
    meta = click.get_current_context().meta
    return meta.get("latent.output") or ("json" if flags().json else "table")


def chosen_fields() -> list[str] | None:
    return click.get_current_context().meta.get("latent.fields")


def _plain(value) -> bool:
    return isinstance(value, (str, int, float, bool))


def metadata_columns(records: list[dict], *, limit: int | None = MAX_META_COLUMNS) -> list[str]:
    """The metadata fields worth a column: --fields when given; else plain (not list or object)
    top-level fields, most common first, leaving out fields that only repeat the key (an `id`
    field that became the key). Images show what the classifier saw (`label`); GloVe words'
    frequency rank says nothing about the neighbours (both stay in JSON)."""
    fields = chosen_fields()
    if fields is not None:
        return fields
    if records and all(r.get("kind") == "image" for r in records):
        return ["label"]
    counts: dict[str, int] = {}
    repeats: dict[str, bool] = {}
    for r in records:
        meta = r.get("metadata") or {}
        if not isinstance(meta, dict):
            continue
        for name, value in meta.items():
            if _plain(value):
                counts[name] = counts.get(name, 0) + 1
                repeats[name] = repeats.get(name, True) and str(value) == r.get("key")
    if records and all(r.get("kind") == "word" for r in records):
        counts.pop("rank", None)
    names = sorted((n for n in counts if not repeats[n]), key=lambda n: (-counts[n], n))
    return names[:limit] if limit else names


def _column_value(record: dict, name: str, image_labels: bool):
    meta = record.get("metadata") or {}
    if image_labels and name == "label" and isinstance(meta, dict) and meta.get("labels"):
        return label(meta)
    return field_value(meta, name) if isinstance(meta, dict) else None


def echo_records(records: list[dict], columns: list[str], *, key: str = "hits", extra: dict | None = None,
                 empty: str = "(no hits)", metadata: bool = True, rows: list[dict] | None = None) -> None:
    """Print items (dicts as JSON gives them) in the chosen --format: json {**extra, key: records},
    jsonl (one record a line), csv or an aligned table of `columns` plus, with `metadata`, one
    column per metadata field (see metadata_columns). `rows`, when given, are what the table and
    CSV show instead of `records` (one row per member of a group). Texts are shown on one line;
    a table cuts long cells, CSV keeps them whole."""
    fmt = output_format()
    if fmt == "json":
        echo_json({**(extra or {}), key: records})
        return
    if fmt == "jsonl":
        for r in records:
            click.echo(json.dumps(r, ensure_ascii=False))
        return
    records = records if rows is None else rows
    meta_cols = metadata_columns(records, limit=None if fmt == "csv" else MAX_META_COLUMNS) if metadata else []
    if "text" in columns and not any(r.get("text") and r.get("text") != r.get("key") for r in records):
        columns = [c for c in columns if c != "text"]
    headers = {(f"metadata.{c}" if c in columns else c): c for c in meta_cols}  # a field named like a column
    columns = columns + list(headers)
    image_labels = chosen_fields() is None
    rows = [{c: _column_value(r, headers[c], image_labels) if c in headers else r.get(c) for c in columns}
            for r in records]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if v is None else v if _plain(v) else json.dumps(v, ensure_ascii=False)
                             for v in (row[c] for c in columns)])
        click.echo(out.getvalue(), nl=False)
    else:
        click.echo(render_table(rows, columns) if rows else empty)


def hits_json(hits: list[Hit], *, collapsed: bool = False) -> list[dict]:
    return [{"rank": h.rank, "key": h.key, "score": round(h.score, 6), "metadata": h.metadata, "text": h.text,
             "kind": h.kind, **({"folded": h.folded} if collapsed else {})} for h in hits]


def hits_table(hits: list[Hit]) -> str:
    """The hits as an aligned table (for commands that print several lists of hits)."""
    if not hits:
        return "(no hits)"
    records = hits_json(hits)
    columns = ["rank", "score", "key", "text"]
    meta_cols = metadata_columns(records)
    rows = [{"rank": r["rank"], "score": r["score"], "key": r["key"], "text": r["text"],
             **{c: _column_value(r, c, True) for c in meta_cols}} for r in records]
    if not any(r["text"] and r["text"] != r["key"] for r in records):
        columns.remove("text")
    return render_table(rows, columns + meta_cols)


def explain_empty(index, hits: list[Hit], where: str | None) -> None:
    """No hits under a filter that names a field no item has: say so (exit 1), not "(no hits)"."""
    if not hits and where:
        reason = index.explain_no_match(where)
        if reason:
            raise FilterError(reason)


def echo_hits(hits: list[Hit], *, collapsed: bool = False, **extra) -> None:
    """The hits in the chosen --format (json: {**extra, "hits": [...]}); with `collapsed`, the
    near-identical hits each one stands for: their keys in JSON (`folded`), their count in a table."""
    records = hits_json(hits, collapsed=collapsed)
    columns = ["rank", "score", "key", "text"]
    if collapsed:
        columns.append("folded")
        if output_format() in ("table", "csv"):
            records = [{**r, "folded": len(r["folded"])} for r in records]
    echo_records(records, columns, extra=extra)
