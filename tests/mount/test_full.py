#!/usr/bin/env python3
"""A full cache disk is a passing state (TAP).

The cache directory sits on a 48 MiB tmpfs, then on a small ext4 image
(loop-mounted), where blob files are written with O_DIRECT; the local Hub
holds more than either.  Reads of data that cannot fit fail with ENOSPC within seconds (a hang
guard, not a benchmark), eviction of what is not open lets later reads
succeed with the right content, reads of cached data go on while the disk is
full, the mount recovers by itself once space is back, `hubfs cache stats`
counts what `du` sees in the blobs directory, and a remount reads again.
Needs root (to mount the tmpfs and the image): skipped otherwise; without a
loop device the ext4 round is skipped.
"""

import errno
import os
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mountlib import Mount, Tap, have_fuse, hubfs_binary, sha256, with_timeout  # noqa: E402
from harness import ALICE_WRITE_TOKEN, LocalHub  # noqa: E402
from test_read import create_repo, upload_lfs  # noqa: E402

T = Tap()
MiB = 1 << 20
REPO = "alice/full-model"
DISK = "48m"
EXT4_IMAGE = 56 * MiB  # about 48 MiB free once formatted
WHERE = ""  # what the assertions of this round say first
BOUND = 5.0  # seconds: a failing read must not hang


