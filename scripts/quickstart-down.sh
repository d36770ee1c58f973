#!/usr/bin/env bash
# Undoes scripts/quickstart.sh: stops `carapace up` and removes everything it runs on this
# machine (containers in runc and gVisor, cells and machines, the tenant networks' bridges,
# taps, namespaces, nftables table and dnsmasq, volumes' mounts and loop devices, the secret
# files' tmpfs; src/agent/teardown.ts), then stops the local registry. The state directory
# (store, volumes' data, image cache, keyring, admin token) is kept for the next quick start
# unless --purge is given. Run as root. Environment: CARAPACE_STATE_DIR as for the quick start.
set -euo pipefail
cd "$(dirname "$0")/.."

STATE_DIR="${CARAPACE_STATE_DIR:-/var/lib/carapace}"
PURGE=false
case "${1:-}" in
  "") ;;
  --purge) PURGE=true ;;
  *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
esac
[ -d "$STATE_DIR" ] || { echo "nothing to do: no $STATE_DIR"; exit 0; }

# Stops the process in a pid file when it is still the program named (a pid may be reused).
stop_pid() {
  local file="$1" what="$2" pid
  [ -f "$file" ] || return 0
  pid="$(cat "$file")"
  if [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$what"; then
    echo "==> stopping $what (pid $pid)"
    kill -TERM "$pid"
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then echo "    still running after 15 s: SIGKILL"; kill -KILL "$pid"; fi
  fi
  rm -f "$file"
}

stop_pid "$STATE_DIR/carapace.pid" "main.js up"
echo "==> removing what it ran (containers, VMs, networks, volume mounts)"
node --input-type=module -e '
  const { teardownHost } = await import(process.argv[1]);
  const r = await teardownHost(process.argv[2]);
  console.log(`    ${r.containers} containers, ${r.vms} VMs, ${r.unmounted} volumes unmounted from the host`);
' "$PWD/dist/src/agent/teardown.js" "$STATE_DIR"
stop_pid "$STATE_DIR/registry/pid" "docker-registry"
if $PURGE; then
  echo "==> removing $STATE_DIR"
  rm -rf "$STATE_DIR"
fi
