from __future__ import annotations

from coltsfoot_cli.main import run

run()
