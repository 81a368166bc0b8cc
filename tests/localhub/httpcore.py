"""A small HTTP/1.1 server core: keep-alive, sendfile, faults on the wire, request log.

One thread per connection (daemon threads). Each accepted socket gets
TCP_NODELAY, and a response's head and a small body leave in one send, so a
client never waits for a delayed ACK. File bodies go out with os.sendfile
unless a fault rule has to see the bytes (corrupt, truncate, reset); a paced
answer (bandwidth, wan) sends file bodies with sendfile in timed pieces.

The application object has handle(req) -> Response; for the API origin it also
has admin(req) -> Response for /_admin/ routes, which bypass faults and the log.
An application must not raise: it turns its own errors into responses (a stray
exception becomes a 500 here and is printed to stderr).
"""

import email.utils
import os
import select
import socket
import socketserver
import struct
import sys
import time
import traceback
from http import HTTPStatus
from urllib.parse import parse_qs

REASONS = {s.value: s.phrase for s in HTTPStatus}
IDLE_TIMEOUT = 300
MAX_HEADERS = 200
MAX_LINE = 65536
DRAIN_LIMIT = 64 * 1024 * 1024
# sendfile() piece size. On loopback, non-blocking sendfile of 128-256 KiB per
# call measured ~1.6x faster than one call for the whole range (README.md).
SENDFILE_PIECE = 256 * 1024
# File bodies up to this size leave in the same send() as the head.
INLINE_FILE = 64 * 1024


class BadRequest(Exception):
    def __init__(self, status=400, message="Bad Request"):
        super().__init__(message)
        self.status = status


class FileBody:
    """A byte range of a file, sent with sendfile."""

    __slots__ = ("path", "offset", "length")

    def __init__(self, path, offset, length):
        self.path = path
        self.offset = offset
        self.length = length


class Response:
    __slots__ = ("status", "headers", "body", "file", "close")

    def __init__(self, status, headers=None, body=b"", file=None):
        self.status = status
        self.headers = headers if headers is not None else []
        self.body = body
        self.file = file
        self.close = False

    @property
    def length(self):
        return self.file.length if self.file is not None else len(self.body)

    def header(self, name):
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


UNSATISFIABLE = "unsatisfiable"


def parse_range(value, size):
    """(first, last) byte of a single 'bytes=' range, UNSATISFIABLE, or None to ignore it."""
    if not value or not value.startswith("bytes="):
        return None
    spec = value[6:].strip()
    if "," in spec:
        return None
    first, sep, last = spec.partition("-")
    first, last = first.strip(), last.strip()
    if not sep or not (first.isdigit() or last.isdigit()) or (first and not first.isdigit()) \
            or (last and not last.isdigit()):
        return None
    if not first:
        n = int(last)
        if n == 0 or size == 0:
            return UNSATISFIABLE
        return max(0, size - n), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        return UNSATISFIABLE
    return start, min(end, size - 1)


def file_response(headers, path, offset, size, range_header):
    """200, 206 or 416 for a byte range of a file (content at offset, size bytes)."""
    r = parse_range(range_header, size)
    if r is UNSATISFIABLE:
        return Response(416, headers + [("Content-Range", "bytes */%d" % size)], b"")
    if r is None:
        return Response(200, headers, file=FileBody(path, offset, size))
    first, last = r
    return Response(206, headers + [("Content-Range", "bytes %d-%d/%d" % (first, last, size))],
                    file=FileBody(path, offset + first, last - first + 1))


