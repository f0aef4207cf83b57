# The two commands of a new user: `make demo` (the main job) and `make test`.
# Both set up .venv first. On a machine with no torch in the venv, TORCH (the CPU wheel on
# this project's machines) is installed; a user with a CUDA torch keeps it by reusing the
# system's packages: `make test VENV_OPTS=--system-site-packages`, or `pip install -e .` in
# their own environment.
PYTHON ?= python3
VENV ?= .venv
VENV_OPTS ?=
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: setup demo test lint clean

setup: $(VENV)/.kerzoo-setup

$(VENV)/.kerzoo-setup: pyproject.toml plugins/kerzoo-example-plugin/pyproject.toml
	$(PYTHON) -m venv $(VENV_OPTS) $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH)"
	$(PIP) install -e ".[train,test]"
	$(PIP) install --no-deps -e plugins/kerzoo-example-plugin
	touch $@

demo: setup
	$(VENV)/bin/kerzoo train

test: setup
	$(PY) -m pytest -q

# The rule set is in pyproject.toml ([tool.ruff.lint]); CI runs the same two checks.
lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
