"""The ``trl-replay-ppo`` command line (`main`): ``train``, ``demo``, ``plot``, ``config-reference``."""

from trl_replay_ppo.cli.main import main

__all__ = ["main"]
