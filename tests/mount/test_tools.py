#!/usr/bin/env python3
"""Everyday tools on a branch view, against the local Hub (TAP).

What users run into a branch: chmod, chown and utimes are accepted and not
kept (the Hub has no modes, owners or times), so rsync -a, tar -x, cp -a and
install exit 0 and their files land on the Hub with the right bytes;
symlinks, hard links and device nodes are EPERM; posix_fallocate grows a file
open for writing.  Files keep their st_ino across writes and renames, link
counts are POSIX's, and a directory made where a file was (or the reverse)
shows the same in readdir, stat, unlink and rmdir.  With allow_other,
another user reads and cannot change anything.  Shared maps of files being written see
read() and write() and reach the Hub with msync.  Views that are not
writable answer EROFS.
"""

import ctypes
import errno
import hashlib
import json
import mmap
import os
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mountlib import Mount, Tap, have_fuse, sha256, with_timeout  # noqa: E402
from harness import ALICE_WRITE_TOKEN, LocalHub  # noqa: E402
from test_read import errno_of, hub_commit  # noqa: E402
from test_write import commits, downloaded, fsync_path, hub_tree, wait_for, write_file  # noqa: E402

T = Tap()
SYSTEM_PYTHON = "/usr/bin/python3"
KiB = 1 << 10
MiB = 1 << 20
REPO = "alice/tiny-model"
TOOL_TIMEOUT = 120
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02

libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)


def check_sanitizers(m, what):
    report = m.sanitizer_report()
    T.ok(not report, "%s: no sanitizer report from the daemon" % what, "\n".join(report[:20]))


def rename(a, b):
    try:
        os.rename(a, b)
    except OSError as e:
        return e
    return None


def run(cmd, cwd=None):
    """(exit status, stderr) of a command, which must end within TOOL_TIMEOUT."""
    try:
        r = subprocess.run(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=TOOL_TIMEOUT)
    except subprocess.TimeoutExpired:
        return None, "timed out"
    return r.returncode, (r.stdout + r.stderr).decode(errors="replace")


def fallocate(fd, mode, off, length):
    """fallocate(2): 0 or the errno."""
    if libc.fallocate(fd, mode, off, length) == 0:
        return 0
    return ctypes.get_errno()


def make_source(root):
    """A small tree of files to copy, as a dict of relative path -> bytes."""
    files = {
        "a.txt": b"the first file\n",
        "sub/b.bin": os.urandom(300 * KiB),
        "sub/deeper/c.txt": b"deep down\n" * 50,
        "run.sh": b"#!/bin/sh\necho hello\n",
    }
    for rel, data in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    os.chmod(os.path.join(root, "run.sh"), 0o755)
    os.chmod(os.path.join(root, "a.txt"), 0o600)
    os.utime(os.path.join(root, "a.txt"), (1_000_000_000, 1_000_000_000))
    return files


def hub_has(hub, prefix, files):
    """Whether the Hub's tree of main holds exactly @files under @prefix, byte for byte."""
    tree = hub_tree(hub)
    got = sorted(p[len(prefix):] for p, e in tree.items() if p.startswith(prefix) and e.get("type") != "directory")
    if got != sorted(files):
        return False, "tree under %s: %r" % (prefix, got)
    bad = [rel for rel, data in files.items()
           if hashlib.sha256(downloaded(hub, prefix + rel) or b"").hexdigest() != sha256(data)]
    return not bad, "wrong bytes: %r" % bad


