"""examples/hello with uv: the same kind of app, its dependencies locked in uv.lock (`uv lock` makes it)."""

from __future__ import annotations

import os

from flask import Flask

app = Flask(__name__)


@app.get("/")
def index() -> str:
    return os.environ.get("GREETING", "Hello from Coltsfoot!") + " (dependencies locked by uv)\n"


@app.get("/healthz")
def healthz() -> str:
    return "ok\n"
