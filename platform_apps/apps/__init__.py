"""Apps: create, change, list, delete (the teardown is the workflow's).

Kept free of imports: Django imports `platform_apps.apps` at start-up, looking for an AppConfig."""
