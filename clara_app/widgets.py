"""Page elements more than one page draws: the demo (or synthetic-data) banner, the sidebar, tables
without "None" cells, the grid of confusion matrices, the post picker of the explanation pages, and
user text shown literally in markdown."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import streamlit as st

from clara.catalog import CheckpointEntry
from clara.inputs import check_image_upload
from clara_app import charts, state, tables
from clara_app.gallery import load_examples

POST_PICKER = "explain_post"  # the post picker's select box, shared by the Attention and Attributions pages
MISSING = "—"  # what an empty table cell shows


def demo_banner(entry: CheckpointEntry | None) -> None:
    """The demo's banner; for another checkpoint trained on synthetic data, a warning saying so."""
    if entry is None:
        return
    if entry.synthetic and not entry.is_demo:
        st.warning(f"**{entry.name} was trained on synthetic data** ({entry.data_dir or 'clara.data.synthetic'}): "
                   "generated posts, so it is **not a sentiment model**; its answers on real posts mean nothing.",
                   icon=":material/science:")
        return
    if not entry.is_demo:
        return
    st.info(
        "**You are using the demo checkpoint.** It has *tiny* encoders trained for about a minute on "
        "*synthetic* posts (a coloured square in a noisy picture plus a text with one cue word, built so that "
        "the label needs both), so it is **not a real sentiment model**: real photos and tweets get meaningless "
        "answers. The bundled examples show what it learned. To train a real model, download MVSA-Single and "
        f"run `{state.TRAIN_COMMAND}`, then pick the new checkpoint on the Home page.",
        icon=":material/info:")


def sidebar(entry: CheckpointEntry | None) -> None:
    with st.sidebar:
        st.caption("Checkpoint in use (change it on Home)")
        if entry is None:
            st.markdown("**none**")
        else:
            st.markdown(f"**{entry.name}**" + (" · demo" if entry.is_demo else "")
                        + (" · synthetic data" if entry.synthetic else ""))
            st.caption(f"{entry.dataset} · {entry.encoders} encoders · labels: {', '.join(entry.labels)}")
            if entry.synthetic:
                st.caption("Trained on synthetic posts: not a sentiment model.")


def table(rows: Sequence[Mapping[str, Any]], key: str, column_config: Mapping[str, Any] | None = None) -> None:
    """Rows as a dataframe without an index; an empty cell shows MISSING, never "None"."""
    st.dataframe(pd.DataFrame(list(rows)), hide_index=True, key=key, column_config=column_config,
                 placeholder=MISSING)


def confusion_grid(matrices: Sequence[tuple[Any, tuple[Sequence[str], Sequence[Sequence[int]]]]],
                   per_row: int = charts.CONFUSION_PER_ROW) -> None:
    """(run, (labels, counts)) pairs as confusion matrices, `per_row` side by side, each under its run's name."""
    for start in range(0, len(matrices), per_row):
        columns = st.columns(per_row, gap="large")
        for column, (run, (labels, counts)) in zip(columns, matrices[start:start + per_row]):
            column.markdown(f"**{tables.series_label(run)}** · {tables.dataset_title(run.dataset)}")
            column.plotly_chart(charts.confusion_figure(labels, counts, run.synthetic), key=f"confusion_{run.name}",
                                config=charts.STATIC)


def pick_post() -> state.Post | None:
    """Which post to explain: the last one predicted on Predict, or a bundled example."""
    state.keep_widgets(POST_PICKER)
    options: dict[str, state.Post] = {}
    last = state.last_post()
    if last is not None:
        options[f"Last prediction: {last.name}"] = last
    for example in load_examples(state.EXAMPLES_DIR):
        options[f"Example: {example.name}"] = state.Post(example.image_path.read_bytes(), example.text, example.name)
    if not options:
        st.warning("Nothing to explain yet: predict a post on the Predict page first.")
        return None
    state.valid_choice(POST_PICKER, list(options))
    choice = st.selectbox("Post to explain", list(options), key=POST_PICKER)
    post = options[choice]
    left, right = st.columns([1, 3])
    left.image(check_image_upload(post.image_bytes).image, width=160)
    right.markdown("**Text:** " + escape_markdown(post.text))
    return post


def escape_markdown(text: str) -> str:
    """Show user text literally in st.markdown (no links, emphasis or HTML from it)."""
    escaped = text.replace("\\", "\\\\")
    for ch in "*_`[]()<>#|~$":
        escaped = escaped.replace(ch, "\\" + ch)
    return escaped
