"""What every command-line entry point does with the failures a user can fix.

Missing data or weights, a download that cannot reach its server, a bad argument or an unknown name:
the message already says what is wrong and what to do, so a traceback (30 lines through
concurrent.futures when a worker raised it) only buries it. ``run_cli(main)`` prints ``error: <message>``
(and the message's further lines, its hint) and exits 1, or 2 for a bad argument as argparse does.
A TypeError or KeyError the interpreter raises is a bug, not a bad argument, and keeps its traceback, as
does everything else; ``--debug`` (any CLI) or ``SMARTFRZ_DEBUG=1`` keeps it for every error.
"""
from __future__ import annotations

import linecache
import os
import re
import sys
from pathlib import Path

_OURS = (Path(__file__).resolve().parents[1], Path(__file__).resolve().parents[2] / "scripts")


def run_cli(main, argv=None) -> None:
    """Calls ``main(argv)`` without ``--debug``; for ``if __name__ == "__main__":`` blocks."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("SMARTFRZ_DEBUG", "").lower() not in ("", "0", "false", "no")
    try:
        main([a for a in argv if a != "--debug"])
    except SystemExit as e:
        if isinstance(e.code, str):  # raise SystemExit("--out must end in .json ..."): a bad argument
            print(f"error: {e.code}", file=sys.stderr)
            sys.exit(2)
        raise
    except (FileNotFoundError, ValueError, TypeError, LookupError) as e:
        if debug or not (isinstance(e, FileNotFoundError) or _raised_by_us(e)):
            raise
        first, *hint = _message(e).splitlines() or [type(e).__name__]
        print(f"error: {first}", *hint, sep="\n", file=sys.stderr)
        sys.exit(1 if isinstance(e, FileNotFoundError) else 2)


def _message(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror and e.filename:  # open("x"): "[Errno 2] ..." reads worse
        return f"{e.strerror}: {e.filename}"
    if isinstance(e, KeyError) and len(e.args) == 1:  # str(KeyError) is the repr of its message
        return str(e.args[0])
    return str(e)


def _raised_by_us(e: BaseException) -> bool:
    """A ``raise`` statement of this package (or scripts/) wrote the message for a user; ``{}["x"]`` or a
    call with the wrong arguments raises from a line that is no ``raise``."""
    remote = getattr(e.__cause__, "tb", None)  # from a worker process: its traceback, as text
    if isinstance(remote, str):
        frames = re.findall(r'File "(.+?)", line (\d+)', remote)
        if not frames:
            return False
        path, line = frames[-1][0], int(frames[-1][1])
    else:
        tb = e.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if tb is None:
            return False
        path, line = tb.tb_frame.f_code.co_filename, tb.tb_lineno
    where = Path(path).resolve()
    return any(where.is_relative_to(d) for d in _OURS) and linecache.getline(path, line).lstrip().startswith("raise")
