"""Drivers: one module per outside system (podman, PostgreSQL, PgBouncer, git, archives, the
buildpack). They know nothing of the platform's models; the workflow layer drives them."""
