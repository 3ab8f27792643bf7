// The dashboard's Experiments and Segments pages in a real browser against the real server:
//  - 120 users behave in three distinct ways (skimmers, readers, clickers) and the segments are
//    clustered (k = 3), so each user has a segment when the experiment exposes them;
//  - an experiment (offer-test: default vs discount on the "offer" slot) run over HTTP: a rule
//    (go.rhai) asks for the offer, the experiment picks the arm, the user sees it (impression)
//    and most discount users click it, few default users do;
//  - the Experiments page lists offer-test (and the refused definition file, with its field
//    path), shows both arms with exposures summing to the users, recommends "Ship discount",
//    draws the uplift chart and the always-valid p-value chart, shows no SRM warning and
//    refreshes itself;
//  - the Segments page shows 3 segment cards whose sizes sum to the users, the projection
//    scatter, and re-clusters on demand.
// Saves target/screenshots/dashboard-experiments.png and dashboard-segments.png.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, launchBrowser, screenshot, admin, waitFor, recordApiTraffic } from './support.mjs';

const USERS = 120;
const CONSENT = { analytics: true, personalization: true };
const GO_RULE =
  'if event.type == "custom" && event.props.name == "go" { adjust("offer", "discount", #{ code: "RULE" }); }\n';
// A definition file the server refuses (unknown metric): shown under "problems".
const BROKEN_EXPERIMENT =
  'slot = "offer"\nprimary_metric = "revenue_per_user"\n\n[[variants]]\nname = "default"\n\n[[variants]]\nname = "big"\n';

let server;
let browser;

