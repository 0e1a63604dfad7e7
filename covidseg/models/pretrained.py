"""Starting weights from a local file, for machines without internet: a timm backbone's
(`model.pretrained_file`) or a segmentation encoder's (`segmenter.encoder_weights_file`).

Files are read as timm reads pretrained files: `torch.load(weights_only=True)` (no code from the file runs),
or safetensors for `.safetensors`; a `state_dict` / `model` (or EMA) wrapper and DDP `module.` prefixes are
unwrapped; timm reads a classifier's file once more itself (`pretrained_cfg_overlay=dict(file=...)`).
The first convolution is adapted to the model's input channels (one for X-rays: the sum over the file's
RGB channels, timm's `adapt_input_conv`).
"""

from __future__ import annotations

import argparse
import logging
import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import safetensors.torch
import timm.models
import torch
from torch import nn

from covidseg.errors import UserError

log = logging.getLogger(__name__)

FORMATS = ".pth, .pt, .bin or .safetensors"
SHOWN = 6  # key names quoted in a message


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:200]


def _keys(names: Iterable[str]) -> str:
    names = sorted(names)
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def weights_path(path: str | Path, option: str) -> Path:
    """The file `option` names, or a UserError saying what to give instead."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(
            f"{option}={path}: no such file. Give a weights file ({FORMATS}) downloaded elsewhere, "
            f"or {option}=null."
        )
    return file


def read_weights(path: str | Path, option: str) -> dict[str, torch.Tensor]:
    """The state dict in a weights file, on CPU, loaded without running code from it; unwrapped as timm
    unwraps pretrained files (EMA weights first, then `state_dict` or `model`; no DDP/compile prefixes)."""
    file = weights_path(path, option)
    hint = f"Give a state dict saved with torch.save or safetensors ({FORMATS})."
    try:
        if file.suffix == ".safetensors":
            state = safetensors.torch.load_file(str(file), device="cpu")
        else:
            # argparse.Namespace: timm's training checkpoints keep their arguments in one; timm allows it
            # too. It only holds attributes, so rebuilding it runs no code.
            with torch.serialization.safe_globals([argparse.Namespace]):
                state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = re.search(r"GLOBAL (\S+)", str(err))
        if refused:
            raise UserError(
                f"{option}={file} contains Python objects covidseg will not unpickle ({refused.group(1)}): "
                f"it is not a plain weights file, or was tampered with. {hint}"
            ) from err
        raise UserError(f"{option}={file} is not a weights file ({_one_line(err)}). {hint}") from err
    except Exception as err:  # torch's and safetensors' readers fail in many ways on foreign bytes
        raise UserError(
            f"{option}={file} is not a weights file ({type(err).__name__}: {_one_line(err)}). {hint}"
        ) from err
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not (
        isinstance(state, Mapping) and state and all(isinstance(v, torch.Tensor) for v in state.values())
    ):
        raise UserError(f"{option}={file} holds no state dict of tensors ({type(state).__name__}). {hint}")
    return {_unprefixed(k): v for k, v in state.items()}


def _unprefixed(name: str) -> str:
    for prefix in ("module.", "_orig_mod."):  # DDP and torch.compile wrappers
        while name.startswith(prefix):
            name = name[len(prefix) :]
    return name


def check_overlap(
    own: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    option: str,
    ignore: Iterable[str] = (),
) -> tuple[list[str], list[str]]:
    """(missing, unexpected) weight names of a load from `state` into a model whose state dict is `own`.

    No name in common is a UserError (weights of another architecture); otherwise what does not match is
    logged, because the missing weights keep their random start.

    Args:
        own: the model's state dict.
        state: the weights file's state dict.
        option: the config key of the file, named in messages.
        ignore: name prefixes left out of both lists (a classification head that is replaced anyway).

    Raises:
        UserError: no weight name in common.
    """
    prefixes = tuple(ignore)
    missing = sorted(k for k in own if k not in state and not (prefixes and k.startswith(prefixes)))
    unexpected = sorted(k for k in state if k not in own and not (prefixes and k.startswith(prefixes)))
    if not set(own) & set(state):
        raise UserError(
            f"{option}: none of the file's {len(state)} weights ({_keys(state)}) has a name of the model's "
            f"({_keys(own)}). Give weights of the same architecture."
        )
    if missing:
        log.warning(
            "%s: %d weights keep their random start (not in the file): %s",
            option,
            len(missing),
            _keys(missing),
        )
    if unexpected:
        log.warning("%s: %d weights of the file are not used: %s", option, len(unexpected), _keys(unexpected))
    return missing, unexpected


def load_encoder_weights(encoder: nn.Module, path: str | Path, option: str) -> tuple[list[str], list[str]]:
    """Load a weights file into a segmentation encoder; returns (missing, unexpected) weight names.

    smp's own encoders use the torchvision/timm names of the backbone (conv1.weight, layer1.0...), its
    `tu-` encoders the same under `model.`; a file of either form (or a whole smp model's, `encoder.`)
    loads. A classification head in the file (e.g. a timm or torchvision ImageNet model's `fc`) is unused.
    """
    state = read_weights(path, option)
    own = encoder.state_dict()
    state = _match_prefix(state, own)
    for name, weight in list(state.items()):
        target = own.get(name)
        # Only the input channels differ: the first convolution of an RGB file in a 1-channel encoder.
        if (
            target is not None
            and weight.ndim == target.ndim == 4
            and weight.shape[1] != target.shape[1]
            and (weight.shape[0], *weight.shape[2:]) == (target.shape[0], *target.shape[2:])
        ):
            state[name] = timm.models.adapt_input_conv(
                target.shape[1], weight, base_chans=weight.shape[1]
            ).to(weight.dtype)
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    if wrong:
        raise UserError(
            f"{option}: {len(wrong)} weights have another shape than the encoder's ({', '.join(wrong[:3])}). "
            "Give weights of the same architecture as segmenter.encoder."
        )
    missing, unexpected = check_overlap(own, state, option)
    encoder.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return missing, unexpected


def _match_prefix(state: dict[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The file's names under the prefix that makes them the encoder's (none, `model.`, or without
    `encoder.`), whichever matches most."""
    candidates = [state, {f"model.{k}": v for k, v in state.items()}]
    if any(k.startswith("encoder.") for k in state):
        candidates.append({k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")})
    return max(candidates, key=lambda c: len(set(c) & set(own)))
