#!/usr/bin/env node
// The demo page (GET /) driven by a real browser: Debian's headless Chromium through playwright-core.
// Starts the real wsed (--mode wse --inbound echo, port 0), mints tokens with `wsed gen-token`, and
// uses the page the way a newcomer would: type a token, Connect, Ping, Send; then a cookie-only
// connection, a forged token (close 4401), and the chat: alice and bob (two browser contexts)
// subscribe to chat.lobby and publish to each other; a token without a publish claim sees
// PUBLISH_DENIED; with a wsed that has --e2e (started with it), the page's Encrypt option: the
// WebCrypto key exchange, a ping and an echo sealed both ways on the wire. The chat case needs a
// wsed with topics (its --help lists --api-key-file) and is skipped, saying so, without one.
// Usage: node tests/browser/demo_test.js PATH/TO/wsed [--page FILE] [--screenshot FILE.png]
//   --page: serve FILE for GET / instead of the embedded page (the server's headers, CSP included,
//           are kept): tries a page against a binary built from another tree.
//   --screenshot: saves alice's page after the chat exchange (and carol's denial as FILE-denied.png).
// Needs /usr/bin/chromium and tests/node/node_modules (`npm ci` in tests/node).
// Prints "ok - NAME" / "not ok - NAME: why" per check and, last, "N passed, N failed".
// Exit 0 iff none failed. Bounded: every step has a timeout, the whole run at most 60 s.
'use strict';
const path = require('path');
const fs = require('fs');
const { execFileSync } = require('child_process');

const CHROMIUM = '/usr/bin/chromium';
const GLOBAL_TIMEOUT_MS = 60000;
const STEP_MS = 10000;
const SECRET = 'wsed-browser-test-secret-0123456789abcdef'; // 40 bytes
const FORGER_SECRET = 'not-the-server-secret-0123456789abcdefgh';

let passed = 0, failed = 0;
const { WsedProcess, withTimeout } = require(path.join(__dirname, '..', 'node', 'wsed_process.js'));
const wsed = new WsedProcess();
let browser = null;

function finish(code) {
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(code);
}

function killWsed(signal) { wsed.kill(signal); }

