#!/usr/bin/env python3
"""Integration tests of big writes through the mount under faults (TAP).

Against a local Hub that answers LFS uploads larger than 5 MiB with multipart
transfer: a file of several chunks copied into a branch goes up part by part
and lands as one commit with the right bytes.  With 5xx answers and
connection resets on the upload routes it still lands exactly once (an fsync
may be EIO; the data stays staged and the next fsync commits it).  After
SIGKILL of the daemon in the middle of its multipart upload, a mount on the
same cache directory commits the file once, with the right bytes.  The official JavaScript client (@huggingface/hub,
through tests/mount/js_client.mjs) downloads what hubfs committed, and
commits beside a mount: to the path hubfs has staged (a conflict: fsync is
EIO, nothing is overwritten, `hubfs status` shows it) and to another path
(hubfs commits on top of it).  The JavaScript checks are skipped when node or
the client's node_modules are missing.
"""

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mountlib import SRCDIR, Mount, Tap, have_fuse, hubfs_binary, mounted, sha256  # noqa: E402
from harness import ALICE_WRITE_TOKEN, LocalHub  # noqa: E402
from test_write import commits, downloaded, fsync_path, titles, wait_for  # noqa: E402

T = Tap()
MiB = 1 << 20
REPO = "alice/tiny-model"
BASE = REPO + "/main/"
CHUNK = 5 * MiB
CMD_TIMEOUT = 180
JS_CLIENT = os.path.join(SRCDIR, "tests", "mount", "js_client.mjs")
NODE_MODULES = os.environ.get("HUBFS_NODE_MODULES") or os.path.join(SRCDIR, "tests", "conformance", "node_modules")

PART = re.compile(r"^/upload/[0-9a-f]{32}/(\d+)$")
BASIC = re.compile(r"^/upload/[0-9a-f]{64}$")
# every part but the first: the upload is caught after one part is stored
LATER_PARTS = r"^/upload/[0-9a-f]{32}/([2-9]|\d\d+)$"


def part_puts(records):
    """(upload id, part number, status) of the part PUTs in @records."""
    out = []
    for r in records:
        match = PART.match(r["path"]) if r["method"] == "PUT" and r["origin"] == "cdn" else None
        if match:
            out.append((r["path"].split("/")[2], int(match.group(1)), r["status"]))
    return out


def commit_posts(records):
    return [r for r in records if r["method"] == "POST" and r["path"] == "/api/models/%s/commit/main" % REPO]


def local_file(tmp, name, data):
    path = os.path.join(tmp, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def cp(src, dst):
    """cp(1) into the mount; (exit status, stderr)."""
    try:
        r = subprocess.run(["cp", src, dst], capture_output=True, text=True, timeout=CMD_TIMEOUT)
    except subprocess.TimeoutExpired:
        return None, "cp did not return within %d s" % CMD_TIMEOUT
    return r.returncode, r.stderr


def hubfs_status(cache_dir):
    """`hubfs status --cache-dir`: (exit status, output, the line of alice/tiny-model's main or "")."""
    r = subprocess.run([hubfs_binary(), "status", "--cache-dir", cache_dir], capture_output=True, text=True,
                       timeout=60)
    line = next((x for x in r.stdout.splitlines() if "alice/tiny-model" in x and "main" in x), "")
    return r.returncode, r.stdout + r.stderr, line


def in_state(line, state):
    """Whether a status line counts one change in @state ("conflict 1" or "1 conflict")."""
    return re.search(r"\b(%s 1|1 %s)\b" % (state, state), line) is not None


def check_sanitizers(m, what):
    report = m.sanitizer_report()
    T.ok(not report, "%s: no sanitizer report from the daemon" % what, "\n".join(report[:20]))


def hub_sha256(hub, name):
    """(sha256, size) of the Hub's bytes of @name on main, or None."""
    data = downloaded(hub, name)
    return None if data is None else (sha256(data), len(data))


# ---- the JavaScript client ------------------------------------------------------

def js_missing():
    """Why the JavaScript checks cannot run, or None."""
    if shutil.which("node") is None:
        return "node not installed"
    r = subprocess.run(["node", "-e", "process.exit(Number(process.versions.node.split('.')[0]) >= 18 ? 0 : 1)"],
                       capture_output=True, timeout=30)
    if r.returncode != 0:
        return "node older than 18"
    if not os.path.isdir(os.path.join(NODE_MODULES, "@huggingface", "hub")):
        return "no @huggingface/hub in %s (npm ci in tests/conformance)" % NODE_MODULES
    return None


def js(hub, *args):
    """Runs js_client.mjs with alice's write token; (exit status, stdout, stderr)."""
    env = dict(os.environ)
    for k in ("HF_ENDPOINT", "HF_HOME", "HF_TOKEN_PATH", "HUGGING_FACE_HUB_TOKEN"):
        env.pop(k, None)
    env["HF_TOKEN"] = ALICE_WRITE_TOKEN
    env["HUBFS_NODE_MODULES"] = NODE_MODULES
    cmd = ["node", JS_CLIENT, args[0], hub.url] + list(args[1:])
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=CMD_TIMEOUT, env=env)
    except subprocess.TimeoutExpired:
        return None, "", "node did not return within %d s" % CMD_TIMEOUT
    return r.returncode, r.stdout.strip(), r.stderr


