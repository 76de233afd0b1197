import { Hono } from 'hono';
import { notFound } from '../errors/gateway-error.js';
import type { KeyAdmin } from '../keys/key-admin.js';
import type { KeyStore } from '../keys/store.js';
import { type AdminEnv, rootOnly } from './admin-auth.js';
import { pageQuery, teamName, teamSchema } from './schemas.js';
import { jsonBody, parse } from './validation.js';

/** `/admin/teams` and `/admin/audit`: root admin only. */
export function teamRoutes(deps: { admin: KeyAdmin; store: KeyStore }): Hono<AdminEnv> {
  const app = new Hono<AdminEnv>();
  app.use('*', rootOnly);

  app.put('/teams/:team', async (c) => {
    const name = parse(teamName, c.req.param('team'));
    const input = await jsonBody(c, teamSchema);
    return c.json(await deps.admin.setTeam(c.var.actor, name, input));
  });

  app.get('/teams', async (c) => c.json({ data: await deps.store.listTeams() }));

  app.get('/teams/:team', async (c) => {
    const team = await deps.store.getTeam(c.req.param('team'));
    if (!team) throw notFound(`No team '${c.req.param('team').slice(0, 128)}'.`);
    return c.json(team);
  });

  app.get('/audit', async (c) => {
    const q = parse(pageQuery, c.req.query());
    return c.json(await deps.store.listAudit(q));
  });

  return app;
}
