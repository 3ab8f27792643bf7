// The SDK and the demo in a real browser (Debian chromium) against the real server binary, with
// the network observed: consent gating, the three example rules, the side panel, first-paint
// decide timeout, HTTP retries with the same ids, and sendBeacon when the page is hidden.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, launchBrowser, screenshot, admin, waitFor, recordApiTraffic, recordSocket, scrollTo, GRANTED } from './support.mjs';

let server, browser;
before(async () => {
  server = await startServer();
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

const VIEWPORT = { width: 1400, height: 900 };

const identify = async (user) => {
  const r = await fetch(server.url + '/v1/identify', {
    method: 'POST',
    headers: { authorization: `Bearer ${server.writeKey}`, 'content-type': 'application/json' },
    body: JSON.stringify({ user }),
  });
  assert.equal(r.status, 200, 'identify');
  return r.json();
};

/** A page of a site with its own user ids: the token is rendered into the page. */
const identifiedPage = (token, user) => `<!doctype html><html><head><meta charset="utf-8"><link rel="icon" href="data:,">
<script src="/trimtab.js"></script>
<script>trimtab.init({ token: ${JSON.stringify(token)}, user: ${JSON.stringify(user)}, banner: true, page: '/article/identified' })</script>
</head><body style="height:4000px"><h1 data-trimtab-track="headline">Hello</h1>
<div data-trimtab-track="product-image" style="width:300px;height:300px;background:#ccc">image</div>
<div data-trimtab-slot="offer">default<template data-trimtab-variant="discount"><b data-trimtab-param="code">X</b></template></div>
</body></html>`;

test('without consent nothing is sent or stored, a refusal is remembered, GPC means denied', async () => {
  const ctx = await browser.newContext({ viewport: VIEWPORT });
  const page = await ctx.newPage();
  const traffic = recordApiTraffic(page);
  await page.goto(server.url + '/demo/article.html');
  await page.waitForSelector('#trimtab-banner');
  await screenshot(page, 'demo-article-first-visit');
  await scrollTo(page, 90);
  await page.goto(server.url + '/demo/product.html');
  await page.hover('[data-trimtab-track="product-image"]');
  await page.waitForTimeout(3500);
  assert.deepEqual(traffic, [], 'no request to /v1/* while consent is pending');
  assert.deepEqual(await page.evaluate(() => Object.keys(localStorage)), [], 'nothing stored while pending');
  assert.equal(await page.getAttribute('[data-trimtab-slot="product-detail"]', 'data-trimtab-variant'), null);

  await page.click('[data-trimtab-consent="none"]');
  await page.mouse.move(10, 10);
  await page.hover('[data-trimtab-track="product-image"]');
  await page.waitForTimeout(1500);
  assert.deepEqual(traffic, [], 'no request after a refusal');
  const stored = await page.evaluate(() => ({ ...localStorage }));
  assert.deepEqual(Object.keys(stored), ['trimtab.consent'], 'only the refusal itself is stored');
  assert.equal(JSON.parse(stored['trimtab.consent']).state, 'denied');
  await page.reload();
  await page.waitForTimeout(500);
  assert.equal(await page.$('#trimtab-banner'), null, 'the refusal is remembered: no banner again');
  assert.equal(await page.textContent('[data-testid="consent-state"]'), 'denied');
  assert.deepEqual(traffic, []);
  await ctx.close();

  // A site with its own ids renders a token into the page; still nothing before consent.
  const user = 'visitor-no-consent';
  const { token } = await identify(user);
  const ctx2 = await browser.newContext({ viewport: VIEWPORT });
  const page2 = await ctx2.newPage();
  const traffic2 = recordApiTraffic(page2);
  await page2.route('**/test/identified.html', (r) => r.fulfill({ contentType: 'text/html', body: identifiedPage(token, user) }));
  await page2.goto(server.url + '/test/identified.html');
  await page2.mouse.wheel(0, 3000);
  await page2.hover('[data-trimtab-track="product-image"]');
  await page2.waitForTimeout(2000);
  assert.deepEqual(traffic2, []);
  const exp = await admin(server, 'GET', `/v1/users/${user}`);
  assert.equal(exp.status, 404, 'the server holds nothing about this visitor');
  await ctx2.close();

  // Global Privacy Control: denied from the start, no banner, nothing sent.
  const ctx3 = await browser.newContext({ viewport: VIEWPORT });
  await ctx3.addInitScript(() => Object.defineProperty(Navigator.prototype, 'globalPrivacyControl', { get: () => true }));
  const page3 = await ctx3.newPage();
  const traffic3 = recordApiTraffic(page3);
  await page3.goto(server.url + '/demo/article.html');
  await page3.waitForTimeout(800);
  assert.equal(await page3.$('#trimtab-banner'), null);
  assert.equal(await page3.evaluate(() => trimtab.consent().state), 'denied');
  await scrollTo(page3, 90);
  await page3.waitForTimeout(500);
  assert.deepEqual(traffic3, []);
  assert.deepEqual(await page3.evaluate(() => Object.keys(localStorage)), []);
  await ctx3.close();
});

test('new visitor: consent, scroll past 75% → offer; hover the product image 3 s → review while hovering; panel explains', async () => {
  const ctx = await browser.newContext({ viewport: VIEWPORT });
  const page = await ctx.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e));
  const sock = recordSocket(page);
  await page.goto(server.url + '/demo/article.html');
  await page.click('[data-trimtab-consent="all"]');
  await waitFor(() => sock.ready, { what: 'WebSocket ready' });
  assert.equal(await page.evaluate(async () => (await import('/trimtab.mjs')).default === window.trimtab), true, 'ES module import');

  // Halfway: no offer yet.
  await scrollTo(page, 50);
  await page.waitForTimeout(1200);
  assert.equal(await page.getAttribute('[data-trimtab-slot="offer"]', 'data-trimtab-variant'), null, 'no offer at 50%');
  await screenshot(page, 'demo-article-before-offer');

  // Past 75%: the offer is swapped in, params as text.
  await scrollTo(page, 82);
  const offer = page.locator('[data-trimtab-slot="offer"][data-trimtab-variant="discount"]');
  await offer.waitFor({ timeout: 10000 });
  assert.match(await offer.textContent(), /READ15/);
  assert.match(await offer.textContent(), /Enjoying the read\? Take 15% off your first order\./);
  await offer.evaluate((el) => el.scrollIntoView({ block: 'center' }));
  const adjust = sock.received.find((m) => m.type === 'adjust' && m.slot === 'offer');
  assert.equal(adjust.decision.rule, 'scroll_offer');
  await waitFor(() => sock.sent.find((e) => e.type === 'impression' && e.props.slot === 'offer' && e.props.decision === adjust.decision.id), { what: 'impression of the offer' });
  // The side panel shows the detected scroll depth and the reason for the change.
  await waitFor(async () => parseFloat(await page.textContent('[data-testid="scroll-max"]')) > 75, { what: 'panel scroll depth' });
  assert.match(await page.textContent('[data-testid="why"]'), /offer → discount[\s\S]*rule scroll_offer/);
  // …and the session's signals, live: read past 75 %, an intent of at least 1 − e^−0.75 ≈ 53 %.
  await waitFor(async () => parseFloat(await page.textContent('[data-testid="signal-intent"]')) >= 52, { what: 'panel intent score' });
  assert.equal(await page.textContent('[data-testid="signal-frustration"]'), '0 %');
  await screenshot(page, 'demo-article-offer');

  // Clicks inside the adjusted slot carry its decision.
  await page.evaluate(() => document.querySelector('[data-trimtab-slot="offer"] a').addEventListener('click', (e) => e.preventDefault()));
  await page.click('[data-trimtab-slot="offer"] a');
  await waitFor(() => sock.sent.find((e) => e.type === 'click' && e.props.decision === adjust.decision.id), { what: 'click with decision id' });
  await waitFor(() => sock.sent.find((e) => e.type === 'conversion' && e.props.decision === adjust.decision.id), { what: 'conversion with decision id' });

  // Product page: consent is remembered; rest the pointer on the image.
  const sock2 = recordSocket(page);
  await page.goto(server.url + '/demo/product.html');
  await waitFor(() => sock2.ready, { what: 'WebSocket ready on the product page' });
  await screenshot(page, 'demo-product-before');
  const img = page.locator('[data-trimtab-track="product-image"]');
  const box = await img.boundingBox();
  await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2, { steps: 5 });
  const t0 = Date.now();
  const review = page.locator('[data-trimtab-slot="product-detail"][data-trimtab-variant="review"]');
  await review.waitFor({ timeout: 10000 });
  const elapsed = Date.now() - t0;
  assert.ok(elapsed >= 2800, `the review came after ${elapsed} ms (rule: > 3 s of hovering)`);
  assert.ok(await img.evaluate((el) => el.matches(':hover')), 'the pointer is still on the image');
  assert.ok(!sock2.sent.some((e) => e.type === 'hover' && e.target === 'product-image' && e.props.phase === 'end'), 'the hover has not ended');
  assert.ok(sock2.sent.some((e) => e.type === 'hover' && e.props.phase === 'heartbeat'), 'heartbeats while hovering');
  assert.match(await review.textContent(), /Rated 4\.7 out of 5 by 2,300 customers/);
  assert.match(await review.textContent(), /Better in person than in the photos\./);
  await waitFor(async () => parseFloat(await page.textContent('[data-testid="hover-product-image"]')) >= 3, { what: 'panel hover time' });
  assert.match(await page.textContent('[data-testid="sequence"]'), /hover:product-image/);
  assert.match(await page.textContent('[data-testid="why"]'), /product-detail → review[\s\S]*rule hover_review/);
  await screenshot(page, 'demo-product-review');

  // Every event the server got was valid: nothing was rejected.
  assert.ok(!sock.received.concat(sock2.received).some((m) => m.type === 'error'), 'no error from the server');
  assert.deepEqual(errors, []);

  // Forget me: the server erases the visitor; consent is asked again.
  const user = await page.evaluate(() => JSON.parse(localStorage['trimtab.id']).user);
  assert.equal((await admin(server, 'GET', `/v1/users/${user}`)).status, 200);
  await page.click('[data-testid="forget"]');
  await page.waitForSelector('#trimtab-banner');
  assert.equal((await admin(server, 'GET', `/v1/users/${user}`)).status, 404, 'erased');
  assert.deepEqual(await page.evaluate(() => Object.keys(localStorage)), []);
  await ctx.close();
});

