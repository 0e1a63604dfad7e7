"""covidseg-export: a trained classifier (and, for segmented input, its segmenter) as ONNX and TorchScript.

Writes into its run directory (or out_dir): classifier.onnx, classifier.torchscript.pt, for segmented-input
checkpoints segmenter.onnx and segmenter.torchscript.pt, and preprocessing.json (what to do to an image
before the networks and with their outputs after, DICOM decoding and every threshold included;
covidseg.deploy.record). The ONNX files carry their classes, threshold, rule and intended use in their
metadata_props (covidseg.deploy.steps.onnx_metadata). Each exported file is checked
against PyTorch on random batches; the largest differences are in preprocessing.json under `checks`. The
files are written together, under temporary names renamed into place at the end (covidseg.outputs): a
failed export leaves the folder's previous files, or none, never half of one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from covidseg.data.images import file_digest
from covidseg.deploy.networks import export_network, with_metadata
from covidseg.deploy.record import build_record
from covidseg.deploy.steps import onnx_metadata
from covidseg.errors import UserError
from covidseg.masks import MaskSource, trained_mask_source
from covidseg.models.classifier import load_classifier
from covidseg.outputs import layout, other_folder, output_folder, write_files
from covidseg.runs.job import hydra_entry, run_dir

log = logging.getLogger(__name__)


def segmenter_masks(record: dict[str, Any], cache_dir: str, override: str | None) -> MaskSource | None:
    """The segmenter (and mask settings) a checkpoint was trained with, on CPU; None for raw input.
    `override` (segmenter.ckpt_path) replaces the recorded path, e.g. after moving the run folders; a
    missing segmenter, or one other than the recorded SHA-1, is refused."""
    masks = trained_mask_source(
        record.get("segmenter") or {}, cache_dir, record.get("input", "raw"), override
    )
    if masks is not None:
        masks.model.cpu().eval()
    return masks


def export(cfg: DictConfig) -> dict[str, Any]:
    """covidseg-export: a classifier checkpoint (and its segmenter, if it was trained on masks) as ONNX and
    TorchScript files with preprocessing.json, checked against PyTorch, written to cfg.out_dir together.

    Args:
        cfg: the export config (ckpt_path, out_dir, segmenter.ckpt_path, paths.cache_dir).

    Returns:
        {"out_dir": ..., "checks": the largest differences to PyTorch of each exported network}.

    Raises:
        UserError: the checkpoint records no data config, its segmenter is missing or another, or the
            folder cannot take the files.
    """
    ckpt = Path(cfg.ckpt_path)
    model = load_classifier(ckpt).eval()
    record = dict(model.hparams.data_config or {})
    if "image_size" not in record:
        raise UserError(
            f"{ckpt} records no data config (image size, normalisation, input mode), so its preprocessing "
            "is unknown. Export a checkpoint written by covidseg-train."
        )
    # Before any export: a missing segmenter or an unwritable folder must stop the job at once.
    masks = segmenter_masks(record, cfg.paths.cache_dir, cfg.segmenter.ckpt_path)
    fix = other_folder("out_dir")
    out_dir = output_folder(Path(cfg.out_dir) if cfg.out_dir else run_dir(), fix)
    size = int(record["image_size"])
    log.info("Exporting classifier %s (%s, %d px) to %s", ckpt, model.hparams.backbone, size, out_dir)
    classifier, files = export_network(model.net, size, "classifier", "logits")
    segmenter = None
    if masks is not None:
        log.info("Exporting segmenter %s (%d px)", masks.ckpt_path, masks.image_size)
        segmenter, segmenter_files = export_network(
            masks.model.net, masks.image_size, "segmenter", "lung_logits"
        )
        files.update(segmenter_files)
    content = build_record(model, ckpt, file_digest(ckpt), classifier, masks, segmenter)
    files[layout.PREPROCESSING] = json.dumps(content, indent=2).encode("utf-8")
    # Each ONNX file also says on its own what it is for and how to read its output.
    for name, part in (("classifier", classifier), ("segmenter", segmenter)):
        if part:
            files[part["onnx"]] = with_metadata(files[part["onnx"]], onnx_metadata(content, name))
    # All files of this export replace the folder's older ones together, or none does.
    write_files(out_dir, files, fix)
    checks = {
        name: part["checks"] for name, part in (("classifier", classifier), ("segmenter", segmenter)) if part
    }
    log.info("Largest differences to PyTorch on random batches: %s", checks)
    log.info("Wrote %s", out_dir / layout.PREPROCESSING)
    return {"out_dir": str(out_dir), "checks": checks}


main = hydra_entry("export", export)

if __name__ == "__main__":
    main()
