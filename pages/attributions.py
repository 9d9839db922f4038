"""Attributions: Captum integrated gradients on the words and the pixels, occlusion, the text/image
share of the decision and deletion curves (a faithfulness check), computed on request."""
import math

import plotly.graph_objects as go
import streamlit as st

from clara import app_support as support
from pages import _ui as ui

METHODS = {
    "text_ig": "Integrated gradients on the words",
    "image_ig": "Integrated gradients on the pixels",
    "occlusion": "Occlusion of each image patch",
}
PREDICTED = "the predicted class"
MAX_GOOD_DELTA = 0.05  # |convergence delta| in probability units above which the steps are too few

st.title("Attributions")
st.caption("How much each word and each image region moves the probability of the explained class (Captum). "
           "Green words and hot regions push towards it; red words push away.")
predictor = ui.get_predictor()
labels = list(predictor.labels)
post = ui.pick_post()
if post is None:
    st.stop()

for key, default in (("attr_methods", list(METHODS)), ("attr_steps", 64), ("attr_deletion", True)):
    st.session_state.setdefault(key, default)
ui.valid_choice("attr_target", [PREDICTED] + labels)
with st.form("attribution_settings"):
    methods = st.multiselect("Methods", list(METHODS), format_func=METHODS.get, key="attr_methods")
    c1, c2, c3 = st.columns(3)
    steps = c1.slider("Integration steps", min_value=8, max_value=128, step=8, key="attr_steps",
                      help="More steps: a smaller convergence delta, a slower computation.")
    target = c2.selectbox("Explain", [PREDICTED] + labels, key="attr_target")
    with_deletion = c3.checkbox("Deletion curves", key="attr_deletion",
                                help="Remove the most relevant patches/words first and watch the probability fall.")
    submitted = st.form_submit_button("Compute attributions", type="primary")

request = (st.session_state.get(ui.CHECKPOINT), post.key, tuple(methods), steps, target, with_deletion)
if submitted:
    if not methods:
        st.warning("Choose at least one method.")
        st.stop()
    requested = list(methods) + ["modality_share"] + (["deletion"] if with_deletion else [])
    bar = st.progress(0.0, text="Preparing…")

    def _progress(method: str, done: int, total: int) -> None:
        name = METHODS.get(method, method.replace("_", " "))
        status = "Done" if method == "done" else f"Computing: {name} ({done + 1}/{total})"
        bar.progress(done / max(total, 1), text=status)

    image = support.check_image_upload(post.image_bytes).image
    explanation = ui.explainer_for(predictor, n_steps=steps).explain(
        image, post.text, target=None if target == PREDICTED else target, methods=requested, progress=_progress)
    st.session_state["attributions"] = (request, image, explanation)

stored = st.session_state.get("attributions")
if not stored or stored[0] != request:
    st.info("Choose the settings and press **Compute attributions** (a few seconds on the demo checkpoint, "
            "longer for a full-size model on a CPU).")
    st.stop()
_, image, explanation = stored

st.markdown(f"Predicted **{explanation.label}**; explained class: **{explanation.target}** "
            f"(p = {explanation.probs[explanation.target]:.3f}).")
for method, why in explanation.skipped.items():
    st.warning(f"{method} was not computed: {why}")

metrics = []
if explanation.text_ig is not None:
    metrics.append(("Text IG convergence delta", explanation.text_ig.convergence_delta))
if explanation.image_ig is not None:
    metrics.append(("Image IG convergence delta", explanation.image_ig.convergence_delta))
if explanation.modality_share is not None and not math.isnan(explanation.modality_share.text):
    metrics.append(("Text share of the decision", explanation.modality_share.text))
    metrics.append(("Image share of the decision", explanation.modality_share.image))
for column, (name, value) in zip(st.columns(max(len(metrics), 1)), metrics):
    column.metric(name, f"{value:+.4f}" if "delta" in name else f"{value:.0%}")
large = [name for name, value in metrics if "delta" in name and abs(value) > MAX_GOOD_DELTA]
if large:
    st.warning(f"{' and '.join(large)} above {MAX_GOOD_DELTA}: the integral is coarse. Raise the integration "
               "steps for attributions that add up to the change of the probability.")
if explanation.modality_share is not None:
    st.caption(f"Modality share by {explanation.modality_share.method}. Convergence delta: sum of the "
               "attributions minus the change of the output between baseline and input (0 is exact).")

if explanation.text_ig is not None:
    st.header("Words")
    st.markdown(support.highlight_words_html(explanation.words, explanation.text_ig.word_scores),
                unsafe_allow_html=True)
    st.dataframe([{"word": w, "attribution": float(s)} for w, s in zip(explanation.words,
                                                                         explanation.text_ig.word_scores)],
                 hide_index=True, key="word_attributions", height=200)

image_results = [(name, result) for name, result in (("image_ig", explanation.image_ig),
                                                     ("occlusion", explanation.occlusion)) if result is not None]
if image_results:
    from clara.explain import overlay

    st.header("Image")
    columns = st.columns(len(image_results) + 1)
    columns[0].image(image, caption="input", width="stretch")
    for column, (name, result) in zip(columns[1:], image_results):
        column.image(overlay(image, result.patch_scores, alpha=0.55, image_size=explanation.image_size),
                     caption=f"{METHODS[name]} (per patch)", width="stretch")

if explanation.deletion:
    st.header("Deletion curves")
    st.caption("Probability of the explained class as the highest-ranked patches (or words) are removed first. "
               "A faithful ranking falls faster than the random order: a smaller area under the curve.")
    for modality in ("image", "text"):
        curves = [c for c in explanation.deletion if c.modality == modality]
        if not curves:
            continue
        figure = go.Figure([go.Scatter(x=c.fractions, y=c.probs, mode="lines",
                                       name=f"{c.method} (AUC {c.auc:.3f})") for c in curves])
        figure.update_layout(title=f"{modality}: removing {curves[0].n_units} "
                                   f"{'patches' if modality == 'image' else 'words'}",
                             xaxis_title="fraction removed", yaxis_title="probability", height=320,
                             margin=dict(t=40, b=20))
        st.plotly_chart(figure, key=f"deletion_{modality}")

if explanation.timings:
    st.caption("Time per step: " + ", ".join(f"{k} {v:.1f} s" for k, v in explanation.timings.items()))
