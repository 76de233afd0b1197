import type { MiddlewareHandler } from 'hono';
import { presentedKey } from '../auth/client-auth.js';
import { safeEqual } from '../auth/key-format.js';
import { GatewayError } from '../errors/gateway-error.js';
import type { Actor } from '../keys/key-admin.js';
import type { KeyService } from '../keys/key-service.js';

export type AdminEnv = { Variables: { actor: Actor; requestId: string } };

/**
 * Admin authentication: the root admin key (compared in constant time) or a team-admin key.
 * Without a configured admin key the whole admin API does not exist (404).
 */
export function adminAuth(opts: {
  rootKey: string | undefined;
  keys: KeyService;
}): MiddlewareHandler<AdminEnv> {
  const root = opts.rootKey || undefined;
  return async function adminAuthMiddleware(c, next) {
    if (root === undefined) throw new GatewayError('not_found', 'Not found.');
    const presented = presentedKey(c.req.header('authorization'), c.req.header('api-key'));
    if (presented === undefined) {
      throw new GatewayError('invalid_api_key', 'The admin API needs "Authorization: Bearer <admin key>".');
    }
    if (safeEqual(presented, root)) {
      c.set('actor', { kind: 'root' });
      return next();
    }
    const { key } = await opts.keys.authenticate(presented);
    if (key.role !== 'team-admin') throw new GatewayError('forbidden', 'This key may not use the admin API.');
    c.set('actor', { kind: 'team-admin', key });
    return next();
  };
}

/** Routes only the root admin may use (teams, audit). */
export const rootOnly: MiddlewareHandler<AdminEnv> = async function rootOnly(c, next) {
  if (c.var.actor.kind !== 'root')
    throw new GatewayError('forbidden', 'Only the root admin key may use this route.');
  return next();
};
