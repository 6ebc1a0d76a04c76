"""The page of `latent serve` in headless Chromium (Playwright driving Debian's chromium):
the real server on a loopback port over a GloVe word index, a ConSE index of photos and a
minilm index of sentences, used the way a person would. Screenshots of each state go to
tests/artifacts/; the two in the README (docs/img/serve*.png) are written when missing,
or always with LATENT_DOCS_SCREENSHOTS=1."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if not CHROMIUM:
    pytest.skip("the browser tests need Debian's chromium (`make browser`, or apt-get install chromium)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need playwright (pip install playwright)")
uvicorn = pytest.importorskip("uvicorn")
skdata = pytest.importorskip("skimage.data")

from PIL import Image  # noqa: E402

from latent.indexer import Index, Record  # noqa: E402
from latent.indexer.images import read_images  # noqa: E402

from conftest import running, word_records  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
DOCS_IMG = ROOT / "docs" / "img"
TOKEN = "t0k3n-for-the-browser-tests"
PHOTOS = ("chelsea", "coffee", "rocket", "astronaut", "camera", "coins", "clock", "hubble_deep_field",
          "immunohistochemistry", "retina", "page")
WORDS = 5000
# an item whose key, text and metadata are HTML: the page must show them as text
HOSTILE_KEY = '<img src=x onerror="window.pwned=1">'
HOSTILE_TEXT = 'A <b>tomato soup</b> recipe <svg onload="window.pwned=2"></svg> with basil'
HOSTILE_TOPIC = "<script>window.pwned=3</script>"
TIMEOUT = 20_000  # ms: the first ConSE query loads minilm


# -- the indexes and the server ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def photo_files(tmp_path_factory) -> Path:
    """A few skimage photos as JPEG files."""
    folder = tmp_path_factory.mktemp("photo-files")
    for name in PHOTOS:
        Image.fromarray(np.asarray(getattr(skdata, name)())).convert("RGB").save(folder / f"{name}.jpg", quality=90)
    return folder


@pytest.fixture(scope="module")
def index_dirs(tmp_path_factory, glove_words, sentences, photo_files) -> list[Path]:
    root = tmp_path_factory.mktemp("served")
    words = Index.create(root / "words", encoder="glove", index_type="flat")
    words.add(word_records(glove_words[:WORDS], lambda w, i: {"initial": w[0], "length": len(w), "rank": i}))
    words.close()
    photos = Index.create(root / "photos", encoder="conse", index_type="flat")
    report = photos.add(read_images([str(photo_files)]))
    assert report.added == len(PHOTOS), report
    photos.close()
    texts = Index.create(root / "sentences", encoder="minilm", index_type="flat")
    texts.add([Record(text=s["text"], key=s["id"], metadata={"topic": s["topic"]}) for s in sentences[::5]]
              + [Record(text=HOSTILE_TEXT, key=HOSTILE_KEY, metadata={"topic": HOSTILE_TOPIC})])
    texts.close()
    return [root / "words", root / "photos", root / "sentences"]


@pytest.fixture(scope="module")
def server(index_dirs):
    from latent.search.server import create_app

    with running(create_app([str(d) for d in index_dirs])) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


def _open(browser, server, *, token=None, dark=False, size=(1280, 800)):
    context = browser.new_context(viewport={"width": size[0], "height": size[1]},
                                  color_scheme="dark" if dark else "light", device_scale_factor=1)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    # script errors and CSP violations ("Refused to ..."); failed requests are checked through the page
    page.on("console", lambda m: errors.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
    page.set_default_timeout(TIMEOUT)
    page.goto(f"{server}/" + (f"?token={token}" if token else ""))
    page.wait_for_selector("#index:not([disabled])")
    return context, page, errors


@pytest.fixture
def page(server, browser):
    context, page, errors = _open(browser, server)
    yield page
    context.close()
    assert not errors, errors  # no script errors, no CSP violations


def shot(page, name: str, *, also: Path | None = None) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    if also is not None and (not also.exists() or os.environ.get("LATENT_DOCS_SCREENSHOTS") == "1"):
        also.parent.mkdir(parents=True, exist_ok=True)  # 256 colours: a third of the bytes, looks the same
        Image.open(path).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(also, optimize=True)
    return path


# -- helpers -----------------------------------------------------------------------------------------------
def choose(page, name: str) -> None:
    page.select_option("#index", name)
    page.wait_for_selector(".welcome")


def idle(page) -> None:
    page.wait_for_selector("#results[aria-busy=false]")


def search(page, text: str, *, where: str = "") -> None:
    page.fill("#where", where)
    page.fill("#q", text)
    page.press("#q", "Enter")
    page.wait_for_function("""(text) => {
        const s = document.getElementById('summary'), r = document.getElementById('results');
        return r.getAttribute('aria-busy') === 'false' && (s.textContent.includes(text) || !document.getElementById('error').hidden);
    }""", arg=text)


def hover_a_point(page, step: int = 6) -> tuple[float, float]:
    """Move the pointer in a spiral out from the map's centre until a point's tooltip shows."""
    box = page.locator("#map").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    for r in range(0, int(min(box["width"], box["height"]) / 2), step):
        for a in np.linspace(0, 2 * np.pi, max(1, r // 3), endpoint=False):
            page.mouse.move(cx + r * np.cos(a), cy + r * np.sin(a))
            if page.is_visible("#tip"):
                return cx, cy
    raise AssertionError("no point under the pointer anywhere on the map")


def keys(page) -> list[str]:
    return page.eval_on_selector_all("#results .card", "cards => cards.map(c => c.dataset.key)")


# -- the tests ----------------------------------------------------------------------------------------------
def test_a_word_search_shows_the_word_first(page):
    choose(page, "words")
    assert "5,000 words" in page.inner_text("#index-info")
    search(page, "king")
    found = keys(page)
    assert found[0] == "king" and len(found) == 12
    assert {"queen", "prince"} & set(found[:8]), found
    first = page.locator("#results .card").first
    assert first.locator(".rank").inner_text() == "#1" and first.locator(".score").inner_text() == "1.000"
    shot(page, "words-search")


def test_clicking_a_result_shows_more_like_it(page):
    choose(page, "words")
    search(page, "king")
    before = keys(page)
    page.click("#results .card[data-key=queen]")
    page.wait_for_function("() => document.getElementById('summary').textContent.includes('similar to')")
    idle(page)
    after = keys(page)
    assert after != before and "queen" not in after
    assert {"princess", "king", "elizabeth"} & set(after[:6]), after
    assert "queen" in page.inner_text("#summary")
    page.hover("#results .card >> nth=2")
    shot(page, "words-similar")
    page.click(".back-btn")  # back to the search for "king"
    page.wait_for_function("() => !document.getElementById('summary').textContent.includes('similar to')")
    idle(page)
    assert keys(page) == before


def test_a_metadata_filter_narrows_the_results(page):
    choose(page, "words")
    search(page, "king", where="initial = q")
    found = keys(page)
    assert found and all(k.startswith("q") for k in found), found
    assert found[0] == "queen"
    assert "initial = q" in page.inner_text("#summary")
    page.select_option("#k", "6")
    search(page, "king", where="length <= 4 and rank < 3000")
    found = keys(page)
    assert len(found) == 6 and all(len(k) <= 4 for k in found), found
    shot(page, "words-filter")


def test_an_expression_and_an_analogy_find_queen(page):
    choose(page, "words")
    page.fill("#q", "king - man + woman")
    assert page.is_visible("#mode-badge")
    page.press("#q", "Enter")
    page.wait_for_function("() => document.getElementById('summary').textContent.includes('expression')")
    idle(page)
    assert keys(page)[0] == "queen"
    page.click("#tab-analogy")
    page.fill("#an-a", "man")
    page.fill("#an-b", "king")
    page.fill("#an-c", "woman")
    page.press("#an-c", "Enter")
    page.wait_for_function("() => document.getElementById('summary').textContent.includes('::')")
    idle(page)
    assert keys(page)[0] == "queen"
    shot(page, "words-analogy")


def test_a_path_between_two_words_shows_its_steps(page):
    choose(page, "words")
    search(page, "france")
    page.locator("#results .card[data-key=france]").hover()
    page.click("#results .card[data-key=france] .end-btn >> text=A")
    assert page.is_visible("#path-form") and page.input_value("#path-a") == "france"
    page.fill("#path-b", "germany")
    page.press("#path-b", "Enter")
    page.wait_for_selector("#results .strip")
    idle(page)
    steps = page.eval_on_selector_all(".step-card", "cs => cs.map(c => c.innerText.replace(/\\s+/g, ' '))")
    assert len(steps) >= 3, steps
    assert steps[0].startswith("france") and "t 0.00" in steps[0], steps
    assert steps[-1].startswith("germany") and "t 1.00" in steps[-1], steps
    shot(page, "words-path")


def test_an_api_error_is_shown_as_a_readable_message(page):
    choose(page, "words")
    search(page, "king")
    assert keys(page)  # results of a first query...
    search(page, "king", where="length >>> 3")
    assert page.is_visible("#error")
    message = page.inner_text("#error-text")
    assert "filter" in message.lower() or "where" in message.lower(), message
    assert "[object" not in message and "{" not in message
    assert "--where" not in message  # the page's field is not a CLI flag
    assert keys(page) == []  # ...do not stand under the error as if they answered the bad one
    assert page.is_enabled("#search-button")
    shot(page, "error")
    page.fill("#where", "")  # a good query clears the message
    search(page, "king")
    assert page.is_hidden("#error") and keys(page)[0] == "king"


def test_the_map_draws_points_shows_a_tooltip_and_searches_from_a_click(page):
    choose(page, "words")
    page.click("#map-toggle")
    page.wait_for_function("() => Number(document.getElementById('map').dataset.drawn) > 0")
    drawn = int(page.get_attribute("#map", "data-drawn"))
    assert drawn == 2000  # the page asks for a sample of 2,000 of the 5,000 words
    assert "2,000 of 5,000 points" in page.inner_text("#map-status")
    cx, cy = hover_a_point(page)
    key = page.inner_text("#tip .tip-key")
    assert key
    shot(page, "words-map-hover")
    page.mouse.down()
    page.mouse.up()
    page.wait_for_function("(k) => document.getElementById('summary').textContent.includes('similar to ' + k)", arg=key)
    idle(page)
    assert keys(page) and key not in keys(page)
    shot(page, "words-map-similar")  # the neighbours ringed on the map
    # zoom in with the wheel: fewer points on screen
    page.mouse.move(cx, cy)
    page.mouse.wheel(0, -600)
    page.wait_for_function("(n) => Number(document.getElementById('map').dataset.drawn) < n", arg=drawn)


def test_a_text_finds_the_photo_and_an_uploaded_photo_finds_itself(page, photo_files):
    choose(page, "photos")
    assert page.is_visible("#image-button")
    search(page, "a cat")
    assert keys(page)[0] == "chelsea.jpg"
    page.wait_for_function("""() => [...document.querySelectorAll('#results .thumb img')]
        .every(i => i.complete && i.naturalWidth > 0)""")
    page.mouse.move(0, 0)
    shot(page, "photos-search", also=DOCS_IMG / "serve.png")

    page.set_input_files("#file", str(photo_files / "coffee.jpg"))
    page.wait_for_function("() => document.getElementById('summary').textContent.includes('like the image')")
    idle(page)
    found = keys(page)
    assert found[0] == "coffee.jpg", found
    score = float(page.locator("#results .card .score").first.inner_text())
    assert score > 0.99
    shot(page, "photos-upload")


def test_the_map_of_the_photos_shows_thumbnails(page):
    choose(page, "photos")
    search(page, "a rocket")
    assert keys(page)[0] == "rocket.jpg"
    page.click("#map-toggle")
    page.wait_for_function("() => Number(document.getElementById('map').dataset.drawn) === %d" % len(PHOTOS))
    page.wait_for_timeout(300)  # the thumbnails load
    hover_a_point(page, step=20)
    assert page.inner_text("#tip .tip-key").endswith(".jpg")
    assert page.eval_on_selector("#tip img", "i => i.complete && i.naturalWidth > 0")
    shot(page, "photos-map", also=DOCS_IMG / "serve-map.png")


def test_a_text_index_shows_snippets_and_filters_by_topic(page):
    choose(page, "sentences")
    search(page, "storms and heavy rain")
    first = page.locator("#results .card").first
    assert "topic: weather" in first.inner_text()
    assert "rain" in first.locator(".snippet").inner_text().lower() or "storm" in first.inner_text().lower()
    shot(page, "sentences-search")
    search(page, "storms and heavy rain", where="topic = ocean")
    chips = page.eval_on_selector_all("#results .card .chip", "cs => cs.map(c => c.textContent)")
    assert chips and set(chips) == {"topic: ocean"}, chips


def test_keyword_and_hybrid_modes_from_the_mode_menu(page, sentences):
    shown = {s["id"]: s["text"] for s in sentences[::5]}
    with_planet = sorted(k for k, t in shown.items() if re.search(r"\bplanets?\b", t, re.IGNORECASE))
    assert with_planet  # the served sentences
    choose(page, "sentences")
    page.select_option("#mode", "keyword")
    search(page, "planet planets")
    assert sorted(keys(page)) == with_planet and "by keywords" in page.inner_text("#summary")
    page.select_option("#mode", "hybrid")
    search(page, "planet planets")
    found = keys(page)
    assert len(found) == 12 and set(with_planet) <= set(found)
    shot(page, "sentences-hybrid")
    page.select_option("#mode", "auto")


def test_keys_texts_and_metadata_are_shown_as_text_never_as_html(page):
    choose(page, "sentences")
    search(page, "tomato soup recipe")
    card = page.locator("#results .card").first
    assert card.get_attribute("data-key") == HOSTILE_KEY
    assert card.locator(".key").inner_text() == HOSTILE_KEY
    assert card.locator(".snippet").inner_text() == HOSTILE_TEXT
    assert card.locator(".chip").first.inner_text() == "topic: " + HOSTILE_TOPIC
    assert page.locator("#results b, #results svg, #results script, #results img").count() == 0
    card.click()  # the summary shows the key too
    page.wait_for_function("() => document.getElementById('summary').textContent.includes('similar to')")
    idle(page)
    assert HOSTILE_KEY in page.inner_text("#summary") and page.locator("#summary img").count() == 0
    assert page.evaluate("window.pwned === undefined")


def test_a_narrow_screen_stacks_the_controls(server, browser):
    context, page, errors = _open(browser, server, size=(390, 844))
    try:
        choose(page, "photos")
        search(page, "a cup of coffee")
        assert keys(page)[0] == "coffee.jpg"
        assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing sticks out sideways
        page.wait_for_function("""() => [...document.querySelectorAll('#results .thumb img')].slice(0, 2)
            .every(i => i.complete && i.naturalWidth > 0)""")
        shot(page, "photos-narrow")
        assert not errors, errors
    finally:
        context.close()


def test_the_token_comes_from_the_address_and_goes_with_every_request(browser, index_dirs):
    """Opened as /?token=T: the token leaves the address bar and goes with the API calls
    (a header) and the thumbnails (?token=); the API refuses requests without it."""
    import urllib.error
    import urllib.request

    from latent.search.server import create_app

    with running(create_app([str(d) for d in index_dirs], token=TOKEN)) as url:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{url}/api/indexes", timeout=10)
        assert refused.value.code == 401
        context, page, errors = _open(browser, url, token=TOKEN)
        try:
            api_calls = []
            page.on("request", lambda r: api_calls.append((r.url, r.headers.get("authorization")))
                    if "/api/" in r.url and "/thumbnail" not in r.url else None)
            assert "token" not in page.url
            choose(page, "photos")
            search(page, "a cat")
            assert keys(page)[0] == "chelsea.jpg"
            page.wait_for_function("""() => [...document.querySelectorAll('#results .thumb img')]
                .every(i => i.complete && i.naturalWidth > 0)""")
            assert "token=" in page.get_attribute("#results .card .thumb img", "src")
            assert api_calls and all(auth == f"Bearer {TOKEN}" for _, auth in api_calls), api_calls
            assert all("token=" not in u for u, _ in api_calls)  # API calls carry it in the header only
            page.reload()  # the token is gone from the address; the page still works (the server's cookie)
            page.wait_for_selector("#index:not([disabled])")
            assert not errors, errors
        finally:
            context.close()


def test_dark_mode(server, browser):
    context, page, errors = _open(browser, server, dark=True)
    try:
        choose(page, "words")
        search(page, "coffee")
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(15, 17, 22)"
        shot(page, "words-dark")
        page.click("#map-toggle")
        page.wait_for_function("() => Number(document.getElementById('map').dataset.drawn) > 0")
        shot(page, "words-dark-map")
        assert not errors, errors
    finally:
        context.close()



# -- the standalone map (`latent map -o map.html`): one offline file, opened from disk ----------------------
@pytest.fixture(scope="module")
def standalone_maps(index_dirs, tmp_path_factory) -> dict[str, Path]:
    """The offline HTML maps of the sentences (coloured by topic, with the hostile item) and of the photos."""
    from latent.search.map_html import render_html
    from latent.search.maps import compute_map

    folder = tmp_path_factory.mktemp("standalone")
    out = {}
    for name, directory, colour in (("sentences", index_dirs[2], "topic"), ("photos", index_dirs[1], None)):
        index = Index.open(directory)
        try:
            m = compute_map(index, method="pca")
        finally:
            index.close()
        out[name] = render_html(m, folder / f"{name}.html", color_by=colour).path
    return out


def _open_file(browser, path: Path):
    context = browser.new_context(viewport={"width": 1280, "height": 800}, device_scale_factor=1)
    page = context.new_page()
    errors: list[str] = []
    requests: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)  # CSP violations too
    page.on("request", lambda r: requests.append(r.url))
    page.set_default_timeout(TIMEOUT)
    page.goto(path.as_uri())
    page.wait_for_function("() => Number(document.getElementById('map').dataset.drawn) > 0")
    return context, page, errors, requests


def test_the_standalone_map_labels_finds_and_singles_out_a_class_offline(browser, server, standalone_maps):
    import urllib.request

    path = standalone_maps["sentences"]
    with urllib.request.urlopen(f"{server}/static/labels.js") as answer:  # what the served page runs
        served_labels = answer.read().decode("utf-8")
    assert served_labels in path.read_text(encoding="utf-8")  # the same label placement, inlined
    context, page, errors, requests = _open_file(browser, path)
    try:
        points = 400 // 5 + 1  # sentences[::5] and the hostile item
        assert int(page.get_attribute("#map", "data-drawn")) == points
        assert int(page.get_attribute("#map", "data-labels")) >= 5
        shot(page, "standalone-map")
        hover_a_point(page)
        assert page.inner_text("#tip .key")
        page.mouse.move(0, 0)
        page.fill("#find", "tomato soup")  # the hostile item: found, shown as text
        page.wait_for_function("() => document.getElementById('status').textContent.includes('1 match')")
        page.click("#legend .item >> nth=0")  # one class only
        page.wait_for_function("(n) => Number(document.getElementById('map').dataset.drawn) < n", arg=points)
        page.fill("#find", "")
        page.uncheck("#labels")
        page.wait_for_function("() => document.getElementById('map').dataset.labels === '0'")
        assert page.evaluate("window.pwned") is None
        assert requests == [path.as_uri()]  # nothing fetched: data, script, style and images are inline
        assert not errors, errors
    finally:
        context.close()


def test_the_standalone_map_of_the_photos_shows_inline_thumbnails(browser, standalone_maps):
    context, page, errors, requests = _open_file(browser, standalone_maps["photos"])
    try:
        assert int(page.get_attribute("#map", "data-drawn")) == len(PHOTOS)
        assert page.is_visible("#thumbs-toggle")
        page.wait_for_timeout(300)  # the data: URI thumbnails decode
        hover_a_point(page, step=20)
        assert page.inner_text("#tip .key").endswith(".jpg")
        assert page.eval_on_selector("#tip img", "i => i.complete && i.naturalWidth > 0")
        shot(page, "standalone-photos-map")
        assert all(not u.startswith("http") for u in requests)
        assert not errors, errors
    finally:
        context.close()


def test_docs_render_offline(server, browser):
    """/docs (Swagger UI) renders the API from the server alone: every request goes to it."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.set_default_timeout(TIMEOUT)
    page.goto(f"{server}/docs")
    page.wait_for_selector(".swagger-ui .info .title")
    page.wait_for_selector(".opblock-summary-path")
    assert "latent" in page.inner_text(".swagger-ui .info .title")
    assert requested and all(url.startswith(server) or url.startswith("data:") for url in requested), requested
    shot(page, "docs")
    context.close()