def test_attributes(hub, m):
    base = m.p(REPO + "/main/")
    T.ok(write_file(base + "modes.txt", b"modes\n", fsync=False) is None, "a file is written")
    uid = os.stat(base + "modes.txt").st_uid
    for what, path, mode in (("a file", base + "modes.txt", 0o644), ("a directory of the tree", base + "docs", 0o755),
                             ("the branch root", base.rstrip("/"), 0o755)):
        T.eq(errno_of(os.chmod, path, 0o700), 0, "chmod of %s is accepted" % what)
        T.eq(errno_of(os.chown, path, 65534, 65534), 0, "chown of %s to another owner is accepted" % what)
        T.eq(errno_of(os.chown, path, uid, -1), 0, "chown of %s to its owner is accepted" % what)
        T.eq(errno_of(os.utime, path, (1_000_000_000, 1_000_000_000)), 0, "utimes of %s is accepted" % what)
        T.eq(errno_of(os.utime, path, None), 0, "utimensat(UTIME_NOW) of %s is accepted" % what)
        st = os.stat(path)
        T.ok(stat.S_IMODE(st.st_mode) == mode and st.st_uid == uid,
             "%s keeps mode %o and its owner: the Hub stores neither" % (what, mode), (oct(st.st_mode), st.st_uid))

    fd = os.open(base + "modes.txt", os.O_RDWR)
    try:
        T.eq(errno_of(os.fchmod, fd, 0o755), 0, "fchmod of an open file is accepted")
        T.eq(errno_of(os.fchown, fd, 65534, -1), 0, "fchown of an open file is accepted")
        T.eq(errno_of(os.utime, fd, (1, 1)), 0, "futimens of an open file is accepted")
        T.eq(errno_of(os.ftruncate, fd, 3), 0, "ftruncate still works")
        T.eq(os.fstat(fd).st_size, 3, "and shows the new size")
    finally:
        os.close(fd)
    T.eq(errno_of(os.truncate, base + "modes.txt", 5), 0, "truncate by path still works")
    T.eq(os.stat(base + "modes.txt").st_size, 5, "and grows the file")
    T.ok(fsync_path(base + "modes.txt") is None, "fsync commits")
    T.eq(downloaded(hub, "modes.txt"), b"mod\0\0", "the Hub has the truncated bytes")

    main = hub_commit(hub, "model", REPO, "main")
    for view in ("%s/v1.0" % REPO, "%s@%s" % (REPO, main)):
        for what, rel in (("a file", "/config.json"), ("the root", "")):
            path = m.p(view + rel)
            T.eq(errno_of(os.chmod, path, 0o644), errno.EROFS, "chmod of %s of %s is EROFS" % (what, view))
            T.eq(errno_of(os.chown, path, uid, -1), errno.EROFS, "chown of %s of %s is EROFS" % (what, view))
            T.eq(errno_of(os.utime, path, None), errno.EROFS, "utimensat of %s of %s is EROFS" % (what, view))


def test_copy_tools(hub, m):
    base = m.p(REPO + "/main/")
    tmp = tempfile.mkdtemp(prefix="hubfs-tools-")
    src = os.path.join(tmp, "src")
    try:
        files = make_source(src)
        tarball = os.path.join(tmp, "x.tar")
        rc, out = run(["tar", "-cf", tarball, "-C", src, "."])
        assert rc == 0, out
        n = len(commits(hub))

        rc, out = run(["rsync", "-a", src + "/", base + "by-rsync/"])
        T.eq(rc, 0, "rsync -a SRC/ BRANCH/by-rsync/ exits 0" + ("" if rc == 0 else ": " + out[-300:]))
        os.mkdir(base + "by-tar")
        rc, out = run(["tar", "-xf", tarball, "-C", base + "by-tar"])
        T.eq(rc, 0, "tar -xf x.tar -C BRANCH/by-tar exits 0" + ("" if rc == 0 else ": " + out[-300:]))
        os.mkdir(base + "by-cp")
        rc, out = run(["cp", "-a", src + "/.", base + "by-cp/"])
        T.eq(rc, 0, "cp -a SRC/. BRANCH/by-cp/ exits 0" + ("" if rc == 0 else ": " + out[-300:]))
        rc, out = run(["install", "-m", "755", os.path.join(src, "run.sh"), base])
        T.eq(rc, 0, "install -m 755 f BRANCH/ exits 0" + ("" if rc == 0 else ": " + out[-300:]))
        for d in ("by-rsync", "by-tar", "by-cp"):
            T.ok(all(m.read("%s/main/%s/%s" % (REPO, d, rel)) == data for rel, data in files.items()),
                 "%s: the view reads every file's bytes" % d)
        T.ok(fsync_path(base) is None, "fsync of the branch commits")
        for d in ("by-rsync", "by-tar", "by-cp"):
            ok, diag = hub_has(hub, d + "/", files)
            T.ok(ok, "%s: the Hub has exactly the copied files, same sha256 (no temporary files)" % d, diag)
        T.eq(downloaded(hub, "run.sh"), files["run.sh"], "install: the Hub has the file")
        T.ok(len(commits(hub)) > n, "the copies were committed")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_links(hub, m):
    base = m.p(REPO + "/main/")
    tag = m.p(REPO + "/v1.0/")
    T.eq(errno_of(os.symlink, "config.json", base + "a-link"), errno.EPERM, "symlink in a branch is EPERM")
    T.eq(errno_of(os.link, base + "config.json", base + "a-hard-link"), errno.EPERM, "link in a branch is EPERM")
    T.eq(errno_of(os.mkfifo, base + "a-fifo"), errno.EPERM, "mkfifo in a branch is EPERM")
    T.eq(errno_of(os.mknod, base + "a-dev", stat.S_IFCHR | 0o600, os.makedev(1, 3)), errno.EPERM,
         "mknod of a device in a branch is EPERM")
    T.eq([errno_of(os.symlink, "x", base + "config.json"), errno_of(os.link, base + "README.md", base + "config.json"),
          errno_of(os.mkfifo, base + "config.json")], [errno.EEXIST] * 3,
         "symlink, link and mkfifo over a name that exists: EEXIST first, as POSIX has it")
    T.ok(not any(os.path.lexists(base + n) for n in ("a-link", "a-hard-link", "a-fifo", "a-dev")),
         "and nothing appears")
    T.eq(errno_of(os.mknod, base + "by-mknod.txt", stat.S_IFREG | 0o644), 0, "mknod of a regular file makes one")
    T.ok(os.path.isfile(base + "by-mknod.txt") and os.stat(base + "by-mknod.txt").st_size == 0, "an empty file")
    T.eq(errno_of(os.mknod, base + "by-mknod.txt", stat.S_IFREG | 0o644), errno.EEXIST, "mknod again is EEXIST")
    T.eq(errno_of(os.symlink, "config.json", tag + "a-link"), errno.EROFS, "symlink in a tag view is EROFS")
    T.eq(errno_of(os.link, tag + "config.json", tag + "a-hard-link"), errno.EROFS, "link in a tag view is EROFS")
    T.eq(errno_of(os.mkfifo, tag + "a-fifo"), errno.EROFS, "mkfifo in a tag view is EROFS")


