/**
 * Writing a long-lived stream (SSE, NDJSON) to one client. Two things a server with many
 * watchers needs:
 * - the chunks written within STREAM_FLUSH_MS go out as one socket write instead of one each
 *   (a busy server writes each stream at most every STREAM_FLUSH_MS: with 250 watchers and
 *   100 writes/s, flushing every turn of the event loop made socket writes a third of its CPU);
 * - a client that stops reading cannot grow the server's memory: once what is waiting for
 *   its socket passes `maxBacklogBytes` the stream is cut (it reconnects and resumes from its
 *   last event id, as SSE clients do).
 */
import type { ServerResponse } from 'node:http';

/** How long a chunk may wait for others before its stream is written. */
export const STREAM_FLUSH_MS = 20;

/** Default backlog bound per stream. */
export const MAX_STREAM_BACKLOG_BYTES = 8 * 1024 * 1024;

export class StreamWriter {
  private pending: string[] = [];
  private scheduled = false;
  /** True once the client fell too far behind and the stream was cut. */
  overflowed = false;

  constructor(
    private readonly res: ServerResponse,
    /** Called once when the backlog bound is passed (stop producing, log). */
    private readonly onOverflow: () => void,
    private readonly maxBacklogBytes = MAX_STREAM_BACKLOG_BYTES,
  ) {}

  /** Queues a chunk; it is written with the others that come within STREAM_FLUSH_MS. */
  write(chunk: string): void {
    if (this.overflowed || this.res.destroyed) return;
    this.pending.push(chunk);
    if (!this.scheduled) {
      this.scheduled = true;
      setTimeout(() => this.flush(), STREAM_FLUSH_MS);
    }
  }

  /** Writes what is queued now (also called before ending the stream). */
  flush(): void {
    this.scheduled = false;
    if (this.pending.length === 0 || this.res.destroyed) return;
    const chunk = this.pending.length === 1 ? (this.pending[0] as string) : this.pending.join(''); // length checked
    this.pending = [];
    this.res.write(chunk);
    if (this.res.writableLength > this.maxBacklogBytes && !this.overflowed) {
      this.overflowed = true;
      this.onOverflow();
      this.res.destroy();
    }
  }
}
