import { Hono } from 'hono';
import type { KeyAdmin } from '../keys/key-admin.js';
import { type KeyRecord, publicKey } from '../keys/types.js';
import type { AdminEnv } from './admin-auth.js';
import { createKeySchema, pageQuery, rotateSchema, updateKeySchema } from './schemas.js';
import { jsonBody, parse } from './validation.js';

export interface KeyRoutesDeps {
  admin: KeyAdmin;
  /** Current-period spend and remaining limits of a key, for the detail view. */
  status?: (key: KeyRecord) => Promise<Record<string, unknown>>;
  /** Called after a key is revoked (metrics drop its series). */
  onRevoked?: (key: { name: string; team: string | null }) => void;
}

/** `/admin/keys`: create, list, show, update, rotate, revoke. */
export function keyRoutes(deps: KeyRoutesDeps): Hono<AdminEnv> {
  const app = new Hono<AdminEnv>();

  app.post('/', async (c) => {
    const input = await jsonBody(c, createKeySchema);
    const { record, secret } = await deps.admin.create(c.var.actor, input);
    return c.json({ ...publicKey(record), key: secret }, 201);
  });

  app.get('/', async (c) => {
    const q = parse(pageQuery, c.req.query());
    const page = await deps.admin.list(c.var.actor, q);
    return c.json({ data: page.data.map(publicKey), nextCursor: page.nextCursor });
  });

  app.get('/:id', async (c) => {
    const key = await deps.admin.visible(c.var.actor, c.req.param('id'));
    const status = deps.status ? await deps.status(key) : {};
    // The key's own fields are the contract: status details never overwrite them.
    return c.json({ ...status, ...publicKey(key) });
  });

  app.patch('/:id', async (c) => {
    const patch = await jsonBody(c, updateKeySchema);
    const key = await deps.admin.update(c.var.actor, c.req.param('id'), patch);
    return c.json(publicKey(key));
  });

  app.post('/:id/rotate', async (c) => {
    const { graceSeconds } = await jsonBody(c, rotateSchema);
    const { record, secret } = await deps.admin.rotate(c.var.actor, c.req.param('id'), graceSeconds);
    return c.json({ id: record.id, key: secret, prefix: record.prefix });
  });

  app.delete('/:id', async (c) => {
    const key = await deps.admin.visible(c.var.actor, c.req.param('id'));
    await deps.admin.revoke(c.var.actor, key.id);
    deps.onRevoked?.(key);
    return c.body(null, 204);
  });

  return app;
}
