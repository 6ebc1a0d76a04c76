/* The standalone map of `latent map -o map.html` (search/map_html.py inlines it, after
 * labels.js, into one offline file with the map's data as JSON): a canvas scatter with drag to
 * pan, wheel to zoom, hover for the item, a legend (click a class to single it out) and a find box.
 *
 * Every string from the data reaches the page through textContent, canvas text or a data: URI
 * checked here; nothing from the data is ever parsed as HTML.
 */
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
  const LABEL_FONT = "11px system-ui, -apple-system, 'Segoe UI', Roboto, Arial, sans-serif";
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
    // no other label or class name, until labels cover 7% of the map (labels.js)
    return latentLabels.place(ctx, {
      order: D.order, W: W, H: H, share: 0.07, tries: 4000, boxes: boxes, widths: labelWidth,
      at: (i) => (!visible(i) || (matches !== null && !matches.has(i)) || (showThumbs && thumbs[i]) ? null
        : [sx(i) + radius + 3, sy(i)]),
      text: (i) => D.label[i], font: LABEL_FONT, ink: "#222", halo: "rgba(255,255,255,0.85)",
    });
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
    let drawn = 0;
    // faded points first, then the ones in focus
    for (let pass = 0; pass < 2; pass++) {
      for (let i = 0; i < N; i++) {
        const focus = visible(i) && (matches === null || matches.has(i));
        if ((pass === 0) === focus && dim) continue;
        if (pass === 1 && !dim) continue;
        const x = sx(i), y = sy(i);
        if (x < -50 || y < -50 || x > W + 50 || y > H + 50) continue;
        if (focus) drawn++;
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
    const labelled = labelBox.checked ? drawLabels(showThumbs, names.map((t) => t[4])) : 0;
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
    canvas.dataset.drawn = String(drawn);  // points in focus on screen, and labels drawn (read by tests)
    canvas.dataset.labels = String(labelled);
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
