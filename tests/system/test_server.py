"""`latent serve`: the HTTP API against a real uvicorn server on a loopback port, over real
indexes (GloVe words, minilm sentences, conse photos): every route's answers, errors,
limits, path traversal, swapped image files, the token, another process's commits, and a
schemathesis run of the OpenAPI schema."""

import http.client
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import quote

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, settings
from PIL import Image

from latent.indexer import Index
from latent.indexer.images import read_images
from latent.search.server import STATIC_DIR, Limits, ServeError, check_bind, create_app, name_indexes

from conftest import png_bomb, running, word_records

skdata = pytest.importorskip("skimage.data")
schemathesis = pytest.importorskip("schemathesis")

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "t0ken-for-the-tests-0123456789"
UPLOAD_LIMIT = 256 * 1024
PHOTOS = {"chelsea": "chelsea.jpg", "coffee": "coffee.jpg", "rocket": "rocket.jpg", "astronaut": "astronaut.jpg"}


# -- servers and indexes ------------------------------------------------------------------------------
def jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).convert("RGB").save(out, format="JPEG", quality=quality)
    return out.getvalue()


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos") / "pics"
    root.mkdir()
    for name, file in PHOTOS.items():
        (root / file).write_bytes(jpeg(getattr(skdata, name)()))
    return root


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, glove_words, sentence_index_dir, photo_dir) -> dict[str, Path]:
    """The indexes served: words (3,000 GloVe words with metadata), sentences (minilm),
    photos (conse), live (40 words, written to by another process in one test)."""
    base = tmp_path_factory.mktemp("served")
    words = Index.create(base / "words", encoder="glove", index_type="flat")
    words.add(word_records(glove_words[100:3100], lambda w, i: {"rank": i, "length": len(w), "initial": w[0]}))
    words.close()
    photos = Index.create(base / "photos", encoder="conse", index_type="flat")
    report = photos.add(read_images([str(photo_dir)]))
    assert report.added == len(PHOTOS), report.as_dict()
    photos.close()
    live = Index.create(base / "live", encoder="glove", index_type="flat")
    live.add(word_records(glove_words[200:240]))
    live.close()
    return {"words": base / "words", "sentences": sentence_index_dir, "photos": base / "photos", "live": base / "live"}


