/**
 * The dashboard's Server-Sent Events parser is the one the CLI uses (`get --watch`):
 * src/model/sse.ts, shared so the two readers of the watch streams cannot parse them apart.
 */
export { SseParser, type SseEvent } from '../../src/model/sse.js';
