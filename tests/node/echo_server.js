#!/usr/bin/env node
// Reference echo server on Node `ws` (pinned in package.json): every data message is echoed with
// the same binary flag. Used to validate the conformance harness while wsed is not available.
// Usage: node echo_server.js [--port N] [--host ADDR]   (prints "... listening on ws://HOST:PORT/")
'use strict';
const { WebSocketServer } = require('ws');

let port = 0;
let host = '127.0.0.1';
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  if (argv[i] === '--port') port = Number(argv[++i]);
  else if (argv[i] === '--host') host = argv[++i];
  else { console.error(`unknown argument ${argv[i]}`); process.exit(2); }
}

const wss = new WebSocketServer({ host, port, maxPayload: 64 * 1024 * 1024, perMessageDeflate: false });
wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  ws.on('error', () => {});
});
wss.on('listening', () => {
  const a = wss.address();
  console.log(`node-ws-echo listening on ws://${host}:${a.port}/ (ws ${require('ws/package.json').version})`);
});
function stop() {
  for (const c of wss.clients) c.close(4300, 'server shutting down');
  wss.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
