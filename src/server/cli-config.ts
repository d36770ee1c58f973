/**
 * The CLI's config file, `$CARAPACE_CONFIG` or `~/.config/carapace/config.json` (0600): the
 * server address, the token and the CA the CLI pins for that server. Written by the server that
 * mints the first admin token (`carapace up`, `carapace server`) and by `carapace login`; read
 * by every other command. One reader and one writer for both.
 */
import { readFileSync } from 'node:fs';
import { chmod, mkdir, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';

/** What the config file holds. `ca` is PEM; `caFingerprint` its sha256 (hex), both pinned together. */
export interface CliConfig {
  server?: string;
  token?: string;
  caFingerprint?: string;
  ca?: string;
}

/** The CLI's config file: $CARAPACE_CONFIG or ~/.config/carapace/config.json. */
export function cliConfigPath(): string {
  return process.env['CARAPACE_CONFIG'] ?? join(homedir(), '.config', 'carapace', 'config.json');
}

/** The config file's fields; missing or unreadable means empty, fields of other types are dropped. */
export function readCliConfig(): CliConfig {
  try {
    const v = JSON.parse(readFileSync(cliConfigPath(), 'utf8')) as unknown;
    if (typeof v !== 'object' || v === null) return {};
    const o = v as Record<string, unknown>; // checked to be an object
    const out: CliConfig = {};
    for (const k of ['server', 'token', 'caFingerprint', 'ca'] as const) {
      const x = o[k];
      if (typeof x === 'string') out[k] = x;
    }
    return out;
  } catch {
    return {};
  }
}

/** Writes the config (0600, its directory 0700); returns the path written. */
export async function writeCliConfig(c: CliConfig): Promise<string> {
  const path = cliConfigPath();
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  await writeFile(path, `${JSON.stringify(c, null, 2)}\n`, { mode: 0o600 });
  await chmod(path, 0o600);
  return path;
}
