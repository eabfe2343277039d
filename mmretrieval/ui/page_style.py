"""What the whole page gets at launch: a theme whose buttons are readable, CSS for phones and keyboard focus,
and a script that makes the status outputs live regions. Gradio 6 takes all three in ``launch()``
(:func:`.server.launch` passes them), not in ``gr.Blocks()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import gradio as gr

PHONE_WIDTH = "600px"  # at or below this page width the layout is a phone's: one column, bigger targets
FOCUS_COLOUR = "#1d4ed8"  # 6.7:1 against white: a focus ring that is seen
LIVE_CLASS = "mmr-live"  # text outputs whose changes a screen reader announces (widgets.text_output(live=True))
FILE_OUT_CLASS = "mmr-file-out"  # download boxes: small while empty
GROWN_GALLERIES = ("results", "label-samples")  # elem_ids of galleries drawn whole, in the page's own scroll

PAGE_CSS = f"""
:focus-visible {{ outline: 2px solid {FOCUS_COLOUR} !important; outline-offset: 2px; }}
/* height="auto" still caps a gallery at 55% of the window, in a scroll box of its own: 2.5 rows of 24 results
   showed beside an empty column (4 of 24 on a phone). */
{", ".join(f"#{name} .grid-wrap.fixed-height" for name in GROWN_GALLERIES)} {{
  max-height: none !important; overflow-y: visible !important; }}
/* An empty download box was 236 px of dashed border whatever its height= said. */
.{FILE_OUT_CLASS} .empty.large {{ min-height: var(--size-16) !important; }}
/* A long path in the details wraps instead of running out of its box. */
#details code {{ white-space: pre-wrap; overflow-wrap: anywhere; }}
/* The label file's drop zone: its text needs 240 px by Gradio's rule, in a 60-140 px box, and was cut off. */
[id$="-labels-file"] .upload-container .wrap {{ min-height: 0 !important; }}
/* A failed event's "Error" pill sat on the status text, centred over it: at the box's corner it hides nothing. */
.{LIVE_CLASS} > .wrap .error {{ position: absolute; top: 0; right: 2.5rem; font-size: var(--text-sm); }}
@media (max-width: {PHONE_WIDTH}) {{
  /* Gallery columns are at least 100 px: four of them overflow a phone, and every fourth result was cut off. */
  .grid-wrap .grid-container {{ grid-template-columns: repeat(2, minmax(0, 1fr)) !important; }}
  /* Two lines at most: wrapped without limit, a caption covered most of its picture. */
  .grid-wrap .caption-label {{ white-space: normal; overflow-wrap: anywhere; max-width: calc(100% - 8px);
    display: -webkit-box; -webkit-line-clamp: 2; -webkit-box-orient: vertical; overflow: hidden;
    padding-bottom: 0; }}
  /* The "filters alone" note beside its checkbox was one word a line: the checkbox goes under it. */
  .row:has(> #filters-alone) {{ flex-direction: column; }}
  /* Touch targets of at least 44 px (size="sm" buttons are 26 px). Gradio scopes these rules to the app. */
  button.sm, button.md, button.lg, button[role="tab"] {{ min-height: 44px; }}
}}
"""

# Run once when the page loads. Gradio redraws an output's insides, not its box, so the attributes stay; a tab's
# outputs are created when the tab is first shown, hence the observer.
PAGE_JS = f"""
() => {{
  const mark = () => {{
    for (const box of document.querySelectorAll('.{LIVE_CLASS}:not([aria-live])')) {{
      box.setAttribute('role', 'status');
      box.setAttribute('aria-live', 'polite');
    }}
  }};
  mark();
  new MutationObserver(mark).observe(document.body, {{ childList: true, subtree: true }});
}}
"""


def scroll_into_view_on_phones(elem_id: str) -> str:
    """An event's ``js=``: on a phone's narrow page, scroll the element ``elem_id`` to the top of the screen.

    On a phone the details of a tapped result are drawn a long way below the gallery, out of sight.
    """
    return (f"() => {{ if (window.matchMedia('(max-width: {PHONE_WIDTH})').matches) "
            f"document.getElementById('{elem_id}')?.scrollIntoView({{ block: 'start' }}); }}")


def theme() -> "gr.themes.Base":
    """Gradio's default theme with darker orange and red buttons: white text on its orange 500 is 2.8:1, on
    orange 700 (#c2410c) 5.2:1; on red 500 3.8:1, on red 700 (#b91c1c) 6.5:1 (WCAG AA asks 4.5:1)."""
    import gradio as gr

    red = gr.themes.colors.red
    return gr.themes.Default(primary_hue="orange").set(
        button_primary_background_fill="*primary_700",
        button_primary_background_fill_dark="*primary_700",
        button_primary_background_fill_hover="*primary_800",
        button_primary_background_fill_hover_dark="*primary_800",
        button_primary_border_color="*primary_700",
        button_primary_border_color_dark="*primary_700",
        button_cancel_background_fill=red.c700,
        button_cancel_background_fill_dark=red.c700,
        button_cancel_background_fill_hover=red.c800,
        button_cancel_background_fill_hover_dark=red.c800,
        button_cancel_border_color=red.c700,
        button_cancel_border_color_dark=red.c700,
    )