class Request:
    """A parsed request; the body is read on demand (read, iter_body, read_all)."""

    __slots__ = ("method", "target", "path", "query", "version", "headers", "_conn", "_left",
                 "_chunked", "_chunk_left", "_eof", "_expect", "_params", "base_url")

    def __init__(self, conn, method, target, version, headers):
        self.method = method
        self.target = target
        path, _, query = target.partition("?")
        self.path = path
        self.query = query
        self.version = version
        self.headers = headers
        self._conn = conn
        self._params = None
        self.base_url = None
        te = headers.get("transfer-encoding", "").lower()
        self._chunked = "chunked" in te
        self._chunk_left = 0
        if self._chunked:
            self._left = 0
            self._eof = False
        else:
            try:
                self._left = int(headers.get("content-length", "0") or 0)
            except ValueError:
                raise BadRequest(400, "bad Content-Length") from None
            if self._left < 0:
                raise BadRequest(400, "bad Content-Length")
            self._eof = self._left == 0
        self._expect = headers.get("expect", "").lower() == "100-continue" and not self._eof

    def header(self, name, default=None):
        return self.headers.get(name, default)

    @property
    def params(self):
        """Query parameters: {name: [values]} (blank values kept)."""
        if self._params is None:
            self._params = parse_qs(self.query, keep_blank_values=True)
        return self._params

    def param(self, name, default=None):
        values = self.params.get(name)
        return values[-1] if values else default

    @property
    def keep_alive(self):
        conn = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.1":
            return "close" not in conn
        return "keep-alive" in conn

    @property
    def content_length(self):
        return None if self._chunked else self._left

    @property
    def body_pending(self):
        return not self._eof

    @property
    def waiting_continue(self):
        """True if the client waits for '100 Continue' before sending the body."""
        return self._expect

    def _continue(self):
        if self._expect:
            self._expect = False
            self._conn.request.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")

    def read(self, n=1 << 20):
        """Up to n body bytes; b'' at the end of the body."""
        if self._eof:
            return b""
        self._continue()
        rfile = self._conn.rfile
        if not self._chunked:
            data = rfile.read(min(n, self._left))
            if not data:
                raise ConnectionError("client closed during body")
            self._left -= len(data)
            self._eof = self._left == 0
            return data
        if self._chunk_left == 0:
            line = rfile.readline(MAX_LINE)
            if not line:
                raise ConnectionError("client closed during body")
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                raise BadRequest(400, "bad chunk size") from None
            if size == 0:
                while True:  # trailers
                    line = rfile.readline(MAX_LINE)
                    if line in (b"\r\n", b"\n", b""):
                        break
                self._eof = True
                return b""
            self._chunk_left = size
        data = rfile.read(min(n, self._chunk_left))
        if not data:
            raise ConnectionError("client closed during body")
        self._chunk_left -= len(data)
        if self._chunk_left == 0:
            rfile.readline(MAX_LINE)
        return data

    def iter_body(self, size=1 << 20):
        while True:
            data = self.read(size)
            if not data:
                return
            yield data

    def read_all(self, limit=512 * 1024 * 1024):
        if self.content_length is not None and self.content_length > limit:
            raise BadRequest(413, "request body too large")
        parts = []
        total = 0
        for chunk in self.iter_body():
            total += len(chunk)
            if total > limit:
                raise BadRequest(413, "request body too large")
            parts.append(chunk)
        return b"".join(parts)


_date = [0, ""]


def http_date():
    now = int(time.time())
    if now != _date[0]:
        _date[1] = email.utils.formatdate(now, usegmt=True)
        _date[0] = now
    return _date[1]


