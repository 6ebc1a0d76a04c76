"""2-D maps of an index: PCA, t-SNE or UMAP coordinates of (a seeded sample of) its
items, drawn as a PNG (matplotlib, Agg, no display) or as one self-contained offline
HTML page (inline data, script and style; pan, zoom, hover).

    m = compute_map(index, method="tsne", sample=5000, where="lang=en")
    render_png(m, "map.png", color_by="topic", labels=25)
    render_html(m, "map.html", color_by="topic")

Vectors are L2-normalised first, so distances on the map follow the cosine similarity
that search ranks by. PCA is exact (numpy SVD); t-SNE (scikit-learn) runs on the top
50 principal components; UMAP needs the optional `umap-learn` package.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from latent.indexer.errors import LatentError
from latent.indexer.index import Index


METHODS = ("pca", "tsne", "umap")
DEFAULT_SAMPLE = 5000
DEFAULT_LABELS = 20
MAX_CATEGORIES = 20  # legend entries before the rest become "other"
TSNE_PCA_DIMS = 50  # t-SNE runs on this many principal components
HTML_MAX_THUMBNAILS = 2000  # image thumbnails embedded in an HTML map (each ~2-4 kB)

# Twenty colours that stay apart on white (tab10 without its grey, then darker and
# lighter companions); grey is kept for "other" and for missing values.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
           "#17becf", "#393b79", "#637939", "#e7ba52", "#843c39", "#7b4173", "#ff9896", "#98df8a",
           "#aec7e8", "#c5b0d5", "#ffbb78", "#222222")
OTHER_COLOUR = "#b0b0b0"
MISSING_COLOUR = "#dddddd"
PLAIN_COLOUR = "#3b6ea5"


class MapError(LatentError):
    """A map cannot be computed or drawn as asked."""


@dataclass
class Map:
    """2-D coordinates of items of an index, with what is needed to draw and label them.

    Rows are in id order. `total` is how many items were eligible (after `where`) before
    sampling; `explained_variance` is the share of variance along each PCA axis.
    """

    ids: np.ndarray  # int64 (n,)
    keys: list[str]
    coords: np.ndarray  # float32 (n, 2)
    kinds: list[str]
    texts: list[str | None]
    paths: list[str | None]
    metadata: list[dict]
    method: str
    total: int
    explained_variance: tuple[float, float] | None = None
    seed: int = 0
    where: str | None = None
    source: str = ""
    encoder: str = ""
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.ids)

    def values(self, name: str) -> list:
        """The metadata field `name` of every point (dots reach nested objects); None where absent."""
        return [_field(m, name) for m in self.metadata]

    def fields(self) -> list[str]:
        """Metadata fields present on any point, most common first."""
        counts: dict[str, int] = {}
        for m in self.metadata:
            for k in m:
                counts[k] = counts.get(k, 0) + 1
        return sorted(counts, key=lambda k: (-counts[k], k))


@dataclass
class Rendered:
    """What a render wrote: the file, how many points, and which keys got a label or a thumbnail."""

    path: Path
    points: int
    labels: list[str] = field(default_factory=list)
    thumbnails: list[str] = field(default_factory=list)
    legend: list[str] = field(default_factory=list)
    bytes: int = 0


# -- computing --------------------------------------------------------------------------------------
def compute_map(index: Index, *, method: str = "pca", sample: int = DEFAULT_SAMPLE, seed: int = 0,
                where: str | None = None, ids: Sequence[int] | None = None,
                perplexity: float | None = None) -> Map:
    """2-D coordinates of the items of `index` (those matching `where`, and among `ids`
    when given), by PCA, t-SNE or UMAP.

    At most `sample` items are mapped: a uniform sample drawn with `seed` when more match.
    The same seed gives the same map.
    """
    started = time.perf_counter()
    method = (method or "").lower().replace("-", "")
    if method not in METHODS:
        raise MapError(f"unknown map method {method!r}; use one of {', '.join(METHODS)}")
    if int(sample) < 3:
        raise MapError(f"--sample must be at least 3 (a map needs 3 points), got {sample}")
    with index.snapshot():
        allowed = index.matching_ids(where)
        chosen = ids
        ids = index.ids() if allowed is None else np.sort(np.asarray(allowed, dtype=np.int64))
        if chosen is not None:
            ids = np.intersect1d(ids, np.asarray(chosen, dtype=np.int64))
        total = len(ids)
        if total < 3:
            what = f"only {total} item(s) match --where {where!r}" if allowed is not None else \
                f"only {total} of the items asked for exist" if chosen is not None else \
                f"{index.directory} holds only {total} item(s)"
            raise MapError(f"{what}; a map needs at least 3 (add items{' or loosen the filter' if where else ''})")
        if total > sample:
            ids = np.sort(np.random.default_rng(seed).choice(ids, size=int(sample), replace=False))
        vectors = index.vectors_of(ids)
        rows = index.fetch(ids)
    coords, explained = project(vectors, method=method, seed=seed, perplexity=perplexity)
    return Map(
        ids=np.asarray(ids, dtype=np.int64), keys=[rows[int(i)]["key"] for i in ids], coords=coords,
        kinds=[rows[int(i)]["kind"] for i in ids], texts=[rows[int(i)]["text"] for i in ids],
        paths=[rows[int(i)]["path"] for i in ids], metadata=[rows[int(i)]["metadata"] for i in ids],
        method=method, total=total, explained_variance=explained, seed=seed, where=where,
        source=str(index.directory), encoder=index.encoder_name, seconds=time.perf_counter() - started,
    )


def project(vectors: np.ndarray, *, method: str = "pca", seed: int = 0,
            perplexity: float | None = None) -> tuple[np.ndarray, tuple[float, float] | None]:
    """(n, 2) float32 coordinates of `vectors` (L2-normalised first) and, for PCA, the
    explained variance ratio of the two axes."""
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or len(x) < 3:
        raise MapError(f"a map needs at least 3 vectors, got {len(x)}")
    if not np.isfinite(x).all():
        raise MapError("the index holds vectors with NaN or infinite values; rebuild it with `latent rebuild` "
                       "or re-add those items")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms > 0, norms, 1.0)
    if method == "pca":
        coords, ratio = _pca(x, 2)
        return coords.astype(np.float32), (float(ratio[0]), float(ratio[1]))
    if method == "tsne":
        return _tsne(x, seed, perplexity).astype(np.float32), None
    if method == "umap":
        return _umap(x, seed).astype(np.float32), None
    raise MapError(f"unknown map method {method!r}; use one of {', '.join(METHODS)}")


def _pca(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k principal component scores (signs fixed: each axis's largest loading positive)."""
    centred = x - x.mean(axis=0)
    if len(centred) > centred.shape[1]:  # eigenvectors of the d x d covariance: cheaper for tall data
        cov = centred.T @ centred
        evals, evecs = np.linalg.eigh(cov)
        order = np.argsort(evals)[::-1]
        evals, evecs = np.clip(evals[order], 0, None), evecs[:, order]
        components, variance = evecs[:, :k], evals
    else:
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
        components, variance = vt[:k].T, s ** 2
    if components.shape[1] < k:  # fewer dimensions than axes asked for
        components = np.hstack([components, np.zeros((components.shape[0], k - components.shape[1]))])
        variance = np.concatenate([variance, np.zeros(k)])
    biggest = np.argmax(np.abs(components), axis=0)
    signs = np.sign(components[biggest, np.arange(k)])
    components = components * np.where(signs == 0, 1.0, signs)
    total = float(variance.sum())
    ratio = variance[:k] / total if total > 0 else np.zeros(k)
    return centred @ components, ratio


