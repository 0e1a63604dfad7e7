"""Checkpoints: how covidseg's trainers write them (atomically, once per content, with CRCs) and the one
way covidseg reads them (weights only, memory-mapped, CRCs checked, usable weights and preprocessing)."""

from covidseg.checkpoints._read import (
    TRUST_HINT,
    check_usable,
    load_mapped,
    load_module,
    read_checkpoint,
    safe_loading,
)
from covidseg.checkpoints._write import AtomicCheckpointIO

__all__ = [
    "TRUST_HINT",
    "AtomicCheckpointIO",
    "check_usable",
    "load_mapped",
    "load_module",
    "read_checkpoint",
    "safe_loading",
]
