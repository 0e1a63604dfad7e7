"""A trained model on images: testing with labels (evaluation.py), predicting without (prediction.py), and
the pictures both draw (overlays.py)."""
