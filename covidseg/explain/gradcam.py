"""Grad-CAM / Grad-CAM++ maps for any timm classifier, and how much of a map falls inside the lungs.

The question the report asks is whether a classifier looks at the lungs or at shortcuts outside them
(text markers, borders, devices). ``cam_maps`` gives the maps and ``lung_energy`` turns a map and a lung
mask into one number: the share of the map's mass inside the lungs.

The classifiers of this project output ONE logit for two classes (sigmoid; positive class = index 1,
covid) and one logit per class otherwise (softmax).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

CAM_METHODS = ("gradcam", "gradcam++")


# --------------------------------------------------------------------------------------------- target layer


def _input_channel_candidates(model: nn.Module) -> list[int]:
    """Channel counts to try for the dummy input: the first conv's, then timm's config, then 1 and 3."""
    found: list[int] = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            found.append(int(module.in_channels))
            break
    for attr in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(model, attr, None)
        if isinstance(cfg, dict) and cfg.get("input_size"):
            found.append(int(cfg["input_size"][0]))
    found += [1, 3]
    return list(dict.fromkeys(found))


def _input_size_candidates(model: nn.Module, input_size: int) -> list[tuple[int, int]]:
    """The small dummy size first (fast); then timm's configured size for fixed-size models (ViT, Swin)."""
    sizes = [(input_size, input_size)]
    for attr in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(model, attr, None)
        if isinstance(cfg, dict) and cfg.get("input_size") and len(cfg["input_size"]) == 3:
            sizes.append((int(cfg["input_size"][1]), int(cfg["input_size"][2])))
    return list(dict.fromkeys(sizes))


def _head_modules(model: nn.Module) -> set[int]:
    """ids of the classifier head's modules (never a Grad-CAM target)."""
    heads: set[int] = set()
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        try:
            head = get_classifier()
        except Exception:
            head = None
        if isinstance(head, nn.Module):
            heads.update(id(m) for m in head.modules())
    return heads


def _is_spatial(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.dim() == 4 and t.shape[-1] > 1 and t.shape[-2] > 1


def _scan(model: nn.Module, input_size: int) -> tuple[list[tuple[str, torch.Tensor]], Any, bool]:
    """Run forward_features (or forward) once on a dummy; (name, output) per module, in completion order."""
    heads = _head_modules(model)
    records: list[tuple[str, torch.Tensor]] = []
    run = getattr(model, "forward_features", None)
    has_features = callable(run)
    run = run if has_features else model

    def hook(name: str) -> Callable[..., None]:
        def _record(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            # Pass-through modules (Identity, in-place activations) return their input object: their name
            # adds nothing, the module that produced the tensor is recorded instead.
            if inputs and output is inputs[0]:
                return
            records.append((name, output))

        return _record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n and id(m) not in heads]
    was_training = model.training
    model.eval()
    errors: list[str] = []
    try:
        device = next(model.parameters()).device
        for size in _input_size_candidates(model, input_size):
            for chans in _input_channel_candidates(model):
                records.clear()
                try:
                    with torch.no_grad():
                        out = run(torch.zeros(1, chans, *size, device=device))
                    return list(records), out, has_features
                except Exception as exc:
                    errors.append(f"{(chans, *size)}: {type(exc).__name__}: {exc}")
        raise ValueError("Could not run the model on a dummy input: " + "; ".join(errors))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def find_target_layer(model: nn.Module, input_size: int = 64) -> nn.Module:
    """The layer Grad-CAM explains by default: the module producing the last spatial map before pooling.

    Rule: run ``model.forward_features`` (timm; plain ``forward`` for other models) once on a dummy
    ``(1, in_chans, input_size, input_size)`` input with forward hooks on every submodule outside the
    classifier head (``model.get_classifier()``). Among the modules whose output is 4-D ``(N, C, H, W)``
    with H, W > 1, take the one that finished last; pass-through modules (Identity, in-place activations)
    are skipped. That is the outermost module producing the map that global pooling reads, e.g. ``layer4``
    (ResNet), ``bn2`` (EfficientNet: after ``conv_head``), ``stages`` (ConvNeXt). If the last entry of
    timm's ``feature_info`` names a module that returned that very same tensor, its name is preferred
    (``stages.3``, ``features.norm5``, ``blocks.5``): the same activations, a more telling name.

    This is the map for which Grad-CAM matches CAM under a global-pool + linear head. Models without
    ``forward_features`` (e.g. torchvision) are scanned over their full forward; pooled 1x1 maps and the
    2-D head outputs drop out by the H, W > 1 rule. Token-based (ViT: 3-D) or channels-last (Swin) features
    raise ValueError; give those a layer name and a reshape_transform instead. ``in_chans`` comes from the
    first Conv2d, then timm's ``default_cfg``, then 1 and 3 are tried; fixed-size models get their
    configured input size when ``input_size`` fails.
    """
    records, features, has_features = _scan(model, input_size)
    if has_features and not _is_spatial(features):
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(
            f"The model's features are not a (N, C, H, W) map (got {shape}): token-based models "
            "such as ViT need "
            "an explicit target layer and a reshape_transform."
        )
    info = getattr(model, "feature_info", None)
    try:
        info_last = dict(info[-1]) if info is not None else {}  # list of dicts or timm FeatureInfo
    except Exception:
        info_last = {}
    chs = info_last.get("num_chs")
    if has_features and chs and features.shape[-1] == chs and features.shape[1] != chs:
        raise ValueError(
            f"The model's features are channels-last {tuple(features.shape)} (e.g. Swin): pass an "
            "explicit target "
            "layer and a reshape_transform that moves channels to dim 1."
        )
    spatial = [(name, out) for name, out in records if _is_spatial(out)]
    if not spatial:
        raise ValueError("No module outputs a (N, C, H, W) map with H, W > 1; pass a target layer by name.")
    name, out = spatial[-1]
    info_name = info_last.get("module")
    if info_name:
        same = [n for n, o in records if n == info_name and o is out]
        if same:
            name = info_name
    return model.get_submodule(name)


def resolve_target_layer(model: nn.Module, name: str | None) -> nn.Module:
    """A layer by its dotted name in ``model.named_modules()``, or the automatic choice when name is None.

    Unknown names raise ValueError with the closest names, since typos are the usual cause.
    """
    if name is None or name == "":
        return find_target_layer(model)
    modules = dict(model.named_modules())
    if name in modules and name:
        return modules[name]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.4)
    hint = (
        f" Close names: {close}."
        if close
        else f" Top-level names: {[n for n in names if '.' not in n][:10]}."
    )
    raise ValueError(f"The model has no module named {name!r}.{hint}")


