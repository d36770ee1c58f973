// The release constant cannot drift from package.json, which npm and the README show.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CARAPACE_VERSION, versionInfo } from './version.js';

describe('version', () => {
  it('is the version in package.json, with the API version the manifests use', () => {
    const pkg = JSON.parse(readFileSync(join(import.meta.dirname, '..', '..', 'package.json'), 'utf8')) as { version: string };
    expect(CARAPACE_VERSION).toBe(pkg.version);
    expect(versionInfo()).toEqual({ version: pkg.version, apiVersion: 'carapace/v1' });
  });
});
