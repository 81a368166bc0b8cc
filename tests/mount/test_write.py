#!/usr/bin/env python3
"""Integration tests of writes through the mount against the local Hub (TAP).

Files written into a branch view become commits: fsync returns once the commit
is on the Hub, closed files of one branch are batched into one commit after the
quiet period, reads see the staged bytes before the commit, tags and commit
views stay read-only, a token without write rights keeps the data staged until
a later mount with a write token commits it, and a concurrent change to the
same path on the Hub is never overwritten.  mkdir NS/NAME creates a repo
(private unless --public-repos) whose main branch takes files; rename of a
file is one commit (an LFS file by reference, no upload), across views EXDEV;
mkdir in a branch is local until a file lands, rmdir of an empty directory
deletes the folder, of a non-empty one is ENOTEMPTY.
"""

import errno
import os
import subprocess
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
        T.eq(titles(hub)[0], "Add %s with hubfs" % name, "%s: the commit message" % name)
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

    # the kernel caches the pages and size of what was read; an overwrite
    # through another view of the branch must not leave them stale
    pinned = "%s@main/" % REPO
    old_gen = m.read(base + "docs/read me.md")
    T.eq(m.read(pinned + "docs/read me.md"), old_gen, "a file is read through both views of main")
    longer = old_gen + b"\n" + b"x" * 5000 + b"\n"
    T.ok(write_file(m.p(pinned + "docs/read me.md"), longer) is None,
         "overwritten through NS/REPO@main with longer content, fsync")
    T.eq(sha256(m.read(base + "docs/read me.md")), sha256(longer),
         "NS/REPO/main shows the committed bytes at once (not the cached old ones)")
    T.eq(os.stat(m.p(base + "docs/read me.md")).st_size, len(longer), "and the new size")
    T.eq(sha256(m.read(pinned + "docs/read me.md")), sha256(longer), "so does the view it was written through")

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

    T.eq(errno_of(os.chmod, m.p(base + "small.txt"), 0o777), 0, "chmod is accepted")
    T.eq(os.stat(m.p(base + "small.txt")).st_mode & 0o777, 0o644, "and not kept: the Hub has no modes")
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


def repo_info(hub, rtype, repo_id, token=ALICE_WRITE_TOKEN):
    """(status, info) of a repo from the Hub's API."""
    status, body, _ = hub.json("GET", "/api/%ss/%s" % (rtype, repo_id), token)
    return status, body


def hub_bytes(hub, rtype, repo_id, path):
    prefix = "" if rtype == "model" else "/%ss" % rtype
    status, headers, body = hub.request("GET", "%s/%s/resolve/main/%s" % (prefix, repo_id, path), ALICE_WRITE_TOKEN)
    if status == 302:
        status, headers, body = hub.request("GET", None, url=headers["location"], timeout=120)
    return body if status == 200 else None


