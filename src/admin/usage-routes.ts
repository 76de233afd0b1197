import { Hono } from 'hono';
import { GatewayError, notFound } from '../errors/gateway-error.js';
import { daysBetween, queryUsage, toCsv, usageQuerySchema } from '../metering/usage-query.js';
import type { UsageStore } from '../metering/usage-store.js';
import type { AdminEnv } from './admin-auth.js';
import { parse } from './validation.js';

/** `GET /admin/usage`: aggregates by day, key, team and model, as JSON or CSV. */
export function usageRoutes(store: UsageStore): Hono<AdminEnv> {
  const app = new Hono<AdminEnv>();
  app.get('/', async (c) => {
    const q = parse(usageQuerySchema, c.req.query());
    const actor = c.var.actor;
    if (actor.kind === 'team-admin') {
      // A team admin sees its own team's usage only; another team does not exist for it.
      if (q.team !== undefined && q.team !== actor.key.team)
        throw notFound(`No team '${q.team.slice(0, 128)}'.`);
      q.team = actor.key.team ?? undefined;
    }
    const today = new Date().toISOString().slice(0, 10);
    const days = daysBetween(q.from ?? q.to ?? today, q.to ?? today);
    if (typeof days === 'string')
      throw new GatewayError('invalid_request_error', `Invalid range: ${days}.`, { param: 'from' });
    const rows = await queryUsage(store, days, q);
    if (q.format === 'csv') {
      return c.body(toCsv(rows, q.groupBy), 200, { 'content-type': 'text/csv; charset=utf-8' });
    }
    return c.json({ data: rows });
  });
  return app;
}