@pytest.fixture(scope="module")
def base(dirs):
    app = create_app([str(d) for d in dirs.values()], limits=Limits(max_upload_bytes=UPLOAD_LIMIT))
    with running(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(base):
    with httpx.Client(base_url=base, timeout=120) as c:
        yield c


def ok(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def fails(response: httpx.Response, status: int, *words: str) -> str:
    """The error message of a response that must be `status`, {"error": ...}, naming `words`."""
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert isinstance(message, str) and "Traceback" not in response.text
    for word in words:
        assert word in message, message
    return message


def keys(doc: dict) -> list[str]:
    return [h["key"] for h in doc["hits"]]


# -- listing, page, static ---------------------------------------------------------------------------------
def test_indexes_are_listed_with_counts_and_kinds(client):
    listed = {i["name"]: i for i in ok(client.get("/api/indexes"))["indexes"]}
    assert list(listed) == ["words", "idx", "photos", "live"]  # the sentence index lives in .../idx
    assert listed["words"]["count"] == 3000 and listed["words"]["kinds"] == {"word": 3000}
    assert (listed["words"]["encoder"], listed["words"]["dim"], listed["words"]["index_type"]) == ("glove", 50, "flat")
    assert listed["idx"]["kinds"] == {"text": 400} and listed["idx"]["modalities"] == ["text"]
    assert listed["photos"]["kinds"] == {"image": 4} and set(listed["photos"]["modalities"]) == {"text", "image"}
    detail = ok(client.get("/api/indexes/photos"))
    assert {k: detail[k] for k in listed["photos"]} == listed["photos"]
    assert detail["faiss_factory"] == "Flat" and detail["size_bytes"] > 0 and detail["metric"] == "ip"
    fails(client.get("/api/indexes/nope"), 404, "no index named 'nope'", "words")


def test_names_are_basenames_made_unique_and_limits_are_checked():
    assert name_indexes(["a/words", "b/words/", "@words", "c/words"]) == ["words", "words-2", "@words", "words-3"]
    with pytest.raises(ServeError, match="max_steps"):
        Limits(max_steps=1)


def test_page_and_static_files(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<html" in page.text.lower()
    assert page.headers["x-content-type-options"] == "nosniff" and page.headers["referrer-policy"] == "no-referrer"
    files = sorted(p.name for p in STATIC_DIR.iterdir() if p.is_file()) if STATIC_DIR.is_dir() else []
    if files:
        assert client.get(f"/static/{files[0]}").status_code == 200
    fails(client.get("/static/no-such-file.js"), 404)
    fails(client.get("/api/no-such-route"), 404)


# -- search, similar, expressions, paths, analogies -------------------------------------------------------
def test_search_words_with_filter_and_min_score(client):
    doc = ok(client.get("/api/indexes/words/search", params={"q": "king", "k": 10}))
    assert keys(doc)[0] == "king" and "queen" in keys(doc) and doc["took_ms"] > 0
    assert [h["rank"] for h in doc["hits"]] == list(range(1, 11))
    hit = doc["hits"][0]
    assert set(hit) == {"rank", "id", "key", "score", "kind", "text", "metadata", "thumbnail"}
    assert hit["kind"] == "word" and hit["thumbnail"] is None and hit["metadata"]["length"] == 4
    five = ok(client.get("/api/indexes/words/search", params={"q": "king", "where": "length=5 and initial=q"}))
    assert "queen" in keys(five) and all(h["metadata"]["length"] == 5 for h in five["hits"])
    cut = ok(client.get("/api/indexes/words/search", params={"q": "king", "k": 10, "min_score": 0.8}))
    assert 0 < len(cut["hits"]) < 10 and all(h["score"] >= 0.8 for h in cut["hits"])
    assert keys(cut) == keys(doc)[:len(cut["hits"])]


def test_duplicate_groups(client):
    doc = ok(client.get("/api/indexes/words/duplicates", params={"threshold": 0.9}))
    assert doc["total_groups"] >= len(doc["groups"]) > 0 and len(doc["groups"]) <= 200 and doc["took_ms"] > 0
    group = doc["groups"][0]
    assert group["representative"] == group["items"][0]["key"] and group["size"] == len(group["items"]) >= 2
    assert group["items"][0]["score"] == pytest.approx(1.0, abs=1e-5) and group["min_score"] >= 0.9
    assert set(group["items"][0]) == {"id", "key", "score", "kind", "text", "metadata", "thumbnail"}
    assert doc["items_in_groups"] >= sum(g["size"] for g in doc["groups"])
    narrowed = ok(client.get("/api/indexes/words/duplicates", params={"threshold": 0.9, "where": "length=5"}))
    assert all(len(m["key"]) == 5 for g in narrowed["groups"] for m in g["items"])
    assert ok(client.get("/api/indexes/words/duplicates", params={"threshold": 1}))["groups"] == []
    fails(client.get("/api/indexes/words/duplicates", params={"threshold": 0}), 422)
    fails(client.get("/api/indexes/words/duplicates", params={"where": "length="}), 400)


def test_sentence_search(client):
    doc = ok(client.get("/api/indexes/idx/search", params={"q": "heavy rain and flooding", "k": 3}))
    assert doc["hits"][0]["metadata"]["topic"] == "weather" and doc["hits"][0]["text"]


def test_keyword_and_hybrid_modes(client):
    search = "/api/indexes/idx/search"
    keyword = ok(client.get(search, params={"q": "tsunami earthquake", "mode": "keyword", "k": 5}))
    texts = [h["text"].lower() for h in keyword["hits"]]  # Porter stems: plurals match too
    assert len(texts) == 2 and "tsunamis" in texts[0] and all("earthquake" in t for t in texts)
    assert keyword["hits"][0]["score"] > 0 and [h["rank"] for h in keyword["hits"]] == \
        list(range(1, len(keyword["hits"]) + 1))
    hybrid = ok(client.get(search, params={"q": "heavy rain and flooding", "mode": "hybrid", "k": 3}))
    assert hybrid["hits"][0]["metadata"]["topic"] == "weather" and hybrid["hits"][0]["score"] <= 2 / 61
    only = ok(client.get(search, params={"q": "rain", "mode": "keyword", "where": "topic = weather"}))
    assert only["hits"] and all(h["metadata"]["topic"] == "weather" for h in only["hits"])
    both = ok(client.get(search, params={"q": "rain AND flooding", "mode": "keyword", "syntax": "fts5"}))
    assert all("rain" in h["text"].lower() and "flood" in h["text"].lower() for h in both["hits"])
    fails(client.get(search, params={"q": "rain AND (", "mode": "keyword", "syntax": "fts5"}), 400, "keyword query")
    fails(client.get(search, params={"q": "rain", "mode": "bm25"}), 422, "mode")
    fails(client.get("/api/indexes/photos/search", params={"q": "cat", "mode": "keyword"}), 400, "no texts")
    fails(client.get("/api/indexes/words/search", params={"q": "king", "mode": "hybrid"}), 400, "single words")


def test_similar_by_key_and_by_id(client):
    by_key = ok(client.get("/api/indexes/words/similar", params={"key": "king", "k": 5}))
    assert "queen" in keys(by_key) and "king" not in keys(by_key)
    king = ok(client.get("/api/indexes/words/search", params={"q": "king", "k": 1}))["hits"][0]
    by_id = ok(client.get("/api/indexes/words/similar", params={"id": king["id"], "k": 5}))
    assert keys(by_id) == keys(by_key)
    filtered = ok(client.get("/api/indexes/words/similar", params={"key": "king", "where": "length>6", "k": 3}))
    assert all(len(k) > 6 for k in keys(filtered))
    fails(client.get("/api/indexes/words/similar", params={"key": "no-such-word"}), 404, "no-such-word")
    fails(client.get("/api/indexes/words/similar", params={"id": 999_999}), 404, "999999")
    fails(client.get("/api/indexes/words/similar"), 400, "exactly one")
    fails(client.get("/api/indexes/words/similar", params={"key": "king", "id": king["id"]}), 400)


def test_expressions(client):
    doc = ok(client.get("/api/indexes/words/expr", params={"expr": "king - man + woman", "k": 3}))
    assert "queen" in keys(doc) and not {"king", "man", "woman"} & set(keys(doc))
    quoted = ok(client.get("/api/indexes/idx/expr", params={"expr": '"a storm at sea" + "rain"', "k": 2}))
    assert quoted["hits"][0]["metadata"]["topic"] == "weather"
    fails(client.get("/api/indexes/words/expr", params={"expr": "king +"}), 400, "bad expression")
    fails(client.get("/api/indexes/words/expr", params={"expr": "king - king"}), 400, "zero vector")
    fails(client.get("/api/indexes/words/expr", params={"expr": "   "}), 400, "empty")


def test_interpolate(client):
    doc = ok(client.get("/api/indexes/words/interpolate", params={"a": "france", "b": "germany", "steps": 12}))
    steps = doc["steps"]
    assert steps[0]["key"] == "france" and steps[-1]["key"] == "germany" and len(steps) >= 3
    assert steps[0]["t"] == 0 and steps[-1]["t"] == 1 and steps[-1]["last"] == 11
    assert {"t", "id", "key", "score", "kind", "text", "thumbnail"} <= set(steps[0]) and steps[0]["id"] > 0
    texts = ok(client.get("/api/indexes/idx/interpolate", params={"a": "sunny weather", "b": "heavy rain",
                                                                   "method": "lerp", "steps": 5}))
    assert texts["steps"][0]["metadata"]["topic"] == "weather"
    fails(client.get("/api/indexes/words/interpolate", params={"a": "france", "b": "qqqzzzx"}), 400, "vocabulary")
    fails(client.get("/api/indexes/words/interpolate", params={"a": "france", "b": "germany", "method": "x"}), 422)


def test_analogy(client):
    doc = ok(client.get("/api/indexes/words/analogy", params={"a": "man", "b": "king", "c": "woman", "k": 3}))
    assert keys(doc)[0] == "queen"
    mul = ok(client.get("/api/indexes/words/analogy", params={"a": "paris", "b": "france", "c": "rome",
                                                               "method": "mul", "k": 3}))
    assert keys(mul)[0] == "italy"
    fails(client.get("/api/indexes/words/analogy", params={"a": "man", "b": "king"}), 422, "c")


def test_images_text_and_upload(client, photo_dir):
    cat = ok(client.get("/api/indexes/photos/search", params={"q": "a cat", "k": 2}))
    assert keys(cat)[0] == "chelsea.jpg"
    assert cat["hits"][0]["thumbnail"] == f"/api/indexes/photos/items/{cat['hits'][0]['id']}/thumbnail"
    data = (photo_dir / "chelsea.jpg").read_bytes()
    up = ok(client.post("/api/indexes/photos/search/image", params={"k": 2},
                        files={"file": ("query.jpg", data, "image/jpeg")}))
    assert keys(up)[0] == "chelsea.jpg" and up["hits"][0]["score"] > 0.99
    only = ok(client.post("/api/indexes/photos/search/image", params={"min_score": 0.99},
                          files={"file": ("query.jpg", data, "image/jpeg")}))
    assert keys(only) == ["chelsea.jpg"]
    pngs = ok(client.post("/api/indexes/photos/search/image", params={"where": "format=PNG"},
                          files={"file": ("query.jpg", data, "image/jpeg")}))
    assert pngs["hits"] == []  # every photo is a JPEG
    crop = jpeg(skdata.chelsea()[:, :300])
    near = ok(client.post("/api/indexes/photos/search/image", files={"file": ("c.jpg", crop, "image/jpeg")}))
    assert keys(near)[0] == "chelsea.jpg"
    fails(client.post("/api/indexes/photos/search/image", files={"file": ("x.jpg", b"not an image", "image/jpeg")}),
          415, "not an image")
    fails(client.post("/api/indexes/words/search/image", files={"file": ("q.jpg", data, "image/jpeg")}),
          400, "cannot encode images", "efficientnet")
    fails(client.post("/api/indexes/photos/search/image", files={"file": ("b.png", png_bomb(100_000, 100_000))}),
          415, "bomb")
    fails(client.post("/api/indexes/photos/search/image"), 422, "file")


def test_item_and_thumbnail(client):
    hit = ok(client.get("/api/indexes/photos/search", params={"q": "a cup of coffee", "k": 1}))["hits"][0]
    item = ok(client.get(f"/api/indexes/photos/items/{hit['id']}"))
    assert (item["key"], item["kind"], item["thumbnail"]) == ("coffee.jpg", "image", hit["thumbnail"])
    picture = client.get(hit["thumbnail"], params={"size": 64})
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(picture.content)).size) == 64
    tiny = client.get(hit["thumbnail"], params={"size": 1})  # clamped to 16
    assert max(Image.open(io.BytesIO(tiny.content)).size) == 16
    huge = client.get(hit["thumbnail"], params={"size": 10**9})  # clamped to 1024; the photo is smaller
    assert huge.status_code == 200
    word = ok(client.get("/api/indexes/words/search", params={"q": "king", "k": 1}))["hits"][0]
    fails(client.get(f"/api/indexes/words/items/{word['id']}/thumbnail"), 404, "not an image")
    fails(client.get("/api/indexes/photos/items/424242"), 404, "424242")
    fails(client.get("/api/indexes/photos/items/424242/thumbnail"), 404)
    fails(client.get("/api/indexes/photos/items/abc"), 422, "id")


def test_swapped_image_files_are_never_served(client, photo_dir, tmp_path):
    """A file replaced after indexing (by a symlink to a file outside, or by other bytes) is a 404."""
    item = ok(client.get("/api/indexes/photos/search", params={"q": "a rocket", "k": 1}))["hits"][0]
    assert item["key"] == "rocket.jpg"
    url = item["thumbnail"]
    target = photo_dir / "rocket.jpg"
    original = target.read_bytes()
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(jpeg(skdata.astronaut()))
    assert client.get(url).status_code == 200
    try:
        target.unlink()
        target.symlink_to(secret)
        fails(client.get(url), 404, "no longer readable")
        target.unlink()
        target.write_bytes(jpeg(skdata.rocket(), quality=50))
        fails(client.get(url), 404)
        target.unlink()
        os.mkfifo(target)  # a FIFO is refused without blocking
        fails(client.get(url), 404)
    finally:
        target.unlink()
        target.write_bytes(original)
    assert client.get(url).status_code == 200


def test_map_is_cached_and_in_the_unit_square(client):
    doc = ok(client.get("/api/indexes/words/map", params={"method": "pca", "sample": 500}))
    assert doc["method"] == "pca" and doc["count"] == 500 == len(doc["points"]) and doc["total"] == 3000
    xs, ys = (np.array([p[c] for p in doc["points"]]) for c in "xy")
    assert xs.min() >= 0 and ys.min() >= 0 and xs.max() <= 1 and ys.max() <= 1 and max(xs.max(), ys.max()) == 1
    point = doc["points"][0]
    assert set(point) >= {"id", "key", "x", "y", "kind", "text", "label", "thumbnail"}
    again = ok(client.get("/api/indexes/words/map", params={"method": "pca", "sample": 500}))
    assert again == doc  # the cached map (its `seconds` too)
    photos = ok(client.get("/api/indexes/photos/map", params={"method": "tsne"}))
    assert photos["count"] == 4 and all(p["thumbnail"] for p in photos["points"])
    fails(client.get("/api/indexes/words/map", params={"method": "nope"}), 422, "method")


# -- errors and limits ------------------------------------------------------------------------------------------
def test_bad_input_is_a_4xx_with_a_message(client):
    fails(client.get("/api/indexes/words/search", params={"q": "king", "where": "length >"}), 400,
          "bad filter", "expected a value")
    assert ok(client.get("/api/indexes/words/search", params={"q": "king", "where": "no_field=1"}))["hits"] == []
    fails(client.get("/api/indexes/words/search", params={"q": "   "}), 400, "empty")
    fails(client.get("/api/indexes/words/search", params={"q": "qqqzzzx"}), 400, "vocabulary")
    fails(client.get("/api/indexes/words/search"), 422, "q")
    fails(client.get("/api/indexes/words/search", params={"q": "king", "min_score": "nan"}), 422, "min_score")
    fails(client.get("/api/indexes/nope/search", params={"q": "king"}), 404, "nope")


@pytest.mark.parametrize("route, params, field", [
    ("search", {"q": "king", "k": 0}, "k"),
    ("search", {"q": "king", "k": 1001}, "k"),
    ("search", {"q": "x" * 2001}, "q"),
    ("search", {"q": "king", "where": "a=" + "1" * 2000}, "where"),
    ("expr", {"expr": "king + " * 300}, "expr"),
    ("similar", {"key": "king", "k": 5000}, "k"),
    ("interpolate", {"a": "france", "b": "germany", "steps": 1}, "steps"),
    ("interpolate", {"a": "france", "b": "germany", "steps": 101}, "steps"),
    ("analogy", {"a": "man", "b": "king", "c": "w" * 2001}, "c"),
    ("map", {"sample": 9}, "sample"),
    ("map", {"sample": 20001}, "sample"),
])
def test_every_limit_is_a_4xx_naming_the_parameter(client, route, params, field):
    fails(client.get(f"/api/indexes/words/{route}", params=params), 422, field)


def test_upload_limit_by_content_length_and_while_reading(base):
    big = b"\xff\xd8\xff" + os.urandom(UPLOAD_LIMIT + 10)
    with httpx.Client(base_url=base, timeout=60) as c:
        fails(c.post("/api/indexes/photos/search/image", files={"file": ("big.jpg", big, "image/jpeg")}),
              413, "limit of 0.25 MiB")
        boundary = "b0undary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jpg\"\r\n"
                f"Content-Type: image/jpeg\r\n\r\n").encode() + big + f"\r\n--{boundary}--\r\n".encode()

        def chunks():  # no Content-Length: counted while it is read
            for i in range(0, len(body), 16384):
                yield body[i:i + 16384]

        streamed = c.post("/api/indexes/photos/search/image", content=chunks(),
                          headers={"content-type": f"multipart/form-data; boundary={boundary}"})
        fails(streamed, 413, "limit")
    assert Limits().max_upload_bytes == 20 * 2**20


