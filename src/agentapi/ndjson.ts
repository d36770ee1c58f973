/**
 * Newline-delimited JSON read from a streamed HTTP body (the agent API's log and watch
 * streams): yields each non-empty line's parsed value as whole lines arrive; `onChunk` runs
 * for every chunk received (a liveness timer, say) before its lines are yielded.
 */
export async function* ndjsonLines(body: AsyncIterable<unknown>, onChunk?: () => void): AsyncGenerator<unknown> {
  let buf = '';
  for await (const chunk of body) {
    onChunk?.();
    buf += String(chunk);
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (line) yield JSON.parse(line) as unknown;
    }
  }
}
