"""State files that cannot run code: tensors in safetensors, everything else as JSON in its header.

A state (an optimizer's ``state_dict``, RNG states, a replay buffer...) is a tree of dicts, lists,
tuples, scalars, strings, torch tensors and numpy arrays. `save_state` writes it as one safetensors
file: each tensor (and each numpy array, as raw bytes) is a named entry, and the tree, with every
tensor replaced by its name, is JSON in the file's metadata. `load_state` rebuilds the tree
exactly (dtypes, tuples, integer dict keys included). Nothing is ever unpickled, so a file from
someone else can hold data, never code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

FORMAT = "trl_replay_ppo.state"
FORMAT_VERSION = 1
_TAGS = ("__tuple__", "__items__", "__tensor__", "__ndarray__")


class StateFileError(ValueError):
    """A state file is missing, damaged, or not one this package wrote."""


def save_state(state: Any, path: str | Path) -> None:
    """Write ``state`` to ``path`` (a ``.safetensors`` file); see the module docstring."""
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, tensors, "state")
    metadata = {"format": FORMAT, "version": str(FORMAT_VERSION), "tree": json.dumps(tree)}
    save_file(tensors, str(path), metadata=metadata)


def load_state(path: str | Path) -> Any:
    """Read a state written by `save_state`; `StateFileError` naming the file if it is not one."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise ValueError("no trl_replay_ppo state header")
            if int(metadata["version"]) != FORMAT_VERSION:
                raise ValueError(f"state format version {metadata['version']}, this version reads {FORMAT_VERSION}")
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not a dict)
        return _decode(json.loads(metadata["tree"]), tensors)
    except Exception as error:
        raise StateFileError(
            f"{path} is not a valid checkpoint file of trl_replay_ppo ({type(error).__name__}: {error}); it was "
            "damaged, or written by something else. Nothing in it was executed."
        ) from error


def _encode(value: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    """JSON tree of ``value``, moving its tensors into ``tensors``; ``where`` names the value in errors."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = value.detach().to("cpu", copy=True).contiguous()  # a copy: entries never share memory
        return {"__tensor__": key}
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise TypeError(f"Cannot save the object array at {where}.")
        key = str(len(tensors))
        tensors[key] = torch.from_numpy(np.ascontiguousarray(value).reshape(-1).view(np.uint8).copy())
        return {"__ndarray__": key, "dtype": value.dtype.str, "shape": list(value.shape)}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) and k not in _TAGS for k in value):
            return {k: _encode(v, tensors, f"{where}[{k!r}]") for k, v in value.items()}
        return {
            "__items__": [
                [_encode(k, tensors, where), _encode(v, tensors, f"{where}[{k!r}]")] for k, v in value.items()
            ]
        }
    raise TypeError(
        f"Cannot save a {type(value).__name__} at {where}: state files hold tensors, arrays and JSON values."
    )


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__ndarray__" in value:
        raw = tensors[value["__ndarray__"]].numpy()
        return raw.view(np.dtype(value["dtype"])).reshape(value["shape"]).copy()
    if "__tuple__" in value:
        return tuple(_decode(v, tensors) for v in value["__tuple__"])
    if "__items__" in value:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in value["__items__"]}
    return {k: _decode(v, tensors) for k, v in value.items()}
