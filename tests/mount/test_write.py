#!/usr/bin/env python3
"""Integration tests of writes through the mount against the local Hub (TAP).

Files written into a branch view become commits: fsync returns once the commit
is on the Hub, closed files of one branch are batched into one commit after the
quiet period, reads see the staged bytes before the commit, tags and commit
views stay read-only, a token without write rights keeps the data staged until
a later mount with a write token commits it, and a concurrent change to the
same path on the Hub is never overwritten.
"""

import errno
import os
import sys
import tempfile
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mountlib import Mount, Tap, data_requests, have_fuse, sha256, with_timeout  # noqa: E402
from harness import ALICE_READ_TOKEN, ALICE_WRITE_TOKEN, LocalHub  # noqa: E402
from test_read import commit_files, errno_of, hub_commit  # noqa: E402

T = Tap()
MiB = 1 << 20
REPO = "alice/tiny-model"
FSYNC_TIMEOUT = 120


def commits(hub, repo=REPO):
    status, body, _ = hub.json("GET", "/api/models/%s/commits/main" % repo, ALICE_WRITE_TOKEN)
    assert status == 200, status
    return body


def titles(hub, repo=REPO):
    return [c["title"] for c in commits(hub, repo)]


def downloaded(hub, path, repo=REPO):
    """The Hub's bytes of @path on main (following the CDN redirect), or None."""
    status, headers, body = hub.request("GET", "/%s/resolve/main/%s" % (repo, path), ALICE_WRITE_TOKEN)
    if status == 302:
        status, headers, body = hub.request("GET", None, url=headers["location"], timeout=120)
    return body if status == 200 else None


def write_file(path, data, fsync=True, mode="wb"):
    def run():
        with open(path, mode) as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
    _, err = with_timeout(run, FSYNC_TIMEOUT)
    return err


