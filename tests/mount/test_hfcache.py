#!/usr/bin/env python3
"""The mount as huggingface_hub's cache: ~/hub/.hf-cache/ (TAP).

Plain Python doing what huggingface_hub's hf_hub_download() and
snapshot_download() do with a cache directory (file_download.py,
_snapshot_download.py): read refs/REF, stat and open snapshots/COMMIT/PATH,
list snapshots/ and snapshots/COMMIT/, mkdir with exist_ok, check
.no_exist/COMMIT/PATH. Checked against the local Hub: bytes by their ids,
requests and bytes fetched from its log, errno of what the layout refuses.
"""

import errno
import json
import os
import stat
import struct
import sys
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mountlib import Mount, Tap, data_requests, have_fuse, sha256  # noqa: E402
from harness import ALICE_WRITE_TOKEN, LocalHub  # noqa: E402
from test_read import API, content_matches, errno_of, hub_commit, hub_tree  # noqa: E402

T = Tap()
MiB = 1 << 20
TINY = ".hf-cache/models--alice--tiny-model"
BIG_SHA256 = "aaae4dbf0c256871149dec08e83a4e1444c5c74f2e96e4f722b5012c1a0bc7a5"


def hub_refs(hub, kind, repo):
    """{ref name: commit} of every branch, tag and special ref, as the Hub lists them."""
    status, refs, _ = hub.json("GET", "/api/%s/%s/refs?include_prs=1" % (API[kind], repo), ALICE_WRITE_TOKEN)
    assert status == 200, (repo, status)
    out = {}
    for group in ("branches", "tags", "converts", "pullRequests"):
        for r in refs.get(group, []):
            out[r["ref"].replace("refs/heads/", "").replace("refs/tags/", "")] = r["targetCommit"]
    return out


def walk_files(top):
    """The files under @top, '/'-separated, relative to it."""
    out = set()
    for d, _, files in os.walk(top):
        for f in files:
            out.add(os.path.relpath(os.path.join(d, f), top).replace(os.sep, "/"))
    return out


def read_text(path):
    with open(path) as f:
        return f.read()


# ---------------------------------------------------------------------------

def test_refs(hub, m):
    """refs/REF holds the commit id, as huggingface_hub writes it: 40 hex digits, no newline."""
    for ref in ("main", "dev", "v1.0", "refs/pr/1"):
        want = hub_commit(hub, "model", "alice/tiny-model", ref)
        path = m.p(TINY + "/refs/" + ref)
        got = read_text(path)
        st = os.stat(path)
        T.ok(got == want and stat.S_ISREG(st.st_mode) and st.st_size == 40,
             "refs/%s holds the commit of %s (%s), 40 bytes, no newline" % (ref, ref, want[:7]), repr(got))
    T.eq(read_text(m.p(".hf-cache/datasets--acme-research--sample-dataset/refs/refs/convert/parquet")),
         hub_commit(hub, "dataset", "acme-research/sample-dataset", "refs/convert/parquet"),
         "a dataset's refs/refs/convert/parquet")
    T.eq(read_text(m.p(".hf-cache/spaces--alice--demo-space/refs/main")),
         hub_commit(hub, "space", "alice/demo-space", "main"), "a space's refs/main")
    main = hub_commit(hub, "model", "alice/tiny-model", "main")
    T.eq(read_text(m.p(TINY + "/refs/" + main[:7])), main,
         "refs/SHORT (huggingface_hub keeps a short id it was given) holds the full id")
    T.eq(oct(stat.S_IMODE(os.stat(m.p(TINY + "/refs/main")).st_mode)), "0o444", "a ref file is read-only")

    refs = hub_refs(hub, "model", "alice/tiny-model")
    top = {r.split("/")[0] for r in refs}
    T.eq(set(os.listdir(m.p(TINY + "/refs"))), top, "refs/ lists the branches and tags, and refs/ for PRs")
    T.eq(os.listdir(m.p(TINY + "/refs/refs")), ["pr"], "refs/refs/ lists pr")
    T.eq(os.listdir(m.p(TINY + "/refs/refs/pr")), ["1"], "refs/refs/pr/ lists the open PR")
    T.ok(os.path.isdir(m.p(TINY + "/refs/refs/pr")), "refs/refs/pr is a directory")
    T.eq(set(os.listdir(m.p(TINY + "/snapshots"))), set(refs.values()),
         "snapshots/ lists the commits of the refs")
    T.eq(sorted(os.listdir(m.p(TINY))), [".no_exist", "refs", "snapshots", "trees"], "a repo folder lists its parts")
    T.eq(set(os.listdir(m.p(TINY + "/trees"))), {c + ".json" for c in refs.values()},
         "trees/ lists COMMIT.json for the commits of the refs")


