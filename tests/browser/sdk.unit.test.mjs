// Unit tests of the SDK's pure parts (no DOM): batching, ack/retry bookkeeping, backoff, consent,
// rate limiting, helpers, the behavioural signals' detectors (trimtab-signals.js) at their
// thresholds; and the HTTP retry path driven through a stubbed fetch.
import { test } from 'node:test';
import assert from 'node:assert/strict';

await import('../../static/trimtab.js');
await import('../../static/trimtab-signals.js'); // loaded by trimtab.js after consent; no DOM needed to load it
const t = globalThis.trimtab;
const { Queue, Consent, Mouse, bucket, backoff, sendSplit, httpOutcome, wsOutcome, scrollDepth, deviceClass, browserFamily, clip, uuid, storage } = t._internal;
const { SIG, rage, reversals, reading, engaged, rms, motionState, motion, quickBack } = globalThis.trimtabSignals;

const ev = (id, extra = {}) => ({ id, type: 'scroll', session: 's', ts: 1, props: { depth: 1 }, ...extra });

test('backoff grows exponentially, is capped and jittered within [d/2, d]', () => {
  assert.equal(backoff(0, 500, 30000, () => 0), 250);
  assert.equal(backoff(0, 500, 30000, () => 1), 500);
  assert.equal(backoff(3, 500, 30000, () => 1), 4000);
  assert.equal(backoff(3, 500, 30000, () => 0), 2000);
  assert.equal(backoff(50, 500, 30000, () => 1), 30000);
  for (let i = 0; i < 100; i++) {
    const d = backoff(2);
    assert.ok(d >= 1000 && d <= 2000, `jitter out of range: ${d}`);
  }
});

test('queue: take respects count and byte limits and moves events in flight', () => {
  const q = new Queue();
  for (let i = 0; i < 5; i++) q.push(ev('e' + i));
  const b = q.take(3, 1e6, 100, 'ws');
  assert.deepEqual(b.map((e) => e.id), ['e0', 'e1', 'e2']);
  assert.equal(q.pending.length, 2);
  assert.equal(q.inflight.size, 3);
  assert.equal(q.inflight.get('e0').via, 'ws');
  // A byte limit smaller than one event still takes one (an event is never stuck).
  assert.equal(q.take(10, 1, 100, 'http').length, 1);
});

test('queue: ack removes, retry puts back in front with the same ids in order', () => {
  const q = new Queue();
  ['a', 'b', 'c', 'd'].forEach((id) => q.push(ev(id)));
  q.take(3, 1e6, 0, 'http');
  assert.equal(q.ack(['b', 'zzz']), 1);
  q.retry(['a', 'c']);
  assert.deepEqual(q.pending.map((e) => e.id), ['a', 'c', 'd']);
  assert.equal(q.inflight.size, 0);
  // Retried events are resent as they were: same id, same payload.
  const again = q.take(2, 1e6, 0, 'http');
  assert.deepEqual(again.map((e) => e.id), ['a', 'c']);
  assert.equal(again[0]._n, 2, 'send count is tracked');
});

test('queue: gives an event up after `tries` sends; drop counts; max size drops the oldest', () => {
  const q = new Queue(1000, 3);
  q.push(ev('x'));
  for (let i = 0; i < 3; i++) {
    q.take(1, 1e6, 0);
    q.retry(['x']);
  }
  assert.equal(q.pending.length, 0);
  assert.equal(q.dropped, 1);
  q.push(ev('y'));
  q.take(1, 1e6, 0);
  q.drop(['y']);
  assert.equal(q.dropped, 2);
  const small = new Queue(3);
  ['1', '2', '3', '4'].forEach((id) => small.push(ev(id)));
  assert.deepEqual(small.pending.map((e) => e.id), ['2', '3', '4']);
});

