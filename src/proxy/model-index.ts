import type { ModelConfig } from '../config/schema.js';
import { GatewayError } from '../errors/gateway-error.js';
import type { KeyRecord } from '../keys/types.js';

/** Resolves model ids and aliases (and Azure deployment names, which resolve the same way). */
export class ModelIndex {
  private readonly byName = new Map<string, ModelConfig>();

  constructor(readonly models: ModelConfig[]) {
    for (const m of models) for (const n of [m.id, ...m.aliases]) this.byName.set(n, m);
  }

  /** The model a key asked for, or a 404/403 in OpenAI's words. */
  resolveFor(name: string, key: KeyRecord): ModelConfig {
    const model = this.byName.get(name);
    if (!model) {
      throw new GatewayError(
        'model_not_found',
        `The model \`${name.slice(0, 200)}\` does not exist or you do not have access to it.`,
        { param: 'model' },
      );
    }
    if (!allowed(key, model)) {
      throw new GatewayError(
        'model_not_allowed',
        `This API key is not allowed to use the model \`${model.id}\`.`,
        {
          param: 'model',
        },
      );
    }
    return model;
  }

  visibleTo(key: KeyRecord): ModelConfig[] {
    return this.models.filter((m) => allowed(key, m));
  }
}

/** A key's allow-list names model ids or aliases; absent means every model. */
export function allowed(key: KeyRecord, model: ModelConfig): boolean {
  return key.models === null || key.models.some((n) => n === model.id || model.aliases.includes(n));
}
