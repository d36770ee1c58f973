/**
 * Fixtures for integration tests, benchmarks and the quick-start script: a real local
 * registry and small busybox-based images. Import from here; never from production code.
 */
export { startRegistry, freePort, type RunningRegistry, type StartRegistryOptions } from './registry.js';
export { buildBusyboxImage, busyboxBaseLayer, type BusyboxImageOptions, type BuiltImage, type ImageFile } from './busybox-image.js';
export { buildExampleImages, EXAMPLE_REPOSITORIES, type ExampleImages } from './example-images.js';
export { buildImage, type ImageBuild, type LayerBuild } from './oci-build.js';
export { buildDebianImage, packageFiles, sharedLibraryClosure, type DebianImageOptions, type ImageUser, type ImageDir, type PackageSelection } from './debian-image.js';
export {
  buildDebianImages, buildPostgresImage, buildFioImage, DEBIAN_REPOSITORIES, POSTGRES_UID, POSTGRES_VOLUME, POSTGRES_PGDATA, POSTGRES_PASSWORD_FILE,
  type DebianImages,
} from './debian-images.js';
export { buildGuestbookImages, buildGuestbookApiImage, buildGuestbookWebImage, GUESTBOOK_REPOSITORIES, type GuestbookImages } from './guestbook-images.js';
