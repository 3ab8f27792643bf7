// The operator dashboard (/dashboard) in a real browser against the real server:
//  - a wrong admin token shows a login error and nothing is kept;
//  - signed in, a visitor on the demo page (another tab) who consents and scrolls past 75%
//    shows up in the live tail, the events/s tile goes above 0, the rules table lists the
//    example rules, the slot × variant bars show the pushed offer, and clicking the visitor in
//    the tail opens the inspector with their scroll depth;
//  - the inspector also finds a user by the site's own id.
// Saves target/screenshots/dashboard.png (and dashboard-login.png).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, launchBrowser, screenshot, admin, waitFor } from './support.mjs';

let server;
let browser;
const SYNTHETIC_PAGE = '/article/synthetic-';

before(async () => {
  server = await startServer();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

/** Collects uncaught page errors and Content-Security-Policy violations (the pages are served
 *  with a strict policy: a blocked script, style or connection shows up here). */
function watchErrors(page) {
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content Security Policy/i.test(m.text())) errors.push(m.text());
  });
  return errors;
}

async function signIn(page, token) {
  await page.goto(server.url + '/dashboard');
  await page.waitForSelector('#token-input', { state: 'visible' });
  await page.fill('#token-input', token);
  await page.click('#login-submit');
}

/** Sends a few events for named users with the write key (HTTP), e.g. to fill the chart. */
async function sendEvents(users, depth) {
  const now = Date.now();
  const events = users.map((user, i) => ({
    id: `synthetic-${user}-${now}-${i}`,
    type: 'scroll',
    user,
    session: `s-${user}`,
    ts: now,
    props: { depth },
    context: { page: `${SYNTHETIC_PAGE}${i}` },
    consent: { analytics: true, personalization: true },
  }));
  const res = await fetch(server.url + '/v1/events', {
    method: 'POST',
    headers: { authorization: `Bearer ${server.writeKey}`, 'content-type': 'application/json' },
    body: JSON.stringify({ events }),
  });
  assert.equal(res.status, 202, await res.text());
}

test('a wrong admin token shows a login error and keeps nothing', async () => {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await ctx.newPage();
  const errors = watchErrors(page);
  await signIn(page, 'not-the-admin-token');
  const err = await page.waitForSelector('#login-error:not([hidden])', { timeout: 5000 });
  assert.match(await err.textContent(), /wrong admin token/i);
  assert.equal(await page.isVisible('#app'), false, 'the dashboard stays hidden');
  assert.equal(await page.evaluate(() => sessionStorage.length + localStorage.length), 0);
  assert.ok(!page.url().includes('not-the-admin-token'), 'the token is never put in the URL');
  await screenshot(page, 'dashboard-login');
  assert.deepEqual(errors, []);
  await ctx.close();
});

