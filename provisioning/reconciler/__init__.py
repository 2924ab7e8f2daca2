"""The level-triggered reconciler: desired state from the platform DB, actual state observed
from podman and Caddy, repairs for every difference. See `runner.reconcile_pass`."""
