"""Home: what the app does, the checkpoint picker shared by every page, and the device in use."""
from pathlib import Path

import streamlit as st

from clara_app import state, tables, widgets

PICKER = "checkpoint_picker"  # this page's select box; state.CHECKPOINT is what every page reads

st.title("clara — multimodal sentiment analysis")
st.markdown(
    "CLARA classifies a post made of an **image and a text** (a tweet, a meme) with a CLIP vision encoder, "
    "a DeBERTa-v3 text encoder and token-level co-attention between them. This dashboard lets you:\n"
    "- **Predict**: upload an image (or try a bundled example), type or OCR its text, and see the label, "
    "the probabilities and what each head and each modality alone says;\n"
    "- **Attention** and **Attributions**: see which words and image regions the decision rests on;\n"
    "- **Metrics** and **Errors**: compare test results across datasets with the published numbers and "
    "browse the misclassified test posts;\n"
    "- **Batch**: predict a whole CSV of posts and download the results.")

st.header("Checkpoint")
entries = state.list_checkpoints()
if not entries:
    st.warning(f"No checkpoint under {state.checkpoints_dir()}. Rebuild the demo one with "
               f"`python scripts/make_demo_checkpoint.py`, or train one with `{state.TRAIN_COMMAND}`.")
    st.stop()

widgets.table(tables.checkpoints_table(entries), key="checkpoints_table",
              column_config={m: st.column_config.NumberColumn(m, format="%.2f %%") for m in tables.HEADLINE_METRICS})
usable = [e for e in entries if e.usable]
by_path = {str(e.path): e for e in usable}
current = st.session_state.get(state.CHECKPOINT)
if usable:
    options = list(by_path)
    if st.session_state.get(PICKER) not in options:
        st.session_state[PICKER] = current if current in by_path else options[0]

    def _use_picked() -> None:
        st.session_state[state.CHECKPOINT] = st.session_state[PICKER]

    st.selectbox("Checkpoint used by every page", options, key=PICKER,
                 format_func=lambda p: tables.checkpoint_choice(by_path[p]), on_change=_use_picked)
    _use_picked()  # also when the stored checkpoint was not usable and the picker fell back
else:
    st.error("None of the checkpoint folders can be used; the table says why.")
    st.stop()
st.caption("Metrics are in percent. `test` means the test split of the run that trained the checkpoint; "
           "`val` means only the validation metrics the checkpoint was selected on are known. `data` says what "
           "training recorded about its data: `synthetic` (generated posts: not a sentiment model), `real` "
           "(a data folder), or `not recorded`.")

entry = by_path[st.session_state[PICKER]]
# Home reads only the checkpoints' JSON files and imports no PyTorch; the first page that predicts loads
# the model (cached from then on), so Home draws in about a second (docs/BENCHMARKS.md, "Dashboard").
st.markdown(state.device_line())
left, right = st.columns(2)
left.markdown(f"**Dataset:** {entry.dataset} · **protocol:** {entry.protocol}  \n"
              f"**Labels:** {', '.join(entry.labels)}  \n**Encoders:** {entry.encoders} · **fusion:** {entry.fusion}")
right.markdown(f"**Folder:** `{Path(entry.path).resolve()}`  \n**Created:** {tables.format_date(entry.created)}  \n"
               f"**Source:** {tables.SOURCE_NAMES.get(entry.source, entry.source)}  \n"
               f"**Training data:** {tables.training_data(entry)}")

st.header("Train a real model")
st.markdown(
    "Download a dataset (MVSA-Single, MVSA-Multiple or the Twitter sarcasm set HFM) in its original layout, "
    "then run, for example:")
st.code(state.TRAIN_COMMAND, language="bash")
st.markdown("The best epoch lands in `checkpoints/clara_mvsa_single_best/` and its test results in "
            "`results/mvsa_single/`; both appear here (and on the Metrics and Errors pages) without a restart.")
