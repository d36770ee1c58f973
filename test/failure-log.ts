/**
 * A logger for in-process integration tests that keeps the last lines in memory and prints
 * them when a test fails: a failure seen once in CI (where the log level is silent) then says
 * what the agent and controller were doing, without flooding passing runs.
 */
import { Writable } from 'node:stream';
import { pino, type Logger } from 'pino';
import { afterEach } from 'vitest';

/** `CARAPACE_TEST_LOG` still sends everything to stdout at that level, as before. */
export function failureLogger(keep = 400): Logger {
  const explicit = process.env['CARAPACE_TEST_LOG'];
  if (explicit) return pino({ level: explicit });
  const lines: string[] = [];
  afterEach((ctx) => {
    if (ctx.task.result?.state === 'fail' && lines.length > 0) process.stdout.write(`--- last ${lines.length} log lines before "${ctx.task.name}" failed ---\n${lines.join('')}`);
    lines.length = 0;
  });
  return pino(
    { level: 'info' },
    new Writable({
      write: (chunk: Buffer, _e, cb) => {
        lines.push(chunk.toString());
        if (lines.length > keep) lines.splice(0, lines.length - keep);
        cb();
      },
    }),
  );
}
