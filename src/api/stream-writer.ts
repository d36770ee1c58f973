/**
 * Writing a long-lived stream (SSE, NDJSON) to one client. Two things a server with many
 * watchers needs:
 * - the chunks written in one turn of the event loop (the events of one store commit) go out
 *   as one socket write instead of one each;
 * - a client that stops reading cannot grow the server's memory: once what is waiting for
 *   its socket passes `maxBacklogBytes` the stream is cut (it reconnects and resumes from its
 *   last event id, as SSE clients do).
 */
import type { ServerResponse } from 'node:http';

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

  /** Queues a chunk; it is written with the others of this turn. */
  write(chunk: string): void {
    if (this.overflowed || this.res.destroyed) return;
    this.pending.push(chunk);
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => this.flush());
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
