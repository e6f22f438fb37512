// metrics.mjs: the live panel's arithmetic, apart from the page so that
// node's test runner can check it (tests/console/metrics.test.mjs).
//
// parseMetrics reads the Prometheus text exposition that GET /metrics
// serves; summarize turns two scrapes into the panel's figures over the
// time between them, the way Prometheus's rate() and histogram_quantile()
// would.

// A sample value: Go-style floats plus the spellings of the format.
function parseValue(text) {
  if (text === '+Inf' || text === 'Inf') return Infinity;
  if (text === '-Inf') return -Infinity;
  if (text === 'NaN') return NaN;
  if (!/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(text)) throw new Error(`not a number: "${text}"`);
  return Number(text);
}

// The labels of `line` from `i` (just after "{"): returns [labels, index after "}"].
function parseLabels(line, i, lineNo) {
  const labels = {};
  for (;;) {
    while (line[i] === ' ' || line[i] === ',') i++;
    if (line[i] === '}') return [labels, i + 1];
    const m = /^[a-zA-Z_][a-zA-Z0-9_]*/.exec(line.slice(i));
    if (!m) throw new Error(`line ${lineNo}: expected a label name at column ${i + 1}`);
    const name = m[0];
    i += name.length;
    while (line[i] === ' ') i++;
    if (line[i] !== '=' || line[i + 1] !== '"') throw new Error(`line ${lineNo}: expected ="..." after ${name}`);
    i += 2;
    let value = '';
    for (;;) {
      if (i >= line.length) throw new Error(`line ${lineNo}: unterminated value of label ${name}`);
      const c = line[i++];
      if (c === '"') break;
      if (c === '\\') {
        const e = line[i++];
        value += e === 'n' ? '\n' : e; // \\ \" \n are the only escapes
      } else {
        value += c;
      }
    }
    labels[name] = value;
  }
}

// Text -> Map of metric name -> [{labels, value}], in the order they came.
// Comments (# HELP, # TYPE) and blank lines are skipped; a malformed line
// throws, naming its number.
export function parseMetrics(text) {
  const out = new Map();
  const lines = text.split('\n');
  for (let n = 0; n < lines.length; n++) {
    const line = lines[n].trim();
    if (line === '' || line.startsWith('#')) continue;
    const m = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line);
    if (!m) throw new Error(`line ${n + 1}: expected a metric name`);
    const name = m[0];
    let i = name.length;
    let labels = {};
    if (line[i] === '{') [labels, i] = parseLabels(line, i + 1, n + 1);
    const rest = line.slice(i).trim().split(/\s+/); // value [timestamp]
    if (rest.length < 1 || rest.length > 2 || rest[0] === '') throw new Error(`line ${n + 1}: expected a value`);
    const value = parseValue(rest[0]);
    if (!out.has(name)) out.set(name, []);
    out.get(name).push({ labels, value });
  }
  return out;
}

// The sum of a metric's samples whose labels pass `keep` (all by default).
export function total(metrics, name, keep = () => true) {
  let sum = 0;
  for (const s of metrics.get(name) || []) if (keep(s.labels)) sum += s.value;
  return sum;
}

// A histogram's cumulative buckets, sorted by their upper bound: [{le, count}];
// the series whose labels pass `keep` (all by default) summed bound by bound.
export function buckets(metrics, name, keep = () => true) {
  const byLe = new Map();
  for (const s of metrics.get(`${name}_bucket`) || []) {
    if (!keep(s.labels)) continue;
    const le = parseValue(s.labels.le);
    byLe.set(le, (byLe.get(le) || 0) + s.value);
  }
  return [...byLe].map(([le, count]) => ({ le, count })).sort((a, b) => a.le - b.le);
}

// histogram_quantile(q, ...) over cumulative buckets: linear within the
// bucket where the rank falls; in the +Inf bucket, the highest finite bound.
// null when the histogram is empty.
export function quantile(q, bks) {
  if (bks.length === 0) return null;
  const count = bks[bks.length - 1].count;
  if (!(count > 0)) return null;
  const rank = q * count;
  let prevLe = 0;
  let prevCount = 0;
  for (const b of bks) {
    if (b.count >= rank) {
      if (b.le === Infinity) return prevLe;
      if (b.count === prevCount) return b.le;
      return prevLe + ((b.le - prevLe) * (rank - prevCount)) / (b.count - prevCount);
    }
    prevLe = b.le;
    prevCount = b.count;
  }
  return prevLe;
}

// Buckets of the window between two scrapes (now minus before, by bound).
export function bucketDelta(before, now) {
  const old = new Map(before.map((b) => [b.le, b.count]));
  return now.map((b) => ({ le: b.le, count: b.count - (old.get(b.le) || 0) }));
}

const INFERENCE = new Set(['v1_classify', 'v2_infer']);

// The panel's figures between two scrapes taken `seconds` apart:
//   requestsPerSecond  inference requests answered (/v1/classify, /v2 infer)
//   p50, p99           inference request latency in seconds (null: none)
//   batchSize          mean images per executed batch (null: no batch)
//   queueDepth         jobs waiting now
// A counter that went down means the daemon restarted: the window is then
// the new process's life, its counters taken from zero.
export function summarize(before, now, seconds) {
  const inference = (l) => INFERENCE.has(l.endpoint);
  const reqs = (m) => total(m, 'comrope_requests_total', inference);
  const count = (m) => total(m, 'comrope_request_duration_seconds_count');
  const restarted = reqs(now) < reqs(before) || count(now) < count(before);
  const base = restarted ? new Map() : before;
  const lat = bucketDelta(buckets(base, 'comrope_request_duration_seconds', inference),
    buckets(now, 'comrope_request_duration_seconds', inference));
  const batches = total(now, 'comrope_batch_images_count') - total(base, 'comrope_batch_images_count');
  const images = total(now, 'comrope_batch_images_sum') - total(base, 'comrope_batch_images_sum');
  return {
    requestsPerSecond: seconds > 0 ? (reqs(now) - reqs(base)) / seconds : null,
    p50: quantile(0.5, lat),
    p99: quantile(0.99, lat),
    batchSize: batches > 0 ? images / batches : null,
    queueDepth: now.has('comrope_queue_depth') ? total(now, 'comrope_queue_depth') : null,
  };
}
