/**
 * Fixtures for integration tests, benchmarks and the quick-start script: a real local
 * registry and small busybox-based images. Import from here; never from production code.
 */
export { startRegistry, freePort, type RunningRegistry, type StartRegistryOptions } from './registry.js';
export { buildBusyboxImage, type BusyboxImageOptions, type BuiltImage, type ImageFile } from './busybox-image.js';
export { buildExampleImages, EXAMPLE_REPOSITORIES, type ExampleImages } from './example-images.js';
