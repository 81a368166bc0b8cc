#!/usr/bin/env python3
"""Hostile answers (TAP): tree entries whose size cannot be their blob's, names
with a NUL or bad components, and servers that drip or say nothing.

Tree answers are tampered with by a small proxy in front of the local Hub: it
forwards every request and adds the entries a test asks for to the listing of
one directory.  Slow servers use the local Hub's own fault rules.
"""

import errno
import http.client
import http.server
import json
import os
import socketserver
import subprocess
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mountlib import Mount, Tap, have_fuse, sha256, with_timeout  # noqa: E402
from harness import ALICE_WRITE_TOKEN, LocalHub  # noqa: E402
from test_read import content_matches, hub_tree  # noqa: E402

T = Tap()
REPO = "alice/big-model"
TREE = "/api/models/%s/tree/" % REPO
# --timeout of the slow-server tests, and the bound a failed read must meet
# (hubfs(1), --timeout): one deadline window, as a missed deadline is not
# retried and the kernel's second ask for the same range fails at once; the
# progress tick that notices it (1 s); and a margin for a loaded machine.
TIMEOUT = 3
READ_BOUND = TIMEOUT + 1 + 4


class Proxy(http.server.BaseHTTPRequestHandler):
    """Forwards to the local Hub; adds Proxy.extra to the root listing of REPO."""
    protocol_version = "HTTP/1.1"
    upstream = None
    extra = []

    def log_message(self, *a):
        pass

    def forward(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else None
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("host", "connection", "accept-encoding", "content-length")}
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            r = conn.getresponse()
            data = r.read()
            status, rheaders = r.status, r.getheaders()
        finally:
            conn.close()
        path = self.path.split("?")[0]
        if status == 200 and path.startswith(TREE) and path.count("/") == TREE.count("/") and Proxy.extra:
            data = json.dumps(json.loads(data) + Proxy.extra).encode()
        self.send_response(status)
        for k, v in rheaders:
            if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_HEAD = do_PUT = forward


def errno_of(fn, *args):
    try:
        fn(*args)
    except OSError as e:
        return e.errno
    return 0


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


def entry(path, size, oid="ab" * 20, lfs=None):
    e = {"type": "file", "oid": oid, "size": size, "path": path}
    if lfs is not None:
        e["lfs"] = lfs
    return e


# (name, entry, what): each is refused with EIO, never served as an empty file.
SIZE_LIES = [
    ("zero.bin", entry("zero.bin", 0), "size 0 for a non-empty git blob"),
    ("neg.bin", entry("neg.bin", -1), "a negative size"),
    ("huge.bin", entry("huge.bin", 2 ** 60), "a size beyond 2^53"),
    ("inf.bin", entry("inf.bin", 1e300), "an absurd size (1e300)"),
    ("frac.bin", entry("frac.bin", 3.5), "a size that is not an integer"),
    ("str.bin", entry("str.bin", "3"), "a size that is a string"),
    ("nosize.bin", {"type": "file", "oid": "ab" * 20, "path": "nosize.bin"}, "no size at all"),
    ("emptyid.bin", entry("emptyid.bin", 5, oid="e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"),
     "the empty blob id with size 5"),
    ("lfszero.bin", entry("lfszero.bin", 134, lfs={"oid": "cd" * 32, "size": 0, "pointerSize": 134}),
     "an LFS entry whose LFS size is 0"),
    ("lfsneg.bin", entry("lfsneg.bin", 134, lfs={"oid": "cd" * 32, "size": -5, "pointerSize": 134}),
     "an LFS entry with a negative LFS size"),
]

# Names refused while the rest of the listing stays usable.
BAD_NAMES = [
    entry("nul\u0000name", 3),
    entry("config.json\u0000evil", 3),
    entry("./dot", 3),
    entry("../up", 3),
    entry("a//b", 3),
    entry("sub/inner", 3),
    entry("..", 3),
]


