#!/usr/bin/env bash
# The whole Coltsfoot platform on one machine, in the background: `make up`, `make down`, `make status`
# call `scripts/stack.sh up|down|status`.
#
# `up` starts whatever is not running yet (Redis, Caddy, PostgreSQL, PgBouncer, the Celery worker and
# beat, the API under gunicorn), migrates, creates the `demo` tenant once, deploys examples/hello when the
# app has nothing live, and prints the URLs and the demo token. Running it again is harmless and quick.
# `down` stops all of that, app containers included; `status` prints one line per service.
#
# Everything lives under the state dir, COLTSFOOT_STATE_DIR (default ~/.local/state/coltsfoot):
#   secrets.env        generated once, mode 600: DJANGO_SECRET_KEY, COLTSFOOT_FERNET_KEYS, the PostgreSQL
#                      superuser and PgBouncer admin passwords. Reused by every `up`; values in the caller's
#                      environment do not override it (edit the file to rotate, then `make down && make up`).
#   env                rewritten by every `up`, mode 600: the environment the platform processes get.
#                      `set -a; . <state>/env; set +a` and `uv run python manage.py ...` talks to this stack.
#   demo-tenant.json   the demo tenant's id and token (create_tenant shows a token only once), mode 600.
#   data/              COLTSFOOT_DATA_DIR unless the caller sets it: SQLite DB, uploads, build dirs.
#   run/ logs/         pid files and one log per service.
#   redis/ caddy/      their data and config (Caddy's HOME and XDG dirs point here).
#   pg                 PostgreSQL's data dir and socket, PgBouncer's ini and auth_file. PostgreSQL and
#                      PgBouncer refuse to run as root, so under root they run as the `postgres` user, which
#                      cannot traverse /root: then this is a symlink to <postgres home>/coltsfoot-<hash>.
#
# Ports (loopback unless said otherwise), chosen so a developer's own services keep theirs:
#   API COLTSFOOT_API_BIND=127.0.0.1:8000, edge COLTSFOOT_EDGE_LISTEN=127.0.0.1:8080, Caddy admin from
#   COLTSFOOT_CADDY_ADMIN_URL=http://127.0.0.1:2019, Redis COLTSFOOT_REDIS_PORT=6390, PostgreSQL
#   COLTSFOOT_PG_PORT=5433, PgBouncer COLTSFOOT_PGBOUNCER_PORT=6433 on 0.0.0.0 (tenant containers reach it
#   through their network's gateway).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
# shellcheck source=scripts/env.sh
. "$REPO/scripts/env.sh"

SYS_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH=$PATH:$SYS_PATH
STATE=$(realpath -m "${COLTSFOOT_STATE_DIR:-$HOME/.local/state/coltsfoot}")
RUN=$STATE/run
LOGS=$STATE/logs
SECRETS_FILE=$STATE/secrets.env
ENV_FILE=$STATE/env
DEMO_FILE=$STATE/demo-tenant.json
DEMO_TENANT=demo
DEMO_APP=hello
DEMO_SOURCE=$REPO/examples/hello

