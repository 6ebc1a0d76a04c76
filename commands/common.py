"""What every `latent` command shares: the command group class (the error policy, and -q/--quiet,
--json and --debug on every command), the shared options, progress bars on stderr, and the
rendering of tables, hits and JSON documents."""

from __future__ import annotations

import json
import os
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
from latent.search.query import MAX_K, Hit

MAX_CELL = 60


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
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def render_table(rows: list[dict], columns: list[str]) -> str:
    """An aligned text table; numbers right-aligned."""
    cells = [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    numeric = [all(isinstance(r.get(c), (int, float)) for r in rows) for c in columns]

    def line(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(row) for row in cells])


def label(metadata: dict) -> str:
    """The top three labels an image classifier gave an image, from its metadata."""
    labels = metadata.get("labels") if isinstance(metadata, dict) else None
    if not labels:
        return ""
    return ", ".join(f"{x['label']} {x['p']:.2f}" for x in labels[:3])


def hits_table(hits: list[Hit]) -> str:
    if not hits:
        return "(no hits)"
    rows = [{"rank": h.rank, "score": f"{h.score:.4f}", "key": h.key, "text": h.text or "",
             "metadata": h.metadata or "", "label": label(h.metadata)} for h in hits]
    columns = ["rank", "score", "key"]
    if any(h.text and h.text != h.key for h in hits):
        columns.append("text")
    if all(h.kind == "image" for h in hits):  # image metadata is long: show what the CNN saw
        columns.append("label")
    elif all(h.kind == "word" and set(h.metadata) <= {"rank"} for h in hits):
        pass  # the built-in words' frequency rank says nothing about the neighbours (--json has it)
    elif any(h.metadata for h in hits):
        columns.append("metadata")
    return render_table(rows, columns)


def hits_json(hits: list[Hit]) -> list[dict]:
    return [{"rank": h.rank, "key": h.key, "score": round(h.score, 6), "metadata": h.metadata, "text": h.text,
             "kind": h.kind} for h in hits]


def explain_empty(index, hits: list[Hit], where: str | None) -> None:
    """No hits under a filter that names a field no item has: say so (exit 1), not "(no hits)"."""
    if not hits and where:
        reason = index.explain_no_match(where)
        if reason:
            raise FilterError(reason)


def echo_hits(hits: list[Hit], **extra) -> None:
    """The hits as a table, or with --json as {**extra, "hits": [...]}."""
    if flags().json:
        echo_json({**extra, "hits": hits_json(hits)})
    else:
        click.echo(hits_table(hits))
