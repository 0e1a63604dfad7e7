"""Checkpoints: how covidseg's trainers write them (atomically, once per content, with CRCs) and the one
way covidseg reads them (weights only, memory-mapped, CRCs checked, usable weights and preprocessing); a
classifier's operating point stored in its best.ckpt (store_operating_point, operating_point)."""

from covidseg.checkpoints._read import (
    OPERATING_POINT_KEY,
    TRUST_HINT,
    check_usable,
    load_mapped,
    load_module,
    operating_point,
    read_checkpoint,
    safe_loading,
)
from covidseg.checkpoints._write import AtomicCheckpointIO, store_operating_point

__all__ = [
    "OPERATING_POINT_KEY",
    "TRUST_HINT",
    "AtomicCheckpointIO",
    "check_usable",
    "load_mapped",
    "load_module",
    "operating_point",
    "read_checkpoint",
    "safe_loading",
    "store_operating_point",
]
