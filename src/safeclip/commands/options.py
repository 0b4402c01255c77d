"""Command-line flags from settings dataclasses, and the help formatter that shows every default.

A flat settings class (fields declared with :func:`safeclip.config.setting`) becomes one ``--field-name VALUE``
flag per field; a given flag is nothing but the override ``field_name=VALUE``, so flags, ``--config`` YAML files
and Python share one parser, one validation and one help text (:mod:`safeclip.config`):

    add_settings_arguments(parser, PretrainSettings)            # --epochs, --batch-size, ... with defaults
    settings = settings_from_args(args, PretrainSettings)      # defaults <- --config <- flags, checked
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing

from safeclip.config import constraint_text, field_types, load_settings

_METAVARS = {bool: "BOOL", int: "INT", float: "FLOAT", str: "TEXT", list: "LIST", dict: "YAML"}


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to every option whose help does not already say its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, argparse.SUPPRESS) or action.required:
            return text
        if not action.option_strings and action.nargs not in ("?", "*"):
            return text
        return text + " (default: %(default)s)"


class RawDefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultsHelpFormatter):
    """:class:`DefaultsHelpFormatter` keeping the description's and epilog's line breaks."""


def show_defaults(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` and every sub-command parser below it a help formatter that shows defaults."""
    raw = issubclass(parser.formatter_class, argparse.RawDescriptionHelpFormatter)
    parser.formatter_class = RawDefaultsHelpFormatter if raw else DefaultsHelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                show_defaults(sub)


def _metavar(annotation) -> str:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # X | None
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return _METAVARS.get(typing.get_origin(annotation) or annotation, "VALUE")


def add_settings_arguments(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = (),
                           title: str | None = None) -> None:
    """One ``--field-name VALUE`` flag per field of ``cls`` (except ``skip``), each with its help and default."""
    group = parser.add_argument_group(title or f"settings ({cls.__name__}; a flag overrides --config)")
    defaults, hints = cls(), field_types(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        help_text = f"{f.metadata.get('help', '')}{constraint_text(f.metadata)} (default: {getattr(defaults, f.name)!r})"
        group.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None,
                           metavar=_metavar(hints[f.name]), help=help_text.replace("%", "%%"))


def settings_from_args(args: argparse.Namespace, cls: type, *, section: str | None = None,
                       skip: tuple[str, ...] = (), **values) -> typing.Any:
    """``cls`` from its defaults, keyword ``values``, ``args.config`` (its ``section``) and the given flags."""
    overrides = [f"{f.name}={getattr(args, f.name)}" for f in dataclasses.fields(cls)
                 if f.name not in skip and getattr(args, f.name, None) is not None]
    return load_settings(cls, getattr(args, "config", None), overrides, section=section, **values)
