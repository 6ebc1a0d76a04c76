/* latent serve: the browser side of the search API (see search/server.py).
 *
 * Vanilla JS, no requests outside this server. Every string that comes from an index
 * (keys, texts, metadata) reaches the page through textContent, attributes set from
 * script, or canvas text; nothing from the data is ever parsed as HTML.
 */
(function () {
  "use strict";

  // ---- the access token: taken from ?token=, kept in memory, removed from the address bar
  let token = null;
  (function takeToken() {
    const url = new URL(window.location.href);
    const given = url.searchParams.get("token");
    if (given) {
      token = given;
      url.searchParams.delete("token");
      window.history.replaceState(window.history.state, "", url.pathname + url.search + url.hash);
    }
  })();

  const $ = (id) => document.getElementById(id);

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function withToken(url) {
    if (!token || !url) return url;
    return url + (url.indexOf("?") >= 0 ? "&" : "?") + "token=" + encodeURIComponent(token);
  }

  // A thumbnail URL of the API at a given size (unless it names one already).
  function sized(url, px) {
    if (typeof url !== "string" || /[?&]size=/.test(url)) return url;
    return url + (url.indexOf("?") >= 0 ? "&" : "?") + "size=" + px;
  }

  // Thumbnail URLs come from the API; only same-origin paths are used (never another host).
  function safeImageUrl(url) {
    if (typeof url !== "string" || !url) return null;
    if (!/^\/(?!\/)/.test(url) && !/^api\//.test(url)) return null;
    return withToken(url);
  }

  // ---- talking to the API -------------------------------------------------------------
  class ApiError extends Error {
    constructor(message, status, retryAfter) {
      super(message); this.name = "ApiError"; this.status = status; this.retryAfter = retryAfter;
    }
  }

  function messageOf(data, res) {
    if (data && typeof data.error === "string" && data.error) return data.error;
    if (data && data.detail !== undefined) {  // a framework-level error (e.g. FastAPI's validation)
      if (typeof data.detail === "string") return data.detail;
      if (Array.isArray(data.detail)) {
        return data.detail.map((d) => {
          const where = Array.isArray(d.loc) ? d.loc.filter((p) => p !== "query" && p !== "body").join(".") : "";
          return (where ? where + ": " : "") + (d.msg || JSON.stringify(d));
        }).join("; ");
      }
    }
    return "the server answered " + res.status + (res.statusText ? " " + res.statusText : "");
  }

  async function api(path, options) {
    const opts = options || {};
    const headers = {Accept: "application/json"};
    if (token) headers.Authorization = "Bearer " + token;
    let res;
    try {
      res = await fetch(path, {method: opts.method || "GET", body: opts.body, headers: headers,
                               signal: opts.signal, credentials: "same-origin", cache: "no-store"});
    } catch (e) {
      if (e && e.name === "AbortError") throw e;
      throw new ApiError("cannot reach the server (" + (e && e.message ? e.message : e) + ")", 0);
    }
    let data = null;
    const type = res.headers.get("content-type") || "";
    if (type.indexOf("json") >= 0) {
      try { data = await res.json(); } catch (e) { data = null; }
    }
    if (!res.ok) {
      let msg = messageOf(data, res);
      if (res.status === 401 && !token) msg += " — open the page with the link `latent serve` printed (it carries ?token=…)";
      throw new ApiError(msg, res.status, Number(res.headers.get("retry-after")) || 0);
    }
    if (data === null) throw new ApiError("the server sent no JSON (" + (type || "no content type") + ")", res.status);
    return data;
  }

  function query(params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) {
      if (v === undefined || v === null || v === "") continue;
      q.set(k, String(v));
    }
    const s = q.toString();
    return s ? "?" + s : "";
  }

  // ---- state --------------------------------------------------------------------------
  const state = {
    indexes: [],
    index: null,          // the chosen index's description from /api/indexes
    hits: [],             // the hits shown
    ticket: 0,            // the latest main request; older answers are dropped
    controller: null,     // aborts the request in flight when a new one starts
    busy: 0,
    history: [],          // actions run, newest last (for "back")
    preview: null,        // object URL of the image searched by
  };

  const ui = {
    index: $("index"), info: $("index-info"), mapToggle: $("map-toggle"),
    searchForm: $("search-form"), q: $("q"), mode: $("mode"), badge: $("mode-badge"),
    imageButton: $("image-button"), file: $("file"), where: $("where"), minScore: $("min-score"), k: $("k"),
    pathForm: $("path-form"), pathA: $("path-a"), pathB: $("path-b"), steps: $("steps"), pathMethod: $("path-method"),
    analogyForm: $("analogy-form"), anA: $("an-a"), anB: $("an-b"), anC: $("an-c"), anMethod: $("analogy-method"),
    error: $("error"), errorText: $("error-text"), summary: $("summary"), results: $("results"),
    progress: $("progress"), dropOverlay: $("drop-overlay"), dropZone: $("drop-zone"),
  };
  ui.dupesForm = $("dupes-form"); ui.dupesThreshold = $("dupes-threshold"); ui.dupesWhere = $("dupes-where");
  const submitButtons = [$("search-button"), $("path-button"), $("analogy-button"), $("dupes-button")];

  function indexPath(suffix) {
    return "api/indexes/" + encodeURIComponent(state.index.name) + suffix;
  }

  function takesImages() {
    return !!state.index && Array.isArray(state.index.modalities) && state.index.modalities.indexOf("image") >= 0;
  }

  function takesText() {
    const m = state.index && Array.isArray(state.index.modalities) ? state.index.modalities : [];
    return m.indexOf("text") >= 0 || m.indexOf("word") >= 0 || m.length === 0;
  }

  // ---- busy / errors ------------------------------------------------------------------
  // The progress bar runs while any request does; the buttons wait only for the main one
  // (a map being computed does not hold up searching).
  let loads = 0;
  function setLoading(on) {
    loads = Math.max(0, loads + (on ? 1 : -1));
    ui.progress.hidden = loads === 0;
  }

  function setBusy(on) {
    setLoading(on);
    state.busy = Math.max(0, state.busy + (on ? 1 : -1));
    const busy = state.busy > 0;
    ui.results.setAttribute("aria-busy", busy ? "true" : "false");
    document.body.classList.toggle("busy", busy);
    for (const b of submitButtons) { b.disabled = busy; b.classList.toggle("loading", busy); }
    ui.imageButton.disabled = busy;
  }

  function showError(message) {
    ui.errorText.textContent = message;
    ui.error.hidden = false;
  }

  function hideError() { ui.error.hidden = true; ui.errorText.textContent = ""; }
  $("error-close").addEventListener("click", hideError);

  // ---- indexes --------------------------------------------------------------------------
  function formatCount(n) { return typeof n === "number" ? n.toLocaleString("en-US") : "?"; }

  function describeKinds(ix) {
    const kinds = ix.kinds && typeof ix.kinds === "object" ? ix.kinds : {};
    const parts = [];
    for (const [kind, n] of Object.entries(kinds)) {
      if (typeof n === "number" && n > 0) parts.push(formatCount(n) + " " + kind + (n === 1 ? "" : "s"));
    }
    return parts.join(" · ");
  }

  async function loadIndexes() {
    setBusy(true);
    try {
      const data = await api("api/indexes");
      state.indexes = Array.isArray(data.indexes) ? data.indexes : [];
      ui.index.replaceChildren();
      if (!state.indexes.length) {
        ui.index.appendChild(el("option", null, "no indexes"));
        showError("the server has no indexes; start it with `latent serve DIR…`");
        return;
      }
      state.indexes.forEach((ix, i) => {
        const o = el("option", null, ix.name + "  ·  " + formatCount(ix.count) + "  ·  " + ix.encoder);
        o.value = String(ix.name);
        ui.index.appendChild(o);
      });
      ui.index.disabled = false;
      ui.mapToggle.disabled = false;
      chooseIndex(state.indexes[0].name);
    } catch (e) {
      ui.index.replaceChildren(el("option", null, "no indexes"));
      showError(e.message);
    } finally {
      setBusy(false);
    }
  }

  function chooseIndex(name) {
    state.ticket++;  // an answer still on its way belongs to the index left
    if (state.controller) state.controller.abort();
    state.index = state.indexes.find((ix) => String(ix.name) === name) || state.indexes[0];
    ui.index.value = String(state.index.name);
    const ix = state.index;
    ui.info.replaceChildren();
    const kinds = describeKinds(ix) || formatCount(ix.count) + " items";
    const takes = Array.isArray(ix.modalities) && ix.modalities.length ? "queries: " + ix.modalities.join(", ") : null;
    ui.info.appendChild(el("span", "count", kinds));
    ui.info.appendChild(el("span", null, [ix.dim ? ix.dim + "-d" : null, ix.index_type, takes].filter(Boolean).join(" · ")));
    ui.imageButton.hidden = !takesImages();
    ui.q.placeholder = placeholderFor(ix);
    ui.where.placeholder = takesImages() ? "e.g. label in (tabby, 'tiger cat') and width >= 300"
      : isWordIndex() ? "e.g. length <= 5" : "e.g. topic = weather and year >= 2000";
    state.hits = [];
    state.history = [];
    hideError();
    showWelcome();
    MapView.reset();
  }

  function isWordIndex() {
    const ix = state.index;
    return !!(ix && (ix.encoder === "glove" || (ix.kinds && ix.kinds.word > 0 && !ix.kinds.text && !ix.kinds.image)));
  }

  function placeholderFor(ix) {
    if (takesImages() && takesText()) return "Describe a picture (a cat, a cup of coffee), or drop an image…";
    if (takesImages()) return "Drop or choose an image — this index's encoder takes no text";
    if (isWordIndex()) return "A word (king), or an expression: king - man + woman";
    return "Search by meaning: a word, a sentence, or an expression with + and -";
  }

  ui.index.addEventListener("change", () => chooseIndex(ui.index.value));

  // ---- the welcome state ------------------------------------------------------------------
  function examples() {
    if (takesImages() && takesText()) return ["a cat", "a cup of coffee", "a rocket", "an astronaut"];
    if (isWordIndex()) return ["king", "coffee", "king - man + woman", "paris - france + italy"];
    if (takesText()) return ["storms and floods", "how do vaccines work", "space exploration"];
    return [];
  }

  function showWelcome() {
    ui.summary.replaceChildren();
    ui.results.replaceChildren();
    ui.results.className = "results";
    const box = el("div", "welcome");
    box.appendChild(el("h2", null, "Search " + state.index.name));
    const p = el("p", null, takesImages() && takesText()
      ? "Type a description, or drop an image anywhere on the page. Click any result to see more like it."
      : takesImages() ? "Drop an image anywhere on the page, or choose one with the image button."
        : "Type a query and press Enter. Click any result to see more like it.");
    box.appendChild(p);
    const ex = examples();
    if (ex.length) {
      const row = el("div", "examples");
      row.appendChild(el("span", "muted", "Try"));
      for (const text of ex) {
        const b = el("button", "chip-btn", text);
        b.type = "button";
        b.addEventListener("click", () => { ui.q.value = text; updateBadge(); selectTab("search"); submitSearch(); });
        row.appendChild(b);
      }
      box.appendChild(row);
    }
    ui.results.appendChild(box);
  }

  // ---- running an action --------------------------------------------------------------------
  // An action: {kind, label (for the summary), url, method, body (FormData), render: "hits" | "path"}
  async function run(action, opts) {
    if (!state.index) return;
    const ticket = ++state.ticket;
    if (state.controller) state.controller.abort();
    const controller = new AbortController();
    state.controller = controller;
    hideError();
    setBusy(true);
    const started = performance.now();
    try {
      const data = await api(action.url, {method: action.method, body: action.body, signal: controller.signal});
      if (ticket !== state.ticket) return;
      const ms = typeof data.took_ms === "number" ? data.took_ms : performance.now() - started;
      ui.where.classList.remove("invalid");
      if (!(opts && opts.back)) state.history = state.history.slice(-49).concat([action]);
      if (action.render === "path") renderPath(action, Array.isArray(data.steps) ? data.steps : [], ms);
      else if (action.render === "dupes") renderDupes(action, data, ms);
      else renderHits(action, Array.isArray(data.hits) ? data.hits : [], ms);
    } catch (e) {
      if (e && e.name === "AbortError") return;
      if (ticket === state.ticket) {
        const message = e && e.message ? e.message : String(e);
        // the results of an earlier query must not stand under an error as if they answered this one
        state.hits = [];
        ui.summary.replaceChildren();
        ui.results.replaceChildren();
        showError(message);
        ui.where.classList.toggle("invalid", !!ui.where.value.trim() && /filter|where/i.test(message));
      }
    } finally {
      if (state.controller === controller) state.controller = null;
      setBusy(false);
    }
  }

  function filters() {
    return {k: ui.k.value, where: ui.where.value.trim(), min_score: ui.minScore.value.trim()};
  }

  function looksLikeExpression(q) {
    // spaced + or - between terms ("king - man + woman"), a weight ("0.5*x"), or a leading "- x"
    return /\S\s+[+-]\s+\S/.test(q) || /^\s*-\s+\S/.test(q) || /\d\s*\*\s*\S/.test(q);
  }

  function effectiveMode(q) {
    if (ui.mode.value === "auto") return looksLikeExpression(q) ? "expr" : "text";
    return ui.mode.value;
  }

  function updateBadge() {
    const q = ui.q.value.trim();
    ui.badge.hidden = !(q && effectiveMode(q) === "expr");
  }
  ui.q.addEventListener("input", updateBadge);
  ui.mode.addEventListener("change", updateBadge);

  function submitSearch() {
    const q = ui.q.value.trim();
    if (!state.index) return;
    if (!q) {
      if (takesImages() && !takesText()) { ui.file.click(); return; }
      showError("type something to search for" + (takesImages() ? ", or drop an image" : ""));
      ui.q.focus();
      return;
    }
    const f = filters();
    if (effectiveMode(q) === "expr") {
      run({kind: "expr", label: q, render: "hits", url: indexPath("/expr" + query({expr: q, k: f.k, where: f.where}))});
    } else {
      const mode = effectiveMode(q);  // text, keyword or hybrid
      const params = mode === "text" ? {q: q, ...f} : {q: q, mode: mode, ...f};
      run({kind: "text", label: q, mode: mode, render: "hits", url: indexPath("/search" + query(params))});
    }
  }

  function searchSimilar(item) {
    const f = filters();
    run({kind: "similar", label: item.key, thumb: item.thumbnail, render: "hits",
         url: indexPath("/similar" + query({id: item.id, ...f}))});
  }

  function searchImage(file) {
    if (!file) return;
    if (!takesImages()) {
      showError("the index " + state.index.name + " (" + state.index.encoder + ") does not take images; choose an image index");
      return;
    }
    if (file.type && file.type.indexOf("image/") !== 0) {
      showError(file.name + " is not an image (" + file.type + ")");
      return;
    }
    ui.q.value = "";
    updateBadge();
    if (state.preview) URL.revokeObjectURL(state.preview);
    state.preview = URL.createObjectURL(file);
    const body = new FormData();
    body.append("file", file, file.name || "image");
    const f = filters();
    run({kind: "image", label: file.name || "pasted image", preview: state.preview, render: "hits", method: "POST",
         body: body, url: indexPath("/search/image" + query(f))});
  }

  ui.searchForm.addEventListener("submit", (e) => { e.preventDefault(); submitSearch(); });
  ui.imageButton.addEventListener("click", () => ui.file.click());
  ui.file.addEventListener("change", () => {
    const file = ui.file.files && ui.file.files[0];
    if (file) searchImage(file);
    ui.file.value = "";
  });

  ui.pathForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const a = ui.pathA.value.trim(), b = ui.pathB.value.trim();
    if (!a || !b) { showError("give both ends of the path, A and B (keys or texts)"); (a ? ui.pathB : ui.pathA).focus(); return; }
    run({kind: "path", label: a + " → " + b, render: "path",
         url: indexPath("/interpolate" + query({a: a, b: b, steps: ui.steps.value, method: ui.pathMethod.value}))});
  });

  ui.analogyForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const a = ui.anA.value.trim(), b = ui.anB.value.trim(), c = ui.anC.value.trim();
    if (!a || !b || !c) { showError("an analogy needs three terms: a is to b as c is to ?"); return; }
    run({kind: "analogy", label: a + " : " + b + " :: " + c + " : ?", render: "hits",
         url: indexPath("/analogy" + query({a: a, b: b, c: c, k: ui.k.value, method: ui.anMethod.value}))});
  });

  ui.dupesForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const threshold = ui.dupesThreshold.value, where = ui.dupesWhere.value.trim();
    run({kind: "dupes", label: "similarity ≥ " + threshold + (where ? ", filter " + where : ""), render: "dupes",
         url: indexPath("/duplicates" + query({threshold: threshold, where: where}))});
  });

  // ---- tabs --------------------------------------------------------------------------------
  const tabs = {search: [$("tab-search"), ui.searchForm, ui.q], path: [$("tab-path"), ui.pathForm, ui.pathA],
                analogy: [$("tab-analogy"), ui.analogyForm, ui.anA], dupes: [$("tab-dupes"), ui.dupesForm, ui.dupesThreshold]};

  function selectTab(name, focus) {
    for (const [key, [tab, pane]] of Object.entries(tabs)) {
      const on = key === name;
      tab.setAttribute("aria-selected", on ? "true" : "false");
      tab.tabIndex = on ? 0 : -1;
      pane.hidden = !on;
    }
    if (focus) tabs[name][2].focus();
  }
  for (const [key, [tab]] of Object.entries(tabs)) {
    tab.addEventListener("click", () => selectTab(key, true));
    tab.addEventListener("keydown", (e) => {
      const names = Object.keys(tabs);
      const i = names.indexOf(key);
      if (e.key === "ArrowRight" || e.key === "ArrowLeft") {
        const next = names[(i + (e.key === "ArrowRight" ? 1 : names.length - 1)) % names.length];
        selectTab(next); tabs[next][0].focus();
      }
    });
  }

  // ---- drawing results -------------------------------------------------------------------------
  const HIDDEN_FIELDS = new Set(["path", "sha256", "mtime", "bytes", "format", "labels", "source", "line"]);

  function scalar(v) {
    return v === null || ["string", "number", "boolean"].indexOf(typeof v) >= 0;
  }

  function shortValue(v) {
    let s = typeof v === "number" && !Number.isInteger(v) ? String(+v.toPrecision(4)) : String(v);
    s = s.replace(/\s+/g, " ");
    return s.length > 36 ? s.slice(0, 35) + "…" : s;
  }

  function metadataChips(meta, most) {
    const out = [];
    if (!meta || typeof meta !== "object") return out;
    const image = typeof meta.width === "number" && typeof meta.height === "number";
    if (image && scalar(meta.label) && meta.label !== "") out.push(shortValue(meta.label));
    for (const [k, v] of Object.entries(meta)) {
      if (out.length >= most) break;
      if (HIDDEN_FIELDS.has(k) || (image && (k === "width" || k === "height" || k === "label"))) continue;
      if (!scalar(v) || v === "") continue;
      out.push(k + ": " + shortValue(v));
    }
    if (image && out.length < most) out.push(meta.width + "×" + meta.height);
    return out;
  }

  function metadataTitle(meta) {
    if (!meta || typeof meta !== "object" || !Object.keys(meta).length) return "";
    let s;
    try { s = JSON.stringify(meta, null, 1); } catch (e) { return ""; }
    return s.length > 1200 ? s.slice(0, 1199) + "…" : s;
  }

  function scoreText(s) { return typeof s === "number" && isFinite(s) ? s.toFixed(3) : "–"; }

  function thumbImage(url, alt) {
    const src = safeImageUrl(url);
    if (!src) return null;
    const img = el("img");
    img.alt = alt || "";
    img.loading = "lazy";
    img.decoding = "async";
    img.src = src;
    img.addEventListener("error", () => img.classList.add("broken"));
    return img;
  }

  function cardBody(item) {
    const thumb = item.thumbnail ? thumbImage(item.thumbnail, item.key) : null;
    if (thumb) {
      const box = el("div", "thumb");
      box.appendChild(thumb);
      return box;
    }
    const text = typeof item.text === "string" ? item.text : "";
    if (!text || text === item.key || item.kind === "word") return el("div", "word", item.key);
    const snippet = el("div", "snippet", text.length > 400 ? text.slice(0, 399) + "…" : text);
    return snippet;
  }

  function makeCard(hit, scale) {
    const card = el("article", "card");
    card.dataset.kind = String(hit.kind || "");
    card.dataset.key = String(hit.key);
    card.tabIndex = 0;
    card.setAttribute("role", "button");
    card.setAttribute("aria-label", "#" + hit.rank + " " + hit.key + ", score " + scoreText(hit.score) + ": show similar items");
    const body = cardBody(hit);
    card.appendChild(body);

    const foot = el("div", "foot");
    const line = el("div", "line");
    line.appendChild(el("span", "rank", "#" + hit.rank));
    const showKey = body.className !== "word";
    const key = el("span", "key", showKey ? hit.key : "");
    key.title = String(hit.key);
    line.appendChild(key);
    line.appendChild(el("span", "score", scoreText(hit.score)));
    foot.appendChild(line);

    const bar = el("div", "bar");
    const fill = el("span");
    const frac = typeof hit.score === "number" && isFinite(hit.score) ? Math.max(0, Math.min(1, hit.score / scale)) : 0;
    fill.style.width = (frac * 100).toFixed(1) + "%";
    bar.appendChild(fill);
    foot.appendChild(bar);

    const chips = metadataChips(hit.metadata, showKey ? 3 : 2);
    if (chips.length) {
      const row = el("div", "chips");
      for (const c of chips) row.appendChild(el("span", "chip", c));
      foot.appendChild(row);
    }
    const tip = metadataTitle(hit.metadata);
    if (tip) card.title = hit.key + "\n" + tip;

    const actions = el("div", "actions");
    for (const end of ["A", "B"]) {
      const b = el("button", "end-btn", end);
      b.type = "button";
      b.title = "Use as the " + (end === "A" ? "start" : "end") + " of a path";
      b.setAttribute("aria-label", "Set " + hit.key + " as path end " + end);
      b.addEventListener("click", (e) => { e.stopPropagation(); setEnd(end, hit.key); });
      actions.appendChild(b);
    }
    card.appendChild(foot);
    card.appendChild(actions);

    card.addEventListener("click", () => searchSimilar(hit));
    card.addEventListener("keydown", (e) => {
      if ((e.key === "Enter" || e.key === " ") && e.target === card) { e.preventDefault(); searchSimilar(hit); }
    });
    return card;
  }

  function setEnd(end, key) {
    (end === "A" ? ui.pathA : ui.pathB).value = key;
    selectTab("path");
    const other = end === "A" ? ui.pathB : ui.pathA;
    if (!other.value.trim()) other.focus(); else $("path-button").focus();
  }

  function summaryFor(action, count, ms, noun) {
    ui.summary.replaceChildren();
    if (state.history.length > 1) {
      const back = el("button", "back-btn", "←");
      back.type = "button";
      back.title = "Back to the previous results";
      back.setAttribute("aria-label", "Back");
      back.addEventListener("click", goBack);
      ui.summary.appendChild(back);
    }
    ui.summary.appendChild(el("strong", null, count + " " + noun + (count === 1 ? "" : "s")));
    const what = el("span", "what");
    const img = action.preview ? thumbImageBlob(action.preview) : action.thumb ? thumbImage(action.thumb, "") : null;
    if (action.kind === "text") {
      what.append(" for "); what.appendChild(el("q", null, action.label));
      if (action.mode === "keyword" || action.mode === "hybrid") what.append(action.mode === "keyword" ? " by keywords (BM25)" : " by meaning and keywords (hybrid)");
    }
    else if (action.kind === "expr") { what.append(" for the expression "); what.appendChild(el("code", null, action.label)); }
    else if (action.kind === "similar") { what.append(" similar to "); if (img) what.appendChild(img); what.appendChild(el("b", null, action.label)); }
    else if (action.kind === "image") { what.append(" like the image "); if (img) what.appendChild(img); what.appendChild(el("b", null, action.label)); }
    else if (action.kind === "analogy") { what.append(" for "); what.appendChild(el("code", null, action.label)); }
    else if (action.kind === "path") { what.append(" from "); what.appendChild(el("code", null, action.label)); }
    else if (action.kind === "dupes") { what.append(" of near-duplicates at "); what.appendChild(el("code", null, action.label)); }
    ui.summary.appendChild(what);
    const where = ["path", "analogy", "dupes"].indexOf(action.kind) < 0 ? ui.where.value.trim() : "";
    if (where) {
      const f = el("span", "filter");
      f.append("filter ");
      f.appendChild(el("code", null, where));
      ui.summary.appendChild(f);
    }
    ui.summary.appendChild(el("span", "took", Math.round(ms) + " ms"));
  }

  function thumbImageBlob(url) {
    if (typeof url !== "string" || url.indexOf("blob:") !== 0) return null;
    const img = el("img");
    img.alt = "";
    img.src = url;
    return img;
  }

  function goBack() {
    if (state.history.length < 2) return;
    state.history.pop();
    run(state.history[state.history.length - 1], {back: true});
  }

  function renderHits(action, hits, ms) {
    state.hits = hits;
    summaryFor(action, hits.length, ms, "result");
    ui.results.replaceChildren();
    const onlyWords = hits.length > 0 && hits.every((h) => !h.thumbnail && (h.kind === "word" || !h.text || h.text === h.key));
    const images = hits.some((h) => h.thumbnail);
    ui.results.className = "results grid" + (onlyWords ? " words" : images ? " images" : " texts");
    if (!hits.length) {
      const none = el("div", "empty");
      none.appendChild(el("strong", null, "Nothing found."));
      none.appendChild(el("span", null, ui.where.value.trim() || ui.minScore.value.trim()
        ? " No item matches the filter or the minimum score; loosen them." : " The index may be empty."));
      ui.results.appendChild(none);
    }
    const top = hits.reduce((m, h) => (typeof h.score === "number" && isFinite(h.score) ? Math.max(m, h.score) : m), 0);
    // analogies, BM25 and fused scores are not cosines in [-1, 1]: their bars are relative to the best hit
    const relative = action.kind === "analogy" || action.mode === "keyword" || action.mode === "hybrid";
    const scale = relative ? Math.max(top, 1e-9) : Math.max(1, top);
    for (const hit of hits) ui.results.appendChild(makeCard(hit, scale));
    suggestFilter(hits);
    MapView.highlight(hits.map((h) => h.id));
  }

  function renderDupes(action, data, ms) {
    const groups = Array.isArray(data.groups) ? data.groups : [];
    state.hits = [];
    summaryFor(action, typeof data.total_groups === "number" ? data.total_groups : groups.length, ms, "group");
    ui.results.replaceChildren();
    ui.results.className = "results dupes";
    if (!groups.length) {
      const none = el("div", "empty");
      none.appendChild(el("strong", null, "No near-duplicates."));
      none.appendChild(el("span", null, " No two items are this similar; lower the threshold to see looser groups."));
      ui.results.appendChild(none);
    }
    groups.forEach((g, n) => {
      const section = el("section", "dupe-group");
      section.setAttribute("aria-label", "Group " + (n + 1) + " of " + g.size + " items");
      const head = el("div", "dupe-head");
      head.appendChild(el("strong", null, "Group " + (n + 1)));
      head.appendChild(el("span", null, g.size + " items · linked at ≥ " + scoreText(g.min_score) + " · representative "));
      head.appendChild(el("b", null, String(g.representative)));
      section.appendChild(head);
      const items = Array.isArray(g.items) ? g.items : [];
      const images = items.some((m) => m.thumbnail);
      const grid = el("div", "results grid " + (images ? "images" : "texts"));
      items.forEach((m, i) => {
        const card = makeCard(Object.assign({}, m, {rank: i + 1}), 1);
        if (i === 0) card.classList.add("representative");
        grid.appendChild(card);
      });
      section.appendChild(grid);
      ui.results.appendChild(section);
    });
    MapView.highlight([].concat.apply([], groups.map((g) => (g.items || []).map((m) => m.id))));
  }

  function renderPath(action, steps, ms) {
    state.hits = [];
    summaryFor(action, steps.length, ms, "stop");
    ui.results.replaceChildren();
    ui.results.className = "results path";
    const strip = el("ol", "strip");
    steps.forEach((step, i) => {
      const li = el("li", "step");
      const card = el("div", "step-card");
      card.dataset.kind = String(step.kind || "");
      card.tabIndex = 0;
      card.setAttribute("role", "button");
      card.setAttribute("aria-label", "t " + step.t + ": " + step.key + "; show similar items");
      card.appendChild(cardBody(step));
      const label = el("div", "step-key", step.key);
      label.title = String(step.key);
      if (card.firstChild.className !== "word") card.appendChild(label);
      const meta = el("div", "step-meta");
      meta.appendChild(el("span", "t", "t " + (typeof step.t === "number" ? step.t.toFixed(2) : step.t)));
      meta.appendChild(el("span", "score", scoreText(step.score)));
      card.appendChild(meta);
      const go = () => { if (step.id !== undefined && step.id !== null) searchSimilar(step); };
      card.addEventListener("click", go);
      card.addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); go(); } });
      li.appendChild(card);
      if (i < steps.length - 1) li.appendChild(el("span", "step-arrow", "→"));
      strip.appendChild(li);
    });
    ui.results.appendChild(strip);
    if (!steps.length) ui.results.appendChild(el("div", "empty", "The path is empty."));
    MapView.highlight(steps.map((s) => s.id));
  }

  // The filter placeholder shows a field of the hits, so the example is one that works here.
  function suggestFilter(hits) {
    let number = null;
    for (const h of hits.slice(0, 3)) {
      const meta = h.metadata;
      if (!meta || typeof meta !== "object") continue;
      for (const [k, v] of Object.entries(meta)) {
        if (HIDDEN_FIELDS.has(k) || !/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) continue;
        if (typeof v === "string" && v && v.length < 30) {
          const q = /^[A-Za-z0-9_.-]+$/.test(v) ? v : "'" + v.replace(/'/g, "''") + "'";
          ui.where.placeholder = "e.g. " + k + " = " + q + (number ? " and " + number : "");
          return;
        }
        if (number === null && typeof v === "number" && isFinite(v)) number = k + " <= " + v;
      }
    }
    if (number) ui.where.placeholder = "e.g. " + number;
  }

  // ---- images: drop, paste ------------------------------------------------------------------
  let dragDepth = 0;
  function hasFiles(e) { return !!(e.dataTransfer && Array.prototype.indexOf.call(e.dataTransfer.types || [], "Files") >= 0); }
  document.addEventListener("dragenter", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    dragDepth++;
    ui.dropOverlay.hidden = false;
  });
  document.addEventListener("dragover", (e) => { if (hasFiles(e)) { e.preventDefault(); e.dataTransfer.dropEffect = "copy"; } });
  document.addEventListener("dragleave", () => { dragDepth = Math.max(0, dragDepth - 1); if (!dragDepth) ui.dropOverlay.hidden = true; });
  document.addEventListener("drop", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    dragDepth = 0;
    ui.dropOverlay.hidden = true;
    const file = e.dataTransfer.files && e.dataTransfer.files[0];
    if (file) { selectTab("search"); searchImage(file); }
  });
  document.addEventListener("paste", (e) => {
    const files = e.clipboardData && e.clipboardData.files;
    if (files && files.length && files[0].type.indexOf("image/") === 0) {
      e.preventDefault();
      selectTab("search");
      searchImage(files[0]);
    }
  });

  // ---- the map ------------------------------------------------------------------------------
  const MapView = (function () {
    const panel = $("map-panel"), stage = $("map-stage"), canvas = $("map"), ctx = canvas.getContext("2d");
    const tip = $("tip"), status = $("map-status"), loading = $("map-loading"), method = $("map-method");
    const FONT = "11px system-ui, -apple-system, 'Segoe UI', Roboto, Arial, sans-serif";
    const MAP_THUMB = 128;      // px: map and tooltip thumbnails (one size, so the tooltip's is cached)
    let tipFor = -1;            // the point the tooltip shows
    let data = null;            // {points, total, method}
    let forIndex = null;        // the index the map belongs to
    let pending = null;         // AbortController of the map request
    let W = 0, H = 0, dpr = 1;
    let view = {s: 1, tx: 0, ty: 0};  // screen = data * s + t (data in [0, 1], y up)
    let hover = -1, marked = new Set(), thumbs = [], labels = [], labelOrder = [], labelWidth = [];
    let colours = null, frame = 0;

    function open() {
      panel.hidden = false;
      document.body.classList.add("map-open");
      ui.mapToggle.setAttribute("aria-pressed", "true");
      resize();
      if (!data || forIndex !== state.index) load();
    }
    function close() {
      panel.hidden = true;
      document.body.classList.remove("map-open");
      ui.mapToggle.setAttribute("aria-pressed", "false");
      tip.hidden = true;
    }
    function isOpen() { return !panel.hidden; }

    function reset() {
      if (pending) pending.abort();
      data = null; forIndex = null; hover = -1; marked = new Set(); thumbs = []; labels = []; labelOrder = [];
      labelWidth = [];
      status.textContent = "";
      tip.hidden = true;
      canvas.dataset.drawn = "0";
      if (isOpen()) load(); else draw();
    }

    async function load() {
      if (!state.index) return;
      if (pending) pending.abort();
      const controller = new AbortController();
      pending = controller;
      const ix = state.index;
      loading.hidden = false;
      status.textContent = "";
      setLoading(true);
      try {
        let got = null;
        while (got === null) {  // another map is computing on the server (429): wait for it, then ask again
          try {
            got = await api(indexPath("/map" + query({method: method.value, sample: 2000})), {signal: controller.signal});
          } catch (e) {
            if (!(e instanceof ApiError) || e.status !== 429) throw e;
            status.textContent = "waiting for another map…";
            await new Promise((done) => setTimeout(done, 1000 * Math.min(Math.max(e.retryAfter, 1), 30)));
            if (controller !== pending) return;
          }
        }
        if (controller !== pending) return;
        const points = Array.isArray(got.points) ? got.points : [];
        data = {points: points, total: typeof got.total === "number" ? got.total : got.count, method: got.method || method.value};
        forIndex = ix;
        prepare();
        fit();
        const n = data.points.length;
        status.textContent = formatCount(n) + (typeof data.total === "number" && data.total > n ? " of " + formatCount(data.total) : "")
          + " points";
        draw();
      } catch (e) {
        if (e && e.name === "AbortError") return;
        status.textContent = "no map";
        showError("map: " + (e && e.message ? e.message : e));
      } finally {
        if (pending === controller) { pending = null; loading.hidden = true; }
        setLoading(false);
      }
    }

    function prepare() {
      const pts = data.points;
      thumbs = new Array(pts.length).fill(null);
      labels = pts.map((p) => {
        const text = typeof p.label === "string" && p.label ? p.label : String(p.key);
        return text.length > 28 ? text.slice(0, 27) + "…" : text;
      });
      labelOrder = pts.map((p, i) => i);  // the API's order
      labelWidth = new Array(pts.length).fill(-1);
      const images = pts.filter((p) => p.thumbnail).length;
      if (images && images <= 400) {
        pts.forEach((p, i) => {
          const src = safeImageUrl(sized(p.thumbnail, MAP_THUMB));
          if (!src) return;
          const img = new Image();
          img.decoding = "async";
          img.onload = schedule;
          img.src = src;
          thumbs[i] = img;
        });
      }
    }

    function readColours() {
      const css = getComputedStyle(document.documentElement);
      const get = (name, fallback) => (css.getPropertyValue(name) || "").trim() || fallback;
      colours = {
        word: get("--map-word", "#4263eb"), text: get("--map-text", "#0c8599"), image: get("--map-image", "#e8590c"),
        other: get("--map-other", "#868e96"), label: get("--text", "#1d2330"), halo: get("--surface", "#ffffff"),
        mark: get("--mark", "#f08c00"), hover: get("--text", "#1d2330"),
      };
    }

    function fit() {
      const m = 28;
      const s = Math.max(1e-9, Math.min(W - 2 * m, H - 2 * m));
      view = {s: s, tx: (W - s) / 2, ty: (H - s) / 2};
    }
    function sx(p) { return p.x * view.s + view.tx; }
    function sy(p) { return (1 - p.y) * view.s + view.ty; }

    function resize() {
      if (!isOpen()) return;
      const r = canvas.getBoundingClientRect();
      const first = W === 0;
      const oldW = W, oldH = H;
      dpr = window.devicePixelRatio || 1;
      W = Math.max(1, r.width); H = Math.max(1, r.height);
      canvas.width = Math.round(W * dpr); canvas.height = Math.round(H * dpr);
      if (first || !data) fit(); else { view.tx += (W - oldW) / 2; view.ty += (H - oldH) / 2; }
      draw();
    }

    function schedule() {
      if (frame) return;
      frame = window.requestAnimationFrame(() => { frame = 0; draw(); });
    }

    function radius() {
      const n = data ? data.points.length : 0;
      const base = n > 3000 ? 2 : n > 800 ? 2.6 : n > 100 ? 3.4 : 4.5;
      return Math.min(9, base * Math.max(1, Math.pow(view.s / Math.max(1, Math.min(W, H)), 0.35)));
    }
    function thumbSize() {
      const n = data ? data.points.length : 0;
      const base = n <= 40 ? 80 : n <= 150 ? 52 : 32;
      return Math.max(18, Math.min(160, base * Math.sqrt(view.s / Math.max(1, Math.min(W, H)))));
    }

    function colourOf(p) {
      return colours[p.kind] || colours.other;
    }

    function draw() {
      if (!colours) readColours();
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.clearRect(0, 0, W, H);
      if (!data || !isOpen()) { canvas.dataset.drawn = "0"; return; }
      const pts = data.points, r = radius();
      let drawn = 0;
      ctx.globalAlpha = 0.8;
      for (let i = 0; i < pts.length; i++) {
        const p = pts[i], x = sx(p), y = sy(p);
        if (x < -20 || y < -20 || x > W + 20 || y > H + 20) continue;
        drawn++;
        if (thumbs[i] && thumbs[i].complete && thumbs[i].naturalWidth) continue;
        ctx.fillStyle = colourOf(p);
        ctx.beginPath(); ctx.arc(x, y, r, 0, 6.2832); ctx.fill();
      }
      ctx.globalAlpha = 1;
      const t = thumbSize();
      for (let i = 0; i < pts.length; i++) {
        const img = thumbs[i];
        if (!img || !img.complete || !img.naturalWidth) continue;
        const k = t / Math.max(img.naturalWidth, img.naturalHeight);
        const w = img.naturalWidth * k, h = img.naturalHeight * k, x = sx(pts[i]) - w / 2, y = sy(pts[i]) - h / 2;
        if (x > W || y > H || x + w < 0 || y + h < 0) continue;
        ctx.drawImage(img, x, y, w, h);
        ctx.lineWidth = 1; ctx.strokeStyle = colours.halo; ctx.strokeRect(x - 0.5, y - 0.5, w + 1, h + 1);
      }
      drawLabels(r);
      // the current results, ringed (unless they are most of the map)
      ctx.lineWidth = 2; ctx.strokeStyle = colours.mark;
      for (let i = 0; i < pts.length && marked.size * 2 <= pts.length; i++) {
        if (!marked.has(pts[i].id)) continue;
        const p = pts[i];
        if (thumbs[i] && thumbs[i].naturalWidth) {
          const img = thumbs[i], k = t / Math.max(img.naturalWidth, img.naturalHeight);
          const w = img.naturalWidth * k, h = img.naturalHeight * k;
          ctx.strokeRect(sx(p) - w / 2 - 2, sy(p) - h / 2 - 2, w + 4, h + 4);
        } else {
          ctx.beginPath(); ctx.arc(sx(p), sy(p), r + 3.5, 0, 6.2832); ctx.stroke();
        }
      }
      if (hover >= 0 && hover < pts.length) {
        const p = pts[hover];
        ctx.lineWidth = 2; ctx.strokeStyle = colours.hover;
        if (thumbs[hover] && thumbs[hover].naturalWidth) {
          const img = thumbs[hover], k = t * 1.25 / Math.max(img.naturalWidth, img.naturalHeight);
          const w = img.naturalWidth * k, h = img.naturalHeight * k;
          ctx.drawImage(img, sx(p) - w / 2, sy(p) - h / 2, w, h);
          ctx.strokeRect(sx(p) - w / 2, sy(p) - h / 2, w, h);
        } else {
          ctx.fillStyle = colourOf(p);
          ctx.beginPath(); ctx.arc(sx(p), sy(p), r + 2.5, 0, 6.2832); ctx.fill(); ctx.stroke();
        }
      }
      canvas.dataset.drawn = String(drawn);
    }

    function drawLabels(r) {
      // each where it overlaps no other, until they cover 6% of the map (labels.js)
      const pts = data.points;
      latentLabels.place(ctx, {
        order: labelOrder, W: W, H: H, share: 0.06, tries: 3000, boxes: [], widths: labelWidth,
        at: (i) => (thumbs[i] ? null : [sx(pts[i]) + r + 3, sy(pts[i])]), text: (i) => labels[i],
        font: FONT, ink: colours.label, halo: colours.halo,
      });
    }

    function nearest(px, py) {
      if (!data) return -1;
      const pts = data.points, t = thumbSize();
      let best = -1, bestD = Infinity;
      for (let i = 0; i < pts.length; i++) {
        const dx = sx(pts[i]) - px, dy = sy(pts[i]) - py, d = dx * dx + dy * dy;
        if (d < bestD) { bestD = d; best = i; }
      }
      const reach = best >= 0 && thumbs[best] && thumbs[best].naturalWidth ? t / 2 + 2 : Math.max(8, radius() + 4);
      return bestD <= reach * reach ? best : -1;
    }

    function showTip(i, px, py) {
      const p = data.points[i];
      if (i !== tipFor || tip.hidden) fillTip(p);
      tipFor = i;
      tip.hidden = false;
      const tw = tip.offsetWidth, th = tip.offsetHeight;
      let left = px + 14, top = py + 14;
      if (left + tw > W - 4) left = Math.max(4, px - tw - 14);
      if (top + th > H - 4) top = Math.max(4, py - th - 14);
      tip.style.left = left + "px"; tip.style.top = top + "px";
    }

    function fillTip(p) {
      tip.replaceChildren();
      const img = p.thumbnail ? thumbImage(sized(p.thumbnail, MAP_THUMB), "") : null;
      if (img) { img.loading = "eager"; tip.appendChild(img); }
      tip.appendChild(el("div", "tip-key", p.key));
      const text = typeof p.text === "string" ? p.text.replace(/\s+/g, " ").trim() : "";
      if (text && text !== p.key) tip.appendChild(el("div", "tip-text", text.length > 240 ? text.slice(0, 239) + "…" : text));
      if (p.label && p.label !== p.key && p.label !== text) tip.appendChild(el("div", "tip-label", p.label));
      tip.appendChild(el("div", "tip-hint", (p.kind ? p.kind + " · " : "") + "click for similar items"));
    }

    function zoomAt(px, py, f) {
      const s = Math.min(Math.max(view.s * f, 40), 1e6), k = s / view.s;
      view.tx = px - (px - view.tx) * k; view.ty = py - (py - view.ty) * k; view.s = s;
      tip.hidden = true;
      draw();
    }

    let drag = null;
    canvas.addEventListener("pointerdown", (e) => {
      if (e.button !== 0) return;
      drag = {x: e.clientX, y: e.clientY, tx: view.tx, ty: view.ty, moved: false};
      canvas.setPointerCapture(e.pointerId);
    });
    canvas.addEventListener("pointermove", (e) => {
      if (!data) return;
      const rect = canvas.getBoundingClientRect(), px = e.clientX - rect.left, py = e.clientY - rect.top;
      if (drag) {
        const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
        if (!drag.moved && dx * dx + dy * dy > 16) { drag.moved = true; canvas.classList.add("dragging"); }
        if (drag.moved) {
          view.tx = drag.tx + dx; view.ty = drag.ty + dy;
          tip.hidden = true; hover = -1; draw();
          return;
        }
      }
      const i = nearest(px, py);
      if (i !== hover) { hover = i; draw(); }
      canvas.style.cursor = i >= 0 ? "pointer" : "";
      if (i >= 0) showTip(i, px, py); else tip.hidden = true;
    });
    canvas.addEventListener("pointerup", (e) => {
      const d = drag;
      drag = null;
      canvas.classList.remove("dragging");
      if (!d || d.moved || !data) return;
      const rect = canvas.getBoundingClientRect();
      const i = nearest(e.clientX - rect.left, e.clientY - rect.top);
      if (i >= 0) { selectTab("search"); searchSimilar(data.points[i]); }
    });
    canvas.addEventListener("pointercancel", () => { drag = null; canvas.classList.remove("dragging"); });
    canvas.addEventListener("pointerleave", () => { if (!drag) { hover = -1; tip.hidden = true; draw(); } });
    canvas.addEventListener("wheel", (e) => {
      e.preventDefault();
      const rect = canvas.getBoundingClientRect();
      const unit = e.deltaMode === 1 ? 33 : e.deltaMode === 2 ? 400 : 1;
      zoomAt(e.clientX - rect.left, e.clientY - rect.top, Math.exp(-e.deltaY * unit * 0.0015));
    }, {passive: false});
    canvas.addEventListener("dblclick", () => { fit(); draw(); });
    canvas.addEventListener("keydown", (e) => {
      if (e.key === "+" || e.key === "=") zoomAt(W / 2, H / 2, 1.4);
      else if (e.key === "-") zoomAt(W / 2, H / 2, 1 / 1.4);
      else if (e.key === "0") { fit(); draw(); }
      else if (e.key.indexOf("Arrow") === 0) {
        const step = 40;
        if (e.key === "ArrowLeft") view.tx += step; if (e.key === "ArrowRight") view.tx -= step;
        if (e.key === "ArrowUp") view.ty += step; if (e.key === "ArrowDown") view.ty -= step;
        draw();
      } else return;
      e.preventDefault();
    });
    $("zoom-in").addEventListener("click", () => zoomAt(W / 2, H / 2, 1.4));
    $("zoom-out").addEventListener("click", () => zoomAt(W / 2, H / 2, 1 / 1.4));
    $("zoom-fit").addEventListener("click", () => { fit(); draw(); });
    $("map-close").addEventListener("click", close);
    method.addEventListener("change", () => { data = null; load(); });
    ui.mapToggle.addEventListener("click", () => (isOpen() ? close() : open()));
    if (window.ResizeObserver) new ResizeObserver(() => resize()).observe(stage);
    else window.addEventListener("resize", resize);
    const dark = window.matchMedia ? window.matchMedia("(prefers-color-scheme: dark)") : null;
    if (dark && dark.addEventListener) dark.addEventListener("change", () => { colours = null; draw(); });

    return {
      open: open, close: close, reset: reset, isOpen: isOpen,
      highlight(ids) { marked = new Set(ids.filter((x) => x !== undefined && x !== null)); if (isOpen()) draw(); },
    };
  })();

  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape") {
      if (!ui.error.hidden) hideError();
      else if (MapView.isOpen()) MapView.close();
    } else if (e.key === "/" && document.activeElement && ["INPUT", "SELECT", "TEXTAREA"].indexOf(document.activeElement.tagName) < 0) {
      e.preventDefault();
      selectTab("search", true);
    }
  });

  loadIndexes();
})();