def test_mkdir_repo(hub, m, public=False, suffix=""):
    vis = "public" if public else "private"
    for rtype, top in (("model", ""), ("dataset", "datasets/")):
        repo_id = "alice/new-%s%s" % (rtype, suffix)
        T.eq(repo_info(hub, rtype, repo_id)[0], 404, "%s: not on the Hub before" % repo_id)
        err = None
        try:
            os.mkdir(m.p(top + repo_id))
        except OSError as e:
            err = e
        T.ok(err is None, "mkdir %s%s creates a %s repo" % (top, repo_id, rtype), err)
        status, info = repo_info(hub, rtype, repo_id)
        T.ok(status == 200 and info.get("private") is (not public), "%s exists on the Hub, %s" % (repo_id, vis),
             (status, info))
        if not public:
            T.ok(repo_info(hub, rtype, repo_id, token=None)[0] in (401, 404), "%s: anonymous callers do not see it" % repo_id)
        T.ok(os.path.isdir(m.p(top + repo_id)), "%s: the repo directory is there at once" % repo_id)
        T.ok("new-%s%s" % (rtype, suffix) in os.listdir(m.p(top + "alice")), "%s: the namespace lists it at once" % repo_id)
        T.ok("main" in os.listdir(m.p(top + repo_id)), "%s: its main branch appears" % repo_id)
        data = ("the first file of %s\n" % repo_id).encode()
        err = write_file(m.p(top + repo_id + "/main/first.txt"), data)
        T.ok(err is None, "%s: a file copied into main with fsync returns 0" % repo_id, err)
        T.eq(hub_bytes(hub, rtype, repo_id, "first.txt"), data, "%s: the file lands on the Hub" % repo_id)
        T.eq(errno_of(os.mkdir, m.p(top + repo_id)), errno.EEXIST, "%s: mkdir again is EEXIST" % repo_id)
        T.eq(errno_of(os.rmdir, m.p(top + repo_id)), errno.EPERM, "%s: rmdir of a repo is EPERM" % repo_id)
        T.eq(repo_info(hub, rtype, repo_id)[0], 200, "%s: and the repo stays" % repo_id)
    T.eq(errno_of(os.mkdir, m.p(REPO)), errno.EEXIST, "mkdir of an existing repo is EEXIST")
    space = "alice/new-space%s" % suffix
    T.eq(errno_of(os.mkdir, m.p("spaces/" + space)), 0, "mkdir spaces/%s creates a Space" % space)
    status, info = repo_info(hub, "space", space)
    T.ok(status == 200 and info.get("sdk") == "static" and info.get("private") is (not public),
         "%s: a static Space on the Hub, %s" % (space, vis), (status, info))


def test_public_repos(hub):
    with Mount(hub, token=ALICE_WRITE_TOKEN, args=["--commit-delay", "1", "--public-repos"]) as m:
        test_mkdir_repo(hub, m, public=True, suffix="-public")
        m.unmount()
        check_sanitizers(m, "public repos")


def hub_tree(hub, repo=REPO):
    """path -> entry of the Hub's tree of main (recursive)."""
    status, body, _ = hub.json("GET", "/api/models/%s/tree/main?recursive=true" % repo, ALICE_WRITE_TOKEN)
    assert status == 200, status
    return {e["path"]: e for e in body}


def rename(a, b):
    try:
        os.rename(a, b)
    except OSError as e:
        return e
    return None


