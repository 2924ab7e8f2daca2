#!/usr/bin/env bash
# Install whatever is missing on a Debian/Ubuntu machine: system packages, uv, a Python >= 3.12
# for uv, and the project's locked dependencies. Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# chromium + chromium-driver: the browser tests of the admin and the API docs (browsers are never downloaded).
# dnsmasq-base: Debian's dnsmasq binary without the system service (the edge's upstream names, see devstack).
APT_PACKAGES=(podman runsc caddy pgbouncer postgresql redis-server debootstrap git curl ca-certificates docker-registry
  nftables dnsmasq-base chromium chromium-driver)

log() { printf 'bootstrap: %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian starts these services on their standard ports when it installs them; Coltsfoot runs its
# own instances on its own ports, so the packaged ones are only in the way.
for svc in redis-server postgresql pgbouncer caddy docker-registry; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    as_root systemctl disable --now "$svc" >/dev/null 2>&1 || true
  elif command -v service >/dev/null 2>&1; then
    as_root service "$svc" stop >/dev/null 2>&1 || true
  fi
done

if ! command -v uv >/dev/null 2>&1 && [ ! -x "$HOME/.local/bin/uv" ]; then
  log "installing uv from PyPI"
  python3 -m pip install --quiet --user uv 2>/dev/null \
    || python3 -m pip install --quiet --user --break-system-packages uv
fi
