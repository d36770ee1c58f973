/**
 * The name schema every object shares. Its own module so the kind files (volumes.ts) and
 * schemas.ts, which imports them, can both use it without an import cycle. Pure.
 */
import { z } from 'zod';

/** A DNS-label name: lower-case letters, digits and '-', at most 63 characters. */
export const NameSchema = z
  .string()
  .min(1, 'must not be empty')
  .max(63, 'must be at most 63 characters')
  .regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, "must be lower-case letters, digits and '-', starting and ending with a letter or digit");
