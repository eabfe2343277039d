"""The map as the browser draws it: a canvas scatter plot inside a ``gr.HTML``, with its legend and gestures.

The component's value is JSON (points, colours, legend), so ``/map`` gives scripts the same data. The
script (``MAP_JS``) redraws whenever the value changes (no page reload), shows a thumbnail on hover
(fetched by catalog id through a server function), sends ``select`` with one id on a click or tap and with
the ids inside a lasso (drag around points with a mouse, finger or pen; a drag is also a box). Ids go to the
server, never paths. The canvas is focusable and named by a summary of the map (points and labels).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from typing import Sequence

import numpy as np
import numpy.typing as npt

# CSS colours for labels that are colour words, so "red" is drawn red.
COLOUR_WORDS = {
    "red": "#d62728", "orange": "#ff7f0e", "yellow": "#e6c800", "green": "#2ca02c", "blue": "#1f5fd6",
    "purple": "#8c3fbf", "violet": "#8f5bd6", "pink": "#f06bb4", "magenta": "#d62ad6", "cyan": "#17becf",
    "teal": "#138a8a", "brown": "#8c564b", "black": "#111111", "white": "#f4f4f4", "grey": "#8a8a8a",
    "gray": "#8a8a8a", "gold": "#d4a017", "silver": "#b8b8b8", "beige": "#d9c8a0", "navy": "#1b2a6b",
    "maroon": "#7a1f1f", "olive": "#7f7f1f", "lime": "#8fd400", "turquoise": "#30d5c8",
}
# How far apart (CIELAB ΔE, 1976) two labels' colours must be to read as different colours on the map.
MIN_COLOUR_DISTANCE = 25.0
# Colours for labels that are not colour words: each at least MIN_COLOUR_DISTANCE from every colour word's
# colour, from the unlabelled grey and from each other (tests check it), so "triangle" never looks like the
# "orange" beside it. Every hue has some colour word; it is distance, not hue, that keeps them apart.
PALETTE = ("#4e79a7", "#b07aa1", "#8cd17d", "#ffbe7d", "#881155", "#00bbff", "#995500", "#dd3366", "#005522",
           "#aaaaff", "#ff9da7", "#cccc66", "#00eeaa", "#ee99ff", "#ff8866", "#555533")
UNLABELLED_COLOUR = "#b0b0b0"
# Past this many labels the legend names the largest and draws the rest in one colour as "other labels": with
# hundreds of labels the palette's colours repeat, so colours no longer tell labels apart (a walkthrough's map had
# 236 legend entries in 16 colours). A point's own label still shows when it is hovered.
LEGEND_KEYS = len(PALETTE)
OTHER_COLOUR = "#6b6b6b"  # drawn as rings, not dots: told apart by shape from the palette's dark olive
# The colour words each palette colour could be read as (judged by eye: no formula of hue and distance names
# "#4e79a7" blue and "#ffbe7d" orange reliably). A label is not given a palette colour that reads as a colour
# word another label on the same map names: "cross" is not drawn steel blue beside "blue square".
PALETTE_READS_AS = {
    "#4e79a7": {"blue", "navy", "grey", "gray"}, "#b07aa1": {"purple", "violet", "pink"},
    "#8cd17d": {"green", "lime"}, "#ffbe7d": {"orange", "beige", "gold", "yellow"},
    "#881155": {"maroon", "purple", "magenta", "red"}, "#00bbff": {"blue", "cyan", "turquoise"},
    "#995500": {"brown", "orange", "gold"}, "#dd3366": {"red", "pink", "magenta"}, "#005522": {"green", "teal"},
    "#aaaaff": {"blue", "violet", "purple"}, "#ff9da7": {"pink", "red"}, "#cccc66": {"olive", "yellow", "beige"},
    "#00eeaa": {"green", "turquoise", "cyan"}, "#ee99ff": {"pink", "violet", "purple", "magenta"},
    "#ff8866": {"orange", "red", "pink"}, "#555533": {"olive", "brown", "grey", "gray"},
}


def colour_word(label: str) -> str | None:
    """The first colour word in a label (``red``, ``SET:red``, ``light blue`` → blue, ``red circle`` → red), or
    None. Only the label counts, not its set's name; words are whole (``reddish`` names no colour)."""
    words = re.findall(r"[a-z]+", label.rsplit(":", 1)[-1].lower())
    return next((word for word in words if word in COLOUR_WORDS), None)


def colour_of(label: str) -> str | None:
    """The CSS colour a label names (:func:`colour_word`'s colour), or None."""
    word = colour_word(label)
    return COLOUR_WORDS[word] if word else None


