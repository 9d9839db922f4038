"""Batch: a CSV of posts (image + text per row; images in an uploaded ZIP or, where the operator
allows it, a folder on the server) -> a predictions table and a CSV download, both in clara's one
predictions dialect (clara.batch), scored by the library's one batch path (clara.scoring_jobs)
with a progress bar. Rows that cannot be used keep their full error message."""
import os
from collections import Counter

import pandas as pd
import streamlit as st

from clara import batch, inputs, scoring_jobs
from clara_app import state
from clara_app.gallery import batch_rows, load_examples

# This page's session keys.
CSV_UPLOAD, ZIP_UPLOAD, IMAGES_DIR = "batch_csv", "batch_zip", "batch_images_dir"  # widgets
RESULT = "batch_result"  # {"labels", "rows"} of the last batch predicted
LIMITS = inputs.UPLOAD_LIMITS_MB
MAX_ERRORS_LISTED = 100  # failed rows listed with their full message below the table

st.title("Batch prediction")
st.markdown("Upload a **CSV** whose header names an image column (`image_path` or `image`) and a `text` column "
            "(`id` and a true `label` are optional), plus a **ZIP** holding the images (looked up by path, then by "
            f"file name; up to {batch.MAX_BATCH_ROWS:,} rows). The results come back in the same columns with "
            "`predicted`, one `prob_<label>` column per class, `uncertainty` and `error`. Millions of rows: "
            "`scripts/predict.py --input posts.parquet --out scores/` (resumable Parquet shards).")
predictor = state.get_predictor()
labels = list(predictor.labels)
roots = state.batch_roots()

csv_upload = st.file_uploader(f"CSV of posts (up to {LIMITS['csv']} MB)", type=["csv", "tsv", "txt"], key=CSV_UPLOAD,
                              max_upload_size=LIMITS["csv"])
zip_upload = st.file_uploader(f"ZIP of images (optional, up to {LIMITS['zip']} MB)", type=["zip"], key=ZIP_UPLOAD,
                              max_upload_size=LIMITS["zip"])
images_dir = None
if roots:
    images_dir = st.text_input(f"…or a folder holding the images, inside {' or '.join(map(str, roots))} (optional)",
                               key=IMAGES_DIR).strip() or None
else:
    st.caption("Reading images from a folder on the server is off. To allow it, whoever starts the app lists the "
               f"folders it may read in the environment variable `{state.BATCH_ROOTS_ENV}` (separated by "
               f"`{os.pathsep}`).")
c1, c2 = st.columns(2)
run_upload = c1.button("Predict the CSV", type="primary", key="batch_predict")
run_examples = c2.button("Try it on the bundled examples", key="batch_examples")

examples = load_examples(state.EXAMPLES_DIR)
sample_csv = batch.predictions_csv(batch_rows(examples), labels=[]).encode("utf-8")
if examples:
    st.download_button("Download an example CSV (images: the examples/ folder)", sample_csv,
                       file_name="clara_batch_example.csv", mime="text/csv", key="batch_template")

request = None
if run_examples:  # the app's own examples folder, not one the user named
    request = (sample_csv, None, state.EXAMPLES_DIR)
elif run_upload:
    if csv_upload is None:
        st.warning("Upload a CSV first.")
    else:
        try:
            request = (inputs.check_upload_size("csv", csv_upload.getvalue()),
                       inputs.check_upload_size("zip", zip_upload.getvalue()) if zip_upload is not None else None,
                       inputs.allowed_folder(images_dir, roots) if images_dir else None)
        except inputs.InputError as exc:
            st.error(str(exc))

if request is not None:
    csv_data, zip_data, folder = request
    try:
        source = scoring_jobs.CsvSource(data=csv_data)
        if source.num_rows > batch.MAX_BATCH_ROWS:
            raise inputs.InputError(f"The CSV has more than {batch.MAX_BATCH_ROWS:,} rows; split it into smaller "
                                    "files, or score it with scripts/predict.py --input.")
        images = inputs.BatchImages(zip_data, folder)
    except inputs.InputError as exc:
        st.error(str(exc))
    else:
        bar = st.progress(0.0, text=f"Predicting {source.num_rows:,} row(s)…")

        def show_progress(done: int, total: int) -> None:
            bar.progress(done / total, text=f"Predicted {done:,} of {total:,} row(s)")

        rows = list(scoring_jobs.score_source(source, predictor, images, allow_empty_text=False,
                                              progress=show_progress))
        bar.empty()
        st.session_state[RESULT] = {"labels": labels, "rows": rows, "skipped": source.skipped}

result = st.session_state.get(RESULT)
if result:
    rows = result["rows"]
    failed = [r for r in rows if r["error"]]
    st.markdown(f"**{len(rows) - len(failed)}** of {len(rows)} rows predicted" +
                (f"; **{len(failed)}** could not be used (listed below the table)." if failed else "."))
    if result["skipped"].count:
        st.warning(f"{result['skipped'].count} line(s) of the CSV have a different number of fields than its header "
                   "and were left out, e.g. " + "; ".join(result["skipped"].examples))
    counts = batch.label_counts(rows)
    if counts:
        st.caption("Predicted labels: " + ", ".join(f"{label} {n}" for label, n in counts.items()))
    shown = batch.prediction_columns(result["labels"], batch.BATCH_COLUMNS)
    st.dataframe(pd.DataFrame(rows, columns=shown), hide_index=True, key="batch_table", placeholder="",
                 column_config={"error": st.column_config.TextColumn("error", width="large")})
    if failed:
        reasons = Counter(r.get("error_kind") or "other" for r in failed)
        st.markdown("**Rows that could not be used** (" + ", ".join(f"{n} {kind}" for kind, n in reasons.most_common())
                    + "):")
        st.table(pd.DataFrame([{"id": r["id"], "why": r["error"]} for r in failed[:MAX_ERRORS_LISTED]]))
        if len(failed) > MAX_ERRORS_LISTED:
            st.caption(f"… and {len(failed) - MAX_ERRORS_LISTED:,} more: every error is in the CSV download.")
    st.download_button("Download the predictions (CSV)",
                       batch.predictions_csv(rows, result["labels"], batch.BATCH_COLUMNS).encode("utf-8"),
                       file_name="clara_predictions.csv", mime="text/csv", key="batch_download")