def _openmp_threads(n: int = 0):
    """Few OpenMP threads for scikit-learn's t-SNE and k-means: their many short parallel
    loops spin-wait. Measured on 2 busy cores: a 400-point t-SNE took 1.2 s on 1 thread
    and 15 s on 2; 3,000 points 11.6 s on 1 thread, 10.0 s on 2. So one thread below
    2,000 points, else half the cores (at most 4)."""
    from threadpoolctl import threadpool_limits

    threads = 1 if n < 2000 else max(1, min(4, (os.cpu_count() or 1) // 2))
    return threadpool_limits(limits=threads, user_api="openmp")


def _tsne(x: np.ndarray, seed: int, perplexity: float | None) -> np.ndarray:
    from sklearn.manifold import TSNE

    n = len(x)
    if perplexity is None:
        perplexity = float(min(30.0, max(1.0, (n - 1) / 3)))
    if not 0 < perplexity < n:
        raise MapError(f"t-SNE perplexity must be between 0 and the number of points ({n}), got {perplexity}")
    if x.shape[1] > TSNE_PCA_DIMS and n > TSNE_PCA_DIMS:
        x, _ = _pca(x, TSNE_PCA_DIMS)
    with warnings.catch_warnings(), _openmp_threads(n):
        warnings.simplefilter("ignore")
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                    random_state=seed)
        return tsne.fit_transform(x)


def _umap(x: np.ndarray, seed: int) -> np.ndarray:
    try:
        import umap
    except ImportError:
        raise MapError("method 'umap' needs the optional umap-learn package: `pip install umap-learn`, "
                       "or use --method pca or tsne") from None
    n = len(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reducer = umap.UMAP(n_components=2, n_neighbors=max(2, min(15, n - 1)), metric="cosine",
                            random_state=seed, init="spectral" if n > 10 else "random")
        return np.asarray(reducer.fit_transform(x), dtype=np.float64)


# -- colours ----------------------------------------------------------------------------------------
def _field(metadata: dict, name: str):
    if not isinstance(metadata, dict):
        return None
    if name in metadata:
        return metadata[name]
    value = metadata
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


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


def _need_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MapError("drawing maps needs matplotlib: `pip install matplotlib`") from None


def colouring(m: Map, color_by: str | None) -> Colouring:
    """Categorical (strings, booleans, mixed: up to MAX_CATEGORIES named, the rest "other")
    or numeric (a colour scale) colours for `color_by`; MapError when no point has it."""
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
    if all(_is_number(v) for v in present) and len(set(present)) > 2:
        _need_matplotlib()
        values = np.array([float(v) if _is_number(v) else np.nan for v in raw], dtype=np.float64)
        vmin, vmax = float(np.nanmin(values)), float(np.nanmax(values))
        from matplotlib import colormaps
        from matplotlib.colors import to_hex

        cmap = colormaps["viridis"]
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
    shown = sorted(top, key=lambda c: (c.lower(), c))
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


# -- labels -------------------------------------------------------------------------------------------
def unit_square(coords: np.ndarray) -> np.ndarray:
    """Coordinates scaled by one factor (shapes kept) into [0, 1], the shorter side centred."""
    c = np.asarray(coords, dtype=np.float64)
    lo, hi = c.min(axis=0), c.max(axis=0)
    span = float((hi - lo).max()) or 1.0
    return (c - (lo + hi) / 2) / span + 0.5


def _farthest_first(points: np.ndarray, start: int, k: int) -> list[int]:
    """Farthest-point order: each next point is the one farthest from those chosen."""
    k = min(k, len(points))
    order = [start]
    dist = np.linalg.norm(points - points[start], axis=1)
    for _ in range(k - 1):
        nxt = int(np.argmax(dist))
        if dist[nxt] <= 0:
            break
        order.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(points - points[nxt], axis=1))
    return order


def label_candidates(coords: np.ndarray, k: int, seed: int = 0) -> list[int]:
    """Rows worth labelling, spread out over the map and sitting where the points are:
    the medoids of ~3k k-means clusters in farthest-first order, largest cluster first."""
    n = len(coords)
    if k <= 0 or n == 0:
        return []
    z = unit_square(coords)
    clusters = min(n, 3 * k)
    if clusters >= n:
        centre = int(np.argmin(np.linalg.norm(z - np.median(z, axis=0), axis=1)))
        rest = _farthest_first(z, centre, n)
        return rest + [i for i in range(n) if i not in set(rest)]
    from sklearn.cluster import KMeans

    with warnings.catch_warnings(), _openmp_threads():
        warnings.simplefilter("ignore")
        km = KMeans(n_clusters=clusters, n_init=1, random_state=seed).fit(z)
    medoids, sizes = [], []
    for c in range(clusters):
        members = np.flatnonzero(km.labels_ == c)
        if len(members) == 0:
            continue
        best = members[np.argmin(np.linalg.norm(z[members] - km.cluster_centers_[c], axis=1))]
        medoids.append(int(best))
        sizes.append(len(members))
    medoids = np.array(medoids)
    order = _farthest_first(z[medoids], int(np.argmax(sizes)), len(medoids))
    return [int(medoids[i]) for i in order]


def _short(text: str, width: int) -> str:
    """One line of at most `width` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def label_order(coords: np.ndarray, seed: int = 0, spread: int = 2000) -> list[int]:
    """Every row, in the order to try labels in: the first `spread` farthest-first from the
    middle (so the labels that fit are spread out), then the rest in seeded random order."""
    n = len(coords)
    if n == 0:
        return []
    z = unit_square(coords)
    centre = int(np.argmin(np.linalg.norm(z - np.median(z, axis=0), axis=1)))
    first = _farthest_first(z, centre, min(n, spread))
    seen = set(first)
    rest = [int(i) for i in np.random.default_rng(seed).permutation(n) if int(i) not in seen]
    return [int(i) for i in first] + rest


def label_text(m: Map, i: int, width: int = 32) -> str:
    return _short(m.texts[i] if m.kinds[i] != "word" and m.texts[i] else m.keys[i], width)


# -- thumbnails ------------------------------------------------------------------------------------
def thumbnail(path: str | None, size: int = 64):
    """A small RGB Pillow image of an image file (at most size x size), or None when it
    cannot be read (moved, deleted, not an image, too large)."""
    if not path:
        return None
    from PIL import Image, ImageOps

    from latent.indexer.images import MAX_PIXELS, to_rgb

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.size[0] * image.size[1] > MAX_PIXELS:
                    return None
                image.draft("RGB", (size * 2, size * 2))  # JPEG: decode at a reduced scale
                image.load()
                picture = to_rgb(ImageOps.exif_transpose(image))
        picture.thumbnail((size, size), Image.Resampling.LANCZOS)
        return picture
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError, Image.DecompressionBombError,
            Image.DecompressionBombWarning):  # an unreadable file just goes without a thumbnail
        return None


def _data_uri(picture, quality: int = 80) -> str:
    buf = io.BytesIO()
    picture.save(buf, format="JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# -- PNG ------------------------------------------------------------------------------------------------
def _title(m: Map, title: str | None) -> tuple[str, str]:
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


def _check_target(path: str | Path) -> Path:
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise MapError(f"cannot write {path}: the folder {path.parent} does not exist; create it first")
    if path.is_dir():
        raise MapError(f"cannot write {path}: it is a folder; give a file name")
    return path


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise MapError(f"cannot write {path}: {e.strerror or e}") from None


def _category_spots(coords: np.ndarray, groups: list[int], ncat: int, seed: int) -> dict[int, int]:
    """For each category that forms a cloud, the row at its densest spot (most same-category
    points nearby); categories strewn over the map get none."""
    z = unit_square(coords)
    spots = {}
    groups = np.asarray(groups)
    rng = np.random.default_rng(seed)
    for c in range(ncat):
        members = np.flatnonzero(groups == c)
        if len(members) < 3:
            continue
        if len(members) > 600:
            members = np.sort(rng.choice(members, 600, replace=False))
        d = np.linalg.norm(z[members, None, :] - z[None, members, :], axis=2)
        near = (d < 0.08).sum(axis=1)
        best = int(np.argmax(near - 1e-3 * d.mean(axis=1)))
        if near[best] >= max(3, 0.25 * len(members)):  # a cloud of its own, not a scatter
            spots[c] = int(members[best])
    return spots


def render_png(m: Map, path: str | Path, *, color_by: str | None = None, labels: int = DEFAULT_LABELS,
               title: str | None = None, size: tuple[float, float] = (12.0, 8.5), dpi: int = 110,
               thumbnail_px: int | None = None) -> Rendered:
    """A scatter of the map as a PNG: colours by `color_by` (a legend, or a colour bar for
    numbers), category names at their clouds, and `labels` spread-out points labelled with
    their text (or key), image items with a small thumbnail of their file."""
    if labels < 0:
        raise MapError(f"--labels must be 0 or more, got {labels}")
    _need_matplotlib()
    path = _check_target(path)
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
    head, sub = _title(m, title)
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
        bar.set_label(_short(colours.field, 40), fontsize=10, parse_math=False)
        bar.ax.tick_params(labelsize=8)
    else:
        ax.scatter(coords[order, 0], coords[order, 1], s=point_size, c=[colours.colours[i] for i in order],
                   alpha=alpha, linewidths=0)
    legend_names = []
    if colours.kind == "categorical":
        handles = [Line2D([], [], marker="o", linestyle="", markersize=7, markerfacecolor=col,
                          markeredgewidth=0, label=f"{_short(name, 28)} ({count:,})")
                   for name, col, count in colours.categories]
        legend = fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(right + 0.01, 0.91),
                            frameon=False, fontsize=9, title=_short(colours.field, 30), title_fontsize=10,
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
        spots = _category_spots(coords, colours.point_category, len(colours.categories), m.seed)
        for c in named:
            if c not in spots:
                continue
            name, col, _ = colours.categories[c]
            for dx, dy in ((0, 0), (0, 10), (0, -10), (14, 0), (-14, 0)):
                t = ax.annotate(_short(name, 24), xy=coords[spots[c]],
                                xytext=(dx, dy), textcoords="offset points", ha="center", va="center",
                                fontsize=10.5, fontweight="bold", color=_darker(col), path_effects=stroke,
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
    _write_atomic(path, data)
    return Rendered(path=path, points=n, labels=placed, thumbnails=thumbs, legend=legend_names, bytes=len(data))


def _darker(colour: str, factor: float = 0.75) -> str:
    """A "#rrggbb" colour darkened (for text drawn in a class's colour)."""
    r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return "#{:02x}{:02x}{:02x}".format(*(round(v * factor) for v in (r, g, b)))


# -- HTML -----------------------------------------------------------------------------------------------
def _json_for_script(value) -> str:
    """JSON that is safe inside <script>: no '<', '>', '&' or line separators left raw."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return (text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _shown_metadata(metadata: dict, limit: int = 12, width: int = 90) -> list[list[str]]:
    out = []
    for k, v in metadata.items():
        if len(out) >= limit:
            break
        if k in ("sha256", "mtime") or (k == "labels" and "label" in metadata):
            continue
        text = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
        text = " ".join(text.split())
        out.append([str(k)[:40], text if len(text) <= width else text[: width - 1] + "…"])
    return out


def render_html(m: Map, path: str | Path, *, color_by: str | None = None, title: str | None = None,
                max_thumbnails: int = HTML_MAX_THUMBNAILS, text_chars: int = 300) -> Rendered:
    """One self-contained HTML file (no network: inline data, script and style, thumbnails
    as data: URIs): a canvas scatter with drag to pan, wheel to zoom, hover for the item,
    a legend (click a class to single it out) and a find box."""
    path = _check_target(path)
    colours = colouring(m, color_by)
    n = len(m)
    z = unit_square(m.coords) if n else np.zeros((0, 2))
    thumbs: list[str | None] = [None] * n
    thumbed = []
    for i in range(n):
        if m.kinds[i] == "image" and len(thumbed) < max_thumbnails:
            picture = thumbnail(m.paths[i], 64)
            if picture is not None:
                thumbs[i] = _data_uri(picture)
                thumbed.append(m.keys[i])
    head, sub = _title(m, title)
    legend: dict = {"kind": colours.kind, "field": colours.field}
    if colours.kind == "categorical":
        spots = _category_spots(m.coords, colours.point_category, len(colours.categories), m.seed) if n else {}
        legend["items"] = [{"name": name, "colour": col, "dark": _darker(col), "count": count,
                            "spot": spots.get(c) if name not in ("other", "(missing)") else None}
                           for c, (name, col, count) in enumerate(colours.categories)]
    elif colours.kind == "numeric":
        from matplotlib import colormaps
        from matplotlib.colors import to_hex

        cmap = colormaps[colours.cmap]
        legend.update(min=colours.vmin, max=colours.vmax, stops=[to_hex(cmap(t)) for t in np.linspace(0, 1, 9)])
    texts = []
    for i in range(n):
        t = m.texts[i] if m.texts[i] and m.texts[i] != m.keys[i] else ""
        t = " ".join(str(t).split())
        texts.append(t if len(t) <= text_chars else t[: text_chars - 1] + "…")
    data = {
        "title": head, "subtitle": sub, "method": m.method, "legend": legend,
        "x": [round(float(v), 5) for v in z[:, 0]], "y": [round(float(v), 5) for v in z[:, 1]],
        "colour": colours.colours if colours.kind != "categorical" else None,
        "category": colours.point_category if colours.kind == "categorical" else None,
        "key": list(m.keys), "kind": list(m.kinds), "text": texts,
        "meta": [_shown_metadata(md) for md in m.metadata], "thumb": thumbs,
        "label": [label_text(m, i, 30) for i in range(n)], "order": label_order(m.coords, m.seed),
    }
    script = _HTML_SCRIPT
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    csp = (f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; img-src data:; "
           "connect-src 'none'; form-action 'none'; base-uri 'none'")
    page = (_HTML_TEMPLATE
            .replace("%CSP%", html.escape(csp, quote=True))
            .replace("%TITLE%", html.escape(head))
            .replace("%SUBTITLE%", html.escape(sub))
            .replace("%STYLE%", _HTML_STYLE)
            .replace("%DATA%", _json_for_script(data))
            .replace("%SCRIPT%", script))
    raw = page.encode("utf-8")
    _write_atomic(path, raw)
    names = [c["name"] for c in legend.get("items", [])]
    return Rendered(path=path, points=n, thumbnails=thumbed, legend=names, bytes=len(raw))


_HTML_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="%CSP%">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>%TITLE%</title>
<style>%STYLE%</style>
</head>
<body>
<header>
  <div class="titles"><h1>%TITLE%</h1><div class="sub">%SUBTITLE%</div></div>
  <div class="tools">
    <input id="find" type="search" placeholder="find key or text" autocomplete="off">
    <label><input id="labels" type="checkbox" checked> labels</label>
    <label id="thumbs-toggle" hidden><input id="thumbs" type="checkbox" checked> thumbnails</label>
    <button id="reset" type="button" title="Fit all points (or double-click the map)">fit</button>
  </div>
</header>
<main>
  <div id="stage"><canvas id="map"></canvas><div id="tip" hidden></div>
    <div class="hint">drag to pan · wheel to zoom · hover for details · double-click to fit</div></div>
  <aside id="side"><div id="legend"></div><div id="status"></div></aside>
</main>
<script type="application/json" id="map-data">%DATA%</script>
<script>%SCRIPT%</script>
</body>
</html>
"""

_HTML_STYLE = """
*{box-sizing:border-box}
html,body{margin:0;height:100%;font:13px/1.35 system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;
  color:#222;background:#fff}
body{display:flex;flex-direction:column}
header{display:flex;align-items:flex-end;justify-content:space-between;gap:12px;padding:8px 14px;
  border-bottom:1px solid #e3e3e3}
h1{font-size:17px;margin:0}
.sub{color:#666;font-size:12px;margin-top:2px}
.tools{display:flex;gap:8px;align-items:center}
.tools input[type=search]{width:220px;padding:4px 6px;border:1px solid #bbb;border-radius:4px}
.tools button{padding:3px 10px;border:1px solid #bbb;border-radius:4px;background:#f6f6f6;cursor:pointer}
main{flex:1;display:flex;min-height:0}
#stage{position:relative;flex:1;min-width:0}
#map{position:absolute;inset:0;width:100%;height:100%;cursor:grab;display:block}
#map.dragging{cursor:grabbing}
.hint{position:absolute;left:10px;bottom:6px;color:#999;font-size:11px;pointer-events:none}
#side{width:250px;border-left:1px solid #e3e3e3;overflow:auto;padding:10px 12px}
#legend .head{font-weight:600;margin-bottom:6px}
#legend .item{display:flex;align-items:center;gap:6px;padding:2px 4px;border-radius:4px;cursor:pointer;
  user-select:none}
#legend .item:hover{background:#f0f0f0}
#legend .item.off{opacity:.35}
#legend .sw{width:11px;height:11px;border-radius:50%;flex:none}
#legend .count{color:#888;margin-left:auto}
#legend .bar{height:12px;border-radius:3px;margin:4px 0}
#legend .ends{display:flex;justify-content:space-between;color:#666;font-size:11px}
#status{color:#888;font-size:11px;margin-top:10px}
#tip{position:absolute;pointer-events:none;background:rgba(255,255,255,.97);border:1px solid #bbb;
  border-radius:6px;padding:7px 9px;max-width:340px;box-shadow:0 2px 10px rgba(0,0,0,.15);font-size:12px;
  z-index:2}
#tip .key{font-weight:600;word-break:break-all}
#tip .text{margin-top:3px;color:#333}
#tip img{display:block;margin-top:5px;max-width:128px;max-height:128px;image-rendering:auto;
  border:1px solid #ccc}
#tip table{margin-top:5px;border-collapse:collapse;font-size:11px}
#tip td{padding:0 6px 0 0;vertical-align:top;word-break:break-word}
#tip td:first-child{color:#777;white-space:nowrap}
"""

# Every string from the data reaches the page through textContent or a data: URI
# checked here; nothing from the data is ever parsed as HTML.
_HTML_SCRIPT = r"""
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("map-data").textContent);
  const N = D.x.length;
  const canvas = document.getElementById("map"), ctx = canvas.getContext("2d");
  const tip = document.getElementById("tip"), find = document.getElementById("find");
  const legendItems = (D.legend.kind === "categorical") ? D.legend.items : [];
  const colourOf = (i) => D.category ? legendItems[D.category[i]].colour : D.colour[i];
  const hidden = new Set();          // categories switched off in the legend
  let matches = null;                // Set of points matching the find box, or null
  let hover = -1, W = 0, H = 0, dpr = 1;
  let view = {s: 1, tx: 0, ty: 0};   // screen = data * s + t (data in [0,1], y up)
  const radius = N > 3000 ? 2.2 : N > 800 ? 3 : 4;
  const thumbs = new Array(N).fill(null);
  let anyThumb = false;
  for (let i = 0; i < N; i++) {
    const uri = D.thumb[i];
    if (typeof uri === "string" && /^data:image\/(jpeg|png);base64,[A-Za-z0-9+\/=]+$/.test(uri)) {
      const img = new Image(); img.onload = () => draw(); img.src = uri; thumbs[i] = img; anyThumb = true;
    }
  }
  const thumbBox = document.getElementById("thumbs");
  if (anyThumb) document.getElementById("thumbs-toggle").hidden = false;
  thumbBox.addEventListener("change", () => draw());
  const labelBox = document.getElementById("labels");
  labelBox.addEventListener("change", () => draw());
  const labelWidth = new Array(N).fill(-1);
  const CLASS_FONT = "bold 13px system-ui, -apple-system, 'Segoe UI', Roboto, Arial, sans-serif";
  function classNames() {
    // [name, x, y, colour, box] of the classes shown, at their clouds
    ctx.font = CLASS_FONT;
    const out = [];
    legendItems.forEach((it, c) => {
      if (typeof it.spot !== "number" || hidden.has(c)) return;
      const x = sx(it.spot), y = sy(it.spot), w = ctx.measureText(it.name).width;
      out.push([it.name, x, y, it.dark, [x - w / 2 - 2, y - 9, x + w / 2 + 2, y + 9]]);
    });
    return out;
  }
  function drawLabels(showThumbs, boxes) {
    // the points of D.order in turn (spread out first), each labelled where its text overlaps
    // no other label or class name, until labels cover 7% of the map
    ctx.font = "11px system-ui, -apple-system, 'Segoe UI', Roboto, Arial, sans-serif";
    ctx.textAlign = "left"; ctx.textBaseline = "middle"; ctx.lineJoin = "round";
    const dim = matches !== null || hidden.size > 0;
    const budget = 0.07 * W * H;
    let tried = 0, covered = 0;
    for (const i of D.order) {
      if (covered > budget || tried > 4000) break;
      if (!visible(i) || (dim && matches !== null && !matches.has(i))) continue;
      if (showThumbs && thumbs[i]) continue;
      const x = sx(i) + radius + 3, y = sy(i);
      if (x < 0 || y < 8 || x > W || y > H - 8) continue;
      tried++;
      if (labelWidth[i] < 0) labelWidth[i] = ctx.measureText(D.label[i]).width;
      const b = [x - 1, y - 7, x + labelWidth[i] + 1, y + 7];
      if (b[2] > W) continue;
      let clash = false;
      for (const o of boxes) {
        if (b[0] < o[2] && o[0] < b[2] && b[1] < o[3] && o[1] < b[3]) { clash = true; break; }
      }
      if (clash) continue;
      boxes.push(b);
      covered += (b[2] - b[0]) * (b[3] - b[1]);
      ctx.lineWidth = 3; ctx.strokeStyle = "rgba(255,255,255,0.85)"; ctx.strokeText(D.label[i], x, y);
      ctx.fillStyle = "#222"; ctx.fillText(D.label[i], x, y);
    }
  }

  function fit() {
    const m = 36;
    const s = Math.max(1e-9, Math.min(W - 2 * m, H - 2 * m));
    view = {s: s, tx: (W - s) / 2, ty: (H - s) / 2};
  }
  function sx(i) { return D.x[i] * view.s + view.tx; }
  function sy(i) { return (1 - D.y[i]) * view.s + view.ty; }
  function resize() {
    const r = canvas.getBoundingClientRect();
    const first = W === 0;
    dpr = window.devicePixelRatio || 1;
    const oldW = W, oldH = H;
    W = Math.max(1, r.width); H = Math.max(1, r.height);
    canvas.width = Math.round(W * dpr); canvas.height = Math.round(H * dpr);
    if (first) fit(); else { view.tx += (W - oldW) / 2; view.ty += (H - oldH) / 2; }
    draw();
  }
  function visible(i) { return !(D.category && hidden.has(D.category[i])); }
  const thumbBase = N <= 60 ? 64 : N <= 500 ? 44 : 30;
  function thumbSize() { return Math.max(18, Math.min(128, thumbBase * Math.sqrt(view.s / Math.min(W, H)))); }
  function draw() {
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, W, H);
    const dim = matches !== null || hidden.size > 0;
    const showThumbs = anyThumb && thumbBox.checked;
    // faded points first, then the ones in focus
    for (let pass = 0; pass < 2; pass++) {
      for (let i = 0; i < N; i++) {
        const focus = visible(i) && (matches === null || matches.has(i));
        if ((pass === 0) === focus && dim) continue;
        if (pass === 1 && !dim) continue;
        const x = sx(i), y = sy(i);
        if (x < -50 || y < -50 || x > W + 50 || y > H + 50) continue;
        ctx.globalAlpha = (dim && !focus) ? 0.12 : 0.85;
        ctx.fillStyle = colourOf(i);
        ctx.beginPath(); ctx.arc(x, y, radius, 0, 6.2832); ctx.fill();
      }
    }
    if (showThumbs) {
      const t = thumbSize();
      for (let i = 0; i < N; i++) {
        const img = thumbs[i];
        if (!img || !img.complete || !img.naturalWidth) continue;
        const focus = visible(i) && (matches === null || matches.has(i));
        const k = t / Math.max(img.naturalWidth, img.naturalHeight);
        const w = img.naturalWidth * k, h = img.naturalHeight * k, x = sx(i) - w / 2, y = sy(i) - h / 2;
        if (x > W || y > H || x + w < 0 || y + h < 0) continue;
        ctx.globalAlpha = focus ? 1 : 0.15;
        ctx.drawImage(img, x, y, w, h);
        ctx.lineWidth = 1.5; ctx.strokeStyle = colourOf(i); ctx.strokeRect(x, y, w, h);
      }
    }
    ctx.globalAlpha = 1;
    const names = classNames();
    if (labelBox.checked) drawLabels(showThumbs, names.map((t) => t[4]));
    ctx.font = CLASS_FONT;  // class names at their clouds, over the labels
    ctx.textAlign = "center"; ctx.textBaseline = "middle"; ctx.lineJoin = "round";
    for (const [name, x, y, colour] of names) {
      ctx.lineWidth = 4; ctx.strokeStyle = "rgba(255,255,255,0.9)"; ctx.strokeText(name, x, y);
      ctx.fillStyle = colour; ctx.fillText(name, x, y);
    }
    const hoverImg = hover >= 0 && anyThumb && thumbBox.checked ? thumbs[hover] : null;
    if (hoverImg && hoverImg.naturalWidth) {
      const k = thumbSize() / Math.max(hoverImg.naturalWidth, hoverImg.naturalHeight);
      const w = hoverImg.naturalWidth * k, h = hoverImg.naturalHeight * k;
      ctx.drawImage(hoverImg, sx(hover) - w / 2, sy(hover) - h / 2, w, h);
      ctx.lineWidth = 3; ctx.strokeStyle = "#000"; ctx.strokeRect(sx(hover) - w / 2, sy(hover) - h / 2, w, h);
    } else if (hover >= 0) {
      ctx.lineWidth = 2; ctx.strokeStyle = "#000"; ctx.fillStyle = colourOf(hover);
      ctx.beginPath(); ctx.arc(sx(hover), sy(hover), radius + 3, 0, 6.2832); ctx.fill(); ctx.stroke();
    }
  }
  function nearest(px, py) {
    const showThumbs = anyThumb && thumbBox.checked;
    let best = -1, bestD = Infinity;
    for (let i = 0; i < N; i++) {
      if (!visible(i)) continue;
      const dx = sx(i) - px, dy = sy(i) - py, d = dx * dx + dy * dy;
      if (d < bestD) { bestD = d; best = i; }
    }
    const reach = showThumbs && best >= 0 && thumbs[best] ? thumbSize() / 2 + 2 : Math.max(8, radius + 4);
    return bestD <= reach * reach ? best : -1;
  }
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function showTip(i, px, py) {
    tip.replaceChildren();
    tip.appendChild(el("div", "key", D.key[i]));
    if (D.text[i]) tip.appendChild(el("div", "text", D.text[i]));
    if (thumbs[i]) { const im = el("img"); im.src = thumbs[i].src; im.alt = ""; tip.appendChild(im); }
    const rows = D.meta[i];
    if (rows && rows.length) {
      const table = el("table");
      for (const [k, v] of rows) {
        const tr = el("tr"); tr.appendChild(el("td", null, k)); tr.appendChild(el("td", null, v));
        table.appendChild(tr);
      }
      tip.appendChild(table);
    }
    tip.hidden = false;
    const tw = tip.offsetWidth, th = tip.offsetHeight;
    let left = px + 14, top = py + 14;
    if (left + tw > W) left = Math.max(0, px - tw - 14);
    if (top + th > H) top = Math.max(0, py - th - 14);
    tip.style.left = left + "px"; tip.style.top = top + "px";
  }
  let drag = null;
  canvas.addEventListener("mousedown", (e) => {
    drag = {x: e.clientX, y: e.clientY, tx: view.tx, ty: view.ty};
    canvas.classList.add("dragging");
  });
  window.addEventListener("mouseup", () => { drag = null; canvas.classList.remove("dragging"); });
  window.addEventListener("mousemove", (e) => {
    const r = canvas.getBoundingClientRect(), px = e.clientX - r.left, py = e.clientY - r.top;
    if (drag) {
      view.tx = drag.tx + e.clientX - drag.x; view.ty = drag.ty + e.clientY - drag.y;
      tip.hidden = true; hover = -1; draw(); return;
    }
    if (px < 0 || py < 0 || px > W || py > H) { if (hover >= 0) { hover = -1; tip.hidden = true; draw(); } return; }
    const i = nearest(px, py);
    if (i !== hover) { hover = i; draw(); }
    if (i >= 0) showTip(i, px, py); else tip.hidden = true;
  });
  canvas.addEventListener("mouseleave", () => { if (!drag) { hover = -1; tip.hidden = true; draw(); } });
  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    const r = canvas.getBoundingClientRect(), px = e.clientX - r.left, py = e.clientY - r.top;
    const unit = e.deltaMode === 1 ? 33 : e.deltaMode === 2 ? 400 : 1;
    const f = Math.exp(-e.deltaY * unit * 0.0015);
    const s = Math.min(Math.max(view.s * f, 20), 1e6), k = s / view.s;
    view.tx = px - (px - view.tx) * k; view.ty = py - (py - view.ty) * k; view.s = s;
    tip.hidden = true; draw();
  }, {passive: false});
  canvas.addEventListener("dblclick", () => { fit(); draw(); });
  document.getElementById("reset").addEventListener("click", () => { fit(); draw(); });
  find.addEventListener("input", () => {
    const q = find.value.trim().toLowerCase();
    if (!q) { matches = null; status(); draw(); return; }
    matches = new Set();
    for (let i = 0; i < N; i++) {
      if (D.key[i].toLowerCase().includes(q) || (D.text[i] && D.text[i].toLowerCase().includes(q))) matches.add(i);
    }
    status(); draw();
  });
  function status() {
    const s = document.getElementById("status");
    s.textContent = N + " points" + (matches !== null ? " · " + matches.size + " match" : "");
  }
  function buildLegend() {
    const box = document.getElementById("legend");
    const lg = D.legend;
    if (lg.kind === "none") return;
    box.appendChild(el("div", "head", lg.field));
    if (lg.kind === "numeric") {
      const bar = el("div", "bar");
      bar.style.background = "linear-gradient(to right," + lg.stops.join(",") + ")";
      box.appendChild(bar);
      const ends = el("div", "ends");
      ends.appendChild(el("span", null, String(+lg.min.toPrecision(4))));
      ends.appendChild(el("span", null, String(+lg.max.toPrecision(4))));
      box.appendChild(ends);
      return;
    }
    lg.items.forEach((it, c) => {
      const row = el("div", "item");
      const sw = el("span", "sw"); sw.style.background = it.colour; row.appendChild(sw);
      row.appendChild(el("span", null, it.name));
      row.appendChild(el("span", "count", String(it.count)));
      row.title = "click: show only this · shift-click: toggle";
      row.addEventListener("click", (e) => {
        if (e.shiftKey) { if (hidden.has(c)) hidden.delete(c); else hidden.add(c); }
        else if (hidden.size === lg.items.length - 1 && !hidden.has(c)) hidden.clear();
        else { hidden.clear(); lg.items.forEach((_, j) => { if (j !== c) hidden.add(j); }); }
        box.querySelectorAll(".item").forEach((r, j) => r.classList.toggle("off", hidden.has(j)));
        draw();
      });
      box.appendChild(row);
    });
  }
  buildLegend(); status();
  window.addEventListener("resize", resize);
  resize();
})();
"""


__all__ = ["DEFAULT_LABELS", "DEFAULT_SAMPLE", "METHODS", "Colouring", "Map", "MapError", "Rendered", "colouring",
           "compute_map", "label_candidates", "project", "render_html", "render_png", "thumbnail"]
