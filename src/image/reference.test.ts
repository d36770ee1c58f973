import { describe, expect, test } from 'vitest';
import { InvalidReferenceError, isLoopbackRegistry, parseReference, registryHost } from './reference.js';

const D = `sha256:${'ab'.repeat(32)}`;

describe('parseReference', () => {
  test.each([
    ['busybox', 'docker.io', 'library/busybox', 'latest', undefined, 'docker.io/library/busybox:latest'],
    ['busybox:1.36', 'docker.io', 'library/busybox', '1.36', undefined, 'docker.io/library/busybox:1.36'],
    ['user/app', 'docker.io', 'user/app', 'latest', undefined, 'docker.io/user/app:latest'],
    ['127.0.0.1:5000/a/b:v1', '127.0.0.1:5000', 'a/b', 'v1', undefined, '127.0.0.1:5000/a/b:v1'],
    ['localhost/x', 'localhost', 'x', 'latest', undefined, 'localhost/x:latest'],
    ['ghcr.io/o/r@' + D, 'ghcr.io', 'o/r', undefined, D, `ghcr.io/o/r@${D}`],
    ['ghcr.io/o/r:t@' + D, 'ghcr.io', 'o/r', 't', D, `ghcr.io/o/r@${D}`],
    ['[::1]:5000/x:1', '[::1]:5000', 'x', '1', undefined, '[::1]:5000/x:1'],
    ['reg.io/a__b/c-d.e_f:T_a.g-1', 'reg.io', 'a__b/c-d.e_f', 'T_a.g-1', undefined, 'reg.io/a__b/c-d.e_f:T_a.g-1'],
  ])('%s', (input, registry, repository, tag, digest, canonical) => {
    expect(parseReference(input)).toEqual({ original: input, registry, repository, tag, digest, canonical });
  });

  test.each(['', ' busybox', 'Busybox', 'a//b', 'a/', ':tag', 'a:', 'a:-x', `a:${'x'.repeat(129)}`, 'a@sha256:abc', `a@sha512:${'a'.repeat(128)}`,
    'docker://a', 'a/b_/c', 'bad_host:5000/x', 'reg.io:port/x', '@' + D])('rejects %j', (input) => {
    expect(() => parseReference(input)).toThrow(InvalidReferenceError);
  });

  test('the error names the reference and the reason', () => {
    expect(() => parseReference('Foo')).toThrow('invalid image reference "Foo": repository component "Foo" must be lowercase');
  });
});

describe('loopback registries', () => {
  test.each([
    ['127.0.0.1:5000', true], ['127.1.2.3', true], ['localhost:80', true], ['LOCALHOST', true], ['[::1]:5000', true],
    ['10.0.0.1:5000', false], ['docker.io', false], ['127.0.0.1.evil.com', false], ['localhost.evil.com:5000', false],
  ])('%s -> %s', (registry, loopback) => {
    expect(isLoopbackRegistry(registry)).toBe(loopback);
  });
  test('registryHost strips port and brackets', () => {
    expect(registryHost('[::1]:5000')).toBe('::1');
    expect(registryHost('Reg.io:443')).toBe('reg.io');
  });
});
