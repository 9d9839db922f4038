"""Attention: the fusion's raw cross-modal attention (text token -> image patch, image patch -> text
token) per layer and head, beside the class-specific co-attention relevancy (an explanation)."""
import numpy as np
import plotly.graph_objects as go
import streamlit as st

from clara import app_support as support
from pages import _ui as ui

MAX_WORD_MAPS = 24
MEAN = "mean"

st.title("Attention")
st.caption("**Raw attention** is what the fusion layers weigh in the forward pass, for no class in particular. "
           "**Relevancy** (Chefer et al. 2021) propagates gradient-weighted attention for the predicted class: "
           "it is the explanation; attention is only a hint.")
predictor = ui.get_predictor()
post = ui.pick_post()
if post is None:
    st.stop()

from clara.explain import NoFusionAttentionError  # noqa: E402  (torch-heavy; after the page header shows)

cache_key = (st.session_state.get(ui.CHECKPOINT), post.key)
if st.session_state.get("attention_for") != cache_key:
    explainer = ui.explainer_for(predictor)
    image = support.check_image_upload(post.image_bytes).image
    with st.spinner("Computing attention and relevancy…"):
        try:
            inputs = explainer.prepare(image, post.text)
            maps, relevancy = explainer.attention(inputs), explainer.relevancy(inputs)
        except NoFusionAttentionError as exc:
            maps = relevancy = None
            st.session_state["attention_problem"] = str(exc)
    st.session_state["attention_result"] = (image, inputs.label_index if maps is not None else None, maps, relevancy)
    st.session_state["attention_for"] = cache_key
image, label_index, maps, relevancy = st.session_state["attention_result"]
if maps is None:
    st.info("This checkpoint fuses pooled vectors (the notebooks' design): one text vector attends to one image "
            "vector, so there is no token-to-patch attention to show. "
            f"({st.session_state.get('attention_problem')}) The Attributions page works for every checkpoint.")
    st.stop()

labels = list(predictor.labels)
words = list(maps.words.words)
st.markdown(f"Predicted: **{labels[label_index]}** · {len(words)} words · {maps.grid.grid_size}x{maps.grid.grid_size} "
            f"patches of {maps.grid.patch_size} px · {maps.n_layers} layers x {maps.n_heads} heads")

layer_options = [MEAN] + list(range(maps.n_layers))
head_options = [MEAN] + list(range(maps.n_heads))
ui.valid_choice("attention_layer", layer_options)
ui.valid_choice("attention_head", head_options)
c1, c2 = st.columns(2)
layer = c1.selectbox("Layer", layer_options, key="attention_layer",
                     format_func=lambda v: "mean of all layers" if v == MEAN else f"layer {v + 1}")
head = c2.selectbox("Head", head_options, key="attention_head",
                    format_func=lambda v: "mean of all heads" if v == MEAN else f"head {v + 1}")
layer_index = None if layer == MEAN else int(layer)
head_index = None if head == MEAN else int(head)


def _overlay(heatmap: np.ndarray) -> np.ndarray:
    from clara.explain import overlay
    return overlay(image, heatmap, alpha=0.55, image_size=maps.grid.image_size)


st.header("Raw attention beside relevancy")
left, right = st.columns(2)
left.image(_overlay(maps.text_to_image_map(layer_index, head_index)), width="stretch",
           caption="Attention: text tokens → patches (mean over words)")
right.image(_overlay(relevancy.patch_scores), width="stretch",
            caption=f"Relevancy of each patch for “{labels[relevancy.target_index]}” (all layers)")
word_figure = go.Figure([
    go.Bar(name="attention (patches → word)", x=words, y=maps.image_to_text_weights(layer_index, head_index)),
    go.Bar(name="relevancy (explanation)", x=words, y=relevancy.word_scores),
])
word_figure.update_layout(barmode="group", height=320, margin=dict(t=30, b=20), legend=dict(orientation="h"))
st.plotly_chart(word_figure, key="word_bars")
st.markdown("Relevancy per word: " + support.highlight_words_html(words, relevancy.word_scores),
            unsafe_allow_html=True)

st.header("Token → patch: where each word looks")
shown = words[:MAX_WORD_MAPS]
if len(words) > MAX_WORD_MAPS:
    st.caption(f"The first {MAX_WORD_MAPS} of {len(words)} words.")
columns = st.columns(6)
for index, word in enumerate(shown):
    columns[index % 6].image(_overlay(maps.text_to_image_map(layer_index, head_index, word=index)),
                             caption=word, width="stretch")

st.header("Patch → token: which words a patch reads")
grid = maps.grid.grid_size
patch_options = ["all patches (mean)"] + [f"row {r + 1}, column {c + 1}" for r in range(grid) for c in range(grid)]
ui.valid_choice("attention_patch", patch_options)
patch_choice = st.selectbox("Image patch", patch_options, key="attention_patch")
patch = None if patch_choice.startswith("all") else \
    tuple(int(part.split()[-1]) - 1 for part in patch_choice.split(", "))
weights = maps.image_to_text_weights(layer_index, head_index, patch=patch)
left, right = st.columns([1, 2])
if patch is not None:
    marker = np.zeros((grid, grid))
    marker[patch] = 1.0
    left.image(_overlay(marker), caption=patch_choice, width="stretch")
patch_figure = go.Figure(go.Bar(x=words, y=weights))
patch_figure.update_layout(height=300, margin=dict(t=20, b=20), yaxis_title="attention weight")
right.plotly_chart(patch_figure, key="patch_bars")
