"""The control socket with real unix sockets: framing, streaming, errors, permissions, stale sockets."""

from __future__ import annotations

import os
import socket
import stat
import struct
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import msgspec
import pytest
import trio

from cloverwoo_daemon.io.control import (
    MAX_REQUEST_BYTES,
    MAX_UPLOAD_BYTES,
    ControlError,
    ControlProtocolError,
    DaemonUnreachable,
    InsecureSocketDirectory,
    control_call,
    control_stream,
    serve_control,
)
from cloverwoo_daemon.messages import (
    ConflictsRequest,
    ControlRequest,
    ControlResponse,
    ExcludeRequest,
    ImportCsvRequest,
    LogRequest,
    ReconcileRequest,
    StatusRequest,
    UploadRequest,
)


async def handler(req: ControlRequest) -> ControlResponse | AsyncIterator[ControlResponse]:
    match req:
        case StatusRequest():
            return ControlResponse(ok=True, data={"actors": {"shard-0": "running"}, "queue": 3})
        case ReconcileRequest(dry_run=True):
            await trio.sleep(0.2)  # slow command: other clients must not wait for it
            return ControlResponse(ok=True, data={"diff": []})
        case ReconcileRequest():
            raise RuntimeError("Woo is down (503)")
        case LogRequest(after_id=after):
            async def follow() -> AsyncIterator[ControlResponse]:
                for i in range(after + 1, after + 4):
                    yield ControlResponse(ok=True, data={"id": i})
                if req.level == "boom":
                    raise ValueError("store closed")
            return follow()
        case ConflictsRequest():
            return ControlResponse(ok=True, data="x" * 200_000)
        case ImportCsvRequest(text=text):
            return ControlResponse(ok=True, data={"chars": len(text), "lines": text.count("\n"),
                                                  "last": text.splitlines()[-1]})
        case ExcludeRequest(skus=skus):
            return ControlResponse(ok=True, data={"skus": len(skus), "last": skus[-1]})
    raise AssertionError(req)


@pytest.fixture
def sock_path(tmp_path: Path) -> str:
    os.chmod(tmp_path, 0o700)
    return str(tmp_path / "c.sock")


async def start(nursery: trio.Nursery, path: str) -> None:
    assert await nursery.start(serve_control, path, handler) == path


async def test_call_status_and_socket_mode(nursery: trio.Nursery, sock_path: str) -> None:
    await start(nursery, sock_path)
    assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o660
    assert stat.S_ISSOCK(os.stat(sock_path).st_mode)
    r = await control_call(sock_path, StatusRequest(), timeout=5)
    assert r == ControlResponse(ok=True, data={"actors": {"shard-0": "running"}, "queue": 3})
    big = await control_call(sock_path, ConflictsRequest(), timeout=5)
    assert big.data == "x" * 200_000  # arrives in many reads, reassembled


async def test_handler_exception_is_an_answer(nursery: trio.Nursery, sock_path: str) -> None:
    await start(nursery, sock_path)
    r = await control_call(sock_path, ReconcileRequest(), timeout=5)
    assert r.ok is False and r.error == "RuntimeError: Woo is down (503)"
    # The server is still up.
    assert (await control_call(sock_path, StatusRequest(), timeout=5)).ok


async def test_streaming_follow(nursery: trio.Nursery, sock_path: str) -> None:
    await start(nursery, sock_path)
    async with control_stream(sock_path, LogRequest(after_id=10), timeout=5) as stream:
        got = [r.data["id"] async for r in stream]
    assert got == [11, 12, 13]
    async with control_stream(sock_path, LogRequest(level="boom"), timeout=5) as stream:
        got2 = [r async for r in stream]
    assert [r.ok for r in got2] == [True, True, True, False] and got2[-1].error == "ValueError: store closed"
    # A client that leaves mid-stream does not hurt the server.
    async with control_stream(sock_path, LogRequest(), timeout=5) as stream:
        async for _ in stream:
            break
    assert (await control_call(sock_path, StatusRequest(), timeout=5)).ok


