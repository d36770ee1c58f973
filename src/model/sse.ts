/**
 * A Server-Sent Events parser for the API's watch and event streams, shared by the dashboard
 * (which reads them with fetch(): EventSource cannot send an Authorization header, and tokens
 * do not belong in URLs) and the CLI (`get --watch`). Feed it decoded text in any
 * chunking; it returns the complete events. Pure; follows the WHATWG event-stream rules the
 * API uses: `id:`, `event:`, `data:` (joined with newlines), comments, CR/LF/CRLF line ends.
 */
export interface SseEvent {
  /** `message` when the event names none. */
  event: string;
  data: string;
  /** The last `id:` seen so far (resume point), if any. */
  id?: string;
}

export class SseParser {
  private buf = '';
  private event = '';
  private data: string[] = [];
  private lastId: string | undefined;

  /** Adds text and returns the events it completed, in order. */
  push(text: string): SseEvent[] {
    this.buf += text;
    const out: SseEvent[] = [];
    for (;;) {
      const m = /\r\n|\r|\n/.exec(this.buf);
      if (!m) break;
      // A lone CR at the very end may be the first half of CRLF: wait for more.
      if (m[0] === '\r' && m.index === this.buf.length - 1) break;
      const line = this.buf.slice(0, m.index);
      this.buf = this.buf.slice(m.index + m[0].length);
      const ev = this.line(line);
      if (ev) out.push(ev);
    }
    return out;
  }

  /** The id to resume from (`?resourceVersion=`), the last one the stream sent. */
  get id(): string | undefined {
    return this.lastId;
  }

  private line(line: string): SseEvent | undefined {
    if (line === '') {
      if (this.data.length === 0) {
        this.event = '';
        return undefined;
      }
      const ev: SseEvent = { event: this.event || 'message', data: this.data.join('\n'), ...(this.lastId !== undefined ? { id: this.lastId } : {}) };
      this.event = '';
      this.data = [];
      return ev;
    }
    if (line.startsWith(':')) return undefined;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') this.event = value;
    else if (field === 'data') this.data.push(value);
    else if (field === 'id' && !value.includes('\0')) this.lastId = value;
    return undefined;
  }
}
