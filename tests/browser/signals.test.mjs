// Behavioural signals in a real browser against the real server: each signal produced with real
// input (rapid clicks, a click on plain text, a click that breaks the page, a hover without a
// click, the pointer leaving through the top edge, fast scroll reversals, slow reading, a quick
// back navigation, device motion through the DevTools protocol's sensor overrides), seen in the
// server's state (`signals` of the user's export), and the example rules `frustration_help` and
// `exit_offer` changing the page. Nothing is sent, and the signals module is not even loaded,
// before consent.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, launchBrowser, screenshot, waitFor, recordApiTraffic, recordSocket, scrollTo, GRANTED } from './support.mjs';

let server, browser;
before(async () => {
  server = await startServer();
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

const VIEWPORT = { width: 1200, height: 800 };
const WORDS = 'the reader follows each line of this paragraph at an even pace while the page moves';
const para = (i) => `<p>${i}: ${Array.from({ length: 4 }, () => WORDS).join(' ')}.</p>`;

/** A page of an article with plain text, a call to action, a button that throws, a link and the
 *  two example rules' slots. `signals` is passed to init. */
const testPage = (path, signals = {}) => `<!doctype html><html><head><meta charset="utf-8"><link rel="icon" href="data:,">
<script src="/trimtab.js"></script>
<script>trimtab.init({ page: ${JSON.stringify(path)}, signals: ${JSON.stringify(signals)} })</script>
<style>body{font:16px/1.5 sans-serif;margin:0 40px}#plain{font-size:20px;padding:30px 0}</style>
</head><body>
<h1>Signals</h1>
<p id="plain">Plain text that does nothing when clicked, however often.</p>
<button id="buy" data-trimtab-cta style="padding:20px 40px">Buy now</button>
<button id="broken" onclick="window.undefinedCheckout()">Pay</button>
<a id="next" href="/test/next.html">Next page</a>
<div data-trimtab-slot="exit_offer"><template data-trimtab-variant="stay"><b id="stay">Before you go: <span data-trimtab-param="code">X</span></b></template></div>
<div data-trimtab-slot="help"><template data-trimtab-variant="offer_help"><b id="helpme">Stuck? We can help.</b></template></div>
${Array.from({ length: 40 }, (_, i) => para(i)).join('\n')}
</body></html>`;

/** A browser context whose pages are the test pages (served from the server's origin) and, unless
 *  `pending`, with consent already given. */
async function context({ pending = false, signals = {}, ...opts } = {}) {
  const ctx = await browser.newContext({ viewport: VIEWPORT, ...opts });
  if (!pending) await ctx.addInitScript((c) => localStorage.setItem('trimtab.consent', c), GRANTED);
  await ctx.route('**/test/*.html', (r) => {
    const path = new URL(r.request().url()).pathname;
    r.fulfill({ contentType: 'text/html', body: testPage(path, signals) });
  });
  return ctx;
}

/** Opens the test page and waits until the SDK is connected and its signals module runs. */
async function open(ctx, path = '/test/article.html') {
  const page = await ctx.newPage();
  const rec = recordSocket(page);
  await page.goto(server.url + path);
  await waitFor(() => rec.sent.some((e) => e.type === 'page_view'), { what: 'the page view over the socket' });
  await waitFor(() => page.evaluate(() => !!globalThis.trimtabSignals), { what: 'the signals module' });
  return { page, rec };
}

/** The user's signals as the server holds them (the export of the page's own user). */
const serverSignals = async (page) => (await page.evaluate(() => trimtab.me()))?.state?.signals;
const waitServer = (page, pred, what) =>
  waitFor(async () => {
    const s = await serverSignals(page);
    return s && pred(s) && s;
  }, { what: `the server's signals: ${what}` });

const centre = async (page, sel) => {
  const b = await page.locator(sel).boundingBox();
  return { x: b.x + b.width / 2, y: b.y + b.height / 2 };
};

test('before consent nothing is sent and the signals module is not loaded; after it, signals flow', async () => {
  const ctx = await context({ pending: true });
  const page = await ctx.newPage();
  const traffic = recordApiTraffic(page);
  const scripts = [];
  page.on('request', (r) => r.url().includes('trimtab-signals') && scripts.push(r.url()));
  await page.goto(server.url + '/test/article.html');
  const p = await centre(page, '#plain');
  for (let i = 0; i < 4; i++) await page.mouse.click(p.x, p.y);
  await page.hover('#buy');
  await page.waitForTimeout(2200);
  await page.mouse.move(300, 5);
  await page.mouse.move(300, -20);
  for (let i = 0; i < 6; i++) {
    await page.mouse.wheel(0, i % 2 ? -300 : 300);
    await page.waitForTimeout(80);
  }
  await page.waitForTimeout(1200);
  assert.deepEqual(traffic, [], 'no request to /v1/* before consent');
  assert.deepEqual(scripts, [], 'trimtab-signals.js is not loaded before consent');
  assert.equal(await page.evaluate(() => sessionStorage.getItem('trimtab.left')), null);

  const rec = recordSocket(page);
  await page.evaluate(() => trimtab.consent({ analytics: true, personalization: true }));
  await waitFor(() => page.evaluate(() => !!globalThis.trimtabSignals), { what: 'the signals module after consent' });
  assert.equal(scripts.length, 1, 'loaded once, after consent');
  for (let i = 0; i < 3; i++) await page.mouse.click(p.x, p.y);
  const [rage] = await waitFor(() => rec.signals('rage_click').length && rec.signals('rage_click'), { what: 'a rage click' });
  assert.equal(rage.props.count, 3);
  await ctx.close();
});

test('rage, dead and error clicks reach the server; frustration past 0.5 brings the help', async () => {
  const ctx = await context();
  const { page, rec } = await open(ctx);
  const p = await centre(page, '#plain');
  // Three clicks within a second on the same spot of plain text: one rage burst (fast path).
  const t0 = Date.now();
  for (let i = 0; i < 3; i++) await page.mouse.click(p.x + i * 3, p.y);
  const rage = await waitFor(() => rec.signals('rage_click')[0], { what: 'rage_click' });
  assert.equal(rage.props.count, 3);
  assert.ok(rage.props.duration_ms < 1000, JSON.stringify(rage));
  assert.equal(rage.target, 'p#plain');
  assert.ok(rage.at - t0 < 1500, `rage click sent ${rage.at - t0} ms after the first click`);
  // The burst selected the paragraph (a triple click), which is not "nothing happened". A
  // single click on the plain text a moment later changes nothing within a second: a dead
  // click. Frustration 1 − e^−0.9 ≥ 0.5.
  await page.waitForTimeout(700);
  await page.mouse.click(p.x + 120, p.y);
  const dead = await waitFor(() => rec.signals('dead_click')[0], { what: 'dead_click' });
  assert.equal(dead.target, 'p#plain');
  assert.equal(rec.signals('dead_click').length, 1);
  const s = await waitServer(page, (s) => s.rage_clicks === 1 && s.dead_clicks >= 1, 'a rage burst and a dead click');
  assert.ok(s.frustration >= 0.5, JSON.stringify(s));
  await page.waitForSelector('#helpme', { timeout: 5000 });
  assert.ok(rec.received.some((a) => a.type === 'adjust' && a.slot === 'help' && a.variant === 'offer_help'));
  await screenshot(page, 'signals-help-after-frustration');

  // A button whose handler throws: an error click, and the message is never sent.
  await page.click('#broken');
  const err = await waitFor(() => rec.signals('error_click')[0], { what: 'error_click' });
  assert.equal(err.target, 'button#broken');
  assert.deepEqual(Object.keys(err.props), ['kind']);
  assert.ok(!JSON.stringify(rec.sent).includes('undefinedCheckout'), 'the error message stays in the page');
  await waitServer(page, (s) => s.error_clicks === 1, 'an error click');
  // A click on a button (interactive) is not a dead click.
  const deadBefore = rec.signals('dead_click').length;
  await page.click('#buy');
  await page.waitForTimeout(1300);
  assert.equal(rec.signals('dead_click').length, deadBefore, 'a click on a button is not dead');
  await ctx.close();
});

test('hesitation on the call to action, then the pointer leaving through the top: the exit offer', async () => {
  const ctx = await context();
  const { page, rec } = await open(ctx);
  await scrollTo(page, 40);
  await page.evaluate(() => scrollTo(0, 0)); // back up to the button; the deepest point stays 40 %
  await page.waitForTimeout(400);
  const b = await centre(page, '#buy');
  const t0 = Date.now();
  await page.mouse.move(b.x, b.y, { steps: 4 });
  const hes = await waitFor(() => rec.signals('hesitation').find((e) => e.props.via === 'hover'), { what: 'hesitation by hover' });
  assert.equal(hes.target, 'button#buy');
  assert.ok(hes.props.duration_ms >= 1500 && hes.at - t0 >= 1400, JSON.stringify(hes));
  // Resting still on it past 2 s is the other kind of hesitation.
  const idle = await waitFor(() => rec.signals('hesitation').find((e) => e.props.via === 'idle'), { what: 'hesitation by idle pointer' });
  assert.ok(idle.props.duration_ms >= 2000, JSON.stringify(idle));
  assert.equal(rec.signals('hesitation').length, 2, 'each once per element');
  await waitServer(page, (s) => s.hesitations === 2, 'two hesitations');

  // Out through the top edge of the window.
  await page.mouse.move(b.x, 3, { steps: 3 });
  await page.mouse.move(b.x, -20);
  const exit = await waitFor(() => rec.signals('exit_intent')[0], { what: 'exit_intent' });
  assert.equal(exit.props.via, 'top');
  await page.waitForSelector('#stay', { timeout: 5000 });
  assert.equal(await page.textContent('#stay [data-trimtab-param="code"]'), 'STAY10');
  const s = await waitServer(page, (s) => s.exit_intents === 1, 'an exit intent');
  assert.equal(s.exit_via, 'top');
  assert.ok(s.intent > 0 && s.intent < 1, JSON.stringify(s));
  await screenshot(page, 'signals-exit-offer');
  // Leaving again at once is one intent, not two (at most one per 5 s and way).
  await page.mouse.move(b.x, 50);
  await page.mouse.move(b.x, -20);
  await page.waitForTimeout(500);
  assert.equal(rec.signals('exit_intent').length, 1);
  await ctx.close();
});

test('fast scroll reversals are excessive scrolling; slow scrolling through text gives a reading speed', async () => {
  const ctx = await context({ signals: { readMs: 3000 } });
  const { page, rec } = await open(ctx);
  // Past the page's head at once (what jumps out of view counts as read then: the first report
  // is of that jump, and starts a new window), then read at an even pace, 60 px every half
  // second; the paragraphs have a known number of words per pixel, so the second report must
  // come out near pace × density.
  const density = await page.evaluate(() => {
    const ps = [...document.querySelectorAll('p')].slice(3, 30);
    const words = ps.reduce((n, p) => n + p.textContent.trim().split(/\s+/).length, 0);
    const px = ps[ps.length - 1].getBoundingClientRect().bottom - ps[0].getBoundingClientRect().bottom;
    window.scrollTo(0, ps[0].getBoundingClientRect().top + scrollY);
    return (words - ps[0].textContent.trim().split(/\s+/).length) / px;
  });
  await page.waitForTimeout(3200);
  await page.mouse.wheel(0, 1);
  await waitFor(() => rec.signals('reading')[0], { what: 'the first reading report' });
  const from = await page.evaluate(() => [scrollY, Date.now()]);
  for (let i = 0; i < 14; i++) {
    await page.mouse.wheel(0, 60);
    await page.waitForTimeout(500);
  }
  const to = await page.evaluate(() => [scrollY, Date.now()]);
  const pace = ((to[0] - from[0]) * 1000) / (to[1] - from[1]); // px/s, as it happened
  const reading = await waitFor(() => rec.signals('reading')[1], { what: 'a reading speed' });
  const expected = pace * density * 60;
  assert.ok(
    reading.props.wpm > expected * 0.75 && reading.props.wpm < expected * 1.25,
    `${reading.props.wpm} wpm at ${pace.toFixed(0)} px/s through ${density.toFixed(3)} words/px (≈ ${Math.round(expected)})`,
  );
  // Searching: up and down, fast.
  const sent = rec.signals('excessive_scroll').length;
  for (let i = 0; i < 8; i++) {
    await page.mouse.wheel(0, i % 2 ? -400 : 400);
    await page.waitForTimeout(120);
  }
  const ex = await waitFor(() => rec.signals('excessive_scroll')[sent], { what: 'excessive_scroll' });
  assert.ok(ex.props.count >= 4, JSON.stringify(ex));
  // The server's reading speed is the average of the reports, the newest weighing ½ (kept as
  // a 32-bit float).
  await page.waitForTimeout(500);
  const wpms = rec.signals('reading').map((e) => e.props.wpm);
  const avg = wpms.reduce((a, w) => (a === 0 ? w : 0.5 * w + 0.5 * a), 0);
  console.log(`reading: ${wpms.join(', ')} wpm (≈ ${Math.round(expected)} expected); server average ${avg}`);
  await waitServer(page, (s) => s.excessive_scrolls >= 1 && Math.abs(s.reading_wpm - avg) < 0.01, `excessive scrolling, reading ${avg}`);
  await ctx.close();
});

test('a quick back: a page left after a moment, and back to the first one', async () => {
  const ctx = await context();
  const { page, rec } = await open(ctx);
  await page.click('#next');
  await page.waitForURL('**/test/next.html');
  await page.waitForTimeout(1000);
  await page.goBack();
  await page.waitForURL('**/test/article.html');
  const qb = await waitFor(() => rec.signals('quick_back')[0], { what: 'quick_back' });
  assert.ok(qb.props.duration_ms > 0 && qb.props.duration_ms < 10000, JSON.stringify(qb));
  await waitFor(() => page.evaluate(() => !!globalThis.trimtab), { what: 'the SDK after going back' });
  await waitServer(page, (s) => s.quick_backs === 1, 'a quick back');
  await ctx.close();
});

test('engaged time is reported while the visitor interacts, and on leaving with the hidden tab', async () => {
  const ctx = await context({ signals: { engageMs: 2000 } });
  const { page, rec } = await open(ctx);
  for (let i = 0; i < 10; i++) {
    await page.mouse.move(100 + i * 20, 300);
    await page.waitForTimeout(300);
  }
  const en = await waitFor(() => rec.signals('engagement')[0], { what: 'engagement' });
  assert.ok(en.props.duration_ms > 0 && en.props.duration_ms <= 2600, JSON.stringify(en));
  // Hidden (emulated: a headless tab cannot be hidden): an exit intent, by the beacon.
  const beacons = [];
  page.on('request', (r) => r.url().endsWith('/v1/events') && beacons.push(JSON.parse(r.postData())));
  await page.evaluate(() => {
    Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => 'hidden' });
    document.dispatchEvent(new Event('visibilitychange'));
  });
  const sent = await waitFor(() => beacons.flatMap((b) => b.events).find((e) => e.type === 'signal' && e.props.kind === 'exit_intent'), { what: 'exit intent in the beacon' });
  assert.equal(sent.props.via, 'hidden');
  const s = await waitServer(page, (s) => s.exit_via === 'hidden', 'the hidden exit intent');
  assert.ok(s.engaged_ms > 0, JSON.stringify(s));
  await ctx.close();
});

