"""Errors: the misclassified test posts of an evaluation run (its predictions.csv), by true and predicted
class, each with its image, text, probabilities and, on request, an explanation."""
import streamlit as st

from clara import app_support as support
from pages import _ui as ui

PAGE_SIZE = 6
ANY = "any"

st.title("Errors")
runs = [run for run in ui.list_results() if run.predictions_file]
if not runs:
    st.info("No evaluation run with a predictions.csv yet: training writes one to results/<dataset>/.")
    st.stop()

names = [run.name for run in runs]
ui.valid_choice("errors_run", names)
run = runs[names.index(st.selectbox("Evaluation run", names, key="errors_run"))]
records = support.load_predictions(run)
wrong = support.misclassified(records)
st.markdown(f"**{len(wrong)}** of {len(records)} test posts are misclassified "
            f"({1 - len(wrong) / max(len(records), 1):.1%} accuracy).")
if wrong:
    st.dataframe(support.error_counts(records), hide_index=True, key="error_counts")

labels = run.labels
ui.valid_choice("errors_true", [ANY] + labels)
ui.valid_choice("errors_pred", [ANY] + labels)
c1, c2 = st.columns(2)
true_label = c1.selectbox("True class", [ANY] + labels, key="errors_true")
predicted_label = c2.selectbox("Predicted class", [ANY] + labels, key="errors_pred")
selected = support.misclassified(records, None if true_label == ANY else true_label,
                                 None if predicted_label == ANY else predicted_label)
if not selected:
    st.success("No misclassified post with these classes.")
    st.stop()

pages = (len(selected) + PAGE_SIZE - 1) // PAGE_SIZE
page = st.number_input(f"Page (of {pages})", min_value=1, max_value=pages, value=1, key="errors_page") \
    if pages > 1 else 1
st.caption(f"{len(selected)} post(s) match.")
checkpoint = run.checkpoint or st.session_state.get(ui.CHECKPOINT)

for record in selected[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]:
    with st.container(border=True):
        left, right = st.columns([1, 3])
        image_path = support.resolve_image_path(run, record.image_path)
        if image_path is not None:
            left.image(str(image_path), width="stretch")
        else:
            left.warning(f"Image not found: {record.image_path}")
        right.markdown(f"**{record.id}** · true **{record.label}** · predicted **{record.predicted}**")
        right.markdown(ui.escape_markdown(record.text))
        if record.probabilities:
            right.caption(" · ".join(f"{k} {v:.3f}" for k, v in record.probabilities.items()))
        if image_path is not None and right.button("Explain", key=f"explain_{record.id}"):
            predictor = ui.predictor_for(checkpoint)
            with st.spinner("Computing relevancy…"):
                explanation = ui.explainer_for(predictor).explain(str(image_path), record.text,
                                                                  methods=["relevancy"])
            if explanation.relevancy is None:
                right.warning("No relevancy for this checkpoint: " + "; ".join(explanation.skipped.values()))
            else:
                from clara.explain import overlay_image

                right.markdown("Relevancy for the predicted class: " + support.highlight_words_html(
                    explanation.words, explanation.relevancy.word_scores), unsafe_allow_html=True)
                left.image(overlay_image(str(image_path), explanation.relevancy.patch_scores, alpha=0.55,
                                         image_size=explanation.image_size),
                           caption="relevancy", width="stretch")
