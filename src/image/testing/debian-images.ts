/**
 * Images of real third-party software built from this host's Debian packages with
 * buildDebianImage, for the volume tests, the bundled examples and the volume benchmark.
 * Usable as a library or as a CLI:
 *
 *   node dist/src/image/testing/debian-images.js 127.0.0.1:5000
 *
 * prints one `name=reference` line per image (and exits non-zero with a message on failure).
 * Needs the Debian packages postgresql-15 (with postgresql-client-15), fio and util-linux, and
 * nginx for buildNginxImage (scripts/install.sh installs them all).
 */
import { pathToFileURL } from 'node:url';
import { buildDebianImage, packageVersion } from './debian-image.js';
import type { BuiltImage } from './oci-build.js';

/** Repository names of the Debian-built images, for manifests that hard-code them. */
export const DEBIAN_REPOSITORIES = {
  postgres: 'carapace-examples/postgres',
  fio: 'carapace-examples/fio',
  nginx: 'carapace-examples/nginx',
} as const;

/** The uid and gid of `postgres` in the image (Debian's system-user range; the official image's too). */
export const POSTGRES_UID = 999;
/** Where the image expects its volume: the cluster lives in `pgdata` under it (see the entrypoint). */
export const POSTGRES_VOLUME = '/var/lib/postgresql/data';
/** The default `PGDATA`: a subdirectory of the volume, because a fresh ext4 volume's root holds lost+found. */
export const POSTGRES_PGDATA = `${POSTGRES_VOLUME}/pgdata`;
/** Default file the entrypoint reads the superuser password from (a secret `db` with key `password`). */
export const POSTGRES_PASSWORD_FILE = '/run/secrets/db/password';

const PG_BIN = '/usr/lib/postgresql/15/bin';
/** Programs of postgresql-15 and postgresql-client-15 in the image (the rest: upgrade, replication and maintenance tools). */
const PG_PROGRAMS = ['postgres', 'initdb', 'pg_ctl', 'pg_isready', 'psql', 'pg_dump', 'pg_dumpall', 'pg_restore', 'pg_controldata'];

/**
 * The entrypoint. Runs as root first (the image's default user) only to make PGDATA and the
 * socket directory postgres's: a volume's root is root's, and postgres refuses to run as root.
 * It then runs initdb and postgres as `postgres` with util-linux `setpriv` (a plain
 * setresgid/setgroups/setresuid then exec: no setuid binary, no PAM, no extra process, so
 * postgres is the container's pid 1 and gets its signals). Started as a non-root user
 * instead, it skips the ownership step and needs a PGDATA that user can write.
 *
 * Authentication: with a password file, initdb sets the `postgres` password from it (root
 * copies it for initdb to a 0600 file on /dev/shm, so a 0400 root-owned secret works), listens on every address and
 * requires scram-sha-256 for every TCP connection; without one, it listens on localhost only
 * with trust auth (nothing outside the container can connect). The Unix socket is trusted in
 * both cases: only processes inside the container reach it (exec checks, psql via exec).
 *
 * On every later start with a password file (the cluster exists), the `postgres` role's
 * password is set from the file again before the server starts (postgres in single-user mode,
 * the SQL on a pipe, never in argv or on disk; statements are kept out of its log), so a
 * rotated secret (`onChange: restart`) rotates the database's password. The official image
 * reads POSTGRES_PASSWORD at initdb only, and a rotated secret then locks every client out.
 */
