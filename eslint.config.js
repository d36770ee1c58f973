// Lint the boundaries: promises must be handled, and the pure layers (model, scheduler)
// must not reach for I/O, drivers or the store.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'ui/**', '**/*.mjs', 'eslint.config.js'] },
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
);
