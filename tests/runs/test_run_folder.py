"""Run folders and their data: one job at a time in a folder, resume only on the first attempt's config and
data, and file-system faults (read-only, full, a file in the way) as one line and exit 2.

Tests run as root, which chmod does not stop: read-only and full folders are simulated in process with the
errors the kernel or SQLite give (monkeypatched), and for real with a path under a regular file.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import covidseg.data.file_index as file_index
import covidseg.data.store as store
import covidseg.runs.job as cli
from covidseg.data.datamodule import CXRDataModule
from covidseg.errors import UserError
from covidseg.runs.folder_lock import LOCK_FILE, RunFolderLock, RunFolders, _checked
from covidseg.runs.resume_plan import (
    RUN_RECORD_KEY,
    ResumeMismatch,
    check_same_data,
    data_differences,
    data_record,
    plan_resume,
)
from tests.conftest import REPO, kill_when_saved, make_dataset

HOLD = """
import sys
from covidseg.runs.folder_lock import RunFolderLock
with RunFolderLock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes stdin, or kills this process
"""


def _holder(folder: Path) -> subprocess.Popen:
    """Another process holding `folder`'s lock (as a running job does) until its stdin is closed."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert process.stdout.readline().strip() == "held"
    return process


def _end(process: subprocess.Popen) -> None:
    process.stdin.close()
    process.wait(timeout=30)


