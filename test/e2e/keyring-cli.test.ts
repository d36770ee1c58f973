/**
 * The cluster keyring through the real CLI and `carapace server` processes (SQLite, no
 * runtime): a server given no keyring makes STATE_DIR/keyring (0600) and says that every
 * server of the store needs that file; nothing in its store or state dir is a clear private
 * key; `keys rotate` + restart + `keys reencrypt` move everything to the new key; a
 * group-readable keyring is refused with CARAPACE_E_BAD_KEYRING naming the flag; a server of
 * the same store with another keyring is refused naming the key the CA is sealed with.
 */
import { chmod, readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cli, freePort, Server, tempDir } from './helpers.js';

let tmp: Awaited<ReturnType<typeof tempDir>>;
let server: Server | undefined;

beforeAll(async () => {
  tmp = await tempDir('carapace-keyring-cli-');
});
afterAll(async () => {
  await server?.stop();
  await tmp?.cleanup();
});

/** The key ids of a keyring file, primary first. */
async function idsOf(file: string): Promise<string[]> {
  return (await readFile(file, 'utf8'))
    .split('\n')
    .filter((l) => l.includes(':'))
    .map((l) => l.slice(0, l.indexOf(':')));
}

describe('the keyring through the CLI', () => {
  it('is made on first start, rotated, refused when loose or foreign', async () => {
    const stateDir = join(tmp.dir, 'server');
    const file = join(stateDir, 'keyring');
    const port = await freePort();
    server = new Server(stateDir, port, ['--no-agent-api'], {}, 'server');
    await server.start();
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    expect(server.log).toMatch(/keyring created: .*every server of this store must be given this same file/);
    const [first] = await idsOf(file);
    expect((await readdir(join(stateDir, 'audit-keys'))).sort()).toEqual(['audit-ed25519.key.sealed', 'audit-ed25519.pub']);
    const dbBytes = Buffer.concat(await Promise.all(['store.db', 'store.db-wal'].map((f) => readFile(join(stateDir, f)).catch(() => Buffer.alloc(0)))));
    expect(dbBytes.includes(Buffer.from('pki/ca'))).toBe(true);
    expect(dbBytes.includes(Buffer.from('PRIVATE KEY'))).toBe(false);
    await server.stop();

    // keys rotate, restart (the audit key is re-sealed), keys reencrypt (the CA key).
    const rotated = await cli('http://127.0.0.1:1', ['keys', 'rotate', '--keyring', file]);
    expect(rotated.code, rotated.stderr).toBe(0);
    const [second, old] = await idsOf(file);
    expect(old).toBe(first);
    expect(rotated.stdout).toContain(`key ${second} added`);
    server = new Server(stateDir, port, ['--no-agent-api', '--keyring', file], {}, 'server');
    await server.start();
    expect(server.log).toContain('audit signing key re-sealed under the primary key');
    const re = await cli(server.url, ['keys', 'reencrypt']);
    expect(re.code, re.stderr).toBe(0);
    expect(re.stdout).toContain(`under key ${second}: the CA key re-sealed; 0 secret(s) re-encrypted`);
    const again = await cli(server.url, ['secrets', 'reencrypt']); // the older name
    expect(again.stdout).toContain(`under key ${second}: the CA key was already under it`);
    await server.stop();

    // A keyring readable by others: refused, naming the flag.
    await chmod(file, 0o644);
    const loose = await cli('http://127.0.0.1:1', ['server', '--state-dir', stateDir, '--port', '0', '--no-agent-api', '--keyring', file]);
    expect(loose.code).toBe(1);
    expect(loose.stderr).toContain('CARAPACE_E_BAD_KEYRING');
    expect(loose.stderr).toMatch(/readable by group or others \(mode 644\)/);
    expect(loose.stderr).toContain('--keyring');
    await chmod(file, 0o600);

    // Another server of the same store, with a keyring of its own (made in its state dir): refused, naming the key.
    const foreign = await cli('http://127.0.0.1:1', ['server', '--store', `sqlite:${join(stateDir, 'store.db')}`, '--state-dir', join(tmp.dir, 'other'), '--port', '0', '--no-agent-api']);
    expect(foreign.code).toBe(1);
    expect(foreign.stderr).toContain('CARAPACE_E_KEYRING_KEY_MISSING');
    expect(foreign.stderr).toContain(`is sealed with key "${second}"`);
  }, 120_000);
});
