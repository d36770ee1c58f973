import { describe, expect, test } from 'vitest';
import { classifySkopeoDetail, skopeoErrorDetail, skopeoFailure } from './classify.js';

// Real stderr lines captured from skopeo 1.9.3 against docker-registry 2.8.
const NOT_FOUND = 'time="2026-11-22T00:25:30Z" level=fatal msg="Error parsing image name \\"docker://127.0.0.1:5111/t/bb:2\\": reading manifest 2 in 127.0.0.1:5111/t/bb: manifest unknown: manifest unknown"';
const REFUSED = 'time="2026-11-22T00:25:30Z" level=fatal msg="Error parsing image name \\"docker://127.0.0.1:5112/t/nope:1\\": pinging container registry 127.0.0.1:5112: Get \\"http://127.0.0.1:5112/v2/\\": dial tcp 127.0.0.1:5112: connect: connection refused"';
const DNS = 'time="2026-11-22T00:25:30Z" level=fatal msg="Error parsing image name \\"docker://no.such.host.invalid/t/nope:1\\": pinging container registry no.such.host.invalid: Get \\"http://no.such.host.invalid/v2/\\": dial tcp: lookup no.such.host.invalid on 10.255.255.53:53: no such host"';
const DEADLINE = 'time="2026-11-22T00:25:38Z" level=fatal msg="Error parsing image name \\"docker://127.0.0.1:5113/t/nope:1\\": pinging container registry 127.0.0.1:5113: Get \\"http://127.0.0.1:5113/v2/\\": context deadline exceeded"';
const BAD_REF = 'time="2026-11-22T00:25:30Z" level=fatal msg="Error parsing image name \\"docker://127.0.0.1:5111/T/nope:1\\": invalid reference format: repository name must be lowercase"';

describe('skopeo error classification', () => {
  test.each([
    [NOT_FOUND, 'ImageNotFound'],
    [REFUSED, 'RegistryUnreachable'],
    [DNS, 'RegistryUnreachable'],
    [DEADLINE, 'RegistryUnreachable'],
    [BAD_REF, 'ImageInvalid'],
    ['time="x" level=fatal msg="copying config: unsupported MIME type for compression: application/x-foo"', 'ImageInvalid'],
    ['time="x" level=fatal msg="something nobody anticipated"', 'ImagePullFailed'],
    ['not even logrus', 'ImagePullFailed'],
  ])('%#', (stderr, reason) => {
    expect(classifySkopeoDetail(skopeoErrorDetail(stderr))).toBe(reason);
  });

  test('detail drops the redundant prefix and unescapes quotes', () => {
    expect(skopeoErrorDetail(NOT_FOUND)).toBe('reading manifest 2 in 127.0.0.1:5111/t/bb: manifest unknown: manifest unknown');
    expect(skopeoErrorDetail(REFUSED)).toContain('Get "http://127.0.0.1:5112/v2/"');
  });

  test('the message is one bounded line naming the reference', () => {
    const long = `time="x" level=fatal msg="${'boom '.repeat(200)}"\nsecond line`;
    const e = skopeoFailure('r.io/a:1', 'r.io', long, false);
    expect(e.reason).toBe('ImagePullFailed');
    expect(e.message.startsWith('pulling "r.io/a:1" failed: boom')).toBe(true);
    expect(e.message).not.toContain('\n');
    expect(e.message.length).toBeLessThan(300);
    expect(skopeoFailure('r.io/a:1', 'r.io', '', true).reason).toBe('RegistryUnreachable');
  });
});
