"""wsed: the wsed WebSocket engine (io_uring, the WSE protocol) inside a Python process.

    import wsed

    with wsed.Server(port=5006, jwt_secret=SECRET) as server:
        while True:
            for ev in server.events(timeout=1.0):
                if ev.kind == "msg":
                    server.send_event(ev.conn_id, {"t": "echo", "p": ev.data.get("p", {})})

The engine's shards run in their own threads and never take the GIL; ``events()`` waits with
the GIL released. Every method of ``wsed.compat.RustWSEServer`` (the reference's interface) is
available on ``Server`` under the same name. ``wsed.compat`` is the drop-in for applications
written against the reference.
"""

import asyncio
from typing import Any, AsyncIterator, List, NamedTuple, Optional

from ._native import __version__  # noqa: F401
from .compat import RustWSEServer

__all__ = ["Event", "Server", "RustWSEServer", "__version__"]


class Event(NamedTuple):
    """One inbound event: kind is connect, auth_connect, msg, raw, bin, disconnect,
    presence_join or presence_leave; conn_id is None for presence events."""

    kind: str
    conn_id: Optional[str]
    data: Any


class Server(RustWSEServer):
    """wsed's own interface: keyword options (those of RustWSEServer), a context manager,
    typed events and asyncio helpers. ``port=0`` picks a free port (``server.port``)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **options: Any) -> None:
        super().__init__(host, port, **options)
        self._configured_port = port
        self.enable_drain_mode()  # events() sees every client, also those before its first call

    @property
    def port(self) -> int:
        """The port listened on (the configured one before start)."""
        return self.local_port() if self.is_running() else self._configured_port

    def __enter__(self) -> "Server":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def events(self, max_count: int = 256, timeout: float = 0.05) -> List[Event]:
        """Up to max_count events, waiting up to timeout seconds for the first one."""
        return [Event(*t) for t in self.drain_inbound(max_count, int(timeout * 1000))]

    def set_callbacks(self, on_connect: Any, on_message: Any, on_disconnect: Any) -> None:
        """Callbacks instead of events(): called in order from one dispatcher thread."""
        super().set_callbacks(on_connect, on_message, on_disconnect)
        self._set_drain_mode(False)

    async def anext_events(self, max_count: int = 256, timeout: float = 0.05) -> List[Event]:
        """events() for asyncio: the wait runs in the loop's default executor (no GIL held)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.events, max_count, timeout)

    async def aevents(self, timeout: float = 0.25) -> AsyncIterator[Event]:
        """Every event while the server runs: ``async for ev in server.aevents(): ...``."""
        while self.is_running():
            for ev in await self.anext_events(256, timeout):
                yield ev
