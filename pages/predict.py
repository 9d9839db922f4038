"""Predict: an uploaded (or example) image plus its text -> label, probabilities, uncertainty and what
each head and each modality alone says. The image text can be pre-filled by OCR."""
import hashlib

import plotly.graph_objects as go
import streamlit as st

from clara import app_support as support
from pages import _ui as ui

st.title("Predict")
predictor = ui.get_predictor()
labels = list(predictor.labels)
checkpoint = st.session_state.get(ui.CHECKPOINT)
for key, default in ((ui.POST_TEXT, ""), (ui.IMAGE_TEXT, ""), (ui.TEXT_SOURCE, support.TEXT_SOURCES[0]),
                     ("ocr_enabled", True)):
    st.session_state.setdefault(key, default)


def _set_image(data: bytes | None, name: str, post_text: str | None) -> None:
    st.session_state[ui.IMAGE_BYTES] = data
    st.session_state[ui.IMAGE_NAME] = name
    st.session_state[ui.IMAGE_TEXT] = ""
    st.session_state["ocr_done_for"] = None
    st.session_state["ocr_note"] = None
    st.session_state.pop(ui.PREDICTION, None)
    if post_text is not None:
        st.session_state[ui.POST_TEXT] = post_text


def _use_example(example: support.Example) -> None:
    _set_image(example.image_path.read_bytes(), example.name, example.text)
    st.session_state["image_from_upload"] = False


def _use_upload() -> None:
    upload = st.session_state.get("upload")
    if upload is not None:  # read in memory; the name is only shown, never used as a path
        _set_image(upload.getvalue(), support.safe_display_name(upload.name), None)
        st.session_state["image_from_upload"] = True
    elif st.session_state.get("image_from_upload"):  # the upload was removed: so is its image
        _set_image(None, "", None)


examples = support.load_examples(ui.EXAMPLES_DIR)
if examples:
    st.subheader("Try an example")
    for index, (column, example) in enumerate(zip(st.columns(len(examples)), examples)):
        column.image(str(example.image_path), width="stretch")
        column.caption(f"{example.name}: {example.note}" if example.note else example.name)
        column.button("Try it", key=f"example_{index}", on_click=_use_example, args=(example,), width="stretch")

st.toggle("Read the text in a new image with OCR (pre-fills the image text)", key="ocr_enabled")
st.file_uploader(f"…or upload an image (PNG, JPEG, WebP or GIF, up to {support.MAX_IMAGE_UPLOAD_MB} MB; "
                 "the first frame of an animation is used)", type=list(support.IMAGE_TYPES), key="upload",
                 on_change=_use_upload, max_upload_size=support.MAX_IMAGE_UPLOAD_MB)

image_bytes = st.session_state.get(ui.IMAGE_BYTES)
image_name = st.session_state.get(ui.IMAGE_NAME, "image")
checked = None
if image_bytes is not None:
    try:
        checked = support.check_image_upload(image_bytes)
    except support.AppInputError as exc:
        st.error(f"**{image_name}:** {exc}")
image_key = hashlib.sha256(image_bytes).hexdigest() if image_bytes is not None else None

# OCR once per new image, before the text box it fills is drawn.
if checked is not None and st.session_state.get("ocr_done_for") != image_key and st.session_state["ocr_enabled"]:
    st.session_state["ocr_done_for"] = image_key
    with st.spinner("Reading the text in the image (OCR)…"):
        try:
            result = ui.read_image_text(image_bytes)
        except Exception as exc:  # a tesseract crash or timeout must not break the page
            result, note = None, f"OCR failed ({exc}); type the image text yourself."
        else:
            if result is None:
                note = ("OCR is off: tesseract is not installed (apt-get install tesseract-ocr). Type the "
                        "image text yourself if it has any.")
            elif result["text"]:
                note = (f"OCR read {len(result['text'].split())} word(s) (best preprocessing: {result['variant']}, "
                        f"mean confidence {result['confidence']:.0f}); edit the text if it is wrong.")
            else:
                note = "OCR found no text in the image."
    if result is not None:
        st.session_state[ui.IMAGE_TEXT] = result["text"]
    st.session_state["ocr_note"] = note