def test_snapshots(hub, m):
    """snapshots/COMMIT/ is the tree at COMMIT, file by file the Hub's bytes."""
    for kind, repo, folder, ref in (("model", "alice/tiny-model", TINY, "main"),
                                    ("model", "alice/tiny-model", TINY, "v1.0"),
                                    ("model", "alice/tiny-model", TINY, "refs/pr/1"),
                                    ("dataset", "acme-research/sample-dataset",
                                     ".hf-cache/datasets--acme-research--sample-dataset", "main"),
                                    ("space", "alice/demo-space", ".hf-cache/spaces--alice--demo-space", "main")):
        commit = hub_commit(hub, kind, repo, ref)
        tree = hub_tree(hub, kind, repo, commit)
        top = m.p("%s/snapshots/%s" % (folder, commit))
        T.eq(walk_files(top), set(tree), "%s@%s: snapshots/COMMIT lists the tree" % (repo, ref))
        bad = [p for p, e in tree.items() if not content_matches(open(os.path.join(top, p), "rb").read(), e)]
        T.ok(not bad, "%s@%s: every file of snapshots/COMMIT has the Hub's bytes" % (repo, ref), repr(bad))

    # A commit that no ref points at: reachable, not listed.
    status, commits, _ = hub.json("GET", "/api/models/alice/tiny-model/commits/main", ALICE_WRITE_TOKEN)
    first = commits[-1]["id"]
    T.ok(first not in os.listdir(m.p(TINY + "/snapshots")), "the first commit is not listed in snapshots/")
    readme = open(m.p("%s/snapshots/%s/README.md" % (TINY, first)), "rb").read()
    T.ok(content_matches(readme, hub_tree(hub, "model", "alice/tiny-model", first)["README.md"]),
         "snapshots/FIRST/README.md: the tree of a commit no ref points at")
    T.eq(open(m.p("alice/tiny-model@%s/README.md" % first), "rb").read(), readme,
         "snapshots/COMMIT/PATH is the pinned view REPO@COMMIT/PATH")


def test_trees(hub, m):
    """trees/COMMIT.json: the commit's files as huggingface_hub caches a tree listing (_tree_cache.py)."""
    for kind, repo, folder, ref in (("model", "alice/tiny-model", TINY, "main"),
                                    ("dataset", "acme-research/sample-dataset",
                                     ".hf-cache/datasets--acme-research--sample-dataset", "main")):
        commit = hub_commit(hub, kind, repo, ref)
        tree = hub_tree(hub, kind, repo, commit)
        path = m.p("%s/trees/%s.json" % (folder, commit))
        raw = open(path, "rb").read()
        data = json.loads(raw)
        files = data.get("files", {})
        T.ok(data.get("format_version") == 1 and os.path.getsize(path) == len(raw),
             "%s: trees/COMMIT.json is format_version 1, its size what stat says" % repo)
        T.eq(list(files), sorted(tree), "%s: it lists every file of the commit, sorted" % repo)
        want = {}
        for p, e in tree.items():
            w = {"size": e["size"], "blob_id": e["oid"]}
            if e.get("lfs"):
                w.update(lfs_sha256=e["lfs"]["oid"], lfs_size=e["lfs"]["size"])
            want[p] = w
        T.eq(files, want, "%s: size, blob_id and the LFS sha256 and size are the Hub's" % repo)