def test_rename(hub, m):
    base = "%s/main/" % REPO
    # a regular file of the tree
    before = hub_tree(hub)
    T.ok("tokenizer.json" in before and "lfs" not in before["tokenizer.json"], "tokenizer.json is a regular file on the Hub")
    data = downloaded(hub, "tokenizer.json")
    n = len(commits(hub))
    err = rename(m.p(base + "tokenizer.json"), m.p(base + "tokenizer-renamed.json"))
    T.ok(err is None, "rename of a regular file", err)
    T.ok(not os.path.exists(m.p(base + "tokenizer.json")), "the old name is gone from the view at once")
    T.ok("tokenizer-renamed.json" in os.listdir(m.p(base)) and "tokenizer.json" not in os.listdir(m.p(base)),
         "the listing shows the new name only")
    T.eq(m.read(base + "tokenizer-renamed.json"), data, "the new name reads the same bytes at once")
    T.ok(fsync_path(m.p(base)) is None, "fsync of the branch directory commits the rename")
    after = hub_tree(hub)
    T.ok("tokenizer.json" not in after, "the Hub's tree: the old path is gone")
    T.eq(after.get("tokenizer-renamed.json", {}).get("oid"), before["tokenizer.json"]["oid"],
         "the Hub's tree: the new path has the same oid")
    T.eq(len(commits(hub)), n + 1, "a rename is exactly one commit")

    # an LFS file of the tree: moved by reference
    T.ok("lfs" in before.get("weights-20m.bin", {}), "weights-20m.bin is an LFS file on the Hub")
    sha = before["weights-20m.bin"]["lfs"]["oid"]
    n = len(commits(hub))
    hub.clear_log()
    err = rename(m.p(base + "weights-20m.bin"), m.p(base + "weights-renamed.bin"))
    T.ok(err is None, "rename of an LFS file", err)
    T.ok(not os.path.exists(m.p(base + "weights-20m.bin")), "the old name is gone at once")
    T.eq(os.stat(m.p(base + "weights-renamed.bin")).st_size, 20 * MiB, "the new name has the size at once")
    T.eq(sha256(m.read(base + "weights-renamed.bin")), sha, "and reads the same bytes before the commit")
    T.ok(fsync_path(m.p(base + "weights-renamed.bin")) is None, "fsync of the renamed file commits")
    after = hub_tree(hub)
    T.ok("weights-20m.bin" not in after, "the Hub's tree: the old LFS path is gone")
    T.eq(after.get("weights-renamed.bin", {}).get("lfs", {}).get("oid"), sha,
         "the Hub's tree: the new path has the same sha256")
    T.eq(len(commits(hub)), n + 1, "the LFS rename is exactly one commit")
    T.eq(titles(hub)[0], "Rename weights-20m.bin to weights-renamed.bin with hubfs", "its message")
    log = hub.log()
    T.eq([r["path"] for r in log if r["method"] == "PUT"], [], "no upload (PUT) for the LFS rename")
    T.eq([r["path"] for r in log if "preupload" in r["path"] or "/info/lfs/" in r["path"]], [],
         "neither preupload nor the LFS batch API")
    T.eq(sha256(m.read(base + "weights-renamed.bin")), sha, "the renamed file reads back after the commit")

    # a staged file, renamed before its commit, over an existing name
    T.ok(write_file(m.p(base + "draft.txt"), b"draft\n", fsync=False) is None, "a new file is closed")
    err = rename(m.p(base + "draft.txt"), m.p(base + "batch-c.bin"))
    T.ok(err is None, "and renamed over an existing file before its commit", err)
    T.eq(m.read(base + "batch-c.bin"), b"draft\n", "the target shows the renamed content at once")
    T.ok(fsync_path(m.p(base)) is None, "fsync of the directory")
    T.ok(downloaded(hub, "batch-c.bin") == b"draft\n" and downloaded(hub, "draft.txt") is None,
         "the Hub has the content under the new name only")

    # moved and moved back before the commit: nothing to commit, nothing uploaded
    lfs = hub_tree(hub).get("weights-renamed.bin", {}).get("lfs", {}).get("oid")
    n = len(commits(hub))
    hub.clear_log()
    T.ok(rename(m.p(base + "weights-renamed.bin"), m.p(base + "weights-away.bin")) is None
         and rename(m.p(base + "weights-away.bin"), m.p(base + "weights-renamed.bin")) is None,
         "an LFS file renamed and renamed back before the commit")
    T.ok(not os.path.exists(m.p(base + "weights-away.bin")) and
         sha256(m.read(base + "weights-renamed.bin")) == lfs, "the view shows it where it was, same bytes")
    T.ok(fsync_path(m.p(base)) is None, "fsync of the directory")
    T.eq(len(commits(hub)), n, "no commit: the move was undone")
    T.eq([r["path"] for r in hub.log() if r["method"] == "PUT"], [], "and nothing uploaded")

    # a file open for writing follows its rename: later writes land under the new name
    def follow():
        with open(m.p(base + "open-while-moved.txt"), "wb") as f:
            f.write(b"before the rename\n")
            f.flush()
            os.rename(m.p(base + "open-while-moved.txt"), m.p(base + "moved-while-open.txt"))
            f.write(b"after the rename\n")
            f.flush()
            os.fsync(f.fileno())
    _, err = with_timeout(follow, FSYNC_TIMEOUT)
    T.ok(err is None, "write, rename while open, write again, fsync", err)
    T.eq(m.read(base + "moved-while-open.txt"), b"before the rename\nafter the rename\n",
         "the view shows both writes under the new name")
    T.ok(fsync_path(m.p(base)) is None, "fsync of the directory")
    T.eq(downloaded(hub, "moved-while-open.txt"), b"before the rename\nafter the rename\n",
         "the Hub has both writes under the new name")
    T.ok(downloaded(hub, "open-while-moved.txt") is None and not os.path.exists(m.p(base + "open-while-moved.txt")),
         "and nothing under the old name")

    # across branches and repos, and a missing source
    T.eq(errno_of(os.rename, m.p(base + "twice.txt"), m.p("%s/v1.0/twice.txt" % REPO)), errno.EXDEV,
         "rename into a tag view is EXDEV")
    T.eq(errno_of(os.rename, m.p(base + "twice.txt"), m.p("alice/new-model/main/twice.txt")), errno.EXDEV,
         "rename into another repo is EXDEV")
    T.eq(errno_of(os.rename, m.p(base + "no-such-file"), m.p(base + "x")), errno.ENOENT,
         "rename of a missing file is ENOENT")
    T.ok(os.path.exists(m.p(base + "twice.txt")), "a refused rename leaves the file")


