"""One synthetic sweep and its report, built once for the summary, curve and HTML tests (no training).

One seed per model (single runs: Wilson intervals, no seed-level tests), an external set of one source (no
per-source table), and the cases the summary must warn about: densenet121 on raw input calls every image
normal (collapsed), resnet18 with the lungs removed still separates the classes (shortcut), resnet18
segmented ranks the external set backwards (does not carry over). Every job chose an operating point on
validation (metrics.json keys of issue 19: operating_point/*, <set>/op/*, <set>/sens@spec*)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from covidseg import stats
from covidseg.report import build_report
from tests.report.test_report import dataset, external_set, metrics_of, write_job

THRESHOLD = 0.4
MODELS = [
    ("resnet18", "raw"),
    ("resnet18", "segmented"),
    ("resnet18", "lungs_removed"),
    ("densenet121", "raw"),
]


def operating_point_metrics(pred: pd.DataFrame, prefix: str) -> dict[str, float]:
    """The issue-19 keys of one test set at THRESHOLD, as the jobs of the "ops" change write them."""
    y, p = pred["target"].to_numpy(), pred["prob_covid"].to_numpy()
    out = {
        f"{prefix}op/{m}": stats.BINARY_METRICS[m](y, p, THRESHOLD) for m in ("acc", "precision", "recall")
    }
    out[f"{prefix}op/specificity"] = stats.BINARY_METRICS["specificity"](y, p, THRESHOLD)
    out.update({f"{prefix}sens@spec0.90": 0.5, f"{prefix}sens@spec0.95": 0.4, f"{prefix}spec@sens0.90": 0.6})
    return out


def rewrite(job: Path, name: str | None, prob: np.ndarray) -> None:
    """Replace a job's predictions on a set (and its logged metrics) by the positive probabilities `prob`."""
    file = job / ("predictions.csv" if name is None else f"predictions_{name}.csv")
    pred = pd.read_csv(file).assign(prob_covid=prob, prob_normal=1 - prob)
    pred.to_csv(file, index=False)
    metrics = json.loads((job / "metrics.json").read_text())
    prefix = "test/" if name is None else f"external/{name}/"
    metrics.update({prefix + k: v for k, v in metrics_of(pred).items()})
    (job / "metrics.json").write_text(json.dumps(metrics))


def issue19_sweep(sweep: Path) -> Path:
    images = dataset()
    test = images[images["patient_id"].isin([f"pat{p}" for p in range(0, 45, 2)])]
    ext = external_set().assign(source="A")
    for index, (backbone, input_) in enumerate(MODELS):
        job = write_job(sweep, index, backbone, input_, 0, test, external={"ext": ext})
        if (backbone, input_) == ("densenet121", "raw"):
            rewrite(job, None, np.linspace(0.05, 0.45, len(test)))
            rewrite(job, "ext", np.linspace(0.05, 0.45, len(ext)))
        if (backbone, input_) == ("resnet18", "segmented"):
            rewrite(job, "ext", np.clip(0.5 - 0.4 * (2 * ext["target"].to_numpy() - 1), 0, 1) * 0.9 + 0.05)
        metrics = json.loads((job / "metrics.json").read_text())
        metrics.update(
            {
                "operating_point/rule": "youden",
                "operating_point/threshold": THRESHOLD,
                "operating_point/chosen_on": "val",
            }
        )
        metrics["val/auroc"] = 0.8
        metrics.update(operating_point_metrics(pd.read_csv(job / "predictions.csv"), "test/"))
        metrics.update(operating_point_metrics(pd.read_csv(job / "predictions_ext.csv"), "external/ext/"))
        (job / "metrics.json").write_text(json.dumps(metrics))
    return sweep


@pytest.fixture(scope="session")
def issue19_report(tmp_path_factory) -> Path:
    """The sweep folder of issue19_sweep after covidseg-report (200 resamples)."""
    sweep = issue19_sweep(tmp_path_factory.mktemp("issue19") / "sweep")
    build_report(sweep, n_boot=200)
    return sweep
