"""Hosts: what an operator sees of them and the states an operator sets (drain, undrain). Registration,
heartbeats and marking a host down belong to its worker and the reconciler.

Kept free of imports: Django imports `platform_apps.hosts` at start-up, looking for an AppConfig."""
