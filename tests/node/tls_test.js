#!/usr/bin/env node
// wss:// with the Node `ws` client against a wsed it starts itself (--mode echo, port 0, TLS from a
// self-signed certificate made here with the openssl CLI: CN localhost, SAN localhost + 127.0.0.1).
// Checks: the first stdout line says wss://; the client trusting that certificate (ca) connects
// and messages are echoed (text, binary, 1 MB, pipelined) over TLS 1.2 and 1.3; a client trusting
// another certificate, or only the default store, is refused (a certificate error, no open); a
// plain ws:// client gets the 400; close 1000 is answered; SIGTERM sends close 4300 and wsed exits 0.
// Usage: node tests/node/tls_test.js PATH/TO/wsed
// Prints "ok NAME" / "FAIL NAME: why" per test and, last, "N passed, N failed". Exit 0 iff none failed.
// Bounded: every step has a timeout, the whole run at most 60 s. Only 127.0.0.1.
'use strict';
const WebSocket = require('ws');
const crypto = require('crypto');
const fs = require('fs');
const os = require('os');
const path = require('path');
const { execFileSync } = require('child_process');
const { WsedProcess, withTimeout } = require('./wsed_process');

const bin = process.argv[2];
if (!bin) { console.error('usage: node tls_test.js PATH/TO/wsed'); process.exit(2); }

let passed = 0, failed = 0;
const wsed = new WsedProcess();
let tmp = null;
const GLOBAL_TIMEOUT_MS = 60000;

function cleanup() {
  wsed.kill('SIGKILL');
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
}

function finish(code) {
  console.log(`${passed} passed, ${failed} failed`);
  cleanup();
  process.exit(code);
}

const watchdog = setTimeout(() => {
  failed++;
  console.log(`FAIL global: did not finish within ${GLOBAL_TIMEOUT_MS} ms`);
  finish(1);
}, GLOBAL_TIMEOUT_MS);