const ENTRYPOINT = `#!/bin/sh
set -eu
export PGDATA="\${PGDATA:-${POSTGRES_PGDATA}}"
pwfile="\${POSTGRES_PASSWORD_FILE:-${POSTGRES_PASSWORD_FILE}}"
as_postgres() {
  if [ "$(id -u)" = 0 ]; then
    /usr/bin/setpriv --reuid=postgres --regid=postgres --init-groups "$@"
  else
    "$@"
  fi
}
if [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA" /var/run/postgresql
  # A data directory from elsewhere (another uid) is taken over whole; ours is left alone.
  if [ "$(stat -c %u "$PGDATA")" != ${POSTGRES_UID} ]; then chown -R postgres:postgres "$PGDATA"; fi
  chmod 0700 "$PGDATA"
  chown postgres:postgres /var/run/postgresql
  chmod 2775 /var/run/postgresql
fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -s "$pwfile" ]; then
    echo "entrypoint: initdb $PGDATA (password from $pwfile, scram-sha-256 on every address)"
    pw="$pwfile"
    if [ "$(id -u)" = 0 ]; then
      # The secret may be root's and 0400, and a pipe cannot be reopened as /dev/stdin by
      # another uid: hand initdb a copy of its own on tmpfs (never on disk), removed at once.
      pw=$(mktemp /dev/shm/pgpass.XXXXXX)
      cat "$pwfile" > "$pw"
      chown postgres:postgres "$pw"
    fi
    as_postgres initdb --username=postgres --pwfile="$pw" --auth-local=trust --auth-host=scram-sha-256 --locale=C --encoding=UTF8 >/dev/null || { [ "$pw" = "$pwfile" ] || rm -f "$pw"; exit 1; }
    [ "$pw" = "$pwfile" ] || rm -f "$pw"
    printf "listen_addresses = '*'\\n" >> "$PGDATA/postgresql.conf"
    printf 'host all all all scram-sha-256\\n' >> "$PGDATA/pg_hba.conf"
  else
    echo "entrypoint: initdb $PGDATA (no password file: trust auth, localhost only)"
    as_postgres initdb --username=postgres --auth-local=trust --auth-host=trust --locale=C --encoding=UTF8 >/dev/null
    printf "listen_addresses = 'localhost'\\n" >> "$PGDATA/postgresql.conf"
  fi
  # initdb fsyncs what it writes; these appends are ours. Without a sync, a power cut (a
  # cell's VM killed) can leave the files' new size on disk with the appended bytes unwritten
  # (zeros), and postgres then refuses its configuration (found by the cell failover test).
  sync
elif [ -s "$pwfile" ]; then
  # The password may have changed since initdb (a rotated secret). Quotes are doubled for the
  # SQL literal; -j ends a statement at ";" and an empty line, so a newline in it is kept.
  { printf "ALTER ROLE postgres PASSWORD '"; sed "s/'/''/g" "$pwfile"; printf "';\\n\\n"; } |
    as_postgres postgres --single -j -c log_min_error_statement=panic -c log_statement=none postgres >/dev/null ||
    { echo "entrypoint: could not set the postgres password from $pwfile" >&2; exit 1; }
  echo "entrypoint: postgres password set from $pwfile"
fi
if [ "$(id -u)" = 0 ]; then
  exec /usr/bin/setpriv --reuid=postgres --regid=postgres --init-groups postgres "$@"
fi
exec postgres "$@"
`;

/**
 * PostgreSQL 15 from Debian's postgresql-15 and postgresql-client-15, as `postgres` (uid 999).
 * Left out: JIT (llvmjit.so and its bitcode would bring LLVM, ~100 MB: postgres runs without
 * JIT when the provider is missing), sepgsql, the replication/upgrade/maintenance programs,
 * locales (clusters are initialised with `--locale=C --encoding=UTF8`, built into glibc) and
 * every time zone but UTC (`TZ=UTC`; `SET timezone` to another zone fails).
 */
