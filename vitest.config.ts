import { defineConfig } from 'vitest/config';

// Unit tests live next to the code (src/**/*.test.ts); integration tests that start real
// runc, runsc, registries and servers live in test/. Integration files run one at a time:
// they share the machine's two cores and real kernel resources.
export default defineConfig({
  test: {
    include: ['src/**/*.test.ts', 'test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: 'forks',
    fileParallelism: false,
    // Fails an integration file that leaves links, nftables tables, namespaces or VMs behind,
    // and removes them before the next file runs (test/leak-guard.ts says why).
    setupFiles: ['test/leak-guard.ts'],
  },
});
