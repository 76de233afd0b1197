import { spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run } from '../../src/cli/run.js';
import { type MockUpstream, startMockUpstream } from '../mock-upstream/index.js';
import { startTestGateway, type TestGateway, twoUpstreams } from '../support/gateway.js';
import { ROOT } from '../support/process.js';

// The CLI against a real gateway: every admin command end to end.
describe('tollgate CLI against a running gateway', () => {
  let mock: MockUpstream;
  let gw: TestGateway;
  beforeAll(async () => {
    mock = await startMockUpstream();
    gw = await startTestGateway(twoUpstreams(mock.url));
  });
  afterAll(async () => {
    await gw?.close();
    await mock?.close();
  });

  async function cli(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
    const out: string[] = [];
    const err: string[] = [];
    const code = await run(argv, {
      out: (t) => out.push(t),
      err: (t) => err.push(t),
      env: { TOLLGATE_URL: gw.url, ADMIN_API_KEY: gw.adminKey },
    });
    return { code, out: out.join('\n'), err: err.join('\n') };
  }

  it('creates, lists, shows, updates, rotates and revokes keys', async () => {
    const created = await cli(
      'keys',
      'create',
      '--name',
      'cli-bot',
      '--team',
      'cli',
      '--rpm',
      '60',
      '--json',
    );
    expect(created.code).toBe(0);
    const key = JSON.parse(created.out);
    expect(key.key).toMatch(/^sk-tg-/);
    expect(key.limits).toEqual({ rpm: 60 });

    const list = await cli('keys', 'list', '--team', 'cli', '--format', 'json');
    expect(list.code).toBe(0);
    expect(JSON.stringify(JSON.parse(list.out))).toContain(key.id);
    expect(list.out).not.toContain(key.key);

    const updated = await cli('keys', 'update', key.id, '--tpm', '5000');
    expect(updated.code).toBe(0);
    const shown = await cli('keys', 'show', key.id, '--json');
    expect(JSON.parse(shown.out).limits).toEqual({ rpm: 60, tpm: 5000 });

    const rotated = await cli('keys', 'rotate', key.id);
    expect(rotated.code).toBe(0);
    expect(rotated.out).toMatch(/sk-tg-[0-9A-Za-z]{38}/);
    expect(rotated.out).not.toContain(key.key);

    const duplicate = await cli('keys', 'create', '--name', 'cli-bot', '--team', 'cli');
    expect(duplicate.code).toBe(1);
    expect(duplicate.err).toContain('conflict');

    expect((await cli('keys', 'revoke', key.id)).code).toBe(0);
    expect((await cli('keys', 'show', key.id)).code).toBe(1);
  });

  it('sets and lists teams, reports usage as table, JSON and CSV, and shows the audit trail', async () => {
    expect(
      (await cli('teams', 'set', 'cli-team', '--rpm', '100', '--budget-usd', '5', '--budget-period', 'month'))
        .code,
    ).toBe(0);
    const teams = await cli('teams', 'list', '--format', 'json');
    expect(JSON.parse(teams.out).data).toEqual(
      expect.arrayContaining([expect.objectContaining({ name: 'cli-team' })]),
    );

    const created = JSON.parse(
      (await cli('keys', 'create', '--name', 'usage-bot', '--team', 'cli-team', '--json')).out,
    );
    for (let i = 0; i < 3; i++) {
      await fetch(`${gw.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${created.key}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'gpt-4.1-mini', messages: [{ role: 'user', content: `cli ${i}` }] }),
      }).then((r) => r.text());
    }
    await gw.gateway.runtime.usage.flush();
    const json = await cli('usage', '--team', 'cli-team', '--group-by', 'key', '--format', 'json');
    expect(json.code).toBe(0);
    const rows = JSON.parse(json.out).data;
    expect(rows[0]).toMatchObject({ keyId: created.id, requests: 3 });
    const csv = await cli('usage', '--team', 'cli-team', '--group-by', 'key', '--format', 'csv');
    expect(csv.out.split(/\r?\n/)[0]).toContain('keyId');
    const table = await cli('usage', '--team', 'cli-team', '--group-by', 'key');
    expect(table.out).toContain('usage-bot');
    expect(table.out).toContain('TOTAL');

    const audit = await cli('audit', '--format', 'json');
    expect(audit.out).toContain('team.updated');
    expect(audit.out).not.toContain(created.key);
  });

  it('runs as the package bin with --help on every command', () => {
    for (const argv of [['--help'], ['keys', 'create', '--help'], ['usage', '--help'], ['serve', '--help']]) {
      const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...argv], {
        cwd: ROOT,
        encoding: 'utf8',
      });
      expect(r.status).toBe(0);
      expect(r.stdout).toMatch(/Usage: tollgate/);
    }
  });
});
