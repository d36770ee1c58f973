import { describe, expect, test } from 'vitest';
import { SingleFlight } from './single-flight.js';

function deferred<T>() {
  let resolve!: (v: T) => void; // assigned synchronously by the Promise constructor
  let reject!: (e: unknown) => void; // same
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

describe('SingleFlight', () => {
  test('concurrent callers share one run; a later call runs again', async () => {
    const sf = new SingleFlight<number, string>();
    let runs = 0;
    const gate = deferred<number>();
    const work = async () => {
      runs += 1;
      return gate.promise;
    };
    const a = sf.run('k', work);
    const b = sf.run('k', work);
    const other = sf.run('other', async () => 7);
    expect(sf.size).toBe(2);
    gate.resolve(42);
    expect(await Promise.all([a, b, other])).toEqual([42, 42, 7]);
    expect(runs).toBe(1);
    expect(sf.size).toBe(0);
    await sf.run('k', work);
    expect(runs).toBe(2);
  });

  test('failures reach every caller and are not cached', async () => {
    const sf = new SingleFlight<number, string>();
    let n = 0;
    const work = async () => {
      n += 1;
      if (n === 1) throw new Error('first fails');
      return n;
    };
    const [a, b] = await Promise.allSettled([sf.run('k', work), sf.run('k', work)]);
    expect(a.status).toBe('rejected');
    expect(b.status).toBe('rejected');
    expect(await sf.run('k', work)).toBe(2);
  });

  test('events reach all listeners; late joiners get the latest event', async () => {
    const sf = new SingleFlight<number, string>();
    const gate = deferred<void>();
    const seenA: string[] = [];
    const seenB: string[] = [];
    const a = sf.run('k', async (_s, emit) => {
      emit('one');
      await gate.promise;
      emit('two');
      return 1;
    }, { onEvent: (e) => seenA.push(e) });
    const b = sf.run('k', async () => 0, { onEvent: (e) => seenB.push(e) });
    gate.resolve();
    await Promise.all([a, b]);
    expect(seenA).toEqual(['one', 'two']);
    expect(seenB).toEqual(['one', 'two']);
  });

  test('the work is aborted only when every caller gave up', async () => {
    const sf = new SingleFlight<string, string>();
    let workSignal: AbortSignal | undefined;
    const gate = deferred<string>();
    const work = async (signal: AbortSignal) => {
      workSignal = signal;
      return gate.promise;
    };
    const c1 = new AbortController();
    const c2 = new AbortController();
    const p1 = sf.run('k', work, { signal: c1.signal });
    const p2 = sf.run('k', work, { signal: c2.signal });
    c1.abort(new Error('one left'));
    await expect(p1).rejects.toThrow('one left');
    expect(workSignal?.aborted).toBe(false);
    c2.abort(new Error('two left'));
    await expect(p2).rejects.toThrow('two left');
    expect(workSignal?.aborted).toBe(true);
    // The torn-down flight is not joined by the next caller.
    expect(sf.size).toBe(0);
    gate.resolve('late');
    expect(await sf.run('k', async () => 'fresh')).toBe('fresh');
  });

  test('a caller without a signal keeps the work alive', async () => {
    const sf = new SingleFlight<string, string>();
    let workSignal: AbortSignal | undefined;
    const c = new AbortController();
    const gate = deferred<string>();
    const work = async (signal: AbortSignal) => {
      workSignal = signal;
      return gate.promise;
    };
    const p1 = sf.run('k', work, { signal: c.signal });
    const p2 = sf.run('k', work);
    c.abort(new Error('bye'));
    await expect(p1).rejects.toThrow('bye');
    expect(workSignal?.aborted).toBe(false);
    gate.resolve('done');
    expect(await p2).toBe('done');
  });
});
