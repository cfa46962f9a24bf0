#!/usr/bin/env node
// The demo page (GET /) driven by a real browser: Debian's headless Chromium through playwright-core.
// Starts the real wsed (--mode wse --inbound echo, port 0), mints tokens with `wsed gen-token`, and
// uses the page the way a newcomer would: type a token, Connect, Ping, Send; then a cookie-only
// connection and a forged token (close 4401).
// Usage: node tests/browser/demo_test.js PATH/TO/wsed   (needs /usr/bin/chromium and
// tests/node/node_modules: `npm ci` in tests/node).
// Prints "ok - NAME" / "not ok - NAME: why" per check and, last, "N passed, N failed".
// Exit 0 iff none failed. Bounded: every step has a timeout, the whole run at most 60 s.
'use strict';
const path = require('path');
const fs = require('fs');
const { spawn, execFileSync } = require('child_process');

const CHROMIUM = '/usr/bin/chromium';
const GLOBAL_TIMEOUT_MS = 60000;
const STEP_MS = 10000;
const SECRET = 'wsed-browser-test-secret-0123456789abcdef'; // 40 bytes
const FORGER_SECRET = 'not-the-server-secret-0123456789abcdefgh';

let passed = 0, failed = 0;
let wsed = null, browser = null;

function finish(code) {
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(code);
}

function killWsed(signal) {
  if (wsed && wsed.exitCode === null && wsed.signalCode === null) {
    try { process.kill(wsed.pid, signal); } catch (e) { /* already gone */ }
  }
}

const watchdog = setTimeout(() => {
  failed++;
  console.log(`not ok - global: did not finish within ${GLOBAL_TIMEOUT_MS} ms`);
  killWsed('SIGKILL');
  finish(1);  // playwright kills the browser it launched when this process exits
}, GLOBAL_TIMEOUT_MS);

function withTimeout(p, ms, what) {
  let t;
  return Promise.race([p, new Promise((_, rej) => { t = setTimeout(() => rej(new Error(`timeout (${ms} ms): ${what}`)), ms); })])
    .finally(() => clearTimeout(t));
}

async function check(name, fn) {
  try {
    await withTimeout(Promise.resolve().then(fn), 2 * STEP_MS, name);
    passed++;
    console.log(`ok - ${name}`);
    return true;
  } catch (e) {
    failed++;
    const why = String(e && e.message ? e.message : e).split('\n')[0];
    console.log(`not ok - ${name}: ${why}`);
    return false;
  }
}

function assert(cond, msg) { if (!cond) throw new Error(msg); }

function genToken(bin, sub, secret) {
  return execFileSync(bin, ['gen-token', '--sub', sub, '--ttl', '1h'], {
    env: { ...process.env, WSED_JWT_SECRET: secret }, timeout: STEP_MS, encoding: 'utf8',
  }).trim();
}