def fsync_path(path, flags=os.O_RDONLY):
    def run():
        fd = os.open(path, flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    _, err = with_timeout(run, FSYNC_TIMEOUT)
    return err


def wait_for(cond, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.2)
    return cond()


def check_sanitizers(m, what):
    report = m.sanitizer_report()
    T.ok(not report, "%s: no sanitizer report from the daemon" % what, "\n".join(report[:20]))


def test_copy(hub, m):
    small = b"a small file written through hubfs\n"
    big = os.urandom(20 * MiB)
    for name, data in (("small.txt", small), ("weights-20m.bin", big)):
        n = len(commits(hub))
        err = write_file(m.p("%s/main/%s" % (REPO, name)), data)
        T.ok(err is None, "cp of %s with fsync returns 0" % name, err)
        T.eq(len(commits(hub)), n + 1, "%s: fsync returned once the commit was on the Hub" % name)
        T.eq(titles(hub)[0], "Upload %s with hubfs" % name, "%s: the commit message" % name)
        got = downloaded(hub, name)
        T.ok(got is not None and sha256(got) == sha256(data), "%s: the Hub's bytes have the same sha256" % name)
    hub.clear_log()
    T.eq(sha256(m.read("%s/main/weights-20m.bin" % REPO)), sha256(big), "the committed file reads back through the mount")
    T.eq(data_requests(hub.log()), [], "from the cache: the staged bytes became a blob, nothing is downloaded")


def test_batch(hub, m):
    n = len(commits(hub))
    files = {"batch-a.txt": b"file a\n", "batch-b.txt": b"file b\n" * 100, "batch-c.bin": os.urandom(3 * MiB)}
    for name, data in files.items():
        err = write_file(m.p("%s/main/%s" % (REPO, name)), data, fsync=False)
        T.ok(err is None, "%s is written and closed" % name, err)
    # read your writes (before or after the commit, the view shows them)
    listing = os.listdir(m.p("%s/main" % REPO))
    T.ok(all(name in listing for name in files), "the branch view lists the new files", listing)
    T.ok(all(m.read("%s/main/%s" % (REPO, name)) == data for name, data in files.items()),
         "reads see the new bytes")
    T.ok(all(os.stat(m.p("%s/main/%s" % (REPO, name))).st_size == len(data) for name, data in files.items()),
         "stat shows the new sizes")
    T.ok(wait_for(lambda: len(commits(hub)) > n, 30), "the batch is committed after the quiet period")
    time.sleep(2)
    T.eq(len(commits(hub)), n + 1, "as ONE commit")
    T.eq(titles(hub)[0], "Update 3 files with hubfs", "its message counts the files")
    T.ok(all(downloaded(hub, name) == data for name, data in files.items()), "the Hub has the three files' bytes")


def test_modify(hub, m):
    base = "%s/main/" % REPO
    cfg = downloaded(hub, "config.json")
    readme = downloaded(hub, "README.md")
    tok = downloaded(hub, "tokenizer.json")
    small = downloaded(hub, "small.txt")

    new_cfg = b'{"overwritten": true}\n'
    T.ok(write_file(m.p(base + "config.json"), new_cfg) is None, "overwrite with O_TRUNC and fsync")
    T.eq(downloaded(hub, "config.json"), new_cfg, "the Hub has the overwritten content")
    T.ok(cfg != new_cfg, "and it differs from before")

    T.ok(write_file(m.p(base + "README.md"), b"\nappended line\n", mode="ab") is None, "append and fsync")
    T.eq(downloaded(hub, "README.md"), readme + b"\nappended line\n", "the Hub has the appended content")

    off = len(tok) // 3

    def patch():
        with open(m.p(base + "tokenizer.json"), "r+b") as f:
            f.seek(off)
            f.write(b"PATCHED")
            f.flush()
            os.fsync(f.fileno())
    _, err = with_timeout(patch, FSYNC_TIMEOUT)
    T.ok(err is None, "a write at an offset into an existing file, fsync", err)
    T.eq(downloaded(hub, "tokenizer.json"), tok[:off] + b"PATCHED" + tok[off + 7:], "the Hub has the patched content")

    os.truncate(m.p(base + "small.txt"), 5)
    T.eq(os.stat(m.p(base + "small.txt")).st_size, 5, "truncate shows the new size at once")
    T.ok(fsync_path(m.p(base + "small.txt")) is None, "fsync after truncate")
    T.eq(downloaded(hub, "small.txt"), small[:5], "the Hub has the truncated content")

    def trunc_fd():
        with open(m.p(base + "batch-b.txt"), "r+b") as f:
            f.truncate(3)
            os.fsync(f.fileno())
    _, err = with_timeout(trunc_fd, FSYNC_TIMEOUT)
    T.ok(err is None and downloaded(hub, "batch-b.txt") == b"fil", "ftruncate and fsync", err)

    def twice():
        with open(m.p(base + "twice.txt"), "wb") as f:
            f.write(b"one\n")
            f.flush()
            os.fsync(f.fileno())
            f.write(b"two\n")
            f.flush()
            os.fsync(f.fileno())
    n = len(commits(hub))
    _, err = with_timeout(twice, FSYNC_TIMEOUT)
    T.ok(err is None, "write, fsync, write again, fsync", err)
    T.ok(downloaded(hub, "twice.txt") == b"one\ntwo\n" and len(commits(hub)) == n + 2,
         "two commits, the second on top of the first")
    T.eq(os.stat(m.p(base + "twice.txt")).st_size, 8, "stat after the commits")

    T.eq(errno_of(os.chmod, m.p(base + "small.txt"), 0o777), errno.EPERM, "chmod is EPERM")
    os.utime(m.p(base + "small.txt"))
    T.ok(True, "utimens is accepted")


def test_unlink(hub, m):
    base = "%s/main/" % REPO
    os.unlink(m.p(base + "batch-a.txt"))
    T.ok(not os.path.exists(m.p(base + "batch-a.txt")), "an unlinked file is gone from the view at once")
    T.ok("batch-a.txt" not in os.listdir(m.p(base)), "and from the listing")
    T.eq(errno_of(os.unlink, m.p(base + "no-such-file")), errno.ENOENT, "unlink of a missing file is ENOENT")
    T.ok(fsync_path(m.p(base)) is None, "fsync of the branch directory commits")
    T.ok(downloaded(hub, "batch-a.txt") is None, "the file is gone on the Hub")
    T.eq(titles(hub)[0], "Delete batch-a.txt with hubfs", "in a commit of its own")
    T.ok(write_file(m.p(base + "short-lived.txt"), b"gone soon\n", fsync=False) is None, "a new file is closed")
    os.unlink(m.p(base + "short-lived.txt"))
    T.ok(fsync_path(m.p(base)) is None, "and unlinked at once: fsync of the directory succeeds")
    T.ok(downloaded(hub, "short-lived.txt") is None and not os.path.exists(m.p(base + "short-lived.txt")),
         "the file is neither on the Hub nor in the view")


def test_readonly_views(hub, m):
    main = hub_commit(hub, "model", REPO, "main")
    for view in ("%s/v1.0" % REPO, "%s@v1.0" % REPO, "%s@%s" % (REPO, main), "%s/refs/pr/1" % REPO):
        T.eq(errno_of(os.open, m.p(view + "/new.txt"), os.O_WRONLY | os.O_CREAT, 0o644), errno.EROFS,
             "create in %s is EROFS" % view)
        T.eq(errno_of(os.open, m.p(view + "/config.json"), os.O_WRONLY), errno.EROFS,
             "open for writing in %s is EROFS" % view)
        T.eq(errno_of(os.unlink, m.p(view + "/config.json")), errno.EROFS, "unlink in %s is EROFS" % view)
    T.eq(errno_of(os.mkdir, m.p("%s/main/newdir" % REPO)), errno.EROFS, "mkdir in a branch is not done yet: EROFS")


def test_read_token(hub):
    cache = tempfile.mkdtemp(prefix="hubfs-write-cache-")
    data = b"written with a read-only token\n"
    with Mount(hub, token=ALICE_READ_TOKEN, cache_dir=cache, args=["--commit-delay", "60"]) as m:
        path = m.p("%s/main/readonly.txt" % REPO)
        err = write_file(path, data)
        T.ok(isinstance(err, OSError) and err.errno == errno.EACCES, "fsync with a read-only token is EACCES (%r)" % err)
        T.eq(m.read("%s/main/readonly.txt" % REPO), data, "the data stays, readable through the mount")
        T.ok(downloaded(hub, "readonly.txt") is None, "and the Hub does not have it")
        m.unmount()
        check_sanitizers(m, "read-only token")
    with Mount(hub, token=ALICE_WRITE_TOKEN, cache_dir=cache, args=["--commit-delay", "1"]) as m:
        T.ok(wait_for(lambda: downloaded(hub, "readonly.txt") == data, 30),
             "a mount with a write token on the same cache commits it (resume)")
        T.eq(m.read("%s/main/readonly.txt" % REPO), data, "and the view shows it")
        m.unmount()
        check_sanitizers(m, "resume")
    os.system("rm -rf '%s'" % cache)


def test_conflict(hub):
    with Mount(hub, token=ALICE_WRITE_TOKEN, args=["--commit-delay", "60"]) as m:
        base = "%s/main/" % REPO
        T.ok(write_file(m.p(base + "shared.txt"), b"ours\n", fsync=False) is None, "a file is staged")
        T.ok(write_file(m.p(base + "other.txt"), b"other, ours\n", fsync=False) is None, "another file is staged")
        commit_files(hub, REPO, {"shared.txt": b"theirs\n"}, summary="someone else's change")
        n = len(commits(hub))
        err = fsync_path(m.p(base + "shared.txt"))
        T.ok(isinstance(err, OSError) and err.errno == errno.EIO, "fsync fails when the same path changed on the Hub (%r)" % err)
        T.eq(downloaded(hub, "shared.txt"), b"theirs\n", "hubfs did not overwrite the other change")
        T.eq(len(commits(hub)), n, "and made no commit")
        T.eq(m.read(base + "shared.txt"), b"ours\n", "our data stays staged")
        m.unmount()
        T.ok("conflict" in m.stderr, "the conflict is logged", m.stderr[-2000:])
        check_sanitizers(m, "conflict")

    with Mount(hub, token=ALICE_WRITE_TOKEN, args=["--commit-delay", "60"]) as m:
        base = "%s/main/" % REPO
        # a fresh cache: only this mount's change
        T.ok(write_file(m.p(base + "mine.txt"), b"mine\n", fsync=False) is None, "a file is staged")
        commit_files(hub, REPO, {"elsewhere.txt": b"elsewhere\n"}, summary="a change to another path")
        err = fsync_path(m.p(base + "mine.txt"))
        T.ok(err is None, "a change to another path on the Hub: the commit goes on top of it", err)
        T.ok(downloaded(hub, "mine.txt") == b"mine\n" and downloaded(hub, "elsewhere.txt") == b"elsewhere\n",
             "the Hub has both changes")
        m.unmount()
        check_sanitizers(m, "rebase")


def test_drain(hub):
    with Mount(hub, token=ALICE_WRITE_TOKEN, args=["--commit-delay", "60"]) as m:
        n = len(commits(hub))
        T.ok(write_file(m.p("%s/main/at-unmount.txt" % REPO), b"committed by the unmount\n", fsync=False) is None,
             "a file is closed, its commit 60 s away")
        T.eq(len(commits(hub)), n, "not committed yet")
        status = m.unmount()
        T.ok(status == 0, "unmount waits for the pending commit and exits 0")
        T.eq(downloaded(hub, "at-unmount.txt"), b"committed by the unmount\n", "the Hub has the file after the unmount")
        check_sanitizers(m, "drain")


def main():
    if not have_fuse():
        print("1..0 # SKIP no /dev/fuse or fusermount3")
        sys.exit(0)
    with LocalHub(seed=True) as hub:
        with Mount(hub, token=ALICE_WRITE_TOKEN, args=["--commit-delay", "1"]) as m:
            test_copy(hub, m)
            test_batch(hub, m)
            test_modify(hub, m)
            test_unlink(hub, m)
            test_readonly_views(hub, m)
            status = m.unmount()
            T.ok(status == 0, "the daemon exits 0 after unmount", m.stderr[-2000:])
            check_sanitizers(m, "writes")
        test_drain(hub)
        test_read_token(hub)
        test_conflict(hub)
    T.done()


if __name__ == "__main__":
    main()
