"""The states an operator sets on a host: `host_drain` and `host_undrain`, shared by `manage.py host` and the
console.

A draining host takes no new placements (`provisioning.placement` places only on active hosts); what already
runs there keeps running until the workflow moves it. A down host is the reconciler's to mark (missed
heartbeats) and its worker's to bring back (its next heartbeat), so an operator can neither drain nor undrain
one. Each change is one conditional UPDATE on the state it was read in: a heartbeat or a reconcile pass that
changes the row at the same time is never overwritten, the read is simply taken again."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.db import transaction

from audit import actions
from audit.services import audit_record
from core.actor import Actor
from core.errors import ApiError
from core.errors import Conflict
from core.queue import enqueue_on_commit
from platform_apps.models import Host

logger = logging.getLogger(__name__)

# A state change is read, then written conditionally; a row that changed in between is read again, this often.
ATTEMPTS = 3


class HostNotFound(ApiError):
    status = 404

    def __init__(self, name: str) -> None:
        super().__init__("host.not_found", f"No host is named {name!r}.")


@dataclass(frozen=True)
class HostStateChange:
    """The host as it is now, and whether this call changed it (False: it already was in that state)."""

    host: Host
    changed: bool
    previous: str

    @property
    def message(self) -> str:
        if not self.changed:
            return f"Host {self.host.name} is already {self.host.state}."
        return f"Host {self.host.name}: {self.previous} -> {self.host.state}."


def _state_set(
    *, name: str, source: str, target: str, refused: str, action: str, actor: Actor | None
) -> HostStateChange:
    for _ in range(ATTEMPTS):
        host = Host.objects.filter(name=name).first()
        if host is None:
            raise HostNotFound(name)
        if host.state == target:
            return HostStateChange(host=host, changed=False, previous=host.state)
        if host.state != source:
            raise Conflict("host.down", refused.format(name=host.name))
        with transaction.atomic():
            changed = Host.objects.filter(pk=host.pk, state=source).update(state=target) == 1
            if changed:
                audit_record(
                    action=action,
                    tenant_id=None,
                    object_type="host",
                    object_id=host.public_id,
                    details={"name": host.name, "from": source, "to": target},
                    actor=actor,
                )
                # The workflow acts on the new state at once rather than at its next periodic pass.
                enqueue_on_commit("coltsfoot.reconcile")
        if changed:
            logger.info(
                "host state changed",
                extra={"host": host.name, "host_id": str(host.public_id), "from_state": source, "to_state": target},
            )
            host.state = target
            return HostStateChange(host=host, changed=True, previous=source)
    raise Conflict("host.busy", f"Host {name} kept changing state meanwhile; try again.")


def host_drain(*, name: str, actor: Actor | None = None) -> HostStateChange:
    """active -> draining: the host takes no new placements. Draining a draining host changes nothing."""
    return _state_set(
        name=name,
        source=Host.State.ACTIVE,
        target=Host.State.DRAINING,
        refused="Host {name} is down: it takes no placements already. Drain it once its worker heartbeats again.",
        action=actions.HOST_DRAIN,
        actor=actor,
    )


def host_undrain(*, name: str, actor: Actor | None = None) -> HostStateChange:
    """draining -> active: the host takes placements again. Undraining an active host changes nothing."""
    return _state_set(
        name=name,
        source=Host.State.DRAINING,
        target=Host.State.ACTIVE,
        refused="Host {name} is down: it becomes active again by itself when its worker heartbeats.",
        action=actions.HOST_UNDRAIN,
        actor=actor,
    )
