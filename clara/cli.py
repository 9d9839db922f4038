"""What the scripts in scripts/ share: usage errors as one line on stderr with exit status 2,
instead of argparse's usage dump or a traceback."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import NoReturn

EXIT_USAGE = 2


def report_error(prog: str, message: object, details: Iterable[str] = ()) -> int:
    """Print `<prog>: error: <message on one line>` (then any detail lines); return EXIT_USAGE."""
    print(f"{prog}: error: {' '.join(str(message).split())}", file=sys.stderr)
    for line in details:
        print(line, file=sys.stderr)
    return EXIT_USAGE


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one `report_error` line.

    `prog` is required: argparse would otherwise take it from sys.argv[0], which is the test
    runner when a script's main() is called in-process.
    """

    def __init__(self, prog: str, docstring: str | None = None, **kwargs) -> None:
        if docstring:  # first paragraph: description; the rest: epilog, layout kept
            head, *rest = docstring.strip().split("\n\n")
            kwargs.setdefault("description", head)
            if rest:
                kwargs.setdefault("epilog", "\n\n".join(rest))
                kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(prog=prog, **kwargs)

    def error(self, message: str) -> NoReturn:
        sys.exit(report_error(self.prog, f"{message} (see --help)"))
