"""coltsfoot: the tenant's command-line client of the Coltsfoot API."""

from __future__ import annotations

__version__ = "0.1.0"
