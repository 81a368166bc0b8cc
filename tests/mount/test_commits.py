#!/usr/bin/env python3
"""What decides a commit, tested from the user's side against the local Hub (TAP).

Issue 8: a colleague's commit is never replaced (every change is checked with
its own base), a single writer never conflicts with itself, `rm -r` of a nested
tree is one commit the Hub accepts, rewriting the same bytes makes no commit, a
change the Hub refuses or whose staged file is lost never holds back the rest
of its branch, editor scratch and atomic-save temp files are never committed,
concurrent fsyncs share a commit, and the daemon logs one line per commit.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mountlib import Mount, Tap, have_fuse, with_timeout  # noqa: E402
from harness import ALICE_WRITE_TOKEN, LocalHub  # noqa: E402
from test_read import commit_files  # noqa: E402
from test_write import commits, downloaded, fsync_path, hub_tree, titles, write_file  # noqa: E402
import test_write  # noqa: E402
from test_write_faults import hubfs_status  # noqa: E402
from test_status import hubfs  # noqa: E402

T = Tap()
test_write.T = T
REPO = "alice/tiny-model"
BASE = REPO + "/main/"


def check_sanitizers(m, what):
    report = m.sanitizer_report()
    T.ok(not report, "%s: no sanitizer report from the daemon" % what, "\n".join(report[:20]))


def run(cmd, cwd=None, timeout=120):
    def go():
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    r, err = with_timeout(go, timeout + 10)
    if err:
        return None
    return r


def test_own_base(hub):
    """Item 1: a writer opened before a colleague's commit, closed after another row was journaled."""
    commit_files(hub, REPO, {"held.txt": b"v0\n"}, summary="held.txt v0")
    with Mount(hub, token=ALICE_WRITE_TOKEN, args=["--commit-delay", "60", "--ttl", "1"]) as m:
        f = open(m.p(BASE + "held.txt"), "r+b")
        f.write(b"ours")
        f.flush()
        commit_files(hub, REPO, {"held.txt": b"carol's change\n"}, summary="carol changes held.txt")
        time.sleep(1.6)  # the mount's view moves to carol's commit
        T.ok(write_file(m.p(BASE + "later.txt"), b"journaled after the head moved\n", fsync=False) is None,
             "own base: another file is journaled after the head moved")
        f.close()
        n = len(commits(hub))
        err = fsync_path(m.p(BASE + "held.txt"))
        T.ok(err is not None and getattr(err, "errno", 0) == 5, "own base: fsync of the held file is EIO (%r)" % err)
        T.eq(downloaded(hub, "held.txt"), b"carol's change\n", "own base: carol's commit is not replaced")
        T.eq(downloaded(hub, "later.txt"), b"journaled after the head moved\n",
             "own base: the other file is committed")
        T.eq(len(commits(hub)), n + 1, "own base: in one commit")
        rc, out, line = hubfs_status(m.cache_dir)
        T.ok("conflict" in out and "held.txt" in out, "own base: hubfs status names the conflict", out)
        T.eq(m.read(BASE + "held.txt"), b"ours", "own base: our bytes stay staged")
        # the JS-like order: the row based on the old head comes first
        commit_files(hub, REPO, {"first.txt": b"v0\n"}, summary="first.txt v0")
        time.sleep(1.6)
        g = open(m.p(BASE + "first.txt"), "r+b")
        g.write(b"ou")
        g.close()  # journaled first, based on the head before carol's next change
        commit_files(hub, REPO, {"first.txt": b"carol again\n"}, summary="carol changes first.txt")
        time.sleep(1.6)
        T.ok(write_file(m.p(BASE + "second.txt"), b"second\n", fsync=False) is None,
             "own base: a second file journaled on the new head")
        fsync_path(m.p(BASE))
        T.eq(downloaded(hub, "first.txt"), b"carol again\n",
             "own base: whatever the order of the rows, carol's change stands")
        T.eq(downloaded(hub, "second.txt"), b"second\n", "own base: and the other row is committed")
        # resolving one path moves only that path's base
        T.eq(test_write.setx(m.p(BASE + "held.txt"), "user.hub.resolve", b"ours"), 0,
             "own base: user.hub.resolve=ours on held.txt")
        err = fsync_path(m.p(BASE + "held.txt"))
        T.ok(err is None, "own base: its fsync commits it on top", err)
        T.eq(downloaded(hub, "held.txt"), b"ours", "own base: held.txt is ours now, as chosen")
        T.eq(downloaded(hub, "first.txt"), b"carol again\n", "own base: first.txt, not resolved, is still carol's")
        err = fsync_path(m.p(BASE + "first.txt"))
        T.ok(err is not None and getattr(err, "errno", 0) == 5, "own base: and still a conflict (%r)" % err)
        T.eq(test_write.setx(m.p(BASE + "first.txt"), "user.hub.resolve", b"theirs"), 0,
             "own base: user.hub.resolve=theirs on first.txt")
        T.ok(fsync_path(m.p(BASE)) is None, "own base: then the branch has nothing in conflict")
        m.unmount()
        check_sanitizers(m, "own base")


