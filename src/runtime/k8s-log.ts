/**
 * Parser for conmon's `k8s-file` log format (the CRI log format):
 * `<RFC3339Nano time> <stdout|stderr> <F|P> <text>`, one record per line. `P` marks a partial
 * record (conmon splits long lines and lines without a trailing newline); the partials of a
 * stream are joined until the `F` record that completes them. Pure.
 */
import type { LogLine } from './driver.js';

/**
 * Stateful parser: feed it complete file lines (without the newline) in order; it returns a
 * LogLine when a record completes. Create one per read of a log file.
 */
export class K8sLogParser {
  private readonly partial: Record<'stdout' | 'stderr', { time: string; text: string } | undefined> = { stdout: undefined, stderr: undefined };

  /** Feeds one file line; returns the completed log line, or undefined (partial or malformed). */
  push(line: string): LogLine | undefined {
    const s1 = line.indexOf(' ');
    const s2 = s1 < 0 ? -1 : line.indexOf(' ', s1 + 1);
    if (s1 < 0 || s2 < 0) return undefined;
    const time = line.slice(0, s1);
    const stream = line.slice(s1 + 1, s2);
    if (stream !== 'stdout' && stream !== 'stderr') return undefined;
    // The tag may be followed by a space and text, or end the line (an empty record).
    const tag = line.slice(s2 + 1, s2 + 2);
    const text = line.slice(s2 + 3);
    const prev = this.partial[stream];
    if (tag === 'P') {
      this.partial[stream] = { time: prev?.time ?? time, text: (prev?.text ?? '') + text };
      return undefined;
    }
    if (tag !== 'F') return undefined;
    this.partial[stream] = undefined;
    return { time: prev?.time ?? time, stream, text: (prev?.text ?? '') + text };
  }

  /** Lines still partial at the end of input (a container that exited mid-line). */
  flush(): LogLine[] {
    const out: LogLine[] = [];
    for (const stream of ['stdout', 'stderr'] as const) {
      const p = this.partial[stream];
      if (p) out.push({ time: p.time, stream, text: p.text });
      this.partial[stream] = undefined;
    }
    return out;
  }
}

/** Parses a whole log file's text into lines (partials joined, trailing partials flushed). */
export function parseK8sLog(text: string): LogLine[] {
  const parser = new K8sLogParser();
  const out: LogLine[] = [];
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const l = parser.push(line);
    if (l) out.push(l);
  }
  out.push(...parser.flush());
  return out;
}
