/* latent map labels: which points of a map canvas get their text drawn beside them.
 *
 * One copy, used by the page of `latent serve` (loaded before app.js) and inlined into the
 * standalone map file of `latent map -o map.html` (before map.js). Labels are canvas text:
 * nothing from the data is ever parsed as HTML.
 */
(function (root) {
  "use strict";

  function clashes(b, boxes) {
    for (const o of boxes) {
      if (b[0] < o[2] && o[0] < b[2] && b[1] < o[3] && o[1] < b[3]) return true;
    }
    return false;
  }

  /* Label the points of `o.order` in turn, each to the right of its point where its box
   * overlaps no box already taken (`o.boxes`: class names, earlier labels), until labels
   * cover `o.share` of the W x H canvas or `o.tries` points on screen were tried.
   *   o.at(i):   [x, y] of the label's left end on the canvas, or null to skip point i
   *   o.text(i): its label; o.widths: measured text widths by point, -1 = not measured yet
   *   o.font, o.ink, o.halo: the text's font, colour and the outline that keeps it readable
   * Returns how many labels were drawn; `o.boxes` then holds theirs too. */
  function place(ctx, o) {
    ctx.font = o.font;
    ctx.textAlign = "left"; ctx.textBaseline = "middle"; ctx.lineJoin = "round";
    const boxes = o.boxes, budget = o.share * o.W * o.H;
    let tried = 0, covered = 0, placed = 0;
    for (const i of o.order) {
      if (covered > budget || tried > o.tries) break;
      const at = o.at(i);
      if (!at) continue;
      const x = at[0], y = at[1];
      if (x < 0 || y < 8 || x > o.W || y > o.H - 8) continue;
      tried++;
      const text = o.text(i);
      if (o.widths[i] < 0) o.widths[i] = ctx.measureText(text).width;
      const b = [x - 1, y - 7, x + o.widths[i] + 1, y + 7];
      if (b[2] > o.W || clashes(b, boxes)) continue;
      boxes.push(b);
      covered += (b[2] - b[0]) * (b[3] - b[1]);
      placed++;
      ctx.lineWidth = 3; ctx.strokeStyle = o.halo; ctx.strokeText(text, x, y);
      ctx.fillStyle = o.ink; ctx.fillText(text, x, y);
    }
    return placed;
  }

  root.latentLabels = {place: place};
})(window);
