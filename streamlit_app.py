"""clara dashboard entry point: `streamlit run streamlit_app.py`."""
import streamlit as st

st.set_page_config(page_title="clara", layout="wide")
st.title("clara — multimodal sentiment analysis")
st.info("The dashboard pages are being built; see README.md.")
