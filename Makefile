# A thin layer over `python -m pipeline COMMAND`: one target per command, each bootstrapping .venv on
# first use. docs/reference.md lists every flag; these variables cover the common ones (empty = the
# command's own default) and ARGS passes any other flag through, e.g. make head ARGS="--hidden 512".
#
#   CACHE=cache        where every command reads and writes (--cache-dir)
#   DATA=DIR           features: the image source (default: ../shared/data/cifar10-jpg beside the checkout,
#                      else Keras's CIFAR-10 download)
#   BACKBONE=NAME|FILE features: a backbone of `make backbones` or a .keras file; a .keras file is passed on to
#                      finetune, export and neighbors too
#   WEIGHTS= SIZE= LIMIT= BATCH= PRECISION=    features: --weights --size --limit --batch-size --precision
#   FEATURES=FILE.h5   head, sweep, finetune, neighbors, audit, map (default: the newest complete features file)
#   HEAD=dense|logreg|knn   head, sweep: the head kind          GRID="hidden=256,512 dropout=0.2,0.5"   sweep
#   MODEL=FILE         finetune: the head to start from; predict: the model to predict with
#   RUN=DIR            export: the run to export; audit: also that run's accuracy without the duplicates
#   FORMAT=savedmodel|tflite|keras   export          IMAGES="a.jpg photos/"   predict, neighbors
#   OUT=FILE.csv       predict: write the predictions there          FILE=FILE.h5   info
#   ARGS="..."         any other flags of the command
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

CACHE     ?= cache
DATA      ?= $(wildcard ../shared/data/cifar10-jpg)
BACKBONE  ?=
WEIGHTS   ?=
SIZE      ?=
LIMIT     ?=
BATCH     ?=
PRECISION ?=
FEATURES  ?=
HEAD      ?=
GRID      ?=
MODEL     ?=
RUN       ?=
FORMAT    ?=
IMAGES    ?=
OUT       ?=
FILE      ?=
ARGS      ?=

opt = $(if $(2),$(1) $(2))
CACHE_FLAG    = --cache-dir $(CACHE)
FEATURES_FLAG = $(call opt,--features,$(FEATURES))
BACKBONE_FILE = $(call opt,--backbone,$(filter %.keras,$(BACKBONE)))
FEATURE_FLAGS = $(call opt,--data,$(DATA)) $(call opt,--backbone,$(BACKBONE)) $(call opt,--weights,$(WEIGHTS)) \
	$(call opt,--size,$(SIZE)) $(call opt,--limit,$(LIMIT)) $(call opt,--batch-size,$(BATCH)) \
	$(call opt,--precision,$(PRECISION)) $(CACHE_FLAG)
RUN_PIPELINE  = $(PY) -m pipeline

.PHONY: venv features backbones info head sweep finetune predict export neighbors audit map report compare verify \
	docs test test-fast bench clean-venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,ray]"
	touch $(STAMP)

venv: $(STAMP)

# ---------------------------------------------------------------- stage one
features: $(STAMP)
	$(RUN_PIPELINE) features $(FEATURE_FLAGS) $(ARGS)

backbones: $(STAMP)
	$(RUN_PIPELINE) backbones

info: $(STAMP)
	$(RUN_PIPELINE) info $(FILE)

# ---------------------------------------------------------------- stage two and three
head: $(STAMP)
	$(RUN_PIPELINE) head $(FEATURES_FLAG) $(call opt,--head,$(HEAD)) $(CACHE_FLAG) $(ARGS)

sweep: $(STAMP)
	$(RUN_PIPELINE) sweep $(FEATURES_FLAG) $(call opt,--head,$(HEAD)) $(call opt,--grid,$(GRID)) $(CACHE_FLAG) $(ARGS)

finetune: $(STAMP)
	$(RUN_PIPELINE) finetune $(FEATURES_FLAG) $(call opt,--start-from,$(MODEL)) $(BACKBONE_FILE) $(CACHE_FLAG) $(ARGS)

# ---------------------------------------------------------------- shipping
predict: $(STAMP)
	$(RUN_PIPELINE) predict $(call opt,--model,$(MODEL)) $(IMAGES) $(call opt,--out,$(OUT)) $(ARGS)

export: $(STAMP)
	$(RUN_PIPELINE) export $(RUN) $(call opt,--format,$(FORMAT)) $(BACKBONE_FILE) $(CACHE_FLAG) $(ARGS)

# ---------------------------------------------------------------- looking at results
neighbors: $(STAMP)
	$(RUN_PIPELINE) neighbors $(FEATURES_FLAG) $(IMAGES) $(BACKBONE_FILE) $(CACHE_FLAG) $(ARGS)

audit: $(STAMP)
	$(RUN_PIPELINE) audit $(FEATURES_FLAG) $(call opt,--run,$(RUN)) $(CACHE_FLAG) $(ARGS)

map: $(STAMP)
	$(RUN_PIPELINE) map $(FEATURES_FLAG) $(CACHE_FLAG) $(ARGS)

report: $(STAMP)
	$(RUN_PIPELINE) report $(CACHE_FLAG) $(ARGS)

compare: $(STAMP)
	$(RUN_PIPELINE) compare $(CACHE_FLAG) $(ARGS)

verify: $(STAMP)
	$(RUN_PIPELINE) verify $(ARGS)

# ---------------------------------------------------------------- the project itself
# docs/numbers.md's generated section comes from cache/bench/*.json: a checkout without them leaves it as it is.
docs: $(STAMP)
	$(PY) tools/make_reference.py
	$(PY) tools/make_layout.py
	$(PY) tools/make_numbers.py

# Two processes (pytest-xdist): many tests wait on subprocesses, sleeps and I/O, so two share 2 cores well.
# test-fast hands out whole modules (--dist loadscope), so a module's fixtures are built in one process, not
# in both; tests/conftest.py gives each process one OpenMP thread per core it has.
test: $(STAMP)
	$(PY) -m pytest -q -n 2

test-fast: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadscope -m "not slow"

# bench_scale.py is left out: it takes --rows and runs for hours at 2,000,000 (docs/numbers.md, "Stage two at scale")
bench: $(STAMP)
	@set -e; for b in $(filter-out benchmarks/bench_scale.py,$(wildcard benchmarks/bench_*.py)); do echo "== $$b"; $(PY) $$b; done
	$(PY) tools/make_numbers.py

clean-venv:
	rm -rf $(VENV)
