// The dashboard's Rules lab in a real browser against the real server: type a rule with an
// error and see it inline (gutter and problems list), fix it, dry-run it on a user, backtest it
// on recorded traffic, install it, and see it fire on the demo article.
// Saves target/screenshots/lab.png.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { startServer, launchBrowser, screenshot, admin, repoRoot, scrollTo } from './support.mjs';

let server;
let browser;

before(async () => {
  // A copy of the example rules: the test installs a rule, which must not land in the repo.
  const scriptFiles = {};
  for (const f of ['scroll_offer.rhai', 'hover_review.rhai', 'cta_by_context.rhai']) {
    scriptFiles[f] = readFileSync(join(repoRoot, 'scripts', f), 'utf8');
  }
  server = await startServer({ config: { rate: { user_per_min: 0 } }, scriptFiles });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

/** Recorded traffic: `n` readers of an article, the first half scrolling to 60%, the rest to 20%. */
async function seed(n) {
  const now = Date.now();
  const events = [];
  for (let i = 0; i < n; i++) {
    const user = `lab-seed-${i}`;
    const base = { user, session: `s-${i}`, ts: now, context: { page: '/article/seeded' }, consent: { analytics: true, personalization: true } };
    events.push({ ...base, id: `pv-${i}`, type: 'page_view', props: { path: '/article/seeded' } });
    events.push({ ...base, id: `sc-${i}`, type: 'scroll', props: { depth: i < n / 2 ? 60 : 20 } });
  }
  const res = await fetch(server.url + '/v1/events', {
    method: 'POST',
    headers: { authorization: `Bearer ${server.writeKey}`, 'content-type': 'application/json' },
    body: JSON.stringify({ events }),
  });
  assert.equal(res.status, 202, await res.text());
}

const GOOD = `const ON = ["scroll"];
if user.showing("offer") == "discount" { return; }
if (user.scroll?.max_depth ?? 0.0) > 30.0 {
    adjust("offer", "discount", #{ headline: "From the rules lab", code: "LAB30" });
}`;

test('type an error, see it inline; fix it, dry-run, backtest, install, see it fire on the demo', async () => {
  await seed(20);
  const ctx = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
  const page = await ctx.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  page.on('console', (m) => { if (m.type() === 'error' && /Content Security Policy/i.test(m.text())) errors.push(m.text()); });
  await page.goto(server.url + '/dashboard#lab');
  await page.fill('#token-input', server.adminToken);
  await page.click('#login-submit');
  await page.waitForSelector('#page-lab:not([hidden])');
  await page.waitForSelector('#lab-base option[value="scroll_offer"]', { state: 'attached' });

  // An error on line 2: the problems list names it, the gutter marks the line.
  await page.fill('#lab-source', 'const ON = ["scroll"];\nlet depth = ;\n');
  const err = await page.waitForSelector('#lab-problems li.err');
  assert.match(await err.textContent(), /^error line 2:\d+/);
  assert.equal(await page.textContent('#lab-gutter span.err'), '2');
  assert.match(await page.textContent('#lab-status'), /1 error/);
  // A misspelt field: a warning, not an error.
  await page.fill('#lab-source', 'const ON = ["scroll"];\nlet d = user.scrol;\n');
  const warn = await page.waitForSelector('#lab-problems li.warn');
  assert.match(await warn.textContent(), /user\.scrol does not exist/);
  // Fixed.
  await page.fill('#lab-source', GOOD);
  await page.fill('#lab-name', 'lab_offer');
  await page.waitForFunction(() => document.querySelector('#lab-status').textContent === 'compiles');
  assert.equal(await page.$('#lab-problems li.err, #lab-problems li.warn'), null);
  assert.match(await page.textContent('#lab-problems'), /No problems · runs on scroll/);

  // Dry run on a seeded reader who scrolled to 60%: the scroll would adjust the offer.
  await page.fill('#lab-user', 'lab-seed-0');
  await page.click('#lab-dry-run');
  const row = await page.waitForSelector('.lab-dry-table tr:has-text("offer → discount")');
  assert.match(await row.textContent(), /scroll/);

  // Backtest: it fires for the ten readers past 30%.
  await page.click('#lab-backtest');
  await page.waitForFunction(() => /^Done/.test(document.querySelector('#lab-bt-progress').textContent), null, { timeout: 20000 });
  const kpis = await page.textContent('#lab-bt-result .lab-kpis');
  assert.match(kpis, /10 of 20/, kpis);
  assert.ok(await page.$('#lab-bt-result .lab-bar'), 'bars of the result');
  // Not installed yet: the diff says so; the server has no such rule.
  await page.waitForFunction(() => /no installed rule named lab_offer/.test(document.querySelector('#lab-diff-sub').textContent));
  assert.equal((await admin(server, 'GET', '/v1/rules/lab_offer')).status, 404);
  await screenshot(page, 'lab');

  // Install; then the diff is against the installed version: identical.
  await page.click('#lab-install');
  await page.waitForFunction(() => /^Installed lab_offer/.test(document.querySelector('#lab-install-result').textContent));
  await page.waitForFunction(() => /identical/.test(document.querySelector('#lab-diff-sub').textContent));
  assert.equal((await admin(server, 'GET', '/v1/rules/lab_offer')).body.source, GOOD);

  // A reader on the demo article gets the lab's offer past 30% (the shipped rule waits for 75%).
  const reader = await ctx.newPage();
  await reader.goto(server.url + '/demo/article.html');
  await reader.click('[data-trimtab-consent="all"]');
  await reader.waitForTimeout(500);
  await scrollTo(reader, 45);
  const offer = reader.locator('[data-trimtab-slot="offer"][data-trimtab-variant="discount"]');
  await offer.waitFor({ timeout: 10000 });
  assert.match(await offer.textContent(), /LAB30/);
  assert.deepEqual(errors, []);
  await ctx.close();
});