before(async () => {
  server = await startServer({
    config: {
      segments: { refresh_s: 0, min_users: 20, k: 3 },
      delivery: { cap_per_session: 0, cap_per_user: 0 },
    },
    scriptFiles: { 'go.rhai': GO_RULE, 'experiments/broken.toml': BROKEN_EXPERIMENT },
  });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

async function postEvents(events) {
  const res = await fetch(server.url + '/v1/events', {
    method: 'POST',
    headers: { authorization: `Bearer ${server.writeKey}`, 'content-type': 'application/json' },
    body: JSON.stringify({ events }),
  });
  assert.equal(res.status, 202, await res.text());
}

/** Runs `fn` over `items` with at most `n` at a time. */
async function pool(items, n, fn) {
  let next = 0;
  await Promise.all(
    Array.from({ length: n }, async () => {
      while (next < items.length) {
        const i = next++;
        await fn(items[i], i);
      }
    }),
  );
}

/** Events of user `i` after the offer: one of three behaviours, so three segments exist. */
function behaviour(user, i, t0) {
  const out = [];
  const jitter = (k) => ((i * 37 + k * 11) % 10) / 10; // deterministic, in [0, 1)
  const ev = (type, extra) =>
    out.push({ id: `${user}-b${out.length}`, type, user, session: 's', ts: t0 + out.length, consent: CONSENT, ...extra });
  switch (i % 3) {
    case 0: // skimmer: shallow, fast scrolling, nothing else
      for (const depth of [5, 12, 18 + Math.round(jitter(1) * 10)]) {
        ev('scroll', { props: { depth, velocity: 300 + jitter(2) * 200 } });
      }
      break;
    case 1: // reader: deep, slow scrolling and long dwells
      for (const depth of [20, 45, 70, 90, 95 + Math.round(jitter(3) * 5)]) {
        ev('scroll', { props: { depth, velocity: 3 + jitter(4) * 3 } });
      }
      for (const target of ['article', 'figure']) {
        ev('dwell', { target, props: { phase: 'start' } });
        ev('dwell', { target, props: { phase: 'end', duration_ms: Math.round(40000 + jitter(5) * 60000) } });
      }
      break;
    default: // clicker: hovers and clicks on several targets
      for (const depth of [30, 50 + Math.round(jitter(6) * 10)]) {
        ev('scroll', { props: { depth, velocity: 30 + jitter(7) * 20 } });
      }
      for (const target of ['cta', 'pricing', 'nav']) {
        ev('hover', { target, props: { phase: 'start' } });
        ev('hover', { target, props: { phase: 'end', duration_ms: Math.round(1500 + jitter(8) * 2500) } });
        ev('click', { target, props: {} });
      }
  }
  return out;
}

const USER_IDS = Array.from({ length: USERS }, (_, i) => `visitor-${String(i).padStart(3, '0')}`);

/** Every user's behaviour (before the experiment). */
async function behave() {
  const t0 = Date.now();
  await pool(USER_IDS, 12, (user, i) => postEvents(behaviour(user, i, t0)));
  // Every user's events applied (the pipeline is asynchronous) before clustering.
  await pool(USER_IDS, 12, (user, i) =>
    waitFor(
      async () => {
        const r = await admin(server, 'GET', '/v1/users/' + user);
        return r.status === 200 && r.body.state?.events >= behaviour(user, i, 0).length;
      },
      { timeout: 15000, what: `the behaviour events of ${user}` },
    ),
  );
}

/** Creates offer-test and drives the users through it. Returns the users per variant. */
async function runExperiment() {
  const put = await admin(server, 'PUT', '/v1/experiments/offer-test', {
    slot: 'offer',
    primary_metric: 'click_through',
    guardrails: ['interaction_depth'],
    variants: [{ name: 'default' }, { name: 'discount' }],
  });
  assert.equal(put.status, 200, JSON.stringify(put.body));
  const users = USER_IDS;
  const t0 = Date.now();
  // The rule asks for the offer; the experiment decides which variant each user gets.
  await pool(users, 12, (user, i) =>
    postEvents([{ id: `${user}-go`, type: 'custom', user, session: 's', ts: t0 + i, props: { name: 'go' }, consent: CONSENT }]),
  );
  const byVariant = { default: [], discount: [] };
  await pool(users, 12, async (user, i) => {
    const decision = await waitFor(
      async () => {
        const r = await admin(server, 'GET', '/v1/users/' + encodeURIComponent(user));
        return r.status === 200 && (r.body.decisions || []).find((d) => d.experiment === 'offer-test');
      },
      { timeout: 20000, what: `the offer-test decision of ${user}` },
    );
    assert.ok(decision.id && decision.arm, `decision of ${user}: ${JSON.stringify(decision)}`);
    assert.ok(decision.variant in byVariant, `variant ${decision.variant}`);
    const k = byVariant[decision.variant].push(user) - 1;
    const t = Date.now();
    const events = [
      {
        id: `${user}-imp`,
        type: 'impression',
        user,
        session: 's',
        ts: t,
        props: { slot: 'offer', variant: decision.variant, decision: decision.id },
        consent: CONSENT,
      },
    ];
    // 4 in 5 discount users click the offer; 1 in 12 default users do.
    const clicks = decision.variant === 'discount' ? k % 5 !== 4 : k % 12 === 0;
    if (clicks) {
      events.push({
        id: `${user}-click`,
        type: 'click',
        user,
        session: 's',
        ts: t + 1,
        target: 'offer-button',
        props: { decision: decision.id },
        consent: CONSENT,
      });
    }
    await postEvents(events);
  });
  return { byVariant };
}

function watchErrors(page) {
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  return errors;
}

test('the experiments and segments pages show an experiment and the segments', async () => {
  await behave();
  // Segments: cluster now (refresh_s = 0: never in the background).
  const refresh = await admin(server, 'POST', '/v1/segments/refresh');
  assert.equal(refresh.status, 202);
  const seg = await waitFor(
    async () => {
      const r = await admin(server, 'GET', '/v1/segments');
      return r.status === 200 && r.body.computed_at_ms && r.body.users === USERS && r.body;
    },
    { timeout: 30000, what: 'the first clustering run' },
  );
  assert.equal(seg.segments.length, 3, JSON.stringify(seg.segments.map((s) => [s.name, s.size])));

  const { byVariant } = await runExperiment();
  assert.ok(byVariant.default.length > 0 && byVariant.discount.length > 0, 'both arms got users');

  // The server has seen every exposure and every click before the browser looks.
  const results = await waitFor(
    async () => {
      const r = await admin(server, 'GET', '/v1/experiments/offer-test/results');
      const exposed = (r.body.arms || []).reduce((t, a) => t + a.exposed, 0);
      const ct = r.body.metrics?.click_through?.arms || [];
      const conv = ct.reduce((t, a) => t + (a.conversions || 0), 0);
      const want =
        byVariant.discount.filter((_, k) => k % 5 !== 4).length + byVariant.default.filter((_, k) => k % 12 === 0).length;
      return r.status === 200 && exposed === USERS && conv === want && r.body;
    },
    { timeout: 20000, what: 'all exposures and clicks in the results' },
  );
  assert.equal(results.srm_warning, false, `no SRM (p = ${results.srm_p_value})`);
  assert.equal(results.recommendation.action, 'ship', JSON.stringify(results.recommendation));
  assert.equal(results.recommendation.arm, 'discount');
  assert.equal(Object.keys(results.primary_by_segment).length, 3, 'results per segment');

  // The dashboard.
  const ctx = await browser.newContext({ viewport: { width: 1440, height: 900 } });
  const page = await ctx.newPage();
  const errors = watchErrors(page);
  const traffic = recordApiTraffic(page);
  await page.goto(server.url + '/dashboard');
  await page.fill('#token-input', server.adminToken);
  await page.click('#login-submit');
  await page.waitForSelector('#app', { state: 'visible' });
  assert.equal(await page.isVisible('#page-live'), true, 'the live page is the default');

  // ---- Experiments
  await page.click('#tab-experiments');
  await page.waitForSelector('#page-experiments', { state: 'visible' });
  assert.equal(await page.isVisible('#page-live'), false);
  assert.equal(await page.getAttribute('#tab-experiments', 'aria-selected'), 'true');
  await page.waitForSelector('#exp-list .exp-item[data-exp="offer-test"]', { timeout: 10000 });
  // The refused definition file is shown, with the field at fault.
  await page.waitForSelector('#exp-problems:not([hidden]) .problem', { timeout: 10000 });
  const problem = await page.textContent('#exp-problems');
  assert.match(problem, /broken\.toml/);
  assert.match(problem, /primary_metric/);
  assert.match(problem, /revenue_per_user/);

  await page.click('#exp-list .exp-item[data-exp="offer-test"]');
  await page.waitForSelector('#exp-arms-body tr[data-arm="discount"]', { timeout: 10000 });
  const arms = await page.$$eval('#exp-arms-body tr[data-arm]', (trs) =>
    trs.map((tr) => ({ arm: tr.dataset.arm, exposed: Number(tr.dataset.exposed) })),
  );
  assert.deepEqual(arms.map((a) => a.arm).sort(), ['default', 'discount']);
  assert.equal(arms.reduce((t, a) => t + a.exposed, 0), USERS, `exposures ${JSON.stringify(arms)}`);
  for (const a of arms) assert.equal(a.exposed, byVariant[a.arm].length, `exposures of ${a.arm}`);

  assert.equal(await page.getAttribute('#exp-rec', 'data-action'), 'ship');
  assert.match(await page.textContent('#exp-rec-action'), /^Ship discount$/);
  assert.match(await page.textContent('#exp-rec-text'), /beats default on click_through/);
  assert.equal(await page.isVisible('#exp-srm'), false, 'no SRM warning');

  // The uplift chart (one interval per variant, around 0) and the always-valid p-value chart.
  await page.waitForSelector('#uplift-chart .uplift-row[data-arm="discount"] .uplift-point');
  assert.equal(await page.locator('#uplift-chart .uplift-row[data-arm="default"]').count(), 0, 'no bar for the control');
  assert.match(await page.textContent('#uplift-chart .uplift-row[data-arm="discount"] .uplift-val'), /^\+\d/);
  await page.waitForSelector('#seq-chart canvas');
  assert.match(await page.textContent('#seq-legend'), /discount/);
  assert.match(await page.textContent('#seq-legend'), /α = 0\.05/);
  // Guardrails and the other metrics, and the primary metric per segment.
  await page.waitForSelector('#exp-metrics-body tr[data-metric="interaction_depth"] .tag-guard');
  for (const s of Object.keys(results.primary_by_segment)) {
    assert.equal(await page.locator(`#exp-segments tr[data-segment="${s}"]`).count(), 2, `both arms in segment ${s}`);
  }

  // Auto-refresh: the results are fetched again within ~5 s (each look adds a point).
  const looks = () => traffic.filter((r) => r.path === '/v1/experiments/offer-test/results').length;
  const first = looks();
  await waitFor(() => looks() > first, { timeout: 12000, what: 'an automatic refresh of the results' });
  await waitFor(() => looks() > first + 1, { timeout: 12000, what: 'a second automatic refresh' });
  await page.waitForTimeout(300);
  await screenshot(page, 'dashboard-experiments', { fullPage: true });

  // ---- Segments
  await page.click('#tab-segments');
  await page.waitForSelector('#page-segments', { state: 'visible' });
  await page.waitForFunction(() => document.querySelectorAll('#seg-cards .seg-card[data-size]').length === 3, null, {
    timeout: 10000,
  });
  const sizes = await page.$$eval('#seg-cards .seg-card[data-size]', (cards) =>
    cards.map((c) => ({ id: c.dataset.segment, size: Number(c.dataset.size), name: c.querySelector('.seg-card-name').textContent })),
  );
  assert.equal(sizes.reduce((t, s) => t + s.size, 0), USERS, `sizes ${JSON.stringify(sizes)}`);
  for (const s of sizes) assert.ok(s.size > 0 && s.name.length > 0, JSON.stringify(s));
  await page.waitForSelector('#seg-scatter canvas');
  await page.waitForSelector('#seg-sizes canvas');
  assert.equal(await page.locator('#seg-profile tbody tr').count(), seg.features.length, 'one profile row per feature');
  assert.match(await page.textContent('#seg-sub'), /120 users/);

  // Re-cluster now: a POST, then the page follows the new run.
  const before = seg.computed_at_ms;
  await page.click('#seg-refresh');
  await page.waitForFunction(() => /Re-clustered/.test(document.querySelector('#seg-status').textContent), null, {
    timeout: 30000,
  });
  assert.ok(traffic.some((r) => r.method === 'POST' && r.path === '/v1/segments/refresh'));
  const after = (await admin(server, 'GET', '/v1/segments')).body;
  assert.notEqual(after.computed_at_ms, before, 'a new clustering run');
  assert.equal(await page.isEnabled('#seg-refresh'), true);
  await page.waitForTimeout(300);
  await screenshot(page, 'dashboard-segments', { fullPage: true });

  // Leaving the page stops its polling; the live page is back.
  await page.click('#tab-live');
  await page.waitForSelector('#page-live', { state: 'visible' });
  const n = traffic.length;
  const seen = () => traffic.slice(n).filter((r) => /^\/v1\/(experiments|segments)/.test(r.path)).length;
  await page.waitForTimeout(6000);
  assert.equal(seen(), 0, 'no experiments/segments requests while the live page is open');

  // The token never reaches a URL or localStorage.
  assert.ok(!page.url().includes(server.adminToken));
  assert.ok(traffic.every((r) => !r.path.includes(server.adminToken)));
  assert.equal(await page.evaluate(() => localStorage.length), 0);
  assert.deepEqual(errors, []);
  await ctx.close();
});
