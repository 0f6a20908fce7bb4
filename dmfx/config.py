"""Settings files of ``dmfx train --config FILE``, and the ``config.toml`` a run writes.

A settings file is one flat table whose keys are the names of ``dmfx train``'s flags, with
dashes or underscores (``user-layers`` or ``user_layers``), and whose values are what the flag
takes: ``model = "dmf"``, ``epochs = 20``, ``lr = 1e-4``, ``user-layers = "512,64"`` or
``[512, 64]``, ``track-test = true`` for a flag that takes no value. TOML is read with the
standard library (tomli before Python 3.11); a ``.yaml`` / ``.yml`` file needs PyYAML.

:func:`file_flags` turns a file into the equivalent flags, checked against the parser's options
(an unknown key or a value of the wrong kind is a one-line ``ValueError`` naming the file and
the key). The command line puts them before its own flags, so a flag given there wins.
:func:`toml_text` writes settings back as TOML, for the ``OUTPUT/config.toml`` of a run.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, before it joined the standard library
    import tomli as tomllib

__all__ = ["read_settings", "options", "file_flags", "toml_text"]

# Not settings: the file itself (files do not include files) and help.
_NOT_SETTINGS = ("config", "help")


def read_settings(path: str | Path) -> dict:
    """The table of a TOML file, or of a YAML file (suffix ``.yaml`` / ``.yml``, with PyYAML)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"--config: no file at {path}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ValueError(f"{path}: reading YAML needs PyYAML (pip install pyyaml); or write "
                             "the settings as TOML") from None
        try:
            settings = yaml.safe_load(text)
        except yaml.YAMLError as error:
            first = (str(error).strip().splitlines() or [""])[0]
            raise ValueError(f"{path}: not valid YAML ({first})") from None
        if settings is None:  # an empty file
            return {}
    else:
        try:
            settings = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"{path}: not valid TOML ({error})") from None
    if not isinstance(settings, dict):
        raise ValueError(f"{path}: expected a table of settings (key = value), got "
                         f"{type(settings).__name__}")
    return settings


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The long options of ``parser`` that a settings file may hold: name (no dashes) -> action."""
    found = {}
    for action in parser._actions:  # argparse has no public way to list a parser's options
        names = [s[2:] for s in action.option_strings if s.startswith("--")]
        if names and names[0] not in _NOT_SETTINGS:
            found[names[0]] = action
    return found


def _text(value) -> str:
    """A scalar or a list as the flag's text; a list joins with commas: ``[512, 64]`` ->
    ``512,64``."""
    if isinstance(value, list):
        return ",".join(_text(v) for v in value)
    return str(value)


def _problem(value) -> str | None:
    """What keeps ``value`` from being a flag's value: None for a string, a number or a list of
    them."""
    def scalar(v) -> bool:
        return isinstance(v, (str, int, float)) and not isinstance(v, bool)

    if isinstance(value, list):
        return None if all(scalar(v) for v in value) else "a list of other than strings and numbers"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, dict):
        return "a table"
    return None if scalar(value) else type(value).__name__


def file_flags(path: str | Path, parser: argparse.ArgumentParser) -> list[str]:
    """The flags equivalent to the settings file at ``path``, as ``--name=value`` (or ``--name``
    for a flag without value set to true; false leaves such a flag out)."""
    settings = read_settings(path)
    known = options(parser)
    flags, seen = [], {}
    for key, value in settings.items():
        name = str(key).replace("_", "-")
        action = known.get(name)
        if action is None:
            raise ValueError(f"{path}: unknown setting {key!r} (the settings are the flags of "
                             "`dmfx train --help`, e.g. epochs or user-layers)")
        if name in seen:
            raise ValueError(f"{path}: {key!r} and {seen[name]!r} are the same setting")
        seen[name] = key
        takes_value = action.nargs != 0
        if not takes_value:
            if not isinstance(value, bool):
                raise ValueError(f"{path}: {key}: expected true or false, got {value!r}")
            flags += [f"--{name}"] if value else []
            continue
        problem = _problem(value)
        if problem:
            raise ValueError(f"{path}: {key}: expected a value like the flag's, got {problem}")
        text = _text(value)
        if action.type is not None:
            try:
                action.type(text)
            except argparse.ArgumentTypeError as error:  # a type of the project's own: says why
                raise ValueError(f"{path}: {key}: {error}") from None
            except (TypeError, ValueError):
                kind = getattr(action.type, "__name__", "a value")
                raise ValueError(f"{path}: {key}: expected {kind}, got {value!r}") from None
        if action.choices is not None and text not in action.choices:
            raise ValueError(f"{path}: {key}: expected one of {', '.join(map(str, action.choices))}"
                             f", got {value!r}")
        flags.append(f"--{name}={text}")
    return flags


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        # JSON's escapes are TOML's; DEL is the one control character JSON leaves raw.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"no TOML for {type(value).__name__} {value!r}")


def toml_text(settings: dict, comment: str = "") -> str:
    """``settings`` (str, int, float, bool or lists of them) as a flat TOML table, after
    ``comment`` as ``#`` lines."""
    lines = [f"# {line}".rstrip() for line in comment.splitlines()]
    for key, value in settings.items():
        key = key if _BARE_KEY.fullmatch(key) else _toml(key)
        lines.append(f"{key} = {_toml(value)}")
    return "\n".join(lines) + "\n"
