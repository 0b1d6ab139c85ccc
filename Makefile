# Thin layer over `python -m pipeline`. Every target bootstraps .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

# Stage-one knobs (empty = the CLI's default). DATA defaults to the shared CIFAR-10 JPEG tree when
# it sits beside the checkout; elsewhere, to Keras's CIFAR-10 download.
DATA      ?= $(wildcard ../shared/data/cifar10-jpg)
BACKBONE  ?=
WEIGHTS   ?=
SIZE      ?=
LIMIT     ?=
BATCH     ?=
PRECISION ?=
CACHE     ?= cache

opt = $(if $(2),$(1) $(2))
FEATURE_FLAGS = $(call opt,--data,$(DATA)) $(call opt,--backbone,$(BACKBONE)) $(call opt,--weights,$(WEIGHTS)) \
	$(call opt,--size,$(SIZE)) $(call opt,--limit,$(LIMIT)) $(call opt,--batch-size,$(BATCH)) \
	$(call opt,--precision,$(PRECISION)) --cache-dir $(CACHE)

# Later stages: FEATURES=cache/features/X.h5 (default: newest matching file), HEAD=dense|logreg,
# GRID="hidden=256,512 dropout=0.2,0.5", HEADFILE=cache/heads/RUN/model.keras, ARGS="any other flags".
FEATURES ?=
HEAD     ?=
GRID     ?=
HEADFILE ?=
ARGS     ?=

.PHONY: venv features backbones info head sweep finetune test test-fast bench clean-venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,ray]"
	touch $(STAMP)

venv: $(STAMP)

features: $(STAMP)
	$(PY) -m pipeline features $(FEATURE_FLAGS)

backbones: $(STAMP)
	$(PY) -m pipeline backbones

info: $(STAMP)
	$(PY) -m pipeline info $(FILE)

head: $(STAMP)
	$(PY) -m pipeline head $(call opt,--features,$(FEATURES)) $(call opt,--head,$(HEAD)) --cache-dir $(CACHE) $(ARGS)

sweep: $(STAMP)
	$(PY) -m pipeline sweep $(call opt,--features,$(FEATURES)) $(call opt,--head,$(HEAD)) $(call opt,--grid,$(GRID)) --cache-dir $(CACHE) $(ARGS)

finetune: $(STAMP)
	$(PY) -m pipeline finetune $(call opt,--features,$(FEATURES)) $(call opt,--head,$(HEADFILE)) \
		$(call opt,--backbone,$(filter %.keras,$(BACKBONE))) --cache-dir $(CACHE) $(ARGS)

# Two processes (pytest-xdist): many tests wait on subprocesses, sleeps and I/O, so two share 2 cores well.
test: $(STAMP)
	$(PY) -m pytest -q -n 2

test-fast: $(STAMP)
	$(PY) -m pytest -q -n 2 -m "not slow"

bench: $(STAMP)
	@set -e; for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b; done

clean-venv:
	rm -rf $(VENV)
