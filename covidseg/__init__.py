"""covidseg: lung segmentation + timm classification of chest X-rays (Lightning + Hydra)."""

__version__ = "0.1.0"
