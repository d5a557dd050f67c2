# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv if missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; see README for a CUDA build.
TORCH ?= torch==2.13.0

.PHONY: demo test install install-dev clean lib tool test-arm64

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

# libpixelq, its tool and a check driver cross-built for AArch64 and run under user-mode emulation:
# every ARM build of the kernels (portable, neon, neon-dotprod) against what the host computed, the
# x86 kernel tests' cases and five models' logits (tests/arm64/). Installs nothing: it needs
# aarch64-linux-gnu-gcc, qemu-aarch64 and AArch64 zlib (Debian: gcc-aarch64-linux-gnu, qemu-user,
# zlib1g-dev:arm64), and says so when one is missing. Emulation checks results, not speed.
ARM_CC ?= aarch64-linux-gnu-gcc
QEMU_ARM64 ?= qemu-aarch64 -L /usr/aarch64-linux-gnu
ARM_OUT := build/arm64
test-arm64: install-dev
	@command -v $(ARM_CC) >/dev/null || { echo "test-arm64: $(ARM_CC) not found (Debian: gcc-aarch64-linux-gnu)" >&2; exit 1; }
	@command -v $(firstword $(QEMU_ARM64)) >/dev/null || { echo "test-arm64: $(firstword $(QEMU_ARM64)) not found (Debian: qemu-user)" >&2; exit 1; }
	mkdir -p $(ARM_OUT)
	$(ARM_CC) -O2 -std=c11 -fopenmp -fPIC -shared -fvisibility=hidden -Isrc/pixelq/runtime/include $(LIBPIXELQ) -lz -o $(ARM_OUT)/libpixelq.so
	$(ARM_CC) -O2 -std=c11 -fopenmp -Isrc/pixelq/runtime/include src/pixelq/runtime/tools/pixelq_run.c $(LIBPIXELQ) -lz -lm -o $(ARM_OUT)/pixelq-run
	$(ARM_CC) -O2 -std=c11 -Wall -Wextra -fopenmp -Isrc/pixelq/runtime/include tests/arm64/check.c $(LIBPIXELQ) -lz -lm -o $(ARM_OUT)/check
	rm -f $(ARM_OUT)/cases.bin
	PXQ_ARM64_CASES=$(ARM_OUT)/cases.bin $(PY) -m pytest -q -p no:cacheprovider tests/test_kernels.py -k portable
	$(PY) tests/arm64/expect.py $(ARM_OUT)
	$(QEMU_ARM64) $(ARM_OUT)/check cases $(ARM_OUT)/cases.bin
	for m in resnet20-w1a2-pe-qlast resnet20-w1a2-pe-qlast-r4s cnv w2a4 int8-float-last; do \
	  $(QEMU_ARM64) $(ARM_OUT)/check model $(ARM_OUT)/$$m.pxq $(ARM_OUT)/$$m.expected || exit 1; done
	# a CPU without the dot-product extension: the neon build alone, chosen at run time
	$(QEMU_ARM64) -cpu cortex-a53 $(ARM_OUT)/check model $(ARM_OUT)/w2a4.pxq $(ARM_OUT)/w2a4.expected
	$(PY) -c "import numpy as np; np.save('$(ARM_OUT)/images.npy', np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8))"
	$(QEMU_ARM64) $(ARM_OUT)/pixelq-run $(ARM_OUT)/cnv.pxq $(ARM_OUT)/images.npy --threads 1 --top 2

clean:
	rm -rf $(VENV) runs build .pytest_cache .hypothesis