def colours_for(labels: Sequence[str], unlabelled: str) -> dict[str, str]:
    """A colour per distinct label: its own colour for a label naming a colour, else a palette colour.

    No two labels get colours closer than MIN_COLOUR_DISTANCE while there are at most ``len(PALETTE)``
    labels: a colour word whose colour is near one already given ("gray" after "grey", "colours:red" after
    "red", "violet" after "purple") takes a palette colour instead. A palette colour that reads as a colour word
    some other label names (:data:`PALETTE_READS_AS`) is passed over while another is free, and one that reads as
    the label's own colour word is preferred ("dark red" after "red" gets a red). Past the palette's size
    colours repeat.
    """
    distinct = list(dict.fromkeys(labels))
    named_words = {colour_word(label) for label in distinct} - {None}
    colours: dict[str, str] = {}
    free = list(PALETTE)
    # The unlabelled grey first, so that "silver" or "grey" do not take a colour next to it.
    for label in sorted(distinct, key=lambda label: label != unlabelled):
        named = colour_of(label)
        if label == unlabelled:
            colours[label] = UNLABELLED_COLOUR
        elif named and all(colour_distance(named, given) >= MIN_COLOUR_DISTANCE for given in colours.values()):
            colours[label] = named
        else:
            if not free:  # more labels than the palette: colours repeat
                free = list(PALETTE)
            colours[label] = _palette_colour(free, colour_word(label), named_words)
            free.remove(colours[label])
    return colours


def _palette_colour(free: list[str], own_word: str | None, named_words: set[str]) -> str:
    """Of the ``free`` palette colours, the first that reads as ``own_word``, else the first that reads as no
    other colour word on the map, else the first."""
    others = named_words - {own_word}
    unmistaken = [colour for colour in free if not PALETTE_READS_AS[colour] & others]
    own = [colour for colour in unmistaken if own_word in PALETTE_READS_AS[colour]]
    return (own or unmistaken or free)[0]


def colour_distance(first: str, second: str) -> float:
    """How different two ``#rrggbb`` colours look: the Euclidean distance in CIELAB (ΔE 1976)."""
    return math.dist(_lab(first), _lab(second))


def _lab(colour: str) -> tuple[float, float, float]:
    """An sRGB ``#rrggbb`` colour in CIELAB (D65 white)."""
    red, green, blue = (int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5))
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in (red, green, blue)]
    x = (0.4124 * linear[0] + 0.3576 * linear[1] + 0.1805 * linear[2]) / 0.95047
    y = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    z = (0.0193 * linear[0] + 0.1192 * linear[1] + 0.9505 * linear[2]) / 1.08883

    def f(t: float) -> float:
        return t ** (1 / 3) if t > 216 / 24389 else (24389 / 27 * t + 16) / 116

    return 116 * f(y) - 16, 500 * (f(x) - f(y)), 200 * (f(y) - f(z))


def map_value(ids: npt.NDArray[np.int64], coordinates: npt.NDArray[np.float32], labels: Sequence[str],
              unlabelled: str, version: int, note: str = "") -> str:
    """The component value: points (ids, x, y, label index), the legend (largest first) and its colours; past
    :data:`LEGEND_KEYS` labels, the rest are ``folded`` into one "other labels" colour and key."""
    counts = Counter(labels)
    order = sorted(counts, key=lambda label: (label == unlabelled, -counts[label], label))
    named = [label for label in order if label != unlabelled]
    folded = set(named[LEGEND_KEYS:]) if len(named) > LEGEND_KEYS + 1 else set()  # one more: no need to fold
    colours = colours_for([label for label in order if label not in folded], unlabelled)
    colours.update((label, OTHER_COLOUR) for label in folded)
    index = {label: i for i, label in enumerate(order)}
    return json.dumps({
        "version": version,
        "note": note,
        "legend": [{"label": label, "colour": colours[label], "count": counts[label], **({"folded": True} if
                    label in folded else {})} for label in order],
        "other": {"labels": len(folded), "count": sum(counts[label] for label in folded), "colour": OTHER_COLOUR},
        "points": {"ids": [int(i) for i in ids], "x": np.round(coordinates[:, 0].astype(float), 4).tolist(),
                   "y": np.round(coordinates[:, 1].astype(float), 4).tolist(),
                   "c": [index[label] for label in labels]},
    }, separators=(",", ":"))


MAP_HTML = """<div class="mmr-map" data-points="0" data-version="">
<canvas class="mmr-canvas" width="900" height="560" tabindex="0" role="img" aria-label="Map of the collection: not drawn yet"></canvas>
<div class="mmr-tip" hidden></div>
<div class="mmr-legend"></div>
<div class="mmr-help">Hover a point for its image; click or tap it for details and “more like this”; drag around
points with a mouse, a finger or a pen (lasso, or a box) to see them below.</div>
</div>"""

