#!/usr/bin/env node
// Echo round trips against a running wsed (or any echo server) with the Node `ws` client.
// Usage: node echo_test.js ws://127.0.0.1:PORT/
// Prints "ok NAME" / "FAIL NAME: why" per test and, last, "N passed, N failed". Exit 0 iff none failed.
'use strict';
const WebSocket = require('ws');
const crypto = require('crypto');

const url = process.argv[2];
if (!url) { console.error('usage: node echo_test.js ws://127.0.0.1:PORT/'); process.exit(2); }

let passed = 0, failed = 0;
const GLOBAL_TIMEOUT_MS = 60000;
const watchdog = setTimeout(() => {
  console.log(`FAIL global: did not finish within ${GLOBAL_TIMEOUT_MS} ms`);
  console.log(`${passed} passed, ${failed + 1} failed`);
  process.exit(1);
}, GLOBAL_TIMEOUT_MS);

function withTimeout(p, ms, what) {
  let t;
  return Promise.race([p, new Promise((_, rej) => { t = setTimeout(() => rej(new Error(`timeout: ${what}`)), ms); })])
    .finally(() => clearTimeout(t));
}

function open(perMessageDeflate = false) {
  return withTimeout(new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate, maxPayload: 64 * 1024 * 1024 });
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
  }), 5000, 'open');
}

// queue of incoming messages for one socket
function collector(ws) {
  const q = [], waiters = [];
  ws.on('message', (data, isBinary) => {
    const m = { data: Buffer.from(data), isBinary };
    if (waiters.length) waiters.shift()(m); else q.push(m);
  });
  return (ms = 10000) => withTimeout(new Promise((res) => { if (q.length) res(q.shift()); else waiters.push(res); }),
    ms, 'message');
}

function utf8OfSize(n, seed) {
  const pat = Buffer.from(`seed${seed}:aé€𝄞κόσμε漢字😀-`, 'utf8');
  let b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = pat[i % pat.length];
  // cut back to the last complete code point and pad with ASCII
  let end = n;
  while (end > 0 && (b[end - 1] & 0xc0) === 0x80) end--;
  if (end > 0 && b[end - 1] >= 0xc0) {
    const lead = b[end - 1];
    const need = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : 2;
    if (n - (end - 1) < need) { for (let i = end - 1; i < n; i++) b[i] = 0x78; }
  }
  return b;
}

