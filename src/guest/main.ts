/**
 * The guest agent's unbundled entry point: `node <carapace>/dist/src/guest/main.js [flags]`
 * (flags in start.ts). Tests and development run it on a host with --socket or --listen; a
 * cell's VM runs the bundle instead (`dist/guest/agent.cjs`, the same startGuestAgent).
 */
import { startGuestAgent } from './start.js';

startGuestAgent(process.argv.slice(2)).catch((err: unknown) => {
  process.stderr.write(`carapace guest agent: ${(err as Error).message}\n`); // `as`: anything thrown here is an Error
  process.exit(1);
});