def test_single_writer(hub):
    """Item 2: open/pwrite/close every 10 ms while hubfs commits: never a conflict with itself."""
    repo = "alice/single-writer"
    with Mount(hub, token=ALICE_WRITE_TOKEN, args=["--commit-delay", "0"]) as m:
        os.mkdir(m.p(repo))  # a repo of its own: its history stays short enough to count
        path = m.p(repo + "/main/loop.bin")
        n0 = len(commits(hub, repo))
        deadline = time.monotonic() + 20
        i = 0
        data = b""
        errors = []
        while time.monotonic() < deadline:
            data = (b"%08d" % i) * 64
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
                try:
                    os.pwrite(fd, data, 0)
                finally:
                    os.close(fd)
            except OSError as e:
                errors.append(e)
                break
            i += 1
            time.sleep(0.01)
        T.ok(not errors, "single writer: %d open/pwrite/close without an error" % i, errors)
        err = fsync_path(path)
        T.ok(err is None, "single writer: the last fsync returns 0", err)
        T.eq(downloaded(hub, "loop.bin", repo), data, "single writer: the Hub has the last bytes")
        made = len(commits(hub, repo)) - n0
        T.ok(made >= 10, "single writer: hubfs committed while the writer wrote (%d commits)" % made)
        m.unmount()
        T.ok("conflict" not in m.stderr, "single writer: no conflict in the log",
             "\n".join(x for x in m.stderr.splitlines() if "conflict" in x or "moved" in x)[-3000:])
        rc, out, line = hubfs_status(m.cache_dir)
        T.ok(repo not in out, "single writer: nothing stays staged", out)
        check_sanitizers(m, "single writer")


