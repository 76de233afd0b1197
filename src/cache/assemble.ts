// Converts between the two forms of one answer, so either can be served from the other:
// a completed stream's chunks become a chat.completion, and a chat.completion becomes chunks.

type Json = Record<string, unknown>;

interface ToolCallAcc {
  id?: string;
  type?: string;
  name: string;
  args: string;
}

interface ChoiceAcc {
  role: string;
  content: string | null;
  refusal: string | null;
  tools: ToolCallAcc[];
  finish: unknown;
}

/** Folds the data events of a stream into the chat.completion it amounts to. */
export class StreamAssembler {
  private readonly choices = new Map<number, ChoiceAcc>();
  private head: Json = {};
  private extra: Json = {};
  usage: unknown = null;
  /** False once an event could not be folded (the entry is then not cached). */
  ok = true;

  /** Feeds complete SSE text (one or more `data: ...\n\n` events). */
  push(text: string): void {
    for (const line of text.split('\n')) {
      if (!line.startsWith('data:')) continue;
      const data = line.slice(5).trim();
      if (data === '[DONE]' || data === '') continue;
      try {
        this.add(JSON.parse(data) as Json);
      } catch {
        this.ok = false;
      }
    }
  }

  private add(chunk: Json): void {
    if (chunk['usage']) this.usage = chunk['usage'];
    if (chunk['prompt_filter_results']) this.extra['prompt_filter_results'] = chunk['prompt_filter_results'];
    if (typeof chunk['id'] === 'string' && chunk['id'] !== '' && !this.head['id']) {
      this.head = {
        id: chunk['id'],
        created: chunk['created'],
        model: chunk['model'],
        service_tier: chunk['service_tier'],
        system_fingerprint: chunk['system_fingerprint'],
      };
    }
    for (const c of (chunk['choices'] as Json[] | undefined) ?? []) {
      const index = Number(c['index'] ?? 0);
      let acc = this.choices.get(index);
      if (!acc) {
        acc = { role: 'assistant', content: null, refusal: null, tools: [], finish: null };
        this.choices.set(index, acc);
      }
      const delta = (c['delta'] as Json | undefined) ?? {};
      if (typeof delta['role'] === 'string') acc.role = delta['role'];
      if (typeof delta['content'] === 'string') acc.content = (acc.content ?? '') + delta['content'];
      if (typeof delta['refusal'] === 'string') acc.refusal = (acc.refusal ?? '') + delta['refusal'];
      for (const t of (delta['tool_calls'] as Json[] | undefined) ?? []) {
        const i = Number(t['index'] ?? 0);
        let tc = acc.tools[i];
        if (!tc) {
          tc = { name: '', args: '' };
          acc.tools[i] = tc;
        }
        if (typeof t['id'] === 'string') tc.id = t['id'];
        if (typeof t['type'] === 'string') tc.type = t['type'];
        const fn = (t['function'] as Json | undefined) ?? {};
        if (typeof fn['name'] === 'string') tc.name += fn['name'];
        if (typeof fn['arguments'] === 'string') tc.args += fn['arguments'];
      }
      if (c['finish_reason'] !== null && c['finish_reason'] !== undefined) acc.finish = c['finish_reason'];
    }
  }

  /** The assembled chat.completion, as JSON text. */
  completion(): string {
    const choices = [...this.choices.entries()]
      .sort((a, b) => a[0] - b[0])
      .map(([index, c]) => {
        const message: Json = { role: c.role, content: c.content, refusal: c.refusal };
        if (c.tools.length) {
          message['tool_calls'] = c.tools.map((t) => ({
            id: t.id,
            type: t.type ?? 'function',
            function: { name: t.name, arguments: t.args },
          }));
        }
        return { index, message, logprobs: null, finish_reason: c.finish };
      });
    return JSON.stringify({
      ...this.head,
      object: 'chat.completion',
      choices,
      usage: this.usage,
      ...this.extra,
    });
  }
}

/** Replays a chat.completion as SSE: role, content (or tool calls), finish, usage if asked, [DONE]. */
export function completionToSse(completionJson: string, includeUsage: boolean): string {
  const c = JSON.parse(completionJson) as Json;
  const base = {
    id: c['id'],
    object: 'chat.completion.chunk',
    created: c['created'],
    model: c['model'],
    ...(c['service_tier'] !== undefined && { service_tier: c['service_tier'] }),
    system_fingerprint: c['system_fingerprint'] ?? null,
  };
  const usageField = includeUsage ? { usage: null } : {};
  const events: string[] = [];
  const emit = (chunk: Json): void => {
    events.push(`data: ${JSON.stringify(chunk)}\n\n`);
  };
  const choices = (c['choices'] as Json[] | undefined) ?? [];
  emit({
    ...base,
    choices: choices.map((ch) => ({
      index: ch['index'],
      delta: { role: 'assistant', content: '' },
      logprobs: null,
      finish_reason: null,
    })),
    ...usageField,
  });
  const body = choices.map((ch) => {
    const m = (ch['message'] as Json | undefined) ?? {};
    const delta: Json = {};
    if (typeof m['content'] === 'string' && m['content'] !== '') delta['content'] = m['content'];
    if (typeof m['refusal'] === 'string') delta['refusal'] = m['refusal'];
    const tools = m['tool_calls'] as Json[] | undefined;
    if (tools?.length) delta['tool_calls'] = tools.map((t, index) => ({ index, ...t }));
    return { index: ch['index'], delta, logprobs: null, finish_reason: null };
  });
  if (body.some((b) => Object.keys(b.delta).length > 0)) emit({ ...base, choices: body, ...usageField });
  emit({
    ...base,
    choices: choices.map((ch) => ({
      index: ch['index'],
      delta: {},
      logprobs: null,
      finish_reason: ch['finish_reason'] ?? 'stop',
    })),
    ...usageField,
  });
  if (includeUsage && c['usage']) emit({ ...base, choices: [], usage: c['usage'] });
  events.push('data: [DONE]\n\n');
  return events.join('');
}
