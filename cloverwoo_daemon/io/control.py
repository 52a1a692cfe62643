"""The control socket: the admin CLI talks to the running daemon over a unix stream socket.

Rules this module keeps:

- Framing: every message is a 4-byte big-endian length, then that many bytes
  of msgspec JSON. Requests are ``messages.ControlRequest`` (a tagged union),
  answers are ``messages.ControlResponse``.
- One request per connection. The server answers with one response, or with
  a stream of responses when the handler returns an async iterator (``log
  --follow``); either way it closes the connection after the last one, so
  the end of a stream is simply EOF and the protocol needs no extra marker.
- Bounded: a frame larger than ``MAX_REQUEST_BYTES`` is refused without
  being read; a client refuses an answer larger than its own limit. A
  client that sends nothing is dropped after ``REQUEST_TIMEOUT`` (and after
  as long between two frames of an upload).
- Large requests are uploaded in frames: a request whose encoding is over
  ``MAX_REQUEST_BYTES`` (a 50,000-row CSV, a long exclusion list) is sent as
  ``UploadRequest(size, parts)`` followed by ``parts`` frames of its bytes,
  reassembled and decoded by the server before the handler sees it, up to
  ``MAX_UPLOAD_BYTES`` in all. The CLI reads the admin's file with the
  admin's own permissions and sends its content: the daemon never opens a
  path someone on the socket names, so the socket's group cannot make it
  read a file they could not (its credentials, the state file).
- A handler exception is an answer (``ok=False`` with the message), never a
  crash of the server; many clients are served concurrently.
- Access control is the file system's: the socket is created with mode 0660
  (bound under a temporary name, chmod-ed, then renamed into place, so it is
  never reachable with a looser mode), and the server refuses to start in a
  directory that anyone can write to *without* the sticky bit, since anyone
  could then replace the socket with their own. A world-writable directory
  *with* the sticky bit (``/tmp``) is accepted: others cannot remove or
  rename our socket there, and a file someone else created under our name
  makes us refuse to start rather than be replaced.
- A socket file left by a dead daemon is replaced; a live daemon already
  answering on the path makes the new one refuse to start.

Exceptions (client side)::

    ControlError
     +-- DaemonUnreachable     no socket, connection refused, permission denied, or no answer in time
     +-- ControlProtocolError  the daemon answered something that is not a valid frame
"""

from __future__ import annotations

import os
import socket as stdsocket
import stat
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from typing import Any

import msgspec
import structlog
import trio

from cloverwoo_daemon.messages import ControlRequest, ControlResponse, UploadRequest

__all__ = [
    "MAX_REQUEST_BYTES",
    "MAX_RESPONSE_BYTES",
    "MAX_UPLOAD_BYTES",
    "ControlError",
    "ControlProtocolError",
    "ControlStream",
    "DaemonUnreachable",
    "Handler",
    "AlreadyServed",
    "InsecureSocketDirectory",
    "SocketPathUnusable",
    "check_socket_path",
    "control_call",
    "control_stream",
    "serve_control",
]

log = structlog.get_logger("cloverwoo.control")

MAX_REQUEST_BYTES = 64 * 1024
"""The largest frame a server reads; a request larger than this is uploaded in frames of this size."""
MAX_UPLOAD_BYTES = 64 * 1024 * 1024
"""The largest request, all frames together: a 50,000-row stock CSV is about 3 MB."""
MAX_RESPONSE_BYTES = 64 * 1024 * 1024  # a status or CSV export can be large; the CLI is the only reader
REQUEST_TIMEOUT = 10.0
SOCKET_MODE = 0o660
_HEADER = struct.Struct(">I")

Handler = Callable[[ControlRequest], Awaitable["ControlResponse | AsyncIterator[ControlResponse]"]]

_encoder = msgspec.json.Encoder()
_request_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(ControlRequest)
_response_decoder = msgspec.json.Decoder(ControlResponse)


class ControlError(Exception):
    """Talking to the daemon failed."""


class DaemonUnreachable(ControlError):
    """No daemon answers on the socket (the CLI exits 3)."""


