"""One rank of `test_vllm_two_processes`: train with a colocated vLLM engine, save the weights this rank holds."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from safetensors.torch import save_file


def main() -> None:
    from tests.models.vllm_helpers import vllm_trainer
    from trl_replay_ppo.tasks.tiny import build_vllm_tiny_models, load_tiny_models

    # Each rank builds the (seeded, identical) models in a folder of its own: two ranks saving into one folder at
    # once can each read the other's half-written files.
    models_dir = Path(sys.argv[1]) / f"models-rank{os.environ['RANK']}"
    trainer = vllm_trainer(Path(sys.argv[1]), models=load_tiny_models(build_vllm_tiny_models(models_dir)))
    trainer.train()
    rank = trainer.accelerator.process_index
    weights = {name: p.detach().contiguous() for name, p in trainer.trainable_parameters().items()}
    save_file(weights, Path(sys.argv[1]) / f"weights_rank{rank}.safetensors")
    (Path(sys.argv[1]) / f"metrics_rank{rank}.json").write_text(json.dumps(trainer.collector.last_metrics))


if __name__ == "__main__":
    main()
