/**
 * Fuzzing at CI size (`npm run soak` runs over 100,000 API cases): generated and mutated
 * manifests and API bodies through the real API and the parser, the cell protocol through
 * its parsers, the host channel and the guest agent, and the agent join path over real TLS.
 * Zero crashes, zero 5xx, every refusal coded (with field paths for input errors).
 */
import { describe, expect, it } from 'vitest';
import { errorProblem } from './fuzz.js';
import { runFuzz } from './fuzz-suite.js';
import { CI } from './sizes.js';

describe('fuzzing', () => {
  it('the oracle itself refuses 5xx, unknown codes, wrong statuses and input errors without a field path', () => {
    expect(errorProblem(500, '{"error":{"code":"CARAPACE_E_INTERNAL","message":"x","details":[]}}')).toMatch(/answered 500/);
    expect(errorProblem(400, '{"message":"Bad Request"}')).toMatch(/no catalogue code/);
    expect(errorProblem(404, '{"error":{"code":"CARAPACE_E_VALIDATION","message":"x","details":[{"path":"spec","message":"y"}]}}')).toMatch(/catalogue says 400/);
    expect(errorProblem(400, '{"error":{"code":"CARAPACE_E_VALIDATION","message":"x","details":[]}}')).toMatch(/names no field path/);
    expect(errorProblem(400, '{"error":{"code":"CARAPACE_E_MALFORMED_BODY","message":"x","details":[]}}')).toBeUndefined();
    expect(errorProblem(201, '{}')).toBeUndefined();
  });

  it('generated and mutated inputs: no crash, no 5xx, every refusal coded with its field paths', async () => {
    const r = await runFuzz(CI.fuzz, 4242, (l) => console.log(l));
    const failures = Object.entries(r.parts).flatMap(([name, p]) => p.examples.map((e) => `${name}: ${e}`));
    expect(failures).toEqual([]);
    expect(r.failures).toBe(0);
    // The generators reach the interesting paths: accepted writes, issued certificates, valid lines.
    for (const [name, p] of Object.entries(r.parts)) expect(p.accepted, `${name} accepted nothing`).toBeGreaterThan(0);
    expect(r.cases).toBeGreaterThanOrEqual(CI.fuzz.api + CI.fuzz.parser);
  }, 300_000);
});
