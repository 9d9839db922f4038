"""clara dashboard entry point: `streamlit run streamlit_app.py`.

Sets up the page, the session state shared by the pages (the checkpoint picked on Home) and the
navigation; each page in pages/ lays out clara_app and the clara library. Home and the sidebar import
no PyTorch, so the first visit after a server start draws at once (docs/BENCHMARKS.md, "Dashboard").
"""
import sys

import streamlit as st

from clara_app import state, widgets

st.set_page_config(page_title="clara · multimodal sentiment", page_icon=":material/image_search:", layout="wide")
HOME = st.Page("pages/home.py", title="Home", icon=":material/home:", url_path="home", default=True)
PAGES = [
    HOME,
    st.Page("pages/predict.py", title="Predict", icon=":material/online_prediction:", url_path="predict"),
    st.Page("pages/attention.py", title="Attention", icon=":material/visibility:", url_path="attention"),
    st.Page("pages/attributions.py", title="Attributions", icon=":material/functions:", url_path="attributions"),
    st.Page("pages/metrics.py", title="Metrics", icon=":material/bar_chart:", url_path="metrics"),
    st.Page("pages/errors.py", title="Errors", icon=":material/search:", url_path="errors"),
    st.Page("pages/batch.py", title="Batch", icon=":material/table_view:", url_path="batch"),
]
navigation = st.navigation(PAGES)
state.init_state()

entry = state.current_entry()
widgets.sidebar(entry)
widgets.demo_banner(entry)
if "torch" in sys.modules or navigation is HOME:  # Home imports no PyTorch (tests/test_app_imports.py)
    navigation.run()
else:  # the first page after a server start that runs the model imports PyTorch and Transformers: say so
    with st.spinner("Loading… (the first page after a server start that runs the model also loads PyTorch and "
                    "Transformers)", show_time=True):
        navigation.run()
