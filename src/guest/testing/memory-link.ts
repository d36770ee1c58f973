import type { Link, LinkHandlers } from '../link.js';

/** A guest agent link held in memory: a test plays the host (send) and reads what the agent wrote (lines, has). */
export class MemoryLink implements Link {
  handlers: LinkHandlers | undefined;
  readonly lines: string[] = [];
  start(signal: AbortSignal, h: LinkHandlers): Promise<void> {
    this.handlers = h;
    h.up();
    return new Promise((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
  }
  write(buf: Buffer): Promise<void> {
    this.lines.push(...buf.toString('utf8').split('\n').filter(Boolean));
    return Promise.resolve();
  }
  send(msg: unknown): void {
    this.handlers?.data(Buffer.from(`${JSON.stringify(msg)}\n`));
  }
  has(pred: (m: { type: string; requestId?: string; seq?: number }) => boolean): boolean {
    return this.lines.some((l) => pred(JSON.parse(l) as { type: string })); // `as`: the agent writes JSON objects with a type
  }
}