left, right = st.columns([1, 2])
with left:
    if checked is not None:
        st.image(checked.image, caption=f"{image_name} · {checked.format} · {checked.size[0]}x{checked.size[1]}",
                 width="stretch")
        for note in checked.notes:
            st.caption(note)
    elif image_bytes is None:
        st.info("Choose an example or upload an image.")
with right:
    st.text_area("Post text (the tweet or caption that came with the image)", key=ui.POST_TEXT, height=90,
                 max_chars=support.MAX_TEXT_CHARS * 2)
    st.text_area("Text in the image (pre-filled by OCR; editable)", key=ui.IMAGE_TEXT, height=90,
                 max_chars=support.MAX_TEXT_CHARS * 2)
    if st.session_state.get("ocr_note"):
        st.caption(st.session_state["ocr_note"])
    st.radio("The model reads", support.TEXT_SOURCES, key=ui.TEXT_SOURCE, horizontal=True)
    clicked = st.button("Predict", type="primary", key="predict")

if clicked:
    if checked is None:
        st.warning("Choose an example or upload an image first." if image_bytes is None
                   else "This image cannot be used (see the message above): choose another one.")
    else:
        try:
            text = support.check_text(support.compose_text(st.session_state[ui.POST_TEXT],
                                                           st.session_state[ui.IMAGE_TEXT],
                                                           st.session_state[ui.TEXT_SOURCE]))
        except support.AppInputError as exc:
            st.error(str(exc))
        else:
            with st.spinner("Predicting…"):
                prediction = predictor.predict([checked.image], [text])[0]
            st.session_state[ui.PREDICTION] = {"prediction": prediction, "text": text, "checkpoint": checkpoint,
                                               "image_key": image_key}
            ui.store_post(image_bytes, text, image_name)

result = st.session_state.get(ui.PREDICTION)
if result and result["checkpoint"] == checkpoint and result["image_key"] == image_key:
    prediction = result["prediction"]
    probs = support.prob_dict(prediction.probs, labels)
    st.header(f"Prediction: {prediction.label}")
    c1, c2, c3 = st.columns(3)
    c1.metric("Predicted label", prediction.label)
    c2.metric("Probability", f"{probs[prediction.label]:.1%}")
    c3.metric("Uncertainty", f"{float(prediction.uncertainty):.3f}",
              help="The uncertainty head's output in [0, 1]. As in the published model, no loss trains this head "
                   "(MVSA-Multiple checkpoints report the normalised entropy instead): read it as indicative only.")
    if prediction.text_truncated:
        st.warning("The text is longer than the model reads: only its first tokens were used.")
    chart, notes = st.columns(2)
    figure = go.Figure(go.Bar(x=labels, y=[probs[label] for label in labels],
                              text=[f"{probs[label]:.1%}" for label in labels], textposition="auto",
                              marker_color=["#2ca02c" if label == prediction.label else "#9aa5b1" for label in labels]))
    figure.update_layout(yaxis=dict(range=[0, 1], title="probability"), height=300, margin=dict(t=20, b=20))
    chart.plotly_chart(figure, key="probability_chart")
    views = support.prediction_views(prediction, labels)
    notes.markdown("**Do the heads and the single modalities agree?**")
    for note in support.agreement_summary(views):
        notes.markdown("- " + note)
    st.markdown("**What each head and each modality says**")
    st.dataframe(views, hide_index=True, key="views_table",
                 column_order=["view", "says", "agrees with final", *labels, "meaning"],
                 column_config={"meaning": st.column_config.TextColumn("meaning", width="large"),
                                **{label: st.column_config.ProgressColumn(label, min_value=0.0, max_value=1.0,
                                                                          format="%.3f", width="small")
                                   for label in labels}})
    st.caption("Model input text: " + ui.escape_markdown(result["text"]))
    st.page_link("pages/attention.py", label="See the attention maps", icon=":material/visibility:")
    st.page_link("pages/attributions.py", label="See the attributions", icon=":material/functions:")
