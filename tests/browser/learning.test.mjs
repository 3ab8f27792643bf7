// The dashboard's Learning page in a real browser against the real server:
//  - a bandit slot (bandits/cta.toml: control / urgent / social, 1 s attribution window, 30 %
//    holdout, a click guardrail) and a broken definition file (bandits/bad.toml);
//  - users visit over real HTTP (identify → page view → POST /v1/decide → a click carrying the
//    decision id): only holdout users (the control with propensity 1) click, so the bandit's
//    users do measurably worse and the guardrail trips into fallback;
//  - the Learning page shows the cta card with its arms (chosen counts summing to the
//    decisions, the control marked), the bandit vs holdout rates, the fallback state with its
//    reason and the refused file with its field path; "Resume (reset guardrail)" POSTs the reset
//    and the card goes back to learning; the page refreshes itself every 5 s and stops when left;
//  - the models section: the server's own answer (a 404 before model serving exists, or the
//    list), then a stubbed GET /v1/models with two models to check the table, the model card,
//    the reliability chart and that server strings are inserted as text only.
// Saves target/screenshots/dashboard-learning.png and dashboard-learning-models.png.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, launchBrowser, screenshot, admin, waitFor, recordApiTraffic } from './support.mjs';

const CONSENT = { analytics: true, personalization: true };
const CTA = [
  'candidates = ["control", "urgent", "social"]',
  'window_ms = 1000',
  'holdout = 0.3',
  '',
  '[guardrail]',
  'metric = "click"',
  'min_samples = 10',
  'max_drop = 0.2',
  '',
].join('\n');
// Refused: the control is not a candidate (the field path is `control`).
const BAD = 'candidates = ["a", "b"]\ncontrol = "c"\n';

let server;
let browser;

