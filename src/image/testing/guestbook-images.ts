/**
 * The images of the bundled guestbook (examples/guestbook.yaml): a three-tier application
 * across Carapace's isolation tiers, built from this host's packages like every other image
 * here. Usable as a library or as a CLI:
 *
 *   node dist/src/image/testing/guestbook-images.js 127.0.0.1:5000
 *
 * prints one `name=reference` line per image (and exits non-zero with a message on failure).
 * Needs postgresql-15 and postgresql-client-15 (scripts/install.sh installs them); the
 * PostgreSQL image takes 15–60 s to build here (mostly gzip), the other two a few seconds.
 *
 * - `db`: `carapace-examples/postgres:15` (debian-images.ts);
 * - `api`: `carapace-examples/guestbook-api:1`, busybox httpd with CGI scripts that run psql
 *   (Debian's postgresql-client-15) against `$PGHOST`: `/cgi-bin/visit` counts a visit,
 *   `/cgi-bin/notes` lists notes (GET) or adds one (POST `text=…`). Plain text, one
 *   `key value` line per fact, so a shell (the web tier, a newcomer's curl) can read it;
 * - `web`: `carapace-examples/guestbook-web:1`, busybox httpd whose page (`/`, a CGI script)
 *   asks the api at `$API_URL` for a visit and the notes and shows them; `POST /cgi-bin/sign`
 *   forwards a note to the api.
 */
import { pathToFileURL } from 'node:url';
import { buildBusyboxImage } from './busybox-image.js';
import { buildDebianImage, packageVersion } from './debian-image.js';
import { buildPostgresImage } from './debian-images.js';
import type { BuiltImage } from './oci-build.js';

/** Repository names of the guestbook's own images, for manifests that hard-code them. */
export const GUESTBOOK_REPOSITORIES = {
  api: 'carapace-examples/guestbook-api',
  web: 'carapace-examples/guestbook-web',
} as const;

const PG_BIN = '/usr/lib/postgresql/15/bin';
const CGI = { mode: 0o755 } as const;

/**
 * Sourced by the api's CGI scripts. The tables are made on first use (IF NOT EXISTS), so a
 * fresh database (a new volume) needs no separate migration step. A database error answers
 * 502 with psql's message (which never holds the password: libpq reads it from PGPASSWORD) and
 * is logged to the container's stderr (httpd passes CGI stderr through).
 */
const API_LIB = `# The guestbook api's shared shell functions (sourced by /www/cgi-bin/*).
reply() {
  printf 'HTTP/1.1 %s\\r\\nContent-Type: text/plain; charset=utf-8\\r\\nCache-Control: no-store\\r\\n\\r\\n' "$1"
  printf '%s\\n' "$2"
}
# Runs the SQL on stdin after the schema, with psql's -v variables "$@"; answers its output.
run_sql() {
  if out=$({ cat <<'SQL'
SET client_min_messages = warning;
CREATE TABLE IF NOT EXISTS visits (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(), via text NOT NULL);
CREATE TABLE IF NOT EXISTS notes (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(), body text NOT NULL CHECK (length(body) BETWEEN 1 AND 280));
SQL
    cat; } | psql -X -q -At -v ON_ERROR_STOP=1 "$@" 2>&1); then
    reply '200 OK' "$out"
  else
    echo "guestbook-api: database error: $out" >&2
    reply '502 Bad Gateway' "error database: $out"
  fi
}
`;

const API_VISIT = `#!/bin/sh
# Counts a visit (from the caller's address) and answers the count and where it is kept.
. /usr/local/lib/guestbook.sh
run_sql -v via="\${REMOTE_ADDR:-unknown}" -v api="$(hostname)" <<'SQL'
INSERT INTO visits (via) VALUES (:'via');
SELECT 'visits ' || count(*) FROM visits;
SELECT 'first_visit ' || to_char(min(at) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC' FROM visits;
SELECT 'api ' || :'api';
SELECT 'db ' || split_part(version(), ' on ', 1) || ' at ' || host(inet_server_addr()) || ', up since ' || to_char(pg_postmaster_start_time() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC';
SQL
`;