test('the live dashboard follows a visitor of the demo page', async () => {
  const ctx = await browser.newContext({ viewport: { width: 1440, height: 900 } });
  const dash = await ctx.newPage();
  const errors = watchErrors(dash);
  await signIn(dash, server.adminToken);
  await dash.waitForSelector('#app', { state: 'visible' });
  await dash.waitForFunction(() => document.querySelector('#conn-text').textContent === 'live', null, {
    timeout: 10000,
  });
  // The token is kept for this tab only, never in the URL or in localStorage.
  assert.ok(!dash.url().includes(server.adminToken));
  assert.equal(await dash.evaluate(() => localStorage.length), 0);
  assert.equal(await dash.evaluate(() => sessionStorage.getItem('trimtab.adminToken')), server.adminToken);

  // The rules table lists the example rules from scripts/.
  const rules = (await admin(server, 'GET', '/v1/rules')).body.rules.map((r) => r.name).sort();
  assert.ok(rules.length >= 3, `example rules are loaded: ${rules}`);
  await dash.waitForFunction(
    (names) => names.every((n) => document.querySelector(`#rules-body tr[data-rule="${n}"]`)),
    rules,
    { timeout: 5000 },
  );
  for (const name of ['scroll_offer', 'hover_review', 'cta_by_context']) {
    assert.ok(rules.includes(name), `${name} is one of the example rules`);
    const state = await dash.getAttribute(`#rules-body tr[data-rule="${name}"]`, 'data-state');
    assert.equal(state, 'active', `${name} is active`);
  }

  // Background readers (site ids, sent with the write key) so the chart has a shape. Bounded:
  // at most 120 batches, and stopped at the end of the test.
  const readers = ['reader-1', 'reader-2', 'reader-3'];
  let trafficOn = true;
  const traffic = (async () => {
    for (let i = 0; i < 120 && trafficOn; i++) {
      await sendEvents(readers.slice(0, 1 + (i % 3)), Math.min(100, 20 + i * 10));
      await new Promise((r) => setTimeout(r, 250 + (i % 4) * 150));
    }
  })();
  await dash.waitForFunction(() => Number(document.querySelector('#kpi-events').dataset.value) > 0, null, {
    timeout: 10000,
  });
  // A reader's browser reports two rage bursts and a dead click: the frustrated-clicks tile.
  const now = Date.now();
  const sig = (id, props) => ({ id: `sig-${now}-${id}`, type: 'signal', user: 'reader-1', session: 's-reader-1', ts: now, props, target: 'p', consent: { analytics: true } });
  const sent = await fetch(server.url + '/v1/events', {
    method: 'POST',
    headers: { authorization: `Bearer ${server.writeKey}`, 'content-type': 'application/json' },
    body: JSON.stringify({ events: [sig(1, { kind: 'rage_click', count: 3 }), sig(2, { kind: 'rage_click', count: 4 }), sig(3, { kind: 'dead_click' })] }),
  });
  assert.equal(sent.status, 202);
  await dash.waitForFunction(() => Number(document.querySelector('#kpi-frustration').dataset.value) === 3, null, { timeout: 10000 });
  assert.match(await dash.textContent('[data-sub="frustration"]'), /2\s*rage.*1\s*dead/);
  assert.equal(await dash.getAttribute('#kpi-frustration', 'class'), 'kpi', 'no error click: no alert');

  // The visitor, in another tab: the demo's article page, consent, then scroll past 75%.
  const visitor = await ctx.newPage();
  const visitorErrors = watchErrors(visitor);
  const served = await visitor.goto(server.url + '/demo/article.html');
  const policy = served.headers()['content-security-policy'];
  assert.match(policy, /script-src 'self';/);
  assert.match(policy, /frame-ancestors 'none'/);
  assert.equal(served.headers()['x-frame-options'], 'DENY');
  await visitor.waitForFunction(() => typeof window.trimtab === 'object' && window.trimtab !== null, null, {
    timeout: 10000,
  });
  await visitor.evaluate(() => window.trimtab.consent({ analytics: true, personalization: true }));
  for (let f = 0.2; f <= 1.0001; f += 0.2) {
    await visitor.evaluate((frac) => {
      const h = document.documentElement.scrollHeight - window.innerHeight;
      window.scrollTo(0, Math.round(h * frac));
    }, f);
    await visitor.waitForTimeout(250);
  }

  // The dashboard: the visitor's events in the live tail…
  await dash.bringToFront();
  // (the background readers' pages are /article/synthetic-*; every other event is the visitor's)
  const visitorKeys = () =>
    dash.evaluate(
      (synth) =>
        [...document.querySelectorAll('#tail-body tr[data-kind="event"]')]
          .filter((tr) => !tr.querySelector('.page').textContent.startsWith(synth))
          .map((tr) => tr.dataset.user),
      SYNTHETIC_PAGE,
    );
  const visitorKey = await waitFor(async () => (await visitorKeys())[0], {
    timeout: 15000,
    what: "the visitor's events in the live tail",
  });
  // …a non-zero events/s tile…
  await dash.waitForFunction(() => Number(document.querySelector('#kpi-eps').dataset.value) > 0, null, {
    timeout: 10000,
  });
  const epsText = await dash.textContent('[data-kpi="eps"]');
  assert.ok(Number(epsText.replace(/[^0-9.]/g, '')) > 0 || /k|M/.test(epsText), `events/s tile: ${epsText}`);
  assert.ok(Number(await dash.getAttribute('#kpi-events', 'data-value')) > 0);

  // …and the inspector, opened by clicking the visitor in the tail, shows their scroll depth.
  assert.match(visitorKey, /^[0-9a-f]{32}$/, 'the feed carries pseudonymous 32-hex keys');
  await dash.click(`#tail-body tr[data-user="${visitorKey}"] .user-link >> nth=0`);
  await dash.waitForFunction(
    () => {
      const d = document.querySelector('#insp [data-field="depth"]');
      return d && Number(d.dataset.value) >= 75;
    },
    null,
    { timeout: 15000 },
  );
  const depth = Number(await dash.getAttribute('#insp [data-field="depth"]', 'data-value'));
  const maxDepth = Number(await dash.getAttribute('#insp [data-field="max_depth"]', 'data-value'));
  assert.ok(depth >= 75, `scroll depth ${depth}`);
  assert.ok(maxDepth >= 75, `max scroll depth ${maxDepth}`);
  assert.match(await dash.textContent('#insp'), /personalization/);
  // Its behavioural signals: read past 75 %, the session's intent is at least 1 − e^−0.75.
  const intent = Number(await dash.getAttribute('#insp [data-field="signals.intent"]', 'data-value'));
  assert.ok(intent >= 0.52 && intent <= 1, `intent ${intent}`);
  assert.equal(await dash.getAttribute('#insp [data-field="signals.rage_clicks"]', 'data-value'), '0');

  // scroll_offer fires for the readers past 75% on their article pages: the adjustments show in
  // the tail (with their rule) and under their slot.
  await dash.waitForSelector('#tail-body tr[data-kind="adjust"]', { timeout: 10000 });
  assert.match(await dash.textContent('#tail-body tr[data-kind="adjust"]'), /offer→discount.*rule scroll_offer/);
  await dash.waitForSelector('#slots [data-slot="offer"]', { timeout: 5000 });

  // The visitor's own offer was pushed to their open socket: it counts under offer × discount.
  await dash.waitForSelector('#slots [data-slot="offer"] [data-variant="discount"]', { timeout: 10000 });
  assert.match(
    await dash.textContent(`#tail-body tr[data-kind="adjust"][data-user="${visitorKey}"]`),
    /offer→discount\s+pushed to 1 socket/,
  );
  // The tile counts pushes from the next stats poll (the tail above is the live feed's).
  await dash.waitForFunction(() => Number(document.querySelector('#kpi-adj').dataset.value) >= 1, null, {
    timeout: 10000,
  });

  // Let the chart gather a few more seconds, then the screenshot to look at.
  await dash.waitForTimeout(8000);
  await screenshot(dash, 'dashboard', { fullPage: true });

  // The inspector also finds a user by the site's own id.
  await dash.fill('#insp-input', 'reader-2');
  await dash.click('#insp-form button[type="submit"]');
  await dash.waitForFunction(
    () =>
      /site id reader-2/.test(document.querySelector('#insp .insp-meta')?.textContent || '') &&
      Number(document.querySelector('#insp [data-field="max_depth"]')?.dataset.value) >= 20,
    null,
    { timeout: 10000 },
  );
  // An unknown id is a clear "nothing stored" rather than an error.
  await dash.fill('#insp-input', 'nobody-at-all');
  await dash.click('#insp-form button[type="submit"]');
  await dash.waitForSelector('#insp .insp-error', { timeout: 10000 });
  assert.match(await dash.textContent('#insp .insp-error'), /no data/i);

  // Pausing the tail stops new rows; resuming brings them in.
  await dash.click('#tail-pause');
  await dash.waitForTimeout(100); // a frame already scheduled may still land
  await dash.evaluate(() => document.querySelector('#tail-body tr').setAttribute('data-mark', '1'));
  await sendEvents(['reader-4'], 50);
  await dash.waitForFunction(() => /\(\+\d+\)/.test(document.querySelector('#tail-pause').textContent), null, {
    timeout: 10000,
  });
  assert.equal(await dash.getAttribute('#tail-body tr:first-child', 'data-mark'), '1', 'no new rows while paused');
  await dash.click('#tail-pause');
  await dash.waitForFunction(() => !document.querySelector('#tail-body tr:first-child').hasAttribute('data-mark'), null, {
    timeout: 5000,
  });
  assert.equal(await dash.textContent('#tail-pause'), 'Pause');

  trafficOn = false;
  await traffic;

  // Signing out forgets the token.
  await dash.click('#logout');
  await dash.waitForSelector('#login', { state: 'visible' });
  assert.equal(await dash.evaluate(() => sessionStorage.getItem('trimtab.adminToken')), null);
  assert.deepEqual(errors, []);
  assert.deepEqual(visitorErrors, [], 'the demo page runs under its policy');
  await ctx.close();
});
