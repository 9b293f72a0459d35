# Two commands for a fresh machine: `make demo` (the main job) and `make test` (the test suite).
# Each sets up .venv on first use. TORCH_SPEC selects the torch build: the default is the CPU
# wheel pinned for CPU machines; on a CUDA machine use e.g. `make setup TORCH_SPEC='torch>=2.4,<3'`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.dexvla-installed
# A separate interpreter with LeRobot's dataset dependencies (pandas, HF datasets), in which a
# test reads our datasets the way LeRobot's reader does (the lerobot package itself needs
# Python >= 3.12 or torchvision, neither available beside the CPU torch; docs/data.md).
LEROBOT_VENV ?= .venv-lerobot
LEROBOT_STAMP := $(LEROBOT_VENV)/.installed
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl

.PHONY: setup test test-fast demo lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements-nodeps.txt
	@bash scripts/system-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[sim,dev]"
	$(BIN)/pip install -q --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

$(LEROBOT_STAMP):
	$(PYTHON) -m venv $(LEROBOT_VENV)
	$(LEROBOT_VENV)/bin/pip install -q "pandas>=2.2" "datasets>=3" pillow numpy
	touch $(LEROBOT_STAMP)

test: $(STAMP) $(LEROBOT_STAMP)
	DEXVLA_LEROBOT_PYTHON=$(abspath $(LEROBOT_VENV))/bin/python $(BIN)/python -m pytest -q -ra

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m "not slow"

demo: $(STAMP)
	$(BIN)/dexvla demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

format: $(STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

clean:
	rm -rf $(VENV) $(LEROBOT_VENV) build *.egg-info
