"""One run owns an output directory: an exclusive lock for the whole of ``train()``, and a fresh run never starts
over another run's checkpoints (it would overwrite or rotate them away).

The main process decides (it is the one that writes checkpoints and logs) and every rank raises the
same `OutputDirInUseError`, so no rank is left waiting in a collective.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path
from typing import IO

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from trl_replay_ppo.checkpointing.directories import complete_checkpoints

LOCK_FILE = ".trl_replay_ppo.lock"


class OutputDirInUseError(RuntimeError):
    """Another run holds the output directory, or left checkpoints in it that this run would overwrite."""


class OutputDirLock:
    """An exclusive ``flock`` on ``output_dir/.trl_replay_ppo.lock``, which names its holder (host, pid, start)."""

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / LOCK_FILE
        self.handle: IO[str] | None = None

    def acquire(self) -> str | None:
        """Take the lock (the file is not written yet: `announce`): None when taken, else the holder's line."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "a process that has not written its name yet"
            handle.close()
            return holder
        self.handle = handle
        return None

    def announce(self) -> None:
        """Write this process as the holder (host, pid, start time) into the held lock file."""
        if self.handle is None:
            raise RuntimeError("OutputDirLock.announce() needs the lock: call acquire() first.")
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(
            f"host {socket.gethostname()}, pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
        )
        self.handle.flush()

    def release(self) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None


def claim_output_dir(accelerator: Accelerator, output_dir: str, *, resuming: bool, saves: bool) -> OutputDirLock:
    """Lock ``output_dir`` for this run (main process), or raise `OutputDirInUseError` on every rank.

    A fresh run that saves checkpoints is refused when the directory already holds complete ones:
    they belong to another run, which it would overwrite at its first colliding save.
    """
    lock = OutputDirLock(output_dir)
    problem: str | None = None
    if accelerator.is_main_process:
        holder = lock.acquire()
        found = complete_checkpoints(output_dir) if saves and not resuming else []
        if holder is not None:
            problem = (
                f"{output_dir} is in use by another run ({holder}); let it finish or choose another `output_dir`."
            )
        elif found:
            lock.release()
            names = ", ".join(path.name for path in found[:5])
            problem = (
                f"{output_dir} holds checkpoints of another run ({names}); this run would overwrite or rotate them "
                "away. Continue that run with `resume_from_checkpoint=True`, or choose another `output_dir`."
            )
        else:
            lock.announce()
    decision = broadcast_object_list([problem])  # a no-op on one process
    if decision[0] is not None:
        raise OutputDirInUseError(decision[0])
    return lock
