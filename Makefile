# edgeforge: install, demo, test.  Everything runs inside .venv in the repo root.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
ARCH := $(shell uname -m)
# torch/torchvision builds that exist on these machines' local disk (see README); the
# constraints file stops any later install from pulling a different torch.
ifeq ($(ARCH),aarch64)
TORCH_PINS := torch==2.9.1 torchvision==0.24.1
else
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
endif
DEMO_RECIPE ?= efficientformer_l1
DEMO_OUT ?= artifacts/$(DEMO_RECIPE)
PYTEST_ARGS ?= -n 2 -q

.PHONY: install demo test test-heavy clean plugins plugins-asan plugins-check mutation

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	printf '%s\n' $(TORCH_PINS) > $(VENV)/torch-constraints.txt
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c $(VENV)/torch-constraints.txt $(TORCH_PINS)
	$(PIP) install -q -c $(VENV)/torch-constraints.txt -e '.[dev]'
	touch $@

DEMO_METHOD ?= minmax
DEMO_TARGET ?= cpu-ort

# The main job on the local default target: export -> quantize -> bench FP32 and INT8 -> report.
demo: install
	$(VENV)/bin/edgeforge export $(DEMO_RECIPE) --out $(DEMO_OUT)
	$(VENV)/bin/edgeforge quantize $(DEMO_OUT) --method $(DEMO_METHOD) --target $(DEMO_TARGET)
	$(VENV)/bin/edgeforge bench $(DEMO_OUT) --target $(DEMO_TARGET) --precision fp32
	$(VENV)/bin/edgeforge bench $(DEMO_OUT) --target $(DEMO_TARGET) --precision int8-$(DEMO_METHOD)
	@echo "HTML report: $(DEMO_OUT)/reports/index.html"

# Native custom ops (plugins/): builds what this machine can (CPU core always; ONNX Runtime kernels
# and TensorRT plugins when their headers are found or can be fetched into ~/.cache/edgeforge) and
# says what it skipped and why. A missing toolchain is reported, not an error.
plugins: install
	$(VENV)/bin/edgeforge plugins build

# The CPU math cores under AddressSanitizer + UBSan, on every instruction-set path this CPU runs
# (also run by tests/test_ops_native.py).
plugins-asan: plugins
	plugins/build/ef_core_asan

# The native ops' own checks (all run by `make test` too): parity of every implementation on every
# instruction-set path this CPU runs (EDGEFORGE_MAX_ISA=avx2|generic caps the path a process
# loads), the ASan driver, typed custom nodes, the auto mode, and the TensorRT plugins' host-side
# conformance harness (plain and under ASan; needs only TensorRT's headers).
plugins-check: plugins
	$(PY) -m pytest -q tests/test_ops_native.py tests/test_ops_linear_scan.py tests/test_ops_gated_attention.py \
	  tests/test_ops_shapes.py tests/test_ops_auto.py tests/test_ops_trt_host.py

test: install plugins
	@# Headless Chromium for the HTML report test (best effort: only as root, only if absent).
	@if [ "$$(id -u)" = 0 ] && ! command -v chromium >/dev/null 2>&1; then \
	  apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && \
	  apt-get install -y -q chromium >/dev/null 2>&1) || echo "chromium not installed: the browser test will skip"; fi
	@# qemu-user: ONNX Runtime's AVX2 int8 kernels on a VNNI CPU (edgeforge.runtimes.isa); best effort too.
	@if [ "$$(id -u)" = 0 ] && ! command -v qemu-x86_64 >/dev/null 2>&1 && [ "$$(uname -m)" = x86_64 ]; then \
	  apt-get install -y -q qemu-user >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && \
	  apt-get install -y -q qemu-user >/dev/null 2>&1) || echo "qemu-user not installed: ORT AVX2-kernel tests will skip"; fi
	$(PY) -m pytest $(PYTEST_ARGS)

# Also export the 40M+ parameter / 6+ GMAC recipe variants (minutes each on two cores).
test-heavy: install plugins
	EDGEFORGE_HEAVY=1 $(PY) -m pytest $(PYTEST_ARGS) tests/test_recipes_export.py

# Mutation testing (not part of `make test`): mutmut over the modules where a silent error costs
# users most, each on the tests that cover it, one worker, niced; per-module scores (and the
# surviving and equivalent mutants) -> benchmarks/results/mutation.json. Fails below 80% killed.
mutation: install
	nice -n 10 $(PY) benchmarks/mutation.py

clean:
	rm -rf $(VENV) artifacts build plugins/build
