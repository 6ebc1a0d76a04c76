"""What the two map renderers (map_png.py, map_html.py) share: the points' colours by a
metadata field (named categories from a palette, or a numeric colour scale), the title
lines, and writing the file. Numeric colours need matplotlib (the `viz` extra).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from latent.indexer.errors import require

from .maps import Map, MapError

MAX_CATEGORIES = 20  # legend entries before the rest become "other"

# Twenty colours that stay apart on white (tab10 without its grey, then darker and
# lighter companions); grey is kept for "other" and for missing values.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
           "#17becf", "#393b79", "#637939", "#e7ba52", "#843c39", "#7b4173", "#ff9896", "#98df8a",
           "#aec7e8", "#c5b0d5", "#ffbb78", "#222222")
OTHER_COLOUR = "#b0b0b0"
MISSING_COLOUR = "#dddddd"
PLAIN_COLOUR = "#3b6ea5"


@dataclass
class Rendered:
    """What a render wrote: the file, how many points, and which keys got a label or a thumbnail."""

    path: Path
    points: int
    labels: list[str] = field(default_factory=list)
    thumbnails: list[str] = field(default_factory=list)
    legend: list[str] = field(default_factory=list)
    bytes: int = 0


# -- colours ----------------------------------------------------------------------------------------
def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _category_name(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return " ".join(str(v).split()) or '""'


@dataclass
class Colouring:
    """Colours of a map's points by one metadata field (or one plain colour)."""

    kind: str  # "none", "categorical" or "numeric"
    field: str | None
    colours: list[str]  # per point, "#rrggbb"
    categories: list[tuple[str, str, int]] = field(default_factory=list)  # (name, colour, count), legend order
    point_category: list[int] = field(default_factory=list)  # per point, index into categories
    values: np.ndarray | None = None  # numeric: per point, NaN where missing
    vmin: float = 0.0
    vmax: float = 1.0
    cmap: str = "viridis"


def _colour_scale(name: str):
    """matplotlib's colour map `name`, and its function from a colour to "#rrggbb"."""
    matplotlib = require("matplotlib", "viz", "colouring a map by numbers")
    from matplotlib.colors import to_hex

    return matplotlib.colormaps[name], to_hex


def scale_stops(c: Colouring, steps: int = 9) -> list[str]:
    """`steps` evenly spaced colours of a numeric colouring's scale, low to high."""
    cmap, to_hex = _colour_scale(c.cmap)
    return [to_hex(cmap(t)) for t in np.linspace(0, 1, steps)]


def colouring(m: Map, color_by: str | None) -> Colouring:
    """Categorical (strings, booleans, mixed, or at most MAX_CATEGORIES distinct whole numbers
    such as the clusters of `latent cluster`: up to MAX_CATEGORIES named, the rest "other") or
    numeric (a colour scale) colours for `color_by`; MapError when no point has it."""
    n = len(m)
    if not color_by:
        return Colouring("none", None, [PLAIN_COLOUR] * n)
    raw = m.values(color_by)
    present = [v for v in raw if v is not None]
    if not present:
        known = ", ".join(m.fields()[:12]) or "none"
        raise MapError(f"no mapped item has a metadata field {color_by!r}; fields present: {known}")
    if any(isinstance(v, (dict, list)) for v in present):
        raise MapError(f"metadata field {color_by!r} holds lists or objects; colour by a field of plain values "
                       f"(a nested one as a.b); fields present: {', '.join(m.fields()[:12])}")
    whole = all(_is_number(v) and float(v).is_integer() for v in present)
    # a few whole numbers (a cluster number, a class id, a rating) are classes, not a scale
    few_whole = whole and len(set(present)) <= MAX_CATEGORIES
    if all(_is_number(v) for v in present) and len(set(present)) > 2 and not few_whole:
        values = np.array([float(v) if _is_number(v) else np.nan for v in raw], dtype=np.float64)
        vmin, vmax = float(np.nanmin(values)), float(np.nanmax(values))
        cmap, to_hex = _colour_scale("viridis")
        span = vmax - vmin or 1.0
        colours = [MISSING_COLOUR if np.isnan(v) else to_hex(cmap((v - vmin) / span)) for v in values]
        return Colouring("numeric", color_by, colours, values=values, vmin=vmin, vmax=vmax)
    names = [None if v is None else _category_name(v) for v in raw]
    counts: dict[str, int] = {}
    for name in names:
        if name is not None:
            counts[name] = counts.get(name, 0) + 1
    if len(counts) > MAX_CATEGORIES:
        top = sorted(counts, key=lambda c: (-counts[c], c))[:MAX_CATEGORIES - 1]
    else:
        top = list(counts)
    shown = sorted(top, key=(lambda c: int(c)) if whole else (lambda c: (c.lower(), c)))
    palette = PALETTE[:9] + ("#7f7f7f",) if len(shown) <= 10 else PALETTE  # tab10 when it suffices
    categories = [(c, palette[i % len(palette)], counts[c]) for i, c in enumerate(shown)]
    slot = {c: i for i, c in enumerate(shown)}
    other = sum(counts[c] for c in counts if c not in slot)
    if other:
        categories.append(("other", OTHER_COLOUR, other))
    missing = sum(name is None for name in names)
    if missing:
        categories.append(("(missing)", MISSING_COLOUR, missing))
    point_category = []
    for name in names:
        if name is None:
            point_category.append(len(categories) - 1)
        elif name in slot:
            point_category.append(slot[name])
        else:
            point_category.append(len(shown))
    colours = [categories[c][1] for c in point_category]
    return Colouring("categorical", color_by, colours, categories=categories, point_category=point_category)


def darker(colour: str, factor: float = 0.75) -> str:
    """A "#rrggbb" colour darkened (for text drawn in a class's colour)."""
    r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return "#{:02x}{:02x}{:02x}".format(*(round(v * factor) for v in (r, g, b)))


# -- the title and the file ------------------------------------------------------------------------
def title_lines(m: Map, title: str | None) -> tuple[str, str]:
    """The heading (`title`, else the index's name and the method) and the line under it."""
    name = Path(m.source).name or m.source
    method = {"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}[m.method]
    head = title if title is not None else f"{name}: {method} map"
    shown = f"{len(m):,} items" if len(m) == m.total else f"{len(m):,} of {m.total:,} items (seed {m.seed})"
    parts = [shown, f"encoder {m.encoder}" if m.encoder else ""]
    if m.where:
        parts.append(f"where {m.where}")
    if m.explained_variance:
        parts.append(f"PC1+PC2 explain {sum(m.explained_variance):.0%} of variance")
    return head, " · ".join(p for p in parts if p)


def check_target(path: str | Path) -> Path:
    """`path` as a Path, checked before any drawing: its folder exists and it is not a folder."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise MapError(f"cannot write {path}: the folder {path.parent} does not exist; create it first")
    if path.is_dir():
        raise MapError(f"cannot write {path}: it is a folder; give a file name")
    return path


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` whole or not at all (a temporary file renamed over it)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise MapError(f"cannot write {path}: {e.strerror or e}") from None


__all__ = ["MAX_CATEGORIES", "MISSING_COLOUR", "OTHER_COLOUR", "PALETTE", "PLAIN_COLOUR", "Colouring", "Rendered",
           "check_target", "colouring", "darker", "scale_stops", "title_lines", "write_atomic"]