def test_dirs(hub):
    with Mount(hub, token=ALICE_WRITE_TOKEN, args=["--commit-delay", "60"]) as m:
        base = "%s/main/" % REPO
        err = None
        try:
            os.mkdir(m.p(base + "newdir"))
        except OSError as e:
            err = e
        T.ok(err is None, "mkdir inside a branch", err)
        T.ok(os.path.isdir(m.p(base + "newdir")) and "newdir" in os.listdir(m.p(base)),
             "the directory shows in the view at once")
        T.eq(os.listdir(m.p(base + "newdir")), [], "empty")
        T.eq(errno_of(os.mkdir, m.p(base + "newdir")), errno.EEXIST, "mkdir again is EEXIST")
        T.eq(errno_of(os.mkdir, m.p(base + "README.md")), errno.EEXIST, "mkdir over a file is EEXIST")
        data = b"a file in a new directory\n"
        T.ok(write_file(m.p(base + "newdir/f.txt"), data) is None, "a file into it, with fsync")
        T.eq(downloaded(hub, "newdir/f.txt"), data, "the Hub has the file in the new directory")
        T.eq(errno_of(os.rmdir, m.p(base + "newdir")), errno.ENOTEMPTY, "rmdir of a non-empty directory is ENOTEMPTY")
        T.eq(errno_of(os.rmdir, m.p(base + "README.md")), errno.ENOTDIR, "rmdir of a file is ENOTDIR")

        os.mkdir(m.p(base + "a"))
        os.mkdir(m.p(base + "a/b"))
        T.ok(os.path.isdir(m.p(base + "a/b")), "nested local directories")
        T.eq(errno_of(os.rmdir, m.p(base + "a")), errno.ENOTEMPTY, "rmdir of a local directory holding one: ENOTEMPTY")
        T.eq(errno_of(os.rmdir, m.p(base + "a/b")), 0, "rmdir of an empty local directory")
        T.eq(errno_of(os.rmdir, m.p(base + "a")), 0, "and of its parent, empty now")
        T.ok(not os.path.exists(m.p(base + "a")) and "a" not in os.listdir(m.p(base)), "gone from the view")

        n = len(commits(hub))
        os.unlink(m.p(base + "newdir/f.txt"))
        T.eq(os.listdir(m.p(base + "newdir")), [], "the directory of the Hub is empty in the view after an unlink")
        T.eq(errno_of(os.rmdir, m.p(base + "newdir")), 0, "rmdir of it")
        T.ok(not os.path.exists(m.p(base + "newdir")) and "newdir" not in os.listdir(m.p(base)),
             "gone from the view at once")
        T.ok(fsync_path(m.p(base)) is None, "fsync of the branch directory commits")
        tree = hub_tree(hub)
        T.ok(not any(p == "newdir" or p.startswith("newdir/") for p in tree), "the folder is gone from the Hub's tree")
        T.eq(len(commits(hub)), n + 1, "in one commit")
        T.eq(titles(hub)[0], "Delete newdir with hubfs", "a folder deletion")
        m.unmount()
        check_sanitizers(m, "directories")


