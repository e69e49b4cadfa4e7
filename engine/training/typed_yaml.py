"""Typed YAML: build nested dataclasses from YAML files, with `base:` inheritance and `--set` overrides.

Generic (knows nothing about recipes). Every error is a `ConfigError` whose message is one line naming
the dotted key, the file it came from and the fix.

    data, origin = load_yaml_tree("recipes/mixed_fwm.yaml")       # follows `base:` (str or list) within recipes/
    apply_overrides(data, origin, ["optim.lr=1e-3", "model.depth=4"])
    cfg = build_dataclass(Recipe, data, origin)

Supported field types: bool, int, float, str, Path, Literal[...], Optional[T] / T | None, list[T],
tuple[T, ...], tuple[T1, T2], dict[str, T], Any, and nested dataclasses. Integers are accepted where a float
is expected; nothing else is coerced implicitly (a quoted "1e-3" is a string, `1` is not a bool).
Values given with `--set` arrive as text and are parsed according to the field's type.

Files are parsed with yaml.safe_load only (plain data; no tags that build Python objects), and a `base:`
may not leave the tree of the file being loaded (see `recipes_tree`) unless the caller allows it: a recipe
someone sends you cannot make the loader read, or quote in an error, a file elsewhere on your disk.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from engine.fields import type_name

BASE_KEY = "base"
TREE_NAME = "recipes"


class ConfigError(ValueError):
    """A configuration error with a one-line message (key, file, fix)."""


class CliText(str):
    """A value typed on the command line: parsed according to the target field's type."""


# -- reading files -------------------------------------------------------------------------------------

def _read_mapping(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: file not found; fix: check the path (relative `base:` paths are "
                          f"resolved against the including file's folder)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} invalid YAML ({getattr(err, 'problem', err)}); fix: correct the "
                          f"syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys, got {type(data).__name__}; fix: "
                          f"write `key: value` lines")
    return data


def _merge(dst: dict, src: dict, origin: dict, src_file: str, prefix: str = "") -> None:
    """Deep-merge src into dst: mappings merge key by key, everything else replaces."""
    for key, value in src.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge(dst[key], value, origin, src_file, dotted + ".")
        else:
            dst[key] = _copy(value)
            for stale in [k for k in origin if k.startswith(dotted + ".")]:
                del origin[stale]
            _record_origin(value, origin, src_file, dotted)


def _record_origin(value: Any, origin: dict, src_file: str, dotted: str) -> None:
    origin[dotted] = src_file
    if isinstance(value, dict):
        for k, v in value.items():
            _record_origin(v, origin, src_file, f"{dotted}.{k}")


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def recipes_tree(path: str | Path) -> Path:
    """The folder a recipe's `base:` files must stay in: the nearest enclosing folder named `recipes`
    (recipes/demo/x.yaml -> recipes/), else the recipe's own folder (a run's or a checkpoint's recipe.yaml)."""
    folder = Path(os.path.abspath(path)).parent
    for candidate in (folder, *folder.parents):
        if candidate.name == TREE_NAME:
            return candidate
    return folder


def load_yaml_tree(path: str | Path, _chain: tuple[Path, ...] = (), *, allow_outside_base: bool = False,
                   _tree: Path | None = None) -> tuple[dict, dict[str, str]]:
    """Read a YAML file and the files its `base:` names (str or list, later bases win, the file wins last).

    Every base must lie in the tree of the file first asked for (`recipes_tree`) unless allow_outside_base.
    Returns (data, origin) where origin maps each dotted key to the file that set it.
    """
    path = Path(path)
    tree = _tree if _tree is not None else recipes_tree(path)
    resolved = path.resolve()
    if resolved in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, resolved))
        raise ConfigError(f"{path}: `base:` cycle ({cycle}); fix: remove one of the `base:` entries")
    raw = _read_mapping(path)
    bases = raw.pop(BASE_KEY, None)
    if bases is None:
        bases = []
    elif isinstance(bases, str):
        bases = [bases]
    elif not (isinstance(bases, list) and all(isinstance(b, str) for b in bases)):
        raise ConfigError(f"{path}: `base:` must be a path or a list of paths; fix: e.g. `base: ../base/vitb16.yaml`")
    data: dict = {}
    origin: dict[str, str] = {}
    for base in bases:
        target = path.parent / base
        # Lexical, as for shard paths: where the name points, not where symlinks inside the tree lead.
        if not allow_outside_base and not Path(os.path.normpath(os.path.abspath(target))).is_relative_to(tree):
            raise ConfigError(f"{path}: `base: {base}` lies outside the recipes tree {tree}; a recipe may only "
                              f"build on files of its own tree; fix: copy that base into {tree}, or pass "
                              f"--allow-base-outside-tree if you trust the recipe")
        base_data, base_origin = load_yaml_tree(target, (*_chain, resolved), allow_outside_base=allow_outside_base,
                                                _tree=tree)
        _merge_with_origin(data, origin, base_data, base_origin)
    _merge(data, raw, origin, str(path))
    origin[""] = str(path)  # the file that was asked for answers for keys no file set
    return data, origin