test('queue: ids(pred) finds what waited too long for an ack', () => {
  const q = new Queue();
  q.push(ev('old'));
  q.take(1, 1e6, 1000, 'ws');
  q.push(ev('new'));
  q.take(1, 1e6, 9000, 'beacon');
  assert.deepEqual(q.ids((f) => 12000 - f.at > 10000), ['old']);
  assert.deepEqual(q.ids((f) => f.via === 'beacon'), ['new']);
  assert.deepEqual(q.ids(), ['old', 'new']);
});

test('sendSplit: at most 100 per call, halves refused parts, returns what could not go', () => {
  const evs = Array.from({ length: 250 }, (_, i) => ev('e' + i));
  const calls = [];
  assert.deepEqual(sendSplit(evs, (c) => (calls.push(c.length), true)), []);
  assert.ok(calls.every((n) => n <= 100));
  assert.equal(calls.reduce((a, b) => a + b, 0), 250);
  // Parts over 10 events are refused (like a beacon over its quota): split until they fit.
  const sizes = [];
  assert.deepEqual(sendSplit(evs.slice(0, 40), (c) => (c.length <= 10 ? (sizes.push(c.length), true) : false)), []);
  assert.equal(sizes.reduce((a, b) => a + b, 0), 40);
  // A single refused event is handed back.
  assert.deepEqual(sendSplit([ev('z')], () => false).map((e) => e.id), ['z']);
});

test('outcomes: retry 5xx/429/network, re-auth on 401, never retry other 4xx', () => {
  assert.equal(httpOutcome(202), 'ack');
  assert.equal(httpOutcome(0), 'retry');
  assert.equal(httpOutcome(500), 'retry');
  assert.equal(httpOutcome(503), 'retry');
  assert.equal(httpOutcome(429), 'retry');
  assert.equal(httpOutcome(401), 'reauth');
  for (const s of [400, 403, 404, 413, 422]) assert.equal(httpOutcome(s), 'drop');
  assert.equal(wsOutcome('overloaded'), 'retry');
  assert.equal(wsOutcome('token_expired'), 'reauth');
  assert.equal(wsOutcome('invalid_value'), 'drop');
  assert.equal(wsOutcome('unknown_field'), 'drop');
});

test('bucket: bursts, then refills at the rate', () => {
  const take = bucket(10, 5);
  let ok = 0;
  for (let i = 0; i < 20; i++) ok += take(1000) ? 1 : 0;
  assert.equal(ok, 5);
  assert.ok(take(1100), '100 ms at 10/s refills one token');
  assert.ok(!take(1100));
});

const memStore = () => storage(null);

test('consent: pending by default, nothing stored until a choice', () => {
  const s = memStore();
  const c = new Consent(s, false);
  assert.equal(c.state, 'pending');
  assert.equal(s.get('trimtab.consent'), undefined);
  assert.deepEqual(c.get(), { state: 'pending', analytics: false, personalization: false });
});

test('consent: a refusal is stored and survives a reload', () => {
  const s = memStore();
  new Consent(s, false).set({ analytics: false, personalization: false });
  const again = new Consent(s, false);
  assert.equal(again.state, 'denied');
  assert.equal(JSON.parse(s.get('trimtab.consent')).state, 'denied');
});

test('consent: granted is stored; personalization needs analytics', () => {
  const s = memStore();
  const c = new Consent(s, false);
  c.set({ analytics: true, personalization: true });
  assert.deepEqual(new Consent(s, false).get(), { state: 'granted', analytics: true, personalization: true });
  c.set({ analytics: false, personalization: true });
  assert.deepEqual(c.get(), { state: 'denied', analytics: false, personalization: false });
  c.set({ analytics: true });
  assert.deepEqual(c.get(), { state: 'granted', analytics: true, personalization: false });
});

