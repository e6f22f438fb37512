// app.mjs: the console page. Plain JavaScript, no framework, nothing
// fetched but this server's own API and files.
//
// The row: one POST /v1/classify per resolution, all at once (the batcher
// runs them together, images of different sizes in one ragged batch).
// Each card shows the image as the model receives it (resized as the
// engine does: antialiased bilinear, like PIL's; gray for a 1-channel
// model), the top 5 and the latency. Errors are the API's own words.
import { parseMetrics, summarize } from './metrics.mjs';

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = 'comrope-token';
const FACTORS = [0.5, 0.75, 1, 1.5, 2, 3]; // of the training size
const METRICS_EVERY_MS = 3000;
const METRICS_WINDOW_MS = 30000;

const state = {
  models: [],      // every served model, as /v1/models lists them (the default first)
  model: null,     // the /v1/models entry in use
  server: null,    // GET /v2 (name, version), or null
  image: null,     // {blob, name, pixels: ImageData | null}
  run: 0,          // the latest row's number: answers of older rows are dropped
  scrapes: [],     // [{t, metrics}] over the last METRICS_WINDOW_MS
};

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || '';
}

// fetch from the API with the token, if any. A refusal becomes an ApiError
// carrying the body's "error" text as the API worded it.
async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (token()) headers.set('Authorization', `Bearer ${token()}`);
  const resp = await fetch(path, { ...options, headers, cache: 'no-store' });
  if (resp.ok) return resp;
  let message = `${resp.status} ${resp.statusText}`;
  const text = await resp.text();
  try {
    const body = JSON.parse(text);
    if (body && typeof body.error === 'string') message = body.error;
  } catch {
    if (text) message = text.trim();
  }
  if (resp.status === 401) askForToken(message);
  throw new ApiError(resp.status, message);
}

const describe = (err) => (err instanceof ApiError ? `${err.status}: ${err.message}` : String(err.message || err));

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'class') node.className = v;
    else if (k.startsWith('data-') || k.startsWith('aria-') || k === 'role') node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) node.append(c);
  return node;
}

// --- token -----------------------------------------------------------------

function askForToken(message) {
  $('auth').hidden = false;
  $('auth-msg').textContent = message;
}

function setupToken() {
  $('auth-form').addEventListener('submit', (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $('token').value.trim());
    $('token').value = '';
    $('auth-msg').textContent = '';
    $('auth').hidden = true;
    start();
  });
  $('token-forget').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    $('token').value = '';
    $('auth-msg').textContent = 'Token forgotten.';
  });
}

// --- model card --------------------------------------------------------------

// Patch multiples from about 0.5x to 3x the training size, within the
// model's token limit: [{h, w}].
function defaultResolutions(model) {
  const p = model.patch_size;
  const maxPatches = model.resolutions.max_tokens - 1;
  const sides = [];
  for (const f of FACTORS) {
    const side = Math.max(p, Math.round((model.training_resolution * f) / p) * p);
    if ((side / p) ** 2 <= maxPatches && !sides.includes(side)) sides.push(side);
  }
  return sides.map((s) => ({ h: s, w: s }));
}

const formatRes = (r) => (r.h === r.w ? `${r.h}` : `${r.h}x${r.w}`);

function fillCard(model, v2) {
  const card = $('card');
  card.replaceChildren();
  const fact = (name, value) => card.append(el('dt', {}, name), el('dd', {}, String(value)));
  fact('Name', model.name);
  fact('Position encoding', model.pe_type);
  fact('Training size', `${model.training_resolution}x${model.training_resolution}`);
  fact('Patch', `${model.patch_size}x${model.patch_size}`);
  fact('Channels', model.channels);
  fact('Classes', model.num_classes);
  fact('Resolutions', `multiples of ${model.resolutions.multiple_of}, up to ${model.resolutions.max_tokens} tokens`);
  if (v2) {
    fact('Platform', v2.platform);
    fact('v2 inputs', v2.inputs.map((i) => `${i.name} ${i.datatype} [${i.shape.join(', ')}]`).join('; '));
  }
  $('labels').replaceChildren(...model.labels.map((l) => el('li', {}, l)));
  $('labels-box').querySelector('summary').textContent = `Labels (${model.labels.length})`;
}

