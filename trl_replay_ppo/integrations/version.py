"""The installed package's version, read from its metadata (light: the command line's ``--version`` uses it)."""

from __future__ import annotations

from importlib import metadata


def package_version() -> str:
    """``trl_replay_ppo``'s installed version; ``0.0.0+unknown`` in a source tree that was never installed."""
    try:
        return metadata.version("trl_replay_ppo")
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"
