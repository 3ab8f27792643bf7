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
//  - the models section with two real models in the registry: click-cta, trained by
//    `trimtab train --save` on a log from `trimtab-sim --offline` and served (table row,
//    model card, reliability chart), and click-hero, whose weights file is corrupt and which
//    the server refuses (its error code shown, no chart).
// Saves target/screenshots/dashboard-learning.png and dashboard-learning-models.png.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startServer, launchBrowser, screenshot, admin, waitFor, recordApiTraffic, BIN, SIM_BIN } from './support.mjs';

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

const HERO = 'candidates = ["control", "urgent", "social"]\n';

/** A registry with a real click-cta model (simulated log → `trimtab train --save`) and a
 *  click-hero whose weights are garbage. */
function prepareModels() {
  const dir = mkdtempSync(join(tmpdir(), 'trimtab-models-'));
  const log = join(dir, 'log.jsonl');
  execFileSync(SIM_BIN, ['--offline', '--rows', '3000', '--seed', '1', '--candidates', 'control,urgent,social', '--out', log]);
  const models = join(dir, 'models');
  execFileSync(BIN, ['train', '--log', log, '--save', models, '--name', 'click-cta', '--epochs', '8', '--json']);
  const hero = join(models, 'click-hero');
  mkdirSync(hero, { recursive: true });
  const card = JSON.parse(readFileSync(join(models, 'click-cta', 'v1.json'), 'utf8'));
  card.name = 'click-hero';
  writeFileSync(join(hero, 'v1.json'), JSON.stringify(card));
  writeFileSync(join(hero, 'v1.safetensors'), 'these are not weights');
  writeFileSync(join(hero, 'CURRENT'), '1\n');
  return models;
}

before(async () => {
  server = await startServer({
    scriptFiles: { 'bandits/cta.toml': CTA, 'bandits/bad.toml': BAD, 'bandits/hero.toml': HERO },
    modelsDir: prepareModels(),
  });
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
  assert.deepEqual(list.body.bandits.map((b) => b.slot), ['cta', 'hero']);
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
  assert.equal(await page.locator('#bandit-cards .bandit-card').count(), 2);
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

  // Models: both rows, as the server reports them.
  const models = await admin(server, 'GET', '/v1/models');
  assert.equal(models.status, 200);
  assert.deepEqual(models.body.models.map((m) => m.name), ['click-cta', 'click-hero']);
  await page.waitForSelector('#models-body tr[data-model="click-hero"]');
  assert.equal(await page.locator('#models-body tr[data-model]').count(), 2);
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

  // ---- Models: the served one with its card and reliability chart; the refused one with its
  // error code.
  const served = models.body.models[0];
  assert.equal(served.version, 1);
  assert.equal(served.error, null);
  assert.ok(served.card.calibration.length === 10, JSON.stringify(served.card));
  await page.click('#tab-learning');
  await page.waitForSelector('#models-body tr[data-model="click-cta"]', { timeout: 10000 });
  const row = await page.$$eval('#models-body tr[data-model="click-cta"] td', (tds) => tds.map((td) => td.textContent.trim()));
  assert.match(row[0], /^click-cta/);
  assert.equal(row[2], 'v1');
  assert.equal(row[3], 'serving');
  assert.equal(row[4], served.card.metrics.auc.toFixed(3));
  assert.match(row[8], new RegExp('^' + served.card.data.rows.toLocaleString('en-US')));
  const bad = '#models-body tr[data-model="click-hero"]';
  assert.equal(await page.getAttribute(bad, 'data-status'), 'error');
  assert.match(await page.textContent(bad), /model_corrupt/);
  assert.equal(await page.locator('#page-learning img').count(), 0, 'no element from a server string');
  await page.click('#models-body tr[data-model="click-cta"] .model-link');
  assert.equal(await page.getAttribute('#models-body tr[data-model="click-cta"] .model-link', 'aria-pressed'), 'true');
  await page.waitForSelector('#model-detail:not([hidden]) #calib-chart canvas');
  assert.match(await page.textContent('#calib-sub'), /click-cta · \d+ bins/);
  assert.match(await page.textContent('#card-body'), new RegExp('test rows\\s*' + served.card.data.test_rows.toLocaleString('en-US')));
  await page.waitForTimeout(300);
  await screenshot(page, 'dashboard-learning-models', { fullPage: true });
  // Selecting the refused model: its card says why it is not serving; no chart.
  await page.click(`${bad} .model-link`);
  assert.equal(await page.getAttribute(`${bad} .model-link`, 'aria-pressed'), 'true');
  assert.match(await page.textContent('#card-body'), /Not serving: model_corrupt/);
  // The bandit card stays while models change.
  assert.equal(await page.locator(card).count(), 1);

  // The token never reaches a URL or localStorage; no page errors.
  assert.ok(!page.url().includes(server.adminToken));
  assert.ok(traffic.every((r) => !r.path.includes(server.adminToken)));
  assert.equal(await page.evaluate(() => localStorage.length), 0);
  assert.deepEqual(errors, []);
  await ctx.close();
});
