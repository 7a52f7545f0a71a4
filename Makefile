# Entry points: `make test` and `make demo` (newest TRL), `make test-trl1.12` (the oldest TRL tested).
# Each creates or reuses a virtual environment and installs the package with its dev extra. TORCH_SPEC is
# what gets installed when torch is missing: the default is the CPU build available on this kind of
# machine; GPU users can override it, e.g.
#   make demo TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
OLD_VENV ?= .venv-trl1.12
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
OLD_PY := $(OLD_VENV)/bin/python
STAMP := $(VENV)/.installed
OLD_STAMP := $(OLD_VENV)/.installed
PYTEST_ARGS ?=
# What the TRL 1.12 job runs: parity with stock TRL, TRL's own flows, resume, replay, prioritized
# sampling, two processes, bad inputs, checkpoints that cannot run code.
OLD_TRL_TESTS := tests/test_parity.py tests/test_trl_flow.py tests/test_checkpoint.py tests/test_checkpoint_safety.py \
	tests/test_replay_buffer.py tests/test_replay_component.py tests/test_replay_trainer.py \
	tests/test_distributed.py tests/test_bad_inputs.py

.PHONY: install test test-trl1.12 demo lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install $(TORCH_SPEC)
	$(PY) -m pip install -e ".[dev]"
	@touch $(STAMP)

$(OLD_PY):
	$(PYTHON) -m venv $(OLD_VENV)

$(OLD_STAMP): pyproject.toml | $(OLD_PY)
	@$(OLD_PY) -c "import torch" 2>/dev/null || $(OLD_PY) -m pip install $(TORCH_SPEC)
	$(OLD_PY) -m pip install -e ".[dev]" "trl==1.12.*"
	@touch $(OLD_STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -c "import trl; print('TRL', trl.__version__)"
	$(PY) -m pytest -m "not needs_trl_ppo" $(PYTEST_ARGS)

test-trl1.12: $(OLD_STAMP) $(STAMP)
	$(OLD_PY) -c "import trl; print('TRL', trl.__version__)"
	$(OLD_PY) -m pytest $(OLD_TRL_TESTS) $(PYTEST_ARGS)
	$(OLD_PY) tests/cross_version.py run $(OLD_VENV)/cross_version.json
	$(PY) tests/cross_version.py run $(VENV)/cross_version.json
	$(PY) tests/cross_version.py compare $(OLD_VENV)/cross_version.json $(VENV)/cross_version.json

demo: $(STAMP)
	$(VENV)/bin/trl-replay-ppo demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(OLD_STAMP)
	$(OLD_PY) -m benchmarks.fairness
	$(OLD_PY) benchmarks/buffer_ops.py
	$(OLD_PY) benchmarks/memory.py

clean:
	rm -rf $(VENV) $(OLD_VENV) outputs .pytest_cache .ruff_cache