before(async () => {
  server = await startServer({ scriptFiles: { 'bandits/cta.toml': CTA, 'bandits/bad.toml': BAD } });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

async function post(path, auth, body) {
  const res = await fetch(server.url + path, {
    method: 'POST',
    headers: { authorization: `Bearer ${auth}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {}
  return { status: res.status, body: json, text };
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

let eventSeq = 0;
const event = (type, extra = {}) => ({
  id: `ev-${process.pid}-${eventSeq++}`,
  type,
  session: 's1',
  ts: Date.now(),
  consent: CONSENT,
  context: { page: '/product' },
  ...extra,
});

/** One visit: identify, a page view, the decision; a click on it when its propensity is 1
 *  (holdout or fallback users: always the control). */
async function visit(user) {
  const id = await post('/v1/identify', server.writeKey, { user });
  assert.equal(id.status, 200, id.text);
  const token = id.body.token;
  const pv = await post('/v1/events', token, { events: [event('page_view', { props: { path: '/product' } })] });
  assert.equal(pv.status, 202, pv.text);
  const d = await post('/v1/decide', token, { slot: 'cta' });
  assert.equal(d.status, 200, d.text);
  assert.equal(d.body.decision.source, 'bandit', d.text);
  assert.ok(['control', 'urgent', 'social'].includes(d.body.variant), d.text);
  const p = d.body.decision.propensity;
  assert.ok(p > 0 && p <= 1, d.text);
  const clicked = p === 1;
  if (clicked) {
    const c = await post('/v1/events', token, {
      events: [event('click', { target: 'cta', props: { decision: d.body.decision.id } })],
    });
    assert.equal(c.status, 202, c.text);
  }
  return { variant: d.body.variant, propensity: p, clicked };
}

const status = async () => {
  const r = await admin(server, 'GET', '/v1/bandits/cta');
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return r.body;
};

function watchErrors(page) {
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  return errors;
}

test('the learning page shows the bandit, its fallback and resume, the refused file and the models', async () => {
  // The learner publishes the slot.
  await waitFor(async () => (await status()).state === 'learning', { timeout: 10000, what: 'the cta slot to be learning' });
  const list = await admin(server, 'GET', '/v1/bandits');
  assert.equal(list.status, 200);
  assert.deepEqual(list.body.bandits.map((b) => b.slot), ['cta']);
  assert.equal(list.body.problems.length, 1, JSON.stringify(list.body.problems));
  assert.equal(list.body.problems[0].path, 'control');

  // ~60 users, then more in batches until the guardrail trips (holdout users click, the
  // bandit's users never do).
  let decisions = 0;
  const byVariant = { control: 0, urgent: 0, social: 0 };
  let batch = 0;
  const drive = async (n) => {
    const users = Array.from({ length: n }, (_, i) => `learner-${batch}-${i}`);
    batch++;
    await pool(users, 6, async (u) => {
      const v = await visit(u);
      decisions++;
      byVariant[v.variant]++;
    });
  };
  await drive(60);
  let st = null;
  for (let round = 0; round < 6 && !st; round++) {
    try {
      st = await waitFor(
        async () => {
          const s = await status();
          return s.state === 'fallback' && s.pending === 0 && s;
        },
        { timeout: 6000, what: 'the guardrail to trip' },
      );
    } catch {
      await drive(20);
    }
  }
  assert.ok(st, `no fallback after ${decisions} decisions: ${JSON.stringify(await status())}`);
  // Every decision counted (the learner publishes its counters asynchronously).
  st = await waitFor(
    async () => {
      const s = await status();
      const chosen = s.arms.reduce((t, a) => t + a.chosen, 0);
      return chosen === decisions && s.pending === 0 && s;
    },
    { timeout: 10000, what: `all ${decisions} decisions in the arms` },
  );
  assert.match(st.fallback_reason, /guardrail `click`/);
  for (const a of st.arms) assert.equal(a.chosen, byVariant[a.variant], `chosen of ${a.variant}`);

  // ---- The dashboard
  const ctx = await browser.newContext({ viewport: { width: 1440, height: 900 } });
  const page = await ctx.newPage();
  const errors = watchErrors(page);
  const traffic = recordApiTraffic(page);
  await page.goto(server.url + '/dashboard');
  await page.fill('#token-input', server.adminToken);
  await page.click('#login-submit');
  await page.waitForSelector('#app', { state: 'visible' });

  await page.click('#tab-learning');
  await page.waitForSelector('#page-learning', { state: 'visible' });
  assert.equal(await page.isVisible('#page-live'), false);
  assert.equal(await page.getAttribute('#tab-learning', 'aria-selected'), 'true');
  assert.equal(await page.getAttribute('#tab-live', 'aria-selected'), 'false');
  assert.equal(await page.getAttribute('#page-learning', 'role'), 'tabpanel');
  assert.ok(page.url().endsWith('#learning'));

  // The cta card, in fallback, with the reason.
  const card = '#bandit-cards .bandit-card[data-slot="cta"]';
  await page.waitForSelector(`${card}[data-state="fallback"]`, { timeout: 10000 });
  assert.equal(await page.locator('#bandit-cards .bandit-card').count(), 1);
  assert.equal((await page.textContent(`${card} .bandit-state`)).trim(), 'fallback');
  const reason = await page.textContent(`${card} .bandit-reason`);
  assert.equal(reason, st.fallback_reason);
  assert.match(await page.textContent(`${card} .bandit-policy`), /linucb/);
  const meta = await page.textContent(`${card} .bandit-meta`);
  assert.match(meta, /reward\s+click/);
  assert.match(meta, /window\s+1 s/);
  assert.match(meta, /holdout\s+30\.0%/);
  assert.equal(await page.getAttribute(`${card} .bandit-pending`, 'data-value'), '0');

  // Arms: the three candidates, chosen counts summing to the decisions, the control marked.
  const arms = await page.$$eval(`${card} .arm-row[data-arm]`, (rows) =>
    rows.map((r) => ({
      arm: r.dataset.arm,
      chosen: Number(r.dataset.chosen),
      shown: r.querySelector('.arm-chosen').textContent,
      control: r.classList.contains('is-control') && !!r.querySelector('.tag'),
      rate: r.querySelector('.arm-rate').textContent,
    })),
  );
  assert.deepEqual(arms.map((a) => a.arm), ['control', 'urgent', 'social']);
  assert.equal(arms.reduce((t, a) => t + a.chosen, 0), decisions, JSON.stringify(arms));
  for (const a of arms) {
    assert.equal(a.chosen, byVariant[a.arm], `chosen of ${a.arm}`);
    assert.equal(a.shown, String(a.chosen));
    assert.equal(a.control, a.arm === 'control', `control mark of ${a.arm}`);
  }
  // Only control decisions were ever clicked: the other arms earn 0 %.
  const urgent = st.arms.find((a) => a.variant === 'urgent');
  if (urgent.closed > 0) assert.equal(arms.find((a) => a.arm === 'urgent').rate, '0.0%');

  // Bandit vs holdout: 0 % vs (about) 100 % clicks over the compared decisions, lift −100 %.
  const groups = await page.$$eval(`${card} .group-tile[data-group]`, (ts) =>
    Object.fromEntries(ts.map((t) => [t.dataset.group, { n: Number(t.dataset.decisions), rate: t.querySelector('.group-rate').textContent }])),
  );
  assert.equal(groups.bandit.n, st.groups.bandit.decisions);
  assert.equal(groups.holdout.n, st.groups.holdout.decisions);
  assert.ok(groups.bandit.n >= 10 && groups.holdout.n >= 10, JSON.stringify(groups));
  // (A holdout click arriving after its 1 s window would not count: compare with the API.)
  const pct = (x) => (x * 100 >= 100 ? '100%' : (x * 100).toFixed(1) + '%');
  assert.equal(groups.bandit.rate, '0.0%');
  assert.equal(groups.holdout.rate, pct(st.groups.holdout.reward_rate));
  assert.ok(st.groups.holdout.reward_rate > 0.8, JSON.stringify(st.groups));
  assert.equal(await page.textContent(`${card} .group-lift .group-rate`), '−100%', 'the bandit users never click');

  // The refused definition file, with its field path.
  await page.waitForSelector('#bandit-problems:not([hidden]) .problem[data-problem="bad"]');
  const problem = await page.textContent('#bandit-problems');
  assert.match(problem, /1 bandit definition was refused/);
  assert.match(await page.textContent('#bandit-problems .problem .loc'), /^bad\.toml$/);
  assert.equal(await page.textContent('#bandit-problems .problem-path'), 'control');
  assert.equal(await page.textContent('#bandit-problems .problem-msg'), list.body.problems[0].error);

  // Models: the server's own answer (404 until model serving exists).
  const models = await admin(server, 'GET', '/v1/models');
  if (models.status === 404) {
    await page.waitForSelector('#models .models-empty[data-state="unavailable"]');
    assert.match(await page.textContent('#models'), /No models yet/);
  } else {
    assert.equal(models.status, 200);
    if (models.body.models.length === 0) {
      await page.waitForSelector('#models .models-empty[data-state="empty"]');
    } else {
      await page.waitForSelector('#models-body tr[data-model]');
      assert.equal(await page.locator('#models-body tr[data-model]').count(), models.body.models.length);
    }
  }
  assert.ok(traffic.some((r) => r.path === '/v1/models'), 'the page asked for the models');
  await page.waitForTimeout(300);
  await screenshot(page, 'dashboard-learning', { fullPage: true });

  // Auto-refresh: /v1/bandits is fetched again within ~5 s.
  const looks = () => traffic.filter((r) => r.path === '/v1/bandits').length;
  const first = looks();
  await waitFor(() => looks() > first, { timeout: 12000, what: 'an automatic refresh of the bandits' });

  // Resume: a POST to the reset endpoint, then the card is learning again.
  await page.click(`${card} .bandit-resume`);
  await page.waitForSelector(`${card}[data-state="learning"]`, { timeout: 10000 });
  assert.ok(traffic.some((r) => r.method === 'POST' && r.path === '/v1/bandits/cta/reset'));
  assert.equal((await page.textContent(`${card} .bandit-state`)).trim(), 'learning');
  assert.equal(await page.locator(`${card} .bandit-resume`).count(), 0, 'no resume button while learning');
  assert.match(await page.textContent(`${card} .bandit-note.ok`), /learning again/);
  assert.equal((await status()).state, 'learning');
  // The guardrail compares only decisions from now on; the arms keep every decision.
  const afterArms = await page.$$eval(`${card} .arm-row[data-arm]`, (rows) => rows.reduce((t, r) => t + Number(r.dataset.chosen), 0));
  assert.equal(afterArms, decisions);
  assert.equal(await page.getAttribute(`${card} .group-tile[data-group="bandit"]`, 'data-decisions'), '0');

  // Leaving the page stops its polling.
  await page.click('#tab-live');
  await page.waitForSelector('#page-live', { state: 'visible' });
  const n = traffic.length;
  await page.waitForTimeout(6000);
  assert.equal(traffic.slice(n).filter((r) => /^\/v1\/(bandits|models)/.test(r.path)).length, 0, 'no learning requests on the live page');

  // ---- Models, stubbed: a table row per model, the model card, the reliability chart; server
  // strings stay text.
  const now = Date.now();
  const stub = {
    models: [
      {
        name: 'click-cta',
        kind: 'click',
        slot: 'cta',
        version: 3,
        status: 'serving',
        error: null,
        card: {
          created: new Date(now - 3600e3).toISOString(),
          data: { rows: 12840, positives: 1520, test_rows: 2568 },
          metrics: { auc: 0.7412, pr_auc: 0.3181, logloss: 0.3127, mae: null, ece: 0.0214 },
          calibration: [
            { lo: 0, hi: 0.1, count: 1402, mean_predicted: 0.045, observed: 0.041 },
            { lo: 0.1, hi: 0.2, count: 611, mean_predicted: 0.143, observed: 0.158 },
            { lo: 0.2, hi: 0.3, count: 302, mean_predicted: 0.246, observed: 0.229 },
            { lo: 0.3, hi: 0.5, count: 171, mean_predicted: 0.381, observed: 0.412 },
            { lo: 0.5, hi: 1, count: 82, mean_predicted: 0.624, observed: 0.585 },
          ],
        },
        last_training: { at_ms: now - 120e3, outcome: 'kept', reason: 'candidate AUC 0.731 < serving 0.741 <b>not</b> better' },
      },
      {
        name: 'click-<img src=x onerror=alert(1)>',
        kind: 'click',
        slot: 'hero',
        version: 1,
        status: 'error',
        error: { code: 'model_load', message: 'weights file truncated' },
        card: { created: new Date(now - 86400e3).toISOString(), data: { rows: 300, positives: 12, test_rows: 60 }, metrics: { auc: 0.61, pr_auc: 0.08, logloss: 0.2, ece: 0.05 } },
        last_training: null,
      },
    ],
  };
  await page.route('**/v1/models', (route) =>
    route.fulfill({ status: 200, contentType: 'application/json', body: JSON.stringify(stub) }),
  );
  await page.click('#tab-learning');
  await page.waitForSelector('#models-body tr[data-model="click-cta"]', { timeout: 10000 });
  assert.equal(await page.locator('#models-body tr[data-model]').count(), 2);
  const row = await page.$$eval('#models-body tr[data-model="click-cta"] td', (tds) => tds.map((td) => td.textContent.trim()));
  assert.match(row[0], /^click-cta/);
  assert.equal(row[2], 'v3');
  assert.equal(row[3], 'serving');
  assert.deepEqual(row.slice(4, 8), ['0.741', '0.318', '0.313', '0.021']);
  assert.match(row[8], /^12,840/);
  assert.match(row[10], /^kept/);
  assert.match(row[10], /<b>not<\/b> better/, 'the reason is text');
  const bad = '#models-body tr[data-status="error"]';
  assert.equal(await page.getAttribute(bad, 'data-model'), 'click-<img src=x onerror=alert(1)>');
  assert.match(await page.textContent(bad), /model_load: weights file truncated/);
  assert.equal(await page.locator('#page-learning img').count(), 0, 'no element from a server string');
  assert.equal(await page.locator('#models-body b').count(), 0);
  // The model with calibration bins is selected: its card and reliability chart.
  assert.equal(await page.getAttribute('#models-body tr[data-model="click-cta"] .model-link', 'aria-pressed'), 'true');
  await page.waitForSelector('#model-detail:not([hidden]) #calib-chart canvas');
  assert.match(await page.textContent('#calib-sub'), /click-cta · 5 bins/);
  assert.match(await page.textContent('#calib-legend'), /2,568 rows/);
  assert.match(await page.textContent('#card-body'), /test rows\s*2,568/);
  assert.match(await page.textContent('#card-body'), /Last training .*kept/);
  await page.waitForTimeout(300);
  await screenshot(page, 'dashboard-learning-models', { fullPage: true });
  // Selecting the broken model: its card says why it is not serving; no bins, no chart.
  await page.click(`${bad} .model-link`);
  assert.equal(await page.getAttribute(`${bad} .model-link`, 'aria-pressed'), 'true');
  assert.match(await page.textContent('#card-body'), /Not serving: model_load: weights file truncated/);
  assert.match(await page.textContent('#calib-chart'), /no calibration bins/);
  // An empty list: the quiet empty state.
  await page.unroute('**/v1/models');
  await page.route('**/v1/models', (route) =>
    route.fulfill({ status: 200, contentType: 'application/json', body: '{"models":[]}' }),
  );
  await page.waitForSelector('#models .models-empty[data-state="empty"]', { timeout: 12000 });
  assert.equal(await page.isVisible('#model-detail'), false);
  // The bandit card stays while models change.
  assert.equal(await page.locator(card).count(), 1);

  // The token never reaches a URL or localStorage; no page errors.
  assert.ok(!page.url().includes(server.adminToken));
  assert.ok(traffic.every((r) => !r.path.includes(server.adminToken)));
  assert.equal(await page.evaluate(() => localStorage.length), 0);
  assert.deepEqual(errors, []);
  await ctx.close();
});
