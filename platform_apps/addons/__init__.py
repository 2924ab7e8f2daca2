"""The PostgreSQL add-on of an app: the intent and its state (the workflow provisions it)."""
