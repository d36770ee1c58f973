/**
 * Which keyring a server runs with: the one given (`--keyring`, `--secrets-keyring`,
 * CARAPACE_KEYRING), else STATE_DIR/keyring made once (0600, logged); two sources at once, a
 * malformed or group-readable one are refused with CARAPACE_E_BAD_KEYRING and the flag or
 * variable as the field path.
 */
import { chmod, mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino, type Logger } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { newKeyLine } from '../keyring/keyring.js';
import { defaultKeyringFile, serverKeyring } from './keyring.js';

let dir = '';
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'carapace-server-keyring-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A logger that keeps what it was told. */
function recording(): { logger: Logger; lines: () => Record<string, unknown>[] } {
  const out: string[] = [];
  const logger = pino({ level: 'info' }, { write: (s: string) => out.push(s) });
  return { logger, lines: () => out.map((l) => JSON.parse(l) as Record<string, unknown>) };
}

describe('serverKeyring', () => {
  it('makes STATE_DIR/keyring (0600) on first start and says so; later starts load it silently', async () => {
    const stateDir = join(dir, 'fresh');
    const { logger, lines } = recording();
    const first = await serverKeyring({ stateDir, logger, env: {} });
    expect((await stat(join(stateDir, 'keyring'))).mode & 0o777).toBe(0o600);
    expect((await readFile(join(stateDir, 'keyring'), 'utf8')).startsWith(`${first.primary}:`)).toBe(true);
    const told = lines().find((l) => typeof l['msg'] === 'string' && l['msg'].startsWith('keyring created'));
    expect(told?.['file']).toBe(join(stateDir, 'keyring'));
    expect(String(told?.['msg'])).toMatch(/every server of this store must be given this same file/);
    const again = recording();
    expect((await serverKeyring({ stateDir, logger: again.logger, env: {} })).primary).toBe(first.primary);
    expect(again.lines()).toEqual([]);
  });

  it('uses the file or the variable given, and an older all-in-one state dir keeps its secrets.keyring', async () => {
    const line = newKeyLine();
    const file = join(dir, 'given.keyring');
    await writeFile(file, `${line}\n`, { mode: 0o600 });
    const id = line.split(':')[0];
    expect((await serverKeyring({ keyring: file, stateDir: join(dir, 's1'), env: {} })).primary).toBe(id);
    expect((await serverKeyring({ secretsKeyring: file, stateDir: join(dir, 's1'), env: {} })).primary).toBe(id);
    expect((await serverKeyring({ stateDir: join(dir, 's1'), env: { CARAPACE_KEYRING: line } })).primary).toBe(id);
    const legacy = join(dir, 'legacy');
    await mkdir(legacy);
    await writeFile(join(legacy, 'secrets.keyring'), `${line}\n`, { mode: 0o600 });
    expect(defaultKeyringFile(legacy)).toBe(join(legacy, 'secrets.keyring'));
    expect((await serverKeyring({ stateDir: legacy, env: {} })).primary).toBe(id);
  });

  it('refuses two sources, a group-readable file, a malformed variable, naming the flag or variable', async () => {
    const line = newKeyLine();
    const file = join(dir, 'loose.keyring');
    await writeFile(file, `${line}\n`, { mode: 0o600 });
    await expect(serverKeyring({ keyring: file, stateDir: dir, env: { CARAPACE_KEYRING: line } })).rejects.toMatchObject({ code: 'CARAPACE_E_BAD_KEYRING', details: [{ path: 'CARAPACE_KEYRING' }] });
    await expect(serverKeyring({ keyring: file, secretsKeyring: file, stateDir: dir, env: {} })).rejects.toMatchObject({ code: 'CARAPACE_E_BAD_KEYRING', details: [{ path: '--secrets-keyring' }] });
    await chmod(file, 0o604);
    await expect(serverKeyring({ keyring: file, stateDir: dir, env: {} })).rejects.toMatchObject({ code: 'CARAPACE_E_BAD_KEYRING', message: expect.stringMatching(/readable by group or others \(mode 604\); chmod 600 it/), details: [{ path: '--keyring' }] });
    await expect(serverKeyring({ secretsKeyring: file, stateDir: dir, env: {} })).rejects.toMatchObject({ details: [{ path: '--secrets-keyring' }] });
    await expect(serverKeyring({ stateDir: dir, env: { CARAPACE_KEYRING: 'not a keyring' } })).rejects.toMatchObject({ code: 'CARAPACE_E_BAD_KEYRING', details: [{ path: 'CARAPACE_KEYRING' }] });
    await expect(serverKeyring({ keyring: join(dir, 'missing'), stateDir: dir, env: {} })).rejects.toMatchObject({ code: 'CARAPACE_E_BAD_KEYRING', message: expect.stringMatching(/cannot read the keyring/), details: [{ path: '--keyring' }] });
    // A default keyring file loosened by hand is refused too (not silently used).
    const stateDir = join(dir, 'loosened');
    await serverKeyring({ stateDir, env: {} });
    await chmod(join(stateDir, 'keyring'), 0o644);
    await expect(serverKeyring({ stateDir, env: {} })).rejects.toMatchObject({ code: 'CARAPACE_E_BAD_KEYRING', details: [{ path: '--keyring' }] });
  });
});
