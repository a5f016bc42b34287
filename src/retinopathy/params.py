"""Read ``params.yaml`` and fail with the exact key when something is missing or mistyped."""

from __future__ import annotations

import difflib
import os
import typing
from dataclasses import field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

import yaml


class ParamsError(KeyError, ValueError):
    """A missing, unknown or mistyped key in params.yaml, or a value it does not allow; the message names the key."""

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


def setting(default: Any, *, choices: Iterable[Any] | None = None,
            rule: tuple[Callable[[Any], bool], str] | None = None) -> Any:
    """A settings field: its default (params.yaml's), its allowed values, and a ``(test, wording)`` rule."""
    return field(default=default, metadata={"choices": None if choices is None else tuple(choices), "rule": rule})


def _key(settings: Any, name: str) -> str:
    """The dotted params key of a settings field, e.g. ``'pretrain.lr'``."""
    section = type(settings).SECTION
    return f"{section}.{name}" if section else name


def _typed(key: str, value: Any, kind: Any) -> Any:
    """``value`` checked against the annotation ``kind`` (ints accepted as floats); ParamsError names ``key``."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # YAML reads 5 as an int
    ok = isinstance(value, bool) if kind is bool else isinstance(value, kind) and not isinstance(value, bool)
    if not ok:
        raise ParamsError(f"params.yaml: key '{key}' must be {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


def check_fields(settings: Any) -> None:
    """Check each field of a frozen settings dataclass against its annotation, choices and rule.

    Ints given for float fields become floats. Raises:
        ParamsError: naming the params key of the first field that fails.
    """
    kinds = typing.get_type_hints(type(settings))
    for item in fields(settings):
        key = _key(settings, item.name)
        value = _typed(key, getattr(settings, item.name), kinds[item.name])
        object.__setattr__(settings, item.name, value)
        choices, rule = item.metadata.get("choices"), item.metadata.get("rule")
        if choices is not None and value not in choices:
            raise ParamsError(f"params.yaml: key '{key}' is {value!r}; choose one of {list(choices)}")
        if rule is not None and not rule[0](value):
            raise ParamsError(f"params.yaml: key '{key}' must be {rule[1]}, got {value!r}")


S = TypeVar("S")


def load_settings(cls: type[S], params: dict[str, Any], *, keys: Iterable[str] | None = None, **given: Any) -> S:
    """Fill the settings class ``cls`` from its section of ``params`` (``cls.SECTION``; None: the top level).

    Every key of the section must be a field of ``cls`` (the top level also allows ``cls.OTHER_KEYS``), and
    every field read must be present. ``keys`` reads only those fields, so that a stage reads exactly
    the keys its dvc.yaml entry declares; the others keep their defaults. ``given`` sets fields directly.
    """
    names = [item.name for item in fields(cls)]
    check_known(params, cls.SECTION, [*names, *getattr(cls, "OTHER_KEYS", ())])
    wanted = names if keys is None else list(keys)
    strangers = [name for name in [*wanted, *given] if name not in names]
    if strangers:
        raise ValueError(f"{cls.__name__} has no setting {strangers}; it has {names}")
    prefix = f"{cls.SECTION}." if cls.SECTION else ""
    values = {name: get(params, prefix + name, (object, bool)) for name in wanted if name not in given}
    return cls(**values, **given)
