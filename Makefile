# One-command setup, tests, training and benchmarks. Every target installs what it needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
REQS   := requirements_cpu.txt requirements_dev.txt
FASHION_MNIST := /usr/share/datasets/fashion-mnist

# The loss and distance tests also run under these Keras backends (CPU builds in requirements_dev.txt); each loss's
# own test file (tests/test_loss_<name>.py) is among them by its name.
OTHER_BACKENDS := jax torch
BACKEND_TESTS  := tests/test_distances.py tests/test_triplet_loss.py tests/test_losses.py \
                  tests/test_reference_losses.py tests/test_direct_formulation.py $(wildcard tests/test_loss_*.py) \
                  tests/test_tfa_losses.py tests/test_miners.py

.PHONY: setup test test-backends lint train bench bench-peer fashion-mnist clean

# The virtual environment is rebuilt from scratch when it is missing or when a requirements
# file is newer than the last install, so it never keeps packages a requirements file dropped.
$(STAMP): $(REQS)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python >= 3.10 is required (3.11 recommended), found " + sys.version)'
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(addprefix -r ,$(REQS))
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(PY) -m pytest
	@$(MAKE) --no-print-directory test-backends

# A backend that cannot be imported is skipped with a message, not failed.
test-backends: setup
	@for backend in $(OTHER_BACKENDS); do \
		if $(PY) -c "import $$backend" 2>/dev/null; then \
			echo "KERAS_BACKEND=$$backend: $(BACKEND_TESTS)"; \
			KERAS_BACKEND=$$backend $(PY) -m pytest $(BACKEND_TESTS) || exit 1; \
		else \
			echo "skipped: the $$backend backend cannot be imported (pip install -r requirements_dev.txt installs it)"; \
		fi; \
	done

lint: setup
	$(PY) -m ruff check .

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
	rm -rf $(VENV) .pytest_cache .ruff_cache
