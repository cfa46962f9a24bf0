#!/usr/bin/env node
// The demo page over https:// and its WebSocket over wss://, in Debian's headless Chromium through
// playwright-core. Starts the real wsed (--mode wse --inbound echo, port 0) with a self-signed
// certificate made here with the openssl CLI (CN/SAN localhost + 127.0.0.1); Chromium trusts that
// one certificate only, by its SPKI hash (--ignore-certificate-errors-spki-list), not every error.
// Checks: GET https://127.0.0.1:PORT/ serves the page; the page connects with a token (its URL is
// wss://, from location.protocol), pings and round-trips a message; the cookie the page sets is
// Secure; a browser without the SPKI pin refuses the page (certificate error); wsed exits 0.
// Usage: node tests/browser/tls_test.js PATH/TO/wsed
// Needs /usr/bin/chromium and tests/node/node_modules (`npm ci` in tests/node).
// Prints "ok - NAME" / "not ok - NAME: why" per check and, last, "N passed, N failed".
// Exit 0 iff none failed. Bounded: every step has a timeout, the whole run at most 60 s.
'use strict';
const path = require('path');
const fs = require('fs');
const os = require('os');
const crypto = require('crypto');
const { execFileSync } = require('child_process');

const CHROMIUM = '/usr/bin/chromium';
const GLOBAL_TIMEOUT_MS = 60000;
const STEP_MS = 10000;
const SECRET = 'wsed-browser-tls-secret-0123456789abcdef'; // 40 bytes

let passed = 0, failed = 0;
const { WsedProcess, withTimeout } = require(path.join(__dirname, '..', 'node', 'wsed_process.js'));
const wsed = new WsedProcess();
let browser = null, tmp = null;

function killWsed(signal) { wsed.kill(signal); }

function finish(code) {
  console.log(`${passed} passed, ${failed} failed`);
  killWsed('SIGKILL');
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  process.exit(code);  // playwright kills the browsers it launched when this process exits
}

const watchdog = setTimeout(() => {
  failed++;
  console.log(`not ok - global: did not finish within ${GLOBAL_TIMEOUT_MS} ms`);
  finish(1);
}, GLOBAL_TIMEOUT_MS);


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

function startWsed(bin, cert, key) {
  return wsed.start(bin, ['--mode', 'wse', '--port', '0', '--workers', '1', '--inbound', 'echo',
    '--tls-cert-file', cert, '--tls-key-file', key],
  { env: { ...process.env, WSED_JWT_SECRET: SECRET }, scheme: 'wss', timeoutMs: STEP_MS });
}

function stopWsed() { return wsed.stop(); }

function launch(chromium, extra) {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 2 * STEP_MS,
    args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
      '--disable-background-networking', '--no-first-run', ...extra],
  });
}

