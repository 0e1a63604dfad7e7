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

import pytest
from omegaconf import OmegaConf

import covidseg.cli as cli
import covidseg.data.file_index as file_index
import covidseg.data.store as store
from covidseg.data.datamodule import CXRDataModule
from covidseg.errors import UserError
from covidseg.run_folder import LOCK_FILE, RunFolderLock, RunFolders, _checked
from tests.conftest import REPO, make_dataset, run_cli_refused

HOLD = """
import sys
from covidseg.run_folder import RunFolderLock
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


@pytest.mark.parametrize("option", ["hydra.run.dir", "COVIDSEG_CACHE_DIR"])
def test_cli_a_folder_under_a_file_exits_2_naming_the_file(tmp_path, option, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    run = tmp_path / "run"
    if option == "hydra.run.dir":
        run = tmp_path / "file" / "run"
    else:
        monkeypatch.setenv("COVIDSEG_CACHE_DIR", str(tmp_path / "file" / "cache"))
    data = make_dataset(tmp_path / "d", {"normal": 20, "covid": 20})
    run_cli_refused(
        "covidseg-train",
        f"data.root={data}",
        "debug=fast",
        "logger=none",
        "data.image_size=32",
        f"hydra.run.dir={run}",
        expected=rf"Cannot write the (run|cache) folder {tmp_path}/file/\w+: {tmp_path}/file is a file, not "
        r"a folder. Remove or rename that file, or (give hydra.run.dir|set COVIDSEG_CACHE_DIR)",
    )
