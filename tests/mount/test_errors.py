#!/usr/bin/env python3
"""Integration tests of the mount's failure modes against the local Hub (TAP).

Bad command lines, bad tokens and unreachable endpoints before mounting;
an endpoint that goes away while mounted; 429 with Retry-After; interrupted
readers; tokens kept out of logs; a hostile server's tree listing; the
cache directory's privacy; mmap; `hubfs cache` while mounted.
"""

import errno
import http.server
import json
import mmap
import os
import signal
import socketserver
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mountlib import Mount, Tap, data_requests, drop_page_cache, have_fuse, hubfs_binary, sha256  # noqa: E402
from harness import ALICE_WRITE_TOKEN, LocalHub  # noqa: E402
from test_read import content_matches, hub_tree  # noqa: E402

T = Tap()
MiB = 1 << 20


def run_hubfs(args, env=None, timeout=30):
    e = dict(os.environ)
    for k in ("HF_TOKEN", "HF_ENDPOINT", "HF_TOKEN_PATH", "HF_HOME"):
        e.pop(k, None)
    e["HOME"] = tempfile.gettempdir()
    e.update(env or {})
    return subprocess.run([hubfs_binary()] + args, capture_output=True, text=True, timeout=timeout, env=e)


def test_mount_errors(hub):
    tmp = tempfile.mkdtemp(prefix="hubfs-err-")
    empty = os.path.join(tmp, "empty")
    os.mkdir(empty)
    full = os.path.join(tmp, "full")
    os.mkdir(full)
    open(os.path.join(full, "x"), "w").close()
    cache = os.path.join(tmp, "cache")
    base = ["mount", "--cache-dir", cache, "--endpoint", hub.url]
    cases = [
        (base + [os.path.join(tmp, "missing")], {}, "No such file", "a missing mountpoint"),
        (base + [full], {}, "not empty", "a mountpoint that is not empty"),
        (base + ["--cache-size", "lots", empty], {}, "not a size", "a bad --cache-size"),
        (base + ["--cache-io", "fast", empty], {}, "auto, direct or buffered", "a bad --cache-io"),
        (base + ["--ttl", "-3", empty], {}, "not a number", "a bad --ttl"),
        (base + ["--bogus", empty], {}, "unknown option", "an unknown option"),
        (base + [empty], {"HF_TOKEN": "hf_not_a_real_token_000000000000"}, "refused", "a bad token"),
        (["mount", "--cache-dir", cache, "--endpoint", "http://127.0.0.1:9", empty], {"HF_TOKEN": ALICE_WRITE_TOKEN},
         "cannot reach", "an unreachable endpoint with an empty cache"),
        (["mount", "--cache-dir", cache, "--endpoint", "ftp://example.org", empty], {}, "not an http", "a non-HTTP endpoint"),
    ]
    for args, env, text, what in cases:
        r = run_hubfs(args, env)
        T.ok(r.returncode != 0 and text in r.stderr, "mount refuses %s: exit %d" % (what, r.returncode), r.stderr)
    T.ok(not os.listdir(empty), "nothing was mounted")
    st = os.stat(cache) if os.path.exists(cache) else None
    T.ok(st is None or stat.S_IMODE(st.st_mode) == 0o700, "the cache directory is private (0700)")
    # Without -f, mount returns once mounted, and the daemon stays.
    r = run_hubfs(["mount", "--cache-dir", cache, "--endpoint", hub.url, empty], {"HF_TOKEN": ALICE_WRITE_TOKEN})
    ok = r.returncode == 0 and "tiny-model" in os.listdir(os.path.join(empty, "alice"))
    T.ok(ok, "mount without -f returns once the filesystem is mounted", r.stderr)
    c = run_hubfs(["cache", "clear", "--cache-dir", cache])
    T.ok(c.returncode != 0 and "in use" in c.stderr, "cache clear is refused while a mount uses the cache", c.stderr)
    s = run_hubfs(["cache", "stats", "--cache-dir", cache])
    T.ok(s.returncode == 0 and "hit ratio" in s.stdout, "cache stats works while mounted", s.stdout + s.stderr)
    u = run_hubfs(["umount", empty])
    T.ok(u.returncode == 0, "hubfs umount", u.stderr)
    for _ in range(100):
        if not run_hubfs(["cache", "clear", "--cache-dir", cache]).returncode:
            break
        time.sleep(0.1)
    s = run_hubfs(["cache", "stats", "--cache-dir", cache])
    T.ok("blobs      0" in s.stdout, "cache clear empties the cache once unmounted", s.stdout)
    subprocess.run(["rm", "-rf", tmp])


