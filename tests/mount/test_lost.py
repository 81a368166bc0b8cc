#!/usr/bin/env python3
"""A staged file whose journal row is lost is kept in lost+found, not deleted (TAP).

A file written into a branch with a long --commit-delay stays staged; the
daemon is killed (SIGKILL) and the journal's rows are deleted, as a truncated
index or a WAL lost in a crash would leave them.  The next mount finds the
staged file with no row: it moves it to DIR/lost+found with its bytes
(same sha256), logs its path there and its size, and commits nothing.
`hubfs status` shows the lost+found section while mounted and after; a
later mount leaves lost+found alone; once the user deletes the file the
section is gone.
"""

import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mountlib import Mount, Tap, have_fuse, sha256, with_timeout  # noqa: E402
from harness import ALICE_WRITE_TOKEN, LocalHub  # noqa: E402
from test_status import hubfs  # noqa: E402

T = Tap()
REPO = "alice/tiny-model"
NAME = "lost.bin"
UMOUNT_TIMEOUT = 90
LOST_NAME = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{16}\.data$")


def commits(hub):
    status, body, _ = hub.json("GET", "/api/models/%s/commits/main" % REPO, ALICE_WRITE_TOKEN)
    assert status == 200, status
    return body


def on_hub(hub, path):
    status, _, _ = hub.request("HEAD", "/%s/resolve/main/%s" % (REPO, path), ALICE_WRITE_TOKEN)
    return status in (200, 302)


def check_sanitizers(m, what):
    report = m.sanitizer_report()
    T.ok(not report, "%s: no sanitizer report from the daemon" % what, "\n".join(report[:20]))


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


def lost_section(out, cache, n, size_text):
    return ("lost+found: %d file%s, %s, in %s/lost+found (staged data whose journal row was lost: "
            "copy what you need, then delete it)" % (n, "" if n == 1 else "s", size_text, cache)) in out


def test_lost(hub):
    cache = os.path.realpath(tempfile.mkdtemp(prefix="hubfs-lost-cache-"))
    stage_dir = os.path.join(cache, "stage")
    lost_dir = os.path.join(cache, "lost+found")
    data = os.urandom(300 * 1024 + 7)
    try:
        n = len(commits(hub))
        with Mount(hub, token=ALICE_WRITE_TOKEN, cache_dir=cache, args=["--commit-delay", "600"]) as m:
            with open(m.p("%s/main/%s" % (REPO, NAME)), "wb") as f:
                f.write(data)
            rc, out, err = hubfs("status", m.path)
            T.ok(rc == 0 and "%s@main: 1 change (1 pending)" % REPO in out,
                 "the file is journaled, its commit 600 s away", out + err)
            staged = sorted(f for f in os.listdir(stage_dir) if f.endswith(".data"))
            T.eq(len(staged), 1, "one staged file in DIR/stage")
            m.proc.send_signal(signal.SIGKILL)
            m.proc.wait(10)
            T.ok(m.proc.returncode == -signal.SIGKILL, "the daemon is killed (SIGKILL)")
            m.unmount()
        if len(staged) != 1:
            return

        db = sqlite3.connect(os.path.join(cache, "hubfs.db"), timeout=10)
        try:
            deleted = db.execute("DELETE FROM stage").rowcount
            db.commit()
        finally:
            db.close()
        T.eq(deleted, 1, "the journal loses its row (DELETE FROM stage)")
        rc, out, err = hubfs("status", "--cache-dir", cache)
        T.ok(rc == 0 and "nothing pending" in out and "lost+found" not in out,
             "status before the next mount: nothing pending, no lost+found yet", out + err)

        # a short delay: had the change a row, it would be committed now
        with Mount(hub, token=ALICE_WRITE_TOKEN, cache_dir=cache, args=["--commit-delay", "1"]) as m:
            names = sorted(os.listdir(lost_dir)) if os.path.isdir(lost_dir) else []
            T.ok(len(names) == 1 and LOST_NAME.match(names[0]) and names[0].endswith("-" + staged[0]),
                 "the mount moved the staged file to lost+found, named by its mtime", names)
            if len(names) != 1:
                return
            lost = os.path.join(lost_dir, names[0])
            T.eq(sha256(read_file(lost)), sha256(data), "with the bytes that were written (sha256)")
            T.ok(not os.path.exists(os.path.join(stage_dir, staged[0])), "it is no longer in DIR/stage")
            T.eq(os.stat(lost_dir).st_mode & 0o777, 0o700, "lost+found is private (0700)")
            log = m.read_stderr()
            T.ok("staged file \"%s\" (%d bytes) has no journal row: kept there, not committed"
                 % (lost, len(data)) in log, "the daemon's log names its path in lost+found and its size",
                 log)
            rc, out, err = hubfs("status", m.path)
            T.ok(rc == 0 and lost_section(out, cache, 1, "300.0 KiB"),
                 "status MOUNTPOINT shows the lost+found section", out + err)
            T.diag(out)
            T.ok(re.search(r"^    %s \(300\.0 KiB, last written \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\)$"
                           % re.escape(names[0]), out, re.M), "and lists the file", out)
            T.ok("nothing pending" in out, "with nothing pending in the journal", out)
            time.sleep(3)
            T.eq(len(commits(hub)), n, "no commit was made")
            T.ok(not on_hub(hub, NAME), "the Hub does not have the file")
            exists, error = with_timeout(os.path.exists, 30, m.p("%s/main/%s" % (REPO, NAME)))
            T.ok(error is None and not exists, "nor does the branch view show it", error)
            rc, out, err = hubfs("umount", m.path, timeout=UMOUNT_TIMEOUT)
            T.eq(rc, 0, "umount exits 0: nothing pending")
            m.unmount()
            check_sanitizers(m, "lost+found")

        with Mount(hub, token=ALICE_WRITE_TOKEN, cache_dir=cache) as m:
            T.eq(sorted(os.listdir(lost_dir)), names, "a later mount leaves lost+found as it is")
            m.unmount()
            check_sanitizers(m, "later mount")
        rc, out, err = hubfs("status", "--cache-dir", cache)
        T.ok(rc == 0 and lost_section(out, cache, 1, "300.0 KiB"), "status --cache-dir, unmounted, shows it",
             out + err)
        os.unlink(lost)
        rc, out, err = hubfs("status", "--cache-dir", cache)
        T.ok(rc == 0 and "lost+found" not in out, "once the user deletes it, the section is gone", out + err)
    finally:
        subprocess.run(["rm", "-rf", cache])


def main():
    if not have_fuse():
        print("1..0 # SKIP no /dev/fuse or fusermount3")
        sys.exit(0)
    with LocalHub(seed=True) as hub:
        test_lost(hub)
    T.done()


if __name__ == "__main__":
    main()