test('consent: GPC/DNT starts as denied (not stored); an explicit choice overrides it; reset', () => {
  const s = memStore();
  const c = new Consent(s, true);
  assert.equal(c.state, 'denied');
  assert.equal(s.get('trimtab.consent'), undefined);
  c.set({ analytics: true, personalization: true });
  assert.equal(new Consent(s, true).state, 'granted', 'a stored explicit choice wins over the signal');
  c.reset();
  assert.equal(c.state, 'pending');
  assert.equal(new Consent(s, true).state, 'denied');
});

test('helpers: scroll depth, mouse summary, clip, device and browser, uuid', () => {
  assert.equal(scrollDepth(0, 800, 800), 100);
  assert.equal(scrollDepth(0, 1000, 4000), 25);
  assert.equal(scrollDepth(3000, 1000, 4000), 100);
  assert.equal(scrollDepth(1000, 1000, 4000), 50);
  const m = new Mouse(0);
  m.add(0, 0, 0);
  m.add(3, 4, 20); // too soon (< 50 ms): not sampled
  m.add(30, 40, 100);
  m.add(60, 80, 200);
  assert.deepEqual(m.summary(1000), { speed: 500, path_px: 100, idle_ms: 800 });
  assert.equal(m.summary(2000), false, 'no movement, no summary');
  assert.equal(clip('a\nb\u0007c'), 'a b c');
  assert.ok(new TextEncoder().encode(clip('é'.repeat(300))).length <= 256);
  assert.ok(clip('x'.repeat(100), 64).length <= 64);
  assert.equal(deviceClass('Mozilla/5.0 (iPhone; CPU iPhone OS 17_0) Mobile/15E148'), 'mobile');
  assert.equal(deviceClass('Mozilla/5.0 (iPad; CPU OS 17_0)'), 'tablet');
  assert.equal(deviceClass('Mozilla/5.0 (Linux; Android 14; SM-X710)'), 'tablet');
  assert.equal(deviceClass('Mozilla/5.0 (X11; Linux x86_64)'), 'desktop');
  assert.equal(browserFamily('Mozilla/5.0 Chrome/120 Safari/537.36 Edg/120'), 'edge');
  assert.equal(browserFamily('Mozilla/5.0 (X11) Gecko/20100101 Firefox/121.0'), 'firefox');
  assert.equal(browserFamily('Mozilla/5.0 HeadlessChrome/120 Safari/537.36'), 'chrome');
  assert.equal(browserFamily('Mozilla/5.0 (Macintosh) Version/17.1 Safari/605.1.15'), 'safari');
  assert.equal(browserFamily('curl/8'), 'other');
  const ids = new Set(Array.from({ length: 1000 }, uuid));
  assert.equal(ids.size, 1000);
  assert.ok([...ids].every((id) => id.length <= 64));
});

// ---- Behavioural signals: the pure detectors, at their thresholds ----

test('signals: the default thresholds', () => {
  assert.deepEqual(SIG, {
    rageClicks: 3, rageMs: 1000, ragePx: 30, deadMs: 1000, hesitateMs: 1500, idleMs: 2000, reversals: 4, reversalMs: 6000,
    reversalPx: 40, quickBackMs: 10000, engageMs: 15000, exitMs: 5000, readMs: 5000, readWords: 30,
  });
});

