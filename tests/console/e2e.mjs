// e2e.mjs: the web console in headless Chromium against a running daemon
// (tests/console/run.sh starts it and passes its URL).
//
//   node e2e.mjs open URL OUT_DIR     the page, a row per sample, errors, axe, phone width
//   node e2e.mjs auth URL TOKEN       a daemon with --api-key-file: page public, token asked for
//   node e2e.mjs models URL           a daemon serving two models: the picker, each model's own route
//
// Every expected value comes from the API itself (fetch from node), never
// from the page's code. Exit 77 (ctest: skipped) only when Chromium cannot
// start; any other failure exits 1.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../..');
const [mode, url, arg] = process.argv.slice(2);
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const WAIT_MS = 120000; // bounds of waits on observable states, never sleeps

// Written at once (fs.writeSync): a pipe's pending writes are lost when the
// process exits, and the lines before a failure are the ones that matter.
function log(msg) {
  fs.writeSync(1, `console-e2e: ${msg}\n`);
}

async function launch() {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'comrope-chromium-'));
  try {
    const ctx = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      viewport: { width: 1200, height: 900 },
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    return { ctx, profile };
  } catch (err) {
    const bar = '#'.repeat(72);
    fs.writeSync(1, `${bar}\n# SKIPPED: Chromium (${CHROMIUM}) cannot start here, the console's\n` +
      '# browser test did not run:\n' +
      `${String(err.message).split('\n').slice(0, 6).map((l) => `#   ${l}`).join('\n')}\n${bar}\n`);
    fs.rmSync(profile, { recursive: true, force: true });
    process.exit(77);
  }
}

// What /v1/classify (or a named model's /v1/models/<m>/classify) answers
// for these bytes at this resolution.
async function classify(bytes, res, token, model) {
  const headers = { 'Content-Type': 'image/png' };
  if (token) headers.Authorization = `Bearer ${token}`;
  const route = model ? `v1/models/${encodeURIComponent(model)}/classify` : 'v1/classify';
  const resp = await fetch(`${url}${route}?resolution=${res}&top_k=5`, { method: 'POST', headers, body: bytes });
  return { status: resp.status, body: await resp.json() };
}

// Page errors, console errors and CSP refusals, gathered for the end.
function watch(page) {
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' || /Content Security Policy/i.test(m.text())) problems.push(`console ${m.type()}: ${m.text()}`);
  });
  return problems;
}

// Waits for the row to finish and returns its cards as shown.
async function shownRow(page) {
  await page.waitForSelector('#row[data-complete]', { timeout: WAIT_MS });
  return page.$$eval('#row > li.res', (cards) => cards.map((c) => ({
    resolution: c.dataset.resolution,
    state: c.dataset.state,
    canvas: [c.querySelector('canvas')?.width, c.querySelector('canvas')?.height],
    top: [...c.querySelectorAll('.top5 > li')].map((li) => ({
      label: li.querySelector('.label')?.textContent,
      score: li.querySelector('.score')?.textContent,
      raw: li.dataset.score,
    })),
    error: c.querySelector('.error')?.textContent ?? null,
  })));
}

// Each card's top 5 (label, shown score, exact score) against the API's.
async function checkRow(cards, bytes, token, model) {
  for (const card of cards) {
    assert.equal(card.state, 'done', `${card.resolution}: ${card.error}`);
    const [h, w] = card.resolution.split('x').map(Number);
    assert.deepEqual(card.canvas, [w, h], `${card.resolution}: the model's view is drawn at its size`);
    const { status, body } = await classify(bytes, card.resolution, token, model);
    assert.equal(status, 200);
    const api = body.predictions[0];
    assert.deepEqual(api.resolution, [h, w]);
    assert.equal(card.top.length, api.top.length);
    api.top.forEach((t, i) => {
      assert.equal(card.top[i].label, t.label, `${card.resolution} #${i + 1} label`);
      assert.equal(card.top[i].score, `${(t.score * 100).toFixed(1)}%`, `${card.resolution} #${i + 1} shown score`);
      assert.equal(Number(card.top[i].raw), t.score, `${card.resolution} #${i + 1} score`);
    });
  }
}

