// The SDK and the demo over HTTPS and WSS: the server serves a self-signed certificate (made with
// openssl for this test), the browser is told to accept it, and the demo's scroll rule pushes its
// offer through a wss:// socket.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, launchBrowser, screenshot, waitFor } from './support.mjs';

let server, browser;
before(async () => {
  server = await startServer({ tls: true });
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

test('over HTTPS the SDK opens wss:// and the demo offer arrives through it', async () => {
  assert.match(server.url, /^https:\/\//);
  const ctx = await browser.newContext({ viewport: { width: 1400, height: 900 }, ignoreHTTPSErrors: true });
  const page = await ctx.newPage();
  const sockets = [];
  const received = [];
  page.on('websocket', (ws) => {
    sockets.push(ws.url());
    ws.on('framereceived', (f) => received.push(JSON.parse(String(f.payload))));
  });
  await page.goto(server.url + '/demo/article.html');
  await page.click('[data-trimtab-consent="all"]');
  await waitFor(() => received.some((m) => m.type === 'ready'), { what: 'WebSocket ready over TLS' });
  assert.ok(sockets.length > 0 && sockets.every((u) => u.startsWith('wss://')), `sockets: ${sockets}`);
  for (let i = 0; i < 200; i++) {
    const depth = await page.evaluate(() => ((scrollY + innerHeight) * 100) / document.documentElement.scrollHeight);
    if (depth >= 82) break;
    await page.mouse.wheel(0, 250);
    await page.waitForTimeout(60);
  }
  const offer = page.locator('[data-trimtab-slot="offer"][data-trimtab-variant="discount"]');
  await offer.waitFor({ timeout: 10000 });
  assert.match(await offer.textContent(), /READ15/);
  assert.ok(received.some((m) => m.type === 'adjust' && m.slot === 'offer'), 'the adjustment came over wss');
  assert.ok(received.some((m) => m.type === 'ack'), 'events acknowledged over wss');
  await screenshot(page, 'demo-article-offer-tls');
  await ctx.close();
});