def test_dir_rename(hub):
    with Mount(hub, token=ALICE_WRITE_TOKEN, args=["--commit-delay", "60"]) as m:
        base = "%s/main/" % REPO
        big = os.urandom(2 * MiB)
        os.makedirs(m.p(base + "models/v1/sub"))
        T.ok(write_file(m.p(base + "models/v1/a.txt"), b"regular a\n", fsync=False) is None
             and write_file(m.p(base + "models/v1/sub/b.txt"), b"regular b\n", fsync=False) is None
             and write_file(m.p(base + "models/v1/big.bin"), big, fsync=False) is None,
             "three files are written into models/v1")
        T.ok(fsync_path(m.p(base)) is None, "and committed")
        before = hub_tree(hub)
        T.ok("lfs" in before.get("models/v1/big.bin", {}) and "lfs" not in before.get("models/v1/a.txt", {"lfs": 1}),
             "the Hub has big.bin as LFS and a.txt as a regular file")
        os.mkdir(m.p(base + "models/v1/empty"))
        T.ok(write_file(m.p(base + "models/v1/staged.txt"), b"not committed yet\n", fsync=False) is None,
             "a local empty directory and a staged file join them")

        # a process whose working directory is the renamed directory
        sh = subprocess.Popen(["sh", "-c", "sleep 1.5; ls; cat a.txt sub/b.txt staged.txt"],
                              cwd=m.p(base + "models/v1"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        n = len(commits(hub))
        hub.clear_log()
        err = rename(m.p(base + "models/v1"), m.p(base + "models/v2"))
        T.ok(err is None, "rename of a directory", err)
        try:
            out, errout = sh.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            sh.kill()
            out, errout = sh.communicate()
        T.eq(out.split(b"\n"), [b"a.txt", b"big.bin", b"empty", b"staged.txt", b"sub",
                                   b"regular a", b"regular b", b"not committed yet", b""],
             "a process inside the directory lists and reads it after the rename")
        T.eq(sorted(os.listdir(m.p(base + "models"))), ["v2"], "the parent lists the new name only")
        T.ok(not os.path.exists(m.p(base + "models/v1")), "the old name is gone at once")
        T.eq(sorted(os.listdir(m.p(base + "models/v2"))), ["a.txt", "big.bin", "empty", "staged.txt", "sub"],
             "the new name lists every file and directory")
        T.eq(m.read(base + "models/v2/sub/b.txt"), b"regular b\n", "a file in a subdirectory reads at its new path")
        T.eq(sha256(m.read(base + "models/v2/big.bin")), sha256(big), "the LFS file reads at its new path")
        T.ok(fsync_path(m.p(base)) is None, "fsync of the branch commits the rename")
        T.eq(len(commits(hub)), n + 1, "a directory rename is ONE commit")
        after = hub_tree(hub)
        T.ok(not any(p.startswith("models/v1") for p in after), "the Hub's tree: models/v1 is gone")
        T.eq(after.get("models/v2/big.bin", {}).get("lfs", {}).get("oid"), before["models/v1/big.bin"]["lfs"]["oid"],
             "the LFS file moved with the same sha256")
        T.eq(after.get("models/v2/sub/b.txt", {}).get("oid"), before["models/v1/sub/b.txt"]["oid"],
             "a regular file moved with the same oid")
        T.eq(downloaded(hub, "models/v2/staged.txt"), b"not committed yet\n", "the staged file landed at its new path")
        T.eq([r["path"] for r in hub.log() if r["method"] == "PUT"], [], "the LFS file was not uploaded again")
        T.ok(os.path.isdir(m.p(base + "models/v2/empty")), "the empty local directory moved too")

        os.mkdir(m.p(base + "models/v3"))
        T.ok(write_file(m.p(base + "models/v3/c.txt"), b"c\n", fsync=False) is None, "another directory with a file")
        T.eq(errno_of(os.rename, m.p(base + "models/v2"), m.p(base + "models/v3")), errno.ENOTEMPTY,
             "rename over a non-empty directory is ENOTEMPTY")
        T.eq(errno_of(os.rename, m.p(base + "models/v2"), m.p(base + "models/v3/c.txt")), errno.ENOTDIR,
             "rename over a file is ENOTDIR")
        T.eq(errno_of(os.rename, m.p(base + "models/v2"), m.p(base + "models/v2/sub/inside")), errno.EINVAL,
             "rename into itself is EINVAL")
        T.eq(errno_of(os.rename, m.p(base + "models/v2"), m.p("alice/new-model/main/v2")), errno.EXDEV,
             "rename into another repo is EXDEV")
        os.mkdir(m.p(base + "models/v4"))
        T.eq(errno_of(os.rename, m.p(base + "models/v3"), m.p(base + "models/v4")), 0,
             "rename over an empty directory replaces it")
        T.eq(m.read(base + "models/v4/c.txt"), b"c\n", "and the file shows under the new name")
        T.ok(fsync_path(m.p(base)) is None and downloaded(hub, "models/v4/c.txt") == b"c\n"
             and downloaded(hub, "models/v3/c.txt") is None, "committed under the new name only")
        m.unmount()
        check_sanitizers(m, "directory rename")


def test_rename_resume(hub):
    cache = tempfile.mkdtemp(prefix="hubfs-write-cache-")
    sha = hub_tree(hub)["weights-renamed.bin"]["lfs"]["oid"]
    with Mount(hub, token=ALICE_READ_TOKEN, cache_dir=cache, args=["--commit-delay", "60"]) as m:
        base = "%s/main/" % REPO
        T.ok(rename(m.p(base + "weights-renamed.bin"), m.p(base + "weights-resumed.bin")) is None,
             "an LFS rename with a read-only token")
        err = fsync_path(m.p(base))
        T.ok(isinstance(err, OSError) and err.errno == errno.EACCES, "fsync is EACCES (%r)" % err)
        T.eq(os.stat(m.p(base + "weights-resumed.bin")).st_size, 20 * MiB, "the view keeps the renamed file")
        m.unmount()
        check_sanitizers(m, "rename, read-only token")
    with Mount(hub, token=ALICE_WRITE_TOKEN, cache_dir=cache, args=["--commit-delay", "1"]) as m:
        def moved():
            tree = hub_tree(hub)
            return "weights-renamed.bin" not in tree and \
                tree.get("weights-resumed.bin", {}).get("lfs", {}).get("oid") == sha
        T.ok(wait_for(moved, 30), "a mount with a write token resumes the rename and commits it")
        T.eq(sha256(m.read("%s/main/weights-resumed.bin" % REPO)), sha, "the view reads it")
        m.unmount()
        check_sanitizers(m, "rename resumed")
    os.system("rm -rf '%s'" % cache)


def test_readonly_views(hub, m):
    main = hub_commit(hub, "model", REPO, "main")
    for view in ("%s/v1.0" % REPO, "%s@v1.0" % REPO, "%s@%s" % (REPO, main), "%s/refs/pr/1" % REPO):
        T.eq(errno_of(os.open, m.p(view + "/new.txt"), os.O_WRONLY | os.O_CREAT, 0o644), errno.EROFS,
             "create in %s is EROFS" % view)
        T.eq(errno_of(os.open, m.p(view + "/config.json"), os.O_WRONLY), errno.EROFS,
             "open for writing in %s is EROFS" % view)
        T.eq(errno_of(os.unlink, m.p(view + "/config.json")), errno.EROFS, "unlink in %s is EROFS" % view)
    T.eq(errno_of(os.mkdir, m.p("%s/v1.0/newdir" % REPO)), errno.EROFS, "mkdir in a tag view is EROFS")
    T.eq(errno_of(os.mkdir, m.p("%s/refs/pr/9" % REPO)), errno.EROFS,
         "mkdir of a pull request is EROFS (mkdir of a branch: test_history.py)")


def test_read_token(hub):
    cache = tempfile.mkdtemp(prefix="hubfs-write-cache-")
    data = b"written with a read-only token\n"
    with Mount(hub, token=ALICE_READ_TOKEN, cache_dir=cache, args=["--commit-delay", "60"]) as m:
        path = m.p("%s/main/readonly.txt" % REPO)
        err = write_file(path, data)
        T.ok(isinstance(err, OSError) and err.errno == errno.EACCES, "fsync with a read-only token is EACCES (%r)" % err)
        T.eq(m.read("%s/main/readonly.txt" % REPO), data, "the data stays, readable through the mount")
        T.ok(downloaded(hub, "readonly.txt") is None, "and the Hub does not have it")
        T.eq(setx(m.p(REPO), "user.hub.private", b"1"), errno.EACCES,
             "user.hub.private cannot be set with a read-only token: EACCES")
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
        T.eq(len(commits(hub)), n + 1, "the other staged file is committed on its own, in one commit")
        T.eq(downloaded(hub, "other.txt"), b"other, ours\n", "and the Hub has it: a conflict holds back only its path")
        n = len(commits(hub))
        T.eq(m.read(base + "shared.txt"), b"ours\n", "our data stays staged")
        T.eq(setx(m.p(base + "shared.txt"), "user.hub.resolve", b"mine"), errno.EINVAL,
             "user.hub.resolve takes ours or theirs only: EINVAL")
        T.eq(setx(m.p(base + "shared.txt"), "user.hub.resolve", b"ours"), 0, "user.hub.resolve=ours on the file")
        T.ok(fsync_path(m.p(base + "shared.txt")) is None, "then fsync commits it")
        T.eq(downloaded(hub, "shared.txt"), b"ours\n", "on top of the other change, as chosen")
        T.eq(len(commits(hub)), n + 1, "in one commit")
        T.ok(write_file(m.p(base + "other.txt"), b"other, ours again\n", fsync=False) is None,
             "other.txt is staged again")
        commit_files(hub, REPO, {"other.txt": b"other, theirs\n"}, summary="someone else's other change")
        err = fsync_path(m.p(base + "other.txt"))
        T.ok(isinstance(err, OSError) and err.errno == errno.EIO, "its fsync: a conflict, EIO (%r)" % err)
        T.eq(setx(m.p(base + "other.txt"), "user.hub.resolve", b"theirs"), 0,
             "user.hub.resolve=theirs on a file still in conflict")
        T.eq(m.read(base + "other.txt"), b"other, theirs\n", "drops our staged change: the view shows the Hub's")
        T.eq(setx(m.p(base + "other.txt"), "user.hub.resolve", b"theirs"), errno.ENODATA,
             "nothing left to resolve: ENODATA")
        T.ok(fsync_path(m.p(base)) is None and downloaded(hub, "other.txt") == b"other, theirs\n",
             "and nothing of ours is committed")
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


def getx(path, name):
    try:
        return os.getxattr(path, name)
    except OSError as e:
        return e.errno


def setx(path, name, value, flags=0):
    try:
        os.setxattr(path, name, value, flags)
    except OSError as e:
        return e.errno
    return 0


def test_metadata(hub):
    msg_args = ["--commit-delay", "60", "--commit-message", "Nightly checkpoint"]
    with Mount(hub, token=ALICE_WRITE_TOKEN, args=msg_args) as m:
        base = "%s/main/" % REPO
        repo_dir = m.p(REPO)
        T.eq(getx(repo_dir, "user.hub.private"), b"0", "user.hub.private of a public repo reads 0")
        T.eq(getx(m.p("acme-research/private-model"), "user.hub.private"), b"1", "of a private repo 1")
        T.ok("user.hub.private" in os.listxattr(repo_dir), "listxattr names it")
        T.eq(setx(repo_dir, "user.hub.private", b"1"), 0, "setting it to 1")
        T.eq(repo_info(hub, "model", REPO)[1].get("private"), True, "makes the repo private on the Hub")
        T.eq(getx(repo_dir, "user.hub.private"), b"1", "and reads back 1")
        T.eq(setx(repo_dir, "user.hub.private", b"0"), 0, "setting it to 0")
        T.eq(repo_info(hub, "model", REPO)[1].get("private"), False, "makes it public again")
        T.eq(setx(repo_dir, "user.hub.private", b"maybe"), errno.EINVAL, "another value is EINVAL")
        T.eq(setx(m.p(base + "config.json"), "user.hub.oid", b"x"), errno.EPERM, "a fact of the Hub is EPERM")
        T.eq(setx(m.p(base + "config.json"), "user.mine", b"x"), errno.ENOTSUP, "another name is ENOTSUP")

        n = len(commits(hub))
        T.ok(write_file(m.p(base + "msg-1.txt"), b"one\n") is None, "a file with --commit-message")
        T.eq(titles(hub)[0], "Nightly checkpoint", "the commit has the --commit-message")
        root = m.p(base.rstrip("/"))
        T.eq(getx(root, "user.hub.message"), errno.ENODATA, "user.hub.message is unset at first")
        T.eq(setx(root, "user.hub.message", b"Fine-tune step 100\n"), 0, "set user.hub.message on the branch root")
        T.eq(getx(root, "user.hub.message"), b"Fine-tune step 100", "it reads back")
        T.eq(setx(root, "user.hub.message", b"x", os.XATTR_CREATE), errno.EEXIST, "XATTR_CREATE when set: EEXIST")
        T.ok(write_file(m.p(base + "msg-2.txt"), b"two\n") is None and titles(hub)[0] == "Fine-tune step 100",
             "the next commit has the branch's message")
        T.eq(setx(root, "user.hub.message", b"two\nlines"), errno.EINVAL, "a message of two lines is EINVAL")
        T.eq(setx(m.p("%s/v1.0" % REPO), "user.hub.message", b"x"), errno.EROFS, "on a tag: EROFS")
        os.removexattr(root, "user.hub.message")
        T.ok(write_file(m.p(base + "msg-3.txt"), b"three\n") is None and titles(hub)[0] == "Nightly checkpoint",
             "after removexattr the --commit-message is back")
        T.eq(len(commits(hub)), n + 3, "one commit per fsync")

        good = downloaded(hub, "README.md")
        bad = b"---\nlicense: [mit\n---\n# A card with broken metadata\n"
        err = write_file(m.p(base + "README.md"), bad)
        T.ok(isinstance(err, OSError) and err.errno == errno.EINVAL,
             "fsync of a README.md with invalid card metadata fails with EINVAL (%r)" % err)
        T.eq(downloaded(hub, "README.md"), good, "the Hub keeps the old card")
        T.eq(m.read(base + "README.md"), bad, "the change stays staged")
        fixed = b"---\nlicense: mit\n---\n# A card with good metadata\n"
        T.ok(write_file(m.p(base + "README.md"), fixed) is None, "a fixed card commits")
        T.eq(downloaded(hub, "README.md"), fixed, "the Hub has the fixed card")
        m.unmount()
        T.ok("unterminated flow collection" in m.stderr, "the log quotes the Hub's reason", m.stderr[-1500:])
        check_sanitizers(m, "metadata")


def test_lost_answer(hub):
    with Mount(hub, token=ALICE_WRITE_TOKEN, args=["--commit-delay", "60"]) as m:
        base = "%s/main/" % REPO
        data = b"the answer to this commit is lost\n"
        n = len(commits(hub))
        hub.set_faults([{"method": "POST", "path": "/commit/main", "action": "reset", "count": 1}])
        err = write_file(m.p(base + "lost-answer.txt"), data)
        hub.clear_faults()
        # libcurl sends the request again at once when a reused connection
        # dies; otherwise the fsync fails and the next one tries again
        T.ok(err is None or (isinstance(err, OSError) and err.errno == errno.EIO),
             "fsync when the connection drops after the Hub made the commit: 0 or EIO (%r)" % err)
        T.ok(fsync_path(m.p(base)) is None, "an fsync after it succeeds")
        T.eq(len(commits(hub)), n + 1, "without a second commit of the same change")
        T.eq(downloaded(hub, "lost-answer.txt"), data, "the Hub has the bytes")
        m.unmount()
        T.ok("not sent again" in m.stderr, "the log says the change was found on the Hub", m.stderr[-1500:])
        check_sanitizers(m, "lost answer")


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
            test_mkdir_repo(hub, m)
            test_rename(hub, m)
            test_readonly_views(hub, m)
            status = m.unmount()
            T.ok(status == 0, "the daemon exits 0 after unmount", m.stderr[-2000:])
            check_sanitizers(m, "writes")
        test_drain(hub)
        test_public_repos(hub)
        test_dirs(hub)
        test_dir_rename(hub)
        test_metadata(hub)
        test_lost_answer(hub)
        test_rename_resume(hub)
        test_read_token(hub)
        test_conflict(hub)
    T.done()


if __name__ == "__main__":
    main()
