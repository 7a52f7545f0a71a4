"""Lineages: each line of training a run follows, so that a rollback never loses or confuses checkpoints.

A fresh run starts lineage 0 (its id is the run's id). Resuming from a checkpoint that is the newest
of its lineage in ``output_dir`` continues that lineage; resuming from an older one (a rollback) forks
a new lineage, one generation above the newest in ``output_dir``, which remembers where it left each
ancestor. Every checkpoint records its lineage (``ppo_state.json``), so:

- ``resume_from_checkpoint=True`` continues the newest lineage (highest generation, then update);
- rotation (``save_total_limit``) counts only the current line: its own checkpoints and its
  ancestors' up to the fork, never the checkpoint just written;
- checkpoints a rollback left behind are *abandoned*: named in a warning, never rotated, and moved
  to ``output_dir/abandoned/<lineage>/`` (not deleted) when a save of the new line needs their name.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trl_replay_ppo.checkpointing.directories import Stamp, complete_checkpoints, stamp_of

logger = logging.getLogger(__name__)

ABANDONED_DIR = "abandoned"
_WARNED_FOREIGN: set[tuple[str, str]] = set()  # (output_dir, run_id) already warned about others' checkpoints


@dataclass
class Lineage:
    """The line of training a trainer is on: ``ancestors`` maps each earlier lineage to the last update kept of it."""

    id: str
    generation: int = 0
    ancestors: dict[str, int] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        return {"id": self.id, "generation": self.generation, "ancestors": dict(self.ancestors)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Lineage:
        return cls(state["id"], int(state["generation"]), {k: int(v) for k, v in state["ancestors"].items()})

    def holds(self, stamp: Stamp, run_id: str) -> bool:
        """Whether the checkpoint of ``stamp`` belongs to this line of run ``run_id``."""
        if stamp.run_id != run_id:
            return False
        return stamp.lineage == self.id or stamp.step <= self.ancestors.get(stamp.lineage, -1)


def continue_or_fork(lineage: Lineage, run_id: str, resumed: Path, output_dir: str, step: int) -> Lineage:
    """The lineage a run resumed from ``resumed`` (at update ``step``, of ``lineage``) trains on.

    The same lineage when ``resumed`` is its newest checkpoint in ``output_dir``; otherwise a fork,
    with a warning naming the checkpoints it abandons. The fork's id is derived from where it starts,
    so every rank (and a retry of the same rollback) arrives at the same one.
    """
    stamps = [(path, stamp_of(path)) for path in complete_checkpoints(output_dir)]
    later = [path for path, s in stamps if s and s.run_id == run_id and s.lineage == lineage.id and s.step > step]
    if not later:
        return lineage
    generation = 1 + max(s.generation for _, s in stamps if s is not None)
    key = f"{lineage.id}:{step}:{generation}".encode()
    forked = Lineage(hashlib.sha256(key).hexdigest()[:32], generation, {**lineage.ancestors, lineage.id: step})
    logger.warning(
        "Resuming from %s, an earlier checkpoint of a run that went on to %s: training continues on a new line from "
        "there. The later checkpoints are kept, never rotated, and moved to %s/%s/%s/ if a save of this line needs "
        "their name; delete them when they are not needed.",
        resumed,
        ", ".join(sorted((p.name for p in later), key=lambda n: int(n.split("-")[1]))),
        output_dir,
        ABANDONED_DIR,
        lineage.id,
    )
    return forked


def move_aside(path: Path, output_dir: str | Path) -> Path:
    """Move a checkpoint that is not this line's out of a save's way, to ``abandoned/<lineage>/``; returns where."""
    stamp = stamp_of(path)
    folder = Path(output_dir) / ABANDONED_DIR / (stamp.lineage if stamp else "unknown")
    folder.mkdir(parents=True, exist_ok=True)
    target, n = folder / path.name, 1
    while target.exists():
        target, n = folder / f"{path.name}.{n}", n + 1
    os.replace(path, target)
    logger.warning("Moved %s (not of this line of training) to %s to save this line's checkpoint.", path, target)
    return target


def rotate_checkpoints(
    output_dir: str, limit: int | None, keep: list[str | None], lineage: Lineage, run_id: str
) -> None:
    """Keep the newest ``limit`` checkpoints of this line and those in ``keep`` (the one just written, the best);
    delete the rest of this line's. Abandoned checkpoints and other runs' are never touched."""
    if not limit or limit <= 0:
        return
    line, foreign = [], []
    for path in complete_checkpoints(output_dir):
        stamp = stamp_of(path)
        if stamp is not None and lineage.holds(stamp, run_id):
            line.append(path)
        elif stamp is not None and stamp.run_id != run_id:
            foreign.append(path)
    if foreign and (output_dir, run_id) not in _WARNED_FOREIGN:
        _WARNED_FOREIGN.add((output_dir, run_id))
        logger.warning(
            "%s also holds checkpoints this run did not write (%s); `save_total_limit` leaves them alone, delete "
            "them if they are not needed.",
            output_dir,
            ", ".join(p.name for p in foreign),
        )
    kept = set(line[:limit]) | {Path(path) for path in keep if path}
    for path in line:
        if path not in kept:
            shutil.rmtree(path, ignore_errors=True)
