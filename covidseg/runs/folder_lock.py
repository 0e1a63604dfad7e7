"""Run folders: writable before a job starts, and used by one job at a time.

- `RunFolders` (a Hydra callback, conf/hydra/default.yaml) creates hydra.run.dir (hydra.sweep.dir for -m)
  and writes a probe file in it before Hydra does: a folder that is a file, read-only, full or not ours
  stops with one line naming it and the fix (exit 2) instead of Hydra's traceback. A sweep's folder is also
  locked for the whole sweep, so a second sweep launched into it stops before it overwrites multirun.yaml.
- `RunFolderLock` (covidseg.runs.job.run_job): while a job runs, its process holds a lock on
  `<folder>/LOCK_FILE`,
  which records the holder (pid, host, start time, command). A second job started in the same folder stops
  (exit 2) naming the holder: two jobs writing one folder would mix their checkpoints, splits and results,
  and a later resume=true would continue one run's last.ckpt under the other's config.

The lock is a POSIX record lock (fcntl.lockf), not flock: it belongs to the process, so children forked while
the job runs (data-loader workers, the decoding pool) do not keep it after the job is killed. The kernel
drops it when the holder ends, however it ends (exception, signal, kill -9); a clean end also removes the
file, so a file found unlocked was left by a job that was killed, and is taken over with a warning.
Rule of POSIX locks: closing any descriptor of the file drops the process's lock, so nothing else in the
holder may open LOCK_FILE.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import json
import logging
import os
import shlex
import socket
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from covidseg.errors import UserError
from covidseg.outputs import folder_faults, writable_folder

log = logging.getLogger(__name__)

LOCK_FILE = ".covidseg-job.lock"
HYDRA_RECORDS = ("config.yaml", "hydra.yaml", "overrides.yaml")  # what Hydra writes before any job code
# Environment variables of the processes of one multi-process (DDP) job: only its first process locks.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")
# Lock files this process holds: a second lock of one of them in the same process must be refused here, since
# POSIX locks do not conflict within a process (and closing the second descriptor would drop the first).
_HELD: dict[Path, dict[str, Any]] = {}


def first_process() -> bool:
    """False in the other ranks of a DDP job (they run in the folder their rank 0 holds)."""
    return all(os.environ.get(name, "0") == "0" for name in RANK_VARIABLES)


class RunFolderLock:
    """Hold `folder` for this process until release(); a UserError naming the holder if another process
    holds it. A context manager (released on exit, also on exceptions)."""

    def __init__(self, folder: str | Path, kind: str = "run folder"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.kind = kind
        self.fd: int | None = None
        if not first_process():
            return
        if self.path.absolute() in _HELD:
            self._refuse(_HELD[self.path.absolute()])
        with folder_faults(f"lock the {kind}", self.folder, "give this job another hydra.run.dir"):
            self.fd = self._acquire()
            try:
                record = self._take_over()
            except BaseException:
                os.close(self.fd)
                self.fd = None
                raise
        _HELD[self.path.absolute()] = record

    def _take_over(self) -> dict[str, Any]:
        """Record this process as the holder, warning about a holder that was killed."""
        previous = _read_record(self.fd)
        if previous:
            log.warning(
                "%s: taking over the lock of the job that ran here before (%s), which ended without "
                "releasing it (killed?).",
                self.folder,
                _holder(previous),
            )
        record = _record(self.folder)
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps(record).encode(), 0)
        return record

    def _acquire(self) -> int:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                holder = _read_record(fd) if err.errno in (errno.EACCES, errno.EAGAIN) else None
                os.close(fd)
                if holder is None:
                    raise
                self._refuse(holder)
            try:
                current = os.stat(self.path)
                mine = os.fstat(fd)
                if (current.st_ino, current.st_dev) == (mine.st_ino, mine.st_dev):
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)  # locked a file its holder removed as it ended: lock the one at the path now

    def _refuse(self, holder: dict[str, Any]) -> None:
        _restore_hydra_records(self.folder, holder.get("hydra") or {})
        raise UserError(
            f"The {self.kind} {self.folder} is in use by another covidseg job ({_holder(holder)}). Wait "
            "for it to end, or give this job another folder (hydra.run.dir=..., hydra.sweep.dir=... for -m)."
        )

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self.fd is None:
            return
        _HELD.pop(self.path.absolute(), None)
        try:
            self.path.unlink(missing_ok=True)  # first: whoever opens the path from now on gets a new file
        except OSError as err:
            log.warning("Could not remove %s (%s); the next job here takes it over.", self.path, err)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> RunFolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _record(folder: Path) -> dict[str, Any]:
    """Who holds the folder, and the .hydra files Hydra wrote for this job (see _restore_hydra_records)."""
    hydra = {}
    for name in HYDRA_RECORDS:
        with contextlib.suppress(OSError):  # a job without them (hydra.output_subdir=null)
            hydra[name] = (folder / ".hydra" / name).read_text()
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "hydra": hydra,
    }


def _read_record(fd: int) -> dict[str, Any] | None:
    """The holder recorded in an open lock file: {} if empty (none, or not written yet)."""
    raw = os.pread(fd, os.fstat(fd).st_size, 0)
    try:
        record = json.loads(raw) if raw.strip() else {}
    except ValueError:
        record = {}  # being written this instant
    return record if isinstance(record, dict) else {}


def _holder(record: dict[str, Any]) -> str:
    if not record.get("pid"):
        return "holder not recorded yet"
    return (
        f"pid {record['pid']} on {record.get('host', '?')}, started {record.get('started', '?')}: "
        f"{record.get('command', '?')}"
    )


def _restore_hydra_records(folder: Path, records: dict[str, str]) -> None:
    """Put back the holder's .hydra files: Hydra wrote this refused job's over them before any covidseg code
    ran, and covidseg-report reads a run's settings from .hydra/config.yaml."""
    for name, text in records.items():
        if name not in HYDRA_RECORDS:  # the record is a file anyone could write: only Hydra's three names
            continue
        target = folder / ".hydra" / name
        temporary = target.with_name(f".{name}.{os.getpid()}.tmp")
        try:
            temporary.write_text(text)
            os.replace(temporary, target)
        except OSError as err:
            log.warning("Could not restore %s of the job holding %s: %s", target, folder, err)


