// perf/peers/node/echo_server.js: the Node `ws` echo server that perf/echo_bench.sh compares
// wsed against. Owns one WebSocketServer on 127.0.0.1; runs on Node's single event loop thread.
// Must never do anything per message beyond the standard echo (send back with the same type),
// so the comparison measures ws itself. Prints "listening on ws://HOST:PORT/" once bound.
'use strict';

const { WebSocketServer } = require('ws');

function flag(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const host = flag('--host', '127.0.0.1');
const port = Number(flag('--port', '0'));

const wss = new WebSocketServer({
  host,
  port,
  backlog: 4096,
  perMessageDeflate: false,
  maxPayload: 1 << 20,
  clientTracking: false,
});

wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  ws.on('error', () => {});
});

wss.on('listening', () => {
  const a = wss.address();
  console.log(`node-ws ${require('ws/package.json').version} listening on ws://${a.address}:${a.port}/`);
});

const stop = () => wss.close(() => process.exit(0));
process.on('SIGINT', stop);
process.on('SIGTERM', () => process.exit(0));