REDIS_PORT=${COLTSFOOT_REDIS_PORT:-6390}
PG_PORT=${COLTSFOOT_PG_PORT:-5433}
PGBOUNCER_PORT=${COLTSFOOT_PGBOUNCER_PORT:-6433}
API_BIND=${COLTSFOOT_API_BIND:-127.0.0.1:8000}
EDGE_LISTEN=${COLTSFOOT_EDGE_LISTEN:-127.0.0.1:8080}
CADDY_ADMIN_URL=${COLTSFOOT_CADDY_ADMIN_URL:-http://127.0.0.1:2019}
CADDY_ADMIN_LISTEN=${CADDY_ADMIN_URL#*://}
CADDY_ADMIN_LISTEN=${CADDY_ADMIN_LISTEN%%/*}
INSTANCE_ID=${COLTSFOOT_INSTANCE_ID:-default}
API_URL=http://$(dial_host="${API_BIND%:*}"; [ "$dial_host" = 0.0.0.0 ] && dial_host=127.0.0.1; echo "$dial_host:${API_BIND##*:}")/api/v1
EDGE_DIAL=$(dial_host="${EDGE_LISTEN%:*}"; [ "$dial_host" = 0.0.0.0 ] && dial_host=127.0.0.1; echo "$dial_host:${EDGE_LISTEN##*:}")
# query_timeout must sit above the statement timeout Postgres applies to tenant roles, so well-behaved
# queries get Postgres's clean error and only a tenant who lifted its own timeout meets PgBouncer's.
STATEMENT_TIMEOUT_S=$(( ${COLTSFOOT_TENANT_PG_STATEMENT_TIMEOUT_MS:-30000} / 1000 ))
IDLE_TX_TIMEOUT_S=$(( ${COLTSFOOT_TENANT_PG_IDLE_TX_TIMEOUT_MS:-60000} / 1000 ))
API_READY_TIMEOUT=90
DEPLOY_TIMEOUT=600

SERVICES=(redis caddy postgres pgbouncer worker beat api)
# What /proc/<pid>/cmdline must contain for a pid file to count, so a pid reused by some unrelated
# program is not taken for (and never signalled as) ours.
declare -A MARKER=([redis]=redis-server [caddy]=caddy [postgres]=postgres [pgbouncer]=pgbouncer
  [worker]=celery [beat]=celery [api]=gunicorn)
declare -A LOG_OFFSET=()

log() { printf '==> %s\n' "$*"; }
warn() { printf 'stack: %s\n' "$*" >&2; }

show_log() { # NAME [LINES]: the tail of logs/NAME.log on stderr
  local file=$LOGS/$1.log lines=${2:-40}
  [ -f "$file" ] || return 0
  printf -- '--- last %s lines of %s ---\n' "$lines" "$file" >&2
  tail -n "$lines" "$file" >&2
  printf -- '--- end of %s ---\n' "$file" >&2
}

die() { # MESSAGE [LOG NAME]
  warn "$1"
  if [ -n "${2:-}" ]; then show_log "$2"; fi
  warn "services started so far keep running; \`make down\` (scripts/stack.sh down) stops them"
  exit 1
}

require() { # BINARY PACKAGE
  command -v "$1" >/dev/null 2>&1 \
    || die "\`$1\` not found (package $2); scripts/bootstrap.sh installs it, and \`make up\` runs that first"
}

port_busy() { # HOST PORT: something accepts connections there
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

# --- service user and directories --------------------------------------------------------------

if [ "$(id -u)" -eq 0 ]; then
  SVC_USER=postgres
else
  SVC_USER=""
fi

svc_dir() {
  if [ -z "$SVC_USER" ]; then
    echo "$STATE/pg"
  else
    local home
    home=$(getent passwd "$SVC_USER" | cut -d: -f6)
    echo "${home:-/var/lib/postgresql}/coltsfoot-$(printf '%s' "$STATE" | sha256sum | cut -c1-12)"
  fi
}
SVC_DIR=$(svc_dir)
PGDATA=$SVC_DIR/data
PG_SOCKET_DIR=$SVC_DIR/sock
PGBOUNCER_DIR=$SVC_DIR/pgbouncer
PGBOUNCER_INI=$PGBOUNCER_DIR/pgbouncer.ini
PGBOUNCER_AUTH_FILE=$PGBOUNCER_DIR/userlist.txt
PGBOUNCER_ADMIN_USER=pgbouncer

pg_bindir() {
  local candidate
  if command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(command -v pg_ctl)"
    return
  fi
  candidate=$(printf '%s\n' /usr/lib/postgresql/*/bin/postgres | grep -v '\*' | sort -V | tail -n 1 || true)
  candidate=${candidate%/postgres}
  [ -n "$candidate" ] || die "PostgreSQL server binaries not found; install them with \`apt-get install -y postgresql\`"
  echo "$candidate"
}

# The argv prefix that runs a command as the service user with a clean environment. Both env and
# setpriv exec, so a command spawned through it keeps the pid spawn recorded.
SVC_PREFIX=(env -i PATH="$SYS_PATH" HOME="$SVC_DIR" LC_ALL=C.UTF-8 TZ=UTC)
if [ -n "$SVC_USER" ]; then
  SVC_PREFIX+=(setpriv --reuid="$SVC_USER" --regid="$SVC_USER" --init-groups --)
fi

as_svc() { "${SVC_PREFIX[@]}" "$@"; }

svc_own() { # PATH MODE: hand PATH to the service user
  if [ -n "$SVC_USER" ]; then chown "$SVC_USER:$SVC_USER" "$1"; fi
  chmod "$2" "$1"
}

# --- processes -----------------------------------------------------------------------------------

pid_of() { # NAME: print the pid if NAME is running (pid file, live process, expected command line)
  local file=$RUN/$1.pid pid
  [ -f "$file" ] || return 1
  pid=$(<"$file")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "${MARKER[$1]}" || return 1
  echo "$pid"
}

spawn() { # NAME CMD...: start CMD in its own session (so it is its process group's leader), detached,
  # stdout and stderr appended to logs/NAME.log, pid in run/NAME.pid. Every wrapper in CMD execs
  # (env, setpriv), so $! is the service's own pid.
  local name=$1 file
  shift
  file=$LOGS/$name.log
  printf '=== %s starting %s: %s\n' "$(date '+%F %T')" "$name" "$*" >>"$file"
  LOG_OFFSET[$name]=$(stat -c %s "$file")
  # 9>&-: the service must not inherit the lock this script holds.
  setsid "$@" >>"$file" 2>&1 </dev/null 9>&- &
  echo $! >"$RUN/$name.pid"
}

wait_for() { # NAME SECONDS WHAT CMD...: poll CMD until it succeeds; fail if NAME dies or time runs out
  local name=$1 seconds=$2 what=$3 deadline
  shift 3
  deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    pid_of "$name" >/dev/null || die "$name exited while starting (waiting for $what)" "$name"
    [ "$SECONDS" -lt "$deadline" ] || die "$name: no $what within ${seconds}s" "$name"
    sleep 0.2
  done
}

log_matches() { # NAME REGEX: the log written since NAME's last start matches
  grep -Eq -- "$2" < <(tail -c +"$((${LOG_OFFSET[$1]:-0} + 1))" "$LOGS/$1.log" 2>/dev/null)
}

already_running() { # NAME DESCRIPTION: true (and says so) if NAME runs
  local pid
  if pid=$(pid_of "$1"); then
    printf '    %-9s already running (pid %s) %s\n' "$1" "$pid" "$2"
    return 0
  fi
  rm -f "$RUN/$1.pid"
  return 1
}

ensure_port_free() { # NAME HOST PORT VARIABLE
  if port_busy "$2" "$3"; then
    die "$1: $2:$3 is already taken by a process this script did not start; free it or set $4"
  fi
}

alive() { # PID: the process exists and is not a zombie waiting for its new parent to reap it
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}

started() { printf '    %-9s started (pid %s) %s\n' "$1" "$(pid_of "$1" || echo '?')" "$2"; }

stop_service() { # NAME SIGNAL SECONDS: the service's own shutdown, then SIGKILL for its process group
  local name=$1 signal=$2 seconds=$3 pid deadline
  if ! pid=$(pid_of "$name"); then
    rm -f "$RUN/$name.pid"
    printf '    %-9s not running\n' "$name"
    return 0
  fi
  if [ "$name" = postgres ]; then
    # "fast": roll back open transactions and disconnect clients (PgBouncer is already gone).
    as_svc "$(pg_bindir)/pg_ctl" stop -D "$PGDATA" -m fast -w -t "$seconds" >>"$LOGS/postgres.log" 2>&1 || true
  else
    kill -s "$signal" "$pid" 2>/dev/null || true
  fi
  deadline=$((SECONDS + seconds))
  while alive "$pid" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
  if alive "$pid"; then
    warn "$name ignored SIG$signal for ${seconds}s; killing it"
  fi
  # The pid is its group's id (spawn used setsid): this also ends children the leader left behind,
  # e.g. Celery pool processes or PostgreSQL backends.
  kill -s KILL -- "-$pid" 2>/dev/null || true
  rm -f "$RUN/$name.pid"
  printf '    %-9s stopped (was pid %s)\n' "$name" "$pid"
}

# --- podman (app containers) --------------------------------------------------------------------

podman_cmd() {
  local args=(--runtime "${COLTSFOOT_RUNSC:-/usr/bin/runsc}") flag
  IFS=',' read -r -a flags <<<"${COLTSFOOT_RUNSC_FLAGS:-network=host}"
  for flag in "${flags[@]}"; do
    flag=${flag//[[:space:]]/}
    [ -n "$flag" ] && args+=(--runtime-flag "$flag")
  done
  "${COLTSFOOT_PODMAN:-podman}" "${args[@]}" "$@"
}

app_containers_running() {
  command -v "${COLTSFOOT_PODMAN:-podman}" >/dev/null 2>&1 || return 0
  podman_cmd ps --quiet --filter "label=coltsfoot.instance=$INSTANCE_ID" 2>/dev/null || true
}

# --- secrets and the platform environment --------------------------------------------------------

python_bin() {
  uv run --frozen python -c 'import sys; print(sys.executable)' 2>>"$LOGS/manage.log" \
    || die "cannot run the project's Python (\`uv sync\` first; make up does it)" manage
}

secrets_ensure() {
  [ -s "$SECRETS_FILE" ] && return 0
  log "generating secrets in $SECRETS_FILE"
  local tmp=$SECRETS_FILE.tmp
  (
    umask 077
    "$PY" - >"$tmp" <<'EOF'
import secrets

from cryptography.fernet import Fernet

print("# Generated once by scripts/stack.sh (make up); every later `up` reuses these values.")
print("# COLTSFOOT_FERNET_KEYS encrypts config vars and add-on credentials: to rotate, put a new key first")
print("# and keep the old ones after it (comma-separated). The two passwords were set when the PostgreSQL")
print("# cluster and PgBouncer were first created; changing them here alone locks the platform out.")
print(f"DJANGO_SECRET_KEY={secrets.token_urlsafe(50)}")
print(f"COLTSFOOT_FERNET_KEYS={Fernet.generate_key().decode()}")
print(f"STACK_PG_SUPERUSER_PASSWORD={secrets.token_hex(24)}")
print(f"STACK_PGBOUNCER_ADMIN_PASSWORD={secrets.token_hex(24)}")
EOF
  ) || die "could not generate secrets" manage
  mv "$tmp" "$SECRETS_FILE"
}

secrets_load() {
  local line key
  DJANGO_SECRET_KEY_VALUE="" FERNET_KEYS_VALUE="" PG_SUPERUSER_PASSWORD="" PGBOUNCER_ADMIN_PASSWORD=""
  while IFS= read -r line || [ -n "$line" ]; do
    case $line in '#'* | '') continue ;; esac
    key=${line%%=*}
    case $key in
      DJANGO_SECRET_KEY) DJANGO_SECRET_KEY_VALUE=${line#*=} ;;
      COLTSFOOT_FERNET_KEYS) FERNET_KEYS_VALUE=${line#*=} ;;
      STACK_PG_SUPERUSER_PASSWORD) PG_SUPERUSER_PASSWORD=${line#*=} ;;
      STACK_PGBOUNCER_ADMIN_PASSWORD) PGBOUNCER_ADMIN_PASSWORD=${line#*=} ;;
    esac
  done <"$SECRETS_FILE"
  if [ -z "$DJANGO_SECRET_KEY_VALUE" ] || [ -z "$FERNET_KEYS_VALUE" ] || [ -z "$PG_SUPERUSER_PASSWORD" ] \
    || [ -z "$PGBOUNCER_ADMIN_PASSWORD" ]; then
    die "$SECRETS_FILE lacks a value; restore it (or remove the whole state dir to start from scratch)"
  fi
}

platform_env_export() {
  # A DATABASE_URL in a developer's shell most likely belongs to another project; this stack keeps the
  # platform DB in SQLite under COLTSFOOT_DATA_DIR.
  unset DATABASE_URL
  local edge_port=${EDGE_LISTEN##*:}
  export DJANGO_SETTINGS_MODULE=config.settings
  export DJANGO_SECRET_KEY=$DJANGO_SECRET_KEY_VALUE
  export COLTSFOOT_FERNET_KEYS=$FERNET_KEYS_VALUE
  export COLTSFOOT_DATA_DIR=${COLTSFOOT_DATA_DIR:-$STATE/data}
  export COLTSFOOT_INSTANCE_ID=$INSTANCE_ID
  export COLTSFOOT_API_BIND=$API_BIND
  export COLTSFOOT_EDGE_LISTEN=$EDGE_LISTEN
  export COLTSFOOT_EDGE_URL_TEMPLATE=${COLTSFOOT_EDGE_URL_TEMPLATE:-http://{host\}:$edge_port/}
  export COLTSFOOT_CADDY_ADMIN_URL=$CADDY_ADMIN_URL
  export COLTSFOOT_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0
  export COLTSFOOT_TENANT_PG_ADMIN_DSN=postgresql://postgres:$PG_SUPERUSER_PASSWORD@127.0.0.1:$PG_PORT/postgres
  export COLTSFOOT_PGBOUNCER_PORT=$PGBOUNCER_PORT
  export COLTSFOOT_PGBOUNCER_ADMIN_DSN=postgresql://$PGBOUNCER_ADMIN_USER:$PGBOUNCER_ADMIN_PASSWORD@127.0.0.1:$PGBOUNCER_PORT/pgbouncer
  export COLTSFOOT_PGBOUNCER_AUTH_FILE=$PGBOUNCER_AUTH_FILE
  export PYTHONUNBUFFERED=1
  mkdir -p "$COLTSFOOT_DATA_DIR"
  local name
  (
    umask 077
    {
      echo "# Written by scripts/stack.sh up: the environment of the platform processes of this stack."
      echo "# set -a; . $ENV_FILE; set +a   then   uv run python manage.py ...   works against it."
      for name in $(compgen -e | grep -E '^(COLTSFOOT_|DJANGO_)' | sort); do
        printf '%s=%q\n' "$name" "${!name}"
      done
    } >"$ENV_FILE.tmp"
  )
  mv "$ENV_FILE.tmp" "$ENV_FILE"
}

# --- services ------------------------------------------------------------------------------------

redis_ping() {
  (
    exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT"
    printf 'PING\r\n' >&3
    IFS= read -r -t 2 reply <&3
    [[ $reply == +PONG* ]]
  )
}

start_redis() {
  already_running redis "on 127.0.0.1:$REDIS_PORT" && return 0
  ensure_port_free redis 127.0.0.1 "$REDIS_PORT" COLTSFOOT_REDIS_PORT
  mkdir -p "$STATE/redis"
  spawn redis env -i PATH="$SYS_PATH" "$(command -v redis-server)" --port "$REDIS_PORT" --bind 127.0.0.1 \
    --protected-mode yes --dir "$STATE/redis" --save 60 1 --appendonly no --daemonize no --logfile ""
  wait_for redis 20 "PONG" redis_ping
  started redis "on 127.0.0.1:$REDIS_PORT"
}

start_caddy() {
  already_running caddy "admin $CADDY_ADMIN_LISTEN, edge $EDGE_LISTEN" && return 0
  ensure_port_free caddy "${CADDY_ADMIN_LISTEN%:*}" "${CADDY_ADMIN_LISTEN##*:}" COLTSFOOT_CADDY_ADMIN_URL
  ensure_port_free caddy "${EDGE_DIAL%:*}" "${EDGE_DIAL##*:}" COLTSFOOT_EDGE_LISTEN
  local home=$STATE/caddy/home
  mkdir -p "$home/data" "$home/config"
  # Only the admin endpoint: the platform creates the edge server and every route through the admin API.
  # persist=false: nothing is autosaved, so a restarted Caddy starts empty and `up` re-routes the demo app.
  printf '{"admin": {"listen": "%s", "config": {"persist": false}}}\n' "$CADDY_ADMIN_LISTEN" \
    >"$STATE/caddy/caddy.json"
  spawn caddy env -i PATH="$SYS_PATH" HOME="$home" XDG_DATA_HOME="$home/data" XDG_CONFIG_HOME="$home/config" \
    "$(command -v caddy)" run --config "$STATE/caddy/caddy.json"
  wait_for caddy 20 "admin API" curl -fsS --noproxy '*' --max-time 2 -o /dev/null "$CADDY_ADMIN_URL/config/"
  started caddy "admin $CADDY_ADMIN_LISTEN (the edge $EDGE_LISTEN appears with the first route)"
}

svc_dirs_ensure() {
  if [ -n "$SVC_USER" ]; then
    id "$SVC_USER" >/dev/null 2>&1 || die "OS user $SVC_USER does not exist; \`apt-get install -y postgresql\` creates it"
  fi
  local dir
  for dir in "$SVC_DIR" "$PG_SOCKET_DIR" "$PGBOUNCER_DIR"; do
    mkdir -p "$dir"
    svc_own "$dir" 700
  done
  if [ "$SVC_DIR" != "$STATE/pg" ] && [ ! -e "$STATE/pg" ]; then
    ln -s "$SVC_DIR" "$STATE/pg"
  fi
}

pg_login() {
  PGPASSWORD=$PG_SUPERUSER_PASSWORD PGCONNECT_TIMEOUT=2 psql -X -h 127.0.0.1 -p "$PG_PORT" -U postgres \
    -d postgres -Atqc 'SELECT 1'
}

start_postgres() {
  already_running postgres "on 127.0.0.1:$PG_PORT" && return 0
  ensure_port_free postgres 127.0.0.1 "$PG_PORT" COLTSFOOT_PG_PORT
  local bindir
  bindir=$(pg_bindir)
  if [ ! -s "$PGDATA/PG_VERSION" ]; then
    log "initialising a PostgreSQL cluster in $PGDATA"
    local pwfile=$SVC_DIR/initdb.pw
    (
      umask 077
      printf '%s\n' "$PG_SUPERUSER_PASSWORD" >"$pwfile"
    )
    svc_own "$pwfile" 600
    # peer over the private socket, SCRAM over TCP; listen_addresses below keeps TCP on loopback.
    if ! as_svc "$bindir/initdb" -D "$PGDATA" -U postgres --pwfile="$pwfile" --auth-local=peer \
      --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 --no-instructions >>"$LOGS/postgres.log" 2>&1; then
      rm -f "$pwfile"
      rm -rf "$PGDATA"
      die "initdb failed" postgres
    fi
    rm -f "$pwfile"
    cat >>"$PGDATA/postgresql.conf" <<EOF

# --- added by scripts/stack.sh (the port is given on the command line) ---
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PG_SOCKET_DIR'
unix_socket_permissions = 0700
password_encryption = 'scram-sha-256'
max_connections = 100
shared_buffers = 64MB
logging_collector = off
EOF
    rm -f "$STATE/pg-hardened"
  fi
  spawn postgres "${SVC_PREFIX[@]}" "$bindir/postgres" -D "$PGDATA" -p "$PG_PORT"
  # The port opens before recovery finishes: wait for a real login.
  wait_for postgres 60 "login on 127.0.0.1:$PG_PORT" pg_login
  started postgres "on 127.0.0.1:$PG_PORT, data $PGDATA"
}

pgbouncer_admin() { # SQL: one command on PgBouncer's admin console
  PGPASSWORD=$PGBOUNCER_ADMIN_PASSWORD PGCONNECT_TIMEOUT=2 psql -X -h 127.0.0.1 -p "$PGBOUNCER_PORT" \
    -U "$PGBOUNCER_ADMIN_USER" -d pgbouncer -Atqc "$1"
}

pgbouncer_config_write() {
  local tmp=$PGBOUNCER_INI.tmp
  cat >"$tmp" <<EOF
; Written by scripts/stack.sh on every \`up\`; edit the script, not this file.
[databases]
; Any database a client names goes to the tenant cluster under the same name; the auth_file decides
; who may log in (one line per add-on role, kept by the platform).
* = host=127.0.0.1 port=$PG_PORT

[pgbouncer]
; 0.0.0.0: tenant containers reach PgBouncer through their isolated network's gateway, an address that
; only exists while a container is attached. Firewall this port from the outside world.
listen_addr = 0.0.0.0
listen_port = $PGBOUNCER_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $PGBOUNCER_AUTH_FILE
admin_users = $PGBOUNCER_ADMIN_USER
stats_users = $PGBOUNCER_ADMIN_USER
pool_mode = transaction
; Above COLTSFOOT_TENANT_PG_STATEMENT_TIMEOUT_MS / COLTSFOOT_TENANT_PG_IDLE_TX_TIMEOUT_MS (Postgres's
; own per-role defaults): PgBouncer is the ceiling a tenant cannot lift.
query_timeout = $((STATEMENT_TIMEOUT_S + 30))
idle_transaction_timeout = $((IDLE_TX_TIMEOUT_S + 30))
query_wait_timeout = 30
max_client_conn = 500
default_pool_size = 10
server_login_retry = 2
server_tls_sslmode = disable
ignore_startup_parameters = extra_float_digits
log_connections = 1
log_disconnections = 1
EOF
  svc_own "$tmp" 600
  mv "$tmp" "$PGBOUNCER_INI"
}

start_pgbouncer() {
  pgbouncer_config_write
  local changed
  changed=$(STACK_PGBOUNCER_ADMIN_PASSWORD=$PGBOUNCER_ADMIN_PASSWORD "$PY" scripts/stack_pgbouncer.py \
    "$PGBOUNCER_AUTH_FILE" "$PGBOUNCER_ADMIN_USER" 2>>"$LOGS/pgbouncer.log") \
    || die "could not write PgBouncer's auth_file $PGBOUNCER_AUTH_FILE" pgbouncer
  if already_running pgbouncer "on 0.0.0.0:$PGBOUNCER_PORT"; then
    # SIGHUP re-reads the ini and the auth_file (the same as RELOAD on the console).
    kill -s HUP "$(pid_of pgbouncer)" 2>/dev/null || true
    [ "$changed" = changed ] && wait_for pgbouncer 10 "admin console" pgbouncer_admin 'SHOW VERSION'
    return 0
  fi
  ensure_port_free pgbouncer 127.0.0.1 "$PGBOUNCER_PORT" COLTSFOOT_PGBOUNCER_PORT
  # Not daemonized and no logfile: PgBouncer logs to stderr, i.e. logs/pgbouncer.log.
  spawn pgbouncer "${SVC_PREFIX[@]}" "$(command -v pgbouncer)" "$PGBOUNCER_INI"
  wait_for pgbouncer 20 "admin console on port $PGBOUNCER_PORT" pgbouncer_admin 'SHOW VERSION'
  started pgbouncer "on 0.0.0.0:$PGBOUNCER_PORT"
}

manage() { # ARGS...: manage.py ARGS, output appended to logs/manage.log
  printf '=== %s manage.py %s\n' "$(date '+%F %T')" "$*" >>"$LOGS/manage.log"
  "$PY" manage.py "$@" >>"$LOGS/manage.log" 2>&1
}

migrate() {
  manage migrate --noinput || die "manage.py migrate failed" manage
  if [ ! -e "$STATE/pg-hardened" ]; then
    # Take CONNECT on postgres/template1 away from PUBLIC once per cluster (provisioning does it too).
    manage shell -c 'from drivers.postgres import cluster_harden; cluster_harden()' \
      || die "hardening the tenant PostgreSQL cluster failed" manage
    touch "$STATE/pg-hardened"
  fi
}

start_worker() {
  already_running worker "(celery, concurrency 2)" && return 0
  spawn worker "$PY" -m celery -A config worker --loglevel=INFO --concurrency=2 --pool=prefork \
    --without-mingle --without-gossip --hostname "coltsfoot-$INSTANCE_ID@%h"
  wait_for worker 60 "'ready.' in its log" log_matches worker '@[^ ]+ ready\.'
  started worker "(celery, concurrency 2)"
}

start_beat() {
  already_running beat "(celery beat)" && return 0
  spawn beat "$PY" -m celery -A config beat --loglevel=INFO --schedule "$STATE/celerybeat-schedule"
  wait_for beat 30 "'beat: Starting' in its log" log_matches beat 'beat: Starting'
  started beat "(celery beat)"
}

start_api() {
  already_running api "on $API_BIND" && return 0
  local dial=${API_URL#http://}
  dial=${dial%%/*}
  ensure_port_free api "${dial%:*}" "${dial##*:}" COLTSFOOT_API_BIND
  spawn api "$PY" -m gunicorn config.wsgi:application --bind "$API_BIND" --workers 2 --timeout 120 \
    --graceful-timeout 10 --access-logfile - --error-logfile - --no-control-socket
  wait_for api 60 "answer on $API_URL/health" curl -fsS --noproxy '*' --max-time 2 -o /dev/null "$API_URL/health"
  started api "on $API_BIND"
}

api_ready_wait() {
  local deadline=$((SECONDS + API_READY_TIMEOUT)) body=""
  while :; do
    body=$(curl -sS --noproxy '*' --max-time 10 -w '\n%{http_code}' "$API_URL/ready" 2>&1 || true)
    [ "${body##*$'\n'}" = 200 ] && return 0
    pid_of api >/dev/null || die "the API exited" api
    [ "$SECONDS" -lt "$deadline" ] || die "GET $API_URL/ready did not answer 200 within ${API_READY_TIMEOUT}s: ${body%$'\n'*}" api
    sleep 1
  done
}

# --- the API, as a client -------------------------------------------------------------------------

# Sets RESP_STATUS and RESP_BODY. The token goes in a header file, not on curl's command line.
api() { # METHOD PATH [CURL ARGS...]
  local method=$1 path=$2
  shift 2
  RESP_STATUS=$(curl -sS --noproxy '*' --max-time 300 -o "$RUN/response" -w '%{http_code}' -X "$method" \
    -H @"$RUN/auth-header" "$@" "$API_URL$path" 2>>"$LOGS/stack-client.log") || RESP_STATUS=000
  RESP_BODY=$(cat "$RUN/response" 2>/dev/null || true)
}

jget() { # EXPR: evaluate a Python expression over `d`, the JSON document on stdin ("" for None)
  "$PY" -c '
import json, sys
d = json.load(sys.stdin)
v = eval(sys.argv[1])
print("" if v is None else json.dumps(v) if isinstance(v, (dict, list)) else v)' "$1"
}

set_token() {
  TOKEN=$1
  (
    umask 077
    printf 'Authorization: Bearer %s\n' "$TOKEN" >"$RUN/auth-header"
  )
}

demo_tenant_ensure() {
  if [ -s "$DEMO_FILE" ]; then
    set_token "$(jget 'd["token"]' <"$DEMO_FILE")"
    api GET "/apps?limit=1"
    [ "$RESP_STATUS" = 200 ] && { printf '    demo tenant: token from %s\n' "$DEMO_FILE"; return 0; }
    [ "$RESP_STATUS" = 401 ] || die "GET /apps answered $RESP_STATUS: $RESP_BODY" api
    warn "the token in $DEMO_FILE is not accepted any more (the platform DB was reset?); making a new one"
  fi
  local out line
  printf '=== %s manage.py create_tenant %s\n' "$(date '+%F %T')" "$DEMO_TENANT" >>"$LOGS/manage.log"
  if out=$("$PY" manage.py create_tenant "$DEMO_TENANT" 2>>"$LOGS/manage.log"); then
    line=$(grep -E '^\{' <<<"$out" | tail -n 1)
  else
    # The tenant exists but its token was lost with demo-tenant.json: mint a new full-scope token for it.
    line=$("$PY" manage.py shell -c "
import json
from tenants.models import Tenant
from tenants.services import token_create_initial
tenant = Tenant.objects.get(slug='$DEMO_TENANT')
_token, plaintext = token_create_initial(tenant=tenant, name='make-up')
print(json.dumps({'tenant_id': str(tenant.public_id), 'token': plaintext}))
" 2>>"$LOGS/manage.log" | grep -E '^\{' | tail -n 1) || die "creating the demo tenant failed" manage
  fi
  [ -n "$line" ] || die "create_tenant printed no JSON" manage
  (
    umask 077
    printf '%s\n' "$line" >"$DEMO_FILE"
  )
  set_token "$(jget 'd["token"]' <"$DEMO_FILE")"
  printf '    demo tenant: created, token saved in %s\n' "$DEMO_FILE"
}

demo_app_ensure() {
  api GET "/apps?limit=100"
  [ "$RESP_STATUS" = 200 ] || die "GET /apps answered $RESP_STATUS: $RESP_BODY" api
  APP_JSON=$(jget "next((a for a in d['items'] if a['name'] == '$DEMO_APP'), None)" <<<"$RESP_BODY")
  if [ -z "$APP_JSON" ]; then
    api POST /apps -H 'Content-Type: application/json' --data "{\"name\": \"$DEMO_APP\"}"
    [ "$RESP_STATUS" = 201 ] || die "POST /apps answered $RESP_STATUS: $RESP_BODY" api
    APP_JSON=$RESP_BODY
    printf '    app %s: created\n' "$DEMO_APP"
  fi
  APP_ID=$(jget 'd["id"]' <<<"$APP_JSON")
  APP_URL=$(jget 'd["url"]' <<<"$APP_JSON")
  APP_HOST=$(jget 'd["hostname"]' <<<"$APP_JSON")
}

edge_status() {
  curl -s --noproxy '*' --max-time 5 -o /dev/null -w '%{http_code}' -H "Host: $APP_HOST" "http://$EDGE_DIAL/" \
    2>/dev/null || true
}

deploy_source() {
  # The same multipart upload the README shows: the archive streamed from tar, field `source`.
  tar czf - -C "$DEMO_SOURCE" --exclude=__pycache__ . \
    | { api POST "/apps/$APP_ID/deployments" -F "source=@-;filename=$DEMO_APP.tar.gz"; printf '%s\n%s' "$RESP_STATUS" "$RESP_BODY"; } \
    >"$RUN/deploy-response"
  RESP_STATUS=$(head -n 1 "$RUN/deploy-response")
  RESP_BODY=$(tail -n +2 "$RUN/deploy-response")
  [ "$RESP_STATUS" = 202 ] || die "uploading $DEMO_SOURCE answered $RESP_STATUS: $RESP_BODY" api
  DEPLOYMENT_ID=$(jget 'd["id"]' <<<"$RESP_BODY")
  printf '    deployment #%s of %s queued (%s)\n' "$(jget 'd["number"]' <<<"$RESP_BODY")" "$DEMO_SOURCE" "$DEPLOYMENT_ID"
}

deployment_wait() { # ID DEADLINE: until live; exits on failure or timeout
  local id=$1 deadline=$2 state="" last="" number started=$SECONDS next_note=$((SECONDS + 30))
  while :; do
    api GET "/deployments/$id"
    if [ "$RESP_STATUS" = 200 ]; then
      state=$(jget 'd["state"]' <<<"$RESP_BODY")
      number=$(jget 'd["number"]' <<<"$RESP_BODY")
      if [ "$state" != "$last" ]; then
        printf '    deployment #%s: %s (%ss)\n' "$number" "$state" "$((SECONDS - started))"
        last=$state
        next_note=$((SECONDS + 30))
      elif [ "$SECONDS" -ge "$next_note" ]; then
        printf '    deployment #%s: still %s (%ss)\n' "$number" "$state" "$((SECONDS - started))"
        next_note=$((SECONDS + 30))
      fi
      case $state in
        live) return 0 ;;
        superseded) return 2 ;;
        failed)
          warn "deployment #$number failed: $(jget 'd["error"]' <<<"$RESP_BODY")"
          api GET "/deployments/$id/log"
          printf -- '--- last 40 lines of the deployment log (GET /deployments/%s/log) ---\n%s\n--- end ---\n' \
            "$id" "$(tail -n 40 <<<"$RESP_BODY")" >&2
          die "the demo deployment failed" worker
          ;;
      esac
    fi
    pid_of worker >/dev/null || die "the Celery worker exited" worker
    [ "$SECONDS" -lt "$deadline" ] || die "deployment $id is still '$state' after ${DEPLOY_TIMEOUT}s" worker
    sleep 2
  done
}

demo_live_ensure() {
  local deadline=$((SECONDS + DEPLOY_TIMEOUT)) _ live active code
  for _ in 1 2 3; do
    api GET "/apps/$APP_ID"
    [ "$RESP_STATUS" = 200 ] || die "GET /apps/$APP_ID answered $RESP_STATUS: $RESP_BODY" api
    live=$(jget 'd["live_deployment_id"]' <<<"$RESP_BODY")
    api GET "/apps/$APP_ID/deployments?limit=100"
    [ "$RESP_STATUS" = 200 ] || die "GET /apps/$APP_ID/deployments answered $RESP_STATUS: $RESP_BODY" api
    active=$(jget 'next((x["id"] for x in d["items"] if x["state"] in ("queued", "building", "starting")), None)' \
      <<<"$RESP_BODY")
    if [ -n "$active" ]; then
      printf '    a deployment is already under way; waiting for it\n'
      DEPLOYMENT_ID=$active
    elif [ -n "$live" ]; then
      code=$(edge_status)
      [ "$code" = 200 ] && { printf '    app %s: live, answering through the edge\n' "$DEMO_APP"; return 0; }
      # Live in the platform DB but not answering: `down` stopped its containers, or Caddy restarted
      # empty (its config is not persisted). A rollback to the live deployment starts it again from
      # the same image, without a build.
      printf '    app %s: live deployment not answering (edge said %s); starting it again from its image\n' \
        "$DEMO_APP" "${code:-nothing}"
      api POST "/apps/$APP_ID/rollback" -H 'Content-Type: application/json' --data "{\"deployment_id\": \"$live\"}"
      [ "$RESP_STATUS" = 202 ] || die "POST /apps/$APP_ID/rollback answered $RESP_STATUS: $RESP_BODY" api
      DEPLOYMENT_ID=$(jget 'd["id"]' <<<"$RESP_BODY")
    else
      deploy_source
    fi
    if deployment_wait "$DEPLOYMENT_ID" "$deadline"; then
      break
    fi
    printf '    deployment %s was superseded; looking again\n' "$DEPLOYMENT_ID"
  done
  printf '    waiting for %s to answer through the edge\n' "$APP_URL"
  while [ "$(edge_status)" != 200 ]; do
    [ "$SECONDS" -lt "$deadline" ] \
      || die "the deployment is live but http://$EDGE_DIAL/ with Host: $APP_HOST does not answer 200" caddy
    sleep 1
  done
}

# --- commands ------------------------------------------------------------------------------------

cmd_up() {
  for pair in redis-server:redis-server caddy:caddy pgbouncer:pgbouncer psql:postgresql-client \
    curl:curl tar:tar setsid:util-linux setpriv:util-linux podman:podman uv:uv; do
    require "${pair%%:*}" "${pair#*:}"
  done
  [ -d "$DEMO_SOURCE" ] || die "$DEMO_SOURCE is missing"
  log "state dir $STATE"
  PY=$(python_bin)
  secrets_ensure
  secrets_load
  platform_env_export
  svc_dirs_ensure

  log "services"
  start_redis
  start_caddy
  start_postgres
  start_pgbouncer
  migrate
  start_worker
  start_beat
  start_api
  api_ready_wait

  log "demo tenant and app"
  demo_tenant_ensure
  demo_app_ensure
  demo_live_ensure

  cat <<EOF

Coltsfoot is up.
  API          $API_URL
  API docs     $API_URL/docs
  demo token   $TOKEN
               (tenant '$DEMO_TENANT'; kept in $DEMO_FILE)
  demo app     $APP_URL
               curl -H 'Host: $APP_HOST' http://$EDGE_DIAL/
  state dir    $STATE
  logs         $LOGS/
  environment  set -a; . $ENV_FILE; set +a   (to run manage.py against this stack)
Try:  curl -H "Authorization: Bearer $TOKEN" $API_URL/apps
Stop: make down
EOF
}

cmd_down() {
  log "stopping Coltsfoot (state dir $STATE)"
  stop_service api TERM 20
  stop_service beat TERM 10
  # Warm shutdown: a running task finishes first, up to the limit.
  stop_service worker TERM 60
  # After the worker, so nothing starts containers behind our back. Stopped, not removed: the platform
  # DB still lists them, and `up` starts the live deployment again from its image.
  local ids
  ids=$(app_containers_running)
  if [ -n "$ids" ]; then
    # shellcheck disable=SC2086
    podman_cmd stop --time 10 $ids >/dev/null 2>>"$LOGS/stack-client.log" \
      || warn "podman stop failed for some app containers; see $LOGS/stack-client.log"
    printf '    %-9s stopped %s container(s) labelled coltsfoot.instance=%s\n' apps "$(wc -w <<<"$ids")" "$INSTANCE_ID"
  else
    printf '    %-9s no running containers labelled coltsfoot.instance=%s\n' apps "$INSTANCE_ID"
  fi
  stop_service pgbouncer TERM 10
  stop_service postgres INT 60
  stop_service caddy TERM 10
  stop_service redis TERM 20
  rm -f "$RUN/auth-header" "$RUN/response" "$RUN/deploy-response"
}

cmd_status() {
  local name pid where
  declare -A WHERE=(
    [redis]="127.0.0.1:$REDIS_PORT"
    [caddy]="admin $CADDY_ADMIN_LISTEN, edge $EDGE_LISTEN"
    [postgres]="127.0.0.1:$PG_PORT"
    [pgbouncer]="0.0.0.0:$PGBOUNCER_PORT"
    [worker]="celery worker"
    [beat]="celery beat"
    [api]="$API_URL"
  )
  for name in "${SERVICES[@]}"; do
    where=${WHERE[$name]}
    if pid=$(pid_of "$name"); then
      printf '%-10s running  pid %-8s %s\n' "$name" "$pid" "$where"
    else
      printf '%-10s stopped  %-12s %s\n' "$name" "" "$where"
    fi
  done
  local ids
  ids=$(app_containers_running)
  printf '%-10s %s container(s) running (label coltsfoot.instance=%s)\n' apps "$(wc -w <<<"$ids")" "$INSTANCE_ID"
  printf '%-10s %s (logs in %s/, postgres/pgbouncer in %s)\n' state "$STATE" "$LOGS" "$SVC_DIR"
}

main() {
  local cmd=${1:-}
  case $cmd in
    up | down | status) ;;
    *)
      echo "usage: $0 up|down|status" >&2
      exit 2
      ;;
  esac
  mkdir -p "$STATE"
  chmod 700 "$STATE"
  mkdir -p "$RUN" "$LOGS"
  if [ "$cmd" != status ]; then
    exec 9>"$STATE/stack.lock"
    flock -n 9 || die "another \`scripts/stack.sh up|down\` is running for $STATE"
  fi
  "cmd_$cmd"
}

main "$@"
