"""The tenant-facing read of the audit trail (the trail itself is the `audit` app, below the domain's
feature packages, so every service can write to it)."""
