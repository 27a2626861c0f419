"""A TCP proxy the drills control: forwards bytes between dbchaos and PostgreSQL until told
to cut the network.

Cuts (every connection at once, and every connection opened afterwards):

* ``blackhole`` — keep both sockets open and keep reading them, but drop every byte (a
  firewall that silently drops packets: nobody sees a FIN or a RST);
* ``freeze`` — keep both sockets open and stop reading them (the peers' send buffers fill);
* ``close`` — close both sockets (both peers see the connection end).

Runs its own thread with an asyncio loop; use it as a context manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Literal

Mode = Literal["forward", "blackhole", "freeze", "close"]
_CHUNK = 65536


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.mode: Mode = "forward"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcpproxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._changed: asyncio.Event | None = None

    # ---- control (from the test's thread) -----------------------------------------
    def __enter__(self) -> TcpProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def cut(self, mode: Mode) -> None:
        """Stop forwarding in ``mode`` (see the module docstring)."""
        asyncio.run_coroutine_threadsafe(self._set(mode), self._loop).result(10)

    def restore(self) -> None:
        """Forward again (connections cut with ``close`` stay closed)."""
        asyncio.run_coroutine_threadsafe(self._set("forward"), self._loop).result(10)

    @property
    def connections(self) -> int:
        return len(self._writers) // 2

    # ---- inside the loop ---------------------------------------------------------
    async def _start(self) -> None:
        self._changed = asyncio.Event()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in others:
            t.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    async def _set(self, mode: Mode) -> None:
        self.mode = mode
        assert self._changed is not None
        self._changed.set()
        self._changed = asyncio.Event()
        if mode == "close":
            for w in list(self._writers):
                w.transport.abort()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self.mode == "close":
            client_w.transport.abort()
            return
        try:
            up_r, up_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.transport.abort()
            return
        self._writers |= {client_w, up_w}
        try:
            await asyncio.gather(self._pump(client_r, up_w), self._pump(up_r, client_w))
        finally:
            for w in (client_w, up_w):
                self._writers.discard(w)
                w.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                data = await reader.read(_CHUNK)
            except OSError:
                return
            while self.mode == "freeze":  # hold what was read; read nothing more
                await self._wait_change()
            if self.mode == "close":
                return
            if not data:
                if self.mode == "forward":  # pass the FIN on
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                return  # a blackhole passes on nothing, not even the FIN
            if self.mode == "forward":
                writer.write(data)
                with contextlib.suppress(OSError):
                    await writer.drain()
            # blackhole: the bytes are dropped

    async def _wait_change(self) -> None:
        assert self._changed is not None
        await self._changed.wait()


@contextlib.contextmanager
def tcp_proxy(host: str, port: int) -> Iterator[TcpProxy]:
    with TcpProxy(host, port) as proxy:
        yield proxy
