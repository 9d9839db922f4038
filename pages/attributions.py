"""Attributions: Captum integrated gradients on the words and the pixels, occlusion, the text/image
share of the decision and deletion curves (a faithfulness check), computed on request at the
explanation defaults of clara.explain (EXPLAIN_DEFAULTS), with per-method progress and a time
estimate measured on this server."""
import math
import time

import plotly.graph_objects as go
import streamlit as st

from clara.explain import EXPLAIN_DEFAULTS, PatchGrid
from clara.explain.colours import MAP_SCALES
from clara.explain.render import highlight_words_html, legend_html
from clara.inputs import check_image_upload
from clara_app import figures, state, widgets

METHODS = {
    "text_ig": "Integrated gradients on the words",
    "image_ig": "Integrated gradients on the pixels",
    "occlusion": "Occlusion of each image patch",
}
STEP_NAMES = {**METHODS, "modality_share": "Text/image share", "deletion": "Deletion curves"}
PREDICTED = "the predicted class"
STEP_BUDGETS = sorted({EXPLAIN_DEFAULTS.n_steps * 2 ** k for k in range(6)} | {EXPLAIN_DEFAULTS.max_steps})
# This page's session keys.
METHODS_KEY, STEPS, TARGET, DELETION = "attr_methods", "attr_steps", "attr_target", "attr_deletion"  # widgets
RESULT = "attributions"  # (request, image, explanation) of the last computation

st.title("Attributions")
st.caption("How much each word and each image patch moves the probability of the explained class (Captum). "
           "Green pushes towards it, red away from it, on every view of this page.")
state.keep_widgets(METHODS_KEY, STEPS, TARGET, DELETION)
predictor = state.get_predictor()
labels = list(predictor.labels)
post = widgets.pick_post()
if post is None:
    st.stop()
checkpoint = st.session_state.get(state.CHECKPOINT)

for key, default in ((METHODS_KEY, [m for m in METHODS if m in EXPLAIN_DEFAULTS.methods]),
                     (STEPS, EXPLAIN_DEFAULTS.max_steps), (DELETION, "deletion" in EXPLAIN_DEFAULTS.methods)):
    st.session_state.setdefault(key, default)
state.valid_choice(STEPS, STEP_BUDGETS)
state.valid_choice(TARGET, [PREDICTED] + labels)
with st.form("attribution_settings"):
    methods = st.multiselect("Methods", list(METHODS), format_func=METHODS.get, key=METHODS_KEY)
    c1, c2, c3 = st.columns(3)
    max_steps = c1.select_slider(
        "Most integration steps", STEP_BUDGETS, key=STEPS,
        help=f"Integrated gradients start with {EXPLAIN_DEFAULTS.n_steps} steps and add steps where the "
             "completeness check fails (|convergence delta| at most "
             f"{EXPLAIN_DEFAULTS.max_relative_delta:.0%} of the change of the probability) up to this many.")
    target = c2.selectbox("Explain", [PREDICTED] + labels, key=TARGET)
    with_deletion = c3.checkbox("Deletion curves (slow)", key=DELETION,
                                help="Remove the most relevant patches/words first and watch the probability fall.")
    submitted = st.form_submit_button("Compute attributions", type="primary")

requested = list(methods) + ["modality_share"] + (["deletion"] if with_deletion else [])
settings_key = (int(max_steps), target == PREDICTED)
estimate = state.explain_estimate(checkpoint, settings_key, requested)
request = (checkpoint, post.key, tuple(methods), max_steps, target, with_deletion)
if submitted:
    if not methods:
        st.warning("Choose at least one method.")
        st.stop()
    bar = st.progress(0.0, text="Preparing…")
    started = time.perf_counter()

    def _progress(method: str, done: int, total: int) -> None:
        elapsed = time.perf_counter() - started
        if method == "done":
            bar.progress(1.0, text=f"Done in {elapsed:.0f} s")
            return
        name = STEP_NAMES.get(method, method.replace("_", " "))
        if estimate:  # the bar moves by measured time, not by the count of methods
            before = sum(estimate.get(m, 0.0) for m in ["prepare", *requested[:done]])
            fraction = before / max(sum(estimate.values()), 1e-9)
            left = max(sum(estimate.values()) - elapsed, 0.0)
            status = f"Computing: {name} ({done + 1}/{total}) · about {left:.0f} s left (measured on this server)"
        else:
            fraction = done / max(total, 1)
            status = f"Computing: {name} ({done + 1}/{total}) · {elapsed:.0f} s so far; first run: timing each step"
        bar.progress(min(fraction, 1.0), text=status)

    image = check_image_upload(post.image_bytes).image
    explanation = state.explainer_for(predictor, max_steps=int(max_steps)).explain(
        image, post.text, target=None if target == PREDICTED else target, methods=requested, progress=_progress)
    state.record_explain_timings(checkpoint, settings_key, explanation.timings)
    st.session_state[RESULT] = (request, image, explanation)

