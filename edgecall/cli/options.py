"""Shared command-line pieces: checked number types and a help formatter that shows defaults.

argparse reports a value these types refuse as ``edgecall <command>: error:
argument --threads: must be an integer >= 1, got '-1'`` under the subcommand's
own usage line.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


class DefaultsFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to option help when there is a meaningful default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        """The help text with the default added (not for None/False/flags)."""
        text = action.help or ""
        if ("%(default)" in text or action.default is None or action.default is False
                or action.default == argparse.SUPPRESS
                or not action.option_strings or action.nargs == 0):
            return action.help
        return f"{text} (default: %(default)s)"


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}"
                                             ) from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def float_at_least(low: float) -> Callable[[str], float]:
    """An argparse type: a finite number >= ``low``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number >= {low:g}, got {text!r}"
                                             ) from None
        if not value >= low or value == float("inf"):
            raise argparse.ArgumentTypeError(f"must be a number >= {low:g}, got {text!r}")
        return value

    parse.__name__ = f"number >= {low:g}"
    return parse


def subparser_of(parser: argparse.ArgumentParser, command: str | None
                 ) -> argparse.ArgumentParser | None:
    """The subcommand's own parser (so a bad option prints that command's usage)."""
    for action in parser._actions:  # noqa: SLF001 - argparse keeps subparsers here
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:  # noqa: SLF001
            return action.choices[command]
    return None


def use_defaults_formatter(parser: argparse.ArgumentParser) -> None:
    """Make every subcommand's ``--help`` show its defaults."""
    for action in parser._actions:  # noqa: SLF001
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for sub in action.choices.values():
                sub.formatter_class = DefaultsFormatter
