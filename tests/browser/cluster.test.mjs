// Cluster mode in the dashboard (real Chromium, real nats-server with JetStream, two real
// nodes): the Cluster panel shows both nodes and a cell per partition, every partition owned by
// one of them, this node's own outlined; a lone node (every other test) shows no such panel.
// Needs nats-server on the PATH (.ci/run installs it). Saves target/screenshots/cluster.png.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { startServer, launchBrowser, screenshot, waitFor } from './support.mjs';

let nats;
let natsDir;
let nodes = [];
let browser;

function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
    s.on('error', fail);
  });
}

before(async () => {
  natsDir = mkdtempSync(join(tmpdir(), 'trimtab-nats-'));
  const port = await freePort();
  nats = spawn('nats-server', ['-js', '-a', '127.0.0.1', '-p', String(port), '-sd', join(natsDir, 'js')], { stdio: 'ignore' });
  await new Promise((ok, fail) => {
    nats.once('error', (e) => fail(new Error('nats-server must be installed (apt-get install nats-server): ' + e.message)));
    setTimeout(ok, 500);
  });
  const env = {
    TRIMTAB_ADMIN_TOKEN: 'adm-' + randomBytes(16).toString('hex'),
    TRIMTAB_WRITE_KEY: 'wk-' + randomBytes(16).toString('hex'),
    TRIMTAB_TOKEN_KEY: randomBytes(32).toString('hex'),
    TRIMTAB_PSEUDONYM_KEY: randomBytes(32).toString('hex'),
  };
  for (const node of ['n1', 'n2']) {
    const s = await startServer({
      env,
      config: { cluster: { nats: `nats://127.0.0.1:${port}`, node, partitions: 12, lease_ms: 1500 } },
    });
    s.adminToken = env.TRIMTAB_ADMIN_TOKEN;
    nodes.push(s);
  }
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  for (const s of nodes) await s.stop();
  nats?.kill();
  if (natsDir) rmSync(natsDir, { recursive: true, force: true });
});

test('the Cluster panel maps every partition to its node', async () => {
  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content Security Policy/i.test(m.text())) errors.push(m.text());
  });
  await page.goto(nodes[0].url + '/dashboard');
  await page.fill('#token-input', nodes[0].adminToken);
  await page.click('#login-submit');
  await page.waitForSelector('#cluster-panel:not([hidden])', { timeout: 10000 });
  // Both nodes own a share: 12 cells, each with an owner, both names used.
  const cells = await waitFor(async () => {
    const c = await page.$$eval('#cluster-grid .cluster-cell', (els) => els.map((e) => ({
      owner: e.dataset.owner, mine: e.classList.contains('mine'),
    })));
    const owners = new Set(c.map((x) => x.owner));
    return c.length === 12 && c.every((x) => x.owner) && owners.has('n1') && owners.has('n2') ? c : null;
  }, { timeout: 20000, what: 'every partition owned by n1 or n2 in the panel' });
  // The outlined cells are exactly this node's (n1), as its /readyz says.
  const ready = await (await fetch(nodes[0].url + '/readyz')).json();
  const own = ready.cluster.partitions.map((p) => p.partition).sort((a, b) => a - b);
  const outlined = cells.map((c, i) => (c.mine ? i : -1)).filter((i) => i >= 0);
  assert.deepEqual(outlined, own);
  assert.ok(cells.filter((c) => c.mine).every((c) => c.owner === 'n1'));
  assert.match(await page.textContent('#cluster-summary'), /this node n1 · 2 live nodes/);
  await screenshot(page, 'cluster');
  assert.deepEqual(errors, []);
});

test('a lone node shows no Cluster panel', async () => {
  const lone = await startServer();
  try {
    const page = await browser.newPage();
    await page.goto(lone.url + '/dashboard');
    await page.fill('#token-input', lone.adminToken);
    await page.click('#login-submit');
    await page.waitForSelector('#app:not([hidden])');
    await new Promise((r) => setTimeout(r, 1000));
    assert.equal(await page.isHidden('#cluster-panel'), true);
  } finally {
    await lone.stop();
  }
});