def test_tree_lies(hub, proxy_url):
    tree = hub_tree(hub, "model", REPO, "main")
    with Mount(hub, token=ALICE_WRITE_TOKEN, endpoint=proxy_url) as m:
        base = m.p(REPO + "/main")
        for name, e, what in SIZE_LIES:
            Proxy.extra = [e]
            st = errno_of(os.stat, os.path.join(base, name))
            rd = errno_of(read_file, os.path.join(base, name))
            T.ok(st == errno.EIO and rd == errno.EIO, "%s: stat and open give EIO" % what,
                 "stat errno %d, open errno %d" % (st, rd))
        Proxy.extra = BAD_NAMES
        names = os.listdir(base)
        T.ok(not [n for n in names if n.startswith("nul") or "evil" in n or n in ("dot", "up", "a", "b", "sub")],
             "names with a NUL or bad components are not listed", names)
        T.eq(errno_of(os.stat, os.path.join(base, "nul")), errno.ENOENT, "a NUL name is not cut at the NUL")
        data = m.read(REPO + "/main/config.json", timeout=60)
        T.ok(content_matches(data, tree["config.json"]),
             "the neighbour of a NUL name reads right (git blob id)")
        data = m.read(REPO + "/main/model.safetensors", timeout=60)
        T.eq(sha256(data), tree["model.safetensors"]["lfs"]["oid"], "an LFS neighbour reads right (sha256)")
        Proxy.extra = []
        m.unmount()
        log = m.stderr
    for name, _, what in SIZE_LIES:
        lines = [ln for ln in log.splitlines() if "tree entry '%s' refused" % name in ln]
        T.ok(lines, "%s: a log line names '%s' and why" % (what, name))
    for shown in ("nul?name", "config.json?evil", "./dot", "../up", "a//b", "sub/inner"):
        T.ok("tree entry '%s' refused" % shown in log, "the refused name '%s' is logged" % shown)
    T.ok("sanitizer" not in log.lower() and "runtime error" not in log, "hostile tree: no sanitizer report")


def timed_read(path, out):
    t0 = time.monotonic()
    try:
        with open(path, "rb") as f:
            f.read()
        out["errno"] = 0
    except OSError as e:
        out["errno"] = e.errno
    out["took"] = time.monotonic() - t0
    out["end"] = time.monotonic()


def test_slow(hub, rule, what):
    tree = hub_tree(hub, "model", REPO, "main")
    with Mount(hub, token=ALICE_WRITE_TOKEN, args=["--timeout", str(TIMEOUT)]) as m:
        big = m.p(REPO + "/main/model.safetensors")
        os.stat(big)
        os.stat(m.p(REPO + "/main/config.json"))
        hub.set_faults([rule])
        stuck = {}
        th = threading.Thread(target=timed_read, args=(big, stuck), daemon=True)
        th.start()
        try:
            time.sleep(0.5)
            data, err = with_timeout(lambda: read_file(m.p(REPO + "/main/config.json")), 60)
            other_end = time.monotonic()
            th.join(120)
        finally:
            hub.clear_faults()
        T.ok(not th.is_alive() and stuck.get("errno") == errno.EIO,
             "%s: the read fails with EIO" % what, repr(stuck))
        T.ok(stuck.get("took", 1e9) < READ_BOUND,
             "%s: ... within %d s (--timeout %d; took %.1f s)" % (what, READ_BOUND, TIMEOUT,
                                                                   stuck.get("took", -1)))
        T.ok(err is None and content_matches(data, tree["config.json"]) and other_end < stuck.get("end", 0),
             "%s: another file of the mount reads right meanwhile" % what, repr(err))
        m.unmount()
        late = [ln for ln in m.stderr.splitlines() if "giving up" in ln]
        T.ok(late, "%s: the deadline is logged" % what, "\n".join(late))
        for ln in late:
            T.diag(ln)
        T.ok(not m.sanitizer_report(), "%s: no sanitizer report" % what)


def main():
    if not have_fuse():
        print("1..0 # SKIP /dev/fuse or fusermount3 missing")
        return
    root = tempfile.mkdtemp(prefix="hubfs-hostile-")
    srv = None
    try:
        with LocalHub(root=os.path.join(root, "hub"), seed=True) as hub:
            host, port = hub.url.split("//")[1].split(":")
            Proxy.upstream = (host, int(port))
            srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Proxy)
            srv.daemon_threads = True
            threading.Thread(target=srv.serve_forever, daemon=True).start()
            proxy_url = "http://127.0.0.1:%d" % srv.server_address[1]
            tests = [
                (test_tree_lies, (hub, proxy_url)),
                (test_slow, (hub, {"origin": "cdn", "path": ".", "action": "bandwidth", "bytes_per_sec": 2},
                             "a server that drips 2 bytes/s")),
                (test_slow, (hub, {"origin": "cdn", "path": ".", "action": "stall", "seconds": 60},
                             "a silent server")),
            ]
            for test, args in tests:
                try:
                    test(*args)
                except Exception as e:  # noqa: B902 - a crash of a test is a failure, the rest go on
                    T.ok(False, "%s raised %r" % (test.__name__, e))
    finally:
        if srv:
            srv.shutdown()
            srv.server_close()
        subprocess.run(["rm", "-rf", root])
    T.done()


if __name__ == "__main__":
    main()