def test_rm_r(hub):
    """Item 3: rm -r of a nested tree is ONE commit the Hub accepts; the branch keeps committing."""
    with Mount(hub, token=ALICE_WRITE_TOKEN, args=["--commit-delay", "60"]) as m:
        os.makedirs(m.p(BASE + "t/a/b"))
        for rel in ("t/x.txt", "t/a/y.txt", "t/a/b/z.txt", "t/a/b/w.txt"):
            T.ok(write_file(m.p(BASE + rel), rel.encode(), fsync=False) is None, "rm -r: %s staged" % rel)
        T.ok(fsync_path(m.p(BASE)) is None, "rm -r: the tree is committed")
        T.ok(all(p in hub_tree(hub) for p in ("t/x.txt", "t/a/b/z.txt")), "rm -r: the Hub has the tree")
        n = len(commits(hub))
        r = run(["rm", "-r", m.p(BASE + "t")])
        T.ok(r is not None and r.returncode == 0, "rm -r exits 0", r and r.stderr)
        T.ok(not os.path.exists(m.p(BASE + "t")), "rm -r: t is gone from the view")
        err = fsync_path(m.p(BASE))
        T.ok(err is None, "rm -r: fsync of the branch returns 0", err)
        T.eq(len(commits(hub)), n + 1, "rm -r: ONE commit")
        T.ok(not any(p == "t" or p.startswith("t/") for p in hub_tree(hub)), "rm -r: the Hub has no t/")
        T.ok(write_file(m.p(BASE + "after-rm.txt"), b"after\n") is None and
             downloaded(hub, "after-rm.txt") == b"after\n", "rm -r: a later change commits (not wedged)")
        # only the deepest folder holds a file: deleting it empties its parents
        os.makedirs(m.p(BASE + "deep/a/b"))
        T.ok(write_file(m.p(BASE + "deep/a/b/only.txt"), b"deep\n") is None, "rm -r: deep/a/b/only.txt committed")
        n = len(commits(hub))
        r = run(["rm", "-r", m.p(BASE + "deep")])
        T.ok(r is not None and r.returncode == 0, "rm -r of deep/ exits 0", r and r.stderr)
        err = fsync_path(m.p(BASE))
        T.ok(err is None, "rm -r of deep/: fsync returns 0 (the Hub accepts the commit)", err)
        T.ok(len(commits(hub)) == n + 1 and not any(p.startswith("deep") for p in hub_tree(hub)),
             "rm -r of deep/: ONE commit, nothing left on the Hub")
        # a commit the Hub refuses once: narrowed, everything lands
        n = len(commits(hub))
        for i in range(4):
            write_file(m.p(BASE + "part-%d.txt" % i), b"part %d\n" % i, fsync=False)
        hub.set_faults([{"method": "POST", "path": "/commit/", "action": "status", "status": 422, "count": 1}])
        err = fsync_path(m.p(BASE))
        hub.set_faults([])
        T.ok(err is None, "refused once: fsync returns 0 once every part is committed", err)
        T.ok(all(downloaded(hub, "part-%d.txt" % i) == b"part %d\n" % i for i in range(4)),
             "refused once: the Hub has every file")
        T.ok(2 <= len(commits(hub)) - n <= 3, "refused once: in a few commits (%d)" % (len(commits(hub)) - n))
        # an invalid card is set aside; the rest of the branch commits
        card = b"---\nlicense: [unclosed\n---\n# card\n"
        write_file(m.p(BASE + "README.md"), card, fsync=False)
        write_file(m.p(BASE + "beside-card.txt"), b"beside\n", fsync=False)
        err = fsync_path(m.p(BASE + "beside-card.txt"))
        T.ok(err is None, "refused card: fsync of another file returns 0", err)
        T.eq(downloaded(hub, "beside-card.txt"), b"beside\n", "refused card: the other file is on the Hub")
        T.ok(downloaded(hub, "README.md") != card, "refused card: the card is not")
        err = fsync_path(m.p(BASE + "README.md"))
        T.ok(err is not None and getattr(err, "errno", 0) == 22, "refused card: its own fsync is EINVAL (%r)" % err)
        rc, out, line = hubfs_status(m.cache_dir)
        T.ok("refused" in line and "card" in out, "refused card: hubfs status shows it refused, with the reason", out)
        os.unlink(m.p(BASE + "README.md"))
        T.ok(fsync_path(m.p(BASE)) is None, "refused card: removing it clears the branch")
        m.unmount()
        check_sanitizers(m, "rm -r")


def test_same_bytes(hub):
    """Item 5: rewriting files with the bytes they have makes no commit."""
    with Mount(hub, token=ALICE_WRITE_TOKEN, args=["--commit-delay", "60"]) as m:
        tree = [p for p, e in hub_tree(hub).items()
                if e["type"] == "file" and e["size"] < (1 << 20) and re.match(r"^[\w./-]+$", p)][:5]
        tmp = tempfile.mkdtemp(prefix="hubfs-same-")
        try:
            for p in tree:
                os.makedirs(os.path.dirname(os.path.join(tmp, p)) or tmp, exist_ok=True)
                with open(os.path.join(tmp, p), "wb") as f:
                    f.write(downloaded(hub, p))
            n = len(commits(hub))
            r = run(["cp", "-r", tmp + "/.", m.p(BASE)])
            T.ok(r is not None and r.returncode == 0, "same bytes: cp -r over the branch exits 0", r and r.stderr)
            T.ok(fsync_path(m.p(BASE)) is None, "same bytes: fsync returns 0")
            T.eq(len(commits(hub)), n, "same bytes: no commit (%d files rewritten)" % len(tree))
            T.ok(write_file(m.p(BASE + tree[0]), downloaded(hub, tree[0]) + b"x") is None and
                 len(commits(hub)) == n + 1, "same bytes: a real change still commits")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        m.unmount()
        check_sanitizers(m, "same bytes")


