"""Helpers shared by the tests."""

from __future__ import annotations

import random

import numpy as np
import torch
from datasets import Dataset


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def tokenized_prompts(tokenizer, texts: list[str]) -> Dataset:
    return Dataset.from_dict({"input_ids": [tokenizer(t)["input_ids"] for t in texts]})


def digit_prompts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice("0123456789") for _ in range(rng.randint(2, 5))) + "=" for _ in range(n)]