def test_a_url_is_just_text(client):
    """No parameter fetches anything: a q that is a URL is searched as text."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/cat.jpg"
    try:
        ok(client.get("/api/indexes/idx/search", params={"q": url, "k": 2}))
        ok(client.get("/api/indexes/photos/expr", params={"expr": f'"{url}"'}))
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()


def test_terms_that_name_files_are_never_read(client, photo_dir, monkeypatch):
    """explore.resolve would encode an existing image path; through the server, it is text or an error."""
    import latent.search.explore

    read = []
    monkeypatch.setattr(latent.search.explore, "encode_image", lambda index, path: read.append(path))
    path = str(photo_dir / "coffee.jpg")
    ok(client.get("/api/indexes/photos/interpolate", params={"a": path, "b": "a cat", "steps": 3}))
    ok(client.get("/api/indexes/photos/analogy", params={"a": path, "b": "a cat", "c": "a rocket"}))
    fails(client.get("/api/indexes/photos/expr", params={"expr": f"{path} + chelsea.jpg"}), 400, "reads no files")
    fails(client.get("/api/indexes/photos/similar", params={"key": path}), 404)
    assert read == []


# -- path traversal -------------------------------------------------------------------------------------------
def raw_get(base: str, target: str, headers: dict | None = None) -> tuple[int, bytes]:
    """A GET of `target` exactly as written (httpx would normalise dot segments)."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.putrequest("GET", target, skip_host="Host" in (headers or {}), skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


