"""The standalone HTML map: one offline file (no network) built from the static files of
the map page (static/map.html and map.css; the scripts labels.js, which the page of `latent
serve` loads too, and map.js) with the map's data inlined as JSON and thumbnails as data: URIs.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import re
from pathlib import Path

import numpy as np

from .map_render import Rendered, check_target, colouring, darker, scale_stops, title_lines, write_atomic
from .maps import Map, category_spots, label_order, label_text, thumbnail, unit_square

STATIC_DIR = Path(__file__).parent / "static"
SCRIPTS = ("labels.js", "map.js")  # inlined in this order, as one script
HTML_MAX_THUMBNAILS = 2000  # image thumbnails embedded in an HTML map (each ~2-4 kB)
_FIELDS = re.compile(r"%(CSP|TITLE|SUBTITLE|STYLE|DATA|SCRIPT)%")


def _static(name: str) -> str:
    return (STATIC_DIR / name).read_text(encoding="utf-8")


def page_script() -> str:
    """The map's one inline script: the files of SCRIPTS as the server serves them."""
    return "\n".join(_static(name) for name in SCRIPTS)


def _data_uri(picture, quality: int = 80) -> str:
    buf = io.BytesIO()
    picture.save(buf, format="JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


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
    a legend (click a class to single it out) and a find box (static/map.js)."""
    path = check_target(path)
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
    head, sub = title_lines(m, title)
    legend: dict = {"kind": colours.kind, "field": colours.field}
    if colours.kind == "categorical":
        spots = category_spots(m.coords, colours.point_category, len(colours.categories), m.seed) if n else {}
        legend["items"] = [{"name": name, "colour": col, "dark": darker(col), "count": count,
                            "spot": spots.get(c) if name not in ("other", "(missing)") else None}
                           for c, (name, col, count) in enumerate(colours.categories)]
    elif colours.kind == "numeric":
        legend.update(min=colours.vmin, max=colours.vmax, stops=scale_stops(colours))
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
    script = page_script()
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    csp = (f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; img-src data:; "
           "connect-src 'none'; form-action 'none'; base-uri 'none'")
    fields = {"CSP": html.escape(csp, quote=True), "TITLE": html.escape(head), "SUBTITLE": html.escape(sub),
              "STYLE": _static("map.css"), "DATA": _json_for_script(data), "SCRIPT": script}
    page = _FIELDS.sub(lambda f: fields[f.group(1)], _static("map.html"))  # one pass: inserted text stays as is
    raw = page.encode("utf-8")
    write_atomic(path, raw)
    names = [c["name"] for c in legend.get("items", [])]
    return Rendered(path=path, points=n, thumbnails=thumbed, legend=names, bytes=len(raw))


__all__ = ["HTML_MAX_THUMBNAILS", "page_script", "render_html"]
