"""A sparse, exact-answer task shaped like GSM8K: two-digit additions answered with a number.

A prompt is ``"Q: 23+41="``; the completion should be the answer's digits, then eos (``"64"``).
The reward is 1 for the exact answer, `FORMAT_CREDIT` for any other well-formed answer (1-3
digits), 0 otherwise: a GSM8K accuracy reward plus a small format reward.

The policy starts from a *base model* (`build_arithmetic_models`) that knows the format but not
the facts: it was fitted to answer each training problem with a guess of the right shape (each
answer digit drawn from the values it can take given the operand digits), as a small language
model writes a plausible number. It is right 2-5% of the time, so successes are rare and worth
reusing. Problems never carry or borrow, so every answer digit is one single-digit fact: a policy
that learns the facts on the training problems can answer the disjoint evaluation problems, which
combine the same facts differently (replay that only memorises training prompts does not).

`SPARSE` (two-digit additions, digits up to 4) is the benchmark task; `HELD_OUT` (three-digit
additions, digits up to 2: other numbers, longer answers, the base model right about 4% of the
time as on `SPARSE`) is its held-out variant, never used to tune anything.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from trl_replay_ppo.tasks.rule_reward import RuleRewardModel
from trl_replay_ppo.tasks.tiny import build_tiny_models, load_tiny_models

FORMAT_CREDIT = 0.1
_PROMPT = re.compile(r"Q: (\d+)([+-])(\d+)=")
_WELL_FORMED = re.compile(r"\d{1,3}")


def digits_of(number: int, length: int) -> list[int]:
    """The ``length`` decimal digits of ``number``, most significant first (zero-padded)."""
    return [number // 10**i % 10 for i in reversed(range(length))]


@dataclass(frozen=True)
class ArithmeticTask:
    """Problems ``a <op> b`` of ``length``-digit numbers with digits up to ``max_digit``, without carry or borrow.

    ``guess_span`` bounds the base model's guess of an addition digit (see `prior_answer`).
    """

    operation: str = "+"
    max_digit: int = 9
    guess_span: int = 9
    length: int = 2
    eval_fraction: float = 0.2
    split_seed: int = 0

    def problems(self) -> list[tuple[int, int]]:
        """Every ``(a, b)`` of the task, in a fixed order."""
        digit_ok = (lambda x, y: x + y <= 9) if self.operation == "+" else (lambda x, y: x >= y)
        low = 10 ** (self.length - 1)
        numbers = [n for n in range(low, 10 * low) if max(digits_of(n, self.length)) <= self.max_digit]
        return [
            (a, b)
            for a in numbers
            for b in numbers
            if all(digit_ok(x, y) for x, y in zip(digits_of(a, self.length), digits_of(b, self.length), strict=True))
        ]

    def split(self) -> dict[str, list[tuple[int, int]]]:
        """Disjoint ``train`` and ``eval`` problems: a fixed shuffle of every problem, cut at ``eval_fraction``."""
        problems = self.problems()
        random.Random(self.split_seed).shuffle(problems)
        num_eval = int(len(problems) * self.eval_fraction)
        return {"eval": problems[:num_eval], "train": problems[num_eval:]}

    def dataset(self, split: str, size: int | None = None) -> Dataset:
        """Prompts ``"Q: a<op>b="`` with an ``answer`` column (the number as text); the first ``size`` if given."""
        rows = self.split()[split][:size]
        return Dataset.from_dict(
            {
                "prompt": [f"Q: {a}{self.operation}{b}=" for a, b in rows],
                "answer": [str(solve(a, self.operation, b)) for a, b in rows],
            }
        )

    def prior_answer(self, a: int, b: int, rng: random.Random) -> int:
        """A guess of the right shape: each answer digit uniform over values the true digit can take.

        A digit of a sum is at least the larger operand digit (and at most ``guess_span`` above it
        here); a digit of a difference is at most the first operand's.
        """
        answer = 0
        for x, y in zip(digits_of(a, self.length), digits_of(b, self.length), strict=True):
            if self.operation == "+":
                digit = rng.randint(max(x, y), min(9, max(x, y) + self.guess_span))
            else:
                digit = rng.randint(0, x)
            answer = 10 * answer + digit
        return answer


SPARSE = ArithmeticTask("+", max_digit=4, guess_span=4)
HELD_OUT = ArithmeticTask("+", max_digit=2, guess_span=2, length=3)


def solve(a: int, operation: str, b: int) -> int:
    return a + b if operation == "+" else a - b


def score_answer(completion: str, answer: str) -> float:
    """1.0 for the exact answer, `FORMAT_CREDIT` for another well-formed number, 0.0 otherwise."""
    text = completion.strip()
    if text == answer:
        return 1.0
    return FORMAT_CREDIT if _WELL_FORMED.fullmatch(text) else 0.0


def arithmetic_reward(prompts: list, completions: list, answer: list[str], **kwargs) -> list[float]:
    """Reward function in TRL's GRPO style; ``answer`` is the dataset's column."""
    return [score_answer(c, a) for c, a in zip(completions, answer, strict=True)]


def answer_of_prompt(prompt: str) -> str | None:
    """The answer of a prompt written ``"Q: a<op>b="`` (None when it is not one)."""
    match = _PROMPT.search(prompt)
    if match is None:
        return None
    return str(solve(int(match.group(1)), match.group(2), int(match.group(3))))


class ArithmeticRewardModel(RuleRewardModel):
    """The arithmetic reward as a parameter-free reward model (`RuleRewardModel`), usable by stock TRL PPO.

    It reads the problem from the prompt, so it needs no ``answer`` column.
    """

    def score_text(self, text: str) -> float:
        prompt, separator, completion = text.partition("=")
        answer = answer_of_prompt(prompt + separator)
        return score_answer(completion, answer) if answer is not None else 0.0


def pretrain_answer_prior(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: tuple[ArithmeticTask, ...] = (SPARSE, HELD_OUT),
    steps: int = 600,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    seed: int = 0,
) -> PreTrainedModel:
    """Fit ``model`` to answer the training problems of ``tasks`` with `ArithmeticTask.prior_answer`, then eos.

    The loss is on the answer tokens only. The answers are guesses, so the model learns the format
    and which operand digits bound each answer digit, not the facts.
    """
    rng = random.Random(seed)
    torch.manual_seed(seed)
    problems = [(task, a, b) for task in tasks for a, b in task.split()["train"]]
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    model.train()
    for _ in range(steps):
        prompts, answers = [], []
        for task, a, b in rng.sample(problems, batch_size):
            prompts.append(tokenizer(f"Q: {a}{task.operation}{b}=")["input_ids"])
            answers.append(tokenizer(str(task.prior_answer(a, b, rng)))["input_ids"] + [tokenizer.eos_token_id])
        length = max(len(p) + len(r) for p, r in zip(prompts, answers, strict=True))
        input_ids = torch.full((batch_size, length), tokenizer.pad_token_id)
        labels = torch.full((batch_size, length), -100)
        for i, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
            input_ids[i, : len(prompt) + len(answer)] = torch.tensor(prompt + answer)
            labels[i, len(prompt) : len(prompt) + len(answer)] = torch.tensor(answer)
        loss = model(input_ids=input_ids, attention_mask=input_ids != tokenizer.pad_token_id, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return model


def build_arithmetic_models(path: str | Path, seed: int = 0) -> dict[str, Path]:
    """`build_tiny_models`, with the policy replaced by the arithmetic base model (saved with ``save_pretrained``)."""
    dirs = build_tiny_models(path, seed=seed)
    models = load_tiny_models(dirs)
    policy = pretrain_answer_prior(models["policy"], models["tokenizer"], seed=seed)
    policy.save_pretrained(dirs["policy"])
    return dirs
