#!/usr/bin/env node
// ort_bench.js: images/s of ONNX Runtime (onnxruntime-node, CPU) on one
// exported model, the counterpart of comrope-bench-engine.
//
//   node bench/ort_bench.js --model FILE.onnx [--batch B] [--threads T]
//        [--reps R] [--warmup W] [--pe NAME] [--label TEXT]
//        [--check-dir DIR] [--tol 1e-4]
//
// Session: intraOpNumThreads T, interOpNumThreads 1, sequential execution,
// graphOptimizationLevel "all". Random normalized pixels [B, C, h, w] (h, w
// and C from the model's input), W warm-up runs, then R timed runs; prints
// one JSON line with the fields of comrope-bench-engine (model, pe,
// resolution, batch, threads, kernel, median_s, min_s, max_s, images_per_s).
// --check-dir DIR: first run DIR/sample_input.f32 (written by
// tools/export_onnx.py --sample-dir) and compare with DIR/sample_logits.f32;
// exit 1 if the largest difference exceeds --tol; "check_max_abs_diff" is
// added to the JSON line.
'use strict';

const fs = require('fs');
const path = require('path');

function requireOrt() {
  // bench/node/node_modules (npm ci in bench/node), then the usual lookup
  const local = path.join(__dirname, 'node', 'node_modules', 'onnxruntime-node');
  try {
    return require(local);
  } catch (e) {
    return require('onnxruntime-node');
  }
}

function parseArgs(argv) {
  const opts = { batch: 1, threads: 2, reps: 5, warmup: 1, pe: '', label: '', tol: 1e-4 };
  const ints = new Set(['batch', 'threads', 'reps', 'warmup']);
  for (let i = 2; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '').replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    if (!argv[i].startsWith('--') || i + 1 >= argv.length ||
        !['model', 'batch', 'threads', 'reps', 'warmup', 'pe', 'label', 'checkDir', 'tol'].includes(key)) {
      throw new Error(`unknown or incomplete option ${argv[i]}`);
    }
    opts[key] = ints.has(key) ? parseInt(argv[i + 1], 10) : key === 'tol' ? parseFloat(argv[i + 1]) : argv[i + 1];
  }
  if (!opts.model || !(opts.batch >= 1) || !(opts.threads >= 1) || !(opts.reps >= 1) || !(opts.warmup >= 0)) {
    throw new Error('usage: node bench/ort_bench.js --model FILE.onnx [--batch B] [--threads T] ' +
                    '[--reps R] [--warmup W] [--pe NAME] [--check-dir DIR] [--tol X]');
  }
  return opts;
}

function readF32(file) {
  const buf = fs.readFileSync(file);
  return new Float32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength));
}

async function main() {
  const opts = parseArgs(process.argv);
  const ort = requireOrt();
  const session = await ort.InferenceSession.create(opts.model, {
    intraOpNumThreads: opts.threads,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    graphOptimizationLevel: 'all',
    executionProviders: ['cpu'],
  });
  const inName = session.inputNames[0];
  const outName = session.outputNames[0];
  const shape = session.inputMetadata[0].shape;  // ["batch", C, h, w]
  const [C, h, w] = shape.slice(1).map(Number);
  if (!(C > 0 && h > 0 && w > 0)) throw new Error(`input shape ${JSON.stringify(shape)} is not [batch, C, h, w]`);

  let checkDiff = null;
  if (opts.checkDir) {
    const x = readF32(path.join(opts.checkDir, 'sample_input.f32'));
    const want = readF32(path.join(opts.checkDir, 'sample_logits.f32'));
    const n = x.length / (C * h * w);
    const res = await session.run({ [inName]: new ort.Tensor('float32', x, [n, C, h, w]) });
    const got = res[outName].data;
    if (got.length !== want.length) throw new Error(`check: ${got.length} logits, expected ${want.length}`);
    checkDiff = 0;
    for (let i = 0; i < got.length; i++) checkDiff = Math.max(checkDiff, Math.abs(got[i] - want[i]));
    process.stderr.write(`  check against ${opts.checkDir}: max |diff| ${checkDiff.toExponential(2)}\n`);
  }

  const per = C * h * w;
  const pix = new Float32Array(per * opts.batch);
  let st = 1;  // the engine bench's LCG: uniform in [-1, 1)
  for (let i = 0; i < pix.length; i++) {
    st = (Math.imul(st, 1103515245) + 12345) >>> 0;
    pix[i] = ((st >>> 8) & 0xffff) / 32768.0 - 1.0;
  }
  const feeds = { [inName]: new ort.Tensor('float32', pix, [opts.batch, C, h, w]) };
  const secs = [];
  for (let r = 0; r < opts.warmup + opts.reps; r++) {
    const t0 = process.hrtime.bigint();
    await session.run(feeds);
    const dt = Number(process.hrtime.bigint() - t0) * 1e-9;
    if (r >= opts.warmup) secs.push(dt);
    process.stderr.write(`  rep ${r + 1}/${opts.warmup + opts.reps}: ${dt.toFixed(3)} s\n`);
  }
  secs.sort((a, b) => a - b);
  const med = secs[Math.floor(opts.reps / 2)];
  const out = {
    model: opts.label || opts.model,
    pe: opts.pe,
    resolution: [h, w],
    batch: opts.batch,
    threads: opts.threads,
    kernel: `onnxruntime-node ${ort.env.versions ? ort.env.versions.node : '?'} cpu`,
    median_s: +med.toFixed(6),
    min_s: +secs[0].toFixed(6),
    max_s: +secs[secs.length - 1].toFixed(6),
    images_per_s: +(opts.batch / med).toFixed(3),
  };
  if (checkDiff !== null) out.check_max_abs_diff = checkDiff;
  process.stdout.write(JSON.stringify(out) + '\n');
  if (checkDiff !== null && !(checkDiff <= opts.tol)) {
    process.stderr.write(`ort_bench: logits differ by ${checkDiff} > ${opts.tol}\n`);
    process.exit(1);
  }
}

main().catch((e) => {
  process.stderr.write(`ort_bench: ${e.message}\n`);
  process.exit(1);
});
