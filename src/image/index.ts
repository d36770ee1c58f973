/**
 * The image layer's public surface: the ImageStore contract and its skopeo/umoci
 * implementation. Test fixtures live in ./testing/ and are imported from there.
 */
export { ImagePullError, type EnsureOptions, type ImageStore, type PulledImage, type PullFailureReason, type PullProgress } from './image-store.js';
export { createImageStore, parseImageConfig, type ImageStoreOptions } from './local-store.js';
export { parseReference, isLoopbackRegistry, InvalidReferenceError, type ImageReference } from './reference.js';