test('the call to action follows the time of day (morning)', async () => {
  // A time zone where it is 08:xx now.
  const off = (((8 - new Date().getUTCHours()) % 24) + 36) % 24 - 12; // -12..11
  const tz = off === 0 ? 'Etc/GMT' : `Etc/GMT${off > 0 ? '-' : '+'}${Math.abs(off)}`;
  const ctx = await browser.newContext({ viewport: VIEWPORT, timezoneId: tz });
  await ctx.addInitScript((v) => localStorage.setItem('trimtab.consent', v), GRANTED);
  const page = await ctx.newPage();
  await page.goto(server.url + '/');
  assert.ok([8, 9].includes(await page.evaluate(() => new Date().getHours())), `local hour in ${tz}`);
  await page.mouse.wheel(0, 300);
  const cta = page.locator('[data-trimtab-slot="cta"][data-trimtab-variant="morning"]');
  await cta.waitFor({ timeout: 10000 });
  assert.match(await cta.textContent(), /Start your day with 10% off\./);
  assert.match(await cta.textContent(), /Claim the morning deal/);
  await page.waitForTimeout(1500);
  assert.equal(await page.getAttribute('[data-trimtab-slot="cta"]', 'data-trimtab-variant'), 'morning', 'the first-paint decision does not undo a pushed variant');
  await cta.evaluate((el) => el.scrollIntoView({ block: 'center' }));
  await screenshot(page, 'demo-home-morning-cta');
  await ctx.close();
});

