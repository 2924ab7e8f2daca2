"""List endpoints: `limit` (1-100, default 20) and `offset`, answered as `{"items": [...], "count": N}`.

A list view returns its queryset and is decorated with `@paginated`; Ninja's limit/offset
pagination slices and counts it and documents the parameters and the paged schema.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from django.db.models import QuerySet
from django.http import HttpRequest
from ninja import Field
from ninja import Schema
from ninja.pagination import LimitOffsetPagination
from ninja.pagination import paginate

MAX_LIMIT = 100
DEFAULT_LIMIT = 20
MAX_OFFSET = 1_000_000


class Page(Schema):
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)
    offset: int = Field(0, ge=0, le=MAX_OFFSET)


class Pagination(LimitOffsetPagination):
    """Ninja's limit/offset pagination with the API's bounds: a limit outside 1-100 or an offset
    outside 0-1,000,000 is a 422, not silently clamped."""

    Input = Page  # type: ignore[assignment]  # a named schema, so OpenAPI calls it Page as before

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(max_limit=MAX_LIMIT, **kwargs)

    def paginate_queryset(self, queryset: QuerySet[Any], pagination: Any, request: HttpRequest, **params: Any) -> Any:
        """The page first, with one row more than it holds: without that row the page is the last one, so its
        end is the count and the COUNT query is not needed (most lists fit in one page, a full one included)."""
        offset = pagination.offset
        limit = min(pagination.limit, self.max_limit)
        rows = list(queryset[offset : offset + limit + 1])
        last_page = len(rows) <= limit and (bool(rows) or offset == 0)
        count = offset + len(rows) if last_page else self._items_count(queryset)
        return {self.items_attribute: rows[:limit], "count": count}


def paginated[View: Callable[..., Any]](view: View) -> View:
    """`@paginate(Pagination)`, for views in modules with `from __future__ import annotations`.

    Ninja reads the view's parameters through the wrapper `paginate` returns and resolves string
    annotations in the *wrapper's* module (ninja.pagination), where `uuid` and the like are not
    defined; giving the wrapper the view's already-resolved signature avoids that."""
    wrapper: View = paginate(Pagination)(view)
    wrapper.__signature__ = inspect.signature(view, eval_str=True)  # type: ignore[attr-defined]
    return wrapper
