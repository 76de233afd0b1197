import type { MiddlewareHandler } from 'hono';
import type { KeyService } from '../keys/key-service.js';
import type { AppEnv } from '../server/env.js';

/** The credential a client presented: `Authorization: Bearer <key>` or Azure's `api-key: <key>`. */
export function presentedKey(
  authorization: string | undefined,
  apiKey: string | undefined,
): string | undefined {
  if (authorization !== undefined) {
    const m = /^Bearer\s+(.+)$/i.exec(authorization.trim());
    if (m) return m[1]!.trim();
  }
  return apiKey?.trim() || undefined;
}

/** Authenticates a client key and puts its principal on the context. */
export function clientAuth(keys: KeyService): MiddlewareHandler<AppEnv> {
  return async function clientAuthMiddleware(c, next) {
    const principal = await keys.authenticate(
      presentedKey(c.req.header('authorization'), c.req.header('api-key')),
    );
    c.set('principal', principal);
    await next();
  };
}
