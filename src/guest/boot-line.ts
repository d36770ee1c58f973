/**
 * One line on stderr (the VM's console) in the shape of the guest agent's pino lines, for what
 * runs before the agent's logger exists: the loader (loader.ts) and the startup snapshot's
 * entry (snapshot-entry.ts).
 */
export function bootLine(level: 30 | 40, component: string, msg: string, fields: Record<string, unknown> = {}): void {
  process.stderr.write(`${JSON.stringify({ level, time: Date.now(), pid: process.pid, component, ...fields, msg })}\n`);
}
