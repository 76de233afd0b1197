import { z } from 'zod';
import { budgetSchema, limitsSchema } from '../config/schema.js';

const name = z.string().trim().min(1).max(128);
const team = z
  .string()
  .trim()
  .min(1)
  .max(128)
  .regex(/^[\w.@-]+$/, 'letters, digits, _ . @ - only');
const isoDate = z.iso.datetime({ offset: true });
const metadata = z.record(z.string(), z.unknown());

export const createKeySchema = z
  .object({
    name,
    team: team.nullable().optional(),
    role: z.enum(['member', 'team-admin']).optional(),
    limits: limitsSchema.optional(),
    budget: budgetSchema.nullable().optional(),
    models: z.array(z.string().min(1)).nullable().optional(),
    expiresAt: isoDate.nullable().optional(),
    metadata: metadata.optional(),
  })
  .strict();

export const updateKeySchema = z
  .object({
    name: name.optional(),
    team: team.nullable().optional(),
    limits: limitsSchema.optional(),
    budget: budgetSchema.nullable().optional(),
    models: z.array(z.string().min(1)).nullable().optional(),
    expiresAt: isoDate.nullable().optional(),
    disabled: z.boolean().optional(),
    metadata: metadata.optional(),
  })
  .strict();

export const rotateSchema = z
  .object({
    graceSeconds: z
      .number()
      .int()
      .min(0)
      .max(30 * 86400)
      .default(0),
  })
  .strict();

export const teamSchema = z
  .object({ limits: limitsSchema.optional(), budget: budgetSchema.nullable().optional() })
  .strict();

export const teamName = team;

export const pageQuery = z.object({
  limit: z.coerce.number().int().min(1).max(1000).default(100),
  cursor: z.string().min(1).optional(),
  team: team.optional(),
});
