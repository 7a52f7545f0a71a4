"""`trl-replay-ppo train`: a run from a YAML config or flags, with models and data loaded by `from_pretrained` and
`load_dataset`; `trl-replay-ppo config-reference`.

trl-replay-ppo train --config examples/configs/gsm8k_qwen3_0.6b_lora.yaml
accelerate launch --config_file examples/accelerate/ddp.yaml -m trl_replay_ppo train --config ...
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import torch
from datasets import load_dataset
from datasets.exceptions import DatasetGenerationError
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
from trl import ModelConfig, TrlParser, get_peft_config

from trl_replay_ppo.cli.config_file import check_config_file, config_path
from trl_replay_ppo.rewards.builtin import REWARD_FUNCTIONS
from trl_replay_ppo.tasks.digits import digits_reward
from trl_replay_ppo.trainer.base import PPOConfig
from trl_replay_ppo.trainer.config import ReplayPPOConfig
from trl_replay_ppo.trainer.driver import ReplayPPOTrainer

LOCAL_DATA_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass
class ScriptArguments:
    """What `trl-replay-ppo train` loads, besides the models of `ModelConfig` and the `ReplayPPOConfig`."""

    dataset_name: str = field(
        metadata={"help": "Hub dataset name, local dataset directory, or a local .json/.jsonl/.csv/.parquet file."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name (e.g. 'main')."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str | None = field(
        default=None, metadata={"help": "Split to evaluate on (needed by `eval_strategy`)."}
    )
    prompt_column: str = field(
        default="prompt", metadata={"help": "Column holding the prompts (e.g. 'question' for GSM8K)."}
    )
    apply_chat_template: bool = field(
        default=False,
        metadata={"help": "Wrap each text prompt as a user message, so the tokenizer's chat template is applied."},
    )
    reward_funcs: list[str] = field(
        default_factory=list,
        metadata={"help": "Reward functions: 'gsm8k_accuracy', 'format', 'digits', or 'package.module:function'."},
    )
    value_model_path: str | None = field(
        default=None,
        metadata={"help": "Value model checkpoint (a 1-label sequence classifier); defaults to the policy's."},
    )

    def __post_init__(self) -> None:
        if isinstance(self.reward_funcs, str):  # `reward_funcs: format` in a YAML file: one function, not letters
            self.reward_funcs = [self.reward_funcs]


def builtin_reward_funcs() -> dict:
    return {**REWARD_FUNCTIONS, "digits": digits_reward}


def resolve_reward_func(name: str):
    """A reward function by name: a built-in one, or ``package.module:function``."""
    builtins = builtin_reward_funcs()
    if name in builtins:
        return builtins[name]
    if ":" not in name:
        raise ValueError(
            f"Unknown reward function {name!r}: use one of {sorted(builtins)} or 'package.module:function'."
        )
    module_name, _, attribute = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"Reward function {name!r}: cannot import module {module_name!r} ({error}).") from error
    if not hasattr(module, attribute):
        raise ValueError(f"Reward function {name!r}: module {module_name!r} has no attribute {attribute!r}.")
    return getattr(module, attribute)


def resume_value(flag: str | bool | None) -> str | bool | None:
    """``--resume_from_checkpoint`` as `train()` takes it: "true" the newest checkpoint, "false" none, else a path."""
    if isinstance(flag, str) and flag.lower() in ("true", "false", "none", ""):
        return True if flag.lower() == "true" else None
    return flag


def load_prompts(script: ScriptArguments, split: str):
    """Load one split with `datasets.load_dataset` and name its prompt column ``prompt``."""
    suffix = Path(script.dataset_name).suffix
    if suffix in LOCAL_DATA_FORMATS and not Path(script.dataset_name).is_file():
        raise FileNotFoundError(f"`dataset_name`: {script.dataset_name} does not exist.")
    try:
        if suffix in LOCAL_DATA_FORMATS:
            data_files = {split: script.dataset_name}
            dataset = load_dataset(LOCAL_DATA_FORMATS[suffix], data_files=data_files, split=split)
        else:
            dataset = load_dataset(script.dataset_name, script.dataset_config, split=split)
    except DatasetGenerationError as error:
        cause = error.__cause__ or error
        raise ValueError(
            f"`dataset_name`: {script.dataset_name} could not be read ({type(cause).__name__}: {str(cause)[:200]}). "
            "Check that its files are complete (a truncated last line?) and valid."
        ) from error
    if script.prompt_column not in dataset.column_names:
        raise ValueError(
            f"`prompt_column={script.prompt_column!r}` is not a column of {script.dataset_name} ({split}); "
            f"its columns are {dataset.column_names}."
        )
    if script.prompt_column != "prompt":
        if "prompt" in dataset.column_names:
            dataset = dataset.remove_columns("prompt")
        dataset = dataset.rename_column(script.prompt_column, "prompt")
    if script.apply_chat_template:
        dataset = dataset.map(lambda row: {"prompt": [{"role": "user", "content": row["prompt"]}]})
    return dataset


def make_parser():
    return TrlParser((ScriptArguments, ReplayPPOConfig, ModelConfig), prog="trl-replay-ppo train")


def train(argv: list[str]) -> int:
    """Parse flags / ``--config file.yaml``, load models and data with `from_pretrained`/`load_dataset`, train."""
    if (config := config_path(argv)) is not None:
        check_config_file(config)  # TrlParser's yaml.safe_load expands aliases without bound, keeps duplicate keys
    script, args, model_args = make_parser().parse_args_and_config(argv)
    if not model_args.model_name_or_path:
        raise ValueError(
            "`model_name_or_path` is missing: set it in the YAML config or pass `--model_name_or_path` (a Hub id or "
            "a local directory)."
        )

    reward_funcs = [resolve_reward_func(name) for name in script.reward_funcs]
    train_dataset = load_prompts(script, script.dataset_train_split)
    eval_dataset = load_prompts(script, script.dataset_test_split) if script.dataset_test_split else None
    dtype = model_args.dtype if model_args.dtype in ("auto", None) else getattr(torch, model_args.dtype)
    remote_code = getattr(model_args, "trust_remote_code", False)  # dropped from ModelConfig in recent TRL
    load = {"trust_remote_code": remote_code, "dtype": dtype}
    if model_args.attn_implementation:
        load["attn_implementation"] = model_args.attn_implementation
    name = model_args.model_name_or_path
    tokenizer = AutoTokenizer.from_pretrained(name, padding_side="left", trust_remote_code=remote_code)

    def classifier(path: str | None) -> torch.nn.Module | None:
        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **load) if path else None

    models = {
        "model": AutoModelForCausalLM.from_pretrained(name, revision=model_args.model_revision, **load),
        "ref_model": None,  # a copy of the policy, or the policy with its adapter disabled
        "value_model": None if args.shared_value_head else classifier(script.value_model_path or name),
        "reward_model": classifier(args.reward_model_path),
    }
    trainer = ReplayPPOTrainer(
        args=args,
        processing_class=tokenizer,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        reward_funcs=reward_funcs,
        peft_config=get_peft_config(model_args),
        **models,
    )
    try:
        trainer.train(resume_from_checkpoint=resume_value(args.resume_from_checkpoint))
    except KeyboardInterrupt:
        if trainer.accelerator.is_main_process:
            print(
                f"\nInterrupted at update {trainer.state.global_step}. Add `--resume_from_checkpoint true` to the "
                f"same command to continue from the newest checkpoint in {args.output_dir} (one is written every "
                "`save_steps` updates).",
                file=sys.stderr,
            )
        return 130
    trainer.save_model(args.output_dir)
    if trainer.accelerator.is_main_process:
        print(f"policy saved to {args.output_dir}; metrics in {Path(args.output_dir) / 'metrics.jsonl'}")
    return 0


def config_reference() -> str:
    """Markdown table of the fields `ReplayPPOConfig` adds to (or re-defaults from) TRL's `PPOConfig`."""
    inherited = {f.name: f for f in fields(PPOConfig)}
    lines = ["| field | default | help |", "|---|---|---|"]
    for f in fields(ReplayPPOConfig):
        if f.name in inherited and f.default == inherited[f.name].default:
            continue
        default = f.default_factory() if f.default is MISSING else f.default
        help_text = f.metadata.get("help", "").replace("|", "\\|")
        lines.append(f"| `{f.name}` | `{default!r}` | {help_text} |")
    return "\n".join(lines) + "\n"


def show_config_reference(argv: list[str]) -> int:
    print(config_reference(), end="")
    return 0
