"""One rank of `test_vllm_two_processes`: train with a colocated vLLM engine, save the weights this rank holds."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from safetensors.torch import save_file


def main() -> None:
    from tests.models.vllm_helpers import vllm_trainer

    trainer = vllm_trainer(Path(sys.argv[1]))
    trainer.train()
    rank = trainer.accelerator.process_index
    weights = {name: p.detach().contiguous() for name, p in trainer.trainable_parameters().items()}
    save_file(weights, Path(sys.argv[1]) / f"weights_rank{rank}.safetensors")
    (Path(sys.argv[1]) / f"metrics_rank{rank}.json").write_text(json.dumps(trainer.collector.last_metrics))


if __name__ == "__main__":
    main()