def test_went_away(hub_root):
    """The Hub stops answering while mounted: what was seen stays readable."""
    with LocalHub(root=hub_root) as hub:
        tree = hub_tree(hub, "model", "alice/tiny-model", "main")
        m = Mount(hub, token=ALICE_WRITE_TOKEN, args=["--ttl", "1"])
        with m:
            m.read("alice/tiny-model/main/config.json")
            os.listdir(m.p("alice/tiny-model/main/docs"))
            hub.stop()
            time.sleep(1.5)  # the TTL runs out: the branch must be asked again, and cannot be
            drop_page_cache(m.p("alice/tiny-model/main/config.json"))
            data = m.read("alice/tiny-model/main/config.json", timeout=60)
            T.ok(content_matches(data, tree["config.json"]), "with the Hub gone, a cached file still reads")
            T.ok("read me.md" in os.listdir(m.p("alice/tiny-model/main/docs")), "with the Hub gone, listings seen before still list")
            try:
                m.read("alice/tiny-model/main/tokenizer.json", timeout=60)
                T.ok(False, "with the Hub gone, an uncached file fails")
            except OSError as e:
                T.eq(e.errno, errno.EIO, "with the Hub gone, an uncached file fails with EIO")
            T.ok("offline" in m.read_stderr(), "the daemon logs that it is offline")
            status = m.unmount()
            T.eq(status, 0, "unmount with the Hub gone")


def test_retry_after(hub):
    with Mount(hub, token=ALICE_WRITE_TOKEN) as m:
        path = "alice/big-model/main/config.json"
        os.stat(m.p(path))
        hub.set_faults([{"path": "/resolve/", "action": "status", "status": 429, "count": 2,
                         "headers": {"Retry-After": "1"}}])
        hub.clear_log()
        t0 = time.monotonic()
        data = m.read(path)
        took = time.monotonic() - t0
        hub.clear_faults()
        tree = hub_tree(hub, "model", "alice/big-model", "main")
        n429 = [r for r in hub.log() if r["status"] == 429]
        T.ok(content_matches(data, tree["config.json"]) and len(n429) == 2 and took >= 4,
             "429 with Retry-After: 1 is waited out twice (%.1f s) and the read succeeds" % took)


def test_interrupt(hub):
    with Mount(hub, token=ALICE_WRITE_TOKEN, args=["--timeout", "60"]) as m:
        path = m.p("alice/big-model/main/model.safetensors")
        os.stat(path)
        hub.set_faults([{"origin": "cdn", "path": ".", "action": "stall", "seconds": 60}])
        code = ("import os,signal,sys,time\n"
                "def h(s,f): raise InterruptedError(4, 'interrupted')\n"
                "signal.signal(signal.SIGALRM, h)\n"
                "signal.alarm(2)\n"
                "t=time.monotonic()\n"
                "fd=os.open(sys.argv[1], os.O_RDONLY)\n"
                "try:\n os.pread(fd, 1<<20, 0); print('read')\n"
                "except InterruptedError as e: print('EINTR %.1f' % (time.monotonic()-t))\n")
        try:
            r = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, timeout=30)
            out = r.stdout.strip()
        except subprocess.TimeoutExpired:
            out = "hung"
        hub.clear_faults()
        ok = out.startswith("EINTR") and float(out.split()[1]) < 10
        T.ok(ok, "an interrupted reader gets EINTR at once (%s)" % out)