def test_fallocate(hub, m):
    base = m.p(REPO + "/main/")

    def grow():
        fd = os.open(base + "allocated.bin", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, b"head")
            res = [errno_of(os.posix_fallocate, fd, 0, MiB), os.fstat(fd).st_size,
                   errno_of(os.posix_fallocate, fd, 4, 10), os.fstat(fd).st_size,
                   fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, 2 * MiB),
                   fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096),
                   os.pread(fd, 8, 0)]
            os.fsync(fd)
            return res
        finally:
            os.close(fd)
    res, err = with_timeout(grow, TOOL_TIMEOUT)
    T.ok(err is None, "a file written, fallocated and fsynced", err)
    res = res or [None] * 7
    T.eq(res[0], 0, "posix_fallocate of a file open for writing succeeds")
    T.eq(res[1], MiB, "and grows it")
    T.eq(res[2:4], [0, MiB], "inside the file: succeeds, the size stays")
    T.eq(res[4], errno.EOPNOTSUPP, "FALLOC_FL_KEEP_SIZE is EOPNOTSUPP")
    T.eq(res[5], errno.EOPNOTSUPP, "FALLOC_FL_PUNCH_HOLE is EOPNOTSUPP")
    T.eq(res[6], b"head\0\0\0\0", "the bytes written stay, the rest reads zeros")
    want = b"head" + bytes(MiB - 4)
    got = downloaded(hub, "allocated.bin")
    T.ok(got is not None and sha256(got) == sha256(want), "the Hub has the grown file, same sha256")
    fd = os.open(base + "config.json", os.O_RDONLY)
    try:
        T.eq(errno_of(os.posix_fallocate, fd, 0, 10), errno.EBADF, "posix_fallocate of a file open for reading: EBADF")
    finally:
        os.close(fd)


