"""2-D maps of an index: PCA, t-SNE or UMAP coordinates of (a seeded sample of) its items,
and what to label on them (spread-out points, class names at their clouds, image thumbnails).
Drawing them is map_png.py (a PNG) and map_html.py (one offline HTML page).

    m = compute_map(index, method="tsne", sample=5000, where="lang=en")
    render_png(m, "map.png", color_by="topic", labels=25)      # latent.search.map_png
    render_html(m, "map.html", color_by="topic")               # latent.search.map_html

Vectors are L2-normalised first, so distances on the map follow the cosine similarity
that search ranks by. PCA is exact (numpy SVD); t-SNE (scikit-learn) runs on the top
50 principal components; UMAP needs umap-learn (t-SNE, UMAP and labels: the `viz` extra).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from latent.indexer.errors import LatentError, require
from latent.indexer.filters import field_value
from latent.indexer.index import Index


METHODS = ("pca", "tsne", "umap")
DEFAULT_SAMPLE = 5000
DEFAULT_LABELS = 20
TSNE_PCA_DIMS = 50  # t-SNE runs on this many principal components


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
        """The metadata field `name` of every point as the filters read it (dots reach nested
        objects); None where absent."""
        return [field_value(m, name) for m in self.metadata]

    def fields(self) -> list[str]:
        """Metadata fields present on any point, most common first."""
        counts: dict[str, int] = {}
        for m in self.metadata:
            for k in m:
                counts[k] = counts.get(k, 0) + 1
        return sorted(counts, key=lambda k: (-counts[k], k))


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
        raise MapError(f"sample must be at least 3 (a map needs 3 points), got {sample}")
    with index.snapshot():
        allowed = index.matching_ids(where)
        chosen = ids
        ids = index.ids() if allowed is None else np.sort(np.asarray(allowed, dtype=np.int64))
        if chosen is not None:
            ids = np.intersect1d(ids, np.asarray(chosen, dtype=np.int64))
        total = len(ids)
        if total < 3:
            what = f"only {total} item(s) match the filter {where!r}" if allowed is not None else \
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
    TSNE = require("sklearn.manifold", "viz", "a t-SNE map").TSNE
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
    umap = require("umap", "viz", "a UMAP map")
    n = len(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reducer = umap.UMAP(n_components=2, n_neighbors=max(2, min(15, n - 1)), metric="cosine",
                            random_state=seed, init="spectral" if n > 10 else "random")
        return np.asarray(reducer.fit_transform(x), dtype=np.float64)


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
    KMeans = require("sklearn.cluster", "viz", "choosing the points to label").KMeans
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


def shorten(text: str, width: int) -> str:
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
    """The label of row i: its text in one short line (words and texts-less items: the key)."""
    return shorten(m.texts[i] if m.kinds[i] != "word" and m.texts[i] else m.keys[i], width)


def category_spots(coords: np.ndarray, groups: list[int], ncat: int, seed: int) -> dict[int, int]:
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


__all__ = ["DEFAULT_LABELS", "DEFAULT_SAMPLE", "METHODS", "Map", "MapError", "category_spots", "compute_map",
           "label_candidates", "label_order", "label_text", "project", "shorten", "thumbnail", "unit_square"]