MAP_CSS = """
.mmr-map { position: relative; width: 100%; }
.mmr-canvas { width: 100%; height: 560px; border: 1px solid var(--border-color-primary, #ddd); border-radius: 6px;
  cursor: crosshair; background: var(--background-fill-primary, #fff); touch-action: none; }
.mmr-canvas:focus-visible { outline: 2px solid #1d4ed8; outline-offset: 2px; }
@media (max-width: 600px) { .mmr-canvas { height: 360px; } }
.mmr-tip { position: absolute; pointer-events: none; background: var(--background-fill-primary, #fff);
  border: 1px solid #999; border-radius: 4px; padding: 4px; font-size: 12px; max-width: 200px; z-index: 10; }
.mmr-tip img { display: block; max-width: 128px; max-height: 128px; image-rendering: pixelated; }
.mmr-legend { display: flex; flex-wrap: wrap; gap: 4px 14px; margin-top: 6px; font-size: 13px; }
.mmr-key { display: inline-flex; align-items: center; gap: 5px; white-space: nowrap; }
.mmr-key i { display: inline-block; width: 12px; height: 12px; border-radius: 50%; border: 1px solid #555; }
.mmr-key i.mmr-ring { width: 10px; height: 10px; border-width: 2px; background: transparent; }
.mmr-help { font-size: 12px; opacity: .7; margin-top: 4px; }
"""