# -- duplicate groups ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def copies_server(photo_files, tmp_path_factory):
    """A server over an efficientnet index of the photos plus a half-size copy of two of them and a
    JPEG at quality 20 of one."""
    from latent.search.server import create_app

    folder = tmp_path_factory.mktemp("copies")
    for path in photo_files.iterdir():
        shutil.copy(path, folder / path.name)
    for name in ("chelsea", "rocket"):
        im = Image.open(photo_files / f"{name}.jpg")
        im.resize((im.width // 2, im.height // 2)).save(folder / f"{name}-small.jpg", quality=90)
    Image.open(photo_files / "chelsea.jpg").save(folder / "chelsea-q20.jpg", quality=20)
    index = Index.create(tmp_path_factory.mktemp("copies-index") / "copies", encoder="efficientnet")
    assert index.add(read_images([str(folder)])).added == len(PHOTOS) + 3
    index.close()
    with running(create_app([str(index.directory)])) as url:
        yield url


def test_the_duplicates_tab_shows_groups_with_thumbnails(copies_server, browser):
    context, page, errors = _open(browser, copies_server)
    try:
        choose(page, "copies")
        page.click("#tab-dupes")
        page.select_option("#dupes-threshold", "0.8")
        page.click("#dupes-button")
        page.wait_for_selector(".dupe-group")
        idle(page)
        groups = page.eval_on_selector_all(".dupe-group", """gs => gs.map(g =>
            [...g.querySelectorAll('.card')].map(c => c.dataset.key).sort())""")
        assert sorted(groups) == [["chelsea-q20.jpg", "chelsea-small.jpg", "chelsea.jpg"],
                                  ["rocket-small.jpg", "rocket.jpg"]]
        assert page.locator(".card.representative").count() == 2
        page.wait_for_function("""() => [...document.querySelectorAll('.dupe-group .thumb img')]
            .every(i => i.complete && i.naturalWidth > 0)""")
        assert "2 groups" in page.inner_text("#summary")
        page.mouse.move(0, 0)
        shot(page, "photos-duplicates", also=DOCS_IMG / "serve-dupes.png")
        page.locator(".dupe-group .card").first.click()  # a card searches for more like it
        page.wait_for_function("() => document.getElementById('summary').textContent.includes('similar to')")
    finally:
        context.close()
    assert not errors, errors
