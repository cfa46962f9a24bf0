"""The README's chat example (python/examples/chat.py), run as its own process with real clients."""
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

import websockets
from wsed.compat import rust_jwt_encode  # (PyJWT would load python3-cryptography's module,
#                                           whose allocations LeakSanitizer reports at exit)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SECRET = "change-me-to-a-secret-of-32-bytes!!"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def token(user):
    return rust_jwt_encode({"sub": user, "exp": int(time.time()) + 600}, SECRET.encode())


async def next_of(ws, wanted, deadline=5.0):
    """The next message whose t is wanted (as a dict), skipping the others."""
    end = time.monotonic() + deadline
    while True:
        raw = await asyncio.wait_for(ws.recv(), max(0.01, end - time.monotonic()))
        text = raw.decode() if isinstance(raw, bytes) else raw
        if text.startswith("WSE{"):
            text = text[3:]
        msg = json.loads(text)
        if msg.get("t") == wanted:
            return msg


def test_chat_example_two_users_then_drain():
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.environ.get("WSED_PYTHON_DIR", os.path.join(REPO, "build", "python")))
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "python", "examples", "chat.py"), str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    try:
        line = proc.stdout.readline()  # printed once listening
        assert "chat on ws://127.0.0.1:%d/" % port in line, line

        async def scenario():
            url = "ws://127.0.0.1:%d/" % port
            alice = await websockets.connect(url, extra_headers={"Authorization": "Bearer " + token("alice")})
            bob = await websockets.connect(url, extra_headers={"Authorization": "Bearer " + token("bob")})
            welcome = await next_of(bob, "welcome")
            assert "bob" in welcome["p"]["online"]
            await next_of(alice, "welcome")
            await alice.send(json.dumps({"t": "say", "p": {"text": "hello bob"}}))
            for ws in (alice, bob):
                said = await next_of(ws, "said")
                assert said["p"] == {"user": "alice", "text": "hello bob"}
            proc.send_signal(signal.SIGTERM)
            for ws in (alice, bob):
                try:
                    while True:
                        await asyncio.wait_for(ws.recv(), 10)
                except websockets.ConnectionClosed:
                    pass
                assert ws.close_code == 4300
                assert ws.close_reason == "chat closing"

        asyncio.run(scenario())
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