class Server(socketserver.ThreadingTCPServer):
    """One listening socket: the API origin or the CDN origin."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address, app, origin, log, faults, stopping):
        self.app = app
        self.origin = origin
        self.log = log
        self.faults = faults
        self.stopping = stopping
        super().__init__(address, Connection)
        host, port = self.server_address[:2]
        self.base_url = "http://%s:%d" % (host, port)

    def get_request(self):
        sock, addr = self.socket.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, addr

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if not isinstance(exc, (ConnectionError, TimeoutError, OSError)):
            traceback.print_exc()


class Connection(socketserver.BaseRequestHandler):
    """Serves the requests of one keep-alive connection."""

    def setup(self):
        self.request.settimeout(IDLE_TIMEOUT)
        self.rfile = self.request.makefile("rb", 1 << 16)
        host, port = self.request.getsockname()[:2]
        self.local = "%s:%d" % (host, port)
        self.sent = 0
        self.reset_done = False
        self.linger = False
        self.poller = None

    def finish(self):
        if self.linger and not self.reset_done:
            self._lingering_close()
        try:
            self.rfile.close()
        except OSError:
            pass

    def _lingering_close(self):
        """Half-close, then discard what the client still sends (bounded), so
        that closing with unread data does not turn into a RST that destroys
        the answer before the client has read it."""
        sock = self.request
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(0.5)
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                if not sock.recv(1 << 16):
                    break
        except OSError:
            pass

    def handle(self):
        server = self.server
        while not server.stopping.is_set():
            try:
                req = self._read_request()
            except BadRequest as e:
                self._send_simple(e.status, str(e))
                return
            except (OSError, ValueError):
                return
            if req is None:
                return
            try:
                if not self._process(req):
                    return
            except (ConnectionError, TimeoutError, BrokenPipeError):
                return

    # ---- parsing ---------------------------------------------------------

    def _read_request(self):
        rfile = self.rfile
        line = rfile.readline(MAX_LINE + 1)
        while line in (b"\r\n", b"\n"):
            line = rfile.readline(MAX_LINE + 1)
        if not line:
            return None
        if len(line) > MAX_LINE:
            raise BadRequest(414, "request line too long")
        parts = line.decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            raise BadRequest(400, "bad request line")
        method, target, version = parts
        headers = {}
        for _ in range(MAX_HEADERS):
            h = rfile.readline(MAX_LINE + 1)
            if h in (b"\r\n", b"\n", b""):
                break
            name, sep, value = h.partition(b":")
            if not sep:
                raise BadRequest(400, "bad header line")
            key = name.strip().lower().decode("latin-1")
            val = value.strip().decode("latin-1")
            headers[key] = headers[key] + ", " + val if key in headers else val
        else:
            raise BadRequest(431, "too many headers")
        if target.startswith(("http://", "https://")):
            slash = target.find("/", target.index("//") + 2)
            target = target[slash:] if slash >= 0 else "/"
        if not target.startswith("/"):
            raise BadRequest(400, "bad request target")
        return Request(self, method.upper(), target, version, headers)

    # ---- one exchange ----------------------------------------------------

    def _call(self, func, req):
        try:
            return func(req)
        except BadRequest as e:
            resp = Response(e.status, [("Content-Type", "text/plain")], str(e).encode())
            resp.close = True
            return resp
        except (ConnectionError, TimeoutError):
            raise
        except Exception:
            traceback.print_exc()
            return Response(500, [("Content-Type", "application/json")],
                            b'{"error":"Internal Error - localhub bug"}')

    def _process(self, req):
        server = self.server
        if server.origin == "api" and req.path.startswith("/_admin/"):
            resp = self._call(server.app.admin, req)
            keep = self._finish_body(req) and req.keep_alive and not resp.close
            self._write(req, resp, None, keep)
            return keep
        decision = server.faults.decide(req, server.origin) if server.faults.active else None
        resp = None
        applied = None
        if decision is not None:
            if decision.response is not None:
                resp = decision.response
                applied = decision.action
            elif decision.action in ("stall", "wan"):
                applied = decision.action
                if server.stopping.wait(decision.seconds):
                    return False
        if resp is None:
            resp = self._call(server.app.handle, req)
        wire = None
        if decision is not None:
            resp.headers.extend(decision.extra_headers)
            if decision.action in ("reset", "truncate", "bandwidth", "corrupt", "wan"):
                wire = decision
                applied = decision.action
        keep = self._finish_body(req) and req.keep_alive and not resp.close
        self.sent = 0
        record = server.log.add(req.method, req.path, req.query, resp.status, req.headers.get("range"),
                                self._planned_bytes(req, resp, wire), "authorization" in req.headers,
                                server.origin, self.local, applied)
        try:
            return self._write(req, resp, wire, keep) and keep
        finally:
            server.log.set_bytes(record, self.sent)

    @staticmethod
    def _planned_bytes(req, resp, wire):
        """Body bytes an answer will carry if the client keeps reading."""
        if req.method == "HEAD" or resp.status in (204, 304) or resp.status < 200:
            return 0
        if wire is not None and wire.action in ("reset", "truncate"):
            after = wire.params.get("after_bytes")
            return 0 if after is None else min(int(after), resp.length)
        return resp.length

    def _finish_body(self, req):
        """Consume what the handler left of the body; False if the connection must close."""
        if not req.body_pending:
            return True
        if req.waiting_continue:
            return False
        if req.content_length is not None and req.content_length > DRAIN_LIMIT:
            self.linger = True
            return False
        try:
            for _ in req.iter_body():
                pass
        except (BadRequest, OSError):
            return False
        return True

    # ---- writing ---------------------------------------------------------

    def _head(self, req, resp, keep):
        status = resp.status
        lines = ["HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, "Unknown"))]
        request_id = None
        for k, v in resp.headers:
            lines.append("%s: %s\r\n" % (k, v))
            if k == "X-Request-Id":
                request_id = v
        if status not in (204, 304):
            lines.append("Content-Length: %d\r\n" % resp.length)
        if request_id is None:
            lines.append("X-Request-Id: %s\r\n" % os.urandom(12).hex())
        lines.append("Date: %s\r\nServer: localhub\r\nConnection: %s\r\n\r\n"
                     % (http_date(), "keep-alive" if keep else "close"))
        return "".join(lines).encode("utf-8")

    def _write(self, req, resp, wire, keep):
        """Send a response; return False if the connection is no longer usable."""
        sock = self.request
        no_body = req.method == "HEAD" or resp.status in (204, 304) or resp.status < 200
        length = 0 if no_body else resp.length
        if wire is not None and wire.action == "reset" and wire.params.get("after_bytes") is None:
            self._reset()
            return False
        head = self._head(req, resp, keep and (wire is None or wire.action in ("bandwidth", "corrupt", "wan")))
        if wire is None:
            if no_body:
                sock.sendall(head)
            elif resp.file is None:
                sock.sendall(head + resp.body)
                self.sent = length
            elif length <= INLINE_FILE:
                sock.sendall(head + self._pread(resp.file))
                self.sent = length
            else:
                sock.sendall(head)
                self._sendfile(resp.file)
            return True
        sock.sendall(head)
        action = wire.action
        if action in ("reset", "truncate"):
            limit = min(int(wire.params.get("after_bytes") or 0), length)
            for chunk in self._chunks(resp, limit):
                sock.sendall(chunk)
                self.sent += len(chunk)
            if action == "reset":
                self._reset()
            return False
        if action in ("bandwidth", "wan"):
            rate = max(1, int(wire.params.get("bytes_per_sec", 65536)))
            return self._paced(resp, length, rate)
        if action == "corrupt":
            positions = wire.params.get("positions")
            if positions is None:
                positions = [int(wire.params.get("after_bytes") or 0)]
            pos = 0
            for chunk in self._chunks(resp, length):
                hits = [p - pos for p in positions if pos <= p < pos + len(chunk)]
                if hits:
                    chunk = bytearray(chunk)
                    for h in hits:
                        chunk[h] ^= 0xFF
                    chunk = bytes(chunk)
                sock.sendall(chunk)
                pos += len(chunk)
                self.sent += len(chunk)
            return True
        return True

    def _paced(self, resp, length, rate):
        """Send a body at rate bytes/s in pieces of 1/20 s (1 KiB..1 MiB), sleeping
        between them; file bodies go out with sendfile. False if the server stops."""
        piece = max(1024, min(1 << 20, rate // 20))
        start = time.monotonic()
        if resp.file is None:
            pieces = self._chunks(resp, length, piece)
            fd = None
        else:
            pieces = None
            fd = os.open(resp.file.path, os.O_RDONLY)
        try:
            while self.sent < length:
                n = min(piece, length - self.sent)
                if fd is None:
                    self.request.sendall(next(pieces))
                else:
                    self._sendfile_range(fd, resp.file.offset + self.sent, n)
                self.sent += n
                delay = start + self.sent / rate - time.monotonic()
                if delay > 0 and self.server.stopping.wait(delay):
                    return False
            return True
        finally:
            if fd is not None:
                os.close(fd)

    def _sendfile_range(self, fd, offset, left):
        sockfd = self.request.fileno()
        while left > 0:
            try:
                n = os.sendfile(sockfd, fd, offset, left)
            except BlockingIOError:
                self._wait_writable()
                continue
            if n == 0:
                raise ConnectionError("file shrank")
            offset += n
            left -= n

    def _chunks(self, resp, limit, size=1 << 20):
        """The first limit bytes of a response body, in pieces."""
        if resp.file is None:
            for i in range(0, limit, size):
                yield resp.body[i:min(i + size, limit)]
            return
        with open(resp.file.path, "rb") as f:
            f.seek(resp.file.offset)
            left = limit
            while left > 0:
                data = f.read(min(size, left))
                if not data:
                    raise ConnectionError("file shrank")
                left -= len(data)
                yield data

    @staticmethod
    def _pread(body):
        fd = os.open(body.path, os.O_RDONLY)
        try:
            data = os.pread(fd, body.length, body.offset)
        finally:
            os.close(fd)
        if len(data) != body.length:
            raise ConnectionError("file shrank")
        return data

    def _sendfile(self, body):
        sock = self.request
        sockfd = sock.fileno()
        fd = os.open(body.path, os.O_RDONLY)
        try:
            offset, left = body.offset, body.length
            while left > 0:
                try:
                    n = os.sendfile(sockfd, fd, offset, min(left, SENDFILE_PIECE))
                except BlockingIOError:
                    self._wait_writable()
                    continue
                if n == 0:
                    raise ConnectionError("file shrank")
                offset += n
                left -= n
                self.sent += n
        finally:
            os.close(fd)

    def _wait_writable(self):
        if self.poller is None:
            self.poller = select.poll()
            self.poller.register(self.request.fileno(), select.POLLOUT)
        if not self.poller.poll(IDLE_TIMEOUT * 1000):
            raise TimeoutError("send timed out")

    def _reset(self):
        """Abort the connection with a TCP RST (SO_LINGER 0)."""
        sock = self.request
        self.reset_done = True
        try:
            self.rfile.close()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        except OSError:
            pass

    def _send_simple(self, status, text):
        body = text.encode("utf-8", "replace")
        head = ("HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                "Connection: close\r\n\r\n" % (status, REASONS.get(status, "Error"), len(body)))
        try:
            self.request.sendall(head.encode() + body)
        except OSError:
            pass