test('rage clicks: the 3rd click within 1000 ms and 30 px of the first, once per burst', () => {
  let r = rage();
  assert.equal(r(100, 100, 0), false);
  assert.equal(r(110, 100, 200), false, '2 clicks are no burst');
  assert.deepEqual(r(100, 110, 400), { count: 3, duration_ms: 400 }, 'the 3rd click is');
  assert.equal(r(100, 100, 500), false, 'the same burst goes on: not again');
  assert.equal(r(100, 100, 600), false);
  // 999 vs 1001 ms after the burst's first click (1000 still counts)
  r = rage();
  r(0, 0, 0), r(0, 0, 500);
  assert.deepEqual(r(0, 0, 999), { count: 3, duration_ms: 999 });
  r = rage();
  r(0, 0, 0), r(0, 0, 500);
  assert.equal(r(0, 0, 1001), false, 'too late: a new burst starts here');
  assert.equal(r(0, 0, 1500), false);
  assert.deepEqual(r(0, 0, 1600), { count: 3, duration_ms: 599 }, 'the new burst counts from its own first click');
  r = rage();
  r(0, 0, 0), r(0, 0, 10);
  assert.deepEqual(r(0, 0, 1000), { count: 3, duration_ms: 1000 });
  // 29 vs 31 px from the first click (Euclidean)
  r = rage();
  r(0, 0, 0), r(20, 21, 100);
  assert.deepEqual(r(-20, -21, 200), { count: 3, duration_ms: 200 }, '29 px away on both sides');
  r = rage();
  r(0, 0, 0), r(10, 0, 100);
  assert.equal(r(31, 0, 200), false, '31 px from the first click: a new burst');
  assert.equal(r(31, 0, 300), false);
  assert.deepEqual(r(31, 0, 400), { count: 3, duration_ms: 200 });
  // overrides
  r = rage({ ...SIG, rageClicks: 4, ragePx: 5 });
  r(0, 0, 0), r(4, 0, 1), r(0, 4, 2);
  assert.deepEqual(r(0, 0, 3), { count: 4, duration_ms: 3 });
});

test('excessive scroll: 4 reversals after legs of at least 40 px within 6000 ms', () => {
  const run = (ys, dt = 100, f = reversals()) => ys.map((y, i) => f(y, i * dt));
  // 0 → 40 → 0 → 40 → 0 → 40: four reversals, each after a 40 px leg; reported at the 4th, once
  assert.deepEqual(run([0, 40, 0, 40, 0, 40]), [false, false, false, false, false, 4]);
  assert.deepEqual(run([0, 39, 0, 39, 0, 39, 0, 39]).filter(Boolean), [], '39 px legs are not reversals');
  assert.deepEqual(run([0, 40, 0, 40, 0]).filter(Boolean), [], '3 reversals are not enough');
  // Several samples per leg; a pause without movement is no reversal
  assert.equal(run([0, 20, 40, 40, 30, 0, 20, 40, 10, 0, 50]).pop(), 4);
  // The window: 4 reversals over 6000 ms count, over 6001 ms not
  const at = (ts, f = reversals()) => [0, 40, 0, 40, 0, 40].map((y, i) => f(y, ts[i]));
  assert.equal(at([0, 0, 0, 2000, 4000, 6000]).pop(), 4);
  assert.equal(at([0, 0, 0, 2000, 4000, 6001]).pop(), false);
  // Cleared after a report: the next 4 are needed again
  const f = reversals();
  run([0, 40, 0, 40, 0, 40], 100, f);
  assert.deepEqual([0, 40, 0, 40].map((y, i) => f(y, 1000 + i * 100)), [false, false, false, 4]);
  assert.equal(run([0, 10, 0, 10, 0, 10], 100, reversals({ ...SIG, reversalPx: 10, reversals: 4 })).pop(), 4, 'overrides');
});

test('reading: words read per minute, once the window has 5000 ms and 30 words', () => {
  let r = reading();
  assert.equal(r(30, 1000), false, 'the window starts at the first reveal');
  assert.equal(r(0, 5999), false, '4999 ms');
  assert.equal(r(0, 6000), 360, '5000 ms: 30 words × 60000 / 5000');
  assert.equal(r(0, 20000), false, 'a new window, empty');
  r(100, 30000);
  assert.equal(r(0, 37000), 857.1, '100 words in 7 s, one decimal');
  r = reading();
  r(29, 0);
  assert.equal(r(0, 60000), false, '29 words');
  assert.equal(r(1, 60000), false, 'the words revealed now were not read yet');
  assert.equal(r(0, 60000), 30);
  r = reading();
  r(5000, 0);
  assert.equal(r(0, 5000), 10000, 'at most 10000 wpm (skimming)');
  r = reading({ ...SIG, readMs: 1000, readWords: 10 });
  r(10, 0);
  assert.equal(r(0, 1000), 600, 'overrides');
});

