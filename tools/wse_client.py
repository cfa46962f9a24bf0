#!/usr/bin/python3
"""tools/wse_client.py: a minimal interactive WSE client for trying wsed from a terminal.

  /usr/bin/python3 tools/wse_client.py [--url ws://127.0.0.1:5006/wse] [--token JWT]
                                       [--msgpack] [--ping]

Connects (token as `Authorization: Bearer`, or from $WSED_TOKEN), prints every message it
receives (binary M:/C: frames decoded), and sends each line typed on stdin: a JSON object as is,
anything else as {"t":"chat","p":{"text":<line>}}. --ping sends one app ping first. Ctrl-D ends.
Uses Debian's python3-websockets only.
"""
import argparse
import asyncio
import json
import os
import sys
import zlib

import websockets


def describe(msg):
    if isinstance(msg, str):
        return msg
    if msg[:2] == b"C:":
        return "C: " + zlib.decompress(msg[2:]).decode("utf-8", "replace")
    if msg[:2] == b"M:":
        return "M: (%d bytes of MessagePack) %r" % (len(msg) - 2, msg[2:80])
    return "binary %d bytes" % len(msg)


async def run(args):
    headers = {"Authorization": "Bearer " + args.token} if args.token else {}
    url = args.url + ("?format=msgpack" if args.msgpack else "")
    async with websockets.connect(url, extra_headers=headers, open_timeout=10,
                                  max_size=None) as ws:
        async def reader():
            try:
                async for msg in ws:
                    print("<", describe(msg), flush=True)
            except websockets.ConnectionClosed:
                pass
            print("closed: code %s %s" % (ws.close_code, ws.close_reason or ""), flush=True)

        task = asyncio.create_task(reader())
        if args.ping:
            await ws.send(json.dumps({"c": "WSE", "t": "ping", "p": {"timestamp": 0}, "v": 1}))
        loop = asyncio.get_running_loop()
        while not task.done():
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            line = line.rstrip("\n")
            try:
                obj = json.loads(line)
                text = line if isinstance(obj, dict) else None
            except ValueError:
                text = None
            await ws.send(text or json.dumps({"t": "chat", "p": {"text": line}, "v": 1}))
        await ws.close()
        await task


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="ws://127.0.0.1:5006/wse")
    ap.add_argument("--token", default=os.environ.get("WSED_TOKEN", ""))
    ap.add_argument("--msgpack", action="store_true", help="ask for format=msgpack")
    ap.add_argument("--ping", action="store_true", help="send one app ping after connecting")
    args = ap.parse_args()
    try:
        asyncio.run(run(args))
    except (OSError, websockets.InvalidHandshake, asyncio.TimeoutError) as e:
        print("wse_client: %s" % e, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