// The model in use: its card, the header line, and the defaults of the
// resolution field (reset when the model changes: its patch and training
// size set them).
async function useModel(model, server) {
  let v2 = null;
  try {
    v2 = await (await api(`/v2/models/${encodeURIComponent(model.name)}`)).json();
  } catch {
    v2 = null; // the card has the v1 facts; v2's are extras
  }
  const changed = state.model && state.model.name !== model.name;
  state.model = model;
  fillCard(model, v2);
  const version = server ? ` · ${server.name} ${server.version}` : '';
  $('server').textContent = `Model ${model.name} (${model.pe_type}, trained at ${model.training_resolution}x${model.training_resolution})${version}`;
  if (changed || !$('res').value) $('res').value = defaultResolutions(model).map(formatRes).join(', ');
}

async function loadModel() {
  const [models, server] = await Promise.all([
    api('/v1/models').then((r) => r.json()),
    api('/v2').then((r) => r.json()).catch(() => null),
  ]);
  // Every served model, the default (what /v1/classify serves) first; a
  // picker when there are several, each then asked through its own route.
  state.models = models.models;
  state.server = server;
  const pick = $('model-pick');
  pick.replaceChildren(...state.models.map((m) => el('option', { value: m.name }, `${m.name} (${m.pe_type})`)));
  $('pick-box').hidden = state.models.length < 2;
  const kept = state.model && state.models.find((m) => m.name === state.model.name);
  const model = kept || state.models[0];
  pick.value = model.name;
  await useModel(model, server);
}

// --- the image as the model sees it ----------------------------------------

// PIL's antialiased bilinear resize (what the engine reproduces) along one
// axis, for `lines` lines of `inSize` samples read by get(line, i) and
// written by set(line, o, value).
function resizeAxis(inSize, outSize, lines, get, set) {
  const scale = inSize / outSize;
  const ss = Math.max(scale, 1);
  const w = new Float64Array(Math.ceil(ss) * 2 + 2);
  for (let o = 0; o < outSize; o++) {
    const center = (o + 0.5) * scale;
    const lo = Math.max(Math.trunc(center - ss + 0.5), 0);
    const hi = Math.min(Math.trunc(center + ss + 0.5), inSize);
    let norm = 0;
    for (let i = lo; i < hi; i++) {
      const x = Math.abs((i - center + 0.5) / ss);
      w[i - lo] = x < 1 ? 1 - x : 0;
      norm += w[i - lo];
    }
    for (let n = 0; n < lines; n++) {
      let acc = 0;
      for (let i = lo; i < hi; i++) acc += w[i - lo] * get(n, i);
      set(n, o, norm ? acc / norm : 0);
    }
  }
}

