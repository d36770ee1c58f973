/**
 * `KeyedMutex`: runs async sections one at a time per key (different keys run side by side).
 * For effects that must not interleave within one process, e.g. a tenant's network segment
 * being removed by one task while another attaches a container to it. Between processes, see
 * file-lock.ts. A dozen lines: no dependency for it.
 */
export class KeyedMutex {
  private readonly tails = new Map<string, Promise<void>>();

  /** Runs `fn` once every section of `key` started before it has ended; its result or error passes through. */
  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const before = this.tails.get(key) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((resolve) => (release = resolve));
    const tail = before.then(() => mine);
    this.tails.set(key, tail);
    await before;
    try {
      return await fn();
    } finally {
      release();
      // The last section of a key leaves nothing behind.
      if (this.tails.get(key) === tail) this.tails.delete(key);
    }
  }

  /** Keys with a section running or waiting (for tests). */
  get busyKeys(): number {
    return this.tails.size;
  }
}