def test_token_not_logged(hub):
    with Mount(hub, token=ALICE_WRITE_TOKEN, args=["-d"]) as m:
        m.read("acme-research/private-model/main/weights.bin")
        m.unmount()
        log = m.stderr
    T.ok("resolve" in log and ALICE_WRITE_TOKEN not in log and "Bearer" not in log,
         "with -d every request is logged, the token never (%d lines)" % len(log.splitlines()))


def test_mmap(hub):
    tree = hub_tree(hub, "model", "alice/big-model", "main")
    with Mount(hub, token=ALICE_WRITE_TOKEN) as m:
        with open(m.p("alice/big-model/main/model.safetensors"), "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
            try:
                n = struct.unpack("<Q", mm[:8])[0]
                header = json.loads(mm[8:8 + n])
                name, info = next((k, v) for k, v in header.items() if k != "__metadata__")
                a, b = info["data_offsets"]
                tensor = mm[8 + n + a:8 + n + b]
                whole = sha256(mm[:])
            finally:
                mm.close()
        T.ok(len(tensor) == b - a and whole == tree["model.safetensors"]["lfs"]["oid"],
             "mmap of a safetensors file: header, tensor %s and whole file right" % name)


class Hostile(http.server.BaseHTTPRequestHandler):
    """A server whose tree listing tries to escape: absolute paths, '..', NUL, huge names."""
    protocol_version = "HTTP/1.1"
    entries = [{"type": "file", "oid": "0" * 40, "size": 3, "path": p} for p in
               ("../../../../tmp/hubfs-escape", "/etc/passwd", "a/../../b", "nul\u0000name", "x" * 5000, ".git")]

    def log_message(self, *a):
        pass

    def send_json(self, code, obj, headers=()):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        p = self.path.split("?")[0]
        if p == "/api/whoami-v2":
            self.send_json(401, {"error": "no"})
        elif p in ("/api/users/evil/overview",):
            self.send_json(200, {"user": "evil"})
        elif p.endswith("/refs"):
            self.send_json(200, {"branches": [{"name": "main", "ref": "refs/heads/main", "targetCommit": "1" * 40},
                                              {"name": "../x", "ref": "refs/heads/../x", "targetCommit": "2" * 40}],
                                 "tags": [], "converts": []})
        elif "/revision/" in p:
            self.send_json(200, {"sha": "1" * 40, "lastModified": "2026-01-01T00:00:00.000Z", "private": False})
        elif "/tree/" in p:
            self.send_json(200, self.entries)
        else:
            self.send_json(404, {"error": "no"}, [("X-Error-Code", "EntryNotFound")])


def test_hostile():
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Hostile)
    srv.daemon_threads = True
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        class FakeHub:
            url = "http://127.0.0.1:%d" % srv.server_address[1]
        with Mount(FakeHub(), endpoint=FakeHub.url) as m:
            T.eq(sorted(os.listdir(m.p("evil/repo"))), ["main"], "a ref named '../x' is not listed")
            # each hostile name is left out (hubfs(1), ERRORS: EIO), never cut or followed
            T.eq(os.listdir(m.p("evil/repo/main")), [], "every hostile name of a tree listing is refused")
            T.ok(not os.path.exists("/tmp/hubfs-escape"), "nothing was written outside the cache")
            m.unmount()
            T.ok(not m.sanitizer_report(), "hostile server: no sanitizer report")
    finally:
        srv.shutdown()
        srv.server_close()