def test_hf_hub_download(hub, m):
    """What hf_hub_download() does, online (after its HEAD call) and offline."""
    status, headers, _ = hub.request("HEAD", "/alice/tiny-model/resolve/main/config.json", ALICE_WRITE_TOKEN)
    commit = headers.get("x-repo-commit")
    T.ok(status == 200 and commit, "HEAD of config.json gives the commit (%s)" % commit)
    storage = Path(m.p(TINY))
    pointer = storage / "snapshots" / commit / "config.json"
    T.ok(os.path.exists(pointer), "online: the pointer path is present after the HEAD call")
    # _cache_commit_hash_for_specific_revision(): mkdir, compare, no write
    ref = storage / "refs" / "main"
    try:
        ref.parent.mkdir(parents=True, exist_ok=True)
        same = ref.exists() and ref.read_text() == commit
        T.ok(same, "refs/ mkdir with exist_ok passes, refs/main already holds the commit (no write)")
    except OSError as e:
        T.ok(False, "refs/ mkdir with exist_ok: %r" % e)
    T.eq(errno_of(os.mkdir, str(storage / "refs")), errno.EEXIST, "mkdir of refs/: EEXIST")
    T.eq(errno_of(os.mkdir, str(storage / "snapshots" / commit / "docs")), errno.EEXIST,
         "mkdir of a directory of a snapshot: EEXIST")
    try:
        os.makedirs(storage / "snapshots" / commit / "docs", exist_ok=True)
        T.ok(True, "os.makedirs(exist_ok=True) of a snapshot's directory passes")
    except OSError as e:
        T.ok(False, "os.makedirs(exist_ok=True) of a snapshot's directory: %r" % e)
    # Offline: refs/REF gives the commit, the pointer path is there.
    for rev in ("main", "v1.0", "refs/pr/1"):
        c = read_text(storage / "refs" / rev)
        T.ok(os.path.exists(storage / "snapshots" / c / "config.json"),
             "offline: refs/%s then snapshots/COMMIT/config.json" % rev)
    # try_to_load_from_cache() and the HEAD 404 path: .no_exist/COMMIT/PATH
    ne = storage / ".no_exist" / commit
    T.ok(os.path.isfile(ne / "adapter_config.json") and os.path.getsize(ne / "adapter_config.json") == 0,
         ".no_exist/COMMIT/adapter_config.json: an empty file (the commit has no such file)")
    T.eq(errno_of(os.stat, str(ne / "config.json")), errno.ENOENT, ".no_exist/COMMIT/config.json: ENOENT (it exists)")
    T.ok(os.path.isdir(ne / "docs") and os.path.isfile(ne / "docs" / "missing.md"),
         ".no_exist/COMMIT/docs/ is a directory, docs/missing.md a file")
    T.eq(os.listdir(ne), [], ".no_exist/COMMIT/ lists nothing")