def history_paths(hub, since):
    """Every path named in the titles of the commits after the first @since."""
    return " ".join(titles(hub)[:len(commits(hub)) - since])


def test_scratch(hub):
    """Item 7: scratch files live in the mount and are never committed; atomic saves are one commit."""
    with Mount(hub, token=ALICE_WRITE_TOKEN, args=["--commit-delay", "60", "--local-only", "*.part"]) as m:
        commit_files(hub, REPO, {"notes.txt": b"line one\n"}, summary="notes.txt")
        time.sleep(0.1)
        n = len(commits(hub))
        before = set(hub_tree(hub))
        # a swap file: fsync is local
        swap = m.p(BASE + ".notes.txt.swp")
        T.ok(write_file(swap, b"b0VIM 9.0 alice /home/alice/notes.txt\n") is None,
             "scratch: fsync of a vim swap file returns 0")
        T.ok(".notes.txt.swp" in os.listdir(m.p(BASE)), "scratch: it is listed in the mount")
        T.eq(len(commits(hub)), n, "scratch: and not committed")
        os.unlink(swap)
        T.ok(write_file(m.p(BASE + "upload.part"), b"partial\n") is None, "scratch: --local-only *.part, fsync 0")
        T.ok(fsync_path(m.p(BASE)) is None and len(commits(hub)) == n, "scratch: a *.part file is not committed")
        os.unlink(m.p(BASE + "upload.part"))
        # Python's atomic save: temp file, fsync, rename, fsync of the directory
        target = m.p(BASE + "notes.txt")
        fd, tmpname = tempfile.mkstemp(dir=m.p(BASE))
        os.write(fd, b"saved atomically\n")
        os.fsync(fd)
        os.close(fd)
        T.eq(len(commits(hub)), n, "atomic save: the fsync of %s makes no commit" % os.path.basename(tmpname))
        os.replace(tmpname, target)
        T.ok(fsync_path(m.p(BASE)) is None, "atomic save: fsync of the directory returns 0")
        T.eq(downloaded(hub, "notes.txt"), b"saved atomically\n", "atomic save: the Hub has the new bytes")
        T.eq(len(commits(hub)), n + 1, "atomic save: ONE commit")
        T.eq(titles(hub)[0], "Update notes.txt with hubfs", "atomic save: it touches only the target")
        T.eq(set(hub_tree(hub)) - before, set(), "atomic save: no temp name in the tree")
        n = len(commits(hub))
        # vim :w, with its swap file, 4913 test and backup
        vim = shutil.which("vim") or shutil.which("vim.tiny")
        if vim:
            r = run([vim, "-u", "NONE", "-i", "NONE", "-N", "-E", "-s", "-c", "set swapfile directory=. writebackup",
                     "-c", "normal! Govim line", "-c", "wq", "notes.txt"], cwd=m.p(BASE))
            T.ok(r is not None and r.returncode == 0, "vim :w exits 0", r and (r.stdout + r.stderr))
            err = fsync_path(m.p(BASE))
            T.ok(err is None, "vim: fsync of the directory returns 0", err)
            T.eq(downloaded(hub, "notes.txt"), b"saved atomically\nvim line\n", "vim: the Hub has the saved text")
            T.eq(len(commits(hub)), n + 1, "vim: ONE commit (%s)" % titles(hub)[:3])
            T.eq(titles(hub)[0], "Update notes.txt with hubfs", "vim: it touches only notes.txt")
            names = set(hub_tree(hub))
            T.ok(not any(x.endswith((".swp", "~")) or x.endswith("4913") for x in names),
                 "vim: no swap, backup or 4913 in the tree", sorted(names))
        else:
            T.ok(True, "vim :w # SKIP no vim")
        history = " ".join(titles(hub))
        T.ok(not re.search(r"\.swp|~| 4913|tmp\w{8}|\.part", history), "scratch: no scratch name in the history",
             history[:2000])
        T.ok(write_file(m.p(BASE + ".kept.txt.swp"), b"a swap file left behind\n") is None,
             "scratch: a swap file stays in the mount")
        rc, out, line = hubfs_status(m.cache_dir)
        T.ok("local-only" in line, "scratch: hubfs status counts it as local-only", out)
        rc, out, err = hubfs("umount", m.path, timeout=90)
        T.ok(rc == 0 and "every change is on the Hub" in err,
             "scratch: hubfs umount exits 0: a scratch file is not a change left staged", (rc, err))
        check_sanitizers(m, "scratch")