def log_dir_hint(folder: str | Path, option: str) -> str:
    """The way out for an unusable output folder: another `option`, or another COVIDSEG_LOG_DIR when the
    folder lies under it (the default run and sweep folders do)."""
    env = os.environ.get("COVIDSEG_LOG_DIR")
    if env and Path(folder).absolute().is_relative_to(Path(env).expanduser().absolute()):
        return f"set COVIDSEG_LOG_DIR (now {env}) to a writable folder, or give {option}=<a writable folder>"
    return f"give {option}=<a writable folder>"


class RunFolders(Callback):
    """Checks the run folder (hydra.run.dir) or the sweep folder (hydra.sweep.dir) before Hydra writes in
    it, and holds a sweep's folder for the whole sweep (module docstring)."""

    def __init__(self) -> None:
        self.sweep_lock: RunFolderLock | None = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig

        # What Hydra's run_job does first: the run folder's default interpolates ${hydra:runtime.cwd}.
        HydraConfig.instance().set_config(config)
        _checked(config, "hydra.run.dir", "run folder")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        folder = _checked(config, "hydra.sweep.dir", "sweep folder")
        if folder is None or not first_process():
            return
        try:
            self.sweep_lock = RunFolderLock(folder, kind="sweep folder")
        except UserError as err:
            log.error("%s", err)
            raise SystemExit(2) from None
        atexit.register(self.sweep_lock.release)  # also when the sweep ends with an error

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.sweep_lock is not None:
            self.sweep_lock.release()


def _checked(config: DictConfig, key: str, kind: str) -> Path | None:
    """The folder at `key`, created and probed (file_system.writable_folder); exit 2 if unusable. None if it
    does not resolve here: Hydra then reports that itself."""
    try:
        # ${now:...} is resolved once per config (Hydra caches it), so this is the folder Hydra will use
        folder = Path(OmegaConf.select(config, key, throw_on_missing=True)).absolute()
    except (OmegaConfBaseException, TypeError):
        return None
    try:
        writable_folder(folder, f"write the {kind}", log_dir_hint(folder, key))
    except UserError as err:
        log.error("%s", err)
        raise SystemExit(2) from None
    return folder