def test_consistency(hub):
    """Branch views follow the branch within the TTL; commit views never ask again."""
    from test_read import commit_files
    from mountlib import api_requests
    with Mount(hub, token=ALICE_WRITE_TOKEN, args=["--ttl", "2"]) as m:
        main = os.getxattr(m.p("bob/hello-world/main"), "user.hub.commit").decode()
        old = m.read("bob/hello-world/main/hello.txt")
        T.eq(errno_of_stat(m.p("bob/hello-world/main/new.txt")), errno.ENOENT, "a file not yet committed is ENOENT")
        f = open(m.p("bob/hello-world/main/hello.txt"), "rb")
        try:
            from harness import BOB_WRITE_TOKEN
            commit_files(hub, "bob/hello-world", {"hello.txt": b"changed\n", "new.txt": b"new\n"}, token=BOB_WRITE_TOKEN,
                         summary="change hello")
            T.eq(errno_of_stat(m.p("bob/hello-world/main/new.txt")), errno.ENOENT,
                 "within the TTL, a missing name stays missing (negative entry cached)")
            time.sleep(2.5)
            T.eq(m.read("bob/hello-world/main/hello.txt"), b"changed\n", "after the TTL, the branch view shows the new commit")
            T.eq(m.read("bob/hello-world/main/new.txt"), b"new\n", "after the TTL, a new file appears")
            f.seek(0)
            T.eq(f.read(), old, "a file opened before the branch moved keeps its content")
        finally:
            f.close()
        T.eq(m.read("bob/hello-world@%s/hello.txt" % main), old, "the old commit stays readable by its id")
        os.listdir(m.p("bob/hello-world@%s" % main))
        time.sleep(2.5)
        hub.clear_log()
        os.stat(m.p("bob/hello-world@%s/hello.txt" % main))
        os.listdir(m.p("bob/hello-world@%s" % main))
        T.eq(len(api_requests(hub.log())), 0, "a commit-id view never asks the API again")
        m.unmount()
        T.ok(not m.sanitizer_report(), "consistency: no sanitizer report")


def test_status(hub):
    """hubfs status shows what is staged and why it is not on the Hub."""
    from harness import ALICE_READ_TOKEN
    with Mount(hub, token=ALICE_READ_TOKEN, args=["--commit-delay", "600"]) as m:
        path = m.p("alice/tiny-model/main/status-check.txt")
        with open(path, "wb") as f:
            f.write(b"x" * 3000)
            f.flush()
            try:
                os.fsync(f.fileno())
                code = 0
            except OSError as e:
                code = e.errno
        T.eq(code, errno.EACCES, "fsync with a read-only token is EACCES")
        r = run_hubfs(["status", m.p("")])
        ok = r.returncode == 0 and "alice/tiny-model@main: 1 change (1 failed)" in r.stdout \
            and "last error" in r.stdout
        T.ok(ok, "hubfs status shows the pending change, its state and its error", r.stdout + r.stderr)
        m.unmount()


def errno_of_stat(path):
    try:
        os.stat(path)
    except OSError as e:
        return e.errno
    return 0


def main():
    if not have_fuse():
        print("1..0 # SKIP /dev/fuse or fusermount3 missing")
        return
    root = tempfile.mkdtemp(prefix="hubfs-errhub-")
    try:
        with LocalHub(root=os.path.join(root, "hub"), seed=True) as hub:
            for test in (test_mount_errors, test_retry_after, test_interrupt, test_token_not_logged, test_mmap,
                         test_consistency, test_status):
                try:
                    test(hub)
                except Exception as e:  # noqa: B902 - a crash of a test is a failure, the rest go on
                    T.ok(False, "%s raised %r" % (test.__name__, e))
        for test, args in ((test_went_away, (os.path.join(root, "hub"),)), (test_hostile, ())):
            try:
                test(*args)
            except Exception as e:  # noqa: B902
                T.ok(False, "%s raised %r" % (test.__name__, e))
    finally:
        subprocess.run(["rm", "-rf", root])
    T.done()


if __name__ == "__main__":
    main()
