"""The process supervisor of Coltsfoot: one implementation for `make up`/`down`/`status` (detached, under the
state dir), the integration fixtures and the benchmarks (owned, on free ports in temp dirs).

- `devstack.process`: one supervised process (pid file, log, readiness until a deadline, stop/kill).
- `devstack.services`: Redis, Caddy, PostgreSQL, PgBouncer, the registry, and the platform's worker, beat, API.
- `devstack.stack`: a whole stack in order, with by-name stop/start/kill.
- `devstack.local`: the `make up` installation over a state dir; `python -m devstack up|down|status`.
"""
