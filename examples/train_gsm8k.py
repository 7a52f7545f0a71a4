"""GSM8K with Qwen3-0.6B through the Python API: LoRA, shared value head, bf16, replay, evaluation.

    python examples/train_gsm8k.py                                   # Qwen/Qwen3-0.6B, openai/gsm8k (downloads)
    python examples/train_gsm8k.py --model ./my-model --data ./gsm8k.jsonl --max_steps 20

Fits a 16 GB GPU (see benchmarks/results/memory.md). On several GPUs:
    accelerate launch --config_file trl_replay_ppo/cli/examples/accelerate/ddp.yaml examples/train_gsm8k.py
"""

import argparse

import torch
from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_replay_ppo import ReplayPPOConfig, ReplayPPOTrainer
from trl_replay_ppo.rewards import format_reward, gsm8k_accuracy


def load_gsm8k(data: str, split: str):
    """GSM8K from the hub, or a local JSONL file with the same `question`/`answer` fields."""
    if data.endswith(".jsonl"):
        dataset = load_dataset("json", data_files={split: data}, split=split)
    else:
        dataset = load_dataset(data, "main", split=split)
    # Chat prompts: the tokenizer's chat template is applied with the generation prompt.
    return dataset.map(
        lambda row: {"prompt": [{"role": "user", "content": row["question"] + "\nEnd with '#### <number>'."}]},
        remove_columns=["question"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="Qwen/Qwen3-0.6B")
    parser.add_argument("--data", default="openai/gsm8k", help="Hub dataset or a local .jsonl file.")
    parser.add_argument("--output_dir", default="outputs/gsm8k-python-api")
    parser.add_argument("--max_steps", type=int, default=-1, help="Updates to run (-1: one epoch).")
    parser.add_argument("--response_length", type=int, default=256)
    options = parser.parse_args()

    gpu = torch.cuda.is_available()
    args = ReplayPPOConfig(
        output_dir=options.output_dir,
        bf16=gpu,
        use_cpu=not gpu,
        gradient_checkpointing=True,
        shared_value_head=True,  # the critic is a head on the policy's backbone
        per_device_train_batch_size=4,
        gradient_accumulation_steps=4,
        per_device_eval_batch_size=16,
        num_ppo_epochs=2,
        learning_rate=1e-5,
        response_length=options.response_length,
        max_prompt_length=256,
        temperature=0.7,
        stop_token="eos",
        chat_template_kwargs={"enable_thinking": False},
        reward_weights=[1.0, 0.2],
        replay_ratio=3,
        min_replay_size=64,
        eval_strategy="steps",
        eval_steps=50,
        save_strategy="steps",
        save_steps=50,
        report_to="none",
    )
    if options.max_steps > 0:
        args.total_episodes = options.max_steps * args.per_device_train_batch_size * args.gradient_accumulation_steps
    tokenizer = AutoTokenizer.from_pretrained(options.model, padding_side="left")
    policy = AutoModelForCausalLM.from_pretrained(options.model, dtype=torch.bfloat16 if gpu else torch.float32)
    trainer = ReplayPPOTrainer(
        args=args,
        processing_class=tokenizer,
        model=policy,
        ref_model=None,  # LoRA: the reference is the policy with its adapter disabled
        value_model=None,
        reward_funcs=[gsm8k_accuracy, format_reward],  # the dataset's `answer` column reaches them
        train_dataset=load_gsm8k(options.data, "train"),
        eval_dataset=load_gsm8k(options.data, "test" if not options.data.endswith(".jsonl") else "train"),
        peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    print("before:", trainer.evaluate())
    trainer.train()
    print("after:", trainer.evaluate())
    trainer.save_model(options.output_dir)


if __name__ == "__main__":
    main()
