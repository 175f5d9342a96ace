"""Command-line switches built from an options dataclass: one switch per field, its help text
the field's attribute docstring (as tuned-lens builds its CLI), so a new field appears on the
command line without touching the CLI and the two can never disagree.

Field metadata may refine a switch: ``cli`` (its name), ``metavar``, ``choices``, ``cli_skip``
(no switch). Booleans get ``--name`` / ``--no-name``; ``int | None`` and friends take a value;
tuples take one or more values; a ``Mapping[str, int]`` takes repeatable ``NAME=VALUE`` pairs.

A switch left out parses as None ("not given"), so :func:`given_values` holds only what the
command line said, and a preset or another default can be overlaid under it.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools
import textwrap
import types
import typing
from collections.abc import Mapping
from typing import Any

from headatlas.errors import OptionError


def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass (the string right under each field)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):  # pragma: no cover - source not available
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in itertools.pairwise(body):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def switch_name(f: dataclasses.Field[Any]) -> str:
    """The command-line spelling of a field (``--min-pairs`` for ``min_pairs``)."""
    return str(f.metadata.get("cli", "--" + f.name.replace("_", "-")))


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """(the type without ``None``, whether None is allowed)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else tp), len(args) < len(typing.get_args(tp))
    return tp, False


def _pairs(switch: str, items: list[str], value_type: type, metavar: str) -> dict[str, Any]:
    """``NAME=VALUE`` strings as a dict, or an OptionError naming the bad one."""
    out: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            out[name] = value_type(raw)
        except ValueError:
            raise OptionError(
                f"{switch} expects {metavar} with a {value_type.__name__} value, got '{item}'"
            ) from None
    return out


def add_dataclass_args(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    skip: tuple[str, ...] = (),
    only: tuple[str, ...] | None = None,
    defaults: Any = None,
) -> None:
    """Add one switch per field of the dataclass ``cls`` (``only`` these, none of ``skip``);
    the help shows the field's default (``defaults``' value when an instance is given). Every
    switch parses to None when not given."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or f.metadata.get("cli_skip") or not f.init:
            continue
        if only is not None and f.name not in only:
            continue
        if defaults is not None:
            default = getattr(defaults, f.name)
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = f.default
        tp, _ = _unwrap(hints[f.name])
        origin = typing.get_origin(tp) or tp
        switch = switch_name(f)
        help_text = docs.get(f.name, "")
        if default not in (None, (), {}):
            if isinstance(default, bool):
                default = switch if default else "--no-" + switch[2:]
            elif isinstance(default, tuple):
                default = " ".join(repr(v) if " " in str(v) else str(v) for v in default)
            help_text += f" (default: {default})"
        kw: dict[str, Any] = {"dest": f.name, "help": help_text.replace("%", "%%")}
        if "metavar" in f.metadata:
            kw["metavar"] = f.metadata["metavar"]
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        if tp is bool:
            parser.add_argument(switch, action=argparse.BooleanOptionalAction, default=None, **kw)
        elif origin is tuple:
            item = typing.get_args(tp)[0] if typing.get_args(tp) else str
            parser.add_argument(switch, nargs="+", type=item, default=None, **kw)
        elif isinstance(origin, type) and issubclass(origin, Mapping):
            kw.setdefault("metavar", "NAME=VALUE")
            kw["help"] += " (repeatable)"
            parser.add_argument(switch, action="append", default=None, **kw)
        else:
            parser.add_argument(switch, type=origin, default=None, **kw)


def given_values(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The fields of ``cls`` the command line gave (switches left out are not in it), as the
    dataclass takes them."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name, None) if f.init else None
        if value is None:
            continue  # not given: the dataclass default (or a preset) applies
        tp, _ = _unwrap(hints[f.name])
        origin = typing.get_origin(tp) or tp
        if isinstance(value, list):
            if isinstance(origin, type) and issubclass(origin, Mapping):
                args_ = typing.get_args(tp)
                metavar = str(f.metadata.get("metavar", "NAME=VALUE"))
                value = _pairs(switch_name(f), value, args_[1] if args_ else str, metavar)
            else:
                value = tuple(value)
        values[f.name] = value
    return values


def dataclass_from_args(cls: type, args: argparse.Namespace, **fixed: Any) -> Any:
    """An instance of ``cls`` from parsed switches (``fixed`` wins); the dataclass checks the
    values, so the command line accepts exactly what the Python API accepts."""
    values = {**given_values(cls, args), **fixed}
    try:
        return cls(**values)
    except TypeError as exc:  # pragma: no cover - a field the CLI cannot express
        raise OptionError(f"{cls.__name__}: {exc}") from exc