const API_NOTES = `#!/bin/sh
# GET: the 20 newest notes, one "note ID TIME TEXT" line each. POST: adds one, from a form
# field text=... (URL-encoded) or a raw body; 1 to 280 characters.
. /usr/local/lib/guestbook.sh
if [ "$REQUEST_METHOD" = POST ]; then
  body=$(head -c "\${CONTENT_LENGTH:-0}")
  case "$body" in
    text=*) body=\${body#text=}; body=$(httpd -d "\${body%%&*}") ;;
  esac
  if [ -z "$body" ] || [ "\${#body}" -gt 280 ]; then
    reply '400 Bad Request' 'error a note is 1 to 280 characters (POST text=...)'
    exit 0
  fi
  run_sql -v body="$body" <<'SQL'
INSERT INTO notes (body) VALUES (:'body') RETURNING 'added ' || id;
SQL
else
  run_sql <<'SQL'
SELECT 'note ' || id || ' ' || to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' ' || translate(body, E'\\n\\r', '  ') FROM notes ORDER BY id DESC LIMIT 20;
SQL
fi
`;

const API_INDEX = `#!/bin/sh
. /usr/local/lib/guestbook.sh
reply '200 OK' 'guestbook api: GET /cgi-bin/visit counts a visit; GET /cgi-bin/notes lists notes; POST /cgi-bin/notes with text=... adds one'
`;

/**
 * Shell function of the web tier's scripts: `call URL [wget options]` prints the api's answer,
 * or wget's last message (`server returned error: HTTP/1.1 502 Bad Gateway`, `bad address
 * 'api:8080'`) and fails. (`wget -q` would say nothing on failure, and without it the progress
 * lines would mix into the answer: they go to a file instead. Debian's busybox 1.35 wget
 * crashes (SIGSEGV) with -T and its progress meter on, so the time limit is `timeout`'s.)
 */
const WGET_LIB = `call() {
  url=$1; shift
  err=/tmp/wget.$$
  if out=$(timeout 15 wget -O - "$@" "$url" 2>"$err"); then rm -f "$err"; printf '%s\\n' "$out"; return 0; fi
  tail -n 1 "$err"; rm -f "$err"; return 1
}`;

/**
 * The web tier's page. Every answer of the api is one "key value" line per fact; the notes'
 * texts come from users, so they are HTML-escaped.
 */
const WEB_INDEX = `#!/bin/sh
# The guestbook's page: asks the api (by its service name, over the tenant network) to count
# this visit and for the notes, and shows what the database holds.
api="\${API_URL:-http://api:8080}"
esc() { sed -e 's/&/\\&amp;/g' -e 's/</\\&lt;/g' -e 's/>/\\&gt;/g' -e 's/"/\\&quot;/g'; }
${WGET_LIB}
head_html() {
  printf 'HTTP/1.1 %s\\r\\nContent-Type: text/html; charset=utf-8\\r\\nCache-Control: no-store\\r\\n\\r\\n' "$1"
  printf '<!doctype html>\\n<html>\\n<head><meta charset="utf-8"><title>Guestbook</title></head>\\n<body>\\n<h1>Guestbook</h1>\\n'
}
if ! visit=$(call "$api/cgi-bin/visit"); then
  head_html '502 Bad Gateway'
  printf '<p id="error">The api at %s did not answer: %s (see carapace logs of the api and db instances).</p>\\n</body>\\n</html>\\n' "$api" "$(printf '%s' "$visit" | esc)"
  exit 0
fi
field() { printf '%s\\n' "$visit" | sed -n "s/^$1 //p" | esc; }
head_html '200 OK'
printf '<p id="visits">Visit number <b>%s</b> since %s.</p>\\n' "$(field visits)" "$(field first_visit)"
printf '<p id="path">Page by %s (web), count and notes from %s (api at %s), kept in %s (db).</p>\\n' "$(hostname | esc)" "$(field api)" "$(printf '%s' "$api" | esc)" "$(field db)"
printf '<h2>Notes</h2>\\n<ul id="notes">\\n'
call "$api/cgi-bin/notes" | sed -n 's/^note [0-9]* //p' | esc | sed -e 's/^\\([^ ]* [^ ]*\\) \\(.*\\)$/<li>\\2 <small>(\\1 UTC)<\\/small><\\/li>/'
printf '</ul>\\n<form method="post" action="/cgi-bin/sign"><input name="text" maxlength="280" placeholder="leave a note"> <button>Sign</button></form>\\n</body>\\n</html>\\n'
`;