# --------------------------------------------------------------------------------------------- CAM


def cam_maps(
    model: nn.Module,
    images: torch.Tensor,
    target_class: int | None = None,
    method: str = "gradcam",
    target_layer: nn.Module | str | None = None,
    binary: bool | None = None,
    reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> np.ndarray:
    """Grad-CAM (or Grad-CAM++) maps of a batch, (N, H, W) float32 in [0, 1] at the input resolution.

    Each map is min-max scaled per image by pytorch_grad_cam; an all-zero map (no positive evidence) stays 0.
    The model is put in eval mode for the computation and its train/eval mode is restored afterwards.

    Args:
        model: the classification network (logits out).
        images: a normalised (N, C, H, W) batch; moved to the model's device.
        target_class: the class to explain, the same for every image; None explains each image's predicted
            class.
        method: gradcam or gradcam++ (CAM_METHODS).
        target_layer: a module, a dotted name, or None for ``find_target_layer``.
        binary: the model has ONE logit for two classes (inferred from the output width when None); class 1
            (covid) explains the logit, class 0 its negation (pytorch_grad_cam's
            ``BinaryClassifierOutputTarget``). Otherwise the class's logit is explained.
        reshape_transform: turns a transformer layer's tokens into a (N, C, h, w) map; None for CNNs.

    Raises:
        ValueError: an unknown method or layer, images that are not a 4-D tensor, `binary` with more than
            one logit, or a `target_class` out of range.
    """
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget, ClassifierOutputTarget

    key = method.lower().replace("_", "").replace("-", "")
    cam_classes = {
        "gradcam": GradCAM,
        "gradcam++": GradCAMPlusPlus,
        "gradcamplusplus": GradCAMPlusPlus,
        "gradcampp": GradCAMPlusPlus,
    }
    if key not in cam_classes:
        raise ValueError(f"Unknown CAM method {method!r}; use one of {list(CAM_METHODS)}")
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(
            f"images must be a (N, C, H, W) tensor, got {getattr(images, 'shape', type(images))}"
        )

    layer = target_layer if isinstance(target_layer, nn.Module) else resolve_target_layer(model, target_layer)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    images = images.to(device)
    try:
        with torch.no_grad():
            logits = model(images)
        if logits.dim() == 1:
            logits = logits[:, None]
        n_out = int(logits.shape[1])
        if binary is None:
            binary = n_out == 1
        if binary and n_out != 1:
            raise ValueError(f"binary=True expects one output logit, the model has {n_out}")
        n_classes = 2 if binary else n_out
        if target_class is not None and not 0 <= int(target_class) < n_classes:
            raise ValueError(f"target_class={target_class} is outside 0..{n_classes - 1}")

        if binary:
            classes = (
                [int(target_class)] * len(images)
                if target_class is not None
                else (logits[:, 0] > 0).long().tolist()
            )
            targets = [BinaryClassifierOutputTarget(c) for c in classes]
        else:
            classes = (
                [int(target_class)] * len(images)
                if target_class is not None
                else logits.argmax(dim=1).tolist()
            )
            targets = [ClassifierOutputTarget(c) for c in classes]

        cam = cam_classes[key](model=model, target_layers=[layer], reshape_transform=reshape_transform)
        try:
            with torch.enable_grad():
                maps = cam(input_tensor=images, targets=targets)
        finally:
            cam.activations_and_grads.release()
    finally:
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    return np.clip(np.asarray(maps, dtype=np.float32), 0.0, 1.0)


def lung_energy(cam: np.ndarray, mask: np.ndarray) -> float:
    """Share of a CAM's total mass inside a binary lung mask (1.0: all attention on the lungs).

    ``cam`` and ``mask`` must have the same (H, W): resizing either would change the answer, so the caller
    decides how. Mask values > 0 (or True) count as lung. nan when the CAM sums to 0 (nothing to share).
    """
    c = np.asarray(cam, dtype=np.float64)
    m = np.asarray(mask)
    if c.shape != m.shape:
        raise ValueError(f"cam and mask must have the same shape, got {c.shape} and {m.shape}")
    if np.any(c < 0):
        raise ValueError("cam must be non-negative (Grad-CAM maps are, after their ReLU)")
    total = float(c.sum())
    if total == 0.0 or not np.isfinite(total):
        return float("nan")
    return float(c[m > 0].sum() / total)
