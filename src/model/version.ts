/**
 * Which Carapace this is: the release (`package.json`'s version, kept equal by version.test.ts)
 * and the API version it serves. The server answers them at `GET /v1/version`, hosts report
 * theirs in `status.agentVersion`, and `carapace version` prints both sides.
 */
import { API_VERSION } from './schemas.js';

/** The release, as in package.json; a constant because model/ reads no files. */
export const CARAPACE_VERSION = '0.1.0';

/** What `GET /v1/version` answers. */
export interface VersionInfo {
  /** The server's release, e.g. `0.1.0`. */
  version: string;
  /** The manifest and API version it serves, e.g. `carapace/v1`. */
  apiVersion: string;
}

/** This build's version info (the server's answer, the CLI's own side). */
export function versionInfo(): VersionInfo {
  return { version: CARAPACE_VERSION, apiVersion: API_VERSION };
}
