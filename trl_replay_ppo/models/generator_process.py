"""`GeneratorProcess`: a copy of the policy that samples rollouts in a second process while the trainer trains.

The copy's weights live in shared memory: the trainer writes its trainable weights into them between two
batches (`push`, while the process is idle), so nothing is serialised per update. The process samples
exactly as the trainer's own ``generate`` path does (`batch_generation`, the processed logits' log-probs),
seeded per update (`sampling_seed`), so the batch of an update is the same whenever it is generated again.

The process is started with ``spawn`` (a forked copy of a process running torch's thread pools can hang),
so a script that trains with it must guard its entry point with ``if __name__ == "__main__":``, as
PyTorch's DataLoader workers already ask. Messages are tensors and strings between the trainer and its own
process, never a file.

Shapes: B prompts, Lq prompt tokens (left-padded), R response tokens, V vocabulary.
"""

from __future__ import annotations

import copy
import hashlib
import traceback
from typing import Any

import torch
from transformers import GenerationConfig

from trl_replay_ppo.models.forwards import sampled_logprobs
from trl_replay_ppo.models.generation import batch_generation


def sampling_seed(seed: int, update: int, rank: int) -> int:
    """The torch seed rank ``rank``'s generator samples update ``update``'s batch with: the same for every resume."""
    return int.from_bytes(hashlib.sha256(f"ahead:{seed}:{update}:{rank}".encode()).digest()[:8], "little") >> 1


def sample_batch(
    policy: torch.nn.Module, queries: torch.Tensor, settings: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, Lq + R) sampled ids and (B, R) behaviour log-probs of ``queries`` under ``policy`` (`GeneratorProcess`)."""
    torch.manual_seed(sampling_seed(settings["seed"], settings["update"], settings["rank"]))
    chunk, context_length = settings["chunk"], queries.shape[1]
    config = GenerationConfig(**settings["generation_kwargs"])
    query_responses, logits = batch_generation(policy, queries, chunk, settings["pad_token_id"], config)
    return query_responses, sampled_logprobs(logits, query_responses[:, context_length:], chunk)


def serve(connection: Any, policy: torch.nn.Module, threads: int) -> None:
    """The generator process: answer each ``(queries, settings)`` with ``("ok", ids, log-probs)`` until ``None``."""
    torch.set_num_threads(threads)
    policy.eval()
    while (request := connection.recv()) is not None:
        queries, settings = request
        try:
            with torch.no_grad():
                connection.send(("ok", *sample_batch(policy, queries, settings)))
        except Exception:  # the trainer raises it, with this traceback
            connection.send(("error", traceback.format_exc()[-3000:]))


class GeneratorProcess:
    """A second process holding a shared-memory copy of the policy; one batch in flight at a time.

    Args:
        policy: the unwrapped policy (CPU); copied here, into shared memory when the process starts.
        pad_token_id: the tokenizer's pad token (prompts are left-padded with it).
        generation_kwargs: the sampling settings (`ModelRunner.generation_kwargs`).
        chunk: prompts per ``generate`` call (``local_rollout_forward_batch_size``).
        seed: the run's seed (`sampling_seed`).
        rank: the training process's index (`sampling_seed`).
        threads: torch threads of the generator process.
    """

    def __init__(
        self,
        policy: torch.nn.Module,
        *,
        pad_token_id: int,
        generation_kwargs: dict[str, Any],
        chunk: int,
        seed: int,
        rank: int = 0,
        threads: int,
    ):
        # Copied now, before the policy has run: a module that has run forwards may carry hooks that cannot be
        # pickled into the process; its trainable weights are pushed before every batch anyway.
        self.replica = copy.deepcopy(policy).eval()
        self.settings = {
            "pad_token_id": pad_token_id,
            "generation_kwargs": generation_kwargs,
            "chunk": chunk,
            "seed": seed,
            "rank": rank,
        }
        self.threads = threads
        self.process: Any = None
        self.connection: Any = None
        self.shared: dict[str, torch.Tensor] = {}
        self.in_flight: int | None = None  # the update whose batch is being generated

    def start(self) -> None:
        """Copy the policy into shared memory and start the process (once)."""
        if self.process is not None:
            return
        self.replica.share_memory()
        self.shared = dict(self.replica.named_parameters())
        context = torch.multiprocessing.get_context("spawn")
        self.connection, child = context.Pipe()
        self.process = context.Process(target=serve, args=(child, self.replica, self.threads), daemon=True)
        self.process.start()
        child.close()

    def push(self, policy: torch.nn.Module) -> None:
        """Copy ``policy``'s trainable weights into the generator's copy (no batch may be in flight)."""
        assert self.in_flight is None, "weights pushed while a batch is being generated"
        self.start()
        with torch.no_grad():
            for name, param in policy.named_parameters():
                if param.requires_grad:
                    self.shared[name].copy_(param)

    def submit(self, queries: torch.Tensor, update: int) -> None:
        """Start sampling (B, Lq) ``queries`` as update ``update``'s batch; returns at once."""
        assert self.process is not None and self.in_flight is None, "submitted before `push`, or twice"
        self.connection.send((queries.cpu(), {**self.settings, "update": update}))
        self.in_flight = update

    def collect(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Wait for the batch in flight: (B, Lq + R) ids and (B, R) behaviour log-probs."""
        assert self.in_flight is not None, "nothing was submitted"
        try:
            reply = self.connection.recv()
        except EOFError as error:
            raise RuntimeError(
                f"The generator process (`generate_ahead`) exited with code {self.process.exitcode} while sampling "
                f"update {self.in_flight}'s batch."
            ) from error
        self.in_flight = None
        if reply[0] == "error":
            raise RuntimeError(f"The generator process (`generate_ahead`) failed:\n{reply[1]}")
        return reply[1], reply[2]

    def close(self) -> None:
        """Stop the process (a batch in flight is dropped)."""
        if self.process is None:
            return
        if self.process.is_alive():
            try:
                if self.in_flight is not None:
                    self.connection.recv()
                self.connection.send(None)
            except (BrokenPipeError, EOFError, OSError):
                pass
            self.process.join(timeout=30)
            if self.process.is_alive():
                self.process.kill()
        self.connection.close()
        self.process = self.connection = None
        self.in_flight = None