const WEB_SIGN = `#!/bin/sh
# A note from the page's form (text=..., URL-encoded): handed to the api as is; back to the page.
api="\${API_URL:-http://api:8080}"
${WGET_LIB}
body=$(head -c "\${CONTENT_LENGTH:-0}")
if out=$(call "$api/cgi-bin/notes" --post-data "$body"); then
  printf 'HTTP/1.1 303 See Other\\r\\nLocation: /\\r\\nContent-Type: text/plain\\r\\n\\r\\n%s\\n' "$out"
else
  printf 'HTTP/1.1 502 Bad Gateway\\r\\nContent-Type: text/plain\\r\\n\\r\\nthe api refused the note: %s\\n' "$out"
fi
`;

/** The api: busybox httpd on :8080 with CGI scripts running psql (postgresql-client-15). */
export async function buildGuestbookApiImage(registry: string, tag = '1'): Promise<BuiltImage> {
  const version = await packageVersion('postgresql-client-15');
  return buildDebianImage({
    registry,
    repository: GUESTBOOK_REPOSITORIES.api,
    tag,
    packages: [{ name: 'postgresql-client-15', include: [new RegExp(`^${PG_BIN}/psql$`)] }],
    files: {
      '/usr/local/lib/guestbook.sh': API_LIB,
      '/www/cgi-bin/index.cgi': { content: API_INDEX, ...CGI },
      '/www/cgi-bin/visit': { content: API_VISIT, ...CGI },
      '/www/cgi-bin/notes': { content: API_NOTES, ...CGI },
    },
    // -v: one stderr line per request (carapace logs); CGI scripts inherit the environment.
    cmd: ['httpd', '-f', '-v', '-p', '8080', '-h', '/www'],
    // The database's address, user and password come from the manifest (PGHOST, PGUSER,
    // PGPASSWORD); these only keep a connection attempt short and skip TLS/GSS negotiation,
    // which the tenant network's database does not offer.
    env: [`PATH=${PG_BIN}:/usr/sbin:/usr/bin:/sbin:/bin`, 'PGDATABASE=postgres', 'PGCONNECT_TIMEOUT=5', 'PGSSLMODE=disable', 'PGGSSENCMODE=disable', 'TZ=UTC'],
    labels: { 'org.opencontainers.image.description': `guestbook api: busybox httpd + psql (Debian ${version}) on :8080` },
  });
}

/** The web tier: busybox httpd on :8080 whose page asks the api at `$API_URL`. */
export async function buildGuestbookWebImage(registry: string, tag = '1'): Promise<BuiltImage> {
  return buildBusyboxImage({
    registry,
    repository: GUESTBOOK_REPOSITORIES.web,
    tag,
    files: {
      '/www/cgi-bin/index.cgi': { content: WEB_INDEX, ...CGI },
      '/www/cgi-bin/sign': { content: WEB_SIGN, ...CGI },
    },
    cmd: ['httpd', '-f', '-v', '-p', '8080', '-h', '/www'],
    labels: { 'org.opencontainers.image.description': 'guestbook web: busybox httpd on :8080' },
  });
}

/** References of the guestbook's images, keyed by service. */
export interface GuestbookImages {
  db: string;
  api: string;
  web: string;
}

/** Builds and pushes the three images to `registry` (plain HTTP). Reproducible digests. */
export async function buildGuestbookImages(registry: string): Promise<GuestbookImages> {
  const web = await buildGuestbookWebImage(registry);
  const api = await buildGuestbookApiImage(registry);
  const db = await buildPostgresImage(registry);
  return { db: db.reference, api: api.reference, web: web.reference };
}

async function main(argv: string[]): Promise<void> {
  const registry = argv[0];
  if (registry === undefined || registry.startsWith('-')) {
    process.stderr.write('usage: guestbook-images REGISTRY (e.g. 127.0.0.1:5000)\n');
    process.exitCode = 2;
    return;
  }
  const images = await buildGuestbookImages(registry);
  for (const [name, ref] of Object.entries(images)) process.stdout.write(`${name}=${ref}\n`);
}

// Run as a CLI only when executed directly, not when imported.
if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).catch((e: unknown) => {
    process.stderr.write(`guestbook-images: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exitCode = 1;
  });
}