class ControlProtocolError(ControlError):
    """The other side sent something that is not a valid frame."""


class SocketPathUnusable(RuntimeError):
    """``control.socket`` names a place the socket cannot be served from (a config error: the CLI exits 2)."""


class InsecureSocketDirectory(SocketPathUnusable):
    """The socket's directory is writable by anyone without the sticky bit; the server refuses to start."""


class AlreadyServed(RuntimeError):
    """Another daemon already answers on the socket; this one refuses to start."""


# --------------------------------------------------------------------------
# Framing


class _FrameReader:
    def __init__(self, stream: trio.abc.ReceiveStream, limit: int) -> None:
        self.stream = stream
        self.limit = limit
        self.buffer = bytearray()

    async def _fill(self, size: int) -> bool:
        while len(self.buffer) < size:
            chunk = await self.stream.receive_some(max(65536, size - len(self.buffer)))
            if not chunk:
                return False
            self.buffer += chunk
        return True

    async def read(self) -> bytes | None:
        """The next frame's payload; None at a clean EOF between frames."""
        if not await self._fill(_HEADER.size):
            if self.buffer:
                raise ControlProtocolError("connection closed inside a frame header")
            return None
        (size,) = _HEADER.unpack_from(self.buffer)
        if size > self.limit:
            raise ControlProtocolError(f"frame of {size} bytes exceeds the limit of {self.limit}")
        if not await self._fill(_HEADER.size + size):
            raise ControlProtocolError("connection closed inside a frame")
        payload = bytes(self.buffer[_HEADER.size : _HEADER.size + size])
        del self.buffer[: _HEADER.size + size]
        return payload


def _frame(message: msgspec.Struct) -> bytes:
    return _raw_frame(_encoder.encode(message))


def _raw_frame(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload)) + payload


def _request_frames(request: ControlRequest) -> list[bytes]:
    """One frame, or an ``UploadRequest`` frame and the request's bytes in frames of ``MAX_REQUEST_BYTES``."""
    payload = _encoder.encode(request)
    if len(payload) <= MAX_REQUEST_BYTES:
        return [_raw_frame(payload)]
    if len(payload) > MAX_UPLOAD_BYTES:
        raise ControlError(f"the request is {len(payload)} bytes, over the limit of {MAX_UPLOAD_BYTES}")
    parts = [payload[i : i + MAX_REQUEST_BYTES] for i in range(0, len(payload), MAX_REQUEST_BYTES)]
    return [_frame(UploadRequest(size=len(payload), parts=len(parts))), *map(_raw_frame, parts)]


