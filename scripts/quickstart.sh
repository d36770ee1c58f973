#!/usr/bin/env bash
# The quick start: installs what Carapace needs, starts an all-in-one Carapace (API server,
# host agent, embedded SQLite store in /var/lib/carapace) in the background, builds the
# example images into a local registry, applies the bundled example tenants and shows what
# is running. Run as root on Debian. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh

STATE_DIR="${CARAPACE_STATE_DIR:-/var/lib/carapace}"
PORT="${CARAPACE_PORT:-7070}"
REGISTRY="127.0.0.1:5000"
export CARAPACE_SERVER="http://127.0.0.1:${PORT}"
carapace() { node dist/src/cli/main.js "$@"; }
mkdir -p "$STATE_DIR"

# 1. A local OCI registry on loopback holding the example images (no internet needed).
if ! curl -fsS "http://${REGISTRY}/v2/" >/dev/null 2>&1; then
  echo "==> starting a local registry on ${REGISTRY}"
  mkdir -p "$STATE_DIR/registry"
  cat > "$STATE_DIR/registry/config.yml" <<YAML
version: 0.1
storage:
  filesystem:
    rootdirectory: ${STATE_DIR}/registry/data
http:
  addr: ${REGISTRY}
YAML
  nohup /usr/bin/docker-registry serve "$STATE_DIR/registry/config.yml" >"$STATE_DIR/registry/registry.log" 2>&1 &
  echo $! >"$STATE_DIR/registry/pid"
  for _ in $(seq 50); do curl -fsS "http://${REGISTRY}/v2/" >/dev/null 2>&1 && break; sleep 0.1; done
fi
echo "==> building example images into ${REGISTRY}"
node dist/src/image/testing/example-images.js "$REGISTRY"
echo "==> building the example machine image into ${STATE_DIR}/machine-images"
node dist/src/vm/testing/hello-machine.js "$STATE_DIR/machine-images"

# 2. The all-in-one Carapace, in the background, logging to the state directory.
if ! curl -fsS "${CARAPACE_SERVER}/healthz" >/dev/null 2>&1; then
  echo "==> starting carapace up --state-dir ${STATE_DIR} --port ${PORT}"
  nohup node dist/src/cli/main.js up --state-dir "$STATE_DIR" --port "$PORT" >"$STATE_DIR/carapace.log" 2>&1 &
  echo $! >"$STATE_DIR/carapace.pid"
  for _ in $(seq 100); do curl -fsS "${CARAPACE_SERVER}/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -fsS "${CARAPACE_SERVER}/healthz" >/dev/null || { echo "carapace did not start; see $STATE_DIR/carapace.log"; tail -20 "$STATE_DIR/carapace.log"; exit 1; }
fi

# The first cluster-admin token, minted at the server's first start (also in the CLI config file).
CARAPACE_TOKEN="$(cat "$STATE_DIR/admin-token")"
export CARAPACE_TOKEN

# 3. The example tenants, their services (host, gVisor sandbox, cells) and a machine.
#    Cells and the machine are VMs: under software emulation (no usable KVM) they take
#    15-30 s to boot.
echo "==> carapace apply -f examples/acme.yaml -f examples/globex.yaml -f examples/machine.yaml --wait"
carapace apply -f examples/acme.yaml -f examples/globex.yaml -f examples/machine.yaml --wait --timeout 600

echo
echo "==> carapace get hosts";     carapace get hosts
echo
echo "==> carapace get tenants";   carapace get tenants
echo
echo "==> carapace get services -o wide   (each with its service address)";  carapace get services -o wide
echo
echo "==> carapace get instances -o wide   (each with its address on its tenant's network)"; carapace get instances -o wide
echo
echo "==> carapace get cells";     carapace get cells
echo
echo "==> carapace get machines";  carapace get machines
echo
echo "==> curl http://127.0.0.1:8080/  (acme/web, published port)"
curl -fsS --max-time 5 http://127.0.0.1:8080/ | sed -n 's:.*<h1>\(.*\)</h1>.*:\1:p' || echo "(not reachable)"
echo
echo "==> curl http://127.0.0.1:8081/  (acme/api inside acme's cell, published port)"
curl -fsS --max-time 5 http://127.0.0.1:8081/ | sed -n 's:.*<h1>\(.*\)</h1>.*:\1:p' || echo "(not reachable)"
echo
echo "==> carapace logs globex/worker-0 --tail 3"
sleep 2; carapace logs globex/worker-0 --tail 3
echo
echo "==> carapace logs acme/poller-0 --tail 2   (the poller reaches the api inside their cell, and acme/web on the host by name)"
sleep 3; carapace logs acme/poller-0 --tail 2
echo
echo "==> carapace logs machine/acme/legacy --tail 3"
carapace logs machine/acme/legacy --tail 3
echo
echo "==> carapace report usage --since 1h --by cell   (reserved and measured, per tenant, group and cell)"
carapace report usage --since 1h --by cell
cat <<MSG

Carapace is running (pid $(cat "$STATE_DIR/carapace.pid" 2>/dev/null || echo '?'), API ${CARAPACE_SERVER}, log ${STATE_DIR}/carapace.log).
Every API call needs a token: the first cluster-admin token is in ${STATE_DIR}/admin-token and in
${CARAPACE_CONFIG:-$HOME/.config/carapace/config.json} (0600), where the CLI finds it.
Try:
  alias carapace="node $(pwd)/dist/src/cli/main.js"
  carapace apply -f examples/job.yaml --wait
  carapace describe service acme/web
  carapace describe cell CELL-NAME          # from carapace get cells
  carapace machine restart acme/legacy
  carapace logs globex/worker-1 --follow
  carapace report usage --since 7d -o csv
  carapace audit verify
  carapace token create --name acme-ops --role tenant-admin --tenant acme   # then CARAPACE_TOKEN=... sees only acme
Stop it with: kill \$(cat ${STATE_DIR}/carapace.pid)   (containers keep running; the next start adopts them)
MSG