test('first paint: decided slots are hidden at most ~1 s, even when the server is slow', async () => {
  const ctx = await browser.newContext({ viewport: VIEWPORT });
  await ctx.addInitScript((v) => localStorage.setItem('trimtab.consent', v), GRANTED);
  const page = await ctx.newPage();
  await page.route('**/v1/decide', async (r) => {
    await new Promise((ok) => setTimeout(ok, 3000));
    await r.continue().catch(() => {});
  });
  await page.goto(server.url + '/demo/product.html', { waitUntil: 'commit' });
  const t0 = Date.now();
  await page.waitForFunction(() => {
    const el = document.querySelector('[data-trimtab-slot="cta"]');
    return el && getComputedStyle(el).visibility === 'visible' && el.offsetHeight > 0;
  }, null, { timeout: 5000, polling: 20 });
  const shown = Date.now() - t0;
  assert.ok(shown < 1500, `the slot stayed hidden ${shown} ms`);
  assert.equal(await page.evaluate(() => getComputedStyle(document.body).visibility), 'visible', 'never the whole page');
  await ctx.close();
});

test('HTTP fallback: failed batches are resent with the same ids; sendBeacon when hidden', async () => {
  const ctx = await browser.newContext({ viewport: VIEWPORT });
  await ctx.addInitScript((v) => {
    localStorage.setItem('trimtab.consent', v);
    delete window.WebSocket; // force the HTTP path
  }, GRANTED);
  const page = await ctx.newPage();
  const posts = [];
  let failures = 0;
  await page.route('**/v1/events', async (route) => {
    const req = route.request();
    const body = JSON.parse(req.postData());
    const entry = { ids: body.events.map((e) => e.id), events: body.events, token: body.token, type: req.headers()['content-type'], status: 0 };
    posts.push(entry);
    if (!body.token && failures < 2) {
      failures++;
      entry.status = 500;
      return route.fulfill({ status: 500, contentType: 'application/json', body: '{"error":{"code":"internal","message":"test"}}' });
    }
    const res = await route.fetch();
    entry.status = res.status();
    return route.fulfill({ response: res });
  });
  await page.goto(server.url + '/demo/article.html');
  await scrollTo(page, 40);
  await waitFor(() => posts.some((p) => p.status === 202), { timeout: 15000, what: 'a successful POST after two 500s' });
  const [first, second] = posts;
  assert.equal(first.status, 500);
  assert.equal(second.status, 500);
  assert.deepEqual(second.ids.slice(0, first.ids.length), first.ids, 'the retry resends the same ids first');
  const ok = posts.find((p) => p.status === 202);
  assert.deepEqual(ok.ids.slice(0, first.ids.length), first.ids, 'the accepted batch carries the same ids');

  // Hidden: the rest goes by sendBeacon, text/plain with the token in the body.
  await page.hover('[data-trimtab-track="headline"]').catch(() => {});
  await page.evaluate(() => {
    Object.defineProperty(document, 'visibilityState', { value: 'hidden', configurable: true });
    Object.defineProperty(document, 'hidden', { value: true, configurable: true });
    document.dispatchEvent(new Event('visibilitychange'));
  });
  const beacon = await waitFor(() => posts.find((p) => p.token), { what: 'a beacon' });
  assert.match(beacon.type, /^text\/plain/);
  assert.ok(beacon.events.some((e) => e.type === 'visibility' && e.props.visible === false));
  await waitFor(() => beacon.status === 202, { what: 'the beacon accepted by the server' });

  // Visible again: a visibility event over HTTP.
  await page.evaluate(() => {
    Object.defineProperty(document, 'visibilityState', { value: 'visible', configurable: true });
    Object.defineProperty(document, 'hidden', { value: false, configurable: true });
    document.dispatchEvent(new Event('visibilitychange'));
  });
  await waitFor(() => posts.some((p) => !p.token && p.events.some((e) => e.type === 'visibility' && e.props.visible === true)), { what: 'visible again' });

  // The server stored the retried events exactly once.
  const user = await page.evaluate(() => JSON.parse(localStorage['trimtab.id']).user);
  const exp = await waitFor(async () => {
    const r = await admin(server, 'GET', `/v1/users/${user}`);
    return r.status === 200 && r.body;
  }, { what: 'export' });
  const storedIds = (exp.events || []).map((e) => e.id);
  for (const id of first.ids) assert.equal(storedIds.filter((x) => x === id).length, 1, `event ${id} stored once`);
  await screenshot(page, 'demo-article-http-fallback');
  await ctx.close();
});

