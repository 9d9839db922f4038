"""Words shaded by their scores, as HTML: the one word highlighter of clara, used by the app's
pages and by scripts/explain.py (words.html). The diverging colours of clara.explain.colours: green
for evidence for the explained class, red for evidence against it; the shade is the strength
relative to the strongest word. Every word is HTML-escaped, so any text is safe to render.
"""
from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from clara.explain.colours import AGAINST_RGB, FOR_RGB

MAX_ALPHA = 0.75  # the strongest word's shade
SPAN_STYLE = "padding: 1px 3px; margin: 1px; border-radius: 3px; line-height: 1.9;"


def _span(text: str, rgb: str, alpha: float, title: str = "") -> str:
    title_attr = f' title="{html.escape(title)}"' if title else ""
    return (f'<span{title_attr} style="background: rgba({rgb}, {alpha:.2f}); {SPAN_STYLE}">'
            f"{html.escape(text)}</span>")


def highlight_words_html(words: Sequence[str], scores: Sequence[float] | np.ndarray) -> str:
    """Words as HTML spans shaded by score: green for evidence for the class, red against."""
    values = np.nan_to_num(np.asarray(scores, dtype=np.float64).reshape(-1))
    peak = float(np.abs(values).max()) if values.size else 0.0
    spans = []
    for word, score in zip(words, values):
        strength = abs(score) / peak if peak > 0 else 0.0
        spans.append(_span(word, FOR_RGB if score >= 0 else AGAINST_RGB, MAX_ALPHA * strength, f"{score:+.4f}"))
    return " ".join(spans)


def legend_html(target: str) -> str:
    """The line that says which colour means what, for the class `target`."""
    return (f"{_span('green', FOR_RGB, MAX_ALPHA)} evidence for <b>{html.escape(target)}</b> · "
            f"{_span('red', AGAINST_RGB, MAX_ALPHA)} evidence against it · "
            "shade: strength relative to the strongest word")


def words_page_html(words: Sequence[str], scores_by_method: Mapping[str, Any], label: str,
                    probs: Mapping[str, float], target: str) -> str:
    """A standalone HTML page: one highlighted row per method, under the prediction and the legend."""
    rows = []
    for method, scores in scores_by_method.items():
        kind = "attention" if method == "attention" else "explanation"
        rows.append(f"<tr><th>{html.escape(method)}<br><small>{kind}</small></th>"
                    f"<td>{highlight_words_html(words, scores)}</td></tr>")
    shown = ", ".join(f"{name} {p:.3f}" for name, p in probs.items())
    return ("<!doctype html><html><head><meta charset='utf-8'><title>clara explanation</title></head>"
            "<body style='font-family: sans-serif'>"
            f"<p>predicted <b>{html.escape(label)}</b> ({html.escape(shown)}); "
            f"explained class <b>{html.escape(target)}</b></p>"
            f"<p>{legend_html(target)}</p>"
            f"<table cellpadding='6'>{''.join(rows)}</table></body></html>\n")
