# Coltsfoot: `make up` runs the whole platform locally, `make test` is what CI runs.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

WITH_ENV := source scripts/env.sh &&
PYTEST_WORKERS ?= 2

.PHONY: help bootstrap deps base-image lint typecheck unit integration test up down status logs bench

help:
	@echo "make up        start the platform (Redis, Caddy, PostgreSQL, PgBouncer, Celery, API) and deploy examples/hello"
	@echo "make down      stop everything make up started"
	@echo "make status    show what is running"
	@echo "make test      install what is missing, then lint, type check, unit and integration tests"
	@echo "make bench     run the deploy benchmark (prints JSON)"

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

integration: base-image
	@$(WITH_ENV) uv run --frozen pytest tests/integration -n $(PYTEST_WORKERS) --dist loadfile -q -m integration

test: lint typecheck unit integration

up: base-image
	@$(WITH_ENV) scripts/stack.sh up

down:
	@$(WITH_ENV) scripts/stack.sh down

status:
	@$(WITH_ENV) scripts/stack.sh status

bench: base-image
	@$(WITH_ENV) uv run --frozen python -m bench.deploy
