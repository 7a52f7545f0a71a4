"""Shared fixtures: tiny models saved once per session and loaded fresh (via from_pretrained) per test."""

from __future__ import annotations

import os

import pytest
import torch
from accelerate.state import AcceleratorState, PartialState

from trl_replay_ppo.tasks.tiny import build_tiny_models, load_tiny_models

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    return build_tiny_models(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def tiny(tiny_dirs):
    """Fresh tokenizer, policy, reference, reward and value models."""
    return load_tiny_models(tiny_dirs)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each test builds its own trainer; accelerate's process-wide state must not leak between them."""
    AcceleratorState._reset_state(reset_partial_state=True)
    PartialState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    PartialState._reset_state()
