"""The Coltsfoot sample app: a greeting at `/` and a health check at `/healthz`.

It writes nothing to disk, so it runs on a read-only root filesystem with HOME=/tmp.
"""

from __future__ import annotations

import html
import os

from flask import Flask
from flask import Response

app = Flask(__name__)


@app.get("/")
def index() -> Response:
    greeting = os.environ.get("GREETING", "Hello from Coltsfoot!")
    deployment = os.environ.get("COLTSFOOT_DEPLOYMENT_ID", "")
    lines = [f"<h1>{html.escape(greeting)}</h1>"]
    if deployment:
        lines.append(f"<p>Deployment <code>{html.escape(deployment)}</code></p>")
    body = "<!doctype html>\n<meta charset=utf-8>\n<title>hello</title>\n" + "\n".join(lines) + "\n"
    return Response(body, mimetype="text/html")


@app.get("/healthz")
def healthz() -> Response:
    return Response("ok\n", mimetype="text/plain")


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")))
