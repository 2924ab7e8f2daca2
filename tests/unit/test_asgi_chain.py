"""Under ASGI (granian serves the API) the middleware chain runs in one thread: one hop from the event loop
into the sync chain and one back at its bottom, not one per middleware hook (a dozen thread switches per
request, a third of a `GET /apps` on the 2-core benchmark machine)."""

from __future__ import annotations

from typing import Any

from asgiref.sync import AsyncToSync
from asgiref.sync import SyncToAsync
from django.core.handlers.asgi import ASGIHandler
from django.utils.deprecation import MiddlewareMixin


def _chain(node: Any) -> list[Any]:
    """The handlers from the ASGI handler's middleware chain down to the view resolver."""
    links: list[Any] = []
    while node is not None and len(links) < 200:
        links.append(node)
        node = getattr(node, "func", None) or getattr(node, "__wrapped__", None) or getattr(node, "get_response", None)
    return links


def test_the_asgi_middleware_chain_switches_threads_once_each_way():
    handler: Any = ASGIHandler()
    links = _chain(handler._middleware_chain)

    assert isinstance(links[0], SyncToAsync)  # the event loop hands the request to the sync chain once
    assert sum(isinstance(link, SyncToAsync) for link in links) == 1
    assert sum(isinstance(link, AsyncToSync) for link in links) == 1  # and the chain hands it back once
    mixins = [link for link in links if isinstance(link, MiddlewareMixin)]
    assert len(mixins) >= 5  # Django's own and WhiteNoise, found in the chain
    assert not any(getattr(link, "async_mode", False) for link in mixins)