# -- the lock ------------------------------------------------------------------------------------------------
def test_a_second_job_in_a_held_folder_is_refused_naming_the_holder_and_keeps_its_hydra_files(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("model: first\n")
    holder = _holder(tmp_path)
    try:
        (tmp_path / ".hydra" / "config.yaml").write_text("model: second\n")  # what Hydra of job 2 does
        with pytest.raises(
            UserError, match=rf"run folder {tmp_path} is in use by another covidseg job"
        ) as err:
            RunFolderLock(tmp_path)
        assert f"pid {holder.pid} on " in str(err.value) and "started 20" in str(err.value)
        assert (tmp_path / ".hydra" / "config.yaml").read_text() == "model: first\n"
    finally:
        _end(holder)
    assert not (tmp_path / LOCK_FILE).exists()  # released and removed by the holder's clean end
    with RunFolderLock(tmp_path):
        pass


def test_run_job_exits_2_before_the_task_when_the_folder_is_held(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(cli, "run_dir", lambda: tmp_path)
    ran = []
    holder = _holder(tmp_path)
    try:
        with pytest.raises(SystemExit) as stop, caplog.at_level(logging.ERROR):
            cli.run_job(ran.append, OmegaConf.create({"seed": 0}))
    finally:
        _end(holder)
    assert stop.value.code == 2 and not ran
    assert f"{tmp_path} is in use by another covidseg job (pid {holder.pid}" in caplog.text
    assert cli.run_job(lambda cfg: "done", OmegaConf.create({"seed": 0})) == "done"  # free again
    assert not (tmp_path / LOCK_FILE).exists()


def test_the_lock_is_released_on_an_exception_and_refused_twice_in_one_process(tmp_path):
    with pytest.raises(RuntimeError), RunFolderLock(tmp_path):
        with pytest.raises(UserError, match="in use by another covidseg job"):
            RunFolderLock(tmp_path)
        raise RuntimeError("the job failed")
    assert not (tmp_path / LOCK_FILE).exists()
    with RunFolderLock(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()


@pytest.mark.parametrize(
    "sig, left", [(signal.SIGINT, False), (signal.SIGTERM, True), (signal.SIGKILL, True)]
)
def test_a_signalled_job_releases_the_lock_and_a_left_file_is_taken_over_with_a_warning(
    tmp_path, caplog, sig, left
):
    holder = _holder(tmp_path)
    holder.send_signal(sig)
    holder.wait(timeout=30)
    holder.stdin.close()
    assert (tmp_path / LOCK_FILE).exists() == left  # Ctrl-C unwinds; SIGTERM/SIGKILL end without cleaning up
    with caplog.at_level(logging.WARNING), RunFolderLock(tmp_path):
        pass
    taken_over = f"taking over the lock of the job that ran here before (pid {holder.pid} on "
    assert (taken_over in caplog.text) == left


def test_other_ranks_of_a_ddp_job_do_not_lock_the_folder_their_first_rank_holds(tmp_path, monkeypatch):
    with RunFolderLock(tmp_path):
        monkeypatch.setenv("LOCAL_RANK", "1")
        with RunFolderLock(tmp_path):
            pass
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_sweep_folder_is_held_for_the_whole_sweep(tmp_path, caplog):
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sweep")}}})
    first, second = RunFolders(), RunFolders()
    first.on_multirun_start(config)
    with pytest.raises(SystemExit) as stop, caplog.at_level(logging.ERROR):
        second.on_multirun_start(config)
    assert stop.value.code == 2 and f"sweep folder {tmp_path / 'sweep'} is in use" in caplog.text
    first.on_multirun_end(config)
    second.on_multirun_start(config)
    second.on_multirun_end(config)


# -- output folders that cannot be written -------------------------------------------------------------------
def _refuse_mkdir(monkeypatch, under: Path, code: int) -> None:
    real = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if Path(self).is_relative_to(under):
            raise OSError(code, os.strerror(code), str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)


def _stops(config, key: str, kind: str, caplog) -> str:
    with pytest.raises(SystemExit) as stop, caplog.at_level(logging.ERROR):
        _checked(config, key, kind)
    assert stop.value.code == 2
    return caplog.text


def test_a_read_only_covidseg_log_dir_names_it_and_the_fix(tmp_path, monkeypatch, caplog):
    logs = tmp_path / "logs"
    monkeypatch.setenv("COVIDSEG_LOG_DIR", str(logs))
    _refuse_mkdir(monkeypatch, logs, errno.EROFS)
    config = OmegaConf.create({"hydra": {"run": {"dir": "${oc.env:COVIDSEG_LOG_DIR}/train/runs/x"}}})
    text = _stops(config, "hydra.run.dir", "run folder", caplog)
    assert f"Cannot write the run folder {logs}/train/runs/x: it is on a read-only file system." in text
    assert f"set COVIDSEG_LOG_DIR (now {logs}) to a writable folder, or give hydra.run.dir=" in text


def test_a_full_sweep_folder_names_it_and_the_fix(tmp_path, monkeypatch, caplog):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sweep")}}})
    text = _stops(config, "hydra.sweep.dir", "sweep folder", caplog)
    assert f"sweep folder {tmp_path / 'sweep'}: no space left on its disk. Free space on that disk" in text
    assert not list((tmp_path / "sweep").iterdir())  # the probe file is removed


def test_a_disk_that_fills_up_during_a_job_ends_it_with_one_line(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(cli, "run_dir", lambda: tmp_path)

    def task(cfg):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "predictions.csv"))

    with pytest.raises(SystemExit) as stop, caplog.at_level(logging.ERROR):
        cli.run_job(task, OmegaConf.create({"seed": 0}))
    assert stop.value.code == 2
    assert f"Cannot use {tmp_path}/predictions.csv in {tmp_path}: no space left on its disk." in caplog.text

    def bug(cfg):
        raise OSError(errno.EBADF, "a bug, not the user's file system")

    with pytest.raises(OSError, match="a bug"):  # keeps its traceback
        cli.run_job(bug, OmegaConf.create({"seed": 0}))


# -- the image cache ----------------------------------------------------------------------------------------
def _datamodule(data: Path, cache: Path) -> CXRDataModule:
    return CXRDataModule(root=str(data), image_size=32, cache_dir=str(cache))


def _connect_with(monkeypatch, change) -> None:
    real = sqlite3.connect

    def connect(path, *args, **kwargs):
        return change(real, Path(path), args, kwargs)

    monkeypatch.setattr(file_index.sqlite3, "connect", connect)


def test_a_read_only_cache_folder_names_it_and_the_fix(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "d", {"normal": 20, "covid": 20})
    # SQLite's own refusal, as a read-only folder or file gives it: the databases opened read-only
    _connect_with(monkeypatch, lambda real, path, a, kw: real(f"file:{path}?mode=ro", *a, **kw, uri=True))
    with pytest.raises(
        UserError, match=rf"Cannot write the cache folder {tmp_path / 'cache'}: SQLite cannot"
    ):
        _datamodule(data, tmp_path / "cache").setup()


def test_a_full_cache_folder_names_it_and_the_fix(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "d", {"normal": 20, "covid": 20})

    def small(real, path, args, kwargs):  # SQLite's "database or disk is full" once the schema is written
        con = real(path, *args, **kwargs)
        con.execute(f"PRAGMA max_page_count={max(3, con.execute('PRAGMA page_count').fetchone()[0])}")
        return con

    _connect_with(monkeypatch, small)
    with pytest.raises(UserError, match=r"cache folder .*: SQLite: database or disk is full. Free space on"):
        _datamodule(data, tmp_path / "cache").setup()
    monkeypatch.undo()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store.os, "fdatasync", full)  # the decoded rows do not fit
    with pytest.raises(UserError, match=r"cache folder .*arrays/32: no space left on its disk. Free space"):
        _datamodule(data, tmp_path / "cache2").setup()


@pytest.mark.parametrize("blocked", ["run", "cache"])
def test_cli_a_folder_under_a_file_exits_2_naming_the_file(tmp_path, blocked, monkeypatch, cli_refused):
    (tmp_path / "file").write_text("not a folder")
    folders = {"run": tmp_path / "run", "cache": tmp_path / "cache", blocked: tmp_path / "file" / blocked}
    monkeypatch.setenv("COVIDSEG_CACHE_DIR", str(folders["cache"]))
    cli_refused(
        "covidseg-train",
        "debug=fast",
        f"hydra.run.dir={folders['run']}",
        expected=rf"Cannot write the {blocked} folder {tmp_path}/file/\w+: {tmp_path}/file is a file, not "
        r"a folder. Remove or rename that file, or (give hydra.run.dir|set COVIDSEG_CACHE_DIR)",
    )


# -- resume: the first attempt's data and config -------------------------------------------------------------
def _without_rows(data: Path, paths: list[str]) -> None:
    table = pd.read_csv(data / "metadata.csv", dtype=str)
    table[~table["path"].isin(paths)].to_csv(data / "metadata.csv", index=False)


def _set_up(data: Path, cache: Path) -> CXRDataModule:
    dm = _datamodule(data, cache)
    dm.setup()
    return dm


def test_data_differences_name_removed_images_and_the_split_they_change(tmp_path):
    data = make_dataset(tmp_path / "d", {"normal": 30, "covid": 30})
    first = data_record(_set_up(data, tmp_path / "c"))
    _without_rows(data, ["normal/0.png", "normal/1.png", "covid/2.png", "covid/3.png"])  # two patients
    differences = data_differences(first, data_record(_set_up(data, tmp_path / "c")))
    assert (
        differences[0]
        == "4 image(s) removed or left out (e.g. 'normal/0.png', 'normal/1.png', 'covid/2.png', ...)"
    )
    assert len(differences) == 2 and "image(s) with another split (e.g. '" in differences[1]
    assert " then, " in differences[1]


def test_data_differences_name_labels_content_and_order(tmp_path):
    data = make_dataset(tmp_path / "d", {"normal": 20, "covid": 20})
    first = data_record(_set_up(data, tmp_path / "c"))
    other_pixels = np.arange(32 * 32, dtype=np.uint8).reshape(32, 32)
    Image.fromarray(other_pixels).save(data / "covid/5.png")  # same name, other content
    assert data_differences(first, data_record(_set_up(data, tmp_path / "c"))) == [
        "1 image(s) with another content (SHA-1) (e.g. 'covid/5.png')"
    ]
    before = data_record(_set_up(data, tmp_path / "c"))
    table = pd.read_csv(data / "metadata.csv", dtype=str)
    table.iloc[::-1].to_csv(data / "metadata.csv", index=False)  # the split does not depend on the order
    reordered = data_record(_set_up(data, tmp_path / "c"))
    assert data_differences(before, reordered) == [
        "the same images in another order (the batches would differ)"
    ]
    assert data_differences(before, {**before, "segmenter": "ab12"}) == [
        "the segmenter checkpoint (SHA-1 None then, ab12 now): the lung masks would differ"
    ]
    relabelled = {**before, "label": ["normal"] * len(before["label"])}
    assert data_differences(before, relabelled) == [
        "20 image(s) with another label (e.g. 'covid/0.png': covid then, normal now)"
    ]


def _checkpoint(path: Path, config: dict, data: dict | None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "epoch": 1, RUN_RECORD_KEY: {"config": config, "data": data}}, path)
    return path


