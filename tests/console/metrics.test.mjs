// metrics.test.mjs: the console's /metrics arithmetic
// (server/console/metrics.mjs), with node's test runner:
//   node --test tests/console/metrics.test.mjs
// Expected figures are worked out by hand in the comments, the way
// Prometheus's rate() and histogram_quantile() define them.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { buckets, parseMetrics, quantile, summarize, total } from '../../server/console/metrics.mjs';

test('samples, labels and the special values of the text format', () => {
  const m = parseMetrics([
    '# HELP comrope_requests_total HTTP requests answered.',
    '# TYPE comrope_requests_total counter',
    'comrope_requests_total{endpoint="v1_classify",code="200"} 7',
    'comrope_requests_total{endpoint="metrics",code="200"} 3 1700000000000',
    '',
    'process_open_fds 12',
    'weird{a="x,y}z",b="say \\"hi\\"",c="back\\\\slash",d="two\\nlines",} 1.5e3',
    'h_bucket{le="+Inf"} +Inf',
    'n NaN',
    '  spaced  -2  ',
  ].join('\n'));
  assert.deepEqual(m.get('comrope_requests_total'), [
    { labels: { endpoint: 'v1_classify', code: '200' }, value: 7 },
    { labels: { endpoint: 'metrics', code: '200' }, value: 3 },
  ]);
  assert.deepEqual(m.get('process_open_fds'), [{ labels: {}, value: 12 }]);
  assert.deepEqual(m.get('weird')[0].labels, { a: 'x,y}z', b: 'say "hi"', c: 'back\\slash', d: 'two\nlines' });
  assert.equal(m.get('weird')[0].value, 1500);
  assert.equal(m.get('h_bucket')[0].value, Infinity);
  assert.ok(Number.isNaN(m.get('n')[0].value));
  assert.equal(m.get('spaced')[0].value, -2);
  assert.equal(total(m, 'comrope_requests_total'), 10);
  assert.equal(total(m, 'comrope_requests_total', (l) => l.endpoint === 'metrics'), 3);
  assert.equal(total(m, 'absent'), 0);
});

test('a malformed line is refused, naming its number', () => {
  assert.throws(() => parseMetrics('ok 1\nbad{le="1" 2'), /line 2/);
  assert.throws(() => parseMetrics('ok 1\n\nx{a=1} 2'), /line 3: expected ="..."/);
  assert.throws(() => parseMetrics('x abc'), /not a number: "abc"/);
  assert.throws(() => parseMetrics('x'), /line 1: expected a value/);
  assert.throws(() => parseMetrics('x 1 2 3'), /line 1: expected a value/);
  assert.throws(() => parseMetrics('{a="1"} 1'), /line 1: expected a metric name/);
});

test('histogram quantiles interpolate within the bucket of the rank', () => {
  const bks = buckets(parseMetrics([
    'd_bucket{le="0.2"} 20', // out of order on purpose: sorted by bound
    'd_bucket{le="0.1"} 10',
    'd_bucket{le="+Inf"} 20',
  ].join('\n')), 'd');
  assert.deepEqual(bks.map((b) => b.le), [0.1, 0.2, Infinity]);
  // rank 10 of 20 falls at the top of (0, 0.1]: 0.1
  assert.equal(quantile(0.5, bks), 0.1);
  // rank 19.8: (0.1, 0.2] holds ranks 10..20, so 0.1 + 0.1 * 9.8 / 10
  assert.ok(Math.abs(quantile(0.99, bks) - 0.198) < 1e-12);
  // rank 2.5 of 20 in the first bucket, from 0: 0.1 * 2.5 / 10
  assert.ok(Math.abs(quantile(0.125, bks) - 0.025) < 1e-12);
  // a rank in the +Inf bucket: the highest finite bound
  const tail = [{ le: 0.1, count: 1 }, { le: Infinity, count: 4 }];
  assert.equal(quantile(0.9, tail), 0.1);
  assert.equal(quantile(0.5, [{ le: 0.1, count: 0 }, { le: Infinity, count: 0 }]), null);
  assert.equal(quantile(0.5, []), null);
});

