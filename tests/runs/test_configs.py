"""Every option of every config group composes, and what it describes can be built."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import open_dict

from covidseg.paths import CONF_DIR, register_resolvers

register_resolvers()


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def compose_train(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def resolve_hydra(cfg, tmp_path: Path):
    """${hydra:runtime.output_dir} only exists inside a Hydra run; point it at tmp_path."""
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
        del cfg["hydra"]
    return cfg


@pytest.mark.parametrize("option", options("data"))
def test_data_options(option, tmp_path, covid_cxr):
    cfg = resolve_hydra(compose_train([f"data={option}"]), tmp_path)
    dm = instantiate(cfg.data)
    assert dm.root == covid_cxr and len(dm.classes) >= 2


@pytest.mark.parametrize("option", options("model"))
def test_model_options(option, tmp_path):
    cfg = resolve_hydra(compose_train([f"model={option}", "model.backbone=resnet18"]), tmp_path)
    model = instantiate(cfg.model, _convert_="all", class_names=["normal", "covid"])
    model.configure_optimizers()
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 1)


@pytest.mark.parametrize("option", options("trainer"))
def test_trainer_options(option, tmp_path):
    cfg = resolve_hydra(compose_train([f"trainer={option}"]), tmp_path)
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        pytest.skip("composes; building a GPU trainer needs a GPU")
    instantiate(cfg.trainer)


@pytest.mark.parametrize("group", ["callbacks", "logger"])
def test_callback_and_logger_options(group, tmp_path):
    for option in options(group):
        cfg = resolve_hydra(compose_train([f"{group}={option}"]), tmp_path)
        for name, node in (cfg[group] or {}).items():
            assert instantiate(node) is not None, (option, name)


@pytest.mark.parametrize("option", options("debug") + options("experiment"))
def test_debug_and_experiment_options(option, tmp_path):
    group = "debug" if option in options("debug") else "experiment"
    cfg = resolve_hydra(compose_train([f"{group}={option}"]), tmp_path)
    instantiate(cfg.data)
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        pytest.skip("composes; building a GPU trainer needs a GPU")
    instantiate(cfg.trainer)


def test_auto_accelerator_picks_gpu_when_present(tmp_path):
    cfg = resolve_hydra(compose_train([]), tmp_path)
    trainer = instantiate(cfg.trainer)
    expected = "CUDAAccelerator" if torch.cuda.is_available() else "CPUAccelerator"
    assert type(trainer.accelerator).__name__ == expected


def test_eval_config_composes():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("eval", overrides=["ckpt_path=x.ckpt"])
    assert cfg.data.split == "all"


@pytest.mark.parametrize("option", options("hydra/launcher"))
def test_launcher_options_compose(option):
    cfg = compose_train([f"hydra/launcher={option}"])
    assert "_target_" in cfg.hydra.launcher and "Launcher" in cfg.hydra.launcher._target_


def test_study_experiment_sweeps_backbones_inputs_and_seeds():
    cfg = compose_train(["experiment=compare"])
    params = cfg.hydra.sweeper.params
    assert len(params["model.backbone"].split(",")) == 3
    assert params["data.input"] == "raw,segmented" and len(params.seed.split(",")) >= 3
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