async function test(name, fn) {
  try {
    await withTimeout(Promise.resolve().then(fn), 20000, name);
    passed++;
    console.log(`ok ${name}`);
    return true;
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}: ${e && e.message ? e.message : e}`);
    return false;
  }
}

function assert(cond, msg) { if (!cond) throw new Error(msg); }

function selfSigned(dir, name, subject) {
  const key = path.join(dir, `${name}.key`), cert = path.join(dir, `${name}.pem`);
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', key, '-out', cert, '-days', '2', '-subj', subject,
    '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'], { timeout: 10000, stdio: ['ignore', 'ignore', 'pipe'] });
  return { key, cert, pem: fs.readFileSync(cert) };
}

function startWsed(cert) {
  return wsed.start(bin, ['--mode', 'echo', '--host', '127.0.0.1', '--port', '0', '--workers', '2',
    '--tls-cert-file', cert.cert, '--tls-key-file', cert.key], { scheme: 'wss' });
}

// Resolves with the open socket, rejects with the error (a refused certificate, an HTTP answer).
function open(url, opts) {
  return withTimeout(new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false, maxPayload: 64 << 20, ...opts });
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
  }), 5000, `open ${url}`);
}

function collector(ws) {
  const q = [], waiters = [];
  ws.on('message', (data, isBinary) => {
    const m = { data: Buffer.from(data), isBinary };
    if (waiters.length) waiters.shift()(m); else q.push(m);
  });
  return (ms = 10000) => withTimeout(new Promise((res) => { if (q.length) res(q.shift()); else waiters.push(res); }),
    ms, 'message');
}

function closed(ws, ms = 5000) {
  return withTimeout(new Promise((res) => ws.once('close', (code) => res(code))), ms, 'close');
}

async function refused(url, opts, want) {
  let ws = null;
  try {
    ws = await open(url, opts);
  } catch (e) {
    assert(want.test(`${e.code || ''} ${e.message}`), `refused, but with ${e.code || ''} ${e.message}`);
    return;
  }
  ws.terminate();
  throw new Error('the connection opened');
}

(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'wsed-node-tls-'));
  let cert = null, other = null, port = 0;
  if (!await test('self-signed certificates (openssl)', () => {
    cert = selfSigned(tmp, 'server', '/CN=localhost');
    other = selfSigned(tmp, 'other', '/CN=localhost');
  })) finish(1);
  if (!await test('wsed starts with TLS and prints wss://', async () => { port = await startWsed(cert); })) finish(1);
  const url = `wss://127.0.0.1:${port}/`;

  for (const v of ['TLSv1.2', 'TLSv1.3']) {
    await test(`${v}: echo of text, binary, 1 MB and 300 pipelined messages`, async () => {
      const ws = await open(url, { ca: cert.pem, minVersion: v, maxVersion: v });
      assert(ws._socket.getProtocol() === v, `negotiated ${ws._socket.getProtocol()}, asked for ${v}`);
      assert(ws._socket.authorized === true, 'the server certificate is not authorized');
      const next = collector(ws);
      ws.send('héllo over tls');
      let m = await next();
      assert(!m.isBinary && m.data.toString() === 'héllo over tls', `text echo ${m.data.toString()}`);
      const bin = crypto.randomBytes(1000000);
      ws.send(bin, { binary: true });
      m = await next();
      assert(m.isBinary && m.data.equals(bin), `1 MB binary echo differs (${m.data.length} bytes)`);
      const sent = [];
      for (let i = 0; i < 300; i++) {
        const b = crypto.randomBytes(1 + (i * 53) % 5000);
        sent.push(b);
        ws.send(b, { binary: true });
      }
      for (let i = 0; i < 300; i++) {
        m = await next();
        assert(m.isBinary && m.data.equals(sent[i]), `pipelined message ${i} differs`);
      }
      const p = closed(ws);
      ws.close(1000, 'bye');
      const code = await p;
      assert(code === 1000, `close code ${code}`);
    });
  }

  await test('a client trusting another certificate is refused', () =>
    refused(url, { ca: other.pem }, /SELF_SIGNED|UNABLE_TO_VERIFY|CERT|signature/i));
  await test('a client with only the default trust store is refused', () =>
    refused(url, {}, /SELF_SIGNED|UNABLE_TO_VERIFY|CERT/i));
  await test('SNI localhost verifies too (SAN DNS:localhost)', async () => {
    const ws = await open(url, { ca: cert.pem, servername: 'localhost' });
    const next = collector(ws);
    ws.send('by name');
    assert((await next()).data.toString() === 'by name', 'echo by name');
    ws.close(1000);
    await closed(ws);
  });
  await test('a plain ws:// client on the TLS port gets HTTP 400', () =>
    refused(`ws://127.0.0.1:${port}/`, {}, /400/));

  let held = [];
  await test('20 parallel wss clients echo independently', async () => {
    held = await Promise.all(Array.from({ length: 20 }, () => open(url, { ca: cert.pem })));
    await Promise.all(held.map(async (c, k) => {
      const nx = collector(c);
      const msgs = Array.from({ length: 20 }, (_, i) => `client ${k} message ${i} ${'y'.repeat(k * 13 + i)}`);
      for (const s of msgs) c.send(s);
      for (const s of msgs) assert((await nx()).data.toString() === s, `client ${k} got a wrong message`);
    }));
  });

  await test('SIGTERM: open wss clients get close 4300, wsed exits 0', async () => {
    assert(held.length === 20, 'no clients held');
    const codes = held.map((c) => closed(c, 10000));
    const exit = withTimeout(wsed.exited(), 15000, 'wsed exit');
    wsed.kill('SIGTERM');
    const got = await Promise.all(codes);
    assert(got.every((c) => c === 4300), `close codes ${JSON.stringify([...new Set(got)])}`);
    const code = await exit;
    assert(code === 0, `wsed exit ${code}`);
  });

  clearTimeout(watchdog);
  finish(failed === 0 ? 0 : 1);
})().catch((e) => {
  failed++;
  console.log(`FAIL test crashed: ${e && e.stack ? e.stack.split('\n')[0] : e}`);
  finish(1);
});