def skip(what, reason):
    T.ok(True, "%s # SKIP %s" % (what, reason))


# ---- the tests ---------------------------------------------------------------------

def test_multipart(hub, tmp):
    """A file of five chunks goes up as one multipart upload and one commit."""
    name = "multipart-24m.bin"
    data = os.urandom(24 * MiB)
    src = local_file(tmp, name, data)
    with Mount(hub, token=ALICE_WRITE_TOKEN, args=["--commit-delay", "30"]) as m:
        n = len(commits(hub))
        hub.clear_log()
        rc, err = cp(src, m.p(BASE + name))
        T.ok(rc == 0, "multipart: cp of a 24 MiB file into the branch", err)
        err = fsync_path(m.p(BASE + name))
        T.ok(err is None, "multipart: fsync returns 0", err)
        log = hub.log()
        T.eq(len(commits(hub)), n + 1, "multipart: exactly one commit was added")
        T.eq(titles(hub)[0], "Add %s with hubfs" % name, "multipart: its message")
        T.eq(hub_sha256(hub, name), (sha256(data), len(data)), "multipart: the Hub's bytes have the same sha256")
        parts = part_puts(log)
        T.ok(sorted(p for _, p, status in parts if status == 200) == [1, 2, 3, 4, 5] and len(parts) == 5,
             "multipart: five part PUTs of 5 MiB chunks, each answered 200", parts)
        T.eq(len({u for u, _, _ in parts}), 1, "multipart: all of one upload")
        T.eq([r["path"] for r in log if r["method"] == "PUT" and BASIC.match(r["path"])], [],
             "multipart: no basic (single) PUT")
        T.eq([r["status"] for r in log if r["path"] == "/api/complete_multipart"], [200],
             "multipart: one completion call")
        T.eq(len(commit_posts(log)), 1, "multipart: one commit call")
        T.eq(sha256(m.read(BASE + name)), sha256(data), "multipart: the file reads back through the mount")

        # parts in parallel: every part is held 5 s by the Hub; one at a time, a
        # second part could not start within 5 s of the first
        name3 = "multipart-parallel.bin"
        data3 = os.urandom(16 * MiB)
        src3 = local_file(tmp, name3, data3)
        hub.set_faults([{"method": "PUT", "origin": "cdn", "path": "^/upload/[0-9a-f]{32}/", "action": "stall",
                         "seconds": 5}])
        rc, err = cp(src3, m.p(BASE + name3))
        box = {}
        t = threading.Thread(target=lambda: box.update(err=fsync_path(m.p(BASE + name3))), daemon=True)
        t.start()
        first = None
        most = 0
        deadline = time.time() + 60
        while time.time() < deadline:
            fired = sum(r.get("fired", 0) for r in hub.faults_state())
            now = time.time()
            if fired >= 1 and first is None:
                first = now
            if first is not None and now < first + 4.5:
                most = max(most, fired)
            if first is not None and now >= first + 4.5:
                break
            time.sleep(0.05)
        t.join(120)
        hub.clear_faults()
        T.ok(rc == 0 and most >= 2, "multipart: parts go up in parallel (%d held at once)" % most, err)
        T.ok(box.get("err", "hung") is None and hub_sha256(hub, name3) == (sha256(data3), len(data3)),
             "multipart: and land with the right bytes", box)

        # the answer to the completion is lost: the Hub has the object all the same
        name2 = "multipart-lost-completion.bin"
        data2 = os.urandom(12 * MiB)
        src2 = local_file(tmp, name2, data2)
        n = len(commits(hub))
        hub.set_faults([{"method": "POST", "path": "^/api/complete_multipart$", "action": "reset", "count": 1}])
        rc, err = cp(src2, m.p(BASE + name2))
        err = err if rc else fsync_path(m.p(BASE + name2))
        fired = [r for r in hub.faults_state() if r.get("fired")]
        hub.clear_faults()
        T.ok(err is None and fired, "multipart: a lost completion answer, yet the first fsync returns 0", err)
        T.ok(len(commits(hub)) == n + 1 and hub_sha256(hub, name2) == (sha256(data2), len(data2)),
             "multipart: one commit, the right bytes")
        m.unmount()
        check_sanitizers(m, "multipart")


