"""clara.explain.render: the one word highlighter (the app's pages and scripts/explain.py)."""
from __future__ import annotations

from clara.explain.render import highlight_words_html, legend_html, words_page_html


def test_word_highlighting_escapes_html():
    html = highlight_words_html(["<script>alert(1)</script>", "fine"], [1.0, -0.5])
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert html.count("<span") == 2
    assert "rgba(0, 160, 60, 0.75)" in html and "rgba(220, 40, 40, 0.38)" in html


def test_the_legend_says_which_colour_means_for_and_against():
    legend = legend_html("<b>neg</b>")
    assert "rgba(0, 160, 60, 0.75)" in legend and "rgba(220, 40, 40, 0.75)" in legend
    assert "evidence for <b>&lt;b&gt;neg&lt;/b&gt;</b>" in legend and "evidence against it" in legend
    page = words_page_html(["i", "<love>"], {"text_ig": [0.2, -0.4], "attention": [0.1, 0.3]}, "positive",
                           {"positive": 0.7, "negative": 0.3}, "positive")
    assert page.count("<tr>") == 2 and "&lt;love&gt;</span>" in page and legend_html("positive") in page