async function test(name, fn) {
  try {
    await fn();
    passed++;
    console.log(`ok ${name}`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}: ${e && e.message ? e.message : e}`);
  }
}

function assert(cond, msg) { if (!cond) throw new Error(msg); }

(async () => {
  const sizes = [0, 1, 125, 126, 127, 65535, 65536, 1000000];
  const ws = await open().catch((e) => { console.log(`FAIL open: ${e.message}`); console.log('0 passed, 1 failed'); process.exit(1); });
  const next = collector(ws);
  for (const n of sizes) {
    await test(`text ${n} bytes`, async () => {
      const payload = utf8OfSize(n, n);
      ws.send(payload.toString('utf8'));
      const m = await next();
      assert(!m.isBinary, 'echo came back as binary');
      assert(m.data.equals(Buffer.from(payload.toString('utf8'), 'utf8')), `payload differs (got ${m.data.length} bytes)`);
    });
    await test(`binary ${n} bytes`, async () => {
      const payload = crypto.randomBytes(n);
      ws.send(payload, { binary: true });
      const m = await next();
      assert(m.isBinary, 'echo came back as text');
      assert(m.data.equals(payload), `payload differs (got ${m.data.length} bytes)`);
    });
  }
  await test('200 pipelined mixed messages keep order and type', async () => {
    const sent = [];
    for (let i = 0; i < 200; i++) {
      if (i % 2) { const b = crypto.randomBytes(1 + (i * 37) % 3000); sent.push({ data: b, isBinary: true }); ws.send(b, { binary: true }); }
      else { const s = `message ${i} ` + 'ü'.repeat(i % 50); sent.push({ data: Buffer.from(s), isBinary: false }); ws.send(s); }
    }
    for (let i = 0; i < 200; i++) {
      const m = await next();
      assert(m.isBinary === sent[i].isBinary && m.data.equals(sent[i].data), `message ${i} differs`);
    }
  });
  await test('fragmented send (ws fin:false) is echoed as one message', async () => {
    ws.send('part1-', { fin: false });
    ws.send('part2-', { fin: false });
    ws.send('part3', { fin: true });
    const m = await next();
    assert(!m.isBinary && m.data.toString() === 'part1-part2-part3', `got ${m.data.toString()}`);
  });
  await test('ping gets a pong with the same payload', async () => {
    const payload = crypto.randomBytes(50);
    const p = withTimeout(new Promise((res) => ws.once('pong', res)), 5000, 'pong');
    ws.ping(payload);
    const got = await p;
    assert(Buffer.from(got).equals(payload), 'pong payload differs');
  });
  await test('close 1000 is answered with 1000', async () => {
    const p = withTimeout(new Promise((res) => ws.once('close', (code) => res(code))), 5000, 'close');
    ws.close(1000, 'bye');
    const code = await p;
    assert(code === 1000, `close code ${code}`);
  });
  await test('10 parallel clients echo independently', async () => {
    const clients = await Promise.all(Array.from({ length: 10 }, () => open()));
    await Promise.all(clients.map(async (c, k) => {
      const nx = collector(c);
      const msgs = Array.from({ length: 20 }, (_, i) => `client ${k} message ${i} ${'x'.repeat(k * 10 + i)}`);
      for (const s of msgs) c.send(s);
      for (const s of msgs) { const m = await nx(); assert(m.data.toString() === s, `client ${k} got a wrong message`); }
      c.close(1000);
    }));
  });
  // permessage-deflate (RFC 7692): ws offers it, wsed answers with no context takeover both ways.
  const zws = await open({ threshold: 0 }).catch((e) => { console.log(`FAIL open deflate: ${e.message}`); return null; });
  await test('permessage-deflate negotiated', async () => {
    assert(zws, 'no connection');
    // ws reports the negotiated extension's name (its parameters were checked when it accepted).
    assert(zws.extensions === 'permessage-deflate', `extensions "${zws.extensions}"`);
  });
  if (zws) {
    const znext = collector(zws);
    for (const n of sizes.concat([300, 5000])) {
      await test(`deflate: text ${n} bytes`, async () => {
        const s = utf8OfSize(n, n).toString('utf8');
        zws.send(s);
        const m = await znext();
        assert(!m.isBinary && m.data.equals(Buffer.from(s, 'utf8')), `payload differs (got ${m.data.length} bytes)`);
      });
      await test(`deflate: binary ${n} bytes (random, incompressible)`, async () => {
        const b = crypto.randomBytes(n);
        zws.send(b, { binary: true });
        const m = await znext();
        assert(m.isBinary && m.data.equals(b), `payload differs (got ${m.data.length} bytes)`);
      });
    }
    await test('deflate: 100 pipelined compressible messages and a fragmented one', async () => {
      const sent = [];
      for (let i = 0; i < 100; i++) { const s = `{"n":${i},"pad":"${'ab'.repeat(i * 7)}"}`; sent.push(s); zws.send(s); }
      zws.send('zpart1-'.repeat(50), { fin: false });
      zws.send('zpart2', { fin: true });
      sent.push('zpart1-'.repeat(50) + 'zpart2');
      for (let i = 0; i < sent.length; i++) {
        const m = await znext();
        assert(m.data.toString() === sent[i], `message ${i} differs`);
      }
    });
    await test('deflate: close 1000', async () => {
      const p = withTimeout(new Promise((res) => zws.once('close', (code) => res(code))), 5000, 'close');
      zws.close(1000);
      assert((await p) === 1000, 'close code');
    });
  }
  clearTimeout(watchdog);
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed === 0 ? 0 : 1);
})();
