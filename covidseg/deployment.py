"""Trained networks as files that run without covidseg: ONNX and TorchScript, checked against PyTorch.

ONNX uses torch's torch.export-based exporter (`dynamo=True`; the TorchScript-based one is deprecated in
torch 2.9+), with a dynamic batch axis. TorchScript (`torch.jit.trace`) is for C++/LibTorch deployments;
torch marks it deprecated too, so ONNX is the format to prefer. Both hold the bare network: its input is the
normalised image batch and its output raw logits; covidseg.export_record says what to do before and after.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from covidseg.divergence import check_finite_outputs
from covidseg.errors import UserError

INPUT_NAME = "image"
# The exporter's helper libraries log every optimisation pass at INFO level.
QUIET_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx")
INSTALL_HINT = "Install the export extra: pip install 'covidseg[export]' (onnx, onnxscript, onnxruntime)."


def _example(size: int, batch: int, seed: int = 0) -> torch.Tensor:
    """A normalised-looking batch (standard normal) of one-channel square images."""
    return torch.randn(batch, 1, size, size, generator=torch.Generator().manual_seed(seed))


def export_onnx(net: nn.Module, size: int, path: Path, output_name: str) -> int:
    """`net` (eval mode, CPU) as an ONNX file with input `image` (batch, 1, size, size) and one output;
    the batch axis is dynamic. Returns the ONNX opset used."""
    try:
        import onnx  # noqa: F401  (the exporter needs onnx and onnxscript; say so before it fails deep inside)
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise UserError(f"ONNX export needs {err.name}. {INSTALL_HINT}") from err
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        program = torch.onnx.export(
            net,
            (_example(size, 2),),
            input_names=[INPUT_NAME],
            output_names=[output_name],
            dynamic_shapes=({0: batch},),
            dynamo=True,
            external_data=False,  # one self-contained file (covidseg's networks are far below 2 GB)
            verbose=False,
        )
    program.save(str(path))
    return int(program.model.opset_imports[""])


def export_torchscript(net: nn.Module, size: int, path: Path) -> None:
    """`net` traced into a TorchScript file (same input and output as the ONNX file)."""
    with warnings.catch_warnings(), torch.no_grad():
        # torch >= 2.9 marks torch.jit deprecated; the traced file still loads in LibTorch and torch.jit.load.
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit.*")
        traced = torch.jit.trace(net, _example(size, 2))
        traced.save(str(path))


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit.*")
        return torch.jit.load(str(path), map_location="cpu")


def onnx_session(path: str | Path) -> Any:
    """An onnxruntime CPU session for an exported file."""
    try:
        import onnxruntime
    except ImportError as err:
        raise UserError(f"Checking the ONNX files needs onnxruntime. {INSTALL_HINT}") from err
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run_onnx(session: Any, batch: np.ndarray | torch.Tensor) -> np.ndarray:
    """The exported network's output for one normalised float32 batch (N, 1, H, W)."""
    array = batch.numpy() if isinstance(batch, torch.Tensor) else batch
    return session.run(None, {INPUT_NAME: np.ascontiguousarray(array, dtype=np.float32)})[0]


def largest_differences(
    net: nn.Module, onnx_file: Path, torchscript_file: Path, size: int, batches: Sequence[int] = (1, 3)
) -> dict[str, float]:
    """Largest absolute difference between PyTorch's output and each exported file's, on random batches of
    the given sizes (other sizes than the one exported with: the batch axis must really be dynamic)."""
    session, scripted = onnx_session(onnx_file), load_torchscript(torchscript_file)
    onnx_diff = script_diff = 0.0
    with torch.no_grad():
        for seed, n in enumerate(batches, start=1):
            x = _example(size, n, seed)
            expected = net(x)
            check_finite_outputs(expected, [], "The network")  # NaN vs NaN would pass as no difference
            onnx_diff = max(onnx_diff, float(np.abs(run_onnx(session, x) - expected.numpy()).max()))
            script_diff = max(script_diff, float((scripted(x) - expected).abs().max()))
    return {"onnx_max_abs_diff": onnx_diff, "torchscript_max_abs_diff": script_diff}


def export_network(net: nn.Module, size: int, out_dir: Path, stem: str, output_name: str) -> dict[str, Any]:
    """ONNX and TorchScript files of one network, named <stem>.onnx and <stem>.torchscript.pt, and how
    closely they reproduce PyTorch (record for export_record)."""
    net = net.cpu().eval()
    onnx_file, script_file = out_dir / f"{stem}.onnx", out_dir / f"{stem}.torchscript.pt"
    opset = export_onnx(net, size, onnx_file, output_name)
    export_torchscript(net, size, script_file)
    return {
        "onnx": onnx_file.name,
        "torchscript": script_file.name,
        "onnx_opset": opset,
        "input": {"name": INPUT_NAME, "shape": ["batch", 1, size, size], "dtype": "float32"},
        "output_name": output_name,
        "checks": largest_differences(net, onnx_file, script_file, size),
    }
