"""Predict: an uploaded (or example) image plus its text -> label, probabilities and what each head
and each modality alone says (the untrained uncertainty head's output shown apart). The image text
can be pre-filled by OCR. Wide screens: the input left, the result right; narrow ones: stacked."""
import hashlib

import plotly.graph_objects as go
import streamlit as st

from clara import inputs, ocr
from clara.model.heads import EntropyUncertainty
from clara_app import state, tables, widgets
from clara_app.gallery import Example, load_examples

# This page's session keys.
IMAGE_BYTES = "image_bytes"  # bytes of the image chosen (upload or example)
IMAGE_NAME = "image_name"  # display name of that image (never used as a path)
IMAGE_FROM_UPLOAD = "image_from_upload"  # whether that image came from the uploader
POST_TEXT = "post_text"  # widget: the typed post text
IMAGE_TEXT = "image_text"  # widget: text read from the image by OCR, editable
TEXT_SOURCE = "text_source"  # widget: which of the two texts the model reads
OCR_ENABLED = "ocr_enabled"  # widget: OCR a new image
OCR_ENGINE = "ocr_engine"  # widget: which installed OCR engine reads it (shown when there are several)
OCR_DONE_FOR, OCR_NOTE = "ocr_done_for", "ocr_note"  # the image OCR last ran on, and what it said
UPLOAD = "upload"  # widget: the image uploader
PREDICTION = "prediction"  # dict: the last prediction and what it was made on

st.title("Predict")
state.keep_widgets(POST_TEXT, IMAGE_TEXT, TEXT_SOURCE, OCR_ENABLED, OCR_ENGINE)
predictor = state.get_predictor()
labels = list(predictor.labels)
checkpoint = st.session_state.get(state.CHECKPOINT)
ocr_engines = state.ocr_engines()
for key, default in ((POST_TEXT, ""), (IMAGE_TEXT, ""), (TEXT_SOURCE, inputs.TEXT_SOURCES[0]),
                     (OCR_ENABLED, bool(ocr_engines))):
    st.session_state.setdefault(key, default)
if not ocr_engines:  # the toggle never says ON when nothing can read the image
    st.session_state[OCR_ENABLED] = False
if ocr_engines:
    state.valid_choice(OCR_ENGINE, ocr_engines)


def _set_image(data: bytes | None, name: str, post_text: str | None) -> None:
    st.session_state[IMAGE_BYTES] = data
    st.session_state[IMAGE_NAME] = name
    st.session_state[IMAGE_TEXT] = ""
    st.session_state[OCR_DONE_FOR] = None
    st.session_state[OCR_NOTE] = None
    st.session_state.pop(PREDICTION, None)
    if post_text is not None:
        st.session_state[POST_TEXT] = post_text


def _use_example(example: Example) -> None:
    _set_image(example.image_path.read_bytes(), example.name, example.text)
    st.session_state[IMAGE_FROM_UPLOAD] = False


def _use_upload() -> None:
    upload = st.session_state.get(UPLOAD)
    if upload is not None:  # read in memory; the name is only shown, never used as a path
        _set_image(upload.getvalue(), inputs.safe_display_name(upload.name), None)
        st.session_state[IMAGE_FROM_UPLOAD] = True
    elif st.session_state.get(IMAGE_FROM_UPLOAD):  # the upload was removed: so is its image
        _set_image(None, "", None)


examples = load_examples(state.EXAMPLES_DIR)
input_column, result_column = st.columns([3, 2], gap="large")  # stacked, input first, on a narrow screen
with input_column:
    st.file_uploader(f"Upload an image (PNG, JPEG, WebP or GIF, up to {inputs.UPLOAD_LIMITS_MB['image']} MB; "
                     "the first frame of an animation is used)", type=list(inputs.IMAGE_TYPES), key=UPLOAD,
                     on_change=_use_upload, max_upload_size=inputs.UPLOAD_LIMITS_MB["image"])
    if examples:
        st.markdown("**…or try an example** (hover over *Try it* for what it shows)")
        with st.container(horizontal=True, wrap=True):  # a wrapping row: a few lines on a phone, not a column
            for index, example in enumerate(examples):
                with st.container(width=72, gap="small"):
                    st.image(str(example.image_path), width=64)
                    st.button("Try it", key=f"example_{index}", on_click=_use_example, args=(example,),
                              help=f"{example.name}: {example.note}" if example.note else example.name)
    toggle_column, engine_column = st.columns([2, 1], vertical_alignment="center")
    toggle_column.toggle("OCR: pre-fill the text in a new image", key=OCR_ENABLED, disabled=not ocr_engines,
                         help="Reads the text drawn in the picture (a meme's caption) into the image text box.")
    if len(ocr_engines) > 1:
        engine_column.selectbox("OCR engine", ocr_engines, key=OCR_ENGINE, label_visibility="collapsed")
    if not ocr_engines:
        st.caption(f"OCR is off: no OCR engine is installed ({ocr.OCR_INSTALL_HINT}). Type the image text "
                   "yourself if it has any.")

image_bytes = st.session_state.get(IMAGE_BYTES)
image_name = st.session_state.get(IMAGE_NAME, "image")
checked = None
if image_bytes is not None:
    try:
        checked = inputs.check_image_upload(image_bytes)
    except inputs.InputError as exc:
        input_column.error(f"**{image_name}:** {exc}")
image_key = hashlib.sha256(image_bytes).hexdigest() if image_bytes is not None else None

