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

.PHONY: venv features info test bench clean-venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

features: $(STAMP)
	$(PY) -m pipeline features $(FEATURE_FLAGS)

info: $(STAMP)
	$(PY) -m pipeline info $(FILE)

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/bench_features.py

clean-venv:
	rm -rf $(VENV)
