import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { generateKey } from '../../src/auth/key-format.js';
import {
  AdminClient,
  ApiError,
  apiErrorFrom,
  buildUrl,
  resolveAdminTarget,
} from '../../src/cli/admin-client.js';
import { auditQuery } from '../../src/cli/audit.js';
import { type CliIO, commandHelp, parseCommandArgs, UsageError } from '../../src/cli/command.js';
import {
  csvField,
  formatCsv,
  formatRecord,
  formatTable,
  formatUsageTable,
  renderRows,
  usageColumns,
} from '../../src/cli/format.js';
import { keyColumns, keyCreateBody, keyRotateBody, keyUpdateBody } from '../../src/cli/keys.js';
import { allCommands, run, topHelp } from '../../src/cli/run.js';
import { TEAM_COLUMNS, teamSetBody } from '../../src/cli/teams.js';
import { usageQuery } from '../../src/cli/usage.js';

// ---------------------------------------------------------------------------------------------
// Helpers

interface Captured {
  io: Partial<CliIO>;
  out: string[];
  err: string[];
  stdout(): string;
  stderr(): string;
}

const NOW = new Date('2026-03-15T10:20:30Z');

function capture(env: Record<string, string | undefined> = {}, stdin = ''): Captured {
  const out: string[] = [];
  const err: string[] = [];
  return {
    io: {
      out: (t) => out.push(t),
      err: (t) => err.push(t),
      env: { ...env },
      now: () => NOW,
      readStdin: async () => stdin,
    },
    out,
    err,
    stdout: () => out.join('\n'),
    stderr: () => err.join('\n'),
  };
}

async function cli(argv: string[], env: Record<string, string | undefined> = {}, stdin = '') {
  const c = capture(env, stdin);
  const code = await run(argv, c.io);
  return { code, stdout: c.stdout(), stderr: c.stderr() };
}

interface Seen {
  method: string;
  path: string;
  query: URLSearchParams;
  headers: IncomingHttpHeaders;
  body: string;
  json: unknown;
}

interface Reply {
  status?: number;
  json?: unknown;
  text?: string;
  headers?: Record<string, string>;
}

interface MockServer {
  url: string;
  seen: Seen[];
  close(): Promise<void>;
}

const servers: MockServer[] = [];
afterAll(async () => {
  await Promise.all(servers.map((s) => s.close()));
});