(async () => {
  const bin = process.argv[2];
  if (!bin || process.argv.length > 3) {
    console.error('usage: node tls_test.js PATH/TO/wsed');
    process.exit(2);
  }
  let chromium;
  const ok = await check('prerequisites (wsed binary, /usr/bin/chromium, playwright-core, openssl)', () => {
    assert(fs.existsSync(bin), `no wsed binary at ${bin}`);
    assert(fs.existsSync(CHROMIUM), `${CHROMIUM} missing: install Debian's chromium (tools/install-deps.sh)`);
    try {
      ({ chromium } = require(path.join(__dirname, '..', 'node', 'node_modules', 'playwright-core')));
    } catch (e) {
      throw new Error('playwright-core missing: run `npm ci` in tests/node');
    }
  });
  if (!ok) finish(1);

  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'wsed-browser-tls-'));
  const cert = path.join(tmp, 'cert.pem'), key = path.join(tmp, 'key.pem');
  let spki = '';
  await check('a self-signed certificate and its SPKI hash', () => {
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
      '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=localhost',
      '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'], { timeout: STEP_MS, stdio: ['ignore', 'ignore', 'pipe'] });
    const der = new crypto.X509Certificate(fs.readFileSync(cert)).publicKey.export({ type: 'spki', format: 'der' });
    spki = crypto.createHash('sha256').update(der).digest('base64');
    assert(spki.length === 44, `SPKI hash ${spki}`);
  });

  let port = 0;
  if (!await check('wsed starts with TLS and prints wss://', async () => { port = await startWsed(bin, cert, key); })) {
    await stopWsed();
    finish(1);
  }
  const base = `https://127.0.0.1:${port}/`;
  let token = '';
  await check('gen-token mints a token', () => {
    token = execFileSync(bin, ['gen-token', '--sub', 'tls-user', '--ttl', '1h'], {
      env: { ...process.env, WSED_JWT_SECRET: SECRET }, timeout: STEP_MS, encoding: 'utf8',
    }).trim();
    assert(/^[\w-]+\.[\w-]+\.[\w-]+$/.test(token), `not a JWT: ${token}`);
  });

  await check('chromium launches (headless, trusting the certificate by its SPKI hash)', async () => {
    browser = await launch(chromium, [`--ignore-certificate-errors-spki-list=${spki}`]);
  });

  if (browser) {
    const context = await browser.newContext();
    const page = await context.newPage();
    page.setDefaultTimeout(STEP_MS);
    const errors = [];
    const sockets = [];
    page.on('pageerror', (e) => errors.push(`page error: ${e.message}`));
    page.on('console', (m) => { if (m.type() === 'error') errors.push(`console error: ${m.text()}`); });
    page.on('websocket', (ws) => sockets.push(ws.url()));
    let loaded = false;
    loaded = await check('GET https://127.0.0.1:PORT/ serves the demo page', async () => {
      const r = await page.goto(base, { timeout: STEP_MS });
      assert(r && r.status() === 200, `status ${r && r.status()}`);
      assert((r.headers()['content-type'] || '').startsWith('text/html'), `content-type ${r.headers()['content-type']}`);
      const sec = await r.securityDetails();
      assert(sec && /^TLS 1\.[23]$/.test(sec.protocol), `security details ${JSON.stringify(sec)}`);
      assert(sec.subjectName === 'localhost', `certificate subject ${sec.subjectName}`);
      assert((await page.title()) === 'wsed demo', `title "${await page.title()}"`);
      assert(await page.evaluate(() => window.isSecureContext), 'not a secure context');
    });
    if (loaded) {
      await check('Connect over wss:// shows server_ready for tls-user', async () => {
        await page.fill('#token', token);
        await page.click('#connect');
        await page.locator('#state[data-state="open"]').waitFor();
        await page.waitForFunction(() => document.getElementById('ready').textContent.includes('tls-user'));
        const msg = JSON.parse(await page.locator('#ready').textContent());
        assert(msg.t === 'server_ready' && msg.p.details.user_id === 'tls-user', `#ready ${JSON.stringify(msg)}`);
        assert(sockets.length === 1 && sockets[0] === `wss://127.0.0.1:${port}/wse`, `WebSocket URLs ${JSON.stringify(sockets)}`);
      });
      await check('the token cookie the page set is Secure', async () => {
        const c = (await context.cookies(base)).find((k) => k.name === 'access_token');
        assert(c && c.value === token, `cookies ${JSON.stringify(await context.cookies(base))}`);
        assert(c.secure === true, `access_token cookie not Secure: ${JSON.stringify(c)}`);
      });
      await check('Ping shows a PONG', async () => {
        await page.click('#ping');
        await page.locator('#log li.in[data-t="PONG"]').first().waitFor();
      });
      await check('Send round-trips a message (echo)', async () => {
        const text = `over tls ${crypto.randomBytes(6).toString('hex')}`;
        await page.fill('#type', 'chat');
        await page.fill('#payload', JSON.stringify({ text }));
        await page.click('#send');
        const echo = page.locator('#log li.in[data-t="chat"] pre').first();
        await echo.waitFor();
        const msg = JSON.parse(await echo.textContent());
        assert(msg.t === 'chat' && msg.p && msg.p.text === text, `echo ${JSON.stringify(msg)}`);
      });
      await check('no page errors or CSP violations', () => { assert(errors.length === 0, errors.join('; ')); });
    }
    await context.close().catch(() => {});
    await withTimeout(browser.close(), STEP_MS, 'browser close').catch((e) => console.log(`# ${e.message}`));
  }

  // Without the pin the same page is refused: the certificate is not trusted by default.
  await check('a browser without the SPKI pin refuses the page (certificate error)', async () => {
    const b = await launch(chromium, []);
    try {
      const page = await (await b.newContext()).newPage();
      let err = null;
      try {
        await page.goto(base, { timeout: STEP_MS });
      } catch (e) {
        err = e;
      }
      assert(err && /ERR_CERT/.test(err.message), `loaded, or another error: ${err && err.message.split('\n')[0]}`);
    } finally {
      await withTimeout(b.close(), STEP_MS, 'browser close').catch(() => {});
    }
  });

  await check('wsed exits 0 on SIGTERM', async () => {
    const code = await withTimeout(stopWsed(), 15000, 'wsed exit');
    assert(code === 0, `exit ${code}`);
  });
  clearTimeout(watchdog);
  finish(failed === 0 ? 0 : 1);
})().catch((e) => {
  failed++;
  console.log(`not ok - test crashed: ${e && e.stack ? e.stack.split('\n')[0] : e}`);
  finish(1);
});