FAULTS = [
    # one of each for sure, then about one upload request in five
    {"method": "PUT", "origin": "cdn", "path": "^/upload/", "action": "status", "status": 503, "count": 1},
    {"method": "PUT", "origin": "cdn", "path": "^/upload/", "action": "reset", "count": 1},
    {"method": "PUT", "origin": "cdn", "path": "^/upload/", "action": "status", "status": 500, "rate": 0.1},
    {"method": "PUT", "origin": "cdn", "path": "^/upload/", "action": "reset", "rate": 0.1},
    {"method": "POST", "path": "^/api/complete_multipart$", "action": "status", "status": 502, "count": 1},
    {"method": "POST", "path": "^/api/complete_multipart$", "action": "reset", "count": 1},
    {"method": "POST", "path": "/info/lfs/objects/batch$", "action": "status", "status": 503, "rate": 0.2},
]
FSYNC_ATTEMPTS = 4


def test_faults(hub, tmp):
    """5xx and resets on the uploads: the commit lands once, with the right bytes."""
    name = "faulty-24m.bin"
    data = os.urandom(24 * MiB)
    src = local_file(tmp, name, data)
    with Mount(hub, token=ALICE_WRITE_TOKEN, args=["--commit-delay", "30"]) as m:
        n = len(commits(hub))
        hub.clear_log()
        hub.set_faults(FAULTS)
        try:
            rc, err = cp(src, m.p(BASE + name))
            T.ok(rc == 0, "faults: cp of a 24 MiB file into the branch", err)
            # fsync is EIO when the Hub kept failing; the data stays staged and
            # the next fsync tries again (man/hubfs.1, WRITES)
            results = []
            t0 = time.monotonic()
            while len(results) < FSYNC_ATTEMPTS:
                err = fsync_path(m.p(BASE + name))
                results.append(err)
                if not (isinstance(err, OSError) and err.errno == errno.EIO):
                    break
            took = time.monotonic() - t0
        finally:
            state = hub.faults_state()
            hub.clear_faults()
        log = hub.log()
        faulted = [(r["method"], r["path"].split("?")[0][:40], r["fault"], r["status"]) for r in log if r["fault"]]
        T.diag("faults: %d fault(s) fired, fsync results %r, %.1f s" % (len(faulted), results, took))
        T.ok(results[-1] is None, "faults: fsync returns 0 (after %d attempt(s))" % len(results), results)
        T.ok(len(faulted) >= 4 and all(r["fired"] == 1 for r in state if r.get("count") == 1),
             "faults: 5xx and resets were injected on the uploads (%d)" % len(faulted), faulted)
        time.sleep(2)  # a late duplicate commit would show now
        T.eq(len(commits(hub)), n + 1, "faults: exactly one commit was added")
        T.eq(titles(hub).count("Add %s with hubfs" % name), 1, "faults: one commit of the file")
        T.eq(hub_sha256(hub, name), (sha256(data), len(data)), "faults: the Hub's bytes have the same sha256")
        T.ok(len({u for u, _, s in part_puts(log) if s == 200}) >= 1 and
             200 in [r["status"] for r in log if r["path"] == "/api/complete_multipart"],
             "faults: the upload was multipart and completed")
        T.eq(sha256(m.read(BASE + name)), sha256(data), "faults: the file reads back through the mount")
        m.unmount()
        check_sanitizers(m, "faults")


