// tests/node/wsed_process.js: what the Node and browser tests share: one wsed child process,
// started with --port 0 and its port read from the first stdout line ("... ws://127.0.0.1:PORT/"
// or, with TLS, "wss://..."), stopped by its PID (SIGTERM, SIGKILL after 10 s); and withTimeout.
'use strict';
const { spawn } = require('child_process');

function withTimeout(p, ms, what) {
  let t;
  return Promise.race([p, new Promise((_, rej) => { t = setTimeout(() => rej(new Error(`timeout (${ms} ms): ${what}`)), ms); })])
    .finally(() => clearTimeout(t));
}

class WsedProcess {
  constructor() { this.proc = null; }

  running() { return this.proc !== null && this.proc.exitCode === null && this.proc.signalCode === null; }

  // Resolves with the port; rejects when wsed exits first or prints no such line within timeoutMs.
  start(bin, args, { env = process.env, scheme = 'ws', timeoutMs = 10000 } = {}) {
    const proc = spawn(bin, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    this.proc = proc;
    let stderr = '';
    proc.stderr.on('data', (d) => { stderr += d; });
    const re = new RegExp(`${scheme}://127\\.0\\.0\\.1:(\\d+)/`);
    return withTimeout(new Promise((resolve, reject) => {
      let buf = '';
      proc.stdout.on('data', (d) => {
        if (buf === null) return;
        buf += d;
        const nl = buf.indexOf('\n');
        if (nl < 0) return;
        const m = re.exec(buf.slice(0, nl));
        buf = null;
        if (m) resolve(Number(m[1])); else reject(new Error(`no ${scheme}://127.0.0.1:PORT/ in the first line`));
      });
      proc.once('error', reject);
      proc.once('exit', (code, sig) => reject(new Error(`wsed exited (${code ?? sig}): ${stderr.trim()}`)));
    }), timeoutMs, 'wsed startup line');
  }

  kill(signal) {
    if (this.running()) {
      try { process.kill(this.proc.pid, signal); } catch (e) { /* already gone */ }
    }
  }

  // Resolves with the exit code (or signal) once wsed exited.
  exited() {
    return new Promise((resolve) => {
      if (!this.running()) { resolve(this.proc ? (this.proc.exitCode ?? this.proc.signalCode) : null); return; }
      this.proc.once('exit', (code, sig) => resolve(code ?? sig));
    });
  }

  stop() {
    if (!this.running()) return this.exited();
    const t = setTimeout(() => this.kill('SIGKILL'), 10000);
    const done = this.exited().then((code) => { clearTimeout(t); return code; });
    this.kill('SIGTERM');
    return done;
  }
}

module.exports = { WsedProcess, withTimeout };
