#!/usr/bin/env python3
"""hubfs status and hubfs umount against a mount of the local Hub (TAP).

status MOUNTPOINT finds the mount's own cache (a non-default --cache-dir)
through the xattrs of its root and lists the pending changes with their
states and bytes; status of a directory that is not a hubfs mount, and of a
mount whose daemon died, fails and says so.  umount waits while the daemon
commits what is pending, then exits 0 with the commit on the Hub; with a
read-only token the commit fails and umount exits 3, naming what stays
staged.  Upload progress: hub_lfs_upload() reports the bytes sent (basic and
multipart, monotonic, ending at the size), and during an upload held up by
the Hub, status shows 0 < sent < total (this last check needs the commit
worker to record the progress: cache_stage_set_sent() from src/stage.c).
"""

import os
import re
import signal
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mountlib import BUILDDIR, Mount, Tap, have_fuse, hubfs_binary, mounted, sha256  # noqa: E402
from harness import ALICE_READ_TOKEN, ALICE_WRITE_TOKEN, LocalHub  # noqa: E402

T = Tap()
MiB = 1 << 20
REPO = "alice/tiny-model"
TOOL = os.path.join(BUILDDIR, "tests", "tools", "hub_commit_tool")
UMOUNT_TIMEOUT = 90
UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


def hubfs(*args, home=None, timeout=30):
    """Runs the hubfs command line; returns (status, stdout, stderr)."""
    env = dict(os.environ)
    for k in ("HF_TOKEN", "HF_ENDPOINT", "XDG_CACHE_HOME"):
        env.pop(k, None)
    env["HOME"] = home or tempfile.gettempdir()
    r = subprocess.run([hubfs_binary()] + list(args), capture_output=True, text=True, env=env,
                       stdin=subprocess.DEVNULL, timeout=timeout)
    return r.returncode, r.stdout, r.stderr


def commits(hub, repo=REPO):
    status, body, _ = hub.json("GET", "/api/models/%s/commits/main" % repo, ALICE_WRITE_TOKEN)
    assert status == 200, status
    return body


def downloaded(hub, path, repo=REPO):
    status, headers, body = hub.request("GET", "/%s/resolve/main/%s" % (repo, path), ALICE_WRITE_TOKEN)
    if status == 302:
        status, headers, body = hub.request("GET", None, url=headers["location"], timeout=120)
    return body if status == 200 else None


def write_file(path, data):
    """Writes and closes @path, no fsync: the change is journaled, its commit waits."""
    with open(path, "wb") as f:
        f.write(data)


def size_of(text):
    """Bytes of "12.0 MiB"."""
    number, unit = text.split()
    return float(number) * UNITS[unit]


def branch_line(out, repo=REPO, branch="main"):
    """The line of @repo@@branch in status's output, or None."""
    for line in out.splitlines():
        if line.startswith("%s@%s: " % (repo, branch)):
            return line
    return None


def uploaded(line):
    """(sent, total) in bytes from a status line, or None."""
    m = re.search(r"([\d.]+ [KMGT]?i?B) of ([\d.]+ [KMGT]?i?B) uploaded", line or "")
    return (size_of(m.group(1)), size_of(m.group(2))) if m else None


def check_sanitizers(m, what):
    report = m.sanitizer_report()
    T.ok(not report, "%s: no sanitizer report from the daemon" % what, "\n".join(report[:20]))


def test_status(hub):
    cache = tempfile.mkdtemp(prefix="hubfs-status-cache-")
    data = os.urandom(3 * MiB)
    with Mount(hub, token=ALICE_WRITE_TOKEN, cache_dir=cache, args=["--commit-delay", "60"]) as m:
        write_file(m.p("%s/main/status.bin" % REPO), data)
        rc, out, err = hubfs("status", m.path)
        T.eq(rc, 0, "status MOUNTPOINT exits 0")
        T.ok(out.startswith("%s: hubfs mount (pid %d), cache %s\n" % (m.path, m.proc.pid, os.path.realpath(cache))),
             "it names the mount's cache (a non-default --cache-dir) and the daemon's pid", out + err)
        line = branch_line(out)
        T.ok(line is not None and "1 change (1 pending)" in line, "it lists the pending change", out)
        T.eq(uploaded(line), (0, 3 * MiB), "with its bytes: 0 B of 3.0 MiB uploaded")
        rc, out2, _ = hubfs("status", "--cache-dir", cache)
        T.ok(rc == 0 and branch_line(out2) == line, "status --cache-dir of that cache shows the same", out2)
        rc, out3, _ = hubfs("status", home=m._tmp)
        T.ok(rc == 0 and "nothing pending" in out3, "the default cache is another one, with nothing pending", out3)

        rc, out, err = hubfs("status", os.path.dirname(m.path))
        T.eq(rc, 1, "status of a directory that is not a hubfs mount exits 1")
        T.ok("is not a hubfs mount" in err and out == "", "and says so", out + err)
        rc, out, err = hubfs("status", m.p(REPO))
        T.ok(rc == 1 and "is not a hubfs mount" in err, "status of a directory inside the mount: not a mount root", err)
        rc, out, err = hubfs("status", m.path, "--cache-dir", cache)
        T.eq(rc, 2, "a MOUNTPOINT and --cache-dir together are a usage error")
        m.unmount()
        check_sanitizers(m, "status")
    subprocess.run(["rm", "-rf", cache])