TRAVERSALS = [
    "/static/../cli.py", "/static/../../../../etc/passwd", "/static/%2e%2e/cli.py", "/static/%2e%2e%2fcli.py",
    "/static/..%2f..%2f..%2fetc%2fpasswd", "/static/%252e%252e%252fcli.py", "/static//etc/passwd",
    "/static/%2fetc%2fpasswd", "/static/..\\cli.py", "/static/..%5ccli.py", "/static/%5c..%5c..%5cetc%5cpasswd",
    "/static/....//cli.py", "/static/.%00./cli.py", "/static/%c0%ae%c0%ae/cli.py", "/../cli.py",
    "/api/indexes/..%2f..%2fetc", "/api/indexes/words/items/..%2f..%2fetc%2fpasswd",
    "/api/indexes/words/items/1/..%2f..%2f..%2fcli.py", "/api/indexes/%2e%2e/items/1/thumbnail",
    "/api/indexes/photos/items/%2fetc%2fpasswd/thumbnail", "/api/indexes/photos/items/1%2f..%2f2/thumbnail",
    "/api/indexes/words/similar?key=../../../etc/passwd", "/api/indexes/words/similar?key=%2fetc%2fpasswd",
    "/api/indexes/photos/items/1/thumbnail?size=..%2f..%2fetc%2fpasswd",
    "/api/indexes/photos/items/1/thumbnail?path=/etc/passwd",
    "/api/indexes/photos/search?q=..%2F..%2Fcli.py&where=path%3D..%2F..%2Fcli.py",
    "/api/indexes/photos/expr?expr=%2Fetc%2Fpasswd",
    "/api/indexes/photos/expr?expr=..%5C..%5Ccli.py",
]


