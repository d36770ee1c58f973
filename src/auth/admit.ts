/**
 * The one call the HTTP edge makes per request: read the bearer header, authenticate, and
 * authorise against the matched RouteDef. Framework-free so the fastify hook stays three
 * lines and tests need no server.
 */
import { authorize, requestFor, type AuthzRequest, type Decision, type Principal } from './rbac.js';
import { bearerFromHeader } from './tokens.js';

/** Anything that turns a token into a principal: a TokenCache, or `{authenticate: (t) => authenticate(store, t)}`. */
export interface Authenticator {
  authenticate(bearer: string | undefined): Promise<Principal | undefined>;
}

/** The outcome of {@link admit}: who called (when known) and the decision. */
export interface Admission {
  principal?: Principal;
  decision: Decision;
}

/**
 * Authenticates the `Authorization` header and authorises the request for `route`. A header
 * that is present but not a valid bearer token counts as no token (401). Call it from an
 * onRequest/preHandler hook after routing (fastify: `req.routeOptions.config` carries the
 * RouteDef).
 */
export async function admit(
  auth: Authenticator,
  route: AuthzRequest['route'],
  authorization: string | undefined,
  params: { tenant?: string; name?: string } = {},
  query: Record<string, unknown> = {},
): Promise<Admission> {
  const principal = await auth.authenticate(bearerFromHeader(authorization));
  const decision = authorize(principal, requestFor(route, params, query));
  return principal !== undefined ? { principal, decision } : { decision };
}