// ImageData -> the (h, w) input, gray or RGB, drawn into `canvas`.
function drawModelView(canvas, pixels, h, w, channels) {
  const sw = pixels.width;
  const sh = pixels.height;
  const d = pixels.data;
  const planes = channels === 1 ? 1 : 3;
  const src = new Float64Array(planes * sw * sh);
  for (let p = 0, i = 0; p < sw * sh; p++, i += 4) {
    if (planes === 1) src[p] = Math.trunc((d[i] * 299 + d[i + 1] * 587 + d[i + 2] * 114) / 1000); // PIL's "L"
    else for (let c = 0; c < 3; c++) src[c * sw * sh + p] = d[i + c];
  }
  const mid = new Float64Array(planes * sh * w); // rows resized
  const out = new Float64Array(planes * h * w);
  for (let c = 0; c < planes; c++) {
    const s0 = c * sw * sh;
    const m0 = c * sh * w;
    const o0 = c * h * w;
    resizeAxis(sw, w, sh, (row, x) => src[s0 + row * sw + x], (row, x, v) => { mid[m0 + row * w + x] = v; });
    resizeAxis(sh, h, w, (col, y) => mid[m0 + y * w + col], (col, y, v) => { out[o0 + y * w + col] = v; });
  }
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext('2d');
  const img = ctx.createImageData(w, h);
  for (let p = 0; p < w * h; p++) {
    for (let c = 0; c < 3; c++) {
      const v = out[(planes === 1 ? 0 : c) * h * w + p];
      img.data[p * 4 + c] = Math.min(255, Math.max(0, Math.round(v)));
    }
    img.data[p * 4 + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
}

// The picture's pixels, for the cards' drawings only (the API gets the file
// itself). A photo of many megapixels is first brought within
// PREVIEW_MAX_SIDE by the browser: the cards are at most a few hundred
// pixels wide, and the exact filter over the full photo would cost
// seconds and hundreds of MB for no visible difference.
const PREVIEW_MAX_SIDE = 2048;
async function decodePixels(blob) {
  try {
    const bitmap = await createImageBitmap(blob);
    const f = Math.min(1, PREVIEW_MAX_SIDE / Math.max(bitmap.width, bitmap.height));
    const c = document.createElement('canvas');
    c.width = Math.max(1, Math.round(bitmap.width * f));
    c.height = Math.max(1, Math.round(bitmap.height * f));
    const ctx = c.getContext('2d', { willReadFrequently: true });
    ctx.imageSmoothingQuality = 'high';
    ctx.drawImage(bitmap, 0, 0, c.width, c.height);
    bitmap.close();
    return ctx.getImageData(0, 0, c.width, c.height);
  } catch {
    return null; // the API will say what is wrong with it
  }
}

// --- the row -----------------------------------------------------------------

// "16, 20, 28x40" -> [{h, w}]; throws on a word that is not a size.
function parseResolutions(text) {
  const out = [];
  for (const word of text.split(/[\s,;]+/).filter(Boolean)) {
    const m = /^(\d{1,5})(?:[x×](\d{1,5}))?$/i.exec(word);
    if (!m) throw new Error(`"${word}" is not a size (N or HxW)`);
    const h = Number(m[1]);
    out.push({ h, w: m[2] ? Number(m[2]) : h });
  }
  if (out.length === 0) throw new Error('no resolution given');
  return out;
}

function resultCard(res, training) {
  const name = `${res.h}x${res.w}`;
  const canvas = el('canvas', { role: 'img', 'aria-label': `The image at ${res.h} by ${res.w} pixels, as the model sees it` });
  canvas.width = res.w;
  canvas.height = res.h;
  const heading = el('h3', {}, el('span', {}, name));
  if (res.h === training && res.w === training) heading.append(el('span', { class: 'tag' }, 'training'));
  const li = el('li', { class: 'res', 'data-resolution': name, 'data-state': 'pending', 'aria-busy': 'true' },
    heading, canvas, el('p', { class: 'lat' }, 'waiting…'));
  if (res.h === training && res.w === training) li.classList.add('training');
  return li;
}

function showAnswer(li, pred, timing, roundTripMs) {
  const top = el('ol', { class: 'top5', 'aria-label': `Top ${pred.top.length} at ${pred.resolution.join('x')}` });
  for (const t of pred.top) {
    const bar = el('span');
    bar.style.width = `${(t.score * 100).toFixed(1)}%`; // CSSOM: allowed by the CSP
    top.append(el('li', { 'data-score': String(t.score), 'data-index': String(t.index) },
      el('span', { class: 'label' }, t.label),
      el('span', { class: 'score' }, `${(t.score * 100).toFixed(1)}%`),
      el('span', { class: 'bar', 'aria-hidden': 'true' }, bar)));
  }
  li.querySelector('.lat').textContent =
    `${timing.total.toFixed(1)} ms in the server (compute ${timing.compute.toFixed(1)}), ${roundTripMs.toFixed(0)} ms round trip`;
  li.querySelector('.lat').before(top);
  li.dataset.state = 'done';
  li.removeAttribute('aria-busy');
}

function showError(li, err) {
  li.querySelector('.lat').replaceWith(el('p', { class: 'error' }, describe(err)));
  li.dataset.state = 'error';
  li.removeAttribute('aria-busy');
}

async function classify(blob, res, model) {
  const query = new URLSearchParams({ resolution: `${res.h}x${res.w}`, top_k: '5' });
  const t0 = performance.now();
  // the default model through /v1/classify, another through its own route
  const route = model === state.models[0] ? '/v1/classify'
    : `/v1/models/${encodeURIComponent(model.name)}/classify`;
  const resp = await api(`${route}?${query}`, {
    method: 'POST',
    headers: { 'Content-Type': blob.type || 'application/octet-stream' },
    body: blob,
  });
  const body = await resp.json();
  return { body, roundTripMs: performance.now() - t0 };
}

async function runRow() {
  const { image, model } = state;
  if (!image || !model) return;
  let resolutions;
  try {
    resolutions = parseResolutions($('res').value);
  } catch (err) {
    $('status').textContent = err.message;
    return;
  }
  const run = ++state.run;
  const row = $('row');
  row.setAttribute('aria-busy', 'true');
  delete row.dataset.complete;
  row.dataset.model = model.name; // whose answers the row shows
  const cards = resolutions.map((r) => resultCard(r, model.training_resolution));
  row.replaceChildren(...cards);
  $('status').textContent = `Classifying ${image.name} at ${resolutions.length} resolutions…`;
  performance.mark(`row-${run}-start`);
  let done = 0;
  let failed = 0;
  await Promise.all(resolutions.map(async (res, i) => {
    if (image.pixels) drawModelView(cards[i].querySelector('canvas'), image.pixels, res.h, res.w, model.channels);
    try {
      const { body, roundTripMs } = await classify(image.blob, res, model);
      if (run !== state.run) return;
      showAnswer(cards[i], body.predictions[0], body.timing_ms, roundTripMs);
    } catch (err) {
      if (run !== state.run) return;
      failed++;
      showError(cards[i], err);
    }
    done++;
  }));
  if (run !== state.run) return;
  const took = performance.measure(`row-${run}`, `row-${run}-start`).duration;
  row.removeAttribute('aria-busy');
  row.dataset.complete = 'true';
  $('status').textContent = `${image.name}: ${done - failed} of ${resolutions.length} resolutions answered in ${took.toFixed(0)} ms` +
    (failed ? `, ${failed} refused (the reasons are in the cards)` : '') + '.';
}

async function useImage(blob, name) {
  const url = URL.createObjectURL(blob);
  const preview = $('preview');
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = url;
  preview.alt = `The chosen image, ${name}`;
  preview.hidden = false;
  $('chosen').textContent = `${name}, ${blob.size} bytes`;
  state.image = { blob, name, pixels: await decodePixels(blob) };
  await runRow();
}

function setupInput() {
  $('file').addEventListener('change', () => {
    const f = $('file').files[0];
    if (f) useImage(f, f.name);
  });
  const drop = $('drop');
  drop.addEventListener('dragover', (e) => {
    e.preventDefault();
    drop.classList.add('over');
  });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    const f = e.dataTransfer.files[0];
    if (f) useImage(f, f.name);
  });
  $('res-form').addEventListener('submit', (e) => {
    e.preventDefault();
    if (state.image) runRow();
    else $('status').textContent = 'Choose an image or a sample first.';
  });
  $('model-pick').addEventListener('change', async () => {
    const model = state.models.find((m) => m.name === $('model-pick').value);
    if (!model) return;
    await useModel(model, state.server);
    if (state.image) runRow();
  });
  $('res-reset').addEventListener('click', () => {
    if (state.model) $('res').value = defaultResolutions(state.model).map(formatRes).join(', ');
  });
}

