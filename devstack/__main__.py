"""`python -m devstack up|down|status`: what `make up`, `make down` and `make status` run."""

from __future__ import annotations

import argparse
import logging
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
    return main_command(args.command)


if __name__ == "__main__":
    raise SystemExit(main())