# OCR once per new image (and engine), before the text box it fills is drawn.
ocr_request = (image_key, st.session_state.get(OCR_ENGINE))
if checked is not None and st.session_state.get(OCR_DONE_FOR) != ocr_request and st.session_state[OCR_ENABLED]:
    st.session_state[OCR_DONE_FOR] = ocr_request
    with input_column, st.spinner("Reading the text in the image (OCR)…"):
        try:
            result = state.read_image_text(image_bytes, st.session_state.get(OCR_ENGINE))
        except Exception as exc:  # an engine crash or timeout must not break the page
            result, note = None, f"OCR failed ({exc}); type the image text yourself."
        else:
            if result is None:
                note = f"OCR is off: no OCR engine is installed ({ocr.OCR_INSTALL_HINT})."
            elif result["text"]:
                how = f"best preprocessing: {result['variant']}, " if result["engine"] == ocr.TESSERACT else ""
                note = (f"OCR read {len(result['text'].split())} word(s) with {result['engine']} ({how}mean "
                        f"confidence {result['confidence']:.0f}); edit the text if it is wrong.")
            else:
                note = f"OCR ({result['engine']}) found no text in the image."
    if result is not None:
        st.session_state[IMAGE_TEXT] = result["text"]
    st.session_state[OCR_NOTE] = note

with input_column:
    if checked is not None:
        st.image(checked.image, caption=f"{image_name} · {checked.format} · {checked.size[0]}x{checked.size[1]}",
                 width=min(240, checked.size[0] * 3))
        for note in checked.notes:
            st.caption(note)
    elif image_bytes is None:
        st.info("Choose an example or upload an image.")
    st.text_area("Post text (the tweet or caption that came with the image)", key=POST_TEXT, height=90,
                 max_chars=inputs.MAX_TEXT_CHARS * 2)
    st.text_area("Text in the image (pre-filled by OCR; editable)", key=IMAGE_TEXT, height=90,
                 max_chars=inputs.MAX_TEXT_CHARS * 2)
    if st.session_state.get(OCR_NOTE):
        st.caption(st.session_state[OCR_NOTE])
    st.radio("The model reads", inputs.TEXT_SOURCES, key=TEXT_SOURCE, horizontal=True)
    clicked = st.button("Predict", type="primary", key="predict")

if clicked:
    if checked is None:
        st.warning("Choose an example or upload an image first." if image_bytes is None
                   else "This image cannot be used (see the message above): choose another one.")
    else:
        try:
            text = inputs.check_text(inputs.compose_text(st.session_state[POST_TEXT], st.session_state[IMAGE_TEXT],
                                                         st.session_state[TEXT_SOURCE]))
        except inputs.InputError as exc:
            st.error(str(exc))
        else:
            with st.spinner("Predicting…"):
                prediction = predictor.predict([checked.image], [text])[0]
            st.session_state[PREDICTION] = {"prediction": prediction, "text": text, "checkpoint": checkpoint,
                                            "image_key": image_key}
            state.store_post(image_bytes, text, image_name)

result = st.session_state.get(PREDICTION)
if not (result and result["checkpoint"] == checkpoint and result["image_key"] == image_key):
    result_column.info("The prediction appears here: choose an image, check the texts and press **Predict**.")
    st.stop()
prediction = result["prediction"]
probs = prediction.probs
with result_column:
    st.header(f"Prediction: {prediction.label}")
    c1, c2 = st.columns(2)
    c1.metric("Predicted label", prediction.label)
    c2.metric("Probability", f"{probs[prediction.label]:.1%}")
    if prediction.text_truncated:
        st.warning("The text is longer than the model reads: only its first tokens were used.")
    figure = go.Figure(go.Bar(x=labels, y=[probs[label] for label in labels],
                              text=[f"{probs[label]:.1%}" for label in labels], textposition="auto",
                              marker_color=["#2ca02c" if label == prediction.label else "#9aa5b1" for label in labels]))
    figure.update_layout(yaxis=dict(range=[0, 1], title="probability"), height=260, margin=dict(t=10, b=10))
    st.plotly_chart(figure, key="probability_chart")
    if isinstance(getattr(predictor.model, "unc", None), EntropyUncertainty):
        st.caption(f"Uncertainty (normalised entropy of the probabilities, 0 = certain, 1 = uniform): "
                   f"{float(prediction.uncertainty):.3f}.")
    else:
        st.caption(f"Uncertainty head: {float(prediction.uncertainty):.3f}, not a confidence. As in the published "
                   "model, no loss trains this head, so the number carries no meaning; the probability above is "
                   "the model's confidence.")
    views = tables.prediction_views(prediction, labels)
    st.markdown("**Do the heads and the single modalities agree?**")
    for note in tables.agreement_summary(views):
        st.markdown("- " + note)
st.markdown("**What each head and each modality says**")
st.dataframe(views, hide_index=True, key="views_table",
             column_order=["view", "says", "agrees with final", *labels, "meaning"],
             column_config={"meaning": st.column_config.TextColumn("meaning", width="large"),
                            **{label: st.column_config.ProgressColumn(label, min_value=0.0, max_value=1.0,
                                                                      format="%.3f", width="small")
                               for label in labels}})
st.caption("Model input text: " + widgets.escape_markdown(result["text"]))
st.page_link("pages/attention.py", label="See the attention maps", icon=":material/visibility:")
st.page_link("pages/attributions.py", label="See the attributions", icon=":material/functions:")
