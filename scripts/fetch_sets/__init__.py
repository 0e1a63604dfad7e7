"""The pieces of ``scripts/fetch_data.py``: downloads and image conversion (``common``, ``convert``) and
one module per data set it builds. Standalone like the script: standard library, pandas and pillow only."""
