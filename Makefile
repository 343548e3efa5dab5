# twotower: `make help` lists the targets.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
ARGS   ?=

.DEFAULT_GOAL := help
.PHONY: help install run sweep data inspect test lint format clean lab

help: ## list the targets and the main job's options
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'
	@echo ''
	@echo 'Options of make run (ARGS="..."; all of them: .venv/bin/python -m twotower_utils.pipeline --help):'
	@echo '  --config FILE              run on another config, e.g. the one make inspect wrote (your own data)'
	@echo '  --fast                     smoke run: tiny model, two epochs'
	@echo '  --quick                    the faster loop: three ensemble members instead of four'
	@echo '  -p KEY VALUE               a config override (-p training.epochs 5) or notebook parameter (-p FAST true)'
	@echo '  --cell-timeout SECONDS     stop a notebook cell running longer than this (default 600; training unbounded)'
	@echo '  --run-id ID                name the run (default: a new timestamped id)'
	@echo '  --from-stage STAGE         resume: run this stage and the later ones of run --run-id (default the latest run);'
	@echo '                             training picks up at its last checkpoint (-p RESUME false starts it over)'
	@echo '  --stage STAGE              run only this stage (repeatable): eda, preprocessing, training, evaluation, embeddings'
	@echo 'Your own data: make inspect ARGS="--items movies.csv --interactions ratings.csv --write-config my.json"'
	@echo '               then make run ARGS="--config my.json"'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv (if missing) and install the project with its dev tools

run: $(STAMP) ## the main job: notebooks 01-05 on MovieLens-100K -> reports/<run_id>/ and reports/index.html (ARGS=... passes options, e.g. ARGS="--fast")
	$(PY) -m twotower_utils.pipeline $(ARGS)

sweep: $(STAMP) ## one run per parameter set of a grid file, then a comparison report (ARGS="grid.yaml --fast"; see sweeps/example.yaml)
	$(PY) -m twotower_utils.pipeline --sweep $(ARGS)

data: $(STAMP) ## the data stage alone: fetch, validate, split, save (ARGS=... passes options)
	$(PY) -m twotower_utils.data.preprocessing $(ARGS)

inspect: $(STAMP) ## describe your CSV files and suggest a config (ARGS="[--users F] [--items F] --interactions F [--write-config my.json]")
	$(PY) -m twotower_utils.data inspect $(ARGS)

lab: $(STAMP) ## JupyterLab on notebooks/ with the project's kernel "twotower"
	$(PY) -m twotower_utils.pipeline --install-kernel
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

test: $(STAMP) ## run the test suite (MovieLens tests need TWOTOWER_ML100K_DIR, otherwise they skip)
	$(PY) -m pytest $(ARGS)

lint: $(STAMP) ## ruff check
	$(VENV)/bin/ruff check .

format: $(STAMP) ## ruff format
	$(VENV)/bin/ruff format .

clean: ## remove processed data, models and reports (keeps .venv and downloaded raw data)
	rm -rf data/processed/* models/* models/.checkpoints reports
