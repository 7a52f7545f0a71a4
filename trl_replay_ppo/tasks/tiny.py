"""Tiny models and a character-level tokenizer built locally, with no model hub.

Everything here is saved and re-loaded with the real ``from_pretrained`` code paths, so tests,
the demo and the benchmarks exercise the same loading code a user runs on Qwen3-0.6B.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerFast,
    Qwen3Config,
)

from trl_replay_ppo.trainer.driver import ReplayPPOTrainer

PAD, EOS, BOS, UNK = "<pad>", "<eos>", "<bos>", "<unk>"
SPECIAL_TOKENS = (PAD, EOS, BOS, UNK)
CHARACTERS = string.digits + string.ascii_letters + string.punctuation + " \n"

# A minimal ChatML-like template, enough for `apply_chat_template(..., add_generation_prompt=True)`.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'][0] }}:{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}a:{% endif %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer over printable ASCII, left-padded as TRL's PPO expects."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + tuple(CHARACTERS))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    backend.decoder = decoders.Fuse()
    special = {"pad_token": PAD, "eos_token": EOS, "bos_token": BOS, "unk_token": UNK}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, padding_side="left", **special)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_model_config(
    vocab_size: int, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4, **kwargs
) -> Qwen3Config:
    """A Qwen3-shaped config small enough to train on two CPU cores."""
    return Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=1,
        **kwargs,
    )


def build_tiny_models(
    path: str | Path, seed: int = 0, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4
) -> dict[str, Path]:
    """Build and save a tokenizer, a causal LM and a 1-label sequence classifier under ``path``.

    Returns the directories ``{"tokenizer", "policy", "reward"}``; the policy directory also
    holds the tokenizer, so ``from_pretrained(policy)`` works for both. The classifier serves
    as reward model and as value model (load it twice).
    """
    root = Path(path)
    tokenizer = build_tokenizer()
    config = tiny_model_config(len(tokenizer), hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads)
    torch.manual_seed(seed)
    policy = AutoModelForCausalLM.from_config(config)
    policy.generation_config.pad_token_id = tokenizer.pad_token_id
    config.num_labels = 1
    reward = AutoModelForSequenceClassification.from_config(config)
    dirs = {"tokenizer": root / "tokenizer", "policy": root / "policy", "reward": root / "reward"}
    tokenizer.save_pretrained(dirs["tokenizer"])
    for name, model in (("policy", policy), ("reward", reward)):
        model.save_pretrained(dirs[name])
        tokenizer.save_pretrained(dirs[name])
    return dirs


def build_vllm_tiny_models(path: str | Path, seed: int = 0) -> dict[str, Path]:
    """`build_tiny_models` with 2 attention heads of 32 dimensions: vLLM's CPU attention needs ``head_dim >= 32``
    (the default tiny models have 16, and every benchmark and the demo depend on them)."""
    return build_tiny_models(path, seed=seed, num_heads=2)


def load_tiny_models(dirs: dict[str, Path]) -> dict[str, torch.nn.Module | PreTrainedTokenizerFast]:
    """Load fresh copies of what :func:`build_tiny_models` saved, through ``from_pretrained``."""
    return {
        "tokenizer": AutoTokenizer.from_pretrained(dirs["tokenizer"]),
        "policy": AutoModelForCausalLM.from_pretrained(dirs["policy"]),
        "ref_policy": AutoModelForCausalLM.from_pretrained(dirs["policy"]),
        "reward_model": AutoModelForSequenceClassification.from_pretrained(dirs["reward"], num_labels=1),
        "value_model": AutoModelForSequenceClassification.from_pretrained(dirs["reward"], num_labels=1),
    }


def tiny_trainer(models: dict, args, train_dataset, trainer_cls: type | None = None, **kwargs):
    """A PPO trainer on models loaded by `load_tiny_models` (demo, tests and benchmarks build theirs here).

    Policy, reference and value model come from ``models``; ``kwargs`` add or replace constructor
    arguments (``reward_funcs``, ``reward_model``, ``eval_dataset``, ``callbacks``...). ``trainer_cls``
    defaults to `trl_replay_ppo.ReplayPPOTrainer` (stock TRL's ``PPOTrainer`` takes the same arguments).
    """
    trainer_cls = trainer_cls or ReplayPPOTrainer
    constructor = {"model": models["policy"], "ref_model": models["ref_policy"], "value_model": models["value_model"]}
    constructor.update(kwargs)
    return trainer_cls(args=args, processing_class=models["tokenizer"], train_dataset=train_dataset, **constructor)