def test_resume_on_changed_data_stops_naming_the_change(tmp_path):
    data = make_dataset(tmp_path / "d", {"normal": 30, "covid": 30})
    last = _checkpoint(tmp_path / "last.ckpt", {}, data_record(_set_up(data, tmp_path / "c")))
    check_same_data(last, _set_up(data, tmp_path / "c"))  # the same data: goes on
    _without_rows(data, ["normal/0.png", "normal/1.png", "covid/2.png", "covid/3.png"])
    with pytest.raises(UserError) as err:
        check_same_data(last, _set_up(data, tmp_path / "c"))
    message = str(err.value)
    assert message.startswith(
        f"resume=true: the data in {data} changed since the first attempt wrote {last}: "
    )
    assert "4 image(s) removed or left out" in message and "image(s) with another split" in message
    assert message.endswith(
        "Start a new run (without resume=true) in another hydra.run.dir / hydra.sweep.dir, "
        "or restore the data as they were."
    )


def test_resume_of_a_checkpoint_another_run_wrote_in_the_folder_stops_naming_the_settings(tmp_path, caplog):
    """Two runs started in one folder: config_resolved.yaml is the second's, last.ckpt the first's."""
    second = {
        "resume": True,
        "seed": 0,
        "data": {"classes": ["normal", "pneumonia"]},
        "callbacks": {"model_checkpoint": {"dirpath": str(tmp_path / "checkpoints")}},
    }
    first = {**second, "resume": False, "data": {"classes": ["normal", "covid"]}}
    (tmp_path / "config_resolved.yaml").write_text(OmegaConf.to_yaml({**second, "resume": False}))
    _checkpoint(tmp_path / "checkpoints" / "last.ckpt", first, None)
    cfg = OmegaConf.create(second)
    with pytest.raises(
        UserError,
        match=r"last.ckpt was written by a run with other settings than this job's: "
        r'data.classes: \["normal", "covid"\] then, \["normal", "pneumonia"\] now. It is not',
    ):
        plan_resume(cfg, tmp_path, tmp_path / "config_resolved.yaml", sweep_job=False)
    _checkpoint(tmp_path / "checkpoints" / "last.ckpt", {**second, "resume": False}, None)
    plan = plan_resume(cfg, tmp_path, tmp_path / "config_resolved.yaml", sweep_job=False)
    assert plan.checkpoint == tmp_path / "checkpoints" / "last.ckpt"
    torch.save({"state_dict": {}, "epoch": 1}, tmp_path / "checkpoints" / "last.ckpt")  # an older covidseg's
    with caplog.at_level(logging.WARNING):
        plan_resume(cfg, tmp_path, tmp_path / "config_resolved.yaml", sweep_job=False)
    assert "last.ckpt records no config (written before covidseg recorded one): not checked." in caplog.text


