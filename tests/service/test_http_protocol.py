"""uvicorn's httptools protocol with each response's head and body joined into one write
(service.http_protocol): the same bytes, in order, nothing held back, one segment for a small answer."""

from __future__ import annotations

import asyncio
import socket

import uvicorn

from service.http_protocol import JoinedWritesProtocol, _JoiningTransport


class RecordingTransport:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def write(self, data: bytes) -> None:
        self.calls.append(("write", data))

    def writelines(self, lines) -> None:
        self.calls.append(("writelines", tuple(lines)))

    def close(self) -> None:
        self.calls.append(("close", None))
        self.closing = True

    closing = False

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default=None):
        return ("127.0.0.1", 1) if name == "peername" else default


def test_a_write_is_sent_with_the_next_one_or_at_the_end_of_the_loop_pass():
    async def main() -> list:
        inner = RecordingTransport()
        joined = _JoiningTransport(inner, asyncio.get_running_loop())
        joined.write(b"head")
        joined.write(b"body")
        assert inner.calls == [("writelines", (b"head", b"body"))]
        joined.write(b"alone")
        assert len(inner.calls) == 1  # held...
        await asyncio.sleep(0)
        assert inner.calls[-1] == ("write", b"alone")  # ...until the pass ends
        joined.write(b"last")
        joined.close()
        assert joined.get_extra_info("peername") == ("127.0.0.1", 1)
        assert inner.calls[-2:] == [("write", b"last"), ("close", None)]  # nothing held across a close
        joined.write(b"too late")  # after the close: dropped, as the transport itself would
        await asyncio.sleep(0)
        return inner.calls[-1]

    assert asyncio.run(main()) == ("close", None)


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await receive()
    if scope["path"] == "/empty":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
    elif scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for part in (b"one,", b"two,", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b""})
    else:
        body = b'{"ok":true}' * 50
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def test_responses_through_a_real_server_arrive_whole_and_in_order():
    async def main() -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, http=JoinedWritesProtocol, log_config=None,
                                lifespan="off")
        server = uvicorn.Server(config)
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        serving = asyncio.ensure_future(server.serve(sockets=[listener]))
        while not server.started:
            await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        client = socket.create_connection(("127.0.0.1", port))
        client.setblocking(False)
        try:
            for _ in range(3):  # keep-alive: one connection, several answers
                await loop.sock_sendall(client, b"GET /json HTTP/1.1\r\nHost: x\r\n\r\n")
                first = await loop.sock_recv(client, 65536)  # head and body came as one segment
                assert first.startswith(b"HTTP/1.1 200 OK\r\n") and first.endswith(b'{"ok":true}' * 50)
            await loop.sock_sendall(client, b"GET /empty HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await loop.sock_recv(client, 65536)).startswith(b"HTTP/1.1 204 No Content\r\n")
            await loop.sock_sendall(client, b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
            received = b""
            while not received.endswith(b"0\r\n\r\n"):
                received += await asyncio.wait_for(loop.sock_recv(client, 65536), 5)
            assert b"4\r\none,\r\n4\r\ntwo,\r\n5\r\nthree\r\n0\r\n\r\n" in received
        finally:
            client.close()
            server.should_exit = True
            await serving

    asyncio.run(main())
