// Shared helpers of the browser tests (SDK, demo, dashboard): start the real server binary,
// launch Debian's chromium through playwright-core, save screenshots, talk to the admin API.
//
// Environment:
//   TRIMTAB_BIN      server binary (default ../../target/debug/trimtab, relative to this dir)
//   TRIMTAB_SIM_BIN  simulator binary (default: trimtab-sim beside the server binary)
//   CHROMIUM_PATH    browser (default /usr/bin/chromium; never downloaded)
//   TRIMTAB_TEST_LOG set to 1 to echo the server's log to stderr
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
export const repoRoot = resolve(here, '..', '..');
export const screenshotDir = join(repoRoot, 'target', 'screenshots');

export const BIN = resolve(here, process.env.TRIMTAB_BIN || '../../target/debug/trimtab');
/** The simulator's binary (its own crate), beside the server's unless TRIMTAB_SIM_BIN says. */
export const SIM_BIN = process.env.TRIMTAB_SIM_BIN
  ? resolve(here, process.env.TRIMTAB_SIM_BIN)
  : resolve(dirname(BIN), 'trimtab-sim');

/** Serialises a plain object as TOML (tables for nested objects; enough for trimtab's config). */
export function toToml(obj, prefix = '') {
  const scalars = [];
  const tables = [];
  const val = (v) =>
    Array.isArray(v) ? `[${v.map(val).join(', ')}]` : typeof v === 'string' ? JSON.stringify(v) : String(v);
  for (const [k, v] of Object.entries(obj)) {
    if (v && typeof v === 'object' && !Array.isArray(v)) tables.push([k, v]);
    else scalars.push(`${k} = ${val(v)}`);
  }
  let out = scalars.join('\n') + (scalars.length ? '\n' : '');
  for (const [k, v] of tables) {
    const name = prefix ? `${prefix}.${k}` : k;
    out += `\n[${name}]\n` + toToml(v, name);
  }
  return out;
}

/**
 * Starts `trimtab serve` on a free port with a fresh data dir and the repo's `scripts/`.
 * `env` is merged into the process environment; `config` (object) is written as a TOML config
 * file and passed with `--config`. `scriptFiles` ({"name.rhai": source}), when given, replaces the
 * scripts dir by a fresh one (in the data dir) holding just those files (names may include a
 * subdirectory, e.g. "experiments/x.toml"); experiments created over the API are then stored there
 * too, not in the repo. Resolves once the server
 * prints its address.
 * @returns {Promise<{url:string, adminToken:string, writeKey:string, dataDir:string,
 *   log:()=>string, stop:()=>Promise<void>}>}
 */
