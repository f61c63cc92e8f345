"""Options as dataclass fields: one source for each option's name, default, type, help and command-line flag.

A config dataclass declares its fields with `option(default, help, ...)`; `add_options(parser, Config)` generates
the command line from the fields (flag `--name-with-dashes` unless given, the help followed by the default) and
`given(args, Config)` returns the values the command line set (a flag left out is absent, so the dataclass
default, or a config file's value, applies):

    @dataclasses.dataclass(frozen=True)
    class Config:
        steps: int = option(100, "RL steps")
        remat: bool = option(False, "rematerialise each layer")         # a flag without a value: --remat
        chat: bool | None = option(None, "chat template", flag="--chat-template", choices=CHAT_CHOICES)

    add_options(parser, Config); Config(**given(parser.parse_args(), Config))

`choices` is a sequence of accepted values (`choices_of`; the dataclass validates them, so that the command line
and Python callers get the same message), or a dict from the words accepted on the command line to the values they
stand for. Fields with `cli=False` are not on the command line.
"""
from __future__ import annotations

import argparse
import dataclasses

__all__ = ["option", "add_options", "given", "build", "help_of", "choices_of"]

_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def option(default=dataclasses.MISSING, help: str = "", *, flag: str | None = None, type=None, choices=None,
           nargs=None, metavar: str | None = None, append: bool = False, cli: bool = True):
    """A dataclass field with its command-line description in the field's metadata."""
    meta = dict(help=help, flag=flag, type=type, choices=choices, nargs=nargs, metavar=metavar, append=append,
                cli=cli)
    return dataclasses.field(default=default, metadata={"option": meta})


def help_of(cls, name: str) -> str:
    """The help text of field `name` of a config dataclass."""
    return {f.name: f for f in dataclasses.fields(cls)}[name].metadata.get("option", {}).get("help", "")


def choices_of(cls) -> dict:
    """{field: its accepted values} of the fields of `cls` whose option lists them (a sequence, not a dict)."""
    out = {}
    for f in dataclasses.fields(cls):
        ch = f.metadata.get("option", {}).get("choices")
        if ch is not None and not isinstance(ch, dict):
            out[f.name] = tuple(ch)
    return out


def _type(f, meta):
    if meta["type"] is not None:
        return meta["type"]
    names = [t.strip() for t in str(f.type).split("|") if t.strip() != "None"]
    return _TYPES.get(names[0]) if len(names) == 1 else None


def add_options(parser: argparse.ArgumentParser, cls, *, skip=(), defaults: dict | None = None):
    """Add one argument per field of `cls` that has an `option` (except `skip`), each with default None (left
    out: the field's default applies, which the help states; `defaults` overrides what is stated)."""
    shown = {f.name: f.default for f in dataclasses.fields(cls)}
    shown.update(defaults or {})
    for f in dataclasses.fields(cls):
        meta = f.metadata.get("option")
        if meta is None or not meta["cli"] or f.name in skip:
            continue
        flag = meta["flag"] or "--" + f.name.replace("_", "-")
        default = shown[f.name]
        help_ = meta["help"]
        kw = dict(dest=f.name, default=None)
        typ = _type(f, meta)
        choices = meta["choices"]
        if isinstance(choices, dict):
            word = next((k for k, v in choices.items() if v == default), default)
            kw.update(choices=list(choices))
            help_ += f"; default {word}"
        elif typ is bool:
            kw.update(action="store_const", const=not default if isinstance(default, bool) else True)
        else:  # a sequence of choices is the dataclass's to check (one validation, one message)
            kw.update(type=typ, nargs=meta["nargs"], metavar=meta["metavar"])
            if meta["append"]:
                kw.update(action="append")
            help_ += f"{'; ' if help_ else ''}default {default!r}"
        parser.add_argument(flag, help=help_.replace("%", "%%") or None,
                            **{k: v for k, v in kw.items() if v is not None or k == "default"})


def given(args, cls, *, skip=()) -> dict:
    """{field: value} of the fields of `cls` that the parsed `args` set (command-line words mapped through a dict of
    `choices`)."""
    out = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata.get("option")
        if meta is None or not meta["cli"] or f.name in skip:
            continue
        v = getattr(args, f.name, None)
        if v is None:
            continue
        if isinstance(meta["choices"], dict):
            v = meta["choices"][v]
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


def build(cls, options: dict, *, exclude=(), what: str = "option"):
    """`cls(**options)` for keyword arguments of a Python API, after refusing names that are not fields of `cls` (or
    are `exclude`d: given as the function's own arguments) with a ValueError naming them."""
    names = {f.name for f in dataclasses.fields(cls)} - set(exclude)
    bad = sorted(set(options) - names)
    if bad:
        raise ValueError(f"unknown {what}(s) {bad}; expected some of {sorted(names)}")
    return cls(**options)
