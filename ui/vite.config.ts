// Builds the dashboard into dist/ui, served by the API server at /ui. Everything is bundled
// (no CDN); no inline scripts (the server's CSP forbids them). JSX is compiled by Vite's
// esbuild; no React plugin is needed for a production build.
import { defineConfig } from 'vite';
import { fileURLToPath } from 'node:url';

const here = fileURLToPath(new URL('.', import.meta.url));

export default defineConfig({
  root: here,
  base: '/ui/',
  publicDir: 'public',
  esbuild: { jsx: 'automatic' },
  build: {
    outDir: fileURLToPath(new URL('../dist/ui', import.meta.url)),
    emptyOutDir: true,
    target: 'es2022',
    sourcemap: true,
    // The yaml parser is most of the bundle; keep one chunk: the dashboard is one page.
    chunkSizeWarningLimit: 600,
    modulePreload: { polyfill: false },
  },
  server: {
    // `npx vite --config ui/vite.config.ts` proxies the API of a local `carapace up`.
    proxy: { '/v1': 'http://127.0.0.1:7070' },
  },
});