def test_dead_mount(hub):
    with Mount(hub, token=ALICE_WRITE_TOKEN) as m:
        m.proc.send_signal(signal.SIGKILL)
        m.proc.wait(10)
        rc, out, err = hubfs("status", m.path)
        T.eq(rc, 1, "status of a mount whose daemon died exits 1")
        T.ok("daemon is gone" in err and "hubfs umount" in err, "and says to unmount it", err)
        rc, out, err = hubfs("umount", m.path)
        T.eq(rc, 0, "umount of a dead mount unmounts it as before (exit 0)")
        T.ok(not mounted(m.path), "it is unmounted", err)


def test_umount_waits(hub):
    with Mount(hub, token=ALICE_WRITE_TOKEN, args=["--commit-delay", "60"]) as m:
        n = len(commits(hub))
        data = b"committed while hubfs umount waits\n"
        write_file(m.p("%s/main/at-umount.txt" % REPO), data)
        T.eq(len(commits(hub)), n, "a change is pending, its commit 60 s away")
        rc, out, err = hubfs("umount", m.path, timeout=UMOUNT_TIMEOUT)
        T.eq(rc, 0, "umount exits 0: every change committed")
        T.ok(m.proc.poll() is not None, "the daemon had exited when umount returned")
        T.eq(len(commits(hub)), n + 1, "the commit is on the Hub when umount returns")
        T.eq(downloaded(hub, "at-umount.txt"), data, "with the file")
        T.ok("1 change to commit" in err and "every change is on the Hub" in err,
             "umount said what it waited for, and that nothing is left", err)
        T.ok(len(err.splitlines()) <= 3, "without a progress line per second (stderr is not a terminal)", err)
        T.eq(m.unmount(), 0, "the daemon exited 0")
        check_sanitizers(m, "umount waits")

    with Mount(hub, token=ALICE_WRITE_TOKEN) as m:
        rc, out, err = hubfs("umount", m.path, timeout=UMOUNT_TIMEOUT)
        T.ok(rc == 0 and err == "", "umount with nothing pending exits 0, silently", err)
        m.unmount()


def test_umount_read_token(hub):
    cache = tempfile.mkdtemp(prefix="hubfs-status-ro-")
    data = os.urandom(2 * MiB)
    with Mount(hub, token=ALICE_READ_TOKEN, cache_dir=cache, args=["--commit-delay", "60"]) as m:
        n = len(commits(hub))
        write_file(m.p("%s/main/readonly.bin" % REPO), data)
        rc, out, err = hubfs("umount", m.path, timeout=UMOUNT_TIMEOUT)
        T.eq(rc, 3, "umount with a read-only token exits 3: unmounted, changes staged")
        T.ok(not mounted(m.path) and m.proc.poll() is not None, "the mount is gone and the daemon exited")
        T.ok("1 change of %s@main is still staged (failed: commit failed: Permission denied)" % REPO in err,
             "umount names what stays staged and why", err)
        T.ok("the next mount on it commits them" in err and cache in err, "and where it stays", err)
        T.eq(len(commits(hub)), n, "no commit was made")
        m.unmount()
        check_sanitizers(m, "read-only token")
    rc, out, err = hubfs("status", "--cache-dir", cache)
    line = branch_line(out)
    T.ok(rc == 0 and line is not None and "1 change (1 failed)" in line, "status shows the failed change", out + err)
    T.ok(uploaded(line) is not None and uploaded(line)[1] == 2 * MiB, "with its bytes uploaded of 2.0 MiB", line)
    T.ok("    last error: commit failed: Permission denied" in out, "and the error", out)
    with Mount(hub, token=ALICE_WRITE_TOKEN, cache_dir=cache, args=["--commit-delay", "60"]) as m:
        rc, out, err = hubfs("umount", m.path, timeout=UMOUNT_TIMEOUT)
        T.eq(rc, 0, "a mount with a write token on that cache: umount commits the change, exits 0")
        T.ok(downloaded(hub, "readonly.bin") == data, "the Hub has the file")
        m.unmount()
        check_sanitizers(m, "resume at umount")
    subprocess.run(["rm", "-rf", cache])


