"""Word arithmetic in GSM8K's format: one-step story problems a small instruction-tuned model can partly do.

A row is GSM8K-shaped: ``question`` ("Mia has 23 shells and gets 14 more. How many shells does Mia have
now?"), ``answer`` (``"#### 37"``) and ``prompt``, the question as a chat message that asks for the
``#### <number>`` line, so `gsm8k_accuracy` (exact answer) and `format_reward` score completions as on
GSM8K. Problems are additions and subtractions of numbers 2-39 and products of one-digit numbers.
SmolLM2-135M-Instruct answers about 40% of them right when greedy and rarely writes the ``####`` line.
"""

from __future__ import annotations

import random

from datasets import Dataset

INSTRUCTION = "End your reply with the line '#### <number>'."
_NAMES = ("Tom", "Ana", "Sam", "Mia", "Leo", "Zoe", "Ben", "Ivy")
_ITEMS = ("apples", "books", "coins", "pens", "cards", "shells", "stamps", "marbles")


def word_problem(rng: random.Random) -> tuple[str, int]:
    """One ``(question, answer)`` drawn with ``rng``."""
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    kind = rng.choice(("add", "subtract", "multiply"))
    if kind == "add":
        a, b = rng.randint(2, 39), rng.randint(2, 39)
        return f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?", a + b
    if kind == "subtract":
        a, b = sorted((rng.randint(2, 39), rng.randint(2, 39)), reverse=True)
        return f"{name} has {a} {item} and gives away {b}. How many {item} are left?", a - b
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    return f"{name} has {a} bags with {b} {item} in each bag. How many {item} are there in total?", a * b


def word_arithmetic(num_train: int, num_eval: int, seed: int = 0) -> dict[str, Dataset]:
    """Disjoint ``train`` and ``eval`` datasets of distinct questions (``question``, ``answer``, ``prompt``)."""
    rng, seen = random.Random(seed), set()
    rows: list[dict] = []
    while len(rows) < num_train + num_eval:
        question, answer = word_problem(rng)
        if question not in seen:
            seen.add(question)
            rows.append(
                {
                    "question": question,
                    "answer": f"#### {answer}",
                    "prompt": [{"role": "user", "content": f"{question} {INSTRUCTION}"}],
                }
            )
    return {"train": Dataset.from_list(rows[:num_train]), "eval": Dataset.from_list(rows[num_train:])}
