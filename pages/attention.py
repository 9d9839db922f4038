"""Attention: the fusion's raw cross-modal attention (text token -> image patch, image patch -> text
token) per layer and head, beside the class-specific co-attention relevancy (an explanation)."""
import streamlit as st

from clara.explain import NoFusionAttentionError, crop_box
from clara.explain.colours import MAP_SCALES
from clara.explain.render import highlight_words_html, legend_html
from clara.inputs import check_image_upload
from clara_app import figures, state, widgets

MAX_WORD_MAPS = 24
MEAN = "mean"
ALL_PATCHES = "all patches (mean)"
# This page's session keys.
LAYER, HEAD, PATCH = "attention_layer", "attention_head", "attention_patch"  # widgets
PATCH_PICKER = "attention_patch_picker"  # the clickable picture (a plotly selection)
COMPUTED_FOR, RESULT, PROBLEM = "attention_for", "attention_result", "attention_problem"

st.title("Attention")
st.caption("**Raw attention** is what the fusion layers weigh in the forward pass, for no class in particular. "
           "**Relevancy** (Chefer et al. 2021) propagates gradient-weighted attention for the predicted class: "
           "it is the explanation; attention is only a hint.")
state.keep_widgets(LAYER, HEAD, PATCH)
predictor = state.get_predictor()
post = widgets.pick_post()
if post is None:
    st.stop()

cache_key = (st.session_state.get(state.CHECKPOINT), post.key)
if st.session_state.get(COMPUTED_FOR) != cache_key:
    explainer = state.explainer_for(predictor)
    image = check_image_upload(post.image_bytes).image
    with st.spinner("Computing attention and relevancy…"):
        try:
            inputs = explainer.prepare(image, post.text)
            maps, relevancy = explainer.attention(inputs), explainer.relevancy(inputs)
        except NoFusionAttentionError as exc:
            maps = relevancy = None
            st.session_state[PROBLEM] = str(exc)
    st.session_state[RESULT] = (image, inputs.label_index if maps is not None else None, maps, relevancy)
    st.session_state[COMPUTED_FOR] = cache_key
image, label_index, maps, relevancy = st.session_state[RESULT]
if maps is None:
    st.info("This checkpoint fuses pooled vectors (the notebooks' design): one text vector attends to one image "
            "vector, so there is no token-to-patch attention to show. "
            f"({st.session_state.get(PROBLEM)}) The Attributions page works for every checkpoint.")
    st.stop()

labels = list(predictor.labels)
words = list(maps.words.words)
target = labels[relevancy.target_index]
grid = maps.grid.grid_size
st.markdown(f"Predicted: **{labels[label_index]}** · {len(words)} words · {grid}x{grid} "
            f"patches of {maps.grid.patch_size} px · {maps.n_layers} layers x {maps.n_heads} heads")

layer_options = [MEAN] + list(range(maps.n_layers))
head_options = [MEAN] + list(range(maps.n_heads))
state.valid_choice(LAYER, layer_options)
state.valid_choice(HEAD, head_options)
c1, c2 = st.columns(2)
layer = c1.selectbox("Layer", layer_options, key=LAYER,
                     format_func=lambda v: "mean of all layers" if v == MEAN else f"layer {v + 1}")
head = c2.selectbox("Head", head_options, key=HEAD,
                    format_func=lambda v: "mean of all heads" if v == MEAN else f"head {v + 1}")
layer_index = None if layer == MEAN else int(layer)
head_index = None if head == MEAN else int(head)

st.header("Raw attention beside relevancy")
st.caption(figures.CROP_NOTE + " Each map has its own colour scale (bar on its right).")
left, right = st.columns(2)
left.plotly_chart(figures.heatmap_figure(image, maps.text_to_image_map(layer_index, head_index), maps.grid,
                                         signed=False, colorbar_title=MAP_SCALES["attention"].label,
                                         title=MAP_SCALES["attention"].title),
                  key="attention_map")
right.plotly_chart(figures.heatmap_figure(image, relevancy.patch_scores, maps.grid, signed=False,
                                          colorbar_title=MAP_SCALES["relevancy"].label,
                                          title=f"Relevancy of each patch for “{target}” (all layers)"),
                   key="relevancy_map")
st.plotly_chart(figures.attention_relevancy_bars(words, maps.image_to_text_weights(layer_index, head_index),
                                                 relevancy.word_scores, target), key="word_bars")
st.markdown("Relevancy per word: " + highlight_words_html(words, relevancy.word_scores), unsafe_allow_html=True)
st.caption(legend_html(target), unsafe_allow_html=True)

st.header("Patch → token: which words a patch reads")
patch_options = [ALL_PATCHES] + [f"row {r + 1}, column {c + 1}" for r in range(grid) for c in range(grid)]


def _patch_clicked() -> None:
    """A click on the picture picks the patch under it (the select box follows)."""
    clicked = figures.selected_patch(st.session_state.get(PATCH_PICKER), crop, grid)
    if clicked is not None:
        st.session_state[PATCH] = patch_options[1 + clicked[0] * grid + clicked[1]]


crop = crop_box(image.size, maps.grid.image_size)
state.valid_choice(PATCH, patch_options)
left, right = st.columns([2, 3])
with left:
    st.selectbox("Image patch (or click the picture)", patch_options, key=PATCH)
    choice = st.session_state[PATCH]
    patch = None if choice == ALL_PATCHES else divmod(patch_options.index(choice) - 1, grid)
    st.plotly_chart(figures.heatmap_figure(image, maps.text_to_image_map(layer_index, head_index), maps.grid,
                                           signed=False, colorbar_title=MAP_SCALES["attention"].label, patch=patch,
                                           height=320),
                    key=PATCH_PICKER, on_select=_patch_clicked, selection_mode="points")
    st.caption("Click a patch of the picture to choose it; the blue box marks the chosen one.")
weights = maps.image_to_text_weights(layer_index, head_index, patch=patch)
right.plotly_chart(figures.patch_word_bars(words, weights, f"Attention of {choice} on each word"), key="patch_bars")

st.header("Token → patch: where each word looks")
shown = words[:MAX_WORD_MAPS]
if len(words) > MAX_WORD_MAPS:
    st.caption(f"The first {MAX_WORD_MAPS} of {len(words)} words.")
st.caption("One colour scale for all the words, so the maps compare.")
st.plotly_chart(figures.small_multiples_figure(
    image, [maps.text_to_image_map(layer_index, head_index, word=index) for index in range(len(shown))], shown,
    maps.grid, colorbar_title="attention weight"), key="word_maps")