def _merge_with_origin(dst: dict, origin: dict, src: dict, src_origin: dict) -> None:
    _merge(dst, src, origin, "?")
    for key, file in src_origin.items():
        origin[key] = file


def apply_overrides(data: dict, origin: dict[str, str], overrides: list[str]) -> None:
    """Apply `a.b.c=value` overrides in place; the value is typed later by the field it lands on."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item}: expected KEY=VALUE; fix: e.g. --set optim.lr=1e-3")
        key, text = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        if not key or any(not p for p in parts):
            raise ConfigError(f"--set {item}: empty key segment; fix: use a dotted key like model.depth")
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
                # A section that only this --set creates is this --set's: an unknown-key error on it
                # (`--set trian.steps=30`) must name the flag, not the recipe file.
                origin[".".join(parts[:i + 1])] = f"--set {item}"
            elif not isinstance(child, dict):
                raise ConfigError(f"--set {item}: '{'.'.join(parts[:i + 1])}' is a value, not a section; fix: "
                                  f"set it directly")
            node = child
        node[parts[-1]] = CliText(text)
        for stale in [k for k in origin if k.startswith(key + ".")]:
            del origin[stale]
        origin[key] = f"--set {item}"


# -- building dataclasses ------------------------------------------------------------------------------

def _where(origin: dict[str, str], dotted: str) -> str:
    probe = dotted
    while probe:
        if probe in origin:
            return origin[probe]
        probe = probe.rpartition(".")[0]
    return origin.get("", "<recipe>")


def blame(origin: dict[str, str], *dotted: str) -> str:
    """The sources (files, `--set` flags) that set these keys, `--set` first, for an error that involves
    several keys: the flag the user just typed is the likelier culprit than the file it overrides."""
    sources = list(dict.fromkeys(_where(origin, key) for key in dotted))
    sources.sort(key=lambda source: not source.startswith("--set "))
    return ", ".join(sources)




def _fail(origin: dict, dotted: str, what: str, fix: str) -> ConfigError:
    return ConfigError(f"{_where(origin, dotted)}: {dotted}: {what}; fix: {fix}")


def _parse_cli(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return str(text)


def convert(value: Any, tp: Any, origin: dict[str, str], dotted: str) -> Any:
    """Convert one YAML value to the annotated type `tp`, or raise a one-line ConfigError."""
    if tp is Any:
        return _parse_cli(value) if isinstance(value, CliText) else value
    hint = typing.get_origin(tp)
    args = typing.get_args(tp)
    if hint in (Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        if value is None or (isinstance(value, CliText) and value.strip().lower() in ("null", "none", "~")):
            if type(None) in args:
                return None
            raise _fail(origin, dotted, "must not be null", f"give a {type_name(tp)}")
        errors = []
        for member in members:
            try:
                return convert(value, member, origin, dotted)
            except ConfigError as err:
                errors.append(err)
        raise errors[0] if len(errors) == 1 else _fail(
            origin, dotted, f"expected {type_name(tp)}, got {value!r}", f"give a {type_name(tp)}")
    if hint is Literal:
        candidate = value
        if isinstance(value, CliText) and str(value) not in [str(a) for a in args]:
            candidate = _parse_cli(value)
        elif isinstance(value, CliText):
            candidate = next(a for a in args if str(a) == str(value))
        if candidate in args and type(candidate) in {type(a) for a in args}:
            return candidate
        choices = ", ".join(repr(a) for a in args)
        raise _fail(origin, dotted, f"{value!r} is not one of {choices}", f"use one of {choices}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, CliText):  # `--set section={key: value}`
            value = _parse_cli(value)
        if not isinstance(value, dict):
            raise _fail(origin, dotted, f"expected a section ({tp.__name__}), got {value!r}",
                        "write it as a mapping of keys")
        return build_dataclass(tp, value, origin, dotted)
    if isinstance(value, CliText):
        if tp is str:
            return str(value)
        if tp is Path:
            return Path(value)
        if tp is float:
            try:
                return float(value)  # accepts 1e-3, which YAML would read as text
            except ValueError:
                pass
        value = _parse_cli(value)
    if hint in (list, tuple):
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise _fail(origin, dotted, f"expected a list ({type_name(tp)}), got {value!r}",
                        "write it as [a, b, ...]")
        if hint is list:
            (item_tp,) = args or (Any,)
            return [convert(v, item_tp, origin, f"{dotted}[{i}]") for i, v in enumerate(value)]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(convert(v, args[0], origin, f"{dotted}[{i}]") for i, v in enumerate(value))
        if args and len(value) != len(args):
            raise _fail(origin, dotted, f"expected {len(args)} items, got {len(value)}",
                        f"give exactly {len(args)} values")
        return tuple(convert(v, a, origin, f"{dotted}[{i}]") for i, (v, a) in enumerate(zip(value, args or [Any] * len(value))))
    if hint is dict:
        if not isinstance(value, dict):
            raise _fail(origin, dotted, f"expected a mapping, got {value!r}", "write it as key: value lines")
        key_tp, val_tp = args or (Any, Any)
        return {convert(k, key_tp, origin, f"{dotted}.{k}"): convert(v, val_tp, origin, f"{dotted}.{k}")
                for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _fail(origin, dotted, f"expected true/false, got {value!r}", "write true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _fail(origin, dotted, f"expected an integer, got {value!r} ({type(value).__name__})",
                    "write a whole number without quotes")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _fail(origin, dotted, f"expected a number, got {value!r} ({type(value).__name__})",
                    "write a number without quotes (YAML reads 1e-3 as text: write 1.0e-3)")
    if tp is str:
        if isinstance(value, str):
            return value
        raise _fail(origin, dotted, f"expected text, got {value!r} ({type(value).__name__})", "quote the value")
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise _fail(origin, dotted, f"expected a path, got {value!r}", "write a path as text")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise _fail(origin, dotted, f"cannot read {value!r} as {type_name(tp)}", "check the field's type")


def build_dataclass(cls: type, data: dict, origin: dict[str, str], prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping; unknown keys, wrong types and missing keys are errors."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    dotted = (lambda name: f"{prefix}.{name}" if prefix else name)
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            fix = f"did you mean '{dotted(close[0])}'?" if close else \
                f"remove it (known keys: {', '.join(fields)})"
            raise _fail(origin, dotted(str(key)), "unknown key", fix)
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = convert(data[name], hints[name], origin, dotted(name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_where(origin, prefix)}: {dotted(name)}: missing key; fix: add "
                              f"`{name}:` under `{prefix or 'the top level'}`")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError, AssertionError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        # A section's own check names the fields it objects to; blame whoever set those (a `--set` flag or
        # the file that set the value), not whichever file happened to open the section.
        named = [name for name in fields if name in data
                 and re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", message)]
        where = blame(origin, *(dotted(name) for name in named)) if named else _where(origin, prefix)
        raise ConfigError(f"{where}: {prefix or cls.__name__}: {message}") from None


def to_plain(obj: Any) -> Any:
    """A dataclass tree as plain YAML-ready data (tuples become lists, Paths become text)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj
