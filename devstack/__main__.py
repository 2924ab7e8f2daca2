"""`python -m devstack up|down|status`: what `make up`, `make down` and `make status` run."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from devstack.local import main_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the supervisor does (stderr)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="devstack: %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return main_command(args.command)
    except BrokenPipeError:  # `make status | head`: the reader is gone, so is the need to write
        # Point stdout at /dev/null so the interpreter's final flush does not fail a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