@pytest.mark.parametrize("target", TRAVERSALS)
def test_no_path_leaves_the_index(base, target):
    status, body = raw_get(base, target)
    assert status in (200, 400, 404, 422), (status, body[:200])
    assert b"root:" not in body and b"def main" not in body and b"Traceback" not in body
    if status != 200:
        assert "error" in json.loads(body)
    elif "thumbnail" in target:
        assert body[:3] == b"\xff\xd8\xff"  # item 1's own thumbnail, the stray parameter ignored


# -- auth and hosts -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def token_base(dirs):
    with running(create_app([str(dirs["photos"]), str(dirs["words"])], token=TOKEN)) as url:
        yield url


def test_token_is_required_on_every_route(token_base, photo_dir):
    thumb = "/api/indexes/photos/items/1/thumbnail"
    routes = ["/", "/static/app.js", "/static/nope", "/openapi.json", "/docs", "/api/indexes", "/api/indexes/photos",
              "/api/indexes/words/search?q=king", thumb, "/api/indexes/words/map", "/api/nope", "/../cli.py"]
    for route in routes:
        for headers in ({}, {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": TOKEN}):
            status, body = raw_get(token_base, route, headers)
            if route in ("/", "/docs"):  # the pages a person opens ask for the token in a form
                assert status == 401 and b'<input name="token" type="password"' in body, (route, status)
                continue
            assert status == 401 and "token" in json.loads(body)["error"], (route, headers, status)
        status, _ = raw_get(token_base, route + ("&" if "?" in route else "?") + "token=wrong-token-0123456789")
        assert status == 401
    with httpx.Client(base_url=token_base, timeout=60) as c:
        r = c.post("/api/indexes/photos/search/image",
                   files={"file": ("q.jpg", (photo_dir / "coffee.jpg").read_bytes(), "image/jpeg")})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        by_header = c.get(thumb, headers={"Authorization": f"Bearer {TOKEN}"})
        by_query = c.get(thumb, params={"token": TOKEN})
        assert by_header.status_code == by_query.status_code == 200 and by_header.content == by_query.content
        schema = c.get("/openapi.json", headers={"Authorization": f"bearer {TOKEN}"}).json()
        assert set(schema["components"]["securitySchemes"]) == {"bearer", "token", "cookie"}
        assert "401" in schema["paths"]["/api/indexes/{name}/search"]["get"]["responses"]
        assert keys(ok(c.get("/api/indexes/words/search", params={"q": "king", "k": 2, "token": TOKEN})))


def test_docs_work_offline(base, token_base):
    """/docs is Swagger UI from the swagger-ui-bundle package, not from a CDN; with a token it is
    one of the pages that ask for it."""
    with httpx.Client(base_url=base, timeout=60) as c:
        page = c.get("/docs")
        assert page.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in page.text
        assert "cdn" not in page.text.lower() and "https://" not in page.text
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
            r = c.get(f"/docs-assets/{asset}")
            assert r.status_code == 200 and len(r.content) > 10_000
    with httpx.Client(base_url=token_base, timeout=60) as c:
        assert c.get("/docs", params={"token": TOKEN}).status_code == 200
        assert c.get("/docs-assets/swagger-ui.css").status_code == 200  # the cookie /docs set carries the token


def test_the_page_without_the_token_asks_for_it(token_base):
    with httpx.Client(base_url=token_base, timeout=60) as c:
        page = c.get("/")
        assert page.status_code == 401 and page.headers["content-type"].startswith("text/html")
        assert '<form method="get">' in page.text and "LATENT_TOKEN" in page.text
        assert c.get("/", params={"token": TOKEN}).status_code == 200
        assert c.get("/api/indexes").status_code == 200  # the form's ?token= set the cookie


def test_the_page_hands_its_assets_the_token_in_a_strict_cookie(token_base):
    """<script src>, <link href> and <img src> cannot send a header: the page sets an HttpOnly,
    SameSite=Strict cookie that they carry; a wrong cookie is refused like a wrong token."""
    with httpx.Client(base_url=token_base, timeout=60) as c:
        page = c.get("/", params={"token": TOKEN})
        assert page.status_code == 200
        cookie = page.headers["set-cookie"]
        assert cookie.startswith("latent_token=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert c.get("/api/indexes").status_code == 200  # the client now holds the cookie
        assert c.get("/api/indexes/photos/items/1/thumbnail").status_code == 200
        if (STATIC_DIR / "app.js").is_file():
            assert c.get("/static/app.js").status_code == 200
    with httpx.Client(base_url=token_base, timeout=60, cookies={"latent_token": TOKEN + "x"}) as c:
        fails(c.get("/api/indexes"), 401, "token")
        assert "set-cookie" not in c.get("/").headers


def test_loopback_server_refuses_foreign_host_headers(base):
    """Against DNS rebinding: a page on evil.example resolving to 127.0.0.1 gets nothing."""
    status, body = raw_get(base, "/api/indexes", {"Host": "evil.example:8000"})
    assert status == 400 and "loopback" in json.loads(body)["error"]
    assert raw_get(base, "/api/indexes", {"Host": "localhost:1234"})[0] == 200


@pytest.mark.parametrize("host", ["LOCALHOST:8000", "LocalHost", "127.0.0.2:8000", "127.255.0.1", "[::1]:8000", "::1"])
def test_loopback_server_answers_every_loopback_name(base, host):
    """Host names compare case-insensitively, and the whole loopback range is loopback."""
    assert raw_get(base, "/api/indexes", {"Host": host})[0] == 200


@pytest.mark.parametrize("host", ["localhost.evil.example", "127.0.0.1.evil.example", "128.0.0.1", "[::2]:80", ""])
def test_loopback_server_refuses_names_that_only_look_local(base, host):
    assert raw_get(base, "/api/indexes", {"Host": host})[0] == 400


def test_public_server_does_not_show_index_paths(dirs):
    """A --public server names its indexes, never where they live on its disk."""
    with running(create_app([str(dirs["words"])], token=TOKEN, public=True)) as url:
        with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
            detail = ok(c.get("/api/indexes/words"))
            assert detail.get("directory") is None and detail["name"] == "words" and detail["count"] > 0
            assert str(dirs["words"]) not in c.get("/api/indexes").text + json.dumps(detail)
    with running(create_app([str(dirs["words"])])) as url:  # on loopback, the owner sees the path
        assert httpx.get(f"{url}/api/indexes/words", timeout=60).json()["directory"] == str(dirs["words"])


def test_bind_rules():
    check_bind("127.0.0.1", public=False, token=None)
    check_bind("::1", public=False, token=None)
    with pytest.raises(ServeError, match="not a loopback address"):
        check_bind("0.0.0.0", public=False, token=TOKEN)
    with pytest.raises(ServeError, match="--public needs a token"):
        check_bind("0.0.0.0", public=True, token=None)
    with pytest.raises(ServeError, match="at least 16"):
        check_bind("0.0.0.0", public=True, token="short")
    check_bind("0.0.0.0", public=True, token=TOKEN)


def test_cli_refuses_public_hosts_without_public_and_a_token(dirs, monkeypatch):
    env = {k: v for k, v in os.environ.items() if k != "LATENT_TOKEN"}
    done = subprocess.run([sys.executable, str(ROOT / "cli.py"), "serve", str(dirs["live"]), "--host", "0.0.0.0"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "refusing to listen on 0.0.0.0" in done.stderr and "--public" in done.stderr
    from latent.cli import cli

    monkeypatch.delenv("LATENT_TOKEN", raising=False)
    runner = CliRunner()
    result = runner.invoke(cli, ["serve", str(dirs["live"]), "--host", "0.0.0.0", "--public"])
    assert result.exit_code == 1 and "--public needs a token" in result.output
    calls = []
    monkeypatch.setattr("latent.search.server.serve", lambda dirs_, **kw: calls.append((dirs_, kw)))
    monkeypatch.setenv("LATENT_TOKEN", TOKEN)
    result = runner.invoke(cli, ["serve", str(dirs["live"]), "@words", "--port", "8123", "--max-upload-mb", "5"])
    assert result.exit_code == 0, result.output
    (served, kw), = calls
    assert served == [str(dirs["live"]), "@words"] and kw["port"] == 8123 and kw["token"] == TOKEN
    assert kw["host"] == "127.0.0.1" and kw["public"] is False and kw["limits"].max_upload_bytes == 5 * 2**20


def test_a_busy_port_is_one_line_naming_a_free_one(dirs):
    """It printed "Serving ... at http://..." and then uvicorn's raw [Errno 98], exit 3."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        done = subprocess.run([sys.executable, str(ROOT / "cli.py"), "serve", str(dirs["live"]), "--port", str(port)],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
    finally:
        holder.close()
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: port {port} is in use on 127.0.0.1; try --port ")
    assert "Serving" not in done.stderr + done.stdout and "Errno" not in done.stderr


# -- another process writes; concurrency --------------------------------------------------------------------
def test_commits_of_another_process_are_seen_without_restart(client, dirs, tmp_path):
    before = ok(client.get("/api/indexes/live"))
    old_map = ok(client.get("/api/indexes/live/map", params={"sample": 100}))
    assert old_map["generation"] == before["generation"] and old_map["count"] == 40
    fails(client.get("/api/indexes/live/similar", params={"key": "zebra"}), 404)
    words = tmp_path / "new.txt"
    words.write_text("zebra\ngiraffe\nhippopotamus\n")
    done = subprocess.run([sys.executable, str(ROOT / "cli.py"), "add", str(dirs["live"]), str(words),
                           "--format", "words"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    after = ok(client.get("/api/indexes/live"))
    assert after["count"] == 43 and after["generation"] > before["generation"] and after["kinds"] == {"word": 43}
    assert keys(ok(client.get("/api/indexes/live/search", params={"q": "zebra", "k": 1}))) == ["zebra"]
    assert "zebra" in keys(ok(client.get("/api/indexes/live/similar", params={"key": "giraffe", "k": 3})))
    new_map = ok(client.get("/api/indexes/live/map", params={"sample": 100}))
    assert new_map["generation"] == after["generation"] and new_map["count"] == 43
    assert "zebra" in {p["key"] for p in new_map["points"]}


def test_concurrent_requests_agree_with_sequential_ones(client):
    queries = ["king", "france", "music", "river", "computer", "war", "money", "school"]
    expected = {q: keys(ok(client.get("/api/indexes/words/search", params={"q": q, "k": 5}))) for q in queries}
    similar = keys(ok(client.get("/api/indexes/words/similar", params={"key": "king", "k": 5})))
    failures: list = []

    def worker(offset: int) -> None:
        with httpx.Client(base_url=str(client.base_url), timeout=60) as c:
            for i in range(12):
                q = queries[(offset + i) % len(queries)]
                got = keys(c.get("/api/indexes/words/search", params={"q": q, "k": 5}).json())
                if got != expected[q]:
                    failures.append((q, got))
                if keys(c.get("/api/indexes/words/similar", params={"key": "king", "k": 5}).json()) != similar:
                    failures.append(("similar", offset))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


# -- the OpenAPI schema, by schemathesis ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def fuzz_base(dirs, tmp_path_factory, glove_words):
    """A small server for the property-based run: 60 words and the photos (t-SNE is instant on them)."""
    tiny = Index.create(tmp_path_factory.mktemp("fuzz") / "tiny", encoder="glove", index_type="flat")
    tiny.add(word_records(glove_words[300:360], lambda w, i: {"n": i, "tag": "even" if i % 2 == 0 else "odd"}))
    tiny.close()
    with running(create_app([str(tiny.directory), str(dirs["photos"])])) as url:
        # The first UMAP map of a process compiles umap-learn's numba code: about 30 s on a quiet
        # 2-core machine, and in a fresh CI environment under load it passed the fuzzer's 60 s read
        # timeout once. Made here first, with room for it, so the fuzzing times the maps themselves.
        first = httpx.get(f"{url}/api/indexes/tiny/map", params={"method": "umap", "sample": 60}, timeout=600)
        assert first.status_code == 200 and first.json()["method"] == "umap", first.text
        yield url


@pytest.fixture(scope="module")
def api_schema(fuzz_base):
    config = schemathesis.Config.from_dict({
        "phases": {"coverage": {"enabled": False}, "stateful": {"enabled": False}},
        "generation": {"max-examples": 12}})
    return schemathesis.openapi.from_url(f"{fuzz_base}/openapi.json", config=config)


OPERATIONS = [("GET", "/api/indexes"), ("GET", "/api/indexes/{name}"), ("GET", "/api/indexes/{name}/search"),
              ("POST", "/api/indexes/{name}/search/image"), ("GET", "/api/indexes/{name}/similar"),
              ("GET", "/api/indexes/{name}/expr"), ("GET", "/api/indexes/{name}/interpolate"),
              ("GET", "/api/indexes/{name}/analogy"), ("GET", "/api/indexes/{name}/map"),
              ("GET", "/api/indexes/{name}/duplicates"),
              ("GET", "/api/indexes/{name}/items/{id}"), ("GET", "/api/indexes/{name}/items/{id}/thumbnail")]
EXAMPLES = 25  # per operation, valid and invalid requests mixed


@pytest.mark.parametrize("method, path", OPERATIONS)
def test_openapi_schema_holds(api_schema, fuzz_base, method, path):
    """Requests generated from the schema, valid and invalid: never a 5xx; invalid ones are
    refused; every status, content type and body is as the schema says."""
    from hypothesis import given, strategies as st
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (content_type_conformance, negative_data_rejection,
                                                   response_schema_conformance, status_code_conformance)

    operation = api_schema[path][method]
    sent = []

    @given(case=st.one_of(operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
                          operation.as_strategy(generation_mode=GenerationMode.NEGATIVE)))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case):
        sent.append(case)
        case.call_and_validate(base_url=fuzz_base, timeout=60, checks=[
            not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
            negative_data_rejection])

    run()
    assert len(sent) >= (EXAMPLES // 2 if "{name}" in path else 1)  # /api/indexes has no parameters
    print(f"schemathesis: {len(sent)} requests to {method} {path}")


def test_schema_names_the_indexes_and_documents_errors(client):
    schema_doc = ok(client.get("/openapi.json"))
    search_op = schema_doc["paths"]["/api/indexes/{name}/search"]["get"]
    name = next(p for p in search_op["parameters"] if p["name"] == "name")
    assert name["schema"]["enum"] == ["words", "idx", "photos", "live"]
    assert {"200", "400", "404", "422"} <= set(search_op["responses"])
    k = next(p for p in search_op["parameters"] if p["name"] == "k")
    assert (k["schema"]["minimum"], k["schema"]["maximum"]) == (1, 1000)
    upload = schema_doc["paths"]["/api/indexes/{name}/search/image"]["post"]
    assert {"413", "415"} <= set(upload["responses"])
    assert len(schema_doc["paths"]) == 12


def test_urls_quote_index_names(dirs, tmp_path):
    odd = tmp_path / "my photos"
    shutil.copytree(dirs["photos"], odd)
    app = create_app([str(odd)])
    served = app.state.api.served["my photos"]
    assert served.thumbnail_url(3, "image") == f"/api/indexes/{quote('my photos')}/items/3/thumbnail"