async function loadSamples() {
  const names = await (await fetch('/console/samples.json')).json();
  $('samples').replaceChildren(...names.map((name) => {
    const label = name.replace(/\.png$/, '');
    const b = el('button', { type: 'button' }, el('img', { src: `/console/samples/${name}`, alt: '' }), label);
    b.addEventListener('click', async () => {
      const blob = await (await fetch(`/console/samples/${name}`)).blob();
      useImage(blob, name);
    });
    return b;
  }));
}

// --- live panel --------------------------------------------------------------

const ms = (s) => (s === null ? '–' : s < 0.01 ? `${(s * 1000).toFixed(2)} ms` : `${(s * 1000).toFixed(1)} ms`);

async function scrape() {
  if (document.hidden) return;
  try {
    const text = await (await api('/metrics')).text();
    const now = { t: performance.now(), metrics: parseMetrics(text) };
    state.scrapes.push(now);
    while (state.scrapes.length > 2 && now.t - state.scrapes[0].t > METRICS_WINDOW_MS) state.scrapes.shift();
    const first = state.scrapes[0];
    const facts = $('live-facts');
    if (first === now) {
      $('live-msg').textContent = 'First scrape taken; rates follow at the next.';
      return;
    }
    const s = summarize(first.metrics, now.metrics, (now.t - first.t) / 1000);
    facts.replaceChildren();
    const fact = (name, value) => facts.append(el('dt', {}, name), el('dd', {}, value));
    fact('Inference requests/s', s.requestsPerSecond.toFixed(2));
    fact('Latency p50', ms(s.p50));
    fact('Latency p99', ms(s.p99));
    fact('Batch size (mean images)', s.batchSize === null ? '–' : s.batchSize.toFixed(2));
    fact('Queue depth', s.queueDepth === null ? '–' : String(s.queueDepth));
    $('live-msg').textContent = `Over the last ${((now.t - first.t) / 1000).toFixed(0)} s; latency of every endpoint. Updated ${new Date().toLocaleTimeString()}.`;
  } catch (err) {
    $('live-msg').textContent = `/metrics: ${describe(err)}`;
    $('live-msg').classList.add('error');
    return;
  }
  $('live-msg').classList.remove('error');
}

// --- start -------------------------------------------------------------------

let scraping = null;

async function start() {
  try {
    await loadModel();
  } catch (err) {
    $('server').textContent = `The API refused: ${describe(err)}`;
    return;
  }
  if (state.image) runRow();
  scrape();
  if (!scraping) scraping = setInterval(scrape, METRICS_EVERY_MS);
}

setupToken();
setupInput();
loadSamples().catch((err) => { $('samples').textContent = describe(err); });
start();