/** A tiny admin API stand-in that records every request and answers through `handler`. */
async function mockServer(handler: (req: Seen) => Reply): Promise<MockServer> {
  const seen: Seen[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      const url = new URL(req.url ?? '/', 'http://x');
      let json: unknown;
      try {
        json = body ? JSON.parse(body) : undefined;
      } catch {
        json = undefined;
      }
      const s: Seen = {
        method: req.method ?? '',
        path: url.pathname,
        query: url.searchParams,
        headers: req.headers,
        body,
        json,
      };
      seen.push(s);
      const reply = handler(s);
      const status = reply.status ?? 200;
      if (reply.json !== undefined) {
        res.writeHead(status, { 'content-type': 'application/json', ...reply.headers });
        res.end(JSON.stringify(reply.json));
      } else {
        res.writeHead(status, { 'content-type': 'text/plain', ...reply.headers });
        res.end(reply.text ?? '');
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  const mock: MockServer = {
    url: `http://127.0.0.1:${port}`,
    seen,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
  servers.push(mock);
  return mock;
}

const ADMIN = 'admin-secret-for-tests';
const envFor = (srv: MockServer): Record<string, string> => ({ TOLLGATE_URL: srv.url, ADMIN_API_KEY: ADMIN });

const envelope = (message: string, code: string | null, type = 'invalid_request_error') => ({
  error: { message, type, param: null, code },
});

const KEY = {
  id: 'key_abc',
  name: 'ci-bot',
  team: 'platform',
  role: 'member',
  prefix: 'sk-tg-AbCdEf',
  limits: { rpm: 60, tpm: null },
  budget: { usd: 25, period: 'month' },
  models: null,
  expiresAt: null,
  createdAt: '2026-03-01T00:00:00.000Z',
  disabled: false,
  metadata: { owner: 'alice' },
};

// ---------------------------------------------------------------------------------------------

describe('keys create: arguments to body', () => {
  it('maps every option', () => {
    const body = keyCreateBody({
      name: 'ci-bot',
      team: 'platform',
      role: 'member',
      rpm: '60',
      tpm: 'unlimited',
      'max-concurrent': '0',
      'budget-usd': '25.50',
      'budget-period': 'month',
      models: 'gpt-4.1-mini, gpt-4.1-mini-2025-04-14',
      'expires-at': '2026-12-31',
      metadata: '{"owner":"alice","n":1}',
    });
    expect(body).toEqual({
      name: 'ci-bot',
      team: 'platform',
      role: 'member',
      limits: { rpm: 60, tpm: null, maxConcurrent: 0 },
      budget: { usd: 25.5, period: 'month' },
      models: ['gpt-4.1-mini', 'gpt-4.1-mini-2025-04-14'],
      expiresAt: '2026-12-31T00:00:00.000Z',
      metadata: { owner: 'alice', n: 1 },
    });
  });

  it('sends only what was given', () => {
    expect(keyCreateBody({ name: 'x' })).toEqual({ name: 'x' });
    expect(keyCreateBody({ name: 'x', models: '' })).toEqual({ name: 'x', models: [] });
    expect(keyCreateBody({ name: 'x', rpm: 'null' })).toEqual({ name: 'x', limits: { rpm: null } });
  });

  it('refuses bad input with usage errors', () => {
    const bad: Record<string, string>[] = [
      {},
      { name: '' },
      { name: 'x', rpm: '-1' },
      { name: 'x', rpm: '1.5' },
      { name: 'x', tpm: 'lots' },
      { name: 'x', role: 'owner' },
      { name: 'x', role: 'team-admin' },
      { name: 'x', 'budget-usd': '10' },
      { name: 'x', 'budget-period': 'day' },
      { name: 'x', 'budget-usd': 'ten', 'budget-period': 'day' },
      { name: 'x', 'budget-usd': '10', 'budget-period': 'week' },
      { name: 'x', 'expires-at': 'tomorrow' },
      { name: 'x', metadata: '[1,2]' },
      { name: 'x', metadata: '{oops' },
    ];
    for (const values of bad) expect(() => keyCreateBody(values), JSON.stringify(values)).toThrow(UsageError);
  });

  it('names the flag in the error', () => {
    expect(() => keyCreateBody({ name: 'x', rpm: 'abc' })).toThrow(
      /--rpm must be a non-negative integer or 'unlimited'/,
    );
    expect(() => keyCreateBody({ name: 'x', 'budget-usd': '5' })).toThrow(
      /--budget-usd needs --budget-period/,
    );
  });
});

describe('keys update: arguments to body', () => {
  it('maps limits, unlimited and null to null', () => {
    expect(keyUpdateBody({ rpm: '120', tpm: 'unlimited', 'max-concurrent': 'null' })).toEqual({
      limits: { rpm: 120, tpm: null, maxConcurrent: null },
    });
  });

  it('maps the other fields', () => {
    expect(
      keyUpdateBody({
        name: 'renamed',
        team: 'data',
        'budget-usd': '5',
        'budget-period': 'day',
        models: 'gpt-4.1-mini',
        'expires-at': '2027-01-01T12:00:00Z',
        disable: true,
        metadata: '{"a":1}',
      }),
    ).toEqual({
      name: 'renamed',
      team: 'data',
      budget: { usd: 5, period: 'day' },
      models: ['gpt-4.1-mini'],
      expiresAt: '2027-01-01T12:00:00.000Z',
      disabled: true,
      metadata: { a: 1 },
    });
  });

  it('clears with none / never / empty / --all-models, enables', () => {
    expect(
      keyUpdateBody({
        'budget-usd': 'none',
        'expires-at': 'never',
        team: '',
        'all-models': true,
        enable: true,
      }),
    ).toEqual({
      budget: null,
      expiresAt: null,
      team: null,
      models: null,
      disabled: false,
    });
  });

  it('refuses contradictions and empty updates', () => {
    expect(() => keyUpdateBody({})).toThrow(/nothing to update/);
    expect(() => keyUpdateBody({ disable: true, enable: true })).toThrow(UsageError);
    expect(() => keyUpdateBody({ models: 'a', 'all-models': true })).toThrow(UsageError);
    expect(() => keyUpdateBody({ 'budget-usd': 'none', 'budget-period': 'day' })).toThrow(UsageError);
    expect(() => keyUpdateBody({ name: '' })).toThrow(UsageError);
  });

  it('rotate body', () => {
    expect(keyRotateBody({})).toEqual({});
    expect(keyRotateBody({ 'grace-seconds': '300' })).toEqual({ graceSeconds: 300 });
    expect(() => keyRotateBody({ 'grace-seconds': '-5' })).toThrow(UsageError);
  });
});

describe('teams set: arguments to body', () => {
  it('maps limits and budget', () => {
    expect(
      teamSetBody({
        rpm: '1200',
        tpm: '2000000',
        'max-concurrent': 'unlimited',
        'budget-usd': '500',
        'budget-period': 'total',
      }),
    ).toEqual({
      limits: { rpm: 1200, tpm: 2000000, maxConcurrent: null },
      budget: { usd: 500, period: 'total' },
    });
    expect(teamSetBody({ 'budget-usd': 'none' })).toEqual({ budget: null });
    expect(teamSetBody({ rpm: '0' })).toEqual({ limits: { rpm: 0 } });
  });

  it('needs at least one setting', () => {
    expect(() => teamSetBody({})).toThrow(/nothing to set/);
  });
});

describe('usage and audit queries', () => {
  it('defaults from and to to today (UTC)', () => {
    expect(usageQuery({}, NOW)).toEqual({
      from: '2026-03-15',
      to: '2026-03-15',
      groupBy: undefined,
      key: undefined,
      team: undefined,
      model: undefined,
      format: 'json',
    });
  });

  it('maps filters, group-by and csv', () => {
    expect(
      usageQuery(
        {
          from: '2026-03-01',
          to: '2026-03-10',
          'group-by': 'day, team,model,team',
          key: 'key_1',
          team: 't',
          model: 'm',
        },
        NOW,
        'csv',
      ),
    ).toEqual({
      from: '2026-03-01',
      to: '2026-03-10',
      groupBy: 'day,team,model',
      key: 'key_1',
      team: 't',
      model: 'm',
      format: 'csv',
    });
    expect(usageQuery({ from: '2026-03-01' }, NOW)['to']).toBe('2026-03-15');
  });

  it('refuses bad days and dimensions', () => {
    expect(() => usageQuery({ from: '2026-02-30' }, NOW)).toThrow(/--from must be a day/);
    expect(() => usageQuery({ to: '15/03/2026' }, NOW)).toThrow(UsageError);
    expect(() => usageQuery({ from: '2026-03-10', to: '2026-03-01' }, NOW)).toThrow(/after/);
    expect(() => usageQuery({ 'group-by': 'day,week' }, NOW)).toThrow(/week/);
  });

  it('audit query', () => {
    expect(auditQuery({ limit: '20' })).toEqual({ limit: 20, cursor: undefined });
    expect(() => auditQuery({ limit: '0' })).toThrow(UsageError);
  });
});

describe('formatting', () => {
  it('aligns table columns, numbers to the right, no trailing blanks', () => {
    const t = formatTable(
      ['NAME', 'RPM', 'TEAM'],
      [
        ['a', '5', ''],
        ['longer-name', '1200', 'platform'],
      ],
      ['left', 'right', 'left'],
    );
    expect(t.split('\n')).toEqual([
      'NAME          RPM  TEAM',
      'a               5',
      'longer-name  1200  platform',
    ]);
  });

  it('quotes CSV fields per RFC 4180', () => {
    expect(csvField('plain')).toBe('plain');
    expect(csvField('a,b')).toBe('"a,b"');
    expect(csvField('say "hi"')).toBe('"say ""hi"""');
    expect(csvField('two\nlines')).toBe('"two\nlines"');
    expect(csvField(null)).toBe('');
    expect(csvField(undefined)).toBe('');
    expect(csvField(0)).toBe('0');
    expect(csvField(['a', 'b'])).toBe('"[""a"",""b""]"');
    expect(formatCsv(['a', 'b'], [[1, 'x,y']])).toBe('a,b\n1,"x,y"\n');
  });

  it('renders key listings as table and CSV', () => {
    const rows = [
      KEY,
      {
        ...KEY,
        id: 'key_def',
        name: 'off',
        team: null,
        limits: {},
        budget: null,
        models: [],
        disabled: true,
      },
    ];
    const table = renderRows(rows, keyColumns(NOW), 'table').split('\n');
    expect(table[0]).toMatch(
      /^ID\s+NAME\s+TEAM\s+ROLE\s+PREFIX\s+RPM\s+TPM\s+CONC\s+BUDGET\s+MODELS\s+EXPIRES\s+STATUS$/,
    );
    expect(table[1]).toMatch(
      /key_abc\s+ci-bot\s+platform\s+member\s+sk-tg-AbCdEf\s+60\s+unlimited\s+default\s+\$25\/month\s+all\s+never\s+active/,
    );
    expect(table[2]).toMatch(
      /key_def\s+off\s+-\s+.*default\s+default\s+default\s+-\s+none\s+never\s+disabled/,
    );
    const csv = renderRows(rows, keyColumns(NOW), 'csv').split('\n');
    expect(csv[0]).toBe(
      'id,name,team,role,prefix,rpm,tpm,maxConcurrent,budgetUsd,budgetPeriod,models,expiresAt,disabled,createdAt,metadata',
    );
    expect(csv[1]).toBe(
      'key_abc,ci-bot,platform,member,sk-tg-AbCdEf,60,unlimited,,25,month,all,,false,2026-03-01T00:00:00.000Z,"{""owner"":""alice""}"',
    );
    expect(csv[2]).toContain('key_def,off,,member');
    expect(csv[2]).toContain(',[],');
  });

  it('renders team listings', () => {
    const rows = [
      { name: 'platform', limits: { rpm: 100 }, budget: { usd: 10, period: 'day' }, updatedAt: 't' },
    ];
    expect(renderRows(rows, TEAM_COLUMNS, 'table').split('\n')[1]).toMatch(
      /platform\s+100\s+unlimited\s+unlimited\s+\$10\/day\s+t/,
    );
    expect(renderRows(rows, TEAM_COLUMNS, 'csv')).toBe(
      'name,rpm,tpm,maxConcurrent,budgetUsd,budgetPeriod,updatedAt\nplatform,100,,,10,day,t\n',
    );
  });

  it('formats the usage table with USD decimals, right-aligned numbers and a TOTAL row', () => {
    const rows = [
      {
        day: '2026-03-14',
        team: 'platform',
        model: 'gpt-4.1-mini',
        requests: 10,
        cacheHits: 2,
        errors: 0,
        promptTokens: 1000,
        cachedTokens: 0,
        completionTokens: 500,
        costUsd: 0.0012,
        savedUsd: 0.0001,
      },
      {
        day: '2026-03-15',
        team: 'data',
        model: 'gpt-4.1-mini',
        requests: 5,
        cacheHits: 0,
        errors: 1,
        promptTokens: 200,
        cachedTokens: 100,
        completionTokens: 50,
        costUsd: 0.00012,
        savedUsd: 0,
      },
    ];
    expect(usageColumns(rows)).toEqual([
      'day',
      'team',
      'model',
      'requests',
      'cacheHits',
      'errors',
      'promptTokens',
      'cachedTokens',
      'completionTokens',
      'costUsd',
      'savedUsd',
    ]);
    const lines = formatUsageTable(rows).split('\n');
    expect(lines).toHaveLength(4);
    expect(lines[0]).toMatch(
      /^day\s+team\s+model\s+requests\s+cacheHits\s+errors\s+promptTokens\s+cachedTokens\s+completionTokens\s+costUsd\s+savedUsd$/,
    );
    expect(lines[1]).toMatch(/0\.001200\s+0\.000100$/);
    expect(lines[2]).toMatch(/0\.000120\s+0\.000000$/);
    expect(lines[3]).toMatch(/^TOTAL\s+15\s+2\s+1\s+1200\s+100\s+550\s+0\.001320\s+0\.000100$/);
    // Right alignment: every line ends at the same column.
    expect(new Set(lines.map((l) => l.length)).size).toBe(1);
    // `requests` is right-aligned under its header.
    const end = lines[0]!.indexOf('requests') + 'requests'.length;
    expect(lines[1]!.slice(end - 2, end)).toBe('10');
    expect(lines[2]!.slice(end - 1, end)).toBe('5');
  });

  it('puts TOTAL in a label column when there are no dimensions', () => {
    const lines = formatUsageTable([{ requests: 3, costUsd: 1 }]).split('\n');
    expect(lines[2]).toMatch(/^TOTAL\s+3\s+1\.000000$/);
  });

  it('formats a record with dotted paths and readable nulls', () => {
    const text = formatRecord({ ...KEY, spend: { day: 0.5 } });
    expect(text).toMatch(/^id\s+key_abc$/m);
    expect(text).toMatch(/^limits\.rpm\s+60$/m);
    expect(text).toMatch(/^limits\.tpm\s+unlimited$/m);
    expect(text).toMatch(/^budget\.usd\s+25$/m);
    expect(text).toMatch(/^models\s+all$/m);
    expect(text).toMatch(/^expiresAt\s+never$/m);
    expect(text).toMatch(/^metadata\s+\{"owner":"alice"\}$/m);
    expect(text).toMatch(/^spend\.day\s+0\.5$/m);
  });
});

describe('help', () => {
  it('tollgate --help, -h and help list every command', async () => {
    for (const argv of [['--help'], ['-h'], ['help']]) {
      const r = await cli(argv);
      expect(r.code).toBe(0);
      expect(r.stdout).toBe(topHelp());
      for (const c of allCommands()) expect(r.stdout).toContain(c.path.join(' '));
    }
  });

  it('no arguments prints the help to stderr with exit code 2', async () => {
    const r = await cli([]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('Usage: tollgate <command>');
  });

  it('every command prints its usage with all options', async () => {
    const commands = allCommands();
    expect(commands.map((c) => c.path.join(' ')).sort()).toEqual(
      [
        'audit',
        'config check',
        'keys create',
        'keys generate',
        'keys hash',
        'keys list',
        'keys revoke',
        'keys rotate',
        'keys show',
        'keys update',
        'serve',
        'teams list',
        'teams set',
        'teams show',
        'usage',
      ].sort(),
    );
    for (const c of commands) {
      for (const argv of [
        [...c.path, '--help'],
        [...c.path, '-h'],
        ['help', ...c.path],
      ]) {
        const r = await cli(argv);
        expect(r.code, argv.join(' ')).toBe(0);
        expect(r.stdout).toBe(commandHelp(c));
        expect(r.stdout).toContain(`Usage: tollgate ${c.path.join(' ')}`);
        for (const name of [...Object.keys(c.options), 'help'])
          expect(r.stdout, `${argv.join(' ')}: --${name}`).toContain(`--${name}`);
      }
    }
  });

  it('--help wins over missing or wrong arguments', async () => {
    expect((await cli(['keys', 'show', '--help'])).code).toBe(0);
    expect((await cli(['keys', 'create', '--bogus', '--help'])).code).toBe(0);
  });

  it('documents the options the brief names', async () => {
    const create = (await cli(['keys', 'create', '--help'])).stdout;
    for (const o of [
      '--name',
      '--team',
      '--role',
      '--rpm',
      '--tpm',
      '--max-concurrent',
      '--budget-usd',
      '--budget-period',
      '--models',
      '--expires-at',
      '--metadata',
      '--json',
      '--url',
      '--admin-key',
    ]) {
      expect(create).toContain(o);
    }
    const update = (await cli(['keys', 'update', '--help'])).stdout;
    for (const o of ['--disable', '--enable', '--all-models']) expect(update).toContain(o);
    const usage = (await cli(['usage', '--help'])).stdout;
    for (const o of ['--from', '--to', '--group-by', '--key', '--team', '--model', '--format'])
      expect(usage).toContain(o);
    expect((await cli(['serve', '--help'])).stdout).toContain('--config');
    expect((await cli(['keys', 'list', '--help'])).stdout).toContain('--all');
    expect((await cli(['audit', '--help'])).stdout).toContain('--limit');
  });

  it('groups print their subcommands', async () => {
    for (const [group, subs] of [
      ['keys', ['create', 'list', 'show', 'update', 'rotate', 'revoke', 'hash']],
      ['teams', ['set', 'list', 'show']],
      ['config', ['check']],
    ] as const) {
      const r = await cli([group, '--help']);
      expect(r.code).toBe(0);
      for (const s of subs) expect(r.stdout).toContain(`${group} ${s}`);
      expect((await cli(['help', group])).stdout).toBe(r.stdout);
      const bare = await cli([group]);
      expect(bare.code).toBe(2);
      expect(bare.stderr).toBe(r.stdout);
    }
  });
});

describe('usage errors exit 2', () => {
  it('unknown commands and options', async () => {
    let r = await cli(['frobnicate']);
    expect(r).toMatchObject({ code: 2 });
    expect(r.stderr).toContain("error: unknown command 'frobnicate'");
    r = await cli(['keys', 'frobnicate']);
    expect(r.code).toBe(2);
    r = await cli(['keys', 'list', '--bogus'], { ADMIN_API_KEY: 'x' });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("error: unknown option '--bogus'");
    expect(r.stderr).toContain("Run 'tollgate keys list --help'");
    r = await cli(['keys', 'create', '--name'], { ADMIN_API_KEY: 'x' });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("option '--name");
  });

  it('missing and extra positionals', async () => {
    let r = await cli(['keys', 'show'], { ADMIN_API_KEY: 'x' });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('missing <id>');
    r = await cli(['keys', 'show', 'a', 'b'], { ADMIN_API_KEY: 'x' });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("unexpected argument 'b'");
  });

  it('missing admin key', async () => {
    const r = await cli(['keys', 'list']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/error: no admin API key: set ADMIN_API_KEY/);
  });

  it('bad values and URLs', async () => {
    expect((await cli(['keys', 'create', '--name', 'x', '--rpm', 'many'], { ADMIN_API_KEY: 'x' })).code).toBe(
      2,
    );
    expect((await cli(['keys', 'list', '--format', 'xml'], { ADMIN_API_KEY: 'x' })).code).toBe(2);
    const r = await cli(['keys', 'list', '--url', 'ftp://host'], { ADMIN_API_KEY: 'x' });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('only http');
  });

  it('parseCommandArgs returns values and positionals', () => {
    const update = allCommands().find((c) => c.path.join(' ') === 'keys update')!;
    expect(parseCommandArgs(update, ['key_1', '--rpm=5', '--disable'])).toEqual({
      values: { rpm: '5', disable: true },
      positionals: ['key_1'],
    });
  });
});

describe('admin client', () => {
  it('resolves target from flags over environment, with a default URL', () => {
    expect(resolveAdminTarget({ ADMIN_API_KEY: 'k' }, {})).toEqual({
      baseUrl: 'http://127.0.0.1:8080',
      adminKey: 'k',
    });
    expect(
      resolveAdminTarget(
        { ADMIN_API_KEY: 'k', TOLLGATE_URL: 'http://a:1' },
        { url: 'http://b:2', 'admin-key': 'f' },
      ),
    ).toEqual({
      baseUrl: 'http://b:2',
      adminKey: 'f',
    });
    expect(() => resolveAdminTarget({}, {})).toThrow(UsageError);
  });

  it('builds URLs with path prefixes and skips empty query values', () => {
    expect(buildUrl('http://h:1/', '/admin/keys', { team: 'a b', limit: 5, cursor: undefined, x: '' })).toBe(
      'http://h:1/admin/keys?team=a+b&limit=5',
    );
    expect(buildUrl('https://h/tollgate/', '/admin/usage')).toBe('https://h/tollgate/admin/usage');
  });

  it('turns error envelopes into ApiError messages', () => {
    const e = apiErrorFrom(
      409,
      'Conflict',
      JSON.stringify(envelope("A key named 'x' already exists", 'conflict')),
    );
    expect(e).toBeInstanceOf(ApiError);
    expect(e.message).toBe("A key named 'x' already exists (conflict)");
    expect(e.exitCode).toBe(1);
    expect(apiErrorFrom(403, '', JSON.stringify(envelope('nope', null, 'permission_error'))).message).toBe(
      'nope (permission_error)',
    );
    expect(apiErrorFrom(502, 'Bad Gateway', '<html>oops</html>').message).toBe(
      'the gateway answered 502 Bad Gateway: <html>oops</html> (HTTP 502)',
    );
  });

  it('sends method, path, query, auth and JSON body', async () => {
    const srv = await mockServer(() => ({ status: 201, json: { ok: true } }));
    const client = new AdminClient({ baseUrl: srv.url, adminKey: ADMIN });
    const res = await client.json('POST', '/admin/keys', { query: { a: '1' }, body: { name: 'x' } });
    expect(res).toEqual({ ok: true });
    const s = srv.seen[0]!;
    expect(s.method).toBe('POST');
    expect(s.path).toBe('/admin/keys');
    expect(s.query.get('a')).toBe('1');
    expect(s.headers['authorization']).toBe(`Bearer ${ADMIN}`);
    expect(s.headers['content-type']).toBe('application/json');
    expect(s.json).toEqual({ name: 'x' });
  });

  it('keys create: POST /admin/keys, prints the secret once and the id', async () => {
    const secret = generateKey();
    const srv = await mockServer(() => ({ status: 201, json: { ...KEY, key: secret } }));
    const r = await cli(
      [
        'keys',
        'create',
        '--name',
        'ci-bot',
        '--team',
        'platform',
        '--rpm',
        '60',
        '--tpm',
        'unlimited',
        '--budget-usd',
        '25',
        '--budget-period',
        'month',
      ],
      envFor(srv),
    );
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`  ${secret}`);
    expect(r.stdout).toContain('shown once');
    expect(r.stdout).toContain('key_abc');
    const s = srv.seen[0]!;
    expect([s.method, s.path]).toEqual(['POST', '/admin/keys']);
    expect(s.headers['authorization']).toBe(`Bearer ${ADMIN}`);
    expect(s.json).toEqual({
      name: 'ci-bot',
      team: 'platform',
      limits: { rpm: 60, tpm: null },
      budget: { usd: 25, period: 'month' },
    });

    const j = await cli(['keys', 'create', '--name', 'ci-bot', '--json'], envFor(srv));
    expect(JSON.parse(j.stdout)).toEqual({ ...KEY, key: secret });
  });

  it('an error envelope exits 1 with message and code on stderr', async () => {
    const srv = await mockServer(() => ({
      status: 409,
      json: envelope("A key named 'x' already exists", 'conflict'),
    }));
    const r = await cli(['keys', 'create', '--name', 'x'], envFor(srv));
    expect(r.code).toBe(1);
    expect(r.stderr).toBe("error: A key named 'x' already exists (conflict)");
    expect(r.stdout).toBe('');
  });

  it('the --admin-key and --url flags are used', async () => {
    const srv = await mockServer(() => ({
      status: 401,
      json: envelope('Incorrect API key provided.', 'invalid_api_key'),
    }));
    const r = await cli(['keys', 'list', '--url', `${srv.url}/`, '--admin-key', 'wrong']);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe('error: Incorrect API key provided. (invalid_api_key)');
    expect(srv.seen[0]!.headers['authorization']).toBe('Bearer wrong');
    expect(srv.seen[0]!.path).toBe('/admin/keys');
  });

  it('a non-envelope failure exits 1 too', async () => {
    const srv = await mockServer(() => ({ status: 502, text: 'bad gateway' }));
    const r = await cli(['teams', 'list'], envFor(srv));
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('502');
  });

  it('an unreachable gateway exits 1 with a clear message', async () => {
    const srv = await mockServer(() => ({}));
    await srv.close();
    const r = await cli(['keys', 'list'], envFor(srv));
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/error: cannot reach the gateway at http:\/\/127\.0\.0\.1:\d+ \(ECONNREFUSED\)/);
  });

  it('keys list: query, table, csv, json and --all following nextCursor', async () => {
    const srv = await mockServer((s) =>
      s.query.get('cursor') === 'c2'
        ? { json: { data: [{ ...KEY, id: 'key_2', name: 'second' }], nextCursor: null } }
        : { json: { data: [KEY], nextCursor: 'c2' } },
    );
    let r = await cli(['keys', 'list', '--team', 'platform', '--limit', '1'], envFor(srv));
    expect(r.code).toBe(0);
    const s = srv.seen[0]!;
    expect([s.method, s.path, s.query.get('team'), s.query.get('limit'), s.query.has('cursor')]).toEqual([
      'GET',
      '/admin/keys',
      'platform',
      '1',
      false,
    ]);
    expect(r.stdout.split('\n')).toHaveLength(2);
    expect(r.stdout).toContain('ci-bot');
    expect(r.stderr).toContain('--cursor c2');

    r = await cli(['keys', 'list', '--all', '--format', 'csv'], envFor(srv));
    expect(r.code).toBe(0);
    const lines = r.stdout.split('\n');
    expect(lines).toHaveLength(3);
    expect(lines[1]).toMatch(/^key_abc,ci-bot/);
    expect(lines[2]).toMatch(/^key_2,second/);
    expect(srv.seen.slice(1).map((x) => x.query.get('cursor'))).toEqual([null, 'c2']);

    r = await cli(['keys', 'list', '--all', '--format', 'json'], envFor(srv));
    expect(JSON.parse(r.stdout)).toEqual({
      data: [KEY, { ...KEY, id: 'key_2', name: 'second' }],
      nextCursor: null,
    });
  });

  it('keys show, update, rotate and revoke', async () => {
    const srv = await mockServer((s) => {
      if (s.method === 'DELETE') return { status: 204 };
      if (s.path.endsWith('/rotate')) return { json: { id: 'key_a/b', key: 'sk-tg-new' } };
      return { json: { ...KEY, spend: { month: 1.25 } } };
    });
    const env = envFor(srv);

    let r = await cli(['keys', 'show', 'key_a/b'], env);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^spend\.month\s+1\.25$/m);
    expect(srv.seen[0]).toMatchObject({ method: 'GET', path: '/admin/keys/key_a%2Fb' });
    r = await cli(['keys', 'show', 'key_a/b', '--json'], env);
    expect(JSON.parse(r.stdout)).toEqual({ ...KEY, spend: { month: 1.25 } });

    r = await cli(['keys', 'update', 'key_a/b', '--rpm', 'unlimited', '--disable'], env);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('Updated key key_a/b');
    expect(srv.seen[2]).toMatchObject({
      method: 'PATCH',
      path: '/admin/keys/key_a%2Fb',
      json: { limits: { rpm: null }, disabled: true },
    });

    r = await cli(['keys', 'rotate', 'key_a/b', '--grace-seconds', '60'], env);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('  sk-tg-new');
    expect(r.stdout).toContain('keeps working for 60s');
    expect(srv.seen[3]).toMatchObject({
      method: 'POST',
      path: '/admin/keys/key_a%2Fb/rotate',
      json: { graceSeconds: 60 },
    });

    r = await cli(['keys', 'revoke', 'key_a/b'], env);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe('Revoked key key_a/b');
    expect(srv.seen[4]).toMatchObject({ method: 'DELETE', path: '/admin/keys/key_a%2Fb', body: '' });
    expect(srv.seen.every((x) => x.headers['authorization'] === `Bearer ${ADMIN}`)).toBe(true);
  });

  it('a 404 on show exits 1', async () => {
    const srv = await mockServer(() => ({
      status: 404,
      json: envelope("No key with id 'nope'.", 'not_found'),
    }));
    const r = await cli(['keys', 'show', 'nope'], envFor(srv));
    expect(r).toEqual({ code: 1, stdout: '', stderr: "error: No key with id 'nope'. (not_found)" });
  });

  it('teams set, list and show', async () => {
    const team = {
      name: 'platform',
      limits: { rpm: 100 },
      budget: null,
      updatedAt: '2026-03-15T00:00:00.000Z',
    };
    const srv = await mockServer((s) =>
      s.path === '/admin/teams' ? { json: { data: [team] } } : { json: team },
    );
    const env = envFor(srv);
    let r = await cli(['teams', 'set', 'platform', '--rpm', '100', '--budget-usd', 'none'], env);
    expect(r.code).toBe(0);
    expect(srv.seen[0]).toMatchObject({
      method: 'PUT',
      path: '/admin/teams/platform',
      json: { limits: { rpm: 100 }, budget: null },
    });
    r = await cli(['teams', 'list'], env);
    expect(r.stdout.split('\n')[1]).toMatch(/^platform\s+100\s+unlimited\s+unlimited\s+-\s+2026/);
    r = await cli(['teams', 'list', '--format', 'json'], env);
    expect(JSON.parse(r.stdout)).toEqual({ data: [team] });
    r = await cli(['teams', 'show', 'platform'], env);
    expect(r.stdout).toMatch(/^budget\s+none$/m);
    expect(srv.seen[3]).toMatchObject({ method: 'GET', path: '/admin/teams/platform' });
    expect((await cli(['teams', 'set', 'platform'], env)).code).toBe(2);
  });

  it('usage: query parameters, table with TOTAL, csv as is', async () => {
    const csvBody = 'day,team,requests,costUsd\n2026-03-14,platform,10,0.0012\n';
    const srv = await mockServer((s) =>
      s.query.get('format') === 'csv'
        ? { text: csvBody, headers: { 'content-type': 'text/csv' } }
        : { json: { data: [{ day: '2026-03-14', team: 'platform', requests: 10, costUsd: 0.0012 }] } },
    );
    const env = envFor(srv);
    let r = await cli(
      [
        'usage',
        '--from',
        '2026-03-01',
        '--to',
        '2026-03-14',
        '--group-by',
        'day,team',
        '--team',
        'platform',
        '--model',
        'gpt-4.1-mini',
        '--key',
        'key_1',
      ],
      env,
    );
    expect(r.code).toBe(0);
    const q = srv.seen[0]!.query;
    expect(srv.seen[0]!.path).toBe('/admin/usage');
    expect(Object.fromEntries(q)).toEqual({
      from: '2026-03-01',
      to: '2026-03-14',
      groupBy: 'day,team',
      team: 'platform',
      model: 'gpt-4.1-mini',
      key: 'key_1',
      format: 'json',
    });
    const lines = r.stdout.split('\n');
    expect(lines[1]).toMatch(/^2026-03-14\s+platform\s+10\s+0\.001200$/);
    expect(lines[2]).toMatch(/^TOTAL\s+10\s+0\.001200$/);

    r = await cli(['usage', '--format', 'csv'], env);
    expect(r.code).toBe(0);
    expect(`${r.stdout}\n`).toBe(csvBody);
    expect(srv.seen[1]!.query.get('format')).toBe('csv');
    expect(srv.seen[1]!.query.get('from')).toBe('2026-03-15');
    expect(srv.seen[1]!.query.get('to')).toBe('2026-03-15');

    r = await cli(['usage', '--format', 'json'], env);
    expect(JSON.parse(r.stdout)).toEqual({
      data: [{ day: '2026-03-14', team: 'platform', requests: 10, costUsd: 0.0012 }],
    });
  });

  it('usage with no rows says so', async () => {
    const srv = await mockServer(() => ({ json: { data: [] } }));
    const r = await cli(['usage'], envFor(srv));
    expect(r.stdout).toBe('no usage from 2026-03-15 to 2026-03-15');
  });

  it('audit: GET /admin/audit with limit', async () => {
    const entry = {
      id: 'aud_1',
      time: '2026-03-15T00:00:00.000Z',
      actor: 'root',
      action: 'key.created',
      target: 'key_abc',
      details: { name: 'ci-bot' },
    };
    const srv = await mockServer(() => ({ json: { data: [entry], nextCursor: null } }));
    const r = await cli(['audit', '--limit', '5'], envFor(srv));
    expect(r.code).toBe(0);
    expect(srv.seen[0]).toMatchObject({ method: 'GET', path: '/admin/audit' });
    expect(srv.seen[0]!.query.get('limit')).toBe('5');
    expect(r.stdout.split('\n')[1]).toMatch(
      /^2026-03-15T00:00:00\.000Z\s+root\s+key\.created\s+key_abc\s+\{"name":"ci-bot"\}$/,
    );
  });
});

describe('keys hash and generate (offline)', () => {
  it('prints the lowercase hex SHA-256 of a well-formed key without warning', async () => {
    const secret = generateKey();
    const r = await cli(['keys', 'hash', secret]);
    expect(r).toEqual({ code: 0, stdout: createHash('sha256').update(secret).digest('hex'), stderr: '' });
  });

  it('warns on stderr for a malformed secret, still hashing it', async () => {
    const r = await cli(['keys', 'hash', 'not-a-key']);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(createHash('sha256').update('not-a-key').digest('hex'));
    expect(r.stderr).toMatch(/^warning: .*not a well-formed/);
    expect(r.stderr).not.toContain('not-a-key');
  });

  it("reads the secret from stdin with '-'", async () => {
    const secret = generateKey();
    const r = await cli(['keys', 'hash', '-'], {}, `${secret}\n`);
    expect(r.stdout).toBe(createHash('sha256').update(secret).digest('hex'));
    expect(r.stderr).toBe('');
  });

  it('generate prints a secret and its hash', async () => {
    const r = await cli(['keys', 'generate', '--json']);
    const { key, sha256 } = JSON.parse(r.stdout) as { key: string; sha256: string };
    expect((await cli(['keys', 'hash', key])).stdout).toBe(sha256);
  });
});

describe('config check', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tollgate-cli-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const write = (name: string, text: string): string => {
    const p = join(dir, name);
    writeFileSync(p, text);
    return p;
  };
  /** A `${VAR}` reference in the YAML. */
  const ref = (name: string): string => `$\{${name}}`;
  const SECRET = 'sk-upstream-secret-do-not-print';
  const ADMIN_SECRET = 'admin-secret-do-not-print';

  it('prints ok, warnings and a summary, never secrets', async () => {
    const file = write(
      'good.yaml',
      [
        `admin: { apiKey: "${ref('ADMIN_API_KEY')}" }`,
        'upstreams:',
        `  - { name: openai, type: openai, apiKey: "${ref('OPENAI_API_KEY')}" }`,
        `  - { name: azure-east, type: azure, endpoint: "${ref('AZURE_OPENAI_ENDPOINT')}", apiKey: "${ref('AZURE_OPENAI_API_KEY')}", deployment: gpt-4.1-mini }`,
        'models:',
        '  - id: gpt-4.1-mini',
        '    pricing: { inputPerMTok: 0.40, cachedInputPerMTok: 0.10, outputPerMTok: 1.60 }',
        '    routes: [ { upstream: openai, priority: 1 }, { upstream: azure-east, priority: 2 } ]',
      ].join('\n'),
    );
    const r = await cli(['config', 'check', file], { OPENAI_API_KEY: SECRET, ADMIN_API_KEY: ADMIN_SECRET });
    expect(r.code).toBe(0);
    const lines = r.stdout.split('\n');
    expect(lines[0]).toBe(`ok: ${file}`);
    expect(lines).toContain("warning: upstream 'azure-east' has no endpoint: disabled");
    expect(lines.at(-1)).toBe(
      '2 upstreams (1 disabled), 1 model, memory mode (nothing persists), admin API on',
    );
    expect(r.stdout + r.stderr).not.toContain(SECRET);
    expect(r.stdout + r.stderr).not.toContain(ADMIN_SECRET);
  });

  it('reports redis mode', async () => {
    const file = write(
      'redis.yaml',
      [
        'redis: { url: "redis://:pass@10.0.0.1:6379/0" }',
        'upstreams: [ { name: openai, type: openai, apiKey: "k" } ]',
        'models: [ { id: m, pricing: { inputPerMTok: 1, cachedInputPerMTok: 1, outputPerMTok: 1 }, routes: [ { upstream: openai } ] } ]',
      ].join('\n'),
    );
    const r = await cli(['config', 'check', file]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('1 upstream, 1 model, redis mode, admin API off');
    expect(r.stdout).not.toContain('pass@');
  });

  it('uses GATEWAY_CONFIG when no file is given', async () => {
    const file = write(
      'env.yaml',
      'upstreams: [ { name: o, type: openai, apiKey: k } ]\nmodels: [ { id: m, pricing: { inputPerMTok: 1, cachedInputPerMTok: 1, outputPerMTok: 1 }, routes: [ { upstream: o } ] } ]\n',
    );
    const r = await cli(['config', 'check'], { GATEWAY_CONFIG: file });
    expect(r.code).toBe(0);
    expect(r.stdout.split('\n')[0]).toBe(`ok: ${file}`);
  });

  it('lists every problem on stderr and exits 2', async () => {
    const file = write(
      'bad.yaml',
      [
        'server: { port: 99999 }',
        `upstreams: [ { name: openai, type: openai, apiKey: "${SECRET}" } ]`,
        'models: [ { id: m, pricing: { inputPerMTok: 1, cachedInputPerMTok: 1, outputPerMTok: 1 }, routes: [ { upstream: nowhere } ] } ]',
        'bogus: true',
      ].join('\n'),
    );
    const r = await cli(['config', 'check', file]);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/^error: server\.port: /m);
    expect(r.stderr).toMatch(/bogus/);
    expect(r.stderr).not.toContain(SECRET);
  });

  it('a missing file is invalid (exit 2)', async () => {
    const r = await cli(['config', 'check', join(dir, 'missing.yaml')]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('cannot read');
  });
});