def test_lost_staged(hub):
    """Item 12: a row whose staged file is gone is set aside; the rest commits; unmount is prompt."""
    with Mount(hub, token=ALICE_WRITE_TOKEN, args=["--commit-delay", "60"]) as m:
        write_file(m.p(BASE + "lost-a.txt"), b"this one loses its staged file\n", fsync=False)
        write_file(m.p(BASE + "lost-b.txt"), b"this one is fine\n", fsync=False)
        stage = os.path.join(m.cache_dir, "stage")
        victim = None
        for name in os.listdir(stage):
            with open(os.path.join(stage, name), "rb") as f:
                if f.read() == b"this one loses its staged file\n":
                    victim = name
        T.ok(victim is not None, "lost: the staged file is found in the cache")
        if victim:
            os.unlink(os.path.join(stage, victim))
        t0 = time.monotonic()
        err = fsync_path(m.p(BASE + "lost-b.txt"))
        T.ok(err is None, "lost: fsync of the other file returns 0", err)
        T.eq(downloaded(hub, "lost-b.txt"), b"this one is fine\n", "lost: the other file is committed")
        T.ok(downloaded(hub, "lost-a.txt") is None, "lost: the lost one is not")
        err = fsync_path(m.p(BASE))
        T.ok(err is not None and getattr(err, "errno", 0) == 5, "lost: fsync of the branch is EIO (%r)" % err)
        T.ok(time.monotonic() - t0 < 30, "lost: no livelock (%.1f s)" % (time.monotonic() - t0))
        rc, out, line = hubfs_status(m.cache_dir)
        T.ok("lost" in out and "lost-a.txt" in out and "refused" in line, "lost: hubfs status reports it", out)
        t0 = time.monotonic()
        m.unmount()
        T.ok(time.monotonic() - t0 < 20, "lost: unmount is prompt (%.1f s)" % (time.monotonic() - t0))
        check_sanitizers(m, "lost")


def test_group_commit(hub):
    """Item 13: fsyncs that arrive together share commits; item 14: one log line per commit."""
    with Mount(hub, token=ALICE_WRITE_TOKEN, args=["--commit-delay", "60"]) as m:
        n = len(commits(hub))
        k = 8
        barrier = threading.Barrier(k)
        errors = []

        def writer(i):
            try:
                with open(m.p(BASE + "group-%d.txt" % i), "wb") as f:
                    f.write(b"group %d\n" % i)
                    f.flush()
                    barrier.wait(30)
                    os.fsync(f.fileno())
            except Exception as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(k)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        T.ok(not errors and not any(t.is_alive() for t in threads), "group: %d concurrent fsyncs return 0" % k,
             errors)
        made = len(commits(hub)) - n
        T.ok(1 <= made <= 3, "group: they share commits (%d commits for %d fsyncs)" % (made, k))
        T.ok(all(downloaded(hub, "group-%d.txt" % i) == b"group %d\n" % i for i in range(k)),
             "group: every file is on the Hub")
        m.unmount()
        logged = len(re.findall(r"committed as [0-9a-f]{40}", m.stderr))
        T.eq(logged, made, "one log line per commit")
        check_sanitizers(m, "group")


def main():
    if not have_fuse():
        print("1..0 # SKIP no /dev/fuse or fusermount3")
        sys.exit(0)
    with LocalHub(seed=True) as hub:
        test_own_base(hub)
        test_single_writer(hub)
        test_rm_r(hub)
        test_same_bytes(hub)
        test_scratch(hub)
        test_lost_staged(hub)
        test_group_commit(hub)
    T.done()


if __name__ == "__main__":
    main()
