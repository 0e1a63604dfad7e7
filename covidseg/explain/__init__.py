"""Where a classifier looks: Grad-CAM / Grad-CAM++ and lung energy (gradcam.py), and the arrays a training
job leaves for the report (job_arrays.py)."""
