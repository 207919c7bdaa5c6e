"""A TCP proxy the test controls, for network faults through a real seam: cut every open connection, refuse
new ones, or point it at another upstream port (a restarted server)."""

from __future__ import annotations

import asyncio
import threading


class TcpProxy:
    """Listens on 127.0.0.1:`port` (a free port) and pipes each connection to 127.0.0.1:`upstream`."""

    def __init__(self, upstream: int):
        self.upstream = upstream
        self.refusing = False
        self.muted = False  # drop what the server sends (acks lost on the way), keep forwarding the client
        self.connections = 0  # piped since start
        self.refused = 0  # turned away while refusing
        self._open: set[asyncio.Transport] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="tcp-proxy")
        self._thread.start()
        self._server = self._run(asyncio.start_server(self._pipe, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self.target = f"127.0.0.1:{self.port}"

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        ends = (writer.transport, up_writer.transport)
        self._open.update(ends)

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter, replies: bool) -> None:
            try:
                while data := await src.read(65536):
                    if replies and self.muted:
                        continue
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(copy(reader, up_writer, False), copy(up_reader, writer, True))
        self._open.difference_update(ends)

    def cut(self, lose_replies: bool = False) -> None:
        """Drop every open connection at once (both sides see a reset), as a NAT or a radio link does. With
        `lose_replies`, what the server sent and the client has not read yet is lost too."""
        muted = self.muted
        if lose_replies:
            self.muted = True

        def abort_all():
            for transport in list(self._open):
                transport.abort()
            self.muted = muted

        self._loop.call_soon_threadsafe(abort_all)

    def close(self) -> None:
        async def shut() -> None:
            # On the proxy's loop: an asyncio server is not thread-safe. Closed from the test's thread, it
            # raced the loop's own end of the last connection (both woke the server's waiters: TypeError).
            for transport in list(self._open):
                transport.abort()
            self._server.close()

        self._run(shut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
