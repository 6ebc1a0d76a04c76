"""The PNG map: a matplotlib (Agg, no display) scatter of a computed map, coloured by a
metadata field with a legend or colour bar, class names at their clouds, and spread-out
points labelled with their text or an image thumbnail. Needs the `viz` extra.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np

from latent.indexer.errors import require

from .map_render import MISSING_COLOUR, Rendered, check_target, colouring, darker, title_lines, write_atomic
from .maps import DEFAULT_LABELS, Map, MapError, category_spots, label_candidates, label_text, shorten, thumbnail


def render_png(m: Map, path: str | Path, *, color_by: str | None = None, labels: int = DEFAULT_LABELS,
               title: str | None = None, size: tuple[float, float] = (12.0, 8.5), dpi: int = 110,
               thumbnail_px: int | None = None) -> Rendered:
    """A scatter of the map as a PNG: colours by `color_by` (a legend, or a colour bar for
    numbers), category names at their clouds, and `labels` spread-out points labelled with
    their text (or key), image items with a small thumbnail of their file."""
    if labels < 0:
        raise MapError(f"labels must be 0 or more, got {labels}")
    require("matplotlib", "viz", "drawing a PNG map")
    path = check_target(path)
    colours = colouring(m, color_by)
    from matplotlib import patheffects
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage
    from matplotlib.transforms import Bbox

    n = len(m)
    coords = np.asarray(m.coords, dtype=np.float64)
    fig = Figure(figsize=size, dpi=dpi)
    FigureCanvasAgg(fig)
    right = 0.78 if colours.kind == "categorical" else (0.88 if colours.kind == "numeric" else 0.97)
    ax = fig.add_axes((0.03, 0.05, right - 0.03, 0.86))
    head, sub = title_lines(m, title)
    fig.text(0.03, 0.965, head, fontsize=15, fontweight="bold", va="top", parse_math=False)
    fig.text(0.03, 0.928, sub, fontsize=9.5, color="#555555", va="top", parse_math=False)

    # equal scales on both axes (distances are what a map shows), a margin for labels
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    centre, span = (lo + hi) / 2, np.maximum(hi - lo, 1e-9) * 1.12
    box = ax.get_position()
    box_w, box_h = box.width * size[0], box.height * size[1]
    per_inch = max(span[0] / box_w, span[1] / box_h)
    ax.set_xlim(centre[0] - per_inch * box_w / 2, centre[0] + per_inch * box_w / 2)
    ax.set_ylim(centre[1] - per_inch * box_h / 2, centre[1] + per_inch * box_h / 2)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color("#cccccc")
    if m.method == "pca" and m.explained_variance:
        ax.set_xlabel(f"PC1 ({m.explained_variance[0]:.1%} of variance)", fontsize=9, color="#555555")
        ax.set_ylabel(f"PC2 ({m.explained_variance[1]:.1%} of variance)", fontsize=9, color="#555555")
    else:
        method = {"tsne": "t-SNE", "umap": "UMAP"}.get(m.method, m.method)
        ax.set_xlabel(f"{method} 1 (axes have no units: only neighbourhoods matter)", fontsize=9, color="#777777")

    point_size = float(np.clip(14000.0 / max(n, 1), 5.0, 36.0))
    alpha = float(np.clip(1.05 - n / 10000.0, 0.55, 0.9))
    order = np.random.default_rng(m.seed).permutation(n)  # no colour always on top
    if colours.kind == "categorical":  # "other" and missing underneath
        low = {i for i, (name, _, _) in enumerate(colours.categories) if name in ("other", "(missing)")}
        order = np.concatenate([[i for i in order if colours.point_category[i] in low],
                                [i for i in order if colours.point_category[i] not in low]]).astype(int)
    if colours.kind == "numeric":
        values = colours.values
        missing = np.isnan(values)
        if missing.any():
            ax.scatter(coords[missing, 0], coords[missing, 1], s=point_size, c=MISSING_COLOUR, linewidths=0)
        idx = order[~missing[order]]
        sc = ax.scatter(coords[idx, 0], coords[idx, 1], s=point_size, c=values[idx], cmap=colours.cmap,
                        vmin=colours.vmin, vmax=colours.vmax, alpha=alpha, linewidths=0)
        cax = fig.add_axes((0.905, 0.15, 0.018, 0.66))
        bar = fig.colorbar(sc, cax=cax)
        bar.set_label(shorten(colours.field, 40), fontsize=10, parse_math=False)
        bar.ax.tick_params(labelsize=8)
    else:
        ax.scatter(coords[order, 0], coords[order, 1], s=point_size, c=[colours.colours[i] for i in order],
                   alpha=alpha, linewidths=0)
    legend_names = []
    if colours.kind == "categorical":
        handles = [Line2D([], [], marker="o", linestyle="", markersize=7, markerfacecolor=col,
                          markeredgewidth=0, label=f"{shorten(name, 28)} ({count:,})")
                   for name, col, count in colours.categories]
        legend = fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(right + 0.01, 0.91),
                            frameon=False, fontsize=9, title=shorten(colours.field, 30), title_fontsize=10,
                            alignment="left", handletextpad=0.3, labelspacing=0.45, borderaxespad=0)
        for text in legend.get_texts():
            text.set_parse_math(False)
        legend.get_title().set_parse_math(False)
        legend_names = [name for name, _, _ in colours.categories]

    renderer = fig.canvas.get_renderer()
    area = ax.get_window_extent(renderer)
    taken: list = []

    def free(box) -> bool:
        if box.x0 < area.x0 or box.x1 > area.x1 or box.y0 < area.y0 or box.y1 > area.y1:
            return False
        grown = Bbox.from_extents(box.x0 - 2, box.y0 - 2, box.x1 + 2, box.y1 + 2)
        return not any(grown.overlaps(t) for t in taken)

    stroke = [patheffects.withStroke(linewidth=2.5, foreground="white")]
    if colours.kind == "categorical" and len(colours.categories) > 1:  # name each class at its cloud
        named = [i for i, (name, _, _) in enumerate(colours.categories) if name not in ("other", "(missing)")]
        spots = category_spots(coords, colours.point_category, len(colours.categories), m.seed)
        for c in named:
            if c not in spots:
                continue
            name, col, _ = colours.categories[c]
            for dx, dy in ((0, 0), (0, 10), (0, -10), (14, 0), (-14, 0)):
                t = ax.annotate(shorten(name, 24), xy=coords[spots[c]],
                                xytext=(dx, dy), textcoords="offset points", ha="center", va="center",
                                fontsize=10.5, fontweight="bold", color=darker(col), path_effects=stroke,
                                parse_math=False, zorder=5)
                box = t.get_window_extent(renderer)
                if free(box):
                    taken.append(box)
                    break
                t.remove()

    placed, thumbs = [], []
    cell = thumbnail_px or (80 if n <= 60 else 64 if n <= 600 else 52)
    offsets_text = ((5, 4, "left", "bottom"), (-5, 4, "right", "bottom"), (5, -4, "left", "top"),
                    (-5, -4, "right", "top"))
    pts_per_px = 72.0 / dpi
    directions = ((1, 1), (-1, 1), (1, -1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))
    spots_image = [(scale, (dx * reach * cell * scale * pts_per_px, dy * reach * cell * scale * pts_per_px))
                   for scale in (1.0, 0.7) for reach in (0, 0.7, 1.2)
                   for dx, dy in (directions if reach else ((0, 0),))]
    if labels:
        for i in label_candidates(coords, labels, m.seed):
            if len(placed) + len(thumbs) >= labels:
                break
            xy = coords[i]
            if m.kinds[i] == "image":
                picture = thumbnail(m.paths[i], cell)
                if picture is not None:
                    box_colour = colours.colours[i] if colours.kind != "none" else "#444444"
                    pixels = np.asarray(picture)
                    for scale, (dx, dy) in spots_image:  # on the point, then nearby, then smaller
                        image = OffsetImage(pixels, zoom=pts_per_px * scale)
                        ab = AnnotationBbox(image, xy, xybox=(dx, dy), boxcoords="offset points", pad=0.15,
                                            frameon=True, zorder=6,
                                            bboxprops={"edgecolor": box_colour, "linewidth": 1.2,
                                                       "facecolor": "white"},
                                            arrowprops=None if (dx, dy) == (0, 0) else
                                            {"arrowstyle": "-", "color": "#888888", "linewidth": 0.6})
                        ax.add_artist(ab)
                        box = ab.get_window_extent(renderer)
                        if free(box):
                            taken.append(box)
                            thumbs.append(m.keys[i])
                            break
                        ab.remove()
                    continue
            text = label_text(m, i)
            for dx, dy, ha, va in offsets_text:
                t = ax.annotate(text, xy=xy, xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                                fontsize=8, color="#222222", parse_math=False, zorder=6,
                                bbox={"boxstyle": "round,pad=0.18", "facecolor": "white", "edgecolor": "#999999",
                                      "linewidth": 0.4, "alpha": 0.85})
                box = t.get_window_extent(renderer)
                if free(box):
                    taken.append(box)
                    placed.append(m.keys[i])
                    ax.plot([xy[0]], [xy[1]], marker="o", markersize=3.2, markerfacecolor="none",
                            markeredgecolor="#222222", markeredgewidth=0.7, zorder=6)
                    break
                t.remove()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. glyphs the font lacks
        fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    data = buf.getvalue()
    write_atomic(path, data)
    return Rendered(path=path, points=n, labels=placed, thumbnails=thumbs, legend=legend_names, bytes=len(data))


__all__ = ["render_png"]
