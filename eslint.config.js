// Lint the boundaries: promises must be handled, the pure layers (model, scheduler) must not
// reach for I/O, drivers or the store, and every folder of src/ imports only the folders the
// layer map below allows (so folders never form an import cycle). The dashboard (ui/src) is
// linted with its own tsconfig (DOM, bundler resolution) and React's hook rules.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';
import reactHooks from 'eslint-plugin-react-hooks';
import importX from 'eslint-plugin-import-x';
import { createTypeScriptImportResolver } from 'eslint-import-resolver-typescript';

/**
 * The layer map: which other folders of src/ each folder may import (its own files and model/
 * always). Lower layers first; a folder names only folders above it in this list, which is
 * checked below, so the map itself cannot hold a cycle. Adding an import across folders means
 * adding it here, where a reviewer sees the architecture change.
 */
const LAYERS = {
  model: [],
  // Child processes, pids, the file lock: the one runner every effectful layer uses.
  proc: [],
  // Exec sessions: the frame protocol, the pty or pipe process, the WebSocket ends (every hop).
  exec: [],
  // The cluster keyring (key-encryption keys outside the store) and what it seals.
  keyring: [],
  scheduler: [],
  store: ['proc'],
  runtime: ['proc', 'exec'],
  network: ['proc'],
  // Host storage: volumes on loop devices, secret files on a tmpfs.
  storage: ['network', 'proc'],
  usage: ['store'],
  image: ['runtime', 'proc'],
  vm: ['runtime', 'proc'],
  guest: ['runtime', 'proc', 'exec'],
  // Only audit's test fixtures use sim's seeded PRNG.
  sim: ['scheduler'],
  audit: ['store', 'sim', 'keyring'],
  auth: ['store'],
  pki: ['store', 'keyring'],
  core: ['store', 'scheduler', 'usage', 'audit', 'auth', 'pki', 'keyring'],
  metrics: ['core'],
  // The one reconcile-loop runtime, shared by the control plane and the host agent.
  reconcile: ['store', 'metrics'],
  control: ['store', 'scheduler', 'audit', 'core', 'metrics', 'reconcile'],
  agentapi: ['store', 'runtime', 'pki', 'core', 'exec', 'keyring'],
  agent: ['store', 'runtime', 'network', 'storage', 'usage', 'image', 'vm', 'guest', 'core', 'metrics', 'reconcile', 'proc', 'exec'],
  api: ['store', 'runtime', 'usage', 'audit', 'auth', 'pki', 'core', 'metrics', 'exec'],
  server: ['store', 'runtime', 'audit', 'auth', 'pki', 'core', 'metrics', 'control', 'agentapi', 'agent', 'api', 'exec', 'keyring'],
  allinone: ['store', 'vm', 'core', 'agent', 'server', 'keyring'],
  cli: ['runtime', 'pki', 'server', 'allinone', 'exec'],
};

// Each folder may only depend on folders listed before it: the map is a layering, not a graph
// with cycles. Checked when the config loads, so a bad edit fails every lint run.
const order = Object.keys(LAYERS);
for (const [folder, deps] of Object.entries(LAYERS)) {
  for (const d of deps) {
    if (!(d in LAYERS)) throw new Error(`eslint layer map: ${folder} names unknown folder ${d}`);
    if (order.indexOf(d) >= order.indexOf(folder)) throw new Error(`eslint layer map: ${folder} may not depend on ${d}, which is not below it`);
  }
}

/** One no-restricted-paths zone per folder: everything under src/ except itself, model/ and its allowed folders. */
const layerZones = Object.entries(LAYERS).map(([folder, deps]) => ({
  target: `./src/${folder}`,
  from: './src',
  except: [...new Set([folder, 'model', ...deps])].map((d) => `./${d}`),
  message: `the layer map (eslint.config.js) lets src/${folder} import only ${['model', ...deps].join(', ')}.`,
}));

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', '**/*.mjs', 'eslint.config.js'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: {
      parserOptions: { project: './tsconfig.eslint.json', tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
    },
  },
  {
    // The layer map, for product code. Tests are left out: nothing imports a test, so a test
    // importing a higher layer (a scheduler test drawing inputs from sim/) closes no cycle.
    files: ['src/**/*.ts'],
    ignores: ['**/*.test.ts'],
    plugins: { 'import-x': importX },
    settings: { 'import-x/resolver-next': [createTypeScriptImportResolver({ project: './tsconfig.eslint.json' })] },
    rules: { 'import-x/no-restricted-paths': ['error', { basePath: import.meta.dirname, zones: layerZones }] },
  },
  {
    // Tests poke at untyped JSON responses; `any` there is a convenience, not a hole in the product.
    files: ['**/*.test.ts', 'test/**/*.ts'],
    rules: { '@typescript-eslint/no-explicit-any': 'off', '@typescript-eslint/no-non-null-assertion': 'off' },
  },
  {
    files: ['src/model/**/*.ts', 'src/scheduler/**/*.ts'],
    ignores: ['**/*.test.ts'],
    rules: {
      'no-restricted-imports': ['error', {
        patterns: [
          { group: ['node:*', 'fs', 'child_process', 'net', 'http', 'os', 'path'], message: 'model/ and scheduler/ are pure: no I/O.' },
          { group: ['**/store/**', '**/runtime/**', '**/agent/**', '**/api/**', '**/image/**', '**/control/**'], message: 'model/ and scheduler/ may not depend on effectful layers.' },
        ],
      }],
    },
  },
  {
    // The dashboard: a browser app type-checked against ui/tsconfig.json.
    files: ['ui/src/**/*.ts', 'ui/src/**/*.tsx'],
    languageOptions: {
      parserOptions: { project: './ui/tsconfig.json', tsconfigRootDir: import.meta.dirname },
    },
    plugins: { 'react-hooks': reactHooks },
    rules: { ...reactHooks.configs.flat['recommended-latest'].rules, 'react-hooks/exhaustive-deps': 'error' },
  },
);
