/**
 * Whole-file writes that survive a crash: readers (and the next agent) see the old content or
 * the new one, never a torn file. Used for the network's state files and dnsmasq's inputs.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';

/**
 * Writes `data` to `file` atomically: a temporary file in the same directory, fsync, rename,
 * fsync of the directory (so the rename itself is durable).
 */
export async function writeFileAtomic(file: string, data: string, mode = 0o600): Promise<void> {
  const tmp = `${file}.${process.pid}.tmp`;
  const fh = await fs.open(tmp, 'w', mode);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await fs.rename(tmp, file);
  const dir = await fs.open(path.dirname(file), 'r');
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}

/** The file's text, or undefined when it does not exist. */
export async function readFileIfExists(file: string): Promise<string | undefined> {
  try {
    return await fs.readFile(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined; // safe: fs errors are ErrnoExceptions
    throw e;
  }
}