test('device motion, through the DevTools sensor overrides: shaking, with the tilt', async () => {
  const ctx = await context();
  const page = await ctx.newPage();
  const cdp = await ctx.newCDPSession(page);
  for (const type of ['accelerometer', 'linear-acceleration', 'gyroscope', 'relative-orientation']) {
    await cdp.send('Emulation.setSensorOverrideEnabled', { enabled: true, type });
  }
  const rec = recordSocket(page);
  await page.goto(server.url + '/test/article.html');
  await waitFor(() => page.evaluate(() => !!globalThis.trimtabSignals), { what: 'the signals module' });
  const half = (40 * Math.PI) / 360; // 40° about the x axis: beta = 40
  const shake = async (amp, ms) => {
    for (let t = 0; t < ms; t += 50) {
      const v = (t / 50) % 2 ? amp : -amp;
      await cdp.send('Emulation.setSensorOverrideReadings', { type: 'accelerometer', reading: { xyz: { x: v, y: 0, z: 9.81 } } });
      await cdp.send('Emulation.setSensorOverrideReadings', { type: 'linear-acceleration', reading: { xyz: { x: v, y: 0, z: 0 } } });
      await cdp.send('Emulation.setSensorOverrideReadings', { type: 'gyroscope', reading: { xyz: { x: 0, y: 0, z: 0 } } });
      await cdp.send('Emulation.setSensorOverrideReadings', { type: 'relative-orientation', reading: { quaternion: { x: Math.sin(half), y: 0, z: 0, w: Math.cos(half) } } });
      await page.waitForTimeout(50);
    }
  };
  await shake(8, 4500);
  const m = await waitFor(() => rec.signals('motion').find((e) => e.props.state === 'shaking'), { what: 'motion: shaking' });
  assert.equal(m.props.tilt, 40);
  const s = await waitServer(page, (s) => s.motion === 'shaking', 'shaking');
  assert.equal(s.tilt, 40);
  // Raw samples never leave the page: a few summaries, not one event per sensor reading.
  assert.ok(rec.signals('motion').length <= 3, `${rec.signals('motion').length} motion events`);
  await shake(0.1, 4500);
  await waitFor(() => rec.signals('motion').find((e) => e.props.state === 'still'), { what: 'motion: still' });
  await ctx.close();
});
