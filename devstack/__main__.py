"""`python -m devstack up|down|status|host-down HOST`: what `make up`, `make down`, `make status` and
`make host-down HOST=...` run."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from devstack.local import main_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "host-down"])
    parser.add_argument("host", nargs="?", default="", help="host-down: the host, e.g. host-2")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the supervisor does (stderr)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="devstack: %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.command == "host-down" and not args.host:
        parser.error("host-down needs the host's name, e.g. host-2")
    try:
        return main_command(args.command, args.host)
    except BrokenPipeError:  # `make status | head`: the reader is gone, so is the need to write
        # Point stdout at /dev/null so the interpreter's final flush does not fail a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