test('engagement: visible time with input in the 5000 ms before', () => {
  let e = engaged();
  assert.equal(e(1000), 0, 'no input, no engagement');
  e(1000, 1);
  assert.equal(e(4000), 3000);
  assert.equal(e(4000), 0, 'taken: from 0 again');
  assert.equal(e(10000), 2000, 'up to 5000 ms after the last input (1000 + 5000)');
  e = engaged();
  e(0, 1), e(4999, 1);
  assert.equal(e(9999), 9999, 'inputs 4999 ms apart: engaged throughout');
  e = engaged();
  e(0, 1), e(5001, 1);
  assert.equal(e(6001), 6000, 'a gap of 5001 ms: 1 ms not engaged');
  e = engaged();
  e(0, 1);
  assert.equal(e(2000, 0, 1), 2000, 'hidden: the remainder');
  assert.equal(e(4000), 0, 'nothing while hidden, until the next input');
  e(10000, 1);
  assert.equal(e(11000), 1000);
  e = engaged();
  for (let t = 0; t <= 70000; t += 1000) e(t, 1);
  assert.equal(e(70000), 60000, 'at most 60000 ms a report');
});

test('motion: RMS of the linear acceleration, still < 0.5 ≤ walking < 4 ≤ shaking; reported on change', () => {
  assert.equal(rms([3, 4]), Math.sqrt(12.5));
  assert.equal(motionState(0), 'still');
  assert.equal(motionState(0.49), 'still');
  assert.equal(motionState(0.5), 'walking');
  assert.equal(motionState(3.99), 'walking');
  assert.equal(motionState(4), 'shaking');
  const lin = (x, y = 0, z = 0) => ({ acceleration: { x, y, z }, accelerationIncludingGravity: { x, y: y + 9.81, z } });
  // A window closes at the first sample 2000 ms after its first; samples every 100 ms
  let T = 0;
  const m = motion();
  const feed = (mag, tilt, out = []) => {
    for (let i = 0; i < 20; i++) out.push(m(lin(i % 2 ? mag : -mag), (T += 100), tilt));
    return out.filter(Boolean);
  };
  assert.equal(m(lin(0.1), 0), undefined);
  assert.deepEqual(feed(0.1), [{ state: 'still', tilt: undefined }], 'one report a window');
  assert.deepEqual(feed(0.1), [], 'unchanged: none');
  assert.deepEqual(feed(0.49), []);
  assert.deepEqual(feed(0.5), [{ state: 'walking', tilt: undefined }]);
  assert.deepEqual(feed(3.99), []);
  assert.deepEqual(feed(4), [{ state: 'shaking', tilt: undefined }]);
  assert.deepEqual(feed(6, 30), [{ state: 'shaking', tilt: 30 }], 'a tilt seen');
  assert.deepEqual(feed(6, 44), [], 'tilt 14° from the last report: none');
  assert.deepEqual(feed(6, 15), [{ state: 'shaking', tilt: 15 }], '15°: reported');
  assert.deepEqual(feed(2, 15), [{ state: 'walking', tilt: 15 }]);
  assert.ok(JSON.stringify(feed(0.1)[0]) === '{"state":"still"}', 'no tilt seen: none sent');
  // At least 5 samples in a window
  const samples = (ts, f = motion()) => ts.map((t) => f(lin(9), t)).filter(Boolean);
  assert.deepEqual(samples([0, 700, 1400, 2000]), [], '4 samples: too few');
  assert.deepEqual(samples([0, 500, 1000, 1500, 2000]), [{ state: 'shaking', tilt: undefined }], '5 samples');
  // Without acceleration (nulls): gravity included, minus its running mean
  const g = motion(), out = [];
  for (let t = 0; t <= 2000; t += 100) out.push(g({ acceleration: { x: null, y: null, z: null }, accelerationIncludingGravity: { x: 0, y: 9.81, z: 0 } }, t));
  assert.deepEqual(out.filter(Boolean), [{ state: 'still', tilt: undefined }], 'gravity alone is stillness');
  assert.equal(motion()({ acceleration: null, accelerationIncludingGravity: null }, 0), undefined, 'no data: nothing');
});