async def test_many_clients_concurrently(nursery: trio.Nursery, sock_path: str) -> None:
    await start(nursery, sock_path)
    results: list[ControlResponse] = []

    async def one(req: ControlRequest) -> None:
        results.append(await control_call(sock_path, req, timeout=10))

    async with trio.open_nursery() as clients:
        clients.start_soon(one, ReconcileRequest(dry_run=True))
        for _ in range(30):
            clients.start_soon(one, StatusRequest())
    assert len(results) == 31 and all(r.ok for r in results)
    # The slow command did not hold the others back (ordering, not timing).
    assert results[-1].data == {"diff": []}


async def raw(path: str, data: bytes, *, eof: bool = False) -> bytes:
    stream = await trio.open_unix_socket(path)
    async with stream:
        await stream.send_all(data)
        if eof:
            await stream.send_eof()
        out = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some():
                out += chunk
    return out


async def test_bad_and_oversized_requests(nursery: trio.Nursery, sock_path: str) -> None:
    await start(nursery, sock_path)
    for payload in (b'{"type": "nope"}', b"not json", b'{"type": "log", "limit": "x"}'):
        answer = await raw(sock_path, struct.pack(">I", len(payload)) + payload)
        assert b'"ok":false' in answer and b"bad request" in answer
    # A huge length prefix is refused without the body being read.
    answer = await raw(sock_path, struct.pack(">I", MAX_REQUEST_BYTES + 1))
    assert b"exceeds the limit" in answer
    # Half a frame then EOF: refused cleanly.
    answer = await raw(sock_path, struct.pack(">I", 100) + b"{", eof=True)
    assert b"closed inside a frame" in answer
    assert (await control_call(sock_path, StatusRequest(), timeout=5)).ok


async def test_large_requests_are_uploaded_in_frames(nursery: trio.Nursery, sock_path: str) -> None:
    """A 50,000-row CSV (about 3 MB) and a 50,000-line exclusion list reach the handler whole. Before, any request
    over one 64 KiB frame was refused: an import of more than about 1,000 rows failed."""
    await start(nursery, sock_path)
    rows = "\n".join(f"Product {i},SKU-{i:05d},{i},0,ITEM{i:08d},downtown,{i % 50},,in sync," for i in range(50_000))
    text = "name,sku,woo_product_id,woo_variation_id,clover_item_id,location,clover_stock,woo_stock," \
           "sync_status,last_synced_at\n" + rows + "\n"
    assert len(text) > 40 * MAX_REQUEST_BYTES
    r = await control_call(sock_path, ImportCsvRequest(text=text), timeout=30)
    assert r.ok and r.data == {"chars": len(text), "lines": 50_001, "last": rows.splitlines()[-1]}
    skus = tuple(f"SKU-\u00e9-{i:05d}" for i in range(50_000))
    r = await control_call(sock_path, ExcludeRequest(skus=skus), timeout=30)
    assert r.ok and r.data == {"skus": 50_000, "last": skus[-1]}
    with pytest.raises(ControlError, match="over the limit"):
        await control_call(sock_path, ImportCsvRequest(text="x" * (MAX_UPLOAD_BYTES + 1)), timeout=30)


def _frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


async def test_uploads_that_do_not_carry_what_they_announce_are_refused(nursery: trio.Nursery,
                                                                        sock_path: str) -> None:
    await start(nursery, sock_path)
    status = msgspec.json.encode(StatusRequest())
    big = msgspec.json.encode(ImportCsvRequest(text="y" * (MAX_REQUEST_BYTES + 10)))

    def upload(size: int, parts: int) -> bytes:
        return _frame(msgspec.json.encode(UploadRequest(size=size, parts=parts)))

    cases = [
        (upload(MAX_UPLOAD_BYTES + 1, 1025), "an upload of"),
        (upload(0, 0), "an upload of"),
        (upload(len(big), 1), "parts cannot carry"),
        (upload(len(big), 2) + _frame(big[:MAX_REQUEST_BYTES]) + _frame(big[MAX_REQUEST_BYTES:] + b"xx"),
         "larger than it announced"),
        (upload(len(big), 2) + _frame(big[:MAX_REQUEST_BYTES]) + _frame(big[MAX_REQUEST_BYTES:-1]),
         "smaller than it announced"),
        (upload(len(status), 1) + _frame(b"[" + status[1:]), "the uploaded request"),
        (upload(len(big), 2) + _frame(big[:MAX_REQUEST_BYTES]), "closed inside an upload"),
    ]
    nested = msgspec.json.encode(UploadRequest(size=10, parts=1))
    cases.append((upload(len(nested), 1) + _frame(nested), "an upload inside an upload"))
    for data, needle in cases:
        answer = await raw(sock_path, data, eof=True)
        assert b'"ok":false' in answer and needle.encode() in answer, (needle, answer[:200])
    assert (await control_call(sock_path, StatusRequest(), timeout=5)).ok