async def _read_upload(reader: _FrameReader, upload: UploadRequest) -> ControlRequest:
    """The request an upload carries, reassembled; ``ControlProtocolError`` for anything but what it announced."""
    if not 0 < upload.size <= MAX_UPLOAD_BYTES:
        raise ControlProtocolError(f"an upload of {upload.size} bytes (the limit is {MAX_UPLOAD_BYTES})")
    if upload.parts != -(-upload.size // MAX_REQUEST_BYTES):
        raise ControlProtocolError(f"{upload.parts} parts cannot carry {upload.size} bytes")
    chunks: list[bytes] = []
    received = 0
    for _ in range(upload.parts):
        with trio.fail_after(REQUEST_TIMEOUT):
            chunk = await reader.read()
        if chunk is None:
            raise ControlProtocolError("connection closed inside an upload")
        received += len(chunk)
        if received > upload.size:
            raise ControlProtocolError("an upload larger than it announced")
        chunks.append(chunk)
    if received != upload.size:
        raise ControlProtocolError("an upload smaller than it announced")
    try:
        req = _request_decoder.decode(b"".join(chunks))
    except msgspec.DecodeError as exc:
        raise ControlProtocolError(f"the uploaded request: {exc}") from None
    if isinstance(req, UploadRequest):
        raise ControlProtocolError("an upload inside an upload")
    return req


# --------------------------------------------------------------------------
# Server


def _check_directory(path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    try:
        st = os.stat(directory)
    except OSError as exc:
        raise SocketPathUnusable(f"control.socket: the directory {directory} cannot be used: {exc.strerror}") from None
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        raise InsecureSocketDirectory(
            f"control.socket: refusing to create the socket in {directory}: it is world-writable without the sticky bit"
            " (anyone could replace the socket); use a private directory such as /run/cloverwoo"
        )


def check_socket_path(path: str) -> None:
    """Refuse, before anything starts, a ``control.socket`` the server could not bind (``SocketPathUnusable``)."""
    _check_directory(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketPathUnusable(f"control.socket: {path} exists and is not a socket; refusing to replace it")


def _remove_stale(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketPathUnusable(f"control.socket: {path} exists and is not a socket; refusing to replace it")
    probe = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return  # stale: the rename in _bind replaces it atomically
    except OSError as exc:
        raise RuntimeError(f"cannot check whether {path} is in use: {exc.strerror}") from None
    else:
        raise AlreadyServed(f"another daemon is already answering on {path}")
    finally:
        probe.close()


async def _bind(path: str) -> trio.socket.SocketType:
    _check_directory(path)
    _remove_stale(path)
    tmp = f"{path}.{os.getpid()}.tmp"
    with suppress(FileNotFoundError):
        os.unlink(tmp)
    sock = trio.socket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
    try:
        await sock.bind(tmp)
        os.chmod(tmp, SOCKET_MODE)
        sock.listen(64)
        os.rename(tmp, path)
    except BaseException:
        sock.close()
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return sock


async def _answer_stream(stream: trio.SocketStream, handler: Handler) -> None:
    reader = _FrameReader(stream, MAX_REQUEST_BYTES)
    try:
        with trio.fail_after(REQUEST_TIMEOUT):
            payload = await reader.read()
    except ControlProtocolError as exc:
        await stream.send_all(_frame(ControlResponse(ok=False, error=f"bad request: {exc}")))
        return
    except trio.TooSlowError:
        return
    if payload is None:
        return
    try:
        req = _request_decoder.decode(payload)
        if isinstance(req, UploadRequest):
            req = await _read_upload(reader, req)
    except (msgspec.DecodeError, ControlProtocolError) as exc:
        await stream.send_all(_frame(ControlResponse(ok=False, error=f"bad request: {exc}")))
        return
    except trio.TooSlowError:
        return
    try:
        result = await handler(req)
    except Exception as exc:  # noqa: BLE001 - a failing command is an answer, not a crash
        log.warning("control_handler_failed", request=type(req).__name__, error=f"{type(exc).__name__}: {exc}")
        await stream.send_all(_frame(ControlResponse(ok=False, error=f"{type(exc).__name__}: {exc}")))
        return
    if isinstance(result, ControlResponse):
        await stream.send_all(_frame(result))
        return
    iterator = aiter(result)
    try:
        while True:
            try:
                item = await anext(iterator)
            except StopAsyncIteration:
                break
            except Exception as exc:  # noqa: BLE001
                await stream.send_all(_frame(ControlResponse(ok=False, error=f"{type(exc).__name__}: {exc}")))
                break
            await stream.send_all(_frame(item))
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            with trio.CancelScope(shield=True):
                await aclose()


async def serve_control(
    path: str,
    handler: Handler,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer control requests on the unix socket ``path`` until cancelled; reports ``path`` once listening.

    Resource handling: the socket file is removed on exit if it is still ours.

    Error handling: ``SocketPathUnusable`` when the directory is missing or
    ``path`` is not a socket (``InsecureSocketDirectory`` when the directory
    is world-writable without the sticky bit); ``AlreadyServed`` when another
    daemon answers on ``path``. Errors of one connection (a client hanging
    up mid-stream) end that connection only.
    """
    sock = await _bind(path)
    ident = os.stat(path).st_ino

    async def connection(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                await _answer_stream(stream, handler)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the client went away (Ctrl-C on `log --follow`)

    try:
        listener = trio.SocketListener(sock)
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, connection, [listener])
            task_status.started(path)
    finally:
        try:
            if os.stat(path).st_ino == ident:
                os.unlink(path)
        except OSError:
            pass


# --------------------------------------------------------------------------
# Client


async def _connect(path: str) -> trio.SocketStream:
    try:
        return await trio.open_unix_socket(path)
    except FileNotFoundError:
        raise DaemonUnreachable(f"no control socket at {path} (is the daemon running?)") from None
    except ConnectionRefusedError:
        raise DaemonUnreachable(f"nothing answers on {path} (the daemon is not running)") from None
    except PermissionError:
        raise DaemonUnreachable(f"permission denied on {path} (run as the daemon's user or group)") from None
    except OSError as exc:
        raise DaemonUnreachable(f"cannot connect to {path}: {exc.strerror}") from None


class ControlStream:
    """The responses to one request, as they come; use ``async with`` and ``async for``.

    ``timeout`` bounds connecting and the first response; ``idle_timeout``
    (None: wait forever, as ``log --follow`` does) bounds each later one.
    """

    def __init__(self, path: str, request: ControlRequest, *, timeout: float, idle_timeout: float | None,
                 max_bytes: int) -> None:
        self.path = path
        self.request = request
        self.timeout = timeout
        self.idle_timeout = idle_timeout
        self.max_bytes = max_bytes
        self._stream: trio.SocketStream | None = None
        self._reader: _FrameReader | None = None
        self._first = True

    async def __aenter__(self) -> ControlStream:
        try:
            frames = _request_frames(self.request)
            with trio.fail_after(self.timeout):
                self._stream = await _connect(self.path)
                self._reader = _FrameReader(self._stream, self.max_bytes)
                for frame in frames:
                    await self._stream.send_all(frame)
        except trio.TooSlowError:
            await self.aclose()
            raise DaemonUnreachable(f"no answer on {self.path} within {self.timeout:g}s") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            await self.aclose()
            raise DaemonUnreachable(f"the daemon closed the connection on {self.path}") from exc
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._stream is not None:
            await self._stream.aclose()
            self._stream = None

    def __aiter__(self) -> ControlStream:
        return self

    async def __anext__(self) -> ControlResponse:
        if self._reader is None:
            raise StopAsyncIteration
        limit = self.timeout if self._first else self.idle_timeout
        try:
            with trio.fail_after(limit if limit is not None else float("inf")):
                payload = await self._reader.read()
        except trio.TooSlowError:
            raise DaemonUnreachable(f"no answer on {self.path} within {limit:g}s") from None
        except trio.BrokenResourceError as exc:
            raise DaemonUnreachable(f"connection to {self.path} lost") from exc
        if payload is None:
            if self._first:
                raise ControlProtocolError("the daemon closed the connection without answering")
            self._reader = None
            raise StopAsyncIteration
        self._first = False
        try:
            return _response_decoder.decode(payload)
        except msgspec.DecodeError as exc:
            raise ControlProtocolError(f"invalid response: {exc}") from None


def control_stream(
    path: str,
    request: ControlRequest,
    *,
    timeout: float = 10.0,
    idle_timeout: float | None = None,
    max_bytes: int = MAX_RESPONSE_BYTES,
) -> ControlStream:
    """Send ``request`` and iterate over the answers until the daemon closes the stream (``log --follow``)."""
    return ControlStream(path, request, timeout=timeout, idle_timeout=idle_timeout, max_bytes=max_bytes)


async def control_call(
    path: str, request: ControlRequest, *, timeout: float = 10.0, max_bytes: int = MAX_RESPONSE_BYTES
) -> ControlResponse:
    """Send ``request`` and return the daemon's (first) answer.

    Error handling: ``DaemonUnreachable`` when no daemon answers (missing
    socket, refused, permission denied, or nothing within ``timeout``);
    ``ControlProtocolError`` for an invalid answer. A command that failed in
    the daemon is an answer with ``ok=False``, not an exception.
    """
    async with control_stream(path, request, timeout=timeout, max_bytes=max_bytes) as stream:
        async for response in stream:
            return response
    raise ControlProtocolError("no answer")  # unreachable: an empty stream raises in __anext__
