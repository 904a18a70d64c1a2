# The README's two Quickstart commands are `make demo` and `make test`; both install first.
# TORCH_SPEC / TORCH_INDEX choose the torch build: on a CPU-only machine point TORCH_INDEX at PyTorch's
# CPU wheel index (see README) so that pip does not pull a multi-GB CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/ddiff demo --out ddiff-demo

test: install
	$(PY) -m pytest -q

$(VENV)/.docs-installed: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[docs,lint]"
	touch $@

# The documentation site with its executed examples, offline, warnings as errors (docs/_build/html/index.html).
docs: $(VENV)/.docs-installed
	$(VENV)/bin/sphinx-build -W --keep-going -q -b html docs docs/_build/html

# ruff (lint + import order) and mypy (strict on the public API), configured in pyproject.toml.
lint: $(VENV)/.docs-installed
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/mypy

.PHONY: install demo test docs lint
