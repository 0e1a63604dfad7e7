"""Data: dataset folders to manifests, patient splits, decoded images at rest, datasets and data modules."""
