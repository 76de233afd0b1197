import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { counterSeries, gaugeSeries, histogramSeries } from '../../src/metrics/metrics.js';

// The series update prom-client's tables in place; these compare every kind with the same
// updates made through prom-client's own API, so a prom-client upgrade that changes its tables
// fails here rather than in a dashboard.
const BUCKETS = [0.001, 0.01, 0.1, 1, 10];

function twins<M>(make: (name: string, registry: Registry) => M): {
  ours: M;
  theirs: M;
  text: () => Promise<[string, string]>;
} {
  const a = new Registry();
  const b = new Registry();
  const ours = make('m', a);
  const theirs = make('m', b);
  return { ours, theirs, text: async () => [await a.metrics(), await b.metrics()] };
}

describe('metric series', () => {
  it('counter series count what prom-client counts', async () => {
    const names = ['route', 'team'] as const;
    const t = twins((name, r) => new Counter({ name, help: 'h', labelNames: names, registers: [r] }));
    const series = counterSeries(t.ours);
    const updates: [string, string, number][] = [
      ['chat', 'a', 1],
      ['chat', 'a', 2.5],
      ['chat', 'b', 7],
      ['models', 'a', 1],
      ['chat', 'a', 0],
    ];
    for (const [route, team, v] of updates) {
      series.get(route, team).inc(v);
      t.theirs.inc({ route, team }, v);
    }
    series.get('chat', 'b').inc();
    t.theirs.inc({ route: 'chat', team: 'b' });
    const [ours, theirs] = await t.text();
    expect(ours).toBe(theirs);
    expect(ours).toContain('m{route="chat",team="a"} 3.5');
  });

  it('gauge series go up and down like prom-client gauges', async () => {
    const t = twins((name, r) => new Gauge({ name, help: 'h', labelNames: ['route'], registers: [r] }));
    const series = gaugeSeries(t.ours);
    for (let i = 0; i < 5; i++) {
      series.get('chat').inc();
      t.theirs.inc({ route: 'chat' });
    }
    series.get('chat').dec();
    t.theirs.dec({ route: 'chat' });
    series.get('models').inc();
    t.theirs.inc({ route: 'models' });
    const [ours, theirs] = await t.text();
    expect(ours).toBe(theirs);
    expect(ours).toContain('m{route="chat"} 4');
  });

  it('histogram series bucket, sum and count like prom-client histograms', async () => {
    const t = twins(
      (name, r) =>
        new Histogram({ name, help: 'h', labelNames: ['route'], buckets: BUCKETS, registers: [r] }),
    );
    const series = histogramSeries(t.ours);
    // Bounds themselves, between them, below the first and above the last.
    const values = [0, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 50, 1e9];
    for (const v of values) {
      series.get('chat').observe(v);
      t.theirs.observe({ route: 'chat' }, v);
    }
    const [ours, theirs] = await t.text();
    expect(ours).toBe(theirs);
    expect(ours).toContain(`m_count{route="chat"} ${values.length}`);
    expect(ours).toContain('m_bucket{le="0.01",route="chat"} 5');
  });
});
