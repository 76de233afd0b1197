import { Hono } from 'hono';
import { GatewayError } from '../errors/gateway-error.js';
import type { AppEnv } from '../server/env.js';
import type { ModelIndex } from './model-index.js';

// A fixed creation time: the API requires one, and a constant keeps answers cacheable.
const CREATED = 1744588800;

/** `GET /v1/models` and `GET /v1/models/{id}`: only what the key may use. */
export function modelRoutes(models: ModelIndex): Hono<AppEnv> {
  const app = new Hono<AppEnv>();
  const entry = (id: string) => ({ id, object: 'model', created: CREATED, owned_by: 'tollgate' });

  app.get('/', (c) => {
    const data = models.visibleTo(c.var.principal.key).flatMap((m) => [m.id, ...m.aliases].map(entry));
    return c.json({ object: 'list', data });
  });

  app.get('/:id{.+}', (c) => {
    const id = c.req.param('id');
    const m = models.visibleTo(c.var.principal.key).find((x) => x.id === id || x.aliases.includes(id));
    if (!m)
      throw new GatewayError('model_not_found', `The model '${id.slice(0, 200)}' does not exist`, {
        param: 'model',
      });
    return c.json(entry(id));
  });

  return app;
}
