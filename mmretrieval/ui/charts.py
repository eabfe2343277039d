"""Bar charts as plain HTML: bars drawn from zero, every value printed, long lists cut to the top N.

A plotting library picks its own axis range (a count axis that starts at 455 makes 460 look twice 457)
and cannot print values on 200 bars; these charts are a table of bars, so they read the same with
3 labels or 300.
"""

from __future__ import annotations

import html
from typing import Sequence

TOP_N = 20  # bars shown; the rest are summarised in one line


def bar_chart(names: Sequence[str], values: Sequence[float], *, title: str, value_format: str = "{:.2f}",
              top_n: int = TOP_N, scale_max: float | None = None, elem_id: str = "") -> str:
    """HTML for a horizontal bar chart of ``values`` by ``names``, largest first.

    Args:
        names: one label per bar.
        values: non-negative values, in the same order.
        title: what the values are (shown above the bars).
        value_format: how each value is printed at the end of its bar.
        top_n: bars shown; the others are counted in a closing line.
        scale_max: the value a full-width bar stands for (1.0 for probabilities); default the largest value.
    """
    order = sorted(range(len(names)), key=lambda i: (-float(values[i]), i))
    shown = order[:top_n]
    full = scale_max if scale_max else max((float(values[i]) for i in shown), default=0.0)
    rows = []
    for i in shown:
        share = 0.0 if full <= 0 else max(0.0, min(1.0, float(values[i]) / full))
        rows.append(
            '<div class="mmr-bar-row" style="display:flex;align-items:center;gap:8px;margin:2px 0">'
            f'<span class="mmr-bar-name" style="flex:0 0 30%;text-align:right;overflow:hidden;text-overflow:ellipsis;'
            f'white-space:nowrap" title="{html.escape(names[i])}">{html.escape(names[i])}</span>'
            '<span style="flex:1 1 auto;background:var(--neutral-100,#eee);height:16px;border-radius:3px">'
            f'<span style="display:block;width:{share * 100:.1f}%;height:100%;background:var(--color-accent,#f97316);'
            'border-radius:3px"></span></span>'
            f'<span class="mmr-bar-value" style="flex:0 0 4.5em;font-variant-numeric:tabular-nums">'
            f'{html.escape(value_format.format(float(values[i])))}</span></div>')
    rest = len(order) - len(shown)
    more = (f'<div style="opacity:.7;margin-top:4px">… and {rest} more (smaller) values, not drawn</div>'
            if rest > 0 else "")
    scale = f"bar length from 0 to {value_format.format(full)}" if full > 0 else "all values are 0"
    header = (f'<div style="font-weight:600">{html.escape(title)}</div>'
              f'<div style="opacity:.7;font-size:90%;margin-bottom:4px">{html.escape(scale)}</div>')
    body = "".join(rows) or '<div style="opacity:.7">nothing to show</div>'
    return f'<div class="mmr-bar-chart" id="{html.escape(elem_id)}">{header}{body}{more}</div>'
