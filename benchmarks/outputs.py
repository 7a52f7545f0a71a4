"""Where a benchmark's results go: ``<name>.json`` (the figures) and ``<name>.md`` (the table) in one folder."""

from __future__ import annotations

import json
from pathlib import Path


def write_tables(output: str | Path, name: str, result: dict, lines: list[str]) -> None:
    """Write ``result`` to ``output/<name>.json`` and ``lines`` to ``output/<name>.md`` (creating ``output``), and
    print the table."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    (output / f"{name}.json").write_text(json.dumps(result, indent=1, default=str))
    text = "\n".join(lines) + "\n"
    (output / f"{name}.md").write_text(text)
    print(text, end="")
