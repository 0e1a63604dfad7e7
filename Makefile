# covidseg — `make install`, then `make train`; `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned here: this machine serves these from local disk; GitHub's runners use
# TORCH_INDEX=https://download.pytorch.org/whl/cpu to get the small CPU build.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
TORCH_INDEX ?=
PIP_TORCH_ARGS := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)

.PHONY: install lint docs train train-3class eval segmenter study study-quick study-gpu report test test-fast \
	bench clean-cache

install:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(PIP_TORCH_ARGS) $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e ".[test,dicom]"

# The default experiment: resnet18 on raw images, binary covid vs normal (its cost: docs/getting-started.md).
train:
	$(BIN)/covidseg-train $(ARGS)

train-3class:
	$(BIN)/covidseg-train data=covid_cxr_3class $(ARGS)

# make eval CKPT=logs/train/runs/<run>/checkpoints/best.ckpt DATA=<dataset folder>
eval:
	$(BIN)/covidseg-eval ckpt_path=$(CKPT) $(if $(DATA),data.root=$(DATA),) $(ARGS)

# Stage 1: train the lung segmenter on normal and COVID lungs (lungs/ and lungs-covid/) into segmenter/default/;
# segmenter.ckpt_path's default is the newest finished segmenter run (this one, or covidseg-train-segmenter's).
segmenter:
	$(BIN)/covidseg-train-segmenter hydra.run.dir=$${COVIDSEG_LOG_DIR:-logs}/segmenter/default $(ARGS)

# The comparison study (backbones x raw/segmented x seeds), then its report. Needs `make segmenter`.
# The report is written also when some jobs failed (it lists them); make still fails then.
STUDY = $(BIN)/covidseg-train experiment=$(1) hydra.sweep.dir=$${COVIDSEG_LOG_DIR:-logs}/study/$(1) $(ARGS); \
	status=$$?; $(BIN)/covidseg-report $${COVIDSEG_LOG_DIR:-logs}/study/$(1) && exit $$status

study:
	$(call STUDY,compare)

study-quick:
	$(call STUDY,compare_quick)

study-gpu:
	$(call STUDY,compare_gpu)

# make report SWEEP=logs/study/compare
report:
	$(BIN)/covidseg-report $(SWEEP)

# ruff: lint and formatting (settings in pyproject.toml).
lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The documentation site (mkdocs.yml, docs/) into site/; --strict: any warning (a broken link, a docstring
# that does not parse) fails the build.
docs:
	$(BIN)/mkdocs build --strict

# One worker per core (at most 4: each worker trains the session's tiny fixtures once); --dist loadscope keeps
# a test file's module fixtures (a training, an export) on one worker. `pytest -x -q` runs it all serially.
PYTEST_WORKERS ?= -n auto --maxprocesses 4 --dist loadscope
test:
	$(BIN)/python -m pytest -x -q $(PYTEST_WORKERS)

# Without the real trainings and sweeps.
test-fast:
	$(BIN)/python -m pytest -x -q $(PYTEST_WORKERS) -m "not slow and not bench"

# Speed and memory measured on this machine, one table (docs/performance.md); asserts nothing.
# make bench ARGS="--json bench.json --rss-n 20000"
# The bench tests first (tests/benchmarks/test_bench.py: the benchmark, its timers and data generator work), then the benchmark.
bench:
	$(BIN)/python -m pytest -x -q -m bench
	$(BIN)/python -m benchmarks.bench $(ARGS)

clean-cache:
	rm -rf $${COVIDSEG_CACHE_DIR:-$$HOME/.cache/covidseg}
