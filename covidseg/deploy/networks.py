"""Trained networks as files that run without covidseg: ONNX and TorchScript, checked against PyTorch.

ONNX uses torch's torch.export-based exporter (`dynamo=True`; the TorchScript-based one is deprecated in
torch 2.9+), with a dynamic batch axis. TorchScript (`torch.jit.trace`) is for C++/LibTorch deployments;
torch marks it deprecated too, so ONNX is the format to prefer. Both hold the bare network: its input is the
normalised image batch and its output raw logits; covidseg.deploy.record says what to do before and after.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from covidseg.errors import UserError
from covidseg.models.divergence import check_finite_outputs

INPUT_NAME = "image"
# The exporter's helper libraries log every optimisation pass at INFO level.
QUIET_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx")
INSTALL_HINT = "Install the export extra: pip install 'covidseg[export]' (onnx, onnxscript, onnxruntime)."


def _example(size: int, batch: int, seed: int = 0) -> torch.Tensor:
    """A normalised-looking batch (standard normal) of one-channel square images."""
    return torch.randn(batch, 1, size, size, generator=torch.Generator().manual_seed(seed))


def export_onnx(net: nn.Module, size: int, output_name: str) -> tuple[bytes, int]:
    """`net` (eval mode, CPU) as the bytes of an ONNX file with input `image` (batch, 1, size, size) and one
    output; the batch axis is dynamic. Returns the bytes and the ONNX opset used."""
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
    # In memory, like the TorchScript file: the files reach the disk only through covidseg.outputs.
    return program.model_proto.SerializeToString(), int(program.model.opset_imports[""])


def with_metadata(onnx_model: bytes, props: dict[str, str]) -> bytes:
    """The ONNX file's bytes with `props` as its metadata_props (what onnxruntime's
    session.get_modelmeta().custom_metadata_map returns); the graph is unchanged."""
    import onnx

    model = onnx.load_from_string(onnx_model)
    onnx.helper.set_model_props(model, props)
    return model.SerializeToString()


def export_torchscript(net: nn.Module, size: int) -> bytes:
    """`net` traced into the bytes of a TorchScript file (same input and output as the ONNX file).

    Serialised into memory: torch.jit.save into a file on a full disk aborts the whole process (an
    uncaught C++ exception), with a truncated file left behind."""
    with warnings.catch_warnings(), torch.no_grad():
        # torch >= 2.9 marks torch.jit deprecated; the traced file still loads in LibTorch and torch.jit.load.
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit.*")
        traced = torch.jit.trace(net, _example(size, 2))
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
    return buffer.getvalue()


def load_torchscript(source: str | Path | bytes) -> torch.jit.ScriptModule:
    """A TorchScript network from its file or the file's bytes, on CPU."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit.*")
        where = io.BytesIO(source) if isinstance(source, bytes) else str(source)
        return torch.jit.load(where, map_location="cpu")


def onnx_session(source: str | Path | bytes) -> Any:
    """An onnxruntime CPU session for an exported file or the file's bytes."""
    try:
        import onnxruntime
    except ImportError as err:
        raise UserError(f"Checking the ONNX files needs onnxruntime. {INSTALL_HINT}") from err
    model = source if isinstance(source, bytes) else str(source)
    return onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])


def run_onnx(session: Any, batch: np.ndarray | torch.Tensor) -> np.ndarray:
    """The exported network's output for one normalised float32 batch (N, 1, H, W)."""
    array = batch.numpy() if isinstance(batch, torch.Tensor) else batch
    return session.run(None, {INPUT_NAME: np.ascontiguousarray(array, dtype=np.float32)})[0]


def largest_differences(
    net: nn.Module, onnx_model: bytes, torchscript: bytes, size: int, batches: Sequence[int] = (1, 3)
) -> dict[str, float]:
    """Largest absolute difference between PyTorch's output and each exported file's (its bytes), on random
    batches of the given sizes (other sizes than the one exported with: the batch axis must really be
    dynamic).

    Args:
        net: the network on the CPU, in eval mode.
        onnx_model: the ONNX file's bytes.
        torchscript: the TorchScript file's bytes.
        size: the input's side in pixels.
        batches: the batch sizes tried, one seeded random batch each.

    Returns:
        {"onnx_max_abs_diff": ..., "torchscript_max_abs_diff": ...} over all batches.

    Raises:
        UserError: PyTorch's own output is NaN or infinite (no difference would show it).
    """
    session, scripted = onnx_session(onnx_model), load_torchscript(torchscript)
    onnx_diff = script_diff = 0.0
    with torch.no_grad():
        for seed, n in enumerate(batches, start=1):
            x = _example(size, n, seed)
            expected = net(x)
            check_finite_outputs(expected, [], "The network")  # NaN vs NaN would pass as no difference
            onnx_diff = max(onnx_diff, float(np.abs(run_onnx(session, x) - expected.numpy()).max()))
            script_diff = max(script_diff, float((scripted(x) - expected).abs().max()))
    return {"onnx_max_abs_diff": onnx_diff, "torchscript_max_abs_diff": script_diff}


def export_network(
    net: nn.Module, size: int, stem: str, output_name: str
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """ONNX and TorchScript files of one network, named <stem>.onnx and <stem>.torchscript.pt, checked
    against PyTorch before anything is written.

    Args:
        net: the trained network; moved to the CPU and put in eval mode.
        size: the input's side in pixels (the batch axis stays dynamic).
        stem: the files' name without suffix (e.g. classifier, segmenter).
        output_name: the name of the ONNX output (e.g. logits).

    Returns:
        the record for export_record (file names, opset, input, output, the checks), and the files' bytes
        by name for covidseg.outputs.write_files.
    """
    net = net.cpu().eval()
    onnx_name, script_name = f"{stem}.onnx", f"{stem}.torchscript.pt"
    onnx_model, opset = export_onnx(net, size, output_name)
    torchscript = export_torchscript(net, size)
    record = {
        "onnx": onnx_name,
        "torchscript": script_name,
        "onnx_opset": opset,
        "input": {"name": INPUT_NAME, "shape": ["batch", 1, size, size], "dtype": "float32"},
        "output_name": output_name,
        "checks": largest_differences(net, onnx_model, torchscript, size),
    }
    return record, {onnx_name: onnx_model, script_name: torchscript}
