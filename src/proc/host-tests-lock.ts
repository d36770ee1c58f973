/**
 * The machine-wide lock that integration test files (test/leak-guard.ts) and benchmarks
 * (bench/run.mjs) take turns on. Each of them makes bridges, nftables tables, namespaces and
 * VMs in the one kernel of the machine, and judges what it leaked or measured by the whole
 * host: two of them at once (CI beside a developer's run, a bench beside the suite) would
 * remove or slow each other's objects. /run/lock is where FHS puts such locks (a tmpfs, so a
 * reboot leaves none behind).
 */
import { mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import { acquireFileLock, type FileLock } from './file-lock.js';

export const HOST_TESTS_LOCK = '/run/lock/carapace-host-tests.lock';

/** Takes HOST_TESTS_LOCK, waiting at most `timeoutMs` (see acquireFileLock). */
export async function acquireHostTestsLock(timeoutMs: number): Promise<FileLock> {
  await mkdir(dirname(HOST_TESTS_LOCK), { recursive: true });
  return acquireFileLock(HOST_TESTS_LOCK, { timeoutMs });
}