MAP_JS = r"""
const S = { thumbs: {}, hoverId: null };
const esc = t => String(t).replace(/[&<>"']/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'}[c]));
function parsed() { try { return JSON.parse(props.value || '{}'); } catch (e) { return {}; } }
function parts() {
  const root = element.querySelector('.mmr-map');
  return root && { root, canvas: root.querySelector('canvas'), tip: root.querySelector('.mmr-tip'),
                   legend: root.querySelector('.mmr-legend') };
}
function geometry(p, canvas, pts) {
  const w = canvas.clientWidth || 900, h = canvas.clientHeight || 560, pad = 14;
  let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
  for (let i = 0; i < pts.ids.length; i++) {
    x0 = Math.min(x0, pts.x[i]); x1 = Math.max(x1, pts.x[i]); y0 = Math.min(y0, pts.y[i]); y1 = Math.max(y1, pts.y[i]);
  }
  const sx = (w - 2 * pad) / ((x1 - x0) || 1), sy = (h - 2 * pad) / ((y1 - y0) || 1);
  const X = new Float32Array(pts.ids.length), Y = new Float32Array(pts.ids.length);
  for (let i = 0; i < pts.ids.length; i++) { X[i] = pad + (pts.x[i] - x0) * sx; Y[i] = h - pad - (pts.y[i] - y0) * sy; }
  return { w, h, X, Y };
}
function draw(path) {
  const p = parts(); if (!p || !S.data) return;
  const { canvas } = p, pts = S.data.points, g = S.geo, dpr = window.devicePixelRatio || 1;
  canvas.width = g.w * dpr; canvas.height = g.h * dpr;
  const ctx = canvas.getContext('2d'); ctx.setTransform(dpr, 0, 0, dpr, 0, 0); ctx.clearRect(0, 0, g.w, g.h);
  const r = pts.ids.length > 5000 ? 2 : 3.5;
  for (let i = 0; i < pts.ids.length; i++) {
    ctx.beginPath(); ctx.arc(g.X[i], g.Y[i], r, 0, 2 * Math.PI);
    const key = S.data.legend[pts.c[i]];
    if (key.folded) { ctx.strokeStyle = key.colour; ctx.lineWidth = 1; ctx.stroke(); }  // "other labels": rings
    else { ctx.fillStyle = key.colour; ctx.fill(); }
    if (r > 2) { ctx.lineWidth = 0.6; ctx.strokeStyle = 'rgba(0,0,0,.45)'; ctx.stroke(); }
  }
  if (path && path.length > 1) {
    ctx.beginPath(); ctx.moveTo(path[0][0], path[0][1]);
    for (const [x, y] of path.slice(1)) ctx.lineTo(x, y);
    ctx.closePath(); ctx.fillStyle = 'rgba(30,100,220,.12)'; ctx.fill();
    ctx.setLineDash([4, 3]); ctx.strokeStyle = '#1f5fd6'; ctx.stroke(); ctx.setLineDash([]);
  }
}
function render() {
  const p = parts(); if (!p) return;
  S.data = parsed(); const pts = (S.data.points = S.data.points || { ids: [], x: [], y: [], c: [] });
  S.data.legend = S.data.legend || [];
  p.root.dataset.points = String(pts.ids.length); p.root.dataset.version = String(S.data.version || '');
  const other = S.data.other && S.data.other.labels ? [{ label: `${S.data.other.labels} other labels`,
    colour: S.data.other.colour, count: S.data.other.count, folded: true }] : [];
  const keys = S.data.legend.filter(l => !l.folded).concat(other);
  p.legend.innerHTML = keys.map(l => `<span class="mmr-key"><i class="${l.folded ? 'mmr-ring' : ''}" ` +
    `style="${l.folded ? 'border-color' : 'background'}:${esc(l.colour)}"></i>${esc(l.label)} (${l.count})</span>`)
    .join('');
  p.canvas.setAttribute('aria-label', summary(pts.ids.length, keys));
  S.geo = geometry(p, p.canvas, pts); draw(null); bind(p);
  // Where the first point is drawn, for tests and for people inspecting the page.
  p.root.dataset.first = pts.ids.length ? `${S.geo.X[0].toFixed(1)},${S.geo.Y[0].toFixed(1)}` : '';
}
function summary(n, legend) {
  if (!n) return 'Map of the collection: not drawn yet';
  const keys = legend.map(l => `${l.label} ${l.count}`).join(', ');
  return `Map of ${n} image${n === 1 ? '' : 's'}, similar images near each other, coloured by label: ${keys}. ` +
    'Drag around points to list them below the map.';
}
function nearest(x, y) {
  const g = S.geo, ids = S.data.points.ids; let best = -1, bestD = 64;
  for (let i = 0; i < ids.length; i++) { const d = (g.X[i] - x) ** 2 + (g.Y[i] - y) ** 2; if (d < bestD) { bestD = d; best = i; } }
  return best;
}
function inside(path, x, y) {
  let hit = false;
  for (let i = 0, j = path.length - 1; i < path.length; j = i++) {
    const [xi, yi] = path[i], [xj, yj] = path[j];
    if ((yi > y) !== (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi) hit = !hit;
  }
  return hit;
}
function showTip(p, i, x, y) {
  const id = S.data.points.ids[i], label = S.data.legend[S.data.points.c[i]].label;
  p.tip.hidden = false; p.tip.style.left = (x + 14) + 'px'; p.tip.style.top = (y + 14) + 'px';
  const fill = t => { if (S.hoverId === id) p.tip.innerHTML = (t && t.src ? `<img src="${t.src}">` : '') +
      `<div>${esc(t && t.name ? t.name : 'id ' + id)}</div><div>${esc(label)}</div>`; };
  S.hoverId = id;
  if (S.thumbs[id]) return fill(S.thumbs[id]);
  fill(null);
  if (typeof server !== 'undefined' && server.map_thumbnail) {
    server.map_thumbnail(id).then(t => { S.thumbs[id] = t; fill(t); }).catch(() => {});
  }
}
function bind(p) {
  // Pointer events: a mouse, a finger and a pen alike (touch-action: none keeps a drag from scrolling the page).
  const c = p.canvas; if (c.dataset.bound) return; c.dataset.bound = '1';
  let path = null;
  const at = e => { const b = c.getBoundingClientRect(); return [e.clientX - b.left, e.clientY - b.top]; };
  const hideTip = () => { p.tip.hidden = true; S.hoverId = null; };
  c.addEventListener('pointerdown', e => {
    if (e.button > 0) return;
    path = [at(e)]; hideTip();
    c.setPointerCapture(e.pointerId);  // the pointerup comes here even when released outside the canvas
  });
  c.addEventListener('pointermove', e => {
    const [x, y] = at(e);
    if (path) { path.push([x, y]); draw(path); return; }
    const i = nearest(x, y);
    if (i < 0) hideTip(); else showTip(p, i, x, y);
  });
  c.addEventListener('pointerleave', hideTip);
  c.addEventListener('pointercancel', () => { path = null; draw(null); hideTip(); });
  c.addEventListener('pointerup', e => {
    // A tap leaves no hover behind: the thumbnail would stay over the map.
    if (e.pointerType !== 'mouse') hideTip();
    if (!path) return; const drawn = path; path = null; draw(null);
    const [x0, y0] = drawn[0], [x1, y1] = at(e);
    const moved = drawn.reduce((m, [x, y]) => Math.max(m, Math.abs(x - x0) + Math.abs(y - y0)), 0);
    if (moved < 6) { const i = nearest(x1, y1); if (i >= 0) trigger('select', { index: S.data.points.ids[i], value: 'point' }); return; }
    hideTip();
    const box = drawn.length < 4 ? [[x0, y0], [x1, y0], [x1, y1], [x0, y1]] : drawn;
    const ids = []; const g = S.geo;
    for (let i = 0; i < S.data.points.ids.length; i++) if (inside(box, g.X[i], g.Y[i])) ids.push(S.data.points.ids[i]);
    trigger('select', { index: ids, value: 'lasso' });
  });
  window.addEventListener('resize', () => { S.geo = geometry(p, c, S.data.points); draw(null); });
}
watch('value', render);
render();
"""
