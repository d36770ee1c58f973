/**
 * The REST API of a running Carapace as the integration tests call it: JSON in and out, a
 * bearer token (the admin's unless another is given), any status other than 2xx thrown with
 * its body so a failed call says why.
 */
export interface ApiClient {
  api<T>(method: string, path: string, body?: unknown, token?: string): Promise<T>;
  /** Creates or replaces a tenant-scoped object (`PUT /v1/tenants/TENANT/KINDs/NAME`). */
  put(kind: string, name: string, spec: object, tenant?: string): Promise<unknown>;
}

/** `target` is read at each call: the server is usually started after the client is made (in beforeAll). */
export function apiClient(target: () => { url: string; adminToken: string }): ApiClient {
  async function api<T>(method: string, path: string, body?: unknown, token?: string): Promise<T> {
    const t = target();
    const r = await fetch(`${t.url}${path}`, {
      method,
      headers: { authorization: `Bearer ${token ?? t.adminToken}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    });
    const text = await r.text();
    if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${text}`);
    return (text ? JSON.parse(text) : undefined) as T; // `as`: the API's documented response shapes
  }
  const put = (kind: string, name: string, spec: object, tenant = 'acme'): Promise<unknown> =>
    api('PUT', `/v1/tenants/${tenant}/${kind.toLowerCase()}s/${name}`, { apiVersion: 'carapace/v1', kind, metadata: { name, tenant }, spec });
  return { api, put };
}