// Issue 15's fast scroll path: a crossed depth milestone goes out at once instead of waiting for
// the 250 ms throttle (or the 300 ms idle timer). Measured from the scroll that crosses 75% to the
// offer swapped into the page (a MutationObserver), three fresh visitors; the figures are printed
// (BENCHMARKS.md records them). The bound checked is loose — the old path took 270 ms — so a busy
// machine does not fail it; the target (≤ 50 ms on localhost) is what the printed figures show.
test('crossing 75% changes the page within tens of milliseconds (the milestone goes out at once)', async () => {
  const took = [];
  for (let run = 0; run < 3; run++) {
    const ctx = await browser.newContext({ viewport: VIEWPORT });
    const page = await ctx.newPage();
    const sock = recordSocket(page);
    await page.goto(server.url + '/demo/article.html');
    await page.click('[data-trimtab-consent="all"]');
    await waitFor(() => sock.ready, { what: 'WebSocket ready' });
    await scrollTo(page, 60);
    await page.waitForTimeout(700); // the 60% has gone out; the next scroll is within 250 ms of nothing
    const ms = await page.evaluate(() => new Promise((resolve) => {
      const slot = document.querySelector('[data-trimtab-slot="offer"]');
      const el = document.documentElement;
      const docH = Math.max(el.scrollHeight, document.body.scrollHeight);
      let t0 = 0;
      new MutationObserver(() => {
        if (slot.getAttribute('data-trimtab-variant') === 'discount') resolve(performance.now() - t0);
      }).observe(slot, { attributes: true });
      // Two steps 100 ms apart: 70% (no milestone), then 80% (crosses 75%) — the throttle alone
      // would hold the second back.
      window.scrollTo(0, 0.7 * docH - innerHeight);
      setTimeout(() => { t0 = performance.now(); window.scrollTo(0, 0.8 * docH - innerHeight); }, 100);
    }));
    took.push(Math.round(ms));
    await ctx.close();
  }
  took.sort((a, b) => a - b);
  console.log(`scroll past 75% → offer on the page: ${took.join(', ')} ms (median ${took[1]})`);
  assert.ok(took[1] < 250, `median ${took[1]} ms: the milestone did not go out at once`);
});