def content(seed, size):
    block = sha256(b"%d" % seed).encode() * (MiB // 64)
    return (block * (size // len(block) + 1))[:size]


FILES = {"a.bin": content(1, 20 * MiB), "b.bin": content(2, 20 * MiB), "c.bin": content(3, 20 * MiB),
         "d.bin": content(4, 4 * MiB), "huge.bin": content(5, 64 * MiB)}


def timed_read(m, name, timeout=60):
    """(data or None, errno or None, seconds)."""
    def rd():
        with open(m.p("%s/main/%s" % (REPO, name)), "rb") as f:
            return f.read()
    t0 = time.monotonic()
    data, err = with_timeout(rd, timeout)
    dt = time.monotonic() - t0
    return data, (err.errno if isinstance(err, OSError) else err), dt


def stats_bytes(cache_dir):
    r = subprocess.run([hubfs_binary(), "cache", "stats", "--cache-dir", cache_dir], capture_output=True,
                       text=True, timeout=30)
    line = [x for x in r.stdout.splitlines() if x.startswith("bytes")]
    used = int(line[0].split("(")[1].split()[0]) if line else -1
    return used, r.stdout + r.stderr


def du_blobs(cache_dir):
    r = subprocess.run(["du", "-s", "-B1", os.path.join(cache_dir, "blobs")], capture_output=True, text=True,
                       timeout=30)
    return int(r.stdout.split()[0]) if r.returncode == 0 else -1


def ok(cond, msg, diag=None):
    return T.ok(cond, WHERE + msg, diag)


def check_counts(cache_dir, what):
    time.sleep(0.5)  # the last puts persist presence
    used, out = stats_bytes(cache_dir)
    disk = du_blobs(cache_dir)
    ok(used >= 0 and abs(used - disk) <= 256 * 1024,
         "%s: cache stats counts %d bytes, du of blobs/ %d" % (what, used, disk), out)


def fill_disk(path):
    """Writes @path until the disk is full; returns the bytes written."""
    n = 0
    chunk = b"\0" * MiB
    with open(path, "wb") as f:
        try:
            while True:
                f.write(chunk)
                f.flush()
                n += len(chunk)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
    return n


def test_full(hub, disk):
    cache_dir = os.path.join(disk, "cache")
    filler = os.path.join(disk, "filler")
    with Mount(hub, token=ALICE_WRITE_TOKEN, cache_dir=cache_dir) as m:
        data, err, dt = timed_read(m, "huge.bin")
        ok(err == errno.ENOSPC and dt < BOUND,
             "a 64 MiB file on a 48 MiB cache disk: ENOSPC in %.2f s (%r)" % (dt, err), m.read_stderr()[-2000:])
        for name in ("a.bin", "b.bin", "c.bin"):
            data, err, dt = timed_read(m, name)
            ok(err is None and data is not None and sha256(data) == sha256(FILES[name]),
                 "then %s (20 MiB) reads right, evicting what is not open (%.2f s, %r)" % (name, dt, err),
                 m.read_stderr()[-3000:])
        check_counts(cache_dir, "after eviction")

        # The disk filled by someone else, a cached file held open.
        with open(m.p("%s/main/c.bin" % REPO), "rb") as kept:
            first = kept.read(MiB)
            fill_disk(filler)
            try:
                # The cache gives back what is not open, then the disk is still
                # full of the filler: d fails or (if eviction made room) reads.
                data, err, dt = timed_read(m, "d.bin")
                ok(dt < BOUND and (err == errno.ENOSPC or (data is not None and data == FILES["d.bin"])),
                     "a read while the disk is full ends in %.2f s (%r)" % (dt, err))
                os.unlink(filler)
                fill_disk(filler)  # now truly full, with nothing left to evict
                data, err, dt = timed_read(m, "huge.bin")
                ok(err == errno.ENOSPC and dt < BOUND,
                     "with nothing to evict, ENOSPC in %.2f s (%r)" % (dt, err))
                t0 = time.monotonic()
                kept.seek(0)
                again, e2 = with_timeout(kept.read, 30)
                ok(e2 is None and again == FILES["c.bin"] and again[:MiB] == first,
                     "the open, cached file still reads while the disk is full (%.2f s)" % (time.monotonic() - t0))
            finally:
                if os.path.exists(filler):
                    os.unlink(filler)
        data, err, dt = timed_read(m, "d.bin")
        ok(err is None and data == FILES["d.bin"],
             "space is back: d.bin reads right without a remount (%.2f s, %r)" % (dt, err))
        s = subprocess.run([hubfs_binary(), "cache", "stats", "--cache-dir", cache_dir], capture_output=True,
                           text=True, timeout=30)
        ok("of bytes read" in s.stdout, "cache stats gives the byte hit ratio", s.stdout + s.stderr)
        T.diag(s.stdout)
        check_counts(cache_dir, "while mounted")
        m.unmount()
        ok(not m.sanitizer_report(), "no sanitizer report", "\n".join(m.sanitizer_report()))
    check_counts(cache_dir, "after unmounting")
    with Mount(hub, token=ALICE_WRITE_TOKEN, cache_dir=cache_dir) as m:
        for name in ("a.bin", "d.bin"):
            data, err, dt = timed_read(m, name)
            ok(err is None and data == FILES[name], "after a remount %s reads right (%.2f s)" % (name, dt))
        m.unmount()
    check_counts(cache_dir, "after the remount")

    # An unclean stop in the middle of a fill on a full disk: the remount
    # recounts, and what the files hold is what the index counts.
    with Mount(hub, token=ALICE_WRITE_TOKEN, cache_dir=cache_dir) as m:
        def rd():
            with open(m.p("%s/main/huge.bin" % REPO), "rb") as f:
                f.read(40 * MiB)
                m.proc.kill()
        with_timeout(rd, 60)
        m.unmount()
    T.diag("after the kill: the index counts %d bytes, du of blobs/ %d" % (stats_bytes(cache_dir)[0],
                                                                          du_blobs(cache_dir)))
    with Mount(hub, token=ALICE_WRITE_TOKEN, cache_dir=cache_dir) as m:
        time.sleep(0.5)
        check_counts(cache_dir, "after an unclean stop and a remount")
        data, err, dt = timed_read(m, "b.bin")
        ok(err is None and data == FILES["b.bin"], "and b.bin reads right (%.2f s, %r)" % (dt, err))
        m.unmount()
        ok(not m.sanitizer_report(), "no sanitizer report", "\n".join(m.sanitizer_report()))


def test_ext4(hub, top, disk):
    """The same round on ext4, where --cache-io=auto writes blob files with O_DIRECT: ENOSPC comes from the
    O_DIRECT write itself."""
    global WHERE
    image = os.path.join(top, "ext4.img")
    with open(image, "wb") as f:
        f.truncate(EXT4_IMAGE)
    mk = subprocess.run(["mkfs.ext4", "-q", "-m", "0", "-F", image], capture_output=True, text=True, timeout=60)
    mnt = subprocess.run(["mount", "-o", "loop", image, disk], capture_output=True, text=True, timeout=30) \
        if mk.returncode == 0 else mk
    if mnt.returncode != 0:
        T.skip("no ext4 image for the cache (%s)" % (mnt.stderr.strip() or "mkfs.ext4 failed"))
        return
    os.chmod(disk, 0o700)
    WHERE = "ext4, O_DIRECT: "
    try:
        test_full(hub, disk)
    except Exception as e:  # noqa: B902 - a crash is a failure
        T.ok(False, "test_full on ext4 raised %r" % e)
    finally:
        WHERE = ""
        subprocess.run(["umount", "-l", disk], timeout=30)


def main():
    if not have_fuse():
        print("1..0 # SKIP /dev/fuse or fusermount3 missing")
        return 0
    if os.geteuid() != 0:
        print("1..0 # SKIP not root: the test mounts a %s tmpfs for the cache" % DISK)
        return 0
    top = tempfile.mkdtemp(prefix="hubfs-full-")
    disk = os.path.join(top, "disk")
    os.mkdir(disk)
    mounted = False
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0700" % DISK, "tmpfs", disk], check=True,
                       timeout=30)
        mounted = True
        with LocalHub(seed=True) as hub:
            create_repo(hub, REPO.split("/")[1])
            for name, data in FILES.items():
                upload_lfs(hub, REPO, name, data)
            try:
                test_full(hub, disk)
            except Exception as e:  # noqa: B902 - a crash is a failure
                T.ok(False, "test_full raised %r" % e)
            subprocess.run(["umount", "-l", disk], timeout=30)
            mounted = False
            test_ext4(hub, top, disk)
            mounted = os.path.ismount(disk)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", disk], timeout=30)
        subprocess.run(["rm", "-rf", top], timeout=60)
    T.done()


if __name__ == "__main__":
    main()
