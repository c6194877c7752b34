# tinymlops — the two commands: `make demo` and `make test`. Both create .venv and install on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FEDERATED := flwr grpcio-health-checking iterators pycryptodome tomli tomli-w dp-accounting
export TF_CPP_MIN_LOG_LEVEL ?= 2
export TF_USE_LEGACY_KERAS := 1

.PHONY: install demo test test-unit test-integration lint bench ui clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	# federated learning (flwr, dp-accounting): --no-deps, their metadata caps typer/rich/fastapi/attrs below ours
	$(PY) -m pip install --quiet --no-deps -c constraints.txt $(FEDERATED)
	@touch $(STAMP)

# microcontroller targets get firmware figures (flash, RAM, instructions from a linked ELF run in QEMU) when the
# Arm toolchain, QEMU and a TFLM tree (TINYMLOPS_TFLM_DIR) are present; TINYMLOPS_EMULATOR=off skips them
demo: $(STAMP)
	TINYMLOPS_EMULATOR=$${TINYMLOPS_EMULATOR:-auto} $(VENV)/bin/tinymlops run --config configs/pipeline.yaml

test: $(STAMP)
	$(PY) -m pytest -q

test-unit: $(STAMP)
	$(PY) -m pytest -q -m "not integration"

test-integration: $(STAMP)
	$(PY) -m pytest -q -m integration

lint: $(STAMP)
	$(VENV)/bin/ruff check src flows cli tests benchmarks
	$(VENV)/bin/mypy

bench: $(STAMP)
	for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

ui: $(STAMP)
	$(VENV)/bin/tinymlops ui

clean:
	rm -rf .tinymlops .pytest_cache
