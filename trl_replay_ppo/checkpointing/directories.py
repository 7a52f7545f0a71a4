"""Checkpoint directories in ``output_dir``: finding them, choosing the one to resume from, replacing one whole.

Every checkpoint is stamped (`Stamp`, from ``ppo_state.json``) with the run and the line of training
that wrote it; which checkpoints a run may rotate away is `trl_replay_ppo.checkpointing.lineage`'s
business. Nothing here deletes a damaged checkpoint: resuming skips it, says why, and leaves it for
inspection.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trl_replay_ppo.checkpointing.state_files import StateFileError

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
REQUIRED_FILES = (
    "trainable_params.safetensors",
    "optimizer.safetensors",
    "scheduler.safetensors",
    "trainer_state.json",
    "ppo_state.json",
    "rank_0.safetensors",
)
PICKLE_FORMAT_FILES = ("optimizer.pt", "scheduler.pt", "rank_0.pt")


class CheckpointFormatError(ValueError):
    """A checkpoint this version cannot load: damaged, not this package's, or in the refused pickle format."""


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / f"checkpoint-{step}"


def is_complete(path: Path) -> bool:
    return path.is_dir() and all((path / name).is_file() for name in REQUIRED_FILES)


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """Every complete ``checkpoint-N`` of ``output_dir``, newest (largest N) first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    steps = sorted((int(m.group(1)) for p in root.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name))), reverse=True)
    return [checkpoint_dir(root, s) for s in steps if is_complete(checkpoint_dir(root, s))]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The checkpoint ``resume_from_checkpoint=True`` tries first (`resume_order`), or None."""
    found = resume_order(output_dir)
    return found[0] if found else None


def check_not_pickle_format(path: Path) -> None:
    """Refuse a checkpoint written in the pickle format (format 1), without opening any of its files."""
    legacy = [name for name in PICKLE_FORMAT_FILES if (path / name).exists()]
    if legacy and not is_complete(path):
        raise CheckpointFormatError(
            f"{path} is a checkpoint in the pickle format of trl_replay_ppo < 0.2 ({', '.join(legacy)}). This version "
            "refuses to load it: unpickling a file can run arbitrary code. Resume it with the version that wrote it, "
            "or start a new run from its `policy/` weights (safetensors)."
        )


@dataclass(frozen=True)
class Stamp:
    """Who wrote a checkpoint (``ppo_state.json``): the run, its line of training and that line's generation."""

    run_id: str
    lineage: str
    generation: int
    step: int


def stamp_of(path: Path) -> Stamp | None:
    """The stamp of a checkpoint directory (None when its ``ppo_state.json`` cannot be read)."""
    named = CHECKPOINT_PATTERN.match(path.name)
    try:
        state = json.loads((path / "ppo_state.json").read_text())
        lineage = state["lineage"]
        return Stamp(str(state["run_id"]), str(lineage["id"]), int(lineage["generation"]), int(named.group(1)))
    except (OSError, ValueError, RecursionError, KeyError, TypeError, AttributeError):
        return None


def resume_order(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in the order ``resume_from_checkpoint=True`` tries them: the newest line of training
    (`trl_replay_ppo.checkpointing.lineage`) first, newest update first within it; unreadable ones last."""
    stamps = {path: stamp_of(path) for path in complete_checkpoints(output_dir)}
    rank = {path: (1, s.generation, s.step) if s else (0, 0, 0) for path, s in stamps.items()}
    return sorted(stamps, key=lambda path: rank[path], reverse=True)


def resolve_checkpoint(resume_from_checkpoint: bool | str | os.PathLike, output_dir: str, read: Callable) -> Any:
    """The checkpoint to resume from, read by ``read(path)``; returns what ``read`` returns.

    With True: the newest complete checkpoint of ``output_dir`` that reads; damaged ones are skipped
    with a warning naming them and why (never deleted). With a path: that checkpoint, or an error
    naming the damaged file and the newest intact checkpoint of its directory.
    """
    if resume_from_checkpoint is True:
        candidates = resume_order(output_dir)
        if not candidates:
            root = Path(output_dir)
            for candidate in sorted(root.glob("checkpoint-*")) if root.is_dir() else []:
                check_not_pickle_format(candidate)
            raise FileNotFoundError(
                f"`resume_from_checkpoint=True` but {output_dir} holds no complete checkpoint-N directory."
            )
        skipped = []
        for path in candidates:
            try:
                contents = read(path)
            except CheckpointFormatError:
                raise
            except ValueError as damaged:  # a damaged file (StateFileError): try the next older one
                if not _is_damage(damaged):
                    raise
                skipped.append(f"{path.name} ({damaged})")
                continue
            if skipped:
                logger.warning("Resuming from %s; skipped damaged checkpoints: %s.", path, "; ".join(skipped))
            return contents
        raise ValueError(f"No checkpoint of {output_dir} can be loaded: {'; '.join(skipped)}.")
    path = Path(resume_from_checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"`resume_from_checkpoint`: {path} does not exist.")
    check_not_pickle_format(path)
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise ValueError(
            f"`resume_from_checkpoint`: {path} is not a complete checkpoint of this trainer (missing {missing})."
        )
    try:
        return read(path)
    except ValueError as damaged:
        if not _is_damage(damaged):
            raise
        intact = _newest_intact(path.parent, read, exclude=path)
        hint = f"The newest intact checkpoint there is {intact}." if intact else "No other checkpoint there is intact."
        raise type(damaged)(f"{damaged} {hint}") from damaged


def _is_damage(error: ValueError) -> bool:
    return isinstance(error, StateFileError)


def _newest_intact(output_dir: Path, read: Callable, exclude: Path) -> Path | None:
    for path in resume_order(output_dir):
        if path == exclude:
            continue
        try:
            read(path)
        except ValueError:
            continue
        return path
    return None


RENAME_EXCHANGE = 2  # renameat2(2) flag: swap two paths in one step
AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap the directories ``a`` and ``b`` atomically (Linux ``renameat2``); False where unsupported."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # a filesystem without exchange
        return False
    raise OSError(error, os.strerror(error), str(b))


def replace_directory(new: Path, target: Path) -> None:
    """Put the complete directory ``new`` at ``target``; an existing ``target`` stays whole until it is replaced.

    With an existing ``target`` the two are exchanged in one step (so at every instant a complete
    ``target`` exists) and the old copy, now at ``new``, is removed. Where the filesystem cannot
    exchange, the old copy is moved aside to ``old-<name>`` first and removed last.
    """
    if not target.exists():
        os.replace(new, target)
        return
    if _exchange(new, target):
        shutil.rmtree(new)
        return
    aside = target.with_name("old-" + target.name)
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(target, aside)
    os.replace(new, target)
    shutil.rmtree(aside)
