"""The Streamlit dashboard's own package: session state and the cached model (`state`), shared
page elements (`widgets`), tables for display (`tables`) and the bundled examples (`gallery`).
The pages in pages/ lay these out over the clara library; nothing here trains or scores."""