export async function startServer({ env = {}, config = null, scripts = join(repoRoot, 'scripts'), scriptFiles = null, modelsDir = null, tls = false } = {}) {
  if (!existsSync(BIN)) throw new Error(`server binary not found at ${BIN}: run \`cargo build\` or set TRIMTAB_BIN`);
  const dataDir = mkdtempSync(join(tmpdir(), 'trimtab-test-'));
  if (tls) {
    // A self-signed certificate for localhost/127.0.0.1 (openssl), served over HTTPS and WSS.
    const cert = join(dataDir, 'cert.pem');
    const key = join(dataDir, 'key.pem');
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
      '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=localhost',
      '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'], { stdio: 'ignore' });
    config = { ...(config || {}), tls: { cert, key } };
  }
  if (scriptFiles) {
    scripts = join(dataDir, 'scripts');
    mkdirSync(scripts, { recursive: true });
    for (const [name, source] of Object.entries(scriptFiles)) {
      const file = join(scripts, name); // may name a subdirectory, e.g. experiments/x.toml
      mkdirSync(dirname(file), { recursive: true });
      writeFileSync(file, source);
    }
  }
  const adminToken = 'adm-' + randomBytes(16).toString('hex');
  const writeKey = 'wk-' + randomBytes(16).toString('hex');
  // The model registry lives with the test's data, never in the repository's models/.
  const args = ['serve', '--addr', '127.0.0.1:0', '--data', join(dataDir, 'data'), '--scripts', scripts, '--models', modelsDir || join(dataDir, 'models')];
  if (config) {
    const file = join(dataDir, 'trimtab.toml');
    writeFileSync(file, toToml(config));
    args.push('--config', file);
  }
  const child = spawn(BIN, args, {
    cwd: repoRoot, // debug builds serve static/ from disk
    env: {
      ...process.env,
      TRIMTAB_ADMIN_TOKEN: adminToken,
      TRIMTAB_WRITE_KEY: writeKey,
      TRIMTAB_LOG: process.env.TRIMTAB_LOG || 'info',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let logText = '';
  const onData = (d) => {
    logText += d;
    if (process.env.TRIMTAB_TEST_LOG) process.stderr.write(d);
  };
  child.stderr.on('data', onData);
  const url = await new Promise((ok, fail) => {
    const timer = setTimeout(() => fail(new Error('server did not start in 20 s:\n' + logText)), 20000);
    child.stdout.on('data', (d) => {
      onData(d);
      const m = /listening on (https?:\/\/[^\s]+)/.exec(logText);
      if (m) {
        clearTimeout(timer);
        ok(m[1]);
      }
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      fail(new Error(`server exited with ${code}:\n${logText}`));
    });
  });
  let stopped = false;
  return {
    url,
    adminToken,
    writeKey,
    dataDir,
    log: () => logText,
    async stop() {
      if (stopped) return;
      stopped = true;
      if (child.exitCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(t);
      }
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** Launches Debian's chromium headless (never a downloaded browser). playwright's launch() always
 *  gives the browser a fresh temporary profile (user-data-dir) and removes it on close. */
export async function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      // Test pages fulfilled by playwright's routing have no address space of their own; without
      // this, Chromium's Local Network Access blocks their WebSocket to 127.0.0.1.
      '--disable-features=LocalNetworkAccessChecks',
    ],
  });
}

/** Saves a full-page screenshot as target/screenshots/<name>.png and returns the path. */
export async function screenshot(page, name, opts = {}) {
  mkdirSync(screenshotDir, { recursive: true });
  const path = join(screenshotDir, `${name}.png`);
  await page.screenshot({ path, ...opts });
  return path;
}

/** fetch() against the server with the admin token. Returns {status, body} (body parsed if JSON). */
export async function admin(server, method, path, body) {
  const res = await fetch(server.url + path, {
    method,
    headers: {
      authorization: `Bearer ${server.adminToken}`,
      ...(body ? { 'content-type': 'application/json' } : {}),
    },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  let parsed = text;
  try {
    parsed = JSON.parse(text);
  } catch {}
  return { status: res.status, body: parsed };
}

/** Scrolls with the mouse wheel (like a reader) until the page's depth reaches `pct`. */
export async function scrollTo(page, pct) {
  for (let i = 0; i < 200; i++) {
    const depth = await page.evaluate(() => ((scrollY + innerHeight) * 100) / document.documentElement.scrollHeight);
    if (depth >= pct) return depth;
    await page.mouse.wheel(0, 250);
    await page.waitForTimeout(60);
  }
  throw new Error(`could not scroll to ${pct}%`);
}

/** Polls `fn` until it returns a truthy value (returned) or `timeout` ms pass (throws). */
export async function waitFor(fn, { timeout = 10000, interval = 100, what = 'condition' } = {}) {
  const end = Date.now() + timeout;
  let last;
  while (Date.now() < end) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, interval));
  }
  throw new Error(`timed out waiting for ${what} (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
}

/** Stored consent, granted for everything (put in localStorage as `trimtab.consent`). */
export const GRANTED = JSON.stringify({ state: 'granted', analytics: true, personalization: true, ts: 1 });

/** Collects the events a page sends over its WebSocket (`sent`, each with its send time `at`),
 *  what it receives (`received`), whether it got `ready`; `signals(kind?)` filters the sent
 *  signal events. */
export function recordSocket(page) {
  const rec = { sent: [], received: [], ready: false };
  page.on('websocket', (ws) => {
    ws.on('framesent', (f) => {
      const m = JSON.parse(String(f.payload));
      if (m.type === 'events') for (const e of m.events) rec.sent.push({ ...e, at: Date.now() });
    });
    ws.on('framereceived', (f) => {
      const m = JSON.parse(String(f.payload));
      if (m.type === 'ready') rec.ready = true;
      rec.received.push({ ...m, at: Date.now() });
    });
  });
  rec.signals = (kind) => rec.sent.filter((e) => e.type === 'signal' && (!kind || e.props.kind === kind));
  return rec;
}

/** Records every request a page makes whose path starts with /v1/ (HTTP and WebSocket). */
export function recordApiTraffic(page) {
  const seen = [];
  page.on('request', (r) => {
    const u = new URL(r.url());
    if (u.pathname.startsWith('/v1/')) seen.push({ method: r.method(), path: u.pathname, body: r.postData() });
  });
  page.on('websocket', (ws) => {
    const u = new URL(ws.url());
    seen.push({ method: 'WS', path: u.pathname });
  });
  return seen;
}