def test_a_sweep_job_on_changed_data_stops_the_sweep_another_user_error_fails_the_job(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "run_dir", lambda: tmp_path)
    monkeypatch.setattr(cli, "in_multirun", lambda: True)

    def fails(error):
        def task(cfg):
            raise error

        return task

    with pytest.raises(SystemExit) as stop:
        cli.run_job(fails(ResumeMismatch("resume=true: the data changed")), OmegaConf.create({"seed": 0}))
    assert stop.value.code == 2 and not (tmp_path / "failed.json").exists()
    assert cli.run_job(fails(UserError("a bad image")), OmegaConf.create({"seed": 0})) is None
    assert "a bad image" in json.loads((tmp_path / "failed.json").read_text())["error"]


@pytest.mark.slow
def test_cli_a_killed_run_resumed_on_four_rows_less_stops_then_resumes_on_the_restored_file(
    tmp_path, cli_refused, cli
):

    data = make_dataset(tmp_path / "d", {"normal": 30, "covid": 30})
    run = tmp_path / "run"
    args = [
        f"data.root={data}",
        "data.image_size=32",
        "logger=none",
        "callbacks=none",
        "trainer.max_epochs=4",
        f"hydra.run.dir={run}",
    ]
    kill_when_saved(args, run / "checkpoints" / "last.ckpt", 0)
    assert (run / LOCK_FILE).is_file()  # SIGKILL: no clean-up
    kept = (data / "metadata.csv").read_text()
    _without_rows(data, ["normal/0.png", "normal/1.png", "covid/2.png", "covid/3.png"])
    splits = (run / "splits.csv").read_text()
    output = cli_refused(
        "covidseg-train",
        *args,
        "resume=true",
        expected=r"resume=true: the data in .* changed since the first attempt wrote .*last.ckpt: "
        r"4 image\(s\) removed or left out .*image\(s\) with another split",
    )
    assert "taking over the lock of the job that ran here before" in output
    assert (run / "splits.csv").read_text() == splits and not (run / LOCK_FILE).exists()
    (data / "metadata.csv").write_text(kept)
    cli("covidseg-train", *args, "resume=true")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs_run"] == 4 and metrics["resumed_at_epoch"] >= 1
    assert (run / "splits.csv").read_text() == splits