stored = st.session_state.get(RESULT)
if not stored or stored[0] != request:
    if estimate:
        st.info(f"Press **Compute attributions**: about **{sum(estimate.values()):.0f} s** at these settings, "
                "measured on this server on its last run of this checkpoint.")
    else:
        st.info("Press **Compute attributions**. Not timed on this server yet: the bar shows each step as it runs, "
                "and later runs show an estimate measured from this one (a full-size model on a CPU takes "
                "minutes).")
    st.stop()
_, image, explanation = stored

st.markdown(f"Predicted **{explanation.label}**; explained class: **{explanation.target}** "
            f"(p = {explanation.probs[explanation.target]:.3f}).")
for method, why in explanation.skipped.items():
    st.warning(f"{method} was not computed: {why}")

ig_results = [(name, result) for name, result in (("Text IG", explanation.text_ig), ("Image IG", explanation.image_ig))
              if result is not None]
metrics = [(f"{name} convergence delta", f"{result.convergence_delta:+.4f}",
            f"{result.n_steps} steps; change of the probability {result.output_change:+.4f}"
            if result.output_change is not None else f"{result.n_steps} steps")
           for name, result in ig_results]
share = explanation.modality_share
if share is not None and not math.isnan(share.text):
    metrics += [("Text share of the decision", f"{share.text:.0%}", None),
                ("Image share of the decision", f"{share.image:.0%}", None)]
for column, (name, value, note) in zip(st.columns(max(len(metrics), 1)), metrics):
    column.metric(name, value, help=note)
coarse = [name for name, result in ig_results if result.converged is False]
if coarse:
    st.warning(f"{' and '.join(coarse)} did not converge within {max_steps} steps: the attributions do not add up "
               "to the change of the probability. Raise **Most integration steps**.")
if share is not None:
    st.caption(f"Modality share by {share.method}. Convergence delta: sum of the attributions minus the change "
               "of the probability between baseline and input (0 is exact; converged when it is within "
               f"{EXPLAIN_DEFAULTS.max_relative_delta:.0%} of that change).")

if explanation.text_ig is not None:
    st.header("Words")
    st.markdown(highlight_words_html(explanation.words, explanation.text_ig.word_scores), unsafe_allow_html=True)
    st.caption(legend_html(explanation.target), unsafe_allow_html=True)
    st.dataframe([{"word": w, "attribution": float(s)} for w, s in zip(explanation.words,
                                                                         explanation.text_ig.word_scores)],
                 hide_index=True, key="word_attributions", height=200)

image_results = [(name, result) for name, result in (("image_ig", explanation.image_ig),
                                                     ("occlusion", explanation.occlusion)) if result is not None]
if image_results:
    st.header("Image")
    st.caption(figures.CROP_NOTE + " Signed scales centred at 0: green raises the probability of "
               f"“{explanation.target}”, red lowers it.")
    grid = PatchGrid(image_size=explanation.image_size, patch_size=explanation.patch_size,
                             grid_size=explanation.grid_size)
    for column, (name, result) in zip(st.columns(len(image_results)), image_results):
        column.plotly_chart(figures.heatmap_figure(image, result.patch_scores, grid, signed=MAP_SCALES[name].signed,
                                                   colorbar_title=MAP_SCALES[name].label, title=f"{METHODS[name]}"),
                            key=f"map_{name}")

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
    st.caption("Time per step on this server: " + ", ".join(
        f"{STEP_NAMES.get(k, k.replace('_', ' '))} {v:.1f} s" for k, v in explanation.timings.items()))
