"""Read ``params.yaml`` and fail with the exact key when something is missing or mistyped."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Iterable

import yaml


class ParamsError(KeyError):
    """A missing, unknown or mistyped key in params.yaml; the message names the key."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


def load_params(path: str | os.PathLike[str] = "params.yaml") -> dict[str, Any]:
    """Load the params file as a dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"params file not found: {path}")
    with path.open() as fh:
        params = yaml.safe_load(fh) or {}
    if not isinstance(params, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    return params


def get(
    params: dict[str, Any], key: str, kind: type | tuple[type, ...], *, choices: Iterable[Any] | None = None
) -> Any:
    """Return ``params[a][b]`` for ``key='a.b'``, checking its type (and allowed values).

    Raises:
        ParamsError: naming the dotted key when it is missing, of the wrong type or not allowed.
    """
    node: Any = params
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            where = ".".join(parts[:depth]) or "the top level"
            near = difflib.get_close_matches(part, list(node) if isinstance(node, dict) else [], n=1)
            hint = f" (did you mean '{'.'.join(parts[:depth] + near)}'?)" if near else ""
            raise ParamsError(f"params.yaml: missing key '{key}' under {where}{hint}")
        node = node[part]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # YAML reads 1e-3 as a string and 5 as an int; accept ints where floats are asked for.
    if float in kinds and isinstance(node, int) and not isinstance(node, bool):
        node = float(node)
    if not isinstance(node, kinds) or (bool not in kinds and isinstance(node, bool)):
        names = "/".join(k.__name__ for k in kinds)
        raise ParamsError(f"params.yaml: key '{key}' must be {names}, got {type(node).__name__} {node!r}")
    if choices is not None:
        allowed = list(choices)
        if node not in allowed:
            raise ParamsError(f"params.yaml: key '{key}' is {node!r}; choose one of {allowed}")
    return node


def check_known(params: dict[str, Any], section: str | None, known: Iterable[str]) -> None:
    """Reject keys in ``section`` (None: the top level) that no stage reads, e.g. a typo like ``lr_rate``."""
    node = params if section is None else params.get(section, {})
    if not isinstance(node, dict):
        raise ParamsError(f"params.yaml: '{section}' must be a mapping")
    known = list(known)
    for name in node:
        if name not in known:
            near = difflib.get_close_matches(str(name), known, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            where = f"'{section}.{name}'" if section else f"'{name}'"
            raise ParamsError(f"params.yaml: unknown key {where}{hint}")
