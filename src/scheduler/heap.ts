/**
 * An indexed binary min-heap of small integers (host indexes) ordered by an external key array,
 * ties broken by the integer itself so the order never depends on insertion history.
 * Several heaps may share one `pos` array as long as each item lives in at most one heap.
 */
export class IndexedHeap {
  private readonly items: number[] = [];

  /**
   * `key[i]` is read on every comparison; after changing it call `update(i)`.
   * `pos` maps item -> slot (-1 when in no heap) and must be as long as the largest item + 1.
   */
  constructor(
    private readonly key: Float64Array,
    private readonly pos: Int32Array,
  ) {}

  /** Number of items in the heap. */
  get size(): number {
    return this.items.length;
  }

  /** True when `i` is in this heap. */
  has(i: number): boolean {
    const p = this.pos[i] ?? -1;
    return p >= 0 && this.items[p] === i;
  }

  /** Adds `i` (must not be in any heap). */
  push(i: number): void {
    this.items.push(i);
    this.pos[i] = this.items.length - 1;
    this.up(this.items.length - 1);
  }

  /** Removes and returns the smallest item, or -1 when empty. */
  pop(): number {
    const n = this.items.length;
    if (n === 0) return -1;
    const top = this.items[0] ?? -1;
    const last = this.items.pop() ?? -1;
    this.pos[top] = -1;
    if (n > 1) {
      this.items[0] = last;
      this.pos[last] = 0;
      this.down(0);
    }
    return top;
  }

  /** Re-establishes order after `key[i]` changed; no-op when `i` is not here. */
  update(i: number): void {
    if (!this.has(i)) return;
    const p = this.pos[i] ?? -1;
    this.up(p);
    this.down(this.pos[i] ?? -1);
  }

  /** Removes `i` when present. */
  remove(i: number): void {
    if (!this.has(i)) return;
    const p = this.pos[i] ?? -1;
    const last = this.items.pop() ?? -1;
    this.pos[i] = -1;
    if (p < this.items.length) {
      this.items[p] = last;
      this.pos[last] = p;
      this.up(p);
      this.down(this.pos[last] ?? -1);
    }
  }

  private less(a: number, b: number): boolean {
    const ka = this.key[a] ?? 0;
    const kb = this.key[b] ?? 0;
    return ka < kb || (ka === kb && a < b);
  }

  private up(p: number): void {
    const items = this.items;
    while (p > 0) {
      const parent = (p - 1) >> 1;
      const a = items[p] ?? -1;
      const b = items[parent] ?? -1;
      if (!this.less(a, b)) break;
      items[p] = b;
      items[parent] = a;
      this.pos[b] = p;
      this.pos[a] = parent;
      p = parent;
    }
  }

  private down(p: number): void {
    const items = this.items;
    const n = items.length;
    for (;;) {
      const l = 2 * p + 1;
      if (l >= n) break;
      const r = l + 1;
      let c = l;
      if (r < n && this.less(items[r] ?? -1, items[l] ?? -1)) c = r;
      const a = items[p] ?? -1;
      const b = items[c] ?? -1;
      if (!this.less(b, a)) break;
      items[p] = b;
      items[c] = a;
      this.pos[b] = p;
      this.pos[a] = c;
      p = c;
    }
  }
}