def tool_upload(hub, path, data, tmp):
    """Commits @data as @path with hub_commit_tool, its progress reported; returns
    (calls, last, size, order) of the progress line, or None."""
    src = os.path.join(tmp, "upload.bin")
    with open(src, "wb") as f:
        f.write(data)
    env = dict(os.environ, HUB_COMMIT_TOOL_PROGRESS="1")
    r = subprocess.run([TOOL, hub.url, ALICE_WRITE_TOKEN, "model/" + REPO, "main", "-", "Upload",
                        "add:%s=%s" % (path, src)], capture_output=True, text=True, env=env, timeout=300)
    for line in r.stdout.splitlines():
        w = line.split()
        if len(w) == 6 and w[0] == "progress" and w[1] == path:
            return int(w[2]), int(w[3]), int(w[4]), w[5]
    T.diag(r.stdout + r.stderr)
    return None


def test_hub_progress():
    tmp = tempfile.mkdtemp(prefix="hubfs-status-tool-")
    data = os.urandom(12 * MiB)
    try:
        with LocalHub(seed=True) as hub:
            got = tool_upload(hub, "basic.bin", data, tmp)
            T.ok(got is not None and got[0] > 1 and got[1:] == (len(data), len(data), "monotonic"),
                 "a basic LFS upload reports its progress, monotonic, up to its size %r" % (got,))
            got = tool_upload(hub, "again.bin", data, tmp)
            T.ok(got is not None and got[1:] == (len(data), len(data), "monotonic"),
                 "an object the Hub has: the size is reported once the upload is skipped %r" % (got,))
        with LocalHub(seed=True, lfs_chunk_size=4 * MiB) as hub:
            got = tool_upload(hub, "multi.bin", data + b"x", tmp)
            T.ok(got is not None and got[0] > 3 and got[1:] == (len(data) + 1, len(data) + 1, "monotonic"),
                 "a multipart upload (4 parts) sums its parts, monotonic, up to its size %r" % (got,))
    finally:
        subprocess.run(["rm", "-rf", tmp])


def test_progress(hub):
    """Needs src/stage.c to record the progress (cache_stage_set_sent())."""
    size = 48 * MiB
    data = os.urandom(size)
    with Mount(hub, token=ALICE_WRITE_TOKEN, args=["--commit-delay", "1"]) as m:
        # the PUT's head is read, then the Hub waits before reading its body:
        # what fits in the socket buffers is sent, the rest waits
        hub.set_faults([{"method": "PUT", "origin": "cdn", "path": "^/upload/", "action": "stall",
                         "seconds": 12, "count": 1}])
        write_file(m.p("%s/main/slow.bin" % REPO), data)
        seen, line = None, None
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            rc, out, err = hubfs("status", m.path)
            line = branch_line(out)
            got = uploaded(line)
            if got and 0 < got[0] < got[1] and "uploading" in line:
                seen = line
                break
            time.sleep(0.25)
        T.ok(seen is not None, "during a held-up upload, status shows 0 < sent < total and uploading "
             "(needs the progress wiring of src/stage.c)", line)
        if seen:
            T.diag(seen)
        T.ok(seen is None or uploaded(seen)[1] == size, "of the file's 48.0 MiB", seen)
        hub.clear_faults()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and downloaded(hub, "slow.bin") is None:
            time.sleep(0.5)
        got = downloaded(hub, "slow.bin")
        T.ok(got is not None and sha256(got) == sha256(data), "then the upload goes on and the commit lands")
        rc, out, err = hubfs("status", m.path)
        T.ok("nothing pending" in out, "and status shows nothing pending", out)
        m.unmount()
        check_sanitizers(m, "progress")


def main():
    if not have_fuse():
        print("1..0 # SKIP no /dev/fuse or fusermount3")
        sys.exit(0)
    test_hub_progress()
    with LocalHub(seed=True) as hub:
        test_status(hub)
        test_dead_mount(hub)
        test_umount_waits(hub)
        test_umount_read_token(hub)
        test_progress(hub)
    T.done()


if __name__ == "__main__":
    main()
