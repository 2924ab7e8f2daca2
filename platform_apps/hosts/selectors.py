"""Reading hosts with what is placed on them, for the console and `manage.py host list`."""

from __future__ import annotations

from django.db.models import Count
from django.db.models import QuerySet
from django.db.models import Sum
from django.db.models.functions import Coalesce

from platform_apps.models import Host


def host_list() -> QuerySet[Host]:
    """Every host, by name, annotated with `placed_memory_mb` (the memory of the replicas placed on it: each
    takes its app's `memory_mb`) and `replicas_placed`, in one query."""
    return Host.objects.annotate(
        placed_memory_mb=Coalesce(Sum("replicas__deployment__app__memory_mb"), 0),
        replicas_placed=Count("replicas"),
    ).order_by("name")
