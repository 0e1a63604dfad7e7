"""A trained classifier for use without covidseg: networks as ONNX / TorchScript (networks.py) and the
preprocessing record a deployer follows (record.py)."""