const watchdog = setTimeout(() => {
  failed++;
  console.log(`not ok - global: did not finish within ${GLOBAL_TIMEOUT_MS} ms`);
  killWsed('SIGKILL');
  finish(1);  // playwright kills the browser it launched when this process exits
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

function genToken(bin, sub, secret, extra = []) {
  return execFileSync(bin, ['gen-token', '--sub', sub, '--ttl', '1h', ...extra], {
    env: { ...process.env, WSED_JWT_SECRET: secret }, timeout: STEP_MS, encoding: 'utf8',
  }).trim();
}

// Starts wsed and resolves with its port, read from the first stdout line ("... ws://127.0.0.1:PORT/ ...").
function startWsed(bin, extra = []) {
  return wsed.start(bin, ['--mode', 'wse', '--port', '0', '--workers', '1', '--inbound', 'echo', ...extra],
    { env: { ...process.env, WSED_JWT_SECRET: SECRET }, timeoutMs: STEP_MS });
}

function stopWsed() { return wsed.stop(); }

// True when the binary has topics and publishing (issue 8): its --help lists --api-key-file.
function hasFanout(bin) {
  const help = execFileSync(bin, ['--help'], { timeout: STEP_MS, encoding: 'utf8' });
  return help.includes('--api-key-file');
}

// True when the binary has end-to-end encryption: its --help lists --e2e.
function hasE2e(bin) {
  const help = execFileSync(bin, ['--help'], { timeout: STEP_MS, encoding: 'utf8' });
  return help.includes('--e2e');
}

// The "Encrypt" option: WebCrypto key exchange, then a ping and an echo inside E: frames (seen
// sealed on the wire both ways, shown decrypted on the page).
async function e2eChecks(base, token) {
  const c = await openPage(base);
  const wire = { in: 0, out: 0, clearIn: [] };
  c.page.on('websocket', (sock) => {
    const sealed = (f) => typeof f.payload !== 'string' && f.payload.length >= 30 &&
      f.payload[0] === 0x45 && f.payload[1] === 0x3a;
    sock.on('framereceived', (f) => { if (sealed(f)) wire.in++; else wire.clearIn.push(String(f.payload)); });
    sock.on('framesent', (f) => { if (sealed(f)) wire.out++; });
  });
  try {
    await check('Encrypt + Connect: the key exchange completes (E2E: on)', async () => {
      await c.page.check('#encrypt');
      await c.page.fill('#token', token);
      await c.page.click('#connect');
      await readyMessage(c.page, 'demo-user');
      await c.page.locator('#e2e-state[data-state="on"]').waitFor();
    });
    await check('encrypted Ping: the PONG comes back inside E: and is shown decrypted', async () => {
      await c.page.click('#ping');
      await c.page.locator('#log li.in[data-t="PONG"]', { hasText: 'E: decrypted' }).first().waitFor();
      await c.page.waitForFunction(() => /PONG after \d+ ms/.test(document.getElementById('latency').textContent));
    });
    await check('encrypted Send: the echo round trip is sealed both ways on the wire', async () => {
      await c.page.fill('#type', 'chat');
      await c.page.fill('#payload', '{"text":"secret hello"}');
      await c.page.click('#send');
      const echo = c.page.locator('#log li.in[data-t="chat"]', { hasText: 'E: decrypted' }).first();
      await echo.waitFor();
      const msg = JSON.parse(await echo.locator('pre').textContent());
      assert(msg.t === 'chat' && msg.p && msg.p.text === 'secret hello', `echo ${JSON.stringify(msg)}`);
      assert(wire.out >= 2 && wire.in >= 2, `E: frames on the wire: ${wire.out} sent, ${wire.in} received`);
      assert(!wire.clearIn.some((t) => t.includes('secret hello')), 'the echo came in the clear');
    });
    await check('encrypted page: no page errors or CSP violations', () => {
      assert(c.page.errors.length === 0, c.page.errors.join('; '));
    });
  } finally {
    await c.context.close().catch(() => {});
  }
}

let pageOverride = null;  // --page FILE: its bytes, served for GET / with the server's headers

// A fresh browser context with its page; records page errors and console errors (CSP violations).
async function openPage(url, cookies) {
  const context = await browser.newContext();
  if (cookies) await context.addCookies(cookies);
  if (pageOverride) {
    await context.route(url, async (route) => {
      const real = await route.fetch();
      await route.fulfill({ response: real, body: pageOverride });
    });
  }
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

// Opens the page, connects with token and waits for server_ready naming userId.
async function connectAs(url, token, userId) {
  const c = await openPage(url);
  await c.page.fill('#token', token);
  await c.page.click('#connect');
  await readyMessage(c.page, userId);
  return c;
}

// Clicks Subscribe or Unsubscribe for the topic field's value and returns the reply shown.
async function subscription(page, action, topic) {
  await page.fill('#topic', topic);
  const before = await page.locator('#log li.in[data-t="subscription_update"]').count();
  await page.click(action === 'subscribe' ? '#subscribe' : '#unsubscribe');
  await page.waitForFunction((n) =>
    document.querySelectorAll('#log li.in[data-t="subscription_update"]').length > n, before);
  const item = page.locator('#log li.in[data-t="subscription_update"] pre').first();
  const reply = JSON.parse(await item.textContent());
  const shown = page.locator('#sub-result');
  return { reply, text: await shown.textContent(), success: await shown.getAttribute('data-success') };
}

async function publish(page, text) {
  await page.fill('#chat-text', text);
  await page.click('#chat-send');
}

// Waits until the page's chat list has a line reading exactly want.
function chatShows(page, want) {
  return page.waitForFunction((w) =>
    Array.from(document.querySelectorAll('#chat li')).some((li) => li.textContent === w), want);
}

function chatLines(page) {
  return page.$$eval('#chat li', (lis) => lis.map((li) => li.textContent));
}

function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }

function parseArgs(argv) {
  const out = { bin: '', page: '', screenshot: '' };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--page' && i + 1 < argv.length) out.page = argv[++i];
    else if (argv[i] === '--screenshot' && i + 1 < argv.length) out.screenshot = argv[++i];
    else if (!out.bin && !argv[i].startsWith('--')) out.bin = argv[i];
    else return null;
  }
  return out.bin ? out : null;
}

async function chatChecks(base, tokens, screenshot) {
  let a = null, b = null;
  const pages = [];
  const ok = await check('alice and bob connect (two browser contexts)', async () => {
    a = await connectAs(base, tokens.alice, 'alice');
    pages.push(a);
    b = await connectAs(base, tokens.bob, 'bob');
    pages.push(b);
  });
  // The rest needs both pages subscribed: without that, one failure instead of a timeout each.
  const subscribed = ok && await check('Subscribe to the default topic chat.lobby shows success', async () => {
    for (const { page } of [a, b]) {
      assert((await page.inputValue('#topic')) === 'chat.lobby', `default topic "${await page.inputValue('#topic')}"`);
      const r = await subscription(page, 'subscribe', 'chat.lobby');
      assert(r.reply.p.success === true && r.reply.p.success_topics.includes('chat.lobby'),
        `reply ${JSON.stringify(r.reply)}`);
      assert(r.success === 'true' && /subscribe: ok/.test(r.text) && r.text.includes('chat.lobby'),
        `shown "${r.text}"`);
      assert((await page.locator('#held').textContent()) === 'chat.lobby', 'held topics not shown');
    }
  });
  if (subscribed) {
    await check('alice says "hello bob": bob and alice see "alice: hello bob"', async () => {
      await publish(a.page, 'hello bob');
      await chatShows(b.page, 'alice: hello bob');
      await chatShows(a.page, 'alice: hello bob');
      assert((await a.page.inputValue('#chat-text')) === '', 'chat input not cleared after publishing');
      const out = JSON.parse(await a.page.locator('#log li.out[data-t="publish"] pre').first().textContent());
      assert(out.c === 'WSE' && out.p.topic === 'chat.lobby' && out.p.message.t === 'chat' &&
        out.p.message.p.text === 'hello bob' && out.p.message.p.from === 'alice', `sent ${JSON.stringify(out)}`);
      const logged = await b.page.locator('#log li.in[data-t="chat"]').count();
      assert(logged === 0, `bob's message log has ${logged} chat publications (they belong in the chat)`);
    });
    await check('bob answers (Enter in the field): alice sees "bob: hi alice"', async () => {
      await b.page.fill('#chat-text', 'hi alice');
      await b.page.press('#chat-text', 'Enter');
      await chatShows(a.page, 'bob: hi alice');
      await chatShows(b.page, 'bob: hi alice');
      const lines = await chatLines(a.page);
      assert(JSON.stringify(lines) === JSON.stringify(['alice: hello bob', 'bob: hi alice']),
        `alice's chat ${JSON.stringify(lines)}`);
    });
    if (screenshot) {
      await check(`screenshot saved to ${screenshot}`, () => a.page.screenshot({ path: screenshot, fullPage: true }));
    }
    await check('a topic outside the token\'s allow list is listed as failed (ACL_DENIED)', async () => {
      const r = await subscription(a.page, 'subscribe', 'news.today');
      assert(r.reply.p.success === false && r.reply.p.failed_topics.includes('news.today'),
        `reply ${JSON.stringify(r.reply)}`);
      assert(r.success === 'false' && /failed: news\.today ACL_DENIED/.test(r.text), `shown "${r.text}"`);
      await a.page.fill('#topic', 'chat.lobby');
    });
    await check('after Unsubscribe bob no longer gets chat.lobby', async () => {
      const r = await subscription(b.page, 'unsubscribe', 'chat.lobby');
      assert(r.reply.p.success === true && r.success === 'true', `reply ${JSON.stringify(r.reply)}`);
      assert((await b.page.locator('#held').textContent()) === 'none', 'held topics still listed');
      await publish(a.page, 'anyone there?');
      await chatShows(a.page, 'alice: anyone there?');
      await sleep(300);  // the delivery to bob, were it made, is as quick as the one to alice
      const lines = await chatLines(b.page);
      assert(!lines.includes('alice: anyone there?'), `bob got it: ${JSON.stringify(lines)}`);
    });
    let c = null;
    await check('carol (token without a publish claim) sees PUBLISH_DENIED', async () => {
      c = await connectAs(base, tokens.carol, 'carol');
      pages.push(c);
      const r = await subscription(c.page, 'subscribe', 'chat.lobby');
      assert(r.reply.p.success === true, `carol's subscribe ${JSON.stringify(r.reply)}`);
      await publish(c.page, 'let me in');
      const err = c.page.locator('#wse-error[data-code="PUBLISH_DENIED"]');
      await err.waitFor({ state: 'visible' });
      assert(/PUBLISH_DENIED/.test(await err.textContent()), `error shown "${await err.textContent()}"`);
      assert((await c.page.locator('#state').getAttribute('data-state')) === 'open', 'connection not open after the denial');
      await publish(a.page, 'still here');
      await chatShows(c.page, 'alice: still here');  // carol reads chat.lobby; her own line never came
      const lines = await chatLines(a.page);
      assert(!lines.some((l) => l.includes('let me in')), `denied message delivered: ${JSON.stringify(lines)}`);
    });
    if (screenshot && c) {
      const denied = screenshot.replace(/(\.png)?$/, '-denied.png');
      await check(`screenshot saved to ${denied}`, () => c.page.screenshot({ path: denied, fullPage: true }));
    }
  }
  await check('chat pages: no page errors or CSP violations', () => {
    const errs = pages.flatMap((p) => p.page.errors);
    assert(errs.length === 0, errs.join('; '));
  });
  for (const p of pages) await p.context.close().catch(() => {});
}

(async () => {
  const args = parseArgs(process.argv.slice(2));
  if (!args) {
    console.error('usage: node demo_test.js PATH/TO/wsed [--page FILE] [--screenshot FILE.png]');
    process.exit(2);
  }
  const bin = args.bin;
  if (args.page) pageOverride = fs.readFileSync(args.page);
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
  let fanout = false;
  const chat = { alice: '', bob: '', carol: '' };
  const e2e = hasE2e(bin);
  if (!await check('wsed starts and prints its port', async () => { port = await startWsed(bin, e2e ? ['--e2e'] : []); })) {
    await stopWsed();
    finish(1);
  }
  const base = `http://127.0.0.1:${port}/`;
  await check('gen-token mints tokens', () => {
    token = genToken(bin, 'demo-user', SECRET);
    cookieToken = genToken(bin, 'cookie-user', SECRET);
    forged = genToken(bin, 'demo-user', FORGER_SECRET);  // right shape, wrong key
    for (const t of [token, cookieToken, forged]) assert(/^[\w-]+\.[\w-]+\.[\w-]+$/.test(t), `not a JWT: ${t}`);
    fanout = hasFanout(bin);
    if (fanout) {
      const chatClaim = ['--topics', 'chat.*', '--publish', 'chat.*'];
      chat.alice = genToken(bin, 'alice', SECRET, chatClaim);
      chat.bob = genToken(bin, 'bob', SECRET, chatClaim);
      chat.carol = genToken(bin, 'carol', SECRET, ['--topics', 'chat.*']);  // may read, not publish
      for (const t of Object.values(chat)) assert(/^[\w-]+\.[\w-]+\.[\w-]+$/.test(t), `not a JWT: ${t}`);
    }
  });

  await check('chromium launches (headless)', async () => {
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      timeout: 2 * STEP_MS,
      args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
        '--disable-background-networking', '--no-first-run',
        // A page fulfilled by the test has no address space, so Chromium would block its
        // WebSocket to 127.0.0.1 as a public page reaching a local one.
        ...(pageOverride ? ['--disable-features=LocalNetworkAccessChecks'] : [])],
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
      await check('Chromium negotiates permessage-deflate (a second socket from the page)', async () => {
        // The page set the access_token cookie on Connect, so this socket authenticates too.
        const ext = await page.evaluate(() => new Promise((resolve, reject) => {
          const t = setTimeout(() => reject(new Error('no open within 5 s')), 5000);
          const w = new WebSocket((location.protocol === 'https:' ? 'wss:' : 'ws:') + '//' + location.host + '/wse');
          w.onopen = () => { clearTimeout(t); resolve(w.extensions); w.close(1000); };
          w.onerror = () => { clearTimeout(t); reject(new Error('socket error')); };
        }));
        assert(/^permessage-deflate/.test(ext) && /server_no_context_takeover/.test(ext) &&
               /client_no_context_takeover/.test(ext), `extensions "${ext}"`);
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

    // 4. End-to-end encryption from the page (WebCrypto).
    if (!e2e) console.log(`# skip E2E checks: ${bin} has no --e2e`);
    else await e2eChecks(base, token);

    // 5. The chat: two users on chat.lobby, then a user whose token may not publish.
    if (!fanout) {
      console.log(`# skip chat checks: ${bin} has no topics (its --help lists no --api-key-file)`);
    } else {
      await chatChecks(base, chat, args.screenshot);
    }

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