const scrape = (classify, infer, metricsReqs, lat, batches, images, queue) => parseMetrics([
  `comrope_requests_total{endpoint="v1_classify",code="200"} ${classify}`,
  `comrope_requests_total{endpoint="v2_infer",code="200"} ${infer}`,
  `comrope_requests_total{endpoint="metrics",code="200"} ${metricsReqs}`,
  // inference latency (what the panel shows), and the scrapes' own
  // series, which must not count in it
  `comrope_request_duration_seconds_bucket{endpoint="v1_classify",model="m",version="1",le="0.01"} ${lat[0]}`,
  `comrope_request_duration_seconds_bucket{endpoint="v1_classify",model="m",version="1",le="0.1"} ${lat[1]}`,
  `comrope_request_duration_seconds_bucket{endpoint="v1_classify",model="m",version="1",le="+Inf"} ${lat[2]}`,
  `comrope_request_duration_seconds_count{endpoint="v1_classify",model="m",version="1"} ${lat[2]}`,
  `comrope_request_duration_seconds_bucket{endpoint="metrics",le="0.01"} ${metricsReqs}`,
  `comrope_request_duration_seconds_bucket{endpoint="metrics",le="0.1"} ${metricsReqs}`,
  `comrope_request_duration_seconds_bucket{endpoint="metrics",le="+Inf"} ${metricsReqs}`,
  `comrope_request_duration_seconds_count{endpoint="metrics"} ${metricsReqs}`,
  `comrope_batch_images_sum ${images}`,
  `comrope_batch_images_count ${batches}`,
  `comrope_queue_depth ${queue}`,
].join('\n'));

test('the panel over a window: inference rate, latency of the window, mean batch', () => {
  const before = scrape(100, 20, 50, [500, 600, 600], 40, 90, 0);
  // 10 s later: 24 + 6 inference requests (+ 4 scrapes, not counted);
  // latency buckets grew by 10 (<= 10 ms), 20 (<= 100 ms), 4 (above);
  // 10 batches of 25 images; 3 waiting
  const now = scrape(124, 26, 54, [510, 630, 634], 50, 115, 3);
  const s = summarize(before, now, 10);
  assert.equal(s.requestsPerSecond, 3); // 30 / 10 s
  // window buckets (cumulative) 10, 30, 34: p50 rank 17 in (0.01, 0.1]:
  // 0.01 + 0.09 * (17 - 10) / 20
  assert.ok(Math.abs(s.p50 - 0.0415) < 1e-12);
  // p99 rank 33.66 in the +Inf bucket: the highest finite bound
  assert.equal(s.p99, 0.1);
  assert.equal(s.batchSize, 2.5);
  assert.equal(s.queueDepth, 3);
});

test('an idle window has no latency and no batch size', () => {
  const a = scrape(5, 0, 9, [9, 9, 9], 2, 2, 0);
  const b = scrape(5, 0, 10, [9, 9, 9], 2, 2, 0); // one scrape, no inference
  const s = summarize(a, b, 3);
  assert.equal(s.requestsPerSecond, 0);
  assert.equal(s.batchSize, null);
  // the scrape itself is no inference: no latency
  assert.equal(s.p50, null);
});

test('a daemon restart (counters going down) starts the window from zero', () => {
  const old = scrape(1000, 0, 100, [900, 1000, 1100], 400, 900, 0);
  const fresh = scrape(6, 0, 1, [7, 7, 7], 3, 6, 0);
  const s = summarize(old, fresh, 3);
  assert.equal(s.requestsPerSecond, 2); // 6 since the restart, over 3 s
  assert.equal(s.batchSize, 2);
  assert.ok(s.p99 > 0 && s.p99 <= 0.01);
});

test('the exposition of a real scrape parses whole', () => {
  // A slice of comrope-serve's own output (server/metrics.c), as served.
  const text = `# HELP comrope_batch_images Images per executed batch.
# TYPE comrope_batch_images histogram
comrope_batch_images_bucket{le="1"} 3
comrope_batch_images_bucket{le="2"} 4
comrope_batch_images_bucket{le="+Inf"} 4
comrope_batch_images_sum 5
comrope_batch_images_count 4
# HELP comrope_model_info The served model.
# TYPE comrope_model_info gauge
comrope_model_info{model="fashion-comrope-ld",pe_type="comrope-ld",training_resolution="28",version="0.1.0"} 1
process_start_time_seconds 1796540000.25
`;
  const m = parseMetrics(text);
  assert.equal(m.get('comrope_model_info')[0].labels.training_resolution, '28');
  assert.equal(quantile(0.5, buckets(m, 'comrope_batch_images')), 1 * (2 / 3));
  assert.equal(total(m, 'process_start_time_seconds'), 1796540000.25);
});