async def test_client_errors(tmp_path: Path, nursery: trio.Nursery) -> None:
    missing = str(tmp_path / "missing.sock")
    with pytest.raises(DaemonUnreachable, match="no control socket"):
        await control_call(missing, StatusRequest(), timeout=2)
    # A socket file nobody listens on: refused.
    dead = str(tmp_path / "dead.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(dead)
    s.close()
    with pytest.raises(DaemonUnreachable, match="nothing answers"):
        await control_call(dead, StatusRequest(), timeout=2)

    # A listener that never answers: timeout. One that answers garbage: protocol error.
    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async def garbage(stream: trio.SocketStream) -> None:
        await stream.send_all(struct.pack(">I", 3) + b"xyz")

    async def closes(stream: trio.SocketStream) -> None:
        await stream.aclose()

    for name, behaviour in (("silent", silent), ("garbage", garbage), ("closes", closes)):
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await sock.bind(str(tmp_path / f"{name}.sock"))
        sock.listen()
        nursery.start_soon(trio.serve_listeners, behaviour, [trio.SocketListener(sock)])
    with pytest.raises(DaemonUnreachable, match="within"):
        await control_call(str(tmp_path / "silent.sock"), StatusRequest(), timeout=0.3)
    with pytest.raises(ControlProtocolError, match="invalid response"):
        await control_call(str(tmp_path / "garbage.sock"), StatusRequest(), timeout=5)
    with pytest.raises((ControlProtocolError, DaemonUnreachable)):
        await control_call(str(tmp_path / "closes.sock"), StatusRequest(), timeout=5)


async def test_refuses_world_writable_directory(tmp_path: Path) -> None:
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    with pytest.raises(InsecureSocketDirectory, match="world-writable without the sticky bit"):
        await serve_control(str(open_dir / "c.sock"), handler)
    assert not (open_dir / "c.sock").exists()


async def test_sticky_world_writable_directory_is_accepted(tmp_path: Path, nursery: trio.Nursery) -> None:
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    await start(nursery, str(sticky / "c.sock"))
    assert (await control_call(str(sticky / "c.sock"), StatusRequest(), timeout=5)).ok


async def test_stale_socket_replaced_live_one_refused(sock_path: str) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(sock_path)  # left behind by a crashed daemon: nobody listens
    s.close()
    async with trio.open_nursery() as nursery:
        await start(nursery, sock_path)
        assert (await control_call(sock_path, StatusRequest(), timeout=5)).ok
        with pytest.raises(RuntimeError, match="already answering"):
            await serve_control(sock_path, handler)
        assert (await control_call(sock_path, StatusRequest(), timeout=5)).ok  # the first one still serves
        nursery.cancel_scope.cancel()
    assert not os.path.exists(sock_path)  # removed on exit


async def test_refuses_to_replace_a_regular_file(sock_path: str) -> None:
    Path(sock_path).write_text("important")
    with pytest.raises(RuntimeError, match="not a socket"):
        await serve_control(sock_path, handler)
    assert Path(sock_path).read_text() == "important"


async def test_start_reports_path(nursery: trio.Nursery, sock_path: str) -> None:
    path = await nursery.start(partial(serve_control, sock_path, handler))
    assert path == sock_path
