#!/usr/bin/env bash
# The quick start: installs what Carapace needs, starts an all-in-one Carapace (API server,
# host agent, embedded SQLite store in /var/lib/carapace) in the background, builds the
# example images into a local registry, applies the bundled example tenants and shows what
# is running. Run as root on Debian. Safe to run again; scripts/quickstart-down.sh undoes it.
# Environment: CARAPACE_STATE_DIR (default /var/lib/carapace), CARAPACE_PORT (the API, 7070).
# The registry (127.0.0.1:5000) and the examples' published ports (8080, 8081, 8090) are fixed.
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
echo "==> building the guestbook's images into ${REGISTRY}: PostgreSQL 15, its api and web tiers, from Debian's packages"
echo "    (the PostgreSQL image takes from a few seconds to a minute on a busy machine: most of it is compressing its layers)"
t0=$SECONDS
node dist/src/image/testing/guestbook-images.js "$REGISTRY"
echo "    built in $((SECONDS - t0)) s"

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

# 3. The example tenants, their services (host, gVisor sandbox, cells), a machine, and the
#    guestbook (web on the host, api in gVisor, PostgreSQL in a cell on a volume, a secret).
#    Cells and the machine are VMs: under software emulation (no usable KVM) they take
#    15-30 s to boot, and PostgreSQL's first start (initdb) in its cell a minute more.
EXAMPLES=(-f examples/acme.yaml -f examples/globex.yaml -f examples/machine.yaml -f examples/guestbook.yaml)
echo "==> carapace apply ${EXAMPLES[*]} --wait"
t0=$SECONDS
carapace apply "${EXAMPLES[@]}" --wait --timeout 900
echo "    applied and running in $((SECONDS - t0)) s"

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

# 4. The guestbook: its volume and secret, then its page, asked twice.
GUESTBOOK="http://127.0.0.1:8090"
echo
echo "==> carapace get volumes   (initech/pgdata: PostgreSQL's data, an ext4 image on this host, hot-plugged into the db's cell)"
carapace get volumes
echo
echo "==> carapace get secrets   (names and keys; the values are never shown)"
carapace get secrets
# The page's visit count and where it came from; retried for a minute while the service
# addresses join (a ready replica is in every client's balancing within about 2 s).
guestbook_page() {
  local page
  for _ in $(seq 60); do
    if page=$(curl -fsS --max-time 20 "$GUESTBOOK/" 2>/dev/null); then
      printf '%s\n' "$page" | sed -n -e 's:.*<p id="visits">\(.*\)</p>.*:\1:p' -e 's:.*<p id="path">\(.*\)</p>.*:\1:p' -e 's:^<li>\(.*\)</li>$:  note\: \1:p' | sed 's/<[^>]*>//g'
      return 0
    fi
    sleep 1
  done
  echo "(not reachable: see carapace describe service initech/web, carapace logs initech/api-0)"
}
echo
echo "==> curl ${GUESTBOOK}/   (initech/web on the host -> api in a gVisor sandbox -> PostgreSQL in a cell)"
guestbook_page
echo
echo "==> curl -d 'text=Hello from the quick start' ${GUESTBOOK}/cgi-bin/sign   (a note, through the page's form)"
curl -fsS --max-time 20 -o /dev/null -d 'text=Hello from the quick start' "$GUESTBOOK/cgi-bin/sign" || echo "(refused)"
echo
echo "==> curl ${GUESTBOOK}/   (again: the count grew; it is in the database, on the volume)"
guestbook_page
cat <<MSG

Carapace is running (pid $(cat "$STATE_DIR/carapace.pid" 2>/dev/null || echo '?'), API ${CARAPACE_SERVER}, log ${STATE_DIR}/carapace.log).
Every API call needs a token: the first cluster-admin token is in ${STATE_DIR}/admin-token and in
${CARAPACE_CONFIG:-$HOME/.config/carapace/config.json} (0600), where the CLI finds it.
Try:
  alias carapace="node $(pwd)/dist/src/cli/main.js"
  curl http://127.0.0.1:8090/                # the guestbook (or open it in a browser and sign it)
  carapace delete instance initech/db-0      # PostgreSQL re-created in its cell: the count and notes survive (volume pgdata)
  sed 's/guestbook-example-password/a-new-password/' examples/guestbook.yaml | carapace apply -f -
                                             # rotate the db password: db and api restart with it (onChange: restart), the page keeps working
  carapace describe volume initech/pgdata
  carapace apply -f examples/job.yaml --wait
  carapace describe service acme/web
  carapace describe cell CELL-NAME          # from carapace get cells
  carapace machine restart acme/legacy
  carapace logs globex/worker-1 --follow
  carapace report usage --since 7d -o csv
  carapace audit verify
  carapace token create --name acme-ops --role tenant-admin --tenant acme   # then CARAPACE_TOKEN=... sees only acme
Stop it with: kill \$(cat ${STATE_DIR}/carapace.pid)   (containers keep running; the next start adopts them)
Stop and remove everything it runs (containers, VMs, networks, the registry): bash scripts/quickstart-down.sh [--purge]
MSG
