"""One error policy for the `melp-fast` command and the training script.

A mistake of the user's (a missing file, an unknown task, key or preset, a bad option value, data that cannot be
used) raises `UserError` with one line that names the file, record, option or key and says what to do.
`run_main` turns it into that one line on stderr and exit code 2, with no traceback; `--debug` on the command
line or MELP_DEBUG=1 in the environment re-raises it, traceback included.
"""

from __future__ import annotations

import errno
import os
import sys

EXIT_USER_ERROR = 2
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # one line too: the data is recoverable by running the command again


class UserError(Exception):
    """A problem with the user's input: the message is shown as one line, without a traceback."""


class InputNotFound(UserError, FileNotFoundError):
    """A file or directory named on the command line does not exist."""


def debug_requested(argv=None) -> bool:
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in argv or os.environ.get("MELP_DEBUG", "") not in ("", "0")


def run_main(main, argv=None) -> int:
    """Call main(argv) under the error policy; returns the exit code (0 when main returns None)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    argv = [a for a in argv if a != "--debug"]
    try:
        result = main(argv)
    except UserError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as e:
        if debug or e.errno not in DISK_FULL:
            raise
        where = f" writing {e.filename}" if e.filename else ""
        print(f"error: {os.strerror(e.errno)}{where}: free some space and run the same command again (finished "
              f"shards and checkpoints are kept; an interrupted one is redone)", file=sys.stderr)
        return EXIT_USER_ERROR
    return result if isinstance(result, int) else 0
