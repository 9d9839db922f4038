"""Batch: a CSV of posts (image + text per row, images in an uploaded ZIP or a local folder) ->
a predictions table and a CSV download. Rows that cannot be used keep their error message."""
import json

import streamlit as st

from clara import app_support as support
from pages import _ui as ui

st.title("Batch prediction")
st.markdown("Upload a **CSV** with a header naming an image column (`image`, `image_path`, `path` or `file`) and "
            "a text column (`text`, `tweet` or `caption`), plus a **ZIP** holding the images (looked up by path, "
            f"then by file name; up to {support.MAX_BATCH_ROWS} rows). On your own machine you can instead give "
            "the folder the image paths are relative to.")
predictor = ui.get_predictor()

csv_upload = st.file_uploader("CSV of posts", type=["csv", "tsv", "txt"], key="batch_csv")
zip_upload = st.file_uploader("ZIP of images (optional)", type=["zip"], key="batch_zip", max_upload_size=200)
images_dir = st.text_input("…or the folder holding the images (on the machine running the app; optional)",
                           key="batch_images_dir").strip() or None
c1, c2 = st.columns(2)
run_upload = c1.button("Predict the CSV", type="primary", key="batch_predict")
run_examples = c2.button("Try it on the bundled examples", key="batch_examples")

examples = support.load_examples(ui.EXAMPLES_DIR)
sample_rows = [{"image": e.image_path.name, "text": e.text} for e in examples]
if examples:
    st.download_button("Download an example CSV (images: the examples/ folder)", support.rows_to_csv(sample_rows),
                       file_name="clara_batch_example.csv", mime="text/csv", key="batch_template")

request = None
if run_examples:
    request = (support.rows_to_csv(sample_rows), None, str(ui.EXAMPLES_DIR))
elif run_upload:
    if csv_upload is None:
        st.warning("Upload a CSV first.")
    else:
        request = (csv_upload.getvalue(), zip_upload.getvalue() if zip_upload is not None else None, images_dir)

if request is not None:
    try:
        items = support.read_batch(*request)
    except support.AppInputError as exc:
        st.error(str(exc))
    else:
        with st.spinner(f"Predicting {sum(i.error is None for i in items)} post(s)…"):
            st.session_state["batch_rows"] = support.predict_batch(predictor, items)

rows = st.session_state.get("batch_rows")
if rows:
    failed = [r for r in rows if r["error"]]
    st.markdown(f"**{len(rows) - len(failed)}** of {len(rows)} rows predicted" +
                (f"; **{len(failed)}** could not be used (see the error column)." if failed else "."))
    counts = {}
    for row in rows:
        if row["label"]:
            counts[row["label"]] = counts.get(row["label"], 0) + 1
    if counts:
        st.caption("Predicted labels: " + json.dumps(counts))
    st.dataframe(rows, hide_index=True, key="batch_table")
    st.download_button("Download the predictions (CSV)", support.rows_to_csv(rows), file_name="clara_predictions.csv",
                       mime="text/csv", key="batch_download")
