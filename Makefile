# Coltsfoot: `make up` runs the whole platform locally, `make test` is what CI runs.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

WITH_ENV := source scripts/env.sh &&
PYTEST_WORKERS ?= 2

.PHONY: help bootstrap deps base-image lint typecheck unit test-unit-pg fuzz integration integration-pg test up down status host-down logs bench bench-reconcile bench-placement bench-routes bench-api

help:
	@echo "make up        start the platform (Redis, Caddy, PostgreSQL, PgBouncer, Celery, API) and deploy examples/hello"
	@echo "make down      stop everything make up started"
	@echo "make status    show what is running"
	@echo "make up HOSTS=2            the same with two simulated hosts, each with its own worker (kept for later runs)"
	@echo "make host-down HOST=host-2 kill that host's worker and stop its containers, as if it died"
	@echo "make test      install what is missing, then lint, type check, unit (SQLite and PostgreSQL), fuzz and integration tests"
	@echo "make test-unit-pg  the unit suite on a throwaway PostgreSQL (the concurrency tests run only there)"
	@echo "make integration-pg  the deploy and two-host integration tests, platform DB on PostgreSQL behind PgBouncer"
	@echo "make fuzz      schemathesis over the OpenAPI document, in process (hermetic, about a minute)"
	@echo "make bench     run every benchmark (deploy, routes, api) and print one JSON document with its goals"
	@echo "make bench-reconcile  time a reconcile pass over 1,000 apps against fakes (prints JSON)"
	@echo "make bench-placement  time placement and a dead host's re-placement at 10 hosts x 1,000 apps (prints JSON)"
	@echo "make bench-routes     time route switches with 50 and 5,000 apps on the edge (prints JSON)"
	@echo "make bench-api        API latency/throughput at 50 clients vs a bare Ninja endpoint, 8 SQLite writers (JSON)"

bootstrap:
	@scripts/bootstrap.sh

deps: bootstrap
	@$(WITH_ENV) uv sync --frozen --quiet

base-image: deps
	@$(WITH_ENV) DJANGO_SECRET_KEY=$${DJANGO_SECRET_KEY:-build-base-image-only} uv run --frozen python manage.py build_base_image

lint: deps
	@$(WITH_ENV) uv run --frozen ruff check .
	@$(WITH_ENV) uv run --frozen ruff format --check .
	@$(WITH_ENV) uv run --frozen lint-imports

typecheck: deps
	@$(WITH_ENV) uv run --frozen mypy .

unit: deps
	@$(WITH_ENV) uv run --frozen pytest tests/unit -n $(PYTEST_WORKERS) -q

# The unit suite again with the platform DB on PostgreSQL: a throwaway cluster on a free port (devstack.testdb),
# reached directly, not through PgBouncer, since pytest-django creates and drops one test database per xdist
# worker, which needs a session. The tests marked `postgres` (real concurrency) run only in this pass.
test-unit-pg: deps
	@$(WITH_ENV) uv run --frozen python -m devstack.testdb -- uv run --frozen pytest tests/unit -n $(PYTEST_WORKERS) -q

# Schemathesis against the API in process (tests/fuzz): hermetic like the unit tier, kept apart
# because it is one long run per operation rather than many small tests.
fuzz: deps
	@$(WITH_ENV) uv run --frozen pytest tests/fuzz -n $(PYTEST_WORKERS) -q

integration: base-image
	@$(WITH_ENV) uv run --frozen pytest tests/integration -n $(PYTEST_WORKERS) --dist loadfile -q -m integration

# The deploy, platform DB and two-host integration files with the platform DB on PostgreSQL through PgBouncer in
# transaction mode, as
# `COLTSFOOT_PLATFORM_DB=postgres make up` runs it (the whole suite on both DBs would double CI's time).
integration-pg: base-image
	@$(WITH_ENV) COLTSFOOT_TEST_PLATFORM_DB=postgres uv run --frozen pytest tests/integration/test_deploy.py tests/integration/test_platform_db.py tests/integration/test_hosts.py -q -m integration

test: lint typecheck unit test-unit-pg fuzz integration integration-pg

# The supervisor is devstack/ (python -m devstack); the same code runs the integration tests' and the
# benchmark's stacks.
# HOSTS=N (kept in the state dir): N simulated hosts, each with its own worker (README "Several hosts").
up: base-image
	@$(WITH_ENV) COLTSFOOT_HOSTS=$(HOSTS) uv run --frozen python -m devstack up

# HOST=host-2: that host's worker killed and its containers stopped, as if the machine died.
host-down:
	@$(WITH_ENV) uv run --frozen python -m devstack host-down $(HOST)

down:
	@$(WITH_ENV) uv run --frozen python -m devstack down

status:
	@$(WITH_ENV) uv run --frozen python -m devstack status

bench: base-image
	@$(WITH_ENV) uv run --frozen python -m bench

bench-reconcile: deps
	@$(WITH_ENV) uv run --frozen python -m bench.reconcile

bench-placement: deps
	@$(WITH_ENV) uv run --frozen python -m bench.placement

bench-routes: deps
	@$(WITH_ENV) uv run --frozen python -m bench.routes

bench-api: deps
	@$(WITH_ENV) uv run --frozen python -m bench.api