def fsync_path_raw(path):
    """fsync of @path, in the calling thread (the close of a dead mount's file is not an error)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        try:
            os.close(fd)
        except OSError:
            pass


def test_kill(hub, tmp):
    """SIGKILL in the middle of a multipart upload; a remount on the same cache commits."""
    name = "killed-16m.bin"
    data = os.urandom(16 * MiB)
    src = local_file(tmp, name, data)
    cache = os.path.join(tmp, "kill-cache")
    n = len(commits(hub))
    records = hub.log()
    seq = records[-1]["seq"] if records else 0
    hub.set_faults([{"method": "PUT", "origin": "cdn", "path": LATER_PARTS, "action": "stall", "seconds": 20}])
    box = {}
    try:
        with Mount(hub, token=ALICE_WRITE_TOKEN, cache_dir=cache, args=["--commit-delay", "1"]) as m:
            rc, err = cp(src, m.p(BASE + name))
            T.ok(rc == 0, "kill: cp of a 16 MiB file into the branch", err)

            def sync():  # fsync waits for the commit; it must fail, not hang, when the daemon dies
                try:
                    fsync_path_raw(m.p(BASE + name))
                    box["err"] = None
                except OSError as e:
                    box["err"] = e
            th = threading.Thread(target=sync, daemon=True)
            th.start()
            caught = wait_for(lambda: any(p == 1 and s == 200 for _, p, s in part_puts(hub.log(since=seq))), 60)
            time.sleep(0.5)  # part 2 is sent, and stalls
            parts = part_puts(hub.log(since=seq))
            os.kill(m.proc.pid, signal.SIGKILL)
            T.ok(caught and [p for _, p, _ in parts] == [1], "kill: killed in the middle of the upload (part 1 "
                 "stored, part 2 stalled)", parts)
            th.join(30)
            e = box.get("err", "hung")
            T.ok(isinstance(e, OSError) and e.errno in (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO),
                 "kill: the fsync pending when the daemon died fails (%r)" % (e,))
            status = m.unmount()
            T.eq(status, -signal.SIGKILL, "kill: the daemon died of SIGKILL")
            T.ok(not mounted(m.path), "kill: the dead mount is unmounted")
            check_sanitizers(m, "kill")
    finally:
        hub.clear_faults()
    T.eq(len(commits(hub)), n, "kill: the killed daemon made no commit")
    rc, out, line = hubfs_status(cache)
    T.ok(rc == 0 and "1 change" in line and not in_state(line, "conflict"),
         "kill: hubfs status shows the change staged after the crash", out)
    with Mount(hub, token=ALICE_WRITE_TOKEN, cache_dir=cache, args=["--commit-delay", "1"]) as m:
        T.ok(wait_for(lambda: len(commits(hub)) > n, 90), "kill: the remount on the same cache commits the file")
        time.sleep(2)
        T.eq(len(commits(hub)), n + 1, "kill: exactly one commit was added")
        T.eq(hub_sha256(hub, name), (sha256(data), len(data)), "kill: the Hub's bytes have the same sha256")
        T.eq(sha256(m.read(BASE + name)), sha256(data), "kill: the file reads back through the mount")
        m.unmount()
        check_sanitizers(m, "kill, remount")
    rc, out, line = hubfs_status(cache)
    T.ok(rc == 0 and "nothing pending" in out, "kill: hubfs status shows nothing pending afterwards", out)


def test_js_download(hub, tmp, missing):
    """Files cp'ed through the mount download byte for byte with the JS client."""
    files = {"js-small.txt": b"a small file for the JavaScript client\n" * 20, "js-64m.bin": os.urandom(64 * MiB)}
    with Mount(hub, token=ALICE_WRITE_TOKEN, args=["--commit-delay", "30"]) as m:
        n = len(commits(hub))
        for name, data in files.items():
            rc, err = cp(local_file(tmp, name, data), m.p(BASE + name))
            T.ok(rc == 0, "js download: cp of %s (%d bytes) into the branch" % (name, len(data)), err)
        err = fsync_path(m.p(BASE))
        T.ok(err is None, "js download: fsync of the branch directory returns 0", err)
        T.eq(len(commits(hub)), n + 1, "js download: the two files are one commit")
        m.unmount()
        check_sanitizers(m, "js download")
    head = commits(hub)[0]["id"]
    for name, data in files.items():
        for rev in ("main", head):
            what = "js download: @huggingface/hub downloadFile of %s at %s has the same sha256" % (
                name, "main" if rev == "main" else "the commit id")
            if missing:
                skip(what, missing)
                continue
            rc, out, err = js(hub, "download", REPO, name, rev)
            T.eq(out, "%s %d" % (sha256(data), len(data)), what)
            if rc != 0:
                T.diag(err)


