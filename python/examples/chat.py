#!/usr/bin/python3
"""A chat room on wsed in drain mode: what a client says goes to everyone in the room.

  PYTHONPATH=build/python /usr/bin/python3 python/examples/chat.py [PORT]
Clients send {"t":"say","p":{"text":"hi"}} and receive {"t":"said","p":{"user":..,"text":..}}.
"""
import json
import os
import signal
import sys
import time

from wsed.compat import RustWSEServer, rust_jwt_encode

SECRET = os.environ.get("CHAT_SECRET", "change-me-to-a-secret-of-32-bytes!!").encode()
PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 5006
ROOM = "chat.lobby"

server = RustWSEServer("127.0.0.1", PORT, jwt_secret=SECRET, presence_enabled=True)
server.enable_drain_mode()
server.start()  # listening once it returns
token = rust_jwt_encode({"sub": "alice", "exp": int(time.time()) + 3600}, SECRET)
print(f"chat on ws://127.0.0.1:{PORT}/  token for alice: {token}", flush=True)
names = {}  # connection id -> user id
stopping = []
signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
try:
    while not stopping:
        for kind, conn, data in server.drain_inbound(256, 200):
            if kind == "auth_connect":
                names[conn] = data
                server.subscribe_connection(conn, [ROOM], presence_data={"since": int(time.time())})
                server.send_event(conn, {"t": "welcome", "p": {"online": sorted(server.presence(ROOM))}})
            elif kind == "msg" and data.get("t") == "say":
                text = str((data.get("p") or {}).get("text", ""))[:500]
                server.broadcast(ROOM, json.dumps({"t": "said", "p": {"user": names.get(conn), "text": text}}))
            elif kind == "disconnect":
                names.pop(conn, None)
finally:
    server.drain(4300, "chat closing", 5)  # every client gets 4300: reconnect elsewhere
