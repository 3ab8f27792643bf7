// Unit tests of the SDK's pure parts (no DOM): batching, ack/retry bookkeeping, backoff, consent,
// rate limiting, helpers; and the HTTP retry path driven through a stubbed fetch.
import { test } from 'node:test';
import assert from 'node:assert/strict';

await import('../../static/trimtab.js');
const t = globalThis.trimtab;
const { Queue, Consent, Mouse, bucket, backoff, sendSplit, httpOutcome, wsOutcome, scrollDepth, deviceClass, browserFamily, clip, uuid, storage } = t._internal;

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
