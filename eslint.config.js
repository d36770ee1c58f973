// Lint the boundaries: promises must be handled, and the pure layers (model, scheduler)
// must not reach for I/O, drivers or the store. The dashboard (ui/src) is linted with its own
// tsconfig (DOM, bundler resolution) and React's hook rules.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';
import reactHooks from 'eslint-plugin-react-hooks';

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
