"""Callbacks this package adds to TRL's set: a progress bar, ``metrics.jsonl`` and ``train.log``."""

from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from pathlib import Path

from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import EarlyStoppingCallback, ProgressCallback

PROGRESS_KEYS = {"objective/scores": "score", "objective/kl": "kl", "eval_reward": "eval"}
METRICS_FILE = "metrics.jsonl"
TEXT_LOG_FILE = "train.log"
LOGGERS = ("trl_replay_ppo", "transformers", "trl", "accelerate")
logger = logging.getLogger(__name__)


class RewardProgressCallback(ProgressCallback):
    """transformers' progress bar, showing score and KL on the bar instead of printing every log dict.

    Training logs update the bar's postfix; evaluation results are printed as one line.
    """

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.training_bar is None or not logs:
            return
        postfix = {short: f"{logs[key]:.3g}" for key, short in PROGRESS_KEYS.items() if key in logs}
        if postfix:
            self.training_bar.set_postfix(postfix, refresh=False)
        if any(key.startswith("eval_") for key in logs):
            shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in logs.items()}
            self.training_bar.write(f"step {state.global_step}: {shown}")


def is_eval_log(logs: dict) -> bool:
    return any(key.startswith("eval_") for key in logs)


def _unused_name(path: Path) -> Path:
    """``path``, or ``path`` with ``.1``, ``.2``... before its suffix: the first that does not exist."""
    candidate, number = path, 0
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.stem}.{number}{path.suffix}")
    return candidate


def _read_records(path: Path) -> tuple[list[tuple[str, dict]], list[str]]:
    """``([(line, record)], unreadable lines)`` of a metrics file: a record is a JSON object with a ``step``."""
    records, unreadable = [], []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append((line, record))
        elif line.strip():
            unreadable.append(line)
    return records, unreadable


def _finite_or_none(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


class MetricsFileCallback(TrainerCallback):
    """Appends one JSON object per log call to ``output_dir/metrics.jsonl`` (main process only).

    Each line has ``step``, ``episode``, ``time`` (unix seconds), ``elapsed`` (training seconds,
    continued across resumes), ``kind`` ("train" or "eval") and every logged metric; non-finite
    values are written as null. A fresh run into a directory that already has a metrics file first
    renames it to ``metrics.<unix time>.jsonl`` (``.1``, ``.2``... when that name is taken); a resumed
    run moves the lines logged after its checkpoint to ``metrics.superseded.jsonl`` (it logs those
    steps again) and rewrites the file atomically. A line that is not a record (torn by a kill
    mid-write) is moved to ``metrics.unreadable.jsonl`` with a warning.
    """

    def __init__(self):
        self.path: Path | None = None
        self.offset = 0.0
        self.start = time.time()

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.path = Path(args.output_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.start, self.offset = time.time(), 0.0
        if not self.path.exists():
            return
        if state.global_step == 0:
            os.rename(self.path, _unused_name(self.path.with_name(f"metrics.{int(self.start)}.jsonl")))
            return
        records, unreadable = _read_records(self.path)
        kept = [line for line, record in records if record["step"] <= state.global_step]
        superseded = [line for line, record in records if record["step"] > state.global_step]
        for name, lines in (("metrics.superseded.jsonl", superseded), ("metrics.unreadable.jsonl", unreadable)):
            if lines:
                with self.path.with_name(name).open("a") as f:
                    f.write("".join(line + "\n" for line in lines))
        if unreadable:
            logger.warning(
                "%s held %d line(s) that are not metric records (a write cut short by a kill?): moved to %s.",
                self.path,
                len(unreadable),
                self.path.with_name("metrics.unreadable.jsonl"),
            )
        rewritten = self.path.with_name(METRICS_FILE + ".tmp")
        rewritten.write_text("".join(line + "\n" for line in kept))
        os.replace(rewritten, self.path)  # a kill leaves the old file or the new one, never a partial one
        if kept:
            self.offset = json.loads(kept[-1])["elapsed"]

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.path is None or not logs:
            return
        now = time.time()
        record = {
            "step": state.global_step,
            "episode": getattr(state, "episode", None),
            "time": now,
            "elapsed": self.offset + now - self.start,
            "kind": "eval" if is_eval_log(logs) else "train",
        }
        record.update({key: _finite_or_none(value) for key, value in logs.items()})
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


class AppendingFileHandler(logging.Handler):
    """Appends each record to a file opened for that write alone, so no file of ``output_dir`` stays open."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def emit(self, record: logging.LogRecord) -> None:
        try:
            with self.path.open("a") as f:
                f.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


_OPEN_TEXT_LOGS: set[TextLogCallback] = set()  # text logs whose run has not reached on_train_end


class TextLogCallback(TrainerCallback):
    """A human-readable ``output_dir/train.log`` (main process): the config, warnings, one line per log.

    Warnings raised during training are copied to the file (and still shown as before); everything
    it changes in the process (log handlers, the package logger's level, ``warnings.showwarning``) is
    undone at the end of training.
    """

    def __init__(self):
        self.handler: logging.Handler | None = None
        self._showwarning = None
        self._level = logging.NOTSET

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or self.handler is not None:
            return
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        for stale in list(_OPEN_TEXT_LOGS):  # a run that raised never reached on_train_end: undo what it changed
            stale.on_train_end(args, state, control)
        self.handler = AppendingFileHandler(Path(args.output_dir) / TEXT_LOG_FILE)
        _OPEN_TEXT_LOGS.add(self)
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.handler.setLevel(logging.INFO)
        self._showwarning = warnings.showwarning
        warnings.showwarning = self._show_and_log_warning
        for name in LOGGERS:
            logging.getLogger(name).addHandler(self.handler)
        package_logger = logging.getLogger("trl_replay_ppo")
        self._level = package_logger.level
        if package_logger.getEffectiveLevel() > logging.INFO:
            package_logger.setLevel(logging.INFO)
        package_logger.info(
            "Training in %s from step %d with config:\n%s", args.output_dir, state.global_step, args.to_json_string()
        )

    def _show_and_log_warning(self, message, category, filename, lineno, file=None, line=None) -> None:
        self._showwarning(message, category, filename, lineno, file, line)
        text = warnings.formatwarning(message, category, filename, lineno, line).strip()
        self.handler.handle(logging.LogRecord("py.warnings", logging.WARNING, filename, lineno, text, None, None))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.handler is None or not logs:
            return
        shown = " | ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in logs.items())
        logging.getLogger("trl_replay_ppo").info("step %d | %s", state.global_step, shown)

    def on_train_end(self, args, state, control, **kwargs):
        if self.handler is None:
            return
        for name in LOGGERS:
            logging.getLogger(name).removeHandler(self.handler)
        self.handler.close()
        self.handler = None
        _OPEN_TEXT_LOGS.discard(self)
        warnings.showwarning = self._showwarning
        logging.getLogger("trl_replay_ppo").setLevel(self._level)


def add_package_callbacks(trainer: Trainer, args) -> None:
    """Early stopping (when asked), the score/KL progress bar, ``metrics.jsonl`` and ``train.log``."""
    if args.early_stopping_patience is not None:
        trainer.add_callback(EarlyStoppingCallback(args.early_stopping_patience))
    if not args.disable_tqdm:
        trainer.callback_handler.remove_callback(ProgressCallback)
        trainer.add_callback(RewardProgressCallback)
    trainer.add_callback(MetricsFileCallback())
    trainer.add_callback(TextLogCallback())
