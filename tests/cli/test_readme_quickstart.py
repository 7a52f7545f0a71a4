"""The README's Quickstart, executed as written on the tiny model (Hub ids and the GSM8K download replaced by local
files, responses shortened to fit its position table), so the snippet cannot drift from the API."""

from __future__ import annotations

import re
import shutil

import datasets
from datasets import Dataset

from tests.cli.test_cli import GSM8K_ROWS
from tests.helpers import ROOT


def quickstart() -> str:
    section = (ROOT / "README.md").read_text().split("## Quickstart (Python)", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_quickstart_runs_on_the_tiny_model(tmp_path, tiny_dirs, tiny, monkeypatch):
    policy = tmp_path / "policy"
    shutil.copytree(tiny_dirs["policy"], policy)
    tiny["tokenizer"].save_pretrained(policy)
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: Dataset.from_list(GSM8K_ROWS * 4))
    monkeypatch.chdir(tmp_path)
    code = quickstart()
    for hub_only, local in (('"Qwen/Qwen3-0.6B"', repr(str(policy))), ("response_length=256", "response_length=8")):
        assert hub_only in code
        code = code.replace(hub_only, local)
    namespace: dict = {}
    exec(compile(code, "README.md:Quickstart", "exec"), namespace)
    trainer = namespace["trainer"]
    assert trainer.state.global_step == 3  # 3 epochs of 16 prompts, 16 per update
    assert trainer.args.use_cpu and not trainer.args.bf16 and trainer.args.activation_checkpointing