JS_CONFLICT_CHECKS = (
    "js conflict: @huggingface/hub uploadFile commits the path hubfs has staged",
    "js conflict: fsync through the mount is EIO",
    "js conflict: the Hub keeps the JS content",
    "js conflict: hubfs made no commit",
    "js conflict: the mount shows the staged content",
    "js conflict: hubfs status reports the conflict",
    "js conflict: the daemon logs it",
    "js conflict: no sanitizer report from the daemon",
    "js rebase: @huggingface/hub uploadFile commits another path",
    "js rebase: fsync returns 0, the commit goes on top of the JS commit",
    "js rebase: the Hub has both files",
    "js rebase: two commits were added, the JS one and hubfs's",
    "js rebase: no sanitizer report from the daemon",
)


def test_js_conflict(hub, missing):
    """A JS commit beside staged changes: to the same path a conflict, to another path a rebase."""
    c = JS_CONFLICT_CHECKS
    if missing:
        for what in c:
            skip(what, missing)
        return
    tmp = tempfile.mkdtemp(prefix="hubfs-js-")
    try:
        theirs = b"theirs, from the JavaScript client\n"
        ours = b"ours, staged by hubfs\n"
        with Mount(hub, token=ALICE_WRITE_TOKEN, args=["--commit-delay", "60"]) as m:
            with open(m.p(BASE + "js-shared.txt"), "wb") as f:
                f.write(ours)
            rc, out, err = js(hub, "upload", REPO, "js-shared.txt", local_file(tmp, "theirs", theirs),
                              "JS change of js-shared.txt")
            T.ok(rc == 0 and re.match(r"^[0-9a-f]{40}$", out), c[0], err)
            n = len(commits(hub))
            err = fsync_path(m.p(BASE + "js-shared.txt"))
            T.ok(isinstance(err, OSError) and err.errno == errno.EIO, c[1], err)
            T.eq(downloaded(hub, "js-shared.txt"), theirs, c[2])
            T.eq(len(commits(hub)), n, c[3])
            T.eq(m.read(BASE + "js-shared.txt"), ours, c[4])
            rc, out, line = hubfs_status(m.cache_dir)
            T.ok(rc == 0 and "1 change" in line and in_state(line, "conflict") and "last error: conflict" in out,
                 c[5], out)
            m.unmount()
            T.ok("conflict" in m.stderr, c[6], m.stderr[-2000:])
            T.ok(not m.sanitizer_report(), c[7], "\n".join(m.sanitizer_report()[:20]))

        mine = b"mine, staged by hubfs\n"
        elsewhere = b"elsewhere, from the JavaScript client\n"
        with Mount(hub, token=ALICE_WRITE_TOKEN, args=["--commit-delay", "60"]) as m:
            with open(m.p(BASE + "js-mine.txt"), "wb") as f:
                f.write(mine)
            n = len(commits(hub))
            rc, out, err = js(hub, "upload", REPO, "js-elsewhere.txt", local_file(tmp, "elsewhere", elsewhere),
                              "JS change of another path")
            T.ok(rc == 0 and re.match(r"^[0-9a-f]{40}$", out), c[8], err)
            err = fsync_path(m.p(BASE + "js-mine.txt"))
            T.ok(err is None, c[9], err)
            T.ok(downloaded(hub, "js-mine.txt") == mine and downloaded(hub, "js-elsewhere.txt") == elsewhere, c[10])
            T.ok(len(commits(hub)) == n + 2 and
                 titles(hub)[:2] == ["Add js-mine.txt with hubfs", "JS change of another path"], c[11],
                 titles(hub)[:3])
            m.unmount()
            T.ok(not m.sanitizer_report(), c[12], "\n".join(m.sanitizer_report()[:20]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    if not have_fuse():
        print("1..0 # SKIP no /dev/fuse or fusermount3")
        sys.exit(0)
    missing = js_missing()
    if missing:
        T.diag("the JavaScript checks are skipped: %s" % missing)
    tmp = tempfile.mkdtemp(prefix="hubfs-faults-")
    try:
        with LocalHub(seed=True, lfs_chunk_size=CHUNK) as hub:
            for test, args in ((test_multipart, (hub, tmp)), (test_faults, (hub, tmp)), (test_kill, (hub, tmp)),
                               (test_js_download, (hub, tmp, missing)), (test_js_conflict, (hub, missing))):
                t0 = time.monotonic()
                try:
                    test(*args)
                except Exception as e:  # noqa: B902 - a crash of a test is a failure, the rest go on
                    T.ok(False, "%s raised %r" % (test.__name__, e))
                T.diag("%s: %.1f s" % (test.__name__, time.monotonic() - t0))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    T.done()


if __name__ == "__main__":
    main()