// Starts wsed and resolves with its port, read from the first stdout line ("... ws://127.0.0.1:PORT/ ...").
function startWsed(bin) {
  wsed = spawn(bin, ['--mode', 'wse', '--port', '0', '--workers', '1', '--inbound', 'echo'], {
    env: { ...process.env, WSED_JWT_SECRET: SECRET }, stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  wsed.stderr.on('data', (d) => { stderr += d; });
  return withTimeout(new Promise((resolve, reject) => {
    let buf = '';
    wsed.stdout.on('data', (d) => {
      if (buf === null) return;
      buf += d;
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      const m = /ws:\/\/127\.0\.0\.1:(\d+)\//.exec(buf.slice(0, nl));
      buf = null;
      if (m) resolve(Number(m[1])); else reject(new Error('no ws://127.0.0.1:PORT/ in the first line'));
    });
    wsed.once('error', reject);
    wsed.once('exit', (code, sig) => reject(new Error(`wsed exited (${code ?? sig}): ${stderr.trim()}`)));
  }), STEP_MS, 'wsed startup line');
}

function stopWsed() {
  return new Promise((resolve) => {
    if (!wsed || wsed.exitCode !== null || wsed.signalCode !== null) {
      resolve(wsed ? (wsed.exitCode ?? wsed.signalCode) : null);
      return;
    }
    const t = setTimeout(() => killWsed('SIGKILL'), 10000);
    wsed.once('exit', (code, sig) => { clearTimeout(t); resolve(code ?? sig); });
    killWsed('SIGTERM');
  });
}

// A fresh browser context with its page; records page errors and console errors (CSP violations).
async function openPage(url, cookies) {
  const context = await browser.newContext();
  if (cookies) await context.addCookies(cookies);
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  page.errors = [];
  page.on('pageerror', (e) => page.errors.push(`page error: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') page.errors.push(`console error: ${m.text()}`); });
  const response = await page.goto(url, { timeout: STEP_MS });
  return { context, page, response };
}

async function readyMessage(page, userId) {
  await page.locator('#state[data-state="open"]').waitFor();
  await page.waitForFunction((u) => document.getElementById('ready').textContent.includes(u), userId);
  const msg = JSON.parse(await page.locator('#ready').textContent());
  assert(msg.t === 'server_ready', `#ready holds t=${msg.t}`);
  const got = msg.p && msg.p.details && msg.p.details.user_id;
  assert(got === userId, `user_id ${got}, want ${userId}`);
  return msg;
}

(async () => {
  const bin = process.argv[2];
  if (!bin) { console.error('usage: node demo_test.js PATH/TO/wsed'); process.exit(2); }
  let chromium;
  const ok = await check('prerequisites (wsed binary, /usr/bin/chromium, playwright-core)', () => {
    assert(fs.existsSync(bin), `no wsed binary at ${bin}`);
    assert(fs.existsSync(CHROMIUM), `${CHROMIUM} missing: install Debian's chromium (tools/install-deps.sh)`);
    try {
      ({ chromium } = require(path.join(__dirname, '..', 'node', 'node_modules', 'playwright-core')));
    } catch (e) {
      throw new Error('playwright-core missing: run `npm ci` in tests/node');
    }
  });
  if (!ok) finish(1);

  let port = 0, token = '', cookieToken = '', forged = '';
  if (!await check('wsed starts and prints its port', async () => { port = await startWsed(bin); })) {
    await stopWsed();
    finish(1);
  }
  const base = `http://127.0.0.1:${port}/`;
  await check('gen-token mints tokens', () => {
    token = genToken(bin, 'demo-user', SECRET);
    cookieToken = genToken(bin, 'cookie-user', SECRET);
    forged = genToken(bin, 'demo-user', FORGER_SECRET);  // right shape, wrong key
    for (const t of [token, cookieToken, forged]) assert(/^[\w-]+\.[\w-]+\.[\w-]+$/.test(t), `not a JWT: ${t}`);
  });

  await check('chromium launches (headless)', async () => {
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      timeout: 2 * STEP_MS,
      args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
        '--disable-background-networking', '--no-first-run'],
    });
  });

  if (browser) {
    // 1. A newcomer opens the page, pastes a token, connects, pings and sends.
    let s = null;
    await check('GET / serves the demo page', async () => {
      s = await openPage(base);
      const r = s.response;
      assert(r && r.status() === 200, `status ${r && r.status()}`);
      const h = r.headers();
      assert((h['content-type'] || '').startsWith('text/html'), `content-type ${h['content-type']}`);
      assert(/connect-src/.test(h['content-security-policy'] || ''), 'no Content-Security-Policy');
      assert(h['x-content-type-options'] === 'nosniff', 'no X-Content-Type-Options: nosniff');
      assert((await s.page.title()) === 'wsed demo', `title "${await s.page.title()}"`);
      await s.page.locator('#connect').waitFor({ state: 'visible' });
    });
    if (s) {
      const { page } = s;
      await check('token field + Connect shows server_ready for demo-user', async () => {
        await page.fill('#token', token);
        await page.click('#connect');
        await readyMessage(page, 'demo-user');
      });
      await check('Ping shows a PONG and its latency', async () => {
        await page.click('#ping');
        await page.locator('#log li.in[data-t="PONG"]').first().waitFor();
        await page.waitForFunction(() => /PONG after \d+ ms/.test(document.getElementById('latency').textContent));
      });
      await check('Send chat {"text":"hello"} shows the echo', async () => {
        await page.fill('#type', 'chat');
        await page.fill('#payload', '{"text":"hello"}');
        await page.click('#send');
        const echo = page.locator('#log li.in[data-t="chat"] pre').first();
        await echo.waitFor();
        const msg = JSON.parse(await echo.textContent());
        assert(msg.t === 'chat' && msg.p && msg.p.text === 'hello', `echo ${JSON.stringify(msg)}`);
      });
      await check('a large echo (binary C: zlib) is inflated and shown', async () => {
        const big = 'z'.repeat(4000);  // over the default --compression-threshold (1024)
        await page.fill('#payload', JSON.stringify({ text: big }));
        await page.click('#send');
        const item = page.locator('#log li.in[data-t="chat"]', { hasText: 'binary C:' }).first();
        await item.waitFor();
        const msg = JSON.parse(await item.locator('pre').textContent());
        assert(msg.p && msg.p.text === big, 'inflated echo differs from what was sent');
      });
      await check('Disconnect closes with 1000', async () => {
        await page.click('#disconnect');
        await page.locator('#close-info[data-code="1000"]').waitFor();
        assert((await page.locator('#state').getAttribute('data-state')) === 'closed', 'state not closed');
      });
      await check('no page errors or CSP violations', () => {
        assert(page.errors.length === 0, page.errors.join('; '));
      });
      await s.context.close().catch(() => {});
    }

    // 2. The token comes from the access_token cookie alone (field left empty).
    await check('cookie access_token with an empty field gets server_ready', async () => {
      const c = await openPage(base, [{ name: 'access_token', value: cookieToken, url: base }]);
      try {
        assert((await c.page.inputValue('#token')) === '', 'token field not empty');
        await c.page.click('#connect');
        await readyMessage(c.page, 'cookie-user');
      } finally {
        await c.context.close().catch(() => {});
      }
    });

    // 3. A token signed with another key: the server refuses it with close 4401, the page says so.
    await check('forged token shows close 4401 (token refused)', async () => {
      const c = await openPage(base);
      try {
        await c.page.fill('#token', forged);
        await c.page.click('#connect');
        const info = c.page.locator('#close-info[data-code="4401"]');
        await info.waitFor();
        const text = await info.textContent();
        assert(/4401/.test(text) && /refused/i.test(text), `close info "${text}"`);
        assert((await c.page.locator('#ready').textContent()) === '', 'server_ready shown for a forged token');
      } finally {
        await c.context.close().catch(() => {});
      }
    });

    await withTimeout(browser.close(), STEP_MS, 'browser close').catch((e) => console.log(`# ${e.message}`));
  }

  await check('wsed exits 0 on SIGTERM', async () => {
    const code = await withTimeout(stopWsed(), 15000, 'wsed exit');
    assert(code === 0, `exit ${code}`);
  });
  clearTimeout(watchdog);
  finish(failed === 0 ? 0 : 1);
})().catch(async (e) => {
  failed++;
  console.log(`not ok - test crashed: ${e && e.stack ? e.stack.split('\n')[0] : e}`);
  killWsed('SIGKILL');
  finish(1);
});