test('quick back: back within 30000 ms from another page shown less than 10000 ms', () => {
  const left = (at, shown_ms, path = '/a') => ({ path, at, shown_ms });
  assert.equal(quickBack(left(0, 9999), '/b', 29999, true), 9999);
  assert.equal(quickBack(left(0, 10000), '/b', 29999, true), null, 'shown 10000 ms: no');
  assert.equal(quickBack(left(0, 3000), '/b', 30001, true), null, '30001 ms ago: no');
  assert.equal(quickBack(left(0, 3000), '/a', 1000, true), null, 'the same page: no');
  assert.equal(quickBack(left(0, 3000), '/b', 1000, false), null, 'not a back/forward navigation');
  assert.equal(quickBack(null, '/b', 1000, true), null);
  assert.equal(quickBack(left(0, 0), '/b', 1000, true), 0);
  assert.equal(quickBack(left(0, 12000), '/b', 1000, true, { ...SIG, quickBackMs: 15000 }), 12000, 'overrides');
});

test('without a DOM: nothing is sent before consent; after it, failed batches are resent with the same ids', async () => {
  const calls = [];
  let eventsCalls = 0;
  globalThis.fetch = async (url, init) => {
    const path = new URL(url).pathname;
    const body = init.body ? JSON.parse(init.body) : null;
    calls.push({ path, body, auth: init.headers.authorization });
    const json = (status, obj, headers = {}) => new Response(JSON.stringify(obj), { status, headers });
    if (path === '/v1/anonymous') return json(200, { user: 'anon-1', token: 'tt1.test', expires_at: Date.now() / 1000 + 3600 });
    if (path === '/v1/events') return ++eventsCalls <= 2 ? json(500, { error: { code: 'internal', message: 'boom' } }) : json(202, { accepted: body.events.length });
    return json(404, {});
  };
  t.init({ endpoint: 'http://trimtab.test', page: '/article/x' });
  assert.equal(t.consent().state, 'pending');
  t.conversion('nope', 1);
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(calls.length, 0, 'nothing sent before consent');

  t.consent({ analytics: true, personalization: true });
  t.conversion('signup', 5);
  const deadline = Date.now() + 8000;
  while (eventsCalls < 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  const posts = calls.filter((c) => c.path === '/v1/events');
  assert.ok(posts.length >= 3, `expected a retry after two 500s, saw ${posts.length} posts`);
  const ids = (c) => c.body.events.map((e) => e.id);
  assert.deepEqual(ids(posts[1]), ids(posts[0]), 'first retry carries the same ids');
  assert.deepEqual(ids(posts[2]), ids(posts[0]), 'second retry carries the same ids');
  assert.equal(posts[0].auth, 'Bearer tt1.test');
  const types = posts[0].body.events.map((e) => e.type);
  assert.deepEqual(types, ['page_view', 'conversion']);
  for (const e of posts[0].body.events) {
    assert.deepEqual(Object.keys(e).sort(), ['consent', 'context', 'id', 'props', 'session', 'ts', 'type'], 'only wire fields (no bookkeeping)');
    assert.deepEqual(e.consent, { analytics: true, personalization: true });
  }
  // Withdrawing consent stops everything and forgets the stored identity.
  t.consent({ analytics: false });
  const before = calls.length;
  t.conversion('after', 1);
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(calls.length, before);
});
