"""covidseg.explain.gradcam: lung energy by hand, automatic Grad-CAM layers for timm backbones, CAM maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch

from covidseg.explain.gradcam import cam_maps, find_target_layer, lung_energy, resolve_target_layer


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny CPU forwards: one intra-op thread avoids oversubscription on a busy machine (10-50x faster)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------- lung energy


def test_lung_energy_uniform_cam_half_mask():
    cam = np.ones((8, 8))
    mask = np.zeros((8, 8), dtype=bool)
    mask[:, :4] = True
    assert lung_energy(cam, mask) == pytest.approx(0.5)


def test_lung_energy_box_inside_mask():
    cam = np.zeros((16, 16))
    cam[5:9, 6:10] = 0.7
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[2:12, 3:13] = 1
    assert lung_energy(cam, mask) == pytest.approx(1.0)
    assert lung_energy(cam, 1 - mask) == pytest.approx(0.0)


def test_lung_energy_weighted_by_hand():
    cam = np.array([[1.0, 2.0], [3.0, 4.0]])
    mask = np.array([[1, 0], [0, 1]])
    assert lung_energy(cam, mask) == pytest.approx((1 + 4) / 10)


def test_lung_energy_errors_and_empty_cam():
    assert math.isnan(lung_energy(np.zeros((4, 4)), np.ones((4, 4))))
    with pytest.raises(ValueError, match="same shape"):
        lung_energy(np.ones((4, 4)), np.ones((8, 8)))


# --------------------------------------------------------------------------------------------- target layer

EXPECTED_PREFIX = {
    "resnet18": "layer4",
    "test_resnet": "layer4",  # debug=tiny's backbone
    "densenet121": "features",
    "mobilenetv3_small_100": "blocks",
    "efficientnet_b0": "",  # bn2 after conv_head: any module is fine as long as the output is a map
    "convnext_atto": "stages.3",
}


def _name_of(model: torch.nn.Module, layer: torch.nn.Module) -> str:
    return next(name for name, module in model.named_modules() if module is layer)


@pytest.mark.parametrize("backbone", list(EXPECTED_PREFIX))
def test_find_target_layer_timm(backbone):
    model = timm.create_model(backbone, pretrained=False, num_classes=1, in_chans=1)
    layer = find_target_layer(model)
    name = _name_of(model, layer)
    prefix = EXPECTED_PREFIX[backbone]
    assert name == prefix or name.startswith(prefix), name
    seen = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 1, 64, 64))
    handle.remove()
    assert len(seen[-1]) == 4 and seen[-1][-1] > 1 and seen[-1][-2] > 1
    assert layer not in set(model.get_classifier().modules())


def test_find_target_layer_known_names():
    resnet = timm.create_model("resnet18", pretrained=False, num_classes=1, in_chans=1)
    assert find_target_layer(resnet) is resnet.layer4
    assert resnet.training  # the scan leaves the train/eval mode alone


def test_resolve_target_layer_by_name_and_typo():
    model = timm.create_model("resnet18", pretrained=False, num_classes=1, in_chans=1)
    assert resolve_target_layer(model, "layer3.1") is model.layer3[1]
    assert resolve_target_layer(model, None) is model.layer4
    with pytest.raises(ValueError, match="layer4"):
        resolve_target_layer(model, "layr4")


# --------------------------------------------------------------------------------------------- CAM maps


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_cam_maps_binary_resnet18(method):
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=1, in_chans=1)
    maps = cam_maps(model, torch.randn(1, 1, 64, 64), target_class=1, method=method)
    assert maps.shape == (1, 64, 64)
    assert maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0.0 and maps.max() <= 1.0
    assert model.training


def test_cam_maps_multiclass_and_named_layer():
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=3, in_chans=1)
    maps = cam_maps(model, torch.randn(2, 1, 48, 48), target_class=None, target_layer="layer3")
    assert maps.shape == (2, 48, 48) and maps.min() >= 0.0 and maps.max() <= 1.0
    with pytest.raises(ValueError, match="outside"):
        cam_maps(model, torch.randn(1, 1, 48, 48), target_class=3)
    with pytest.raises(ValueError, match="Unknown CAM method"):
        cam_maps(model, torch.randn(1, 1, 48, 48), method="scorecam")


def test_job_cams_do_not_depend_on_how_many_images_a_pass_takes():
    """covidseg.explain.job_arrays runs Grad-CAM in passes of half a training batch (memory): every image's
    map,
    probability and lung energy are the same whatever the batch size."""
    from types import SimpleNamespace

    from covidseg.data.datasets import ArrayDataset
    from covidseg.explain.job_arrays import cam_batch, gallery_arrays, lung_energy_summary
    from covidseg.models.classifier import Classifier

    torch.manual_seed(0)
    model = Classifier(backbone="resnet18")
    head = model.net.get_classifier()  # every feature speaks for covid, which every image is predicted as:
    head.weight.data.abs_()  # the CAMs of an untrained network have something to show
    head.bias.data.fill_(5.0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 96, 96), dtype=np.uint8)  # layer4: 3 x 3, a CAM with structure
    lungs = np.zeros((6, 96, 96), dtype=np.uint8)
    lungs[:, 20:80, 10:45] = 1
    results = []
    for batch_size in (2, 32):
        dm = SimpleNamespace(
            datasets={"test": ArrayDataset(images, [0, 1, 0, 1, 0, 1])},
            mean=0.5,
            std=0.25,
            batch_size=batch_size,
        )
        gallery = gallery_arrays(
            model, dm, np.array(["normal", "covid"] * 3), lambda p: (images[p], lungs[p]), 4
        )
        energy = lung_energy_summary(model, dm, lambda picks: lungs[picks], max_images=6)
        results.append((cam_batch(dm), gallery, energy))
    (small, g2, e2), (large, g32, e32) = results
    assert (small, large) == (1, 16)
    for name in ("probs", "gradcam", "gradcam++", "seen", "picks"):
        np.testing.assert_allclose(g2[name], g32[name], atol=1e-5, err_msg=name)
    assert g2["gradcam"].any() and g2["gradcam"].std() > 0
    assert e2 == pytest.approx(e32) and e2["n_images"] > 0 and 0 < e2["lung_energy"] < 1