export async function buildPostgresImage(registry: string, tag = '15'): Promise<BuiltImage> {
  const version = await packageVersion('postgresql-15');
  return buildDebianImage({
    registry,
    repository: DEBIAN_REPOSITORIES.postgres,
    tag,
    packages: [
      {
        name: 'postgresql-15',
        include: [new RegExp(`^${PG_BIN}/(${PG_PROGRAMS.join('|')})$`), /^\/usr\/lib\/postgresql\/15\/lib\/[^/]+\.so$/, /^\/usr\/share\/postgresql\/15\//],
        exclude: [/\/(llvmjit|sepgsql)\.so$/, /^\/usr\/share\/postgresql\/15\/man\//],
      },
      { name: 'postgresql-client-15', include: [new RegExp(`^${PG_BIN}/(${PG_PROGRAMS.join('|')})$`), /^\/usr\/share\/postgresql\/15\//], exclude: [/^\/usr\/share\/postgresql\/15\/man\//] },
      { name: 'util-linux', include: [/^\/usr\/bin\/setpriv$/] },
    ],
    paths: ['/usr/share/zoneinfo/UTC', '/usr/share/zoneinfo/Etc/UTC'],
    users: [{ name: 'postgres', uid: POSTGRES_UID, gid: POSTGRES_UID, home: '/var/lib/postgresql' }],
    dirs: [
      { path: '/var/lib/postgresql', uid: POSTGRES_UID, gid: POSTGRES_UID, mode: 0o755 },
      { path: POSTGRES_VOLUME, uid: POSTGRES_UID, gid: POSTGRES_UID, mode: 0o700 },
      { path: '/var/run/postgresql', uid: POSTGRES_UID, gid: POSTGRES_UID, mode: 0o2775 },
    ],
    files: { '/usr/local/bin/postgres-entrypoint': { content: ENTRYPOINT, mode: 0o755 } },
    entrypoint: ['/usr/local/bin/postgres-entrypoint'],
    cmd: [],
    env: [`PATH=${PG_BIN}:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`, `PGDATA=${POSTGRES_PGDATA}`, 'TZ=UTC', 'LANG=C'],
    volumes: [POSTGRES_VOLUME],
    labels: { 'org.opencontainers.image.description': `PostgreSQL 15 (Debian ${version}) on :5432`, 'org.opencontainers.image.version': version },
  });
}

/** fio from Debian's fio package (with every ioengine library it links: libaio, rbd, gluster, …). Default cmd `fio --version`. */
export async function buildFioImage(registry: string, tag = '3'): Promise<BuiltImage> {
  const version = await packageVersion('fio');
  return buildDebianImage({
    registry,
    repository: DEBIAN_REPOSITORIES.fio,
    tag,
    packages: [{ name: 'fio', include: [/^\/usr\/bin\/fio$/] }],
    cmd: ['fio', '--version'],
    labels: { 'org.opencontainers.image.description': `fio (Debian ${version})`, 'org.opencontainers.image.version': version },
  });
}

/** The uid and gid of `www-data` in the image (Debian's fixed id), the user of nginx's workers. */
export const NGINX_WORKER_UID = 33;

/**
 * The whole nginx configuration: one worker (an idle server's footprint, not a tuned one),
 * errors to stderr (the container log), no access log, a static page on :80. The pid file goes
 * to /run/nginx, a directory of the image (a runtime may give the container no /run).
 */
const NGINX_CONF = `user www-data;
worker_processes 1;
pid /run/nginx/nginx.pid;
error_log stderr notice;
events {
  worker_connections 256;
}
http {
  include /etc/nginx/mime.types;
  default_type application/octet-stream;
  access_log off;
  server {
    listen 80 default_server;
    root /usr/share/nginx/html;
    index index.html;
  }
}
`;

/** The page nginx serves at `/`; the benchmark checks for this text. */
export const NGINX_PAGE = '<!doctype html>\n<title>carapace nginx</title>\n<p>served by nginx in a carapace container</p>\n';

/**
 * nginx from Debian's nginx package (with nginx-common's mime.types), serving {@link NGINX_PAGE}
 * on :80 in the foreground as the container's pid 1 (`nginx -g 'daemon off;'`). The master
 * runs as root (it binds :80 and switches its worker to `www-data`, uid 33: CAP_NET_BIND_SERVICE,
 * CAP_SETUID, CAP_SETGID and CAP_CHOWN, all in the default capability set) and makes its temp
 * directories under /var/lib/nginx. Debian's own configuration (sites-enabled, modules) is not
 * copied: the image's nginx.conf is the whole configuration.
 */
export async function buildNginxImage(registry: string, tag = '1'): Promise<BuiltImage> {
  const version = await packageVersion('nginx');
  return buildDebianImage({
    registry,
    repository: DEBIAN_REPOSITORIES.nginx,
    tag,
    packages: [
      { name: 'nginx', include: [/^\/usr\/sbin\/nginx$/] },
      { name: 'nginx-common', include: [/^\/etc\/nginx\/mime\.types$/] },
    ],
    users: [{ name: 'www-data', uid: NGINX_WORKER_UID, gid: NGINX_WORKER_UID, home: '/var/www', shell: '/bin/false' }],
    dirs: [
      { path: '/var/lib/nginx', uid: 0, gid: 0, mode: 0o755 },
      { path: '/var/log/nginx', uid: 0, gid: 0, mode: 0o755 },
      { path: '/run/nginx', uid: 0, gid: 0, mode: 0o755 },
    ],
    files: {
      '/etc/nginx/nginx.conf': { content: NGINX_CONF, mode: 0o644 },
      '/usr/share/nginx/html/index.html': { content: NGINX_PAGE, mode: 0o644 },
    },
    cmd: ['nginx', '-g', 'daemon off;'],
    labels: { 'org.opencontainers.image.description': `nginx (Debian ${version}) serving a static page on :80`, 'org.opencontainers.image.version': version },
  });
}

/** References of the Debian-built images, keyed by short name. */
export interface DebianImages {
  postgres: string;
  fio: string;
}

/** Builds and pushes both images to `registry` (plain HTTP). Reproducible digests. */
export async function buildDebianImages(registry: string): Promise<DebianImages> {
  const postgres = await buildPostgresImage(registry);
  const fio = await buildFioImage(registry);
  return { postgres: postgres.reference, fio: fio.reference };
}

async function main(argv: string[]): Promise<void> {
  const registry = argv[0];
  if (registry === undefined || registry.startsWith('-')) {
    process.stderr.write('usage: debian-images REGISTRY (e.g. 127.0.0.1:5000)\n');
    process.exitCode = 2;
    return;
  }
  const images = await buildDebianImages(registry);
  for (const [name, ref] of Object.entries(images)) process.stdout.write(`${name}=${ref}\n`);
}

// Run as a CLI only when executed directly, not when imported.
if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).catch((e: unknown) => {
    process.stderr.write(`debian-images: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exitCode = 1;
  });
}
