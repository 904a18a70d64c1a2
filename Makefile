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

.PHONY: install demo test
