# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv if missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; see README for a CUDA build.
TORCH ?= torch==2.13.0

.PHONY: demo test install install-dev clean lib

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(VENV)/bin/python pyproject.toml
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(VENV)/bin/pixelq demo

test: install-dev
	$(PY) -m pytest -q

# libpixelq without Python: build/libpixelq.so and the header in src/pixelq/runtime/include.
CC ?= cc
LIBPIXELQ := src/pixelq/runtime/csrc/kernels.c src/pixelq/runtime/csrc/net.c
lib: build/libpixelq.so
build/libpixelq.so: $(LIBPIXELQ) $(wildcard src/pixelq/runtime/csrc/*.h src/pixelq/runtime/include/*.h)
	mkdir -p build
	$(CC) -O3 -std=c11 -fopenmp -fPIC -shared -Isrc/pixelq/runtime/include $(LIBPIXELQ) -o $@

clean:
	rm -rf $(VENV) runs build .pytest_cache .hypothesis