def test_read_only(hub, m):
    """Nothing of the layout changes: EROFS."""
    main = hub_commit(hub, "model", "alice/tiny-model", "main")
    snap = m.p("%s/snapshots/%s" % (TINY, main))
    ref = m.p(TINY + "/refs/main")
    # snapshot_download() writes the ref it resolved without reading it: the same bytes pass.
    try:
        with open(ref, "w") as f:
            f.write(main)
        T.ok(True, "refs/main written again with its own content (open 'w', write, close): no error")
    except OSError as e:
        T.ok(False, "refs/main written again with its own content: %r" % e)

    def write_other():
        fd = os.open(ref, os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, b"0" * 40)
        finally:
            try:
                os.close(fd)
            except OSError:
                pass

    def write_nothing():
        fd = os.open(ref, os.O_WRONLY | os.O_TRUNC)
        os.close(fd)

    def write_part():
        fd = os.open(ref, os.O_WRONLY | os.O_TRUNC)
        os.write(fd, main[:20].encode())
        os.close(fd)
    T.eq(errno_of(write_other), errno.EROFS, "refs/main given other bytes: EROFS at write")
    T.eq(errno_of(write_nothing), errno.EROFS, "refs/main opened with O_TRUNC and closed unwritten: EROFS at close")
    T.eq(errno_of(write_part), errno.EROFS, "refs/main given half its content: EROFS at close")
    T.ok(read_text(ref) == main and os.stat(ref).st_size == 40, "refs/main still holds the commit, 40 bytes")
    cases = [
        ("open refs/main O_WRONLY without O_TRUNC", lambda: os.open(ref, os.O_WRONLY)),
        ("open refs/main O_RDWR|O_APPEND", lambda: os.open(ref, os.O_RDWR | os.O_APPEND | os.O_TRUNC)),
        ("open .no_exist/COMMIT/x for writing",
         lambda: os.open(m.p(TINY + "/.no_exist/%s/x" % main), os.O_WRONLY | os.O_TRUNC)),
        ("open trees/COMMIT.json for writing",
         lambda: os.open(m.p(TINY + "/trees/%s.json" % main), os.O_WRONLY | os.O_TRUNC)),
        ("create refs/new", lambda: open(m.p(TINY + "/refs/new"), "w")),
        ("unlink refs/main", lambda: os.unlink(ref)),
        ("rename refs/main", lambda: os.rename(ref, ref + ".x")),
        ("mkdir blobs/", lambda: os.mkdir(m.p(TINY + "/blobs"))),
        ("mkdir .hf-cache/.locks", lambda: os.mkdir(m.p(".hf-cache/.locks"))),
        ("create in snapshots/COMMIT", lambda: open(os.path.join(snap, "new.txt"), "w")),
        ("write snapshots/COMMIT/config.json", lambda: open(os.path.join(snap, "config.json"), "r+b")),
        ("mkdir trees/", lambda: os.mkdir(m.p(TINY + "/trees/new"))),
        ("rmdir snapshots/COMMIT/docs", lambda: os.rmdir(os.path.join(snap, "docs"))),
    ]
    for what, fn in cases:
        T.eq(errno_of(fn), errno.EROFS, "%s: EROFS" % what)


def test_enoent(hub, m):
    """Names that cannot exist: ENOENT, decided without a request."""
    main = hub_commit(hub, "model", "alice/tiny-model", "main")
    os.stat(m.p(TINY))
    os.stat(m.p(TINY + "/snapshots"))
    os.stat(m.p(TINY + "/refs"))
    names = [
        ".hf-cache/model--alice--tiny-model",
        ".hf-cache/kernels--alice--tiny-model",
        ".hf-cache/models--gpt2",
        ".hf-cache/models--alice--tiny--model",
        ".hf-cache/models--alice",
        ".hf-cache/models--.x--y",
        ".hf-cache/CACHEDIR.TAG",
        TINY + "/blobs",
        TINY + "/trees/" + main,
        TINY + "/trees/" + main[:7] + ".json",
        TINY + "/trees/x",
        TINY + "/snapshots/main",
        TINY + "/snapshots/" + main[:7],
        TINY + "/snapshots/" + main.upper(),
        TINY + "/snapshots/" + main + "0",
        TINY + "/refs/" + main,
        TINY + "/refs/a..b",
        TINY + "/.no_exist/main",
    ]
    hub.clear_log()
    bad = [(n, e) for n in names for e in [errno_of(os.stat, m.p(n))] if e != errno.ENOENT]
    T.ok(not bad, "%d impossible names: ENOENT" % len(names), repr(bad))
    log = hub.log()
    T.eq(len(log), 0, "and 0 requests to the Hub")
    status, info, _ = hub.json("GET", "/api/models/bob/hello-world/revision/main", ALICE_WRITE_TOKEN)
    T.eq(errno_of(os.stat, m.p(TINY + "/snapshots/" + info["sha"])), errno.ENOENT,
         "snapshots/COMMIT of a commit of another repo: ENOENT")
    T.eq(errno_of(os.stat, m.p(".hf-cache/models--alice--no-such-repo")), errno.ENOENT,
         "a repo folder of a repo that does not exist: ENOENT")
    T.eq(errno_of(os.stat, m.p(TINY + "/refs/no-such-branch")), errno.ENOENT, "refs/ of no ref: ENOENT")


