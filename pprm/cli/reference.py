"""The ``pprm`` command reference in Markdown, rendered from the parser itself.

``docs/CLI.md`` is this module's output; regenerate it after changing a verb::

    python -m pprm.cli.reference > docs/CLI.md

Every verb and sub-verb gets its usage line, its arguments with their help
and defaults; the exit codes come from :data:`pprm.cli.common.EXIT_CODES`,
as in ``pprm --help``. The output is the same on every machine: usage lines
are wrapped at a fixed width, not at the terminal's (argparse otherwise
follows ``COLUMNS``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import Any

from pprm.cli.common import EXIT_CODES
from pprm.cli.main import build_parser

__all__ = ["render", "main", "USAGE_WIDTH"]

# Columns of the usage blocks; wide enough that most verbs fit on two lines.
USAGE_WIDTH = 100


def _formatter(parser: argparse.ArgumentParser) -> argparse.HelpFormatter:
    return argparse.HelpFormatter(parser.prog, width=USAGE_WIDTH)


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = _formatter(parser)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _default(action: argparse.Action) -> str:
    if not action.option_strings:  # a positional: its place in the usage line says whether it is needed
        return ""
    if action.required:
        return "required"
    value: Any = action.default
    if value is None or value is argparse.SUPPRESS or isinstance(value, bool):
        return ""
    if isinstance(value, list | tuple):
        value = ",".join(str(v) for v in value)
    return f"`{value}`"


def _subverbs(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """(name, help, parser) of each verb directly under ``parser``, in the order of its help."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, helps.get(name, ""), sub


def _anchor(prog: str) -> str:
    return "#" + prog.lower().replace(" ", "-")


def _arguments(parser: argparse.ArgumentParser) -> list[str]:
    formatter = _formatter(parser)
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            continue
        invocation = formatter._format_action_invocation(action)
        help_text = formatter._expand_help(action) if action.help else ""
        default = "" if isinstance(action, argparse._HelpAction | argparse._VersionAction) else _default(action)
        rows.append(f"| `{_cell(invocation)}` | {_cell(help_text)} | {default} |")
    if not rows:
        return []
    return ["| argument | meaning | default |", "|---|---|---|", *rows, ""]


def _section(parser: argparse.ArgumentParser, level: int) -> list[str]:
    lines = [f"{'#' * level} {parser.prog}", ""]
    if parser.description:
        lines += [parser.description, ""]
    lines += ["```text", _usage(parser), "```", ""]
    lines += _arguments(parser)
    subs = list(_subverbs(parser))
    if subs:
        lines += ["| verb | what it does |", "|---|---|"]
        lines += [f"| [`{name}`]({_anchor(sub.prog)}) | {_cell(help_text)} |" for name, help_text, sub in subs]
        lines.append("")
    return lines


def _sections(parser: argparse.ArgumentParser, level: int) -> Iterator[list[str]]:
    for _name, _help, sub in _subverbs(parser):
        yield _section(sub, level)
        yield from _sections(sub, level + 1)


def render(parser: argparse.ArgumentParser | None = None) -> str:
    """The command reference as Markdown.

    Args:
        parser: the parser to describe; :func:`pprm.cli.main.build_parser`'s
            when None.

    Returns:
        The document, ending with one newline.
    """
    parser = build_parser() if parser is None else parser
    lines = [
        "# The pprm command",
        "",
        "<!-- Generated from the argument parser by `python -m pprm.cli.reference > docs/CLI.md`;",
        "     edit the verbs in pprm/cli, then regenerate. -->",
        "",
    ]
    lines += _section(parser, 2)[2:]  # the top level under the title, not under a heading of its own
    lines += ["## Exit codes", "", "| code | name | meaning |", "|---|---|---|"]
    lines += [f"| {e.code} | {e.name} | {_cell(e.meaning)} |" for e in EXIT_CODES]
    lines += ["", "Reporting verbs take `--json` for one JSON value on stdout. Nothing ever prints a secret key, "
                  "a template or a score.", ""]
    for section in _sections(parser, 2):
        lines += section
    return "\n".join(lines).rstrip("\n") + "\n"


def main() -> int:
    """Print the reference on stdout (``python -m pprm.cli.reference > docs/CLI.md``).

    Returns:
        0.
    """
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
