#!/usr/bin/env bash
# The recipe comparison and lever tables of experiments/README.md, at the quick study's size (112 px,
# 8 epochs, 3 seeds): one Hydra sweep per setting, a covidseg-report for each, then
# experiments/lever_table.py over all of them.
#
#   experiments/levers.sh OUT_DIR [Hydra overrides for every job, e.g. segmenter.ckpt_path=...]
#
# Needs a trained segmenter (`make segmenter`). On 2 CPU cores this is many hours (about 90 jobs of
# 1-3 min); on a GPU machine run the jobs in parallel with
#   LAUNCHER="hydra/launcher=parallel hydra.launcher.n_jobs=2" PARALLEL_SWEEPS=1 experiments/levers.sh OUT_DIR
# SMOKE=1 runs three tiny sweeps only, to check the pipeline end to end.
set -uo pipefail
out=${1:?usage: experiments/levers.sh OUT_DIR [overrides]}
shift
PY=${PYTHON:-.venv/bin/python}
LAUNCHER=${LAUNCHER:-}
common=(experiment=compare_quick logger=csv "$@")
if [[ -n ${SMOKE:-} ]]; then
  common+=(data.limit=60 data.image_size=64 trainer.max_epochs=2)
fi
failed=0

pids=()

run_sweep() {  # run_sweep NAME OVERRIDES...: one multirun into OUT_DIR/NAME, then its report
  local name=$1
  shift
  echo "== $name: $*"
  # shellcheck disable=SC2086  # LAUNCHER holds several overrides
  $PY -m covidseg.train -m "${common[@]}" $LAUNCHER "$@" hydra.sweep.dir="$out/$name"
  local status=$?
  $PY -m covidseg.report "$out/$name" && return $status
}

sweep() {  # PARALLEL_SWEEPS=1 (a many-core machine): all sweeps at once, each logging to OUT_DIR/NAME.log
  if [[ -n ${PARALLEL_SWEEPS:-} ]]; then
    mkdir -p "$out"
    run_sweep "$@" > "$out/$1.log" 2>&1 &
    pids+=($!)
  else
    run_sweep "$@" || failed=1
  fi
}

if [[ -n ${SMOKE:-} ]]; then
  sweep recipe_study recipe=study model.backbone=resnet18 seed=0 data.input=raw,segmented
  sweep clahe_stable recipe=stable model.backbone=resnet18 seed=0 data.input=raw data.equalize=clahe
  sweep folds_stable recipe=stable model.backbone=resnet18 seed=0 data.input=raw data.folds=2 data.fold=0,1
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  $PY experiments/lever_table.py "$out" --recipes study stable | tee "$out/tables.md"
  exit $failed
fi
# 3 backbones x raw/segmented/lungs_removed x 3 seeds (the quick study's grid), per recipe
for recipe in study stable stable_ema; do
  sweep "recipe_$recipe" recipe=$recipe
done
for recipe in study stable; do
  # patient-level 5-fold cross-validation: every covid/normal image tested once
  sweep "folds_$recipe" recipe=$recipe model.backbone=resnet18 seed=0 data.input=raw,segmented data.folds=5 \
    data.fold=0,1,2,3,4
  # the levers, on resnet18: intensity standardisation, and cropping to the lungs
  sweep "clahe_$recipe" recipe=$recipe model.backbone=resnet18 data.input=raw,segmented data.equalize=clahe
  sweep "crop_$recipe" recipe=$recipe model.backbone=resnet18 data.input=segmented,lungs_removed \
    data.crop_to_lungs=true
done
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
$PY experiments/lever_table.py "$out" --recipes study stable stable_ema | tee "$out/tables.md"
exit $failed
