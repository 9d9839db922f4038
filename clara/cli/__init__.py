"""The command-line programs (one module per command: `clara-evaluate` is `clara.cli.evaluate`;
`clara-train` is clara.train.cli, which imports training) and what they share: usage errors as
one line on stderr with exit status 2, instead of argparse's usage dump or a traceback.
`scripts/*.py` are shims over these modules, so `python scripts/X.py` and the console scripts
that `pip install .` puts on PATH run the same code."""
from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NoReturn

EXIT_USAGE = 2
CONSOLE_PREFIX = "clara-"  # the console scripts' names (pyproject.toml [project.scripts])


def program_name(script: str) -> str:
    """The name errors are reported under: the console script's (`clara-train`) when run as one,
    else `script` (`train.py`: run as scripts/train.py, or main() called in-process by a test)."""
    invoked = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return invoked if invoked.startswith(CONSOLE_PREFIX) else script


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


# errno values that mean "the output cannot be written" (full disk or quota, file too big, closed pipe)
_OUTPUT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EPIPE)


def run_main(prog: str, main: Callable[[], int]) -> NoReturn:
    """`sys.exit(main())`, except that an OSError the script did not handle (a full disk while
    writing its results, standard output full or closed: `> /dev/full`, `| head`) ends as one
    `report_error` line and EXIT_USAGE instead of a traceback."""
    try:
        status = main()
        sys.stdout.flush()  # block-buffered output fails here, not at interpreter exit
    except OSError as exc:
        _drop_unwritable_stdout()
        what = "cannot write the output: " if exc.errno in _OUTPUT_ERRNOS else ""
        where = f" ({exc.filename})" if exc.filename else ""
        sys.exit(report_error(prog, f"{what}{exc.strerror or exc}{where}"))
    sys.exit(status)


def _drop_unwritable_stdout() -> None:
    """Point standard output at os.devnull if it cannot take its pending text, so that the
    interpreter's final flush does not report the same failure again."""
    try:
        sys.stdout.flush()
    except OSError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
