"""`check_config_file`: a ``--config`` YAML file read safely before TRL's `TrlParser` reads it.

`TrlParser` loads the file with ``yaml.safe_load``, which expands every alias (nested aliases grow a
few lines into billions of nodes: the run never starts, memory fills) and lets a duplicated key
silently win over the first. This module reads the file's node graph without expanding it, and
refuses a file that is too large, uses too many aliases, would expand past a bound, or repeats a key,
naming the file, the key and its line.
"""

from __future__ import annotations

from pathlib import Path

import yaml

MAX_BYTES = 1 << 20  # a config file is a few KiB
MAX_ALIASES = 64
MAX_EXPANDED_NODES = 100_000  # nodes once every alias is expanded: far above any real config


class ConfigFileError(ValueError):
    """A ``--config`` file that cannot be read safely; the message names the file and the fix."""


def config_path(argv: list[str]) -> Path | None:
    """The ``--config`` file named on the command line (``--config F`` or ``--config=F``), or None."""
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--config="):
            return Path(arg.partition("=")[2])
    return None


def check_config_file(path: Path) -> None:
    """Refuse ``path`` unless it is a YAML file TRL's parser can load in bounded time and memory, with unique keys."""
    try:
        size = path.stat().st_size
    except OSError as error:
        raise ConfigFileError(f"--config {path}: cannot read it ({error}).") from error
    if size > MAX_BYTES:
        raise ConfigFileError(f"--config {path}: {size} bytes, more than {MAX_BYTES}; a config file is a few KiB.")
    text = path.read_text(errors="replace")
    try:
        aliases = sum(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader))
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        raise ConfigFileError(f"--config {path} is not valid YAML: {error}") from error
    if aliases > MAX_ALIASES:
        raise ConfigFileError(
            f"--config {path} uses {aliases} YAML aliases (`*name`), more than {MAX_ALIASES}; write the values out."
        )
    if root is not None:
        _expanded_size(root, path, {}, set())


def _expanded_size(node: yaml.Node, path: Path, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """Nodes under ``node`` with every alias expanded (each shared node counted once per use, memoised);
    refuses a recursive alias, a repeated key, and an expansion past `MAX_EXPANDED_NODES`."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_nodes:
        raise ConfigFileError(f"--config {path}: a YAML alias refers to itself (line {node.start_mark.line + 1}).")
    open_nodes.add(id(node))
    size = 1
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                line = key.start_mark.line + 1
                if key.value in seen:
                    raise ConfigFileError(
                        f"--config {path}: key `{key.value}` appears twice (lines {seen[key.value]} and {line}); the "
                        "second would silently replace the first. Keep one."
                    )
                seen[key.value] = line
            size += _expanded_size(key, path, sizes, open_nodes) + _expanded_size(value, path, sizes, open_nodes)
    elif isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(item, path, sizes, open_nodes) for item in node.value)
    open_nodes.discard(id(node))
    if size > MAX_EXPANDED_NODES:
        raise ConfigFileError(
            f"--config {path}: its YAML aliases expand to more than {MAX_EXPANDED_NODES} values (nested aliases, "
            "as in a 'billion laughs' file); write the values out."
        )
    sizes[id(node)] = size
    return size
