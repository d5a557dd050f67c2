# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv if missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; see README for a CUDA build.
TORCH ?= torch==2.13.0

.PHONY: demo test install install-dev clean lib tool

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

# libpixelq without Python: build/libpixelq.so; its headers are in src/pixelq/runtime/include.
CC ?= cc
CSRC := src/pixelq/runtime/csrc
LIBPIXELQ := $(CSRC)/kernels.c $(CSRC)/net.c $(CSRC)/steps.c $(CSRC)/loader.c $(CSRC)/vendor/sha256.c
lib: build/libpixelq.so
build/libpixelq.so: $(LIBPIXELQ) $(wildcard $(CSRC)/*.h $(CSRC)/vendor/*.h src/pixelq/runtime/include/*.h)
	mkdir -p build
	$(CC) -O3 -std=c11 -fopenmp -fPIC -shared -fvisibility=hidden -Isrc/pixelq/runtime/include $(LIBPIXELQ) -lz -o $@

# pixelq-run, the command-line tool, without Python: build/pixelq-run (the library linked in)
tool: build/pixelq-run
build/pixelq-run: src/pixelq/runtime/tools/pixelq_run.c $(LIBPIXELQ) $(wildcard $(CSRC)/*.h $(CSRC)/vendor/*.h src/pixelq/runtime/include/*.h)
	mkdir -p build
	$(CC) -O3 -std=c11 -fopenmp -Isrc/pixelq/runtime/include $< $(LIBPIXELQ) -lz -lm -o $@

clean:
	rm -rf $(VENV) runs build .pytest_cache .hypothesis