def test_ranges(hub, m):
    """A small part of a big LFS file read through snapshots/ fetches about that part."""
    folder = ".hf-cache/models--alice--big-model"
    commit = read_text(m.p(folder + "/refs/main"))
    path = m.p("%s/snapshots/%s/model.safetensors" % (folder, commit))
    T.eq(os.path.getsize(path), 67113432, "snapshots/COMMIT/model.safetensors has the Hub's size")
    hub.clear_log()
    with open(path, "rb") as f:
        hlen = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(hlen))
        f.seek(32 * MiB)
        mid = f.read(4096)
    fetched = sum(r["bytes"] for r in data_requests(hub.log()))
    T.ok(len(header) > 1 and len(mid) == 4096 and fetched <= 4 * MiB,
         "header and 4 KiB in the middle of a 64 MiB file: %.1f MiB fetched (at most 4)" % (fetched / MiB))
    with open(path, "rb") as f:
        whole = f.read()
    T.ok(sha256(whole) == BIG_SHA256 and whole[32 * MiB:32 * MiB + 4096] == mid,
         "the whole file has the Hub's sha256, and the middle read before is its bytes")


def test_listing(hub, m):
    T.ok(".hf-cache" in os.listdir(m.path), "the mount root lists .hf-cache")
    names = os.listdir(m.p(".hf-cache"))
    T.ok({"models--alice--tiny-model", "datasets--acme-research--sample-dataset"} <= set(names),
         ".hf-cache lists the repo folders looked up", repr(names))


def test_moved_ref(hub, m):
    """A branch that moves: refs/REF gives the new commit once the TTL (1 s here) is over."""
    import base64
    import time
    before = read_text(m.p(TINY + "/refs/dev"))
    lines = [{"key": "header", "value": {"summary": "move dev"}},
             {"key": "file", "value": {"path": "moved.txt", "content": base64.b64encode(b"x\n").decode(),
                                       "encoding": "base64"}}]
    status, _, _ = hub.request("POST", "/api/models/alice/tiny-model/commit/dev", ALICE_WRITE_TOKEN,
                               {"Content-Type": "application/x-ndjson"},
                               "\n".join(json.dumps(x) for x in lines).encode())
    after = hub_commit(hub, "model", "alice/tiny-model", "dev")
    T.ok(status == 200 and after != before, "dev moved on the Hub")
    deadline = time.monotonic() + 10
    got = before
    while time.monotonic() < deadline and got != after:
        time.sleep(0.3)
        got = read_text(m.p(TINY + "/refs/dev"))
    T.eq(got, after, "refs/dev holds the new commit")
    T.ok(os.path.isfile(m.p("%s/snapshots/%s/moved.txt" % (TINY, after))), "snapshots/NEW/moved.txt is there")
    T.ok(after in os.listdir(m.p(TINY + "/snapshots")) and before not in os.listdir(m.p(TINY + "/snapshots")),
         "snapshots/ lists the new commit of dev, not the old one")


def main():
    if not have_fuse():
        print("1..0 # SKIP /dev/fuse or fusermount3 missing")
        return 0
    with LocalHub(seed=True) as hub:
        with Mount(hub, token=ALICE_WRITE_TOKEN, args=["--ttl", "1"]) as m:
            for test in (test_refs, test_snapshots, test_trees, test_hf_hub_download, test_read_only, test_enoent, test_ranges,
                         test_listing, test_moved_ref):
                try:
                    test(hub, m)
                except Exception as e:  # noqa: B902 - a crash of a test is a failure, the rest go on
                    T.ok(False, "%s raised %r" % (test.__name__, e))
            m.unmount()
            report = m.sanitizer_report()
            T.ok(not report, "no sanitizer report from the daemon", "\n".join(report[:20]))
    T.done()


if __name__ == "__main__":
    main()
