#!/usr/bin/env bash
# Installs everything Carapace needs on a Debian machine (run as root), then builds it.
# Idempotent: packages already present are not fetched again.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(
  runc runsc conmon                      # container runtimes and the conmon supervisor
  crun                                   # the runtime inside cells (the guest's cgroup v2; C, fast under emulation)
  golang-github-containers-common        # the default seccomp profile (seccomp.json)
  skopeo umoci docker-registry           # OCI images: copy, unpack, a local registry
  busybox-static                         # userland for example images and guests
  iproute2 nftables iptables             # container networking
  dnsmasq-base                           # tenant networks: DNS names and static DHCP leases per segment
  util-linux                             # flock (src/proc/file-lock.ts); fsfreeze, fallocate, mountpoint (src/storage/)
  mount e2fsprogs                        # volumes: losetup, mount; mkfs.ext4, e2fsck, resize2fs, dumpe2fs (src/storage/)
  qemu-system-x86 qemu-utils linux-image-amd64   # VMs (cells, machines)
  qemu-user                              # builds the guest agent's startup snapshot on the CPU model of emulated cells (scripts/build-guest.mjs)
  etcd-server                            # the HA store
  iperf3 gcc libc6-dev                   # npm run bench -- net: throughput, and its static round-trip tool
  fio                                    # npm run bench -- volume, and the fio test image
  tcpdump                                # test/e2e/api-tls.test.ts: a capture of the CLI's traffic shows no token in clear
  postgresql-15 postgresql-client-15     # the PostgreSQL image and the guestbook example's api (psql) (src/image/testing/); no system cluster, see below
  chromium                               # the dashboard's end-to-end tests (headless, via playwright-core)
  nginx                                  # the nginx image of npm run bench -- cell (src/image/testing/debian-images.ts); no system server, see below
  curl ca-certificates
)

missing=()
for p in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "==> installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # postgresql-15 is here for its files (copied into a test image), not to run a server. Its
  # postinst creates and starts a cluster "15/main" on :5432 unless postgresql-common's
  # createcluster.conf says `create_main_cluster = false` (maintscripts-functions,
  # configure_version). Say so before installing: postgresql-common's postinst installs that
  # file with ucf, which keeps an existing file (UCF_FORCE_CONFFOLD makes it explicit). Only a
  # first install of a version creates a cluster, and existing clusters are left alone.
  if [[ " ${missing[*]} " == *" postgresql-15 "* ]] && [ ! -d /etc/postgresql/15/main ]; then
    cc=/etc/postgresql-common/createcluster.conf
    mkdir -p /etc/postgresql-common
    if [ ! -e "$cc" ]; then
      printf '# Written by Carapace scripts/install.sh: packages must not create a running cluster.\ncreate_main_cluster = false\n' > "$cc"
    elif ! grep -Eq '^[[:space:]]*create_main_cluster[[:space:]]*=[[:space:]]*(false|off)' "$cc"; then
      printf '\n# Added by Carapace scripts/install.sh: packages must not create a running cluster.\ncreate_main_cluster = false\n' >> "$cc"
    fi
    export UCF_FORCE_CONFFOLD=1
  fi
  # nginx is here for its files too, but its postinst starts a system nginx on :80 (invoke-rc.d),
  # a port tests and examples use. A policy-rc.d exiting 101 tells invoke-rc.d to start
  # nothing during this install; one already there (a container image's) is left as it is.
  policy=/usr/sbin/policy-rc.d
  made_policy=
  if [[ " ${missing[*]} " == *" nginx "* ]] && [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# Written by Carapace scripts/install.sh for one apt-get run: start no service.\nexit 101\n' > "$policy"
    chmod 0755 "$policy"
    made_policy=1
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ -n "$made_policy" ]; then
    rm -f "$policy"
    trap - EXIT
  fi
fi

# Debian's docker-registry package may start a system registry on :5000; Carapace runs its
# own on loopback, so keep the packaged one out of the way when systemd is present.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet docker-registry 2>/dev/null; then
  systemctl stop docker-registry || true
  systemctl disable docker-registry >/dev/null 2>&1 || true
fi
# The same for nginx (:80) when this run installed it, also when its unit is only enabled:
# policy-rc.d stops the start at install, not the enabling, so it would start at the next
# boot. Without systemd (a container), an nginx the install started anyway is stopped. An
# nginx installed before this run is the machine owner's and is left alone.
if [[ " ${missing[*]} " == *" nginx "* ]]; then
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl stop nginx 2>/dev/null || true
    systemctl disable nginx >/dev/null 2>&1 || true
  elif [ -s /run/nginx.pid ] && kill -0 "$(cat /run/nginx.pid)" 2>/dev/null; then
    /etc/init.d/nginx stop >/dev/null || true
  fi
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "==> installing npm packages"
  # `npm install` rather than `npm ci`: npm 11 refuses `ci` when the lock file lacks entries
  # for other platforms' optional packages (rollup's), which some registries leave out. The
  # versions still come from package-lock.json.
  npm install --no-audit --no-fund --loglevel=error
fi
echo "==> building"
npm run --silent build