def test_mmap(hub, m):
    base = m.p(REPO + "/main/")
    size = 64 * KiB

    def new_file():
        fd = os.open(base + "mapped-new.bin", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, bytes(size))
            mm = mmap.mmap(fd, size)  # MAP_SHARED, read and write
            try:
                mm[0:5] = b"hello"
                seen_by_read = os.pread(fd, 5, 0)
                os.pwrite(fd, b"WORLD", 100)
                seen_by_map = bytes(mm[100:105])
                other = os.open(base + "mapped-new.bin", os.O_RDONLY)
                try:
                    seen_by_other = os.pread(other, 5, 0)
                finally:
                    os.close(other)
                mm[size - 3:] = b"end"
                mm.flush()  # msync(MS_SYNC): the kernel writes the pages back, then fsync
            finally:
                mm.close()
            return seen_by_read, seen_by_map, seen_by_other
        finally:
            os.close(fd)
    n = len(commits(hub))
    res, err = with_timeout(new_file, TOOL_TIMEOUT)
    T.ok(err is None, "mmap(MAP_SHARED) of a new file open O_RDWR, writes through the map, msync", err)
    res = res or (None, None, None)
    T.eq(res[0], b"hello", "read() sees a write through the map")
    T.eq(res[1], b"WORLD", "the map sees a write()")
    T.eq(res[2], b"hello", "another open file sees the write through the map")
    want = bytearray(size)
    want[0:5] = b"hello"
    want[100:105] = b"WORLD"
    want[size - 3:] = b"end"
    got = downloaded(hub, "mapped-new.bin")
    T.ok(got is not None and sha256(got) == sha256(bytes(want)), "msync committed the map's bytes: same sha256 on the Hub")
    T.ok(len(commits(hub)) > n, "in a commit")

    # a committed file of the tree, opened r+ and mapped
    old = m.read(REPO + "/main/config.json")

    def tree_file():
        with open(base + "config.json", "r+b") as f:
            mm = mmap.mmap(f.fileno(), 0)
            try:
                mm[0:1] = b"["
                mm.flush()
            finally:
                mm.close()
    _, err = with_timeout(tree_file, TOOL_TIMEOUT)
    T.ok(err is None, "mmap(MAP_SHARED) of a file of the tree opened r+, msync", err)
    T.eq(downloaded(hub, "config.json"), b"[" + old[1:], "the Hub has the mapped change")
    T.eq(m.read(REPO + "/main/config.json"), b"[" + old[1:], "and the view reads it")

    # a staged file (closed, not committed), mapped read-only and shared
    T.ok(write_file(base + "mapped-staged.txt", b"staged, not committed\n", fsync=False) is None, "a staged file")

    def staged_map():
        with open(base + "mapped-staged.txt", "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
            try:
                return bytes(mm[:])
            finally:
                mm.close()
    got, err = with_timeout(staged_map, TOOL_TIMEOUT)
    T.ok(err is None and got == b"staged, not committed\n", "mmap(MAP_SHARED, PROT_READ) of a staged file reads it", err)

    # a write through one open file is seen through another one's map
    def two_handles():
        with open(base + "mapped-staged.txt", "r+b") as w, open(base + "mapped-staged.txt", "rb") as r:
            mm = mmap.mmap(r.fileno(), 0, prot=mmap.PROT_READ)
            try:
                before = bytes(mm[0:6])
                w.write(b"STAGED")
                w.flush()
                return before, bytes(mm[0:6])
            finally:
                mm.close()
    got, err = with_timeout(two_handles, TOOL_TIMEOUT)
    T.ok(err is None and got == (b"staged", b"STAGED"), "a read-only map sees a write() through another open file", (got, err))

    # the same file through two views of the branch: two nodes, one content
    def two_views():
        pinned = m.p(REPO + "@main/mapped-staged.txt")
        with open(pinned, "rb") as r:
            mm = mmap.mmap(r.fileno(), 0, prot=mmap.PROT_READ)
            try:
                before = bytes(mm[0:6])
                with open(base + "mapped-staged.txt", "r+b") as w:
                    w.write(b"second")
                    w.flush()
                seen = wait_for(lambda: bytes(mm[0:6]) == b"second", 10)
                return before, seen, os.pread(r.fileno(), 6, 0)
            finally:
                mm.close()
    got, err = with_timeout(two_views, TOOL_TIMEOUT)
    T.ok(err is None and got == (b"STAGED", True, b"second"),
         "a map through NS/REPO@main sees a write through NS/REPO/main", (got, err))

    if not os.path.exists(SYSTEM_PYTHON) or \
            subprocess.run([SYSTEM_PYTHON, "-c", "import numpy"], capture_output=True).returncode != 0:
        T.ok(True, "# SKIP numpy.memmap: %s has no numpy (Debian: python3-numpy)" % SYSTEM_PYTHON)
        return
    floats = 4096
    T.ok(write_file(base + "weights.f32", bytes(4 * floats)) is None, "a file of zero float32 is committed")
    script = ("import numpy as np, sys\n"
              "mm = np.memmap(sys.argv[1], dtype=np.float32, mode='r+')\n"
              "mm[:100] = np.arange(100, dtype=np.float32)\n"
              "mm[-1] = 42.5\n"
              "mm.flush()\n"
              "print(float(mm[99]), float(np.fromfile(sys.argv[1], dtype=np.float32)[-1]))\n")
    r = subprocess.run([SYSTEM_PYTHON, "-c", script, base + "weights.f32"], capture_output=True, timeout=TOOL_TIMEOUT)
    T.ok(r.returncode == 0 and r.stdout.split() == [b"99.0", b"42.5"],
         "numpy.memmap(mode='r+'): writes, flush, np.fromfile sees them", r.stdout + r.stderr)
    want = bytearray(4 * floats)
    want[:400] = struct.pack("<100f", *range(100))
    want[-4:] = struct.pack("<f", 42.5)
    got = downloaded(hub, "weights.f32")
    T.ok(got is not None and sha256(got) == sha256(bytes(want)), "memmap.flush committed the bytes: same sha256 on the Hub")


def test_inodes(hub, m):
    base = m.p(REPO + "/main/")

    T.ok(write_file(base + "ino-a.txt", b"a file\n", fsync=False) is None, "a staged file")
    ino = os.stat(base + "ino-a.txt").st_ino
    T.ok(write_file(base + "ino-a.txt", b"more\n", fsync=False, mode="ab") is None, "written again")
    T.eq(os.stat(base + "ino-a.txt").st_ino, ino, "a write keeps st_ino")
    os.rename(base + "ino-a.txt", base + "ino-b.txt")
    T.eq(os.stat(base + "ino-b.txt").st_ino, ino, "rename of a staged file keeps st_ino")
    T.eq(errno_of(os.stat, base + "ino-a.txt"), errno.ENOENT, "the old name is gone")
    T.ok(write_file(base + "ino-a.txt", b"another file\n", fsync=False) is None, "a new file under the old name")
    T.ok(os.stat(base + "ino-a.txt").st_ino != ino, "is another file: another st_ino")

    T.ok(write_file(base + "ino-c.txt", b"committed\n") is None, "a committed file")
    ino = os.stat(base + "ino-c.txt").st_ino
    os.rename(base + "ino-c.txt", base + "ino-d.txt")
    T.eq(os.stat(base + "ino-d.txt").st_ino, ino, "rename of a committed file keeps st_ino")
    T.ok(fsync_path(base) is None, "the rename is committed")
    T.eq(os.stat(base + "ino-d.txt").st_ino, ino, "and so does the commit")

    # rename over a file that is open: the open one is unlinked
    T.ok(write_file(base + "ino-e.txt", b"source\n", fsync=False) is None and
         write_file(base + "ino-f.txt", b"target\n", fsync=False) is None, "two files")
    src_ino = os.stat(base + "ino-e.txt").st_ino
    fd = os.open(base + "ino-f.txt", os.O_RDONLY)
    try:
        os.rename(base + "ino-e.txt", base + "ino-f.txt")
        T.eq(os.stat(base + "ino-f.txt").st_ino, src_ino, "rename over a file: the target name has the source's st_ino")
        T.eq(os.fstat(fd).st_nlink, 0, "the replaced file, still open, has nlink 0")
        T.eq(os.pread(fd, 7, 0), b"target\n", "and its bytes")
    finally:
        os.close(fd)

    # unlink of an open file (pjdfstest unlink/14.t)
    def open_unlinked():
        fd = os.open(base + "ino-open.txt", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.write(fd, b"hello")
            T.eq(os.fstat(fd).st_nlink, 1, "an open file has nlink 1")
            os.unlink(base + "ino-open.txt")
            st = os.fstat(fd)
            T.ok(st.st_nlink == 0 and st.st_size == 5, "fstat after unlink: nlink 0, the size written",
                 (st.st_nlink, st.st_size))
            os.write(fd, b" world")
            T.eq(os.pread(fd, 11, 0), b"hello world", "it is still read and written")
            T.eq(os.fstat(fd).st_size, 11, "and grows")
        finally:
            os.close(fd)
    _, err = with_timeout(open_unlinked, TOOL_TIMEOUT)
    T.ok(err is None, "an open file unlinked", err)
    T.eq(errno_of(os.stat, base + "ino-open.txt"), errno.ENOENT, "gone from the view")

    # directories: st_ino across a rename, nlink 2 + subdirectories
    os.mkdir(base + "nl")
    T.eq(os.stat(base + "nl").st_nlink, 2, "a new directory has nlink 2")
    os.mkdir(base + "nl/a")
    os.mkdir(base + "nl/b")
    os.mkdir(base + "nl2")
    T.eq(os.stat(base + "nl").st_nlink, 4, "with two subdirectories 4")
    dino = os.stat(base + "nl/a").st_ino
    os.rename(base + "nl/a", base + "nl2/a")
    T.eq(os.stat(base + "nl2/a").st_ino, dino, "rename of a directory keeps st_ino")
    T.eq((os.stat(base + "nl").st_nlink, os.stat(base + "nl2").st_nlink), (3, 3),
         "rename of a directory moves a link from the old parent to the new one")
    T.ok(write_file(base + "nl/b/f.txt", b"x\n", fsync=False) is None, "a file in a subdirectory")
    T.eq(os.stat(base + "nl").st_nlink, 3, "files do not count")
    os.rmdir(base + "nl2/a")
    T.eq(os.stat(base + "nl2").st_nlink, 2, "rmdir takes the link away")
    subdirs = [e for e in os.scandir(base) if e.is_dir(follow_symlinks=False)]
    T.eq(os.lstat(base.rstrip("/")).st_nlink, 2 + len(subdirs),
         "the branch root: 2 + its %d subdirectories (tree and overlay)" % len(subdirs))
    T.ok(fsync_path(base) is None, "the changes are committed: the branch has a new tree")
    for rel in ("by-tar", "by-tar/sub"):
        subdirs = [e for e in os.scandir(base + rel) if e.is_dir(follow_symlinks=False)]
        T.ok(wait_for(lambda: os.lstat(base + rel).st_nlink == 2 + len(subdirs), 5),
             "%s, a directory of the tree: 2 + its %d subdirectories once listed" % (rel, len(subdirs)),
             os.lstat(base + rel).st_nlink)
    T.eq(os.lstat(m.p(REPO)).st_nlink, 1, "a repo directory (above a revision): 1, not counted")


def test_reopen(hub, m):
    """The kernel names a renamed file by the node it had: reopening an open file (/proc/self/fd)
    after its rename was committed, and after a rename undone, reads it."""
    base = m.p(REPO + "/main/")
    T.ok(write_file(base + "reopen-a.txt", b"reopen me\n") is None, "a committed file")

    def committed_rename():
        fd = os.open(base + "reopen-a.txt", os.O_RDONLY)
        try:
            os.rename(base + "reopen-a.txt", base + "reopen-b.txt")
            dfd = os.open(base, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
            with open("/proc/self/fd/%d" % fd, "rb") as f:
                return f.read()
        finally:
            os.close(fd)
    got, err = with_timeout(committed_rename, TOOL_TIMEOUT)
    T.ok(err is None and got == b"reopen me\n", "an open file renamed, the rename committed: reopened, it reads", err)

    def undone_rename():
        os.rename(base + "reopen-b.txt", base + "reopen-c.txt")
        os.stat(base + "reopen-c.txt")  # a node for the new name
        fd = os.open(base + "reopen-c.txt", os.O_RDONLY)
        try:
            os.rename(base + "reopen-c.txt", base + "reopen-b.txt")  # back: the move is undone
            with open("/proc/self/fd/%d" % fd, "rb") as f:
                return f.read()
        finally:
            os.close(fd)
    got, err = with_timeout(undone_rename, TOOL_TIMEOUT)
    T.ok(err is None and got == b"reopen me\n", "an open file renamed back (the move undone): reopened, it reads", err)


def view_of(base, name):
    """What readdir and stat say of @name in @base: (kind in the listing, kind by stat)."""
    listed = {e.name: ("dir" if e.is_dir(follow_symlinks=False) else "file") for e in os.scandir(base)}
    try:
        st = os.lstat(os.path.join(base, name))
        by_stat = "dir" if stat.S_ISDIR(st.st_mode) else "file"
    except FileNotFoundError:
        by_stat = None
    return listed.get(name), by_stat


def agree(base, name, want, what):
    """readdir and stat agree that @name is @want ("file", "dir", None), and unlink/rmdir refuse the other kind."""
    T.eq(view_of(base, name), (want, want), "%s: readdir and stat say %s" % (what, want or "nothing"))
    path = os.path.join(base, name)
    if want == "dir":
        T.eq(errno_of(os.unlink, path), errno.EISDIR, "%s: unlink is EISDIR" % what)
    elif want == "file":
        T.eq(errno_of(os.rmdir, path), errno.ENOTDIR, "%s: rmdir is ENOTDIR" % what)
    else:
        T.eq((errno_of(os.unlink, path), errno_of(os.rmdir, path)), (errno.ENOENT, errno.ENOENT),
             "%s: unlink and rmdir are ENOENT" % what)


def test_file_to_dir(hub, m):
    base = m.p(REPO + "/main/")
    T.ok(write_file(base + "ghost", b"a file\n") is None, "a file is committed")
    os.unlink(base + "ghost")
    agree(base, "ghost", None, "unlinked")
    T.eq(errno_of(os.mkdir, base + "ghost"), 0, "mkdir where the file was")
    agree(base, "ghost", "dir", "mkdir over an unlinked committed file")
    T.ok(write_file(base + "ghost/inside.txt", b"inside\n", fsync=False) is None, "a file into the directory")
    T.eq(os.listdir(base + "ghost"), ["inside.txt"], "the directory lists it")
    agree(base, "ghost", "dir", "with a file in it")
    T.ok(fsync_path(base) is None, "fsync commits the deletion and the new file")
    tree = hub_tree(hub)
    T.ok(tree.get("ghost", {}).get("type") == "directory" and "ghost/inside.txt" in tree,
         "the Hub has a folder with the file where the file was", tree.get("ghost"))
    agree(base, "ghost", "dir", "after the commit")

    # a file only the overlay has, under a directory made where the tree has a file
    T.ok(write_file(base + "ghost2", b"another file\n") is None, "another file is committed")
    os.unlink(base + "ghost2")
    os.mkdir(base + "ghost2")
    T.ok(write_file(base + "ghost2/tmp.txt", b"short-lived\n", fsync=False) is None, "a file into it")
    os.unlink(base + "ghost2/tmp.txt")
    agree(base + "ghost2", "tmp.txt", None, "unlinked inside")
    T.eq(errno_of(os.rmdir, base + "ghost2"), 0, "rmdir of the directory")
    agree(base, "ghost2", None, "removed again")
    T.ok(fsync_path(base) is None, "fsync commits the deletion")
    T.ok(not any(p == "ghost2" or p.startswith("ghost2/") for p in hub_tree(hub)), "the Hub has nothing there")


def test_dir_to_file(hub, m):
    base = m.p(REPO + "/main/")
    os.mkdir(base + "shape")
    T.ok(write_file(base + "shape/z.txt", b"z\n") is None, "a folder with a file is committed")
    os.unlink(base + "shape/z.txt")
    T.eq(errno_of(os.rmdir, base + "shape"), 0, "rmdir of the emptied folder")
    agree(base, "shape", None, "rmdir of a folder of the tree")
    T.ok(write_file(base + "shape", b"now a file\n", fsync=False) is None, "a file where the folder was")
    agree(base, "shape", "file", "a file over a removed folder")
    T.eq(m.read(REPO + "/main/shape"), b"now a file\n", "it reads its bytes")
    T.ok(fsync_path(base) is None, "fsync commits")
    tree = hub_tree(hub)
    T.ok(tree.get("shape", {}).get("type") == "file" and "shape/z.txt" not in tree,
         "the Hub has the file where the folder was", tree.get("shape"))
    T.eq(downloaded(hub, "shape"), b"now a file\n", "with its bytes")
    os.unlink(base + "shape")
    T.eq(errno_of(os.mkdir, base + "shape"), 0, "and a directory where that file was")
    agree(base, "shape", "dir", "a directory again")


def test_move_back_while_committing(hub):
    """mv of a file back where it came from while the worker commits the first move."""
    with Mount(hub, token=ALICE_WRITE_TOKEN, args=["--commit-delay", "1"]) as m:
        base = m.p(REPO + "/main/")
        want = hub_tree(hub)["model.safetensors"]["lfs"]["oid"]
        hub.set_faults([{"method": "POST", "path": "/commit/main", "action": "stall", "seconds": 4, "count": 1}])
        try:
            T.ok(rename(base + "model.safetensors", base + "moving.safetensors") is None, "an LFS file is moved")
            time.sleep(2.5)  # the quiet period is over: the commit is under way, held up by the Hub
            rc, out = run(["mv", base + "moving.safetensors", base + "model.safetensors"])
            T.eq(rc, 0, "mv back meanwhile exits 0 (it copies: the move cannot be undone now)" +
                 ("" if rc == 0 else ": " + out[-300:]))
        finally:
            hub.clear_faults()
        got = m.read(REPO + "/main/model.safetensors")
        T.eq(sha256(got), want, "the view reads the file where it was")
        T.ok(fsync_path(base) is None, "fsync commits")
        tree = hub_tree(hub)
        T.ok(tree.get("model.safetensors", {}).get("lfs", {}).get("oid") == want and "moving.safetensors" not in tree,
             "the Hub has the file where it was, not lost", sorted(p for p in tree if "safetensors" in p))
        m.unmount()
        check_sanitizers(m, "move back")


OTHER_UID = 65534
OTHER_SCRIPT = r"""
import errno, json, os, sys
base = sys.argv[1]
def err(fn, *args):
    try:
        fn(*args)
    except OSError as e:
        return errno.errorcode.get(e.errno, e.errno)
    return 0
def read(path):
    with open(path, "rb") as f:
        return f.read()
out = {
    "uid": os.getuid(),
    "read": err(read, base + "config.json"),
    "list": err(os.listdir, base),
    "write": err(os.open, base + "owned.txt", os.O_WRONLY),
    "trunc": err(os.truncate, base + "owned.txt", 0),
    "create": err(os.open, base + "theirs.txt", os.O_WRONLY | os.O_CREAT, 0o644),
    "mkdir": err(os.mkdir, base + "their-dir"),
    "unlink": err(os.unlink, base + "owned.txt"),
    "rename": err(os.rename, base + "owned.txt", base + "renamed.txt"),
    "chmod": err(os.chmod, base + "owned.txt", 0o600),
    "utime": err(os.utime, base + "owned.txt", (1, 1)),
    "setxattr": err(os.setxattr, base.rstrip("/"), "user.hub.message", b"theirs"),
}
print(json.dumps(out))
"""


def mount_options(path):
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4 and fields[4] == path:
                return line
    return ""


def as_other_user():
    os.setgroups([])
    os.setgid(OTHER_UID)
    os.setuid(OTHER_UID)


def test_allow_other(hub):
    with Mount(hub, token=ALICE_WRITE_TOKEN, args=["--commit-delay", "60"]) as m:
        T.ok("default_permissions" not in mount_options(m.path), "a mount without allow_other: no default_permissions")
        m.unmount()
    with Mount(hub, token=ALICE_WRITE_TOKEN, args=["--commit-delay", "60", "-o", "allow_other"]) as m:
        opts = mount_options(m.path)
        T.ok("allow_other" in opts and "default_permissions" in opts, "-o allow_other implies default_permissions", opts)
        os.chmod(os.path.dirname(m.path), 0o755)  # the test's directory, so that others reach the mount
        base = m.p(REPO + "/main/")
        T.ok(write_file(base + "owned.txt", b"the mounting user's\n") is None, "the mounting user writes")
        if os.getuid() != 0 or not os.path.exists(SYSTEM_PYTHON):
            T.ok(True, "# SKIP another user: the test runs as uid %d" % os.getuid())
            return
        r = subprocess.run([SYSTEM_PYTHON, "-c", OTHER_SCRIPT, base], capture_output=True, timeout=TOOL_TIMEOUT,
                           preexec_fn=as_other_user, cwd="/")
        try:
            got = json.loads(r.stdout)
        except ValueError:
            got = {}
        T.ok(got.get("uid") == OTHER_UID, "a process of uid %d" % OTHER_UID, r.stdout + r.stderr)
        T.eq((got.get("read"), got.get("list")), (0, 0), "another user reads files and lists directories")
        for op in ("write", "trunc", "create", "mkdir", "unlink", "rename", "setxattr"):
            T.eq(got.get(op), "EACCES", "another user: %s in a branch is EACCES" % op)
        T.eq((got.get("chmod"), got.get("utime")), ("EPERM", "EPERM"),
             "another user: chmod and utimes of the owner's file are EPERM (the kernel's rule)")
        T.eq(m.read(REPO + "/main/owned.txt"), b"the mounting user's\n", "the file is untouched")
        T.ok(not os.path.exists(base + "theirs.txt") and not os.path.exists(base + "their-dir"),
             "nothing was created")
        T.ok(fsync_path(base) is None, "the branch is committed")
        tree = hub_tree(hub)
        T.ok("owned.txt" in tree and not any(p in tree for p in ("theirs.txt", "their-dir", "renamed.txt")),
             "the Hub has the owner's file only", sorted(tree))
        m.unmount()
        check_sanitizers(m, "allow_other")


def main():
    if not have_fuse():
        print("1..0 # SKIP no /dev/fuse or fusermount3")
        sys.exit(0)
    with LocalHub(seed=True) as hub:
        with Mount(hub, token=ALICE_WRITE_TOKEN, args=["--commit-delay", "60"]) as m:
            test_attributes(hub, m)
            test_copy_tools(hub, m)
            test_links(hub, m)
            test_fallocate(hub, m)
            test_mmap(hub, m)
            test_inodes(hub, m)
            test_reopen(hub, m)
            test_file_to_dir(hub, m)
            test_dir_to_file(hub, m)
            status = m.unmount()
            T.ok(status == 0, "the daemon exits 0 after unmount", m.stderr[-2000:])
            check_sanitizers(m, "tools")
        test_allow_other(hub)
        test_move_back_while_committing(hub)
    T.done()


if __name__ == "__main__":
    main()
