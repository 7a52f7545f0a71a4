"""Shared fixtures: tiny models saved once per session and loaded fresh (via from_pretrained) per test."""

from __future__ import annotations

import os

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState, PartialState

from trl_replay_ppo.integrations.compat import trl_ppo
from trl_replay_ppo.tasks.tiny import build_tiny_models, load_tiny_models

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(int(os.environ.get("TRL_REPLAY_PPO_TEST_THREADS", "2")))  # CI machines have 2 cores


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    return build_tiny_models(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def tiny(tiny_dirs):
    """Fresh tokenizer, policy, reference, reward and value models."""
    return load_tiny_models(tiny_dirs)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each test builds its own trainer; accelerate's process-wide state (gradient synchronisation included: a
    dataloader left mid-iteration by one test would make every micro-batch a sync point in the next) must not leak."""
    _reset_accelerate()
    yield
    _reset_accelerate()


def _reset_accelerate() -> None:
    AcceleratorState._reset_state(reset_partial_state=True)
    PartialState._reset_state()
    GradientState._reset_state()


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_trl_ppo: compares with stock TRL PPO, which only TRL <= 1.12 has")
    config.addinivalue_line("markers", "trl112: also runs in CI's TRL 1.12 job (`make test-trl1.12`)")
    config.addinivalue_line(
        "markers", "faults: real kills and concurrent processes, CI's fault job (`make test-faults`)"
    )
    config.addinivalue_line("markers", "vllm: vLLM generation on CPU, CI's job `make test-vllm`")
    config.addinivalue_line("markers", "smollm2: the real SmolLM2-135M model, CI's job `make test-smollm2`")


def pytest_collection_modifyitems(config, items):
    if trl_ppo() is not None:
        return
    reason = "stock TRL PPO exists only on TRL <= 1.12: this test runs in CI's TRL 1.12 job (`make test-trl1.12`)"
    for item in items:
        if "needs_trl_ppo" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))