async function openMode(outDir) {
  const models = await (await fetch(`${url}v1/models`)).json();
  const model = models.models[0];
  const { ctx, profile } = await launch();
  try {
    const page = ctx.pages()[0] || (await ctx.newPage());
    const problems = watch(page);
    // offline-ready: the page asks nothing of any other origin
    const elsewhere = [];
    page.on('request', (r) => { if (!r.url().startsWith(url) && !r.url().startsWith('blob:')) elsewhere.push(r.url()); });
    const resp = await page.goto(url);
    assert.equal(resp.status(), 200);
    assert.match(resp.headers()['content-security-policy'], /default-src 'none'/);
    await page.waitForSelector('#card dd', { timeout: WAIT_MS });
    const firstPaint = await page.evaluate(() => performance.getEntriesByName('first-contentful-paint')[0]?.startTime);
    const card = await page.textContent('#card');
    for (const fact of [model.name, model.pe_type, `${model.training_resolution}x${model.training_resolution}`]) {
      assert.ok(card.includes(fact), `model card shows ${fact}`);
    }
    assert.ok(await page.isHidden('#pick-box'), 'one model: no model picker');

    // 1. a sample uploaded through the file input
    const sample = path.join(root, 'models/samples/ankle-boot.png');
    const bytes = fs.readFileSync(sample);
    await page.setInputFiles('#file', sample);
    let cards = await shownRow(page);
    const fullRow = await page.evaluate(() => performance.getEntriesByType('measure').at(-1).duration);
    // the row: patch multiples from about 0.5x to 3x the training size, the training size among them
    const p = model.patch_size;
    const t = model.training_resolution;
    const sides = cards.map((c) => Number(c.resolution.split('x')[0]));
    assert.ok(sides.every((s) => s % p === 0), `patch multiples: ${sides}`);
    assert.ok(Math.abs(sides[0] - t / 2) <= p, `starts near 0.5x: ${sides}`);
    assert.ok(Math.abs(sides.at(-1) - 3 * t) <= p, `ends near 3x: ${sides}`);
    assert.ok(sides.includes(t), `includes the training size: ${sides}`);
    assert.ok(sides.length >= 5, `a row, not a pair: ${sides}`);
    await checkRow(cards, bytes);
    log(`ankle-boot.png: ${cards.length} resolutions (${sides.join(', ')}) match /v1/classify`);
    // the live panel counts the row (its scrapes are 3 s apart; the first was at load)
    await page.waitForFunction(() => {
      const dt = [...document.querySelectorAll('#live-facts dt')].find((d) => d.textContent === 'Inference requests/s');
      return dt && Number(dt.nextElementSibling.textContent) > 0;
    }, null, { timeout: WAIT_MS });
    const panel = await page.$$eval('#live-facts dt', (dts) => dts.map((d) => `${d.textContent} ${d.nextElementSibling?.textContent}`));
    log(`live panel: ${panel.join(', ')}`);
    await page.screenshot({ path: path.join(outDir, 'console.png'), fullPage: true });

    // 2. keyboard only: Tab to a sample's button, Enter
    await page.focus('#file');
    let reached = false;
    for (let i = 0; i < 30 && !reached; i++) {
      await page.keyboard.press('Tab');
      reached = await page.evaluate(() => document.activeElement?.textContent === 'sneaker');
    }
    assert.ok(reached, 'the sample buttons are reachable with Tab');
    await page.keyboard.press('Enter');
    await page.waitForFunction(() => document.querySelector('#status').textContent.startsWith('sneaker.png:'), null, { timeout: WAIT_MS });
    await checkRow(await shownRow(page), fs.readFileSync(path.join(root, 'models/samples/sneaker.png')));
    log('sneaker.png, chosen with the keyboard: matches /v1/classify');

    // a file dropped on the drop zone (a DataTransfer, as a drag from the desktop makes)
    const pullover = fs.readFileSync(path.join(root, 'models/samples/pullover.png'));
    await page.evaluate((b64) => {
      const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const dt = new DataTransfer();
      dt.items.add(new File([bytes], 'dropped.png', { type: 'image/png' }));
      document.getElementById('drop').dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
    }, pullover.toString('base64'));
    await page.waitForFunction(() => document.querySelector('#status').textContent.startsWith('dropped.png:'), null, { timeout: WAIT_MS });
    await checkRow(await shownRow(page), pullover);
    log('pullover.png, dropped: matches /v1/classify');

    // a photo-sized picture (4000x3000, drawn and encoded by the browser):
    // the row completes and matches; the cards' drawings stay at their sizes
    const big = await page.evaluate(async () => {
      const c = document.createElement('canvas');
      c.width = 4000;
      c.height = 3000;
      const g = c.getContext('2d');
      // flat shapes: a small file (the server decodes it six times)
      g.fillStyle = '#102040';
      g.fillRect(0, 0, 4000, 3000);
      g.fillStyle = '#f0c080';
      g.fillRect(1500, 1000, 1000, 1200);
      g.fillStyle = '#fff';
      g.fillRect(1700, 400, 600, 500);
      const blob = await new Promise((resolve) => c.toBlob(resolve, 'image/png'));
      const dt = new DataTransfer();
      dt.items.add(new File([blob], 'photo.png', { type: 'image/png' }));
      document.getElementById('drop').dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
      const bytes = new Uint8Array(await blob.arrayBuffer());
      let bin = '';
      for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
      return btoa(bin);
    });
    await page.waitForFunction(() => document.querySelector('#status').textContent.startsWith('photo.png:'), null, { timeout: WAIT_MS });
    await checkRow(await shownRow(page), Buffer.from(big, 'base64'));
    const bigRow = await page.evaluate(() => performance.getEntriesByType('measure').at(-1).duration);
    log(`a 4000x3000 PNG (${Math.round((big.length * 3) / 4 / 1024)} KiB), dropped: matches /v1/classify, row ${bigRow.toFixed(0)} ms`);
    assert.deepEqual(problems.splice(0), [], 'no page errors, console errors or CSP refusals');

    // 3. an edited row with a size the API refuses: the card shows its words
    const bad = t + 2; // not a multiple of any patch size > 2 -- checked below
    assert.notEqual(bad % p, 0);
    await page.fill('#res', `${t}, ${bad}`);
    await page.click('#res-form button[type=submit]');
    await page.waitForFunction((n) => document.querySelectorAll('#row > li.res').length === 2 &&
      document.querySelector('#row[data-complete]'), null, { timeout: WAIT_MS });
    cards = await shownRow(page);
    const refused = await classify(fs.readFileSync(path.join(root, 'models/samples/sneaker.png')), `${bad}x${bad}`);
    assert.equal(refused.status, 400);
    assert.equal(cards[0].state, 'done');
    assert.equal(cards[1].state, 'error');
    assert.equal(cards[1].error, `400: ${refused.body.error}`);
    log(`${bad}x${bad} refused as the API words it: "${cards[1].error}"`);

    // 4. accessibility: axe-core, no serious or critical violation
    await page.evaluate(fs.readFileSync(path.join(here, 'node_modules/axe-core/axe.min.js'), 'utf8'));
    // in both colour schemes (contrast differs)
    for (const colorScheme of ['light', 'dark']) {
      await page.emulateMedia({ colorScheme });
      const axe = await page.evaluate(() => window.axe.run(document, { resultTypes: ['violations'] }));
      const serious = axe.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
      for (const v of axe.violations) log(`axe ${colorScheme} ${v.impact}: ${v.id}: ${v.help} (${v.nodes.length} nodes)`);
      assert.deepEqual(serious.map((v) => v.id), [], `axe (${colorScheme}): serious or critical violations`);
      log(`axe (${colorScheme}): ${axe.violations.length} violations, none serious or critical`);
    }
    await page.emulateMedia({ colorScheme: 'light' });

    // first paint again, the browser warm (a reload: the cold figure above
    // is mostly Chromium's first navigation in a fresh profile)
    await page.reload();
    await page.waitForSelector('#card dd', { timeout: WAIT_MS });
    const warmPaint = await page.evaluate(() => performance.getEntriesByName('first-contentful-paint')[0]?.startTime);

    // 5. phone width, with a row shown: nothing wider than the screen
    await page.setViewportSize({ width: 360, height: 740 });
    await page.getByRole('button', { name: 'trouser' }).click();
    await page.waitForFunction(() => document.querySelector('#status').textContent.startsWith('trouser.png:'), null, { timeout: WAIT_MS });
    const wide = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(wide <= 360, `at 360 px the page is ${wide} px wide`);
    await page.screenshot({ path: path.join(outDir, 'console-phone.png'), fullPage: true });

    // Chromium logs the refused request of step 3 as a failed load; nothing else
    const unexpected = problems.filter((p) => !/Failed to load resource: .* status of 400/.test(p));
    assert.deepEqual(unexpected, [], 'no page errors, console errors or CSP refusals');
    assert.deepEqual(elsewhere, [], 'requests to other origins');
    let size = 0;
    for (const asset of ['', 'console/console.css', 'console/app.mjs', 'console/metrics.mjs', 'console/icon.svg']) {
      size += (await (await fetch(url + asset)).arrayBuffer()).byteLength;
    }
    log(`page ${size} bytes (HTML, CSS, JS, icon), first paint ${firstPaint.toFixed(0)} ms ` +
      `(reload ${warmPaint.toFixed(0)} ms), ` +
      `full row of ${sides.length} ${fullRow.toFixed(0)} ms; screenshot ${path.join(outDir, 'console.png')}`);
  } finally {
    await ctx.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

async function authMode(token) {
  const { ctx, profile } = await launch();
  try {
    const page = ctx.pages()[0] || (await ctx.newPage());
    const problems = watch(page);
    const resp = await page.goto(url);
    assert.equal(resp.status(), 200, 'the page itself needs no token');
    await page.waitForSelector('#auth:not([hidden])', { timeout: WAIT_MS });
    const refusal = await (await fetch(`${url}v1/models`)).json();
    assert.equal(await page.textContent('#auth-msg'), refusal.error, 'the 401 as the API words it');
    await page.fill('#token', token);
    await page.press('#token', 'Enter');
    await page.waitForSelector('#card dd', { timeout: WAIT_MS });
    const sample = path.join(root, 'models/samples/trouser.png');
    await page.setInputFiles('#file', sample);
    await checkRow(await shownRow(page), fs.readFileSync(sample), token);
    const stored = await page.evaluate(() => ({
      session: sessionStorage.getItem('comrope-token'), local: localStorage.length, cookie: document.cookie,
    }));
    assert.deepEqual(stored, { session: token, local: 0, cookie: '' }, 'the token is in sessionStorage only');
    // the 401s of the first load are the console errors Chromium logs for them
    const others = problems.filter((p) => !/401/.test(p));
    assert.deepEqual(others, []);
    log('with --api-key-file: page public, 401 shown, token in sessionStorage only, row matches');
  } finally {
    await ctx.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

// Two models: the picker lists what /v1/models lists, the default first
// and in use; picking the other shows its card and asks its own route
// (each card's top 5 = that model's answer, which differs from the
// default's on the same image); picking back returns to /v1/classify.
async function modelsMode() {
  const listed = (await (await fetch(`${url}v1/models`)).json()).models;
  assert.ok(listed.length >= 2, `the daemon serves ${listed.length} model(s)`);
  const [first, other] = listed;
  const { ctx, profile } = await launch();
  try {
    const page = ctx.pages()[0] || (await ctx.newPage());
    const problems = watch(page);
    await page.goto(url);
    await page.waitForSelector('#pick-box:not([hidden])', { timeout: WAIT_MS });
    const options = await page.$$eval('#model-pick option', (os) => os.map((o) => o.value));
    assert.deepEqual(options, listed.map((m) => m.name), 'the picker lists /v1/models, in its order');
    assert.equal(await page.inputValue('#model-pick'), first.name, 'the default model is picked first');
    const sample = path.join(root, 'models/samples/pullover.png');
    const bytes = fs.readFileSync(sample);
    await page.setInputFiles('#file', sample);
    const before = await shownRow(page);
    await checkRow(before, bytes);

    await page.selectOption('#model-pick', other.name);
    await page.waitForFunction((pe) => document.querySelector('#server').textContent.includes(`(${pe},`),
      other.pe_type, { timeout: WAIT_MS });
    const card = await page.textContent('#card');
    for (const fact of [other.name, other.pe_type]) assert.ok(card.includes(fact), `model card shows ${fact}`);
    await page.waitForSelector(`#row[data-complete][data-model="${other.name}"]`, { timeout: WAIT_MS });
    const after = await shownRow(page);
    await checkRow(after, bytes, undefined, other.name);
    const scores = (cards) => cards.map((c) => c.top.map((t) => t.raw).join()).join(';');
    assert.notEqual(scores(after), scores(before), 'the other model answers otherwise: the row is its own');
    log(`picker: ${options.join(', ')}; ${other.name}'s row (${after.length} sizes) matches /v1/models/${other.name}/classify`);

    await page.selectOption('#model-pick', first.name);
    await page.waitForFunction((pe) => document.querySelector('#server').textContent.includes(`(${pe},`),
      first.pe_type, { timeout: WAIT_MS });
    await page.waitForSelector(`#row[data-complete][data-model="${first.name}"]`, { timeout: WAIT_MS });
    await checkRow(await shownRow(page), bytes);
    assert.deepEqual(problems, [], 'no page errors, console errors or CSP refusals');
    log(`back to ${first.name}: matches /v1/classify`);
  } finally {
    await ctx.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

try {
  if (mode === 'open') await openMode(arg);
  else if (mode === 'auth') await authMode(arg);
  else if (mode === 'models') await modelsMode();
  else throw new Error(`usage: node e2e.mjs open|auth|models URL [OUT_DIR|TOKEN] (not "${mode}")`);
} catch (err) {
  fs.writeSync(2, `console-e2e: FAIL: ${err.stack}\n`);
  process.exitCode = 1; // not exit(): the log lines before this must reach the pipe
}
