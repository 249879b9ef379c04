# One-command setup, tests, docs, training and benchmarks. Every target installs what it needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# Two installs: what training needs (the runtime and this package, editable), and on top of it what the
# tests, the lint and the docs need (with the JAX and PyTorch backends, about 1.1 GB, only for the tests).
STAMP     := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
FASHION_MNIST := /usr/share/datasets/fashion-mnist

# The loss and distance tests also run under these Keras backends (CPU builds in requirements_dev.txt); each loss's
# own test file (tests/test_loss_<name>.py) is among them by its name.
OTHER_BACKENDS := jax torch
BACKEND_TESTS  := tests/test_distances.py tests/test_triplet_loss.py tests/test_losses.py \
                  tests/test_reference_losses.py tests/test_direct_formulation.py $(wildcard tests/test_loss_*.py) \
                  tests/test_tfa_losses.py tests/test_miners.py

.PHONY: setup setup-dev test test-backends lint docs train bench bench-peer fashion-mnist clean

# The virtual environment is rebuilt from scratch when it is missing or when a runtime requirements file is newer
# than the last install, so it never keeps packages a requirements file dropped. The package is installed
# editable, so `import model` works from any folder once the environment is active (source .venv/bin/activate).
$(STAMP): requirements_cpu.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python >= 3.10 is required (3.11 recommended), found " + sys.version)'
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools
	$(PY) -m pip install --quiet -r requirements_cpu.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

$(DEV_STAMP): $(STAMP) requirements_dev.txt
	$(PY) -m pip install --quiet -r requirements_dev.txt
	touch $(DEV_STAMP)

setup: $(STAMP)

setup-dev: $(DEV_STAMP)

# The test files run in TEST_WORKERS processes (pytest-xdist), each file whole in one of them, so that a file's
# module fixtures (trained runs, bundles) are built once.
TEST_WORKERS ?= 2
XDIST := -n $(TEST_WORKERS) --dist loadfile

test: setup-dev
	$(PY) -m pytest $(XDIST)
	@$(MAKE) --no-print-directory test-backends

# A backend that cannot be imported is skipped with a message, not failed.
test-backends: setup-dev
	@for backend in $(OTHER_BACKENDS); do \
		if $(PY) -c "import $$backend" 2>/dev/null; then \
			echo "KERAS_BACKEND=$$backend: $(BACKEND_TESTS)"; \
			KERAS_BACKEND=$$backend $(PY) -m pytest $(XDIST) $(BACKEND_TESTS) || exit 1; \
		else \
			echo "skipped: the $$backend backend cannot be imported (pip install -r requirements_dev.txt installs it)"; \
		fi; \
	done

lint: setup-dev
	$(PY) -m ruff check .

# The documentation site (site/): the generated references first (the params schema, the command lines), then
# MkDocs with --strict, so a broken link, a missing API object or a warning fails the build. Not --quiet: it
# drops the warnings of the API reference (a docstring section it cannot parse) before --strict counts them.
docs: setup-dev
	$(PY) docs/generate.py
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

# Fashion-MNIST from Debian's package when it is missing and apt is usable; otherwise the data
# loader falls back to a data_dir or to the online Keras download and says so if both fail.
fashion-mnist:
	@if [ ! -d $(FASHION_MNIST) ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y dataset-fashion-mnist || (apt-get update && apt-get install -y dataset-fashion-mnist) || \
		echo "warning: could not install dataset-fashion-mnist; the loader will try the Keras download"; \
	fi

train: setup fashion-mnist
	$(PY) train.py --model_dir experiments/base_model

bench: setup
	$(PY) benchmarks/bench_losses.py
	$(PY) benchmarks/bench_evaluation.py
	$(PY) benchmarks/bench_training.py

# Against pytorch-metric-learning, side by side (installs the optional requirements_bench.txt).
bench-peer: setup fashion-mnist
	$(PY) -m pip install --quiet -r requirements_bench.txt
	$(PY) benchmarks/bench_peer.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache site
