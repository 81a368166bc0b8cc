#!/usr/bin/env python3
"""Integration tests of the read-only mount against the local Hub (TAP).

Each check is what a user would look at: the bytes read through the mount have
the ids the Hub holds, and the Hub's request log shows what the design
promises (requests and bytes fetched). Skips (exit 77 via TAP skip) only where
FUSE is missing.
"""

import base64
import errno
import json
import mmap
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mountlib import (Mount, Tap, api_requests, data_requests, drop_page_cache, git_blob_id,  # noqa: E402
                      have_fuse, hubfs_binary, range_bytes, sha256, with_timeout)
from harness import ALICE_WRITE_TOKEN, BOB_WRITE_TOKEN, LocalHub  # noqa: E402

T = Tap()
MiB = 1 << 20
API = {"model": "models", "dataset": "datasets", "space": "spaces"}
PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


def hub_tree(hub, kind, repo, rev, token=ALICE_WRITE_TOKEN):
    """Every file of @repo at @rev, from the Hub's recursive listing: {path: entry}."""
    out = {}
    path = "/api/%s/%s/tree/%s?recursive=true" % (API[kind], repo, rev.replace("/", "%2F"))
    while path:
        status, headers, body = hub.request("GET", path, token)
        assert status == 200, (path, status, body[:200])
        for e in json.loads(body):
            if e["type"] == "file":
                out[e["path"]] = e
        link = headers.get("link", "")
        path = None
        if 'rel="next"' in link:
            url = link[link.index("<") + 1:link.index(">")]
            path = url[url.index("/api/"):]
    return out


def hub_commit(hub, kind, repo, rev, token=ALICE_WRITE_TOKEN):
    status, info, _ = hub.json("GET", "/api/%s/%s/revision/%s" % (API[kind], repo, rev.replace("/", "%2F")), token)
    assert status == 200, (repo, rev, status)
    return info["sha"]


def content_matches(data, entry):
    """The bytes are what the Hub holds: sha256 for LFS files, the git blob id for the rest."""
    if entry.get("lfs"):
        return len(data) == entry["lfs"]["size"] and sha256(data) == entry["lfs"]["oid"]
    return len(data) == entry["size"] and git_blob_id(data) == entry["oid"]


def errno_of(fn, *args):
    try:
        fn(*args)
    except OSError as e:
        return e.errno
    return 0


def commit_files(hub, repo, files, token=ALICE_WRITE_TOKEN, summary="test files"):
    lines = [{"key": "header", "value": {"summary": summary}}]
    for path, data in files.items():
        lines.append({"key": "file", "value": {"path": path, "content": base64.b64encode(data).decode(),
                                               "encoding": "base64"}})
    body = "\n".join(json.dumps(x) for x in lines).encode()
    status, _, raw = hub.request("POST", "/api/models/%s/commit/main" % repo, token,
                                 {"Content-Type": "application/x-ndjson"}, body)
    assert status == 200, raw[:300]


def create_repo(hub, name, token=ALICE_WRITE_TOKEN):
    status, body, _ = hub.json("POST", "/api/repos/create", token, {"name": name, "type": "model"})
    assert status in (200, 409), (status, body)


def upload_lfs(hub, repo, path, data, token=ALICE_WRITE_TOKEN):
    """An LFS file through batch + PUT + commit, as the official clients do."""
    oid = sha256(data)
    hdrs = {"Accept": "application/vnd.git-lfs+json", "Content-Type": "application/vnd.git-lfs+json"}
    req = {"operation": "upload", "transfers": ["basic"], "hash_algo": "sha256", "ref": {"name": "main"},
           "objects": [{"oid": oid, "size": len(data)}]}
    status, _, body = hub.request("POST", "/%s.git/info/lfs/objects/batch" % repo, token, hdrs,
                                  json.dumps(req).encode())
    assert status == 200, body[:300]
    upload = json.loads(body)["objects"][0].get("actions", {}).get("upload")
    if upload:
        status, _, body = hub.request("PUT", None, url=upload["href"], body=data, timeout=300)
        assert status == 200, body[:300]
    line = {"key": "lfsFile", "value": {"path": path, "algo": "sha256", "oid": oid, "size": len(data)}}
    body = "\n".join(json.dumps(x) for x in [{"key": "header", "value": {"summary": "add " + path}}, line])
    status, _, raw = hub.request("POST", "/api/models/%s/commit/main" % repo, token,
                                 {"Content-Type": "application/x-ndjson"}, body.encode())
    assert status == 200, raw[:300]
    return oid


def safetensors_bytes(total):
    """A valid safetensors file of @total bytes: one F32 tensor after the header."""
    n = 0
    while True:
        data_len = total - 8 - n
        header = json.dumps({"__metadata__": {"format": "pt"},
                             "weight": {"dtype": "F32", "shape": [data_len // 4],
                                        "data_offsets": [0, data_len]}}).encode()
        header += b" " * ((8 - len(header) % 8) % 8)
        if len(header) == n:
            break
        n = len(header)
    body = bytearray(data_len)
    for i in range(0, data_len, MiB):  # not all zeros, so a wrong range shows
        body[i:i + 8] = struct.pack("<Q", i)
    return struct.pack("<Q", n) + header + bytes(body)


def check_sanitizers(m, what):
    report = m.sanitizer_report()
    T.ok(not report, "%s: no sanitizer report from the daemon" % what, "\n".join(report[:20]))


# ---------------------------------------------------------------------------

def test_layout(hub, m):
    root = set(os.listdir(m.path))
    T.ok({"me", "datasets", "spaces", "alice", "acme-research"} <= root, "root lists me, datasets, spaces, alice, acme-research", root)
    T.eq(os.readlink(m.p("me")), "alice", "me -> alice")
    T.ok({"tiny-model", "big-model"} <= set(os.listdir(m.p("alice"))), "alice/ lists her models")
    T.ok("tiny-model" in os.listdir(m.p("me")), "me/ is alice/")
    T.ok("sample-dataset" in os.listdir(m.p("datasets/acme-research")), "datasets/acme-research/ lists the dataset")
    T.ok("demo-space" in os.listdir(m.p("spaces/alice")), "spaces/alice/ lists the Space")
    T.ok("private-model" in os.listdir(m.p("acme-research")), "an org member sees the org's private model")
    T.eq(sorted(os.listdir(m.p("alice/tiny-model"))), ["dev", "main", "refs", "v1.0"], "a repo lists branches, tags and refs")
    T.eq(os.listdir(m.p("alice/tiny-model/refs")), ["pr"], "refs/ holds pr/")
    T.eq(os.listdir(m.p("alice/tiny-model/refs/pr")), ["1"], "refs/pr/ lists the open pull request")
    T.eq(os.listdir(m.p("datasets/acme-research/sample-dataset/refs/convert")), ["parquet"], "refs/convert/ lists parquet")
    st = os.stat(m.p("alice/tiny-model/v1.0"))
    T.ok(st.st_mode & 0o777 == 0o555 and st.st_uid == os.getuid(), "a tag is a read-only directory owned by the user")
    T.eq(os.stat(m.p("alice/tiny-model/v1.0/config.json")).st_mode & 0o777, 0o444, "a file of a tag is read-only")
    T.eq(os.stat(m.p("alice/tiny-model/main")).st_mode & 0o777, 0o755, "a branch is a writable directory")
    st = os.stat(m.p("alice/tiny-model/main/config.json"))
    T.eq(st.st_mode & 0o777, 0o644, "a file of a branch is writable")
    tree = hub_tree(hub, "model", "alice/tiny-model", "main")
    date = json.loads(hub.request("GET", "/api/models/alice/tiny-model/revision/main", ALICE_WRITE_TOKEN)[2])["lastModified"]
    mtime = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(st.st_mtime))
    T.eq(mtime, date[:19], "mtime is the date of the revision's commit")
    T.eq(os.stat(m.p("alice/tiny-model/main/model.safetensors")).st_size, tree["model.safetensors"]["lfs"]["size"],
         "an LFS file has the LFS object's size")
    for bad, code in (("nobody-here", errno.ENOENT), ("alice/no-such-model", errno.ENOENT),
                      ("alice/tiny-model/no-such-branch", errno.ENOENT), ("alice/tiny-model/main/nope.txt", errno.ENOENT),
                      (".Trash", errno.ENOENT), ("alice/bad--name", errno.ENOENT),
                      ("alice/tiny-model/main/config.json/x", errno.ENOTDIR), ("x" * 300, errno.ENAMETOOLONG)):
        T.eq(errno_of(os.stat, m.p(bad)), code, "stat %s fails with %s" % (bad[:40], errno.errorcode[code]))


def test_all_files(hub, m):
    repos = [("model", "alice/tiny-model", "main"), ("model", "alice/big-model", "main"),
             ("model", "acme-research/private-model", "main"), ("dataset", "acme-research/sample-dataset", "main"),
             ("space", "alice/demo-space", "main"), ("model", "bob/hello-world", "main"),
             ("model", "alice/tiny-model", "dev"), ("model", "alice/tiny-model", "v1.0")]
    for kind, repo, rev in repos:
        tree = hub_tree(hub, kind, repo, rev)
        bad = [p for p, e in tree.items()
               if not content_matches(m.read(os.path.join(PREFIX[kind] + repo, rev, p)), e)]
        T.ok(tree and not bad, "%s%s/%s: all %d files read right" % (PREFIX[kind], repo, rev, len(tree)), bad)


def test_pinned(hub, m):
    main = hub_commit(hub, "model", "alice/tiny-model", "main")
    tree = hub_tree(hub, "model", "alice/tiny-model", main)
    for rev in (main, main[:7], "main", "v1.0", "refs%2Fpr%2F1"):
        d = m.p("alice/tiny-model@" + rev)
        T.ok(os.path.isdir(d), "alice/tiny-model@%s is a directory" % rev)
    cfg = m.read("alice/tiny-model@%s/config.json" % main[:7])
    T.ok(content_matches(cfg, tree["config.json"]), "a short commit id view reads that commit")
    T.ok(not os.path.exists(m.p("alice/tiny-model@v1.0/model.safetensors")), "the tag view has the tag's tree")
    tag_tree = hub_tree(hub, "model", "alice/tiny-model", "v1.0")
    T.ok(content_matches(m.read("alice/tiny-model@v1.0/config.json"), tag_tree["config.json"]), "the tag view reads the tag's config")
    pr_tree = hub_tree(hub, "model", "alice/tiny-model", "refs/pr/1")
    T.ok(content_matches(m.read("alice/tiny-model@refs%2Fpr%2F1/pr-file.txt"), pr_tree["pr-file.txt"]),
         "a %-encoded PR ref view reads the PR")
    T.ok(content_matches(m.read("alice/tiny-model/refs/pr/1/pr-file.txt"), pr_tree["pr-file.txt"]), "refs/pr/1/ reads the PR")
    conv = hub_tree(hub, "dataset", "acme-research/sample-dataset", "refs/convert/parquet")
    T.ok(content_matches(m.read("datasets/acme-research/sample-dataset/refs/convert/parquet/default/train/0000.parquet"),
                         conv["default/train/0000.parquet"]), "refs/convert/parquet reads the conversion")
    T.eq(errno_of(os.stat, m.p("alice/tiny-model@0000000")), errno.ENOENT, "an unknown short id is ENOENT")
    T.eq(errno_of(os.stat, m.p("alice/tiny-model/" + main)), errno.ENOENT, "a commit id is not a branch directory")
    x = os.getxattr(m.p("alice/tiny-model/main/model.safetensors"), "user.hub.sha256").decode()
    T.eq(x, tree["model.safetensors"]["lfs"]["oid"], "user.hub.sha256 is the LFS oid")
    T.eq(os.getxattr(m.p("alice/tiny-model/main/config.json"), "user.hub.oid").decode(), tree["config.json"]["oid"],
         "user.hub.oid is the git blob id")
    T.eq(os.getxattr(m.p("alice/tiny-model/main"), "user.hub.commit").decode(), main, "user.hub.commit of a branch view")
    T.eq(os.getxattr(m.p("alice/tiny-model/main/config.json"), "user.hub.lfs"), b"0", "user.hub.lfs of a regular file")
    url = os.getxattr(m.p("alice/tiny-model/main/docs/read me.md"), "user.hub.url").decode()
    T.eq(url, "%s/alice/tiny-model/resolve/%s/docs/read%%20me.md" % (hub.url, main), "user.hub.url is the pinned resolve URL")
    T.eq(errno_of(os.getxattr, m.p("alice/tiny-model/main/config.json"), "user.hub.sha256"), errno.ENODATA,
         "no user.hub.sha256 on a regular file")


def test_names(hub, m):
    tree = hub_tree(hub, "model", "alice/tiny-model", "main")
    for name in ("docs/read me.md", "docs/café ☕.txt"):
        T.ok(content_matches(m.read("alice/tiny-model/main/" + name), tree[name]), "non-ASCII and spaces: %s" % name)
    # Branch views are writable (tests/mount/test_write.py); a tag view is not.
    for op, args in ((os.mkdir, ("alice/tiny-model@v1.0/newdir",)), (os.unlink, ("alice/tiny-model@v1.0/config.json",)),
                     (os.rename, ("alice/tiny-model@v1.0/config.json", "alice/tiny-model@v1.0/c2.json"))):
        T.eq(errno_of(op, *[m.p(a) for a in args]), errno.EROFS, "%s in a tag view is EROFS" % op.__name__)
    T.eq(errno_of(os.open, m.p("alice/tiny-model@v1.0/config.json"), os.O_WRONLY), errno.EROFS,
         "open for writing in a tag view is EROFS")


def test_requests(hub, m, big_repo, big_oid):
    with Mount(hub, token=ALICE_WRITE_TOKEN) as fresh:
        os.listdir(fresh.p("alice/tiny-model"))
        hub.clear_log()
        names = os.listdir(fresh.p("alice/tiny-model/main"))
        for name in names:
            os.lstat(fresh.p("alice/tiny-model/main/" + name))
        n = len(api_requests(hub.log()))
        T.ok(len(names) == 6 and 1 <= n <= 2, "ls -l of a model branch costs %d API requests (at most 2)" % n)
        fresh.unmount()
        check_sanitizers(fresh, "ls -l")

    os.listdir(m.p(big_repo + "/main"))
    hub.clear_log()
    with open(m.p(big_repo + "/main/model.safetensors"), "rb") as f:
        hlen = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(hlen))
    fetched = sum(r["bytes"] for r in data_requests(hub.log()))
    T.ok("weight" in header and fetched <= 2 * MiB,
         "safetensors header of a 1 GiB file: %d bytes fetched (at most 2 MiB)" % fetched)

    # A tensor loaded through a map: the pages of 64 MiB in the middle of the
    # file, in order, as numpy.memmap or an mmap-based loader touches them.
    mm_path = m.p(big_repo + "/main/model.safetensors")
    hub.clear_log()
    fd = os.open(mm_path, os.O_RDONLY)
    try:
        with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as mm:
            start = 512 * MiB + 8 + hlen
            tensor = mm[start:start + 64 * MiB]
    finally:
        os.close(fd)
    want = bytearray(64 * MiB)
    for i in range((start - 8 - hlen + MiB - 1) // MiB * MiB, start - 8 - hlen + 64 * MiB, MiB):
        want[i - (start - 8 - hlen):i - (start - 8 - hlen) + 8] = struct.pack("<Q", i)
    fetched = sum(r["bytes"] for r in data_requests(hub.log()))
    T.ok(tensor == bytes(want) and fetched <= 64 * MiB * 5 // 4 + 2 * MiB,
         "a 64 MiB tensor read through mmap: %.1f MiB fetched (at most 1.25x + 2 MiB)" % (fetched / MiB))

    path = "alice/big-model/main/model.safetensors"
    first = sha256(m.read(path))
    drop_page_cache(m.p(path))
    hub.clear_log()
    again = sha256(m.read(path))
    T.ok(again == first and not data_requests(hub.log()), "a second read of a cached file makes 0 data requests")


def test_remount_cached(hub, m_cache_dir):
    with Mount(hub, token=ALICE_WRITE_TOKEN, cache_dir=m_cache_dir) as m:
        hub.clear_log()
        tree = hub_tree(hub, "model", "alice/big-model", "main")
        hub.clear_log()
        ok = content_matches(m.read("alice/big-model/main/model.safetensors"), tree["model.safetensors"])
        T.ok(ok and not data_requests(hub.log()), "after a remount, cached data makes 0 data requests")
        m.unmount()
        check_sanitizers(m, "remount")


# File system types (stat -f -c %t) where --cache-io=auto uses O_DIRECT.
DIRECT_FS = {"ef53", "58465342", "9123683e", "f2f52010"}


def resident_bytes(path):
    r = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", path], capture_output=True,
                       text=True, timeout=30)
    return int(r.stdout.split()[0]) if r.returncode == 0 and r.stdout.split() else -1


def storage_bytes(pid):
    """(read_bytes, write_bytes) of /proc/PID/io: what the process had the disk read and write."""
    with open("/proc/%d/io" % pid) as f:
        got = dict(line.split(":") for line in f)
    return int(got["read_bytes"]), int(got["write_bytes"])


def test_page_cache(hub):
    """A cold read keeps one copy in memory (the mount's page cache), not a second one of the cache's blob file:
    O_DIRECT on a local disk file system (--cache-io=auto), the page cache with -o cache_io=buffered."""
    tree = hub_tree(hub, "model", "alice/big-model", "main")["model.safetensors"]
    oid = tree["lfs"]["oid"]
    tmp = tempfile.mkdtemp(prefix="hubfs-cache-io-")
    for how, args in (("auto", ["--cache-io", "auto"]), ("buffered", ["-o", "cache_io=buffered"]),
                      ("direct", ["--cache-io=direct"])):
        cache_dir = os.path.join(tmp, how)
        with Mount(hub, token=ALICE_WRITE_TOKEN, args=args, cache_dir=cache_dir) as m:
            fs = subprocess.run(["stat", "-f", "-c", "%t", m.cache_dir], capture_output=True, text=True,
                                timeout=30).stdout.strip()
            io0 = storage_bytes(m.proc.pid)
            data = m.read("alice/big-model/main/model.safetensors")
            io1 = storage_bytes(m.proc.pid)
            blob = os.path.join(m.cache_dir, "blobs", oid[:2], oid)
            res = resident_bytes(blob)
            T.ok(content_matches(data, tree), "--cache-io %s: the bytes read are the Hub's" % how)
            if how == "buffered" or (how == "auto" and fs not in DIRECT_FS) or fs == "1021994":  # tmpfs
                T.ok(res >= len(data) * 9 // 10, "--cache-io %s (file system %s): the blob file is in the page "
                     "cache (%d of %d bytes)" % (how, fs, res, len(data)))
            else:
                T.ok(0 <= res <= 4096, "--cache-io %s (file system %s): %d bytes of the %d-byte blob file in the "
                     "page cache (at most its last page)" % (how, fs, res, len(data)))
                # Written once; read back for the replies, and not again for the hash (that would be 2x).
                T.ok(io1[1] - io0[1] >= len(data) and io1[0] - io0[0] <= len(data) * 3 // 2,
                     "--cache-io %s: the cold read wrote %.2fx the file to the disk and read back %.2fx (at most "
                     "1.5x)" % (how, (io1[1] - io0[1]) / len(data), (io1[0] - io0[0]) / len(data)))
            drop_page_cache(m.p("alice/big-model/main/model.safetensors"))
            hub.clear_log()
            again = m.read("alice/big-model/main/model.safetensors")
            T.ok(content_matches(again, tree) and not data_requests(hub.log()),
                 "--cache-io %s: read again from the cache, 0 data requests" % how)
            if how != "buffered" and fs in DIRECT_FS:
                res = resident_bytes(blob)
                T.ok(0 <= res <= 4096, "--cache-io %s: after a second read in the same mount, %d bytes of the "
                     "blob file in the page cache (O_DIRECT still)" % (how, res))
            m.unmount()
            check_sanitizers(m, "--cache-io " + how)
        if how == "buffered" or fs not in DIRECT_FS:
            continue
        # Remounted: the blob is complete, so reads go through the page cache (for the kernel's read-ahead)
        # and drop the pages they read.
        with Mount(hub, token=ALICE_WRITE_TOKEN, args=args, cache_dir=cache_dir) as m:
            hub.clear_log()
            again = m.read("alice/big-model/main/model.safetensors")
            res = resident_bytes(blob)
            T.ok(content_matches(again, tree) and not data_requests(hub.log()),
                 "--cache-io %s: a warm read after a remount, 0 data requests" % how)
            T.ok(0 <= res <= len(data) // 16, "--cache-io %s: after the warm read, %d bytes of the blob file stay "
                 "in the page cache (at most a sixteenth)" % (how, res))
            m.unmount()
            check_sanitizers(m, "--cache-io %s, warm" % how)
    subprocess.run(["rm", "-rf", tmp], timeout=60)


def test_threads(hub):
    tree = hub_tree(hub, "model", "alice/big-model", "main")
    want = tree["model.safetensors"]
    with Mount(hub, token=ALICE_WRITE_TOKEN) as m:
        path = m.p("alice/big-model/main/model.safetensors")
        os.stat(path)
        hub.clear_log()
        results = [None] * 8

        def reader(i):
            fd = os.open(path, os.O_RDONLY)
            try:
                chunks, off = [], 0
                while True:
                    b = os.pread(fd, MiB, off)
                    if not b:
                        break
                    chunks.append(b)
                    off += len(b)
                results[i] = b"".join(chunks)
            finally:
                os.close(fd)
        threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        T.ok(all(r is not None and content_matches(r, want) for r in results), "8 threads reading one file get the right bytes")
        cdn = [r for r in hub.log() if r["origin"] == "cdn" and r["method"] == "GET"]
        fetched = sum(r["bytes"] for r in cdn)
        T.eq(fetched, want["lfs"]["size"], "8 threads: each byte fetched once (%d requests)" % len(cdn))
        m.unmount()
        check_sanitizers(m, "threads")


def test_many_pages():
    with LocalHub(users=["alice:%s:write" % ALICE_WRITE_TOKEN], page_size=5) as hub:
        create_repo(hub, "many")
        files = {"data/f%03d.txt" % i: b"file %d\n" % i for i in range(100)}
        commit_files(hub, "alice/many", files)
        with Mount(hub, token=ALICE_WRITE_TOKEN) as m:
            os.listdir(m.p("alice/many/main"))
            hub.clear_log()
            names = sorted(os.listdir(m.p("alice/many/main/data")))
            pages = [r for r in hub.log() if "/tree/" in r["path"]]
            T.eq(names, sorted(p[5:] for p in files), "a 100-file directory listed over pages has every name once")
            T.ok(len(pages) >= 20, "the listing took %d pages of 5" % len(pages))
            T.ok(all(m.read("alice/many/main/" + p) == d for p, d in list(files.items())[::17]), "files of a paged listing read right")
            m.unmount()
            check_sanitizers(m, "pages")


def test_faults(hub):
    tiny = hub_tree(hub, "model", "alice/tiny-model", "main")
    big = hub_tree(hub, "model", "alice/big-model", "main")
    # 20% of all requests fail: 503s and connection resets.
    hub.set_faults([{"path": "/(api|alice)/", "origin": "any", "action": "status", "status": 503, "rate": 0.1},
                    {"path": "/(api|alice)/", "origin": "any", "action": "reset", "rate": 0.1},
                    {"path": ".", "origin": "cdn", "action": "status", "status": 503, "rate": 0.1},
                    {"path": ".", "origin": "cdn", "action": "reset", "rate": 0.1}])
    try:
        with Mount(hub, token=ALICE_WRITE_TOKEN) as m:
            bad = []
            for repo, tree in (("alice/tiny-model", tiny), ("alice/big-model", big)):
                for p, e in tree.items():
                    if not content_matches(m.read("%s/main/%s" % (repo, p)), e):
                        bad.append(p)
            faults = [r for r in hub.log() if r.get("fault")]
            T.ok(not bad and faults, "20%% 5xx and resets (%d faults): every sha256 right" % len(faults), bad)
            m.unmount()
            check_sanitizers(m, "faults")
    finally:
        hub.clear_faults()

    # Corrupted bytes from the CDN: EIO, never wrong bytes.
    with Mount(hub, token=ALICE_WRITE_TOKEN) as m:
        path = "alice/tiny-model/main/model.safetensors"
        os.stat(m.p(path))
        hub.set_faults([{"origin": "cdn", "path": ".", "action": "corrupt", "after_bytes": 1000}])
        try:
            got = m.read(path)
            T.ok(False, "corrupted CDN bytes: the read fails", "read %d bytes, sha %s" % (len(got), sha256(got)))
        except OSError as e:
            T.eq(e.errno, errno.EIO, "corrupted CDN bytes: the read fails with EIO")
        hub.clear_faults()
        drop_page_cache(m.p(path))
        T.ok(content_matches(m.read(path), tiny["model.safetensors"]), "after the fault, the file reads right")

        # An expired CDN URL is resolved again, transparently.
        path = "alice/big-model/main/model.safetensors"
        with open(m.p(path), "rb") as f:
            f.read(4096)
            hub.clear_log()
            hub.set_faults([{"origin": "cdn", "path": ".", "action": "expire", "count": 1}])
            f.seek(32 * MiB)
            part = f.read(MiB)
        hub.clear_faults()
        log = hub.log()
        T.ok(len(part) == MiB and any(r["origin"] == "cdn" and r["status"] == 403 for r in log)
             and any("/resolve/" in r["path"] for r in log), "an expired CDN URL is resolved again")
        m.unmount()
        check_sanitizers(m, "corrupt/expire")

    # A stalled CDN: EIO within the timeout; other files still readable; unmount works.
    with Mount(hub, token=ALICE_WRITE_TOKEN, args=["--timeout", "3"]) as m:
        path = "alice/big-model/main/model.safetensors"
        os.stat(m.p(path))
        m.read("alice/tiny-model/main/config.json")
        hub.set_faults([{"origin": "cdn", "path": ".", "action": "stall", "seconds": 60}])
        t0 = time.monotonic()
        box = {}

        def stalled():
            try:
                with open(m.p(path), "rb") as f:
                    f.read(MiB)
                box["rc"] = 0
            except OSError as e:
                box["rc"] = e.errno
        th = threading.Thread(target=stalled, daemon=True)
        th.start()
        time.sleep(0.5)
        other = m.read("bob/hello-world/main/hello.txt", timeout=10)
        T.ok(other, "another file reads while the CDN stalls")
        th.join(30)
        took = time.monotonic() - t0
        T.ok(box.get("rc") == errno.EIO and took < 15, "a stalled CDN fails the read with EIO in %.1f s" % took, box)
        hub.clear_faults()
        status = m.unmount()
        T.ok(status == 0, "unmount works after a stall (daemon exit %r)" % status)
        check_sanitizers(m, "stall")


def test_private(hub):
    tree = hub_tree(hub, "model", "acme-research/private-model", "main")
    with Mount(hub, token=ALICE_WRITE_TOKEN) as m:
        T.ok(content_matches(m.read("acme-research/private-model/main/weights.bin"), tree["weights.bin"]),
             "a private repo reads with a token that may see it")
        m.unmount()
    for token, who in ((None, "anonymous"), (BOB_WRITE_TOKEN, "bob")):
        with Mount(hub, token=token) as m:
            T.eq(errno_of(os.stat, m.p("acme-research/private-model")), errno.ENOENT, "the private repo is ENOENT for %s" % who)
            T.ok("private-model" not in os.listdir(m.p("acme-research")), "and not listed for %s" % who)
            T.eq(errno_of(os.stat, m.p("me")), errno.ENOENT if token is None else 0, "me exists only with a token (%s)" % who)
            m.unmount()
            check_sanitizers(m, "private " + who)
    auth_cdn = [r for r in hub.log() if r["origin"] == "cdn" and r["auth"]]
    T.ok(not auth_cdn, "Authorization never reached the CDN origin", auth_cdn[:3])


def test_offline_and_eviction(hub):
    tiny = hub_tree(hub, "model", "alice/tiny-model", "main")
    big = hub_tree(hub, "model", "alice/big-model", "main")
    with Mount(hub, token=ALICE_WRITE_TOKEN) as m:
        cache = m.cache_dir
        m.read("alice/tiny-model/main/config.json")
        m.read("alice/tiny-model/main/model.safetensors")
        os.listdir(m.p("alice/tiny-model/main/docs"))
        m.unmount()
        cache_copy = cache + ".kept"
        subprocess.run(["cp", "-a", cache, cache_copy], check=True)
        with Mount(hub, token=ALICE_WRITE_TOKEN, args=["--offline"], cache_dir=cache_copy) as off:
            hub.clear_log()
            ok = content_matches(off.read("alice/tiny-model/main/model.safetensors"), tiny["model.safetensors"])
            ok = ok and content_matches(off.read("alice/tiny-model/main/config.json"), tiny["config.json"])
            T.ok(ok and "docs" in os.listdir(off.p("alice/tiny-model/main")), "--offline serves what was cached")
            T.eq(errno_of(off.read, "alice/tiny-model/main/tokenizer.json"), errno.EIO, "--offline: a file never read is EIO")
            T.eq(len(hub.log()), 0, "--offline makes no request")
            off.unmount()
            check_sanitizers(off, "offline")

    # Eviction: a 20 MiB cache; an open file is never evicted.
    with Mount(hub, token=ALICE_WRITE_TOKEN, args=["--cache-size", "20M"]) as m:
        pinned = "alice/tiny-model/main/model.safetensors"
        f = open(m.p(pinned), "rb")
        try:
            first = f.read()
            T.ok(content_matches(m.read("alice/big-model/main/model.safetensors"), big["model.safetensors"]),
                 "a file larger than the cache still reads right")
            m.read("datasets/acme-research/sample-dataset/main/data/train.bin")
            drop_page_cache(m.p(pinned))
            hub.clear_log()
            f.seek(0)
            again = f.read()
            T.ok(again == first and not data_requests(hub.log()), "an open file is not evicted (0 data requests)")
        finally:
            f.close()
        m.unmount()
        check_sanitizers(m, "eviction")
        r = subprocess.run([hubfs_binary(), "cache", "stats", "--cache-dir", m.cache_dir], capture_output=True, text=True,
                           timeout=30)
        line = [x for x in r.stdout.splitlines() if x.startswith("bytes")]
        used = int(line[0].split("(")[1].split()[0]) if line else -1
        T.ok(r.returncode == 0 and 0 <= used <= 20 * MiB, "eviction keeps the cache under its limit (%d bytes)" % used, r.stderr)


def tree_requests(records):
    return [r for r in api_requests(records) if "/tree/" in r["path"]]


def test_listings(hub):
    """Listings by git tree id, and the API requests of a first ls -l."""
    status, body, _ = hub.json("POST", "/api/repos/create", ALICE_WRITE_TOKEN,
                               {"name": "layered", "type": "model", "organization": "acme-research"})
    T.ok(status == 200, "an org repo is created (%d)" % status, body)
    repo = "acme-research/layered"
    commit_files(hub, repo, {"top.txt": b"one\n", "a/x.txt": b"x\n", "a/deep/z.txt": b"z\n", "b/y.txt": b"y\n"})
    first = hub_commit(hub, "model", repo, "main")
    commit_files(hub, repo, {"top.txt": b"two\n", "b/y.txt": b"y2\n"})
    second = hub_commit(hub, "model", repo, "main")

    def ls_l(m, rel):
        names = os.listdir(m.p(rel))
        for name in names:
            os.lstat(m.p(rel + "/" + name))
        return names

    for token, who, limit in ((ALICE_WRITE_TOKEN, "a member of the org", 3), (BOB_WRITE_TOKEN, "not a member", 4)):
        with Mount(hub, token=token) as fresh:
            hub.clear_log()
            names = ls_l(fresh, repo + "/main")
            api = api_requests(hub.log())
            T.ok(sorted(names) == [".gitattributes", "a", "b", "top.txt"] and len(api) <= limit,
                 "first ls -l of an org repo's branch from a cold mount, %s: %d API requests (at most %d)"
                 % (who, len(api), limit), "\n".join(r["method"] + " " + r["path"] for r in api))
            fresh.unmount()
            check_sanitizers(fresh, "first ls -l")

    with Mount(hub, token=ALICE_WRITE_TOKEN) as fresh:
        for rel in ("", "/a", "/a/deep", "/b"):
            ls_l(fresh, "%s@%s%s" % (repo, first, rel))
        hub.clear_log()
        seen = {}
        for rel in ("", "/a", "/a/deep", "/b"):
            seen[rel] = sorted(ls_l(fresh, "%s@%s%s" % (repo, second, rel)))
        trees = [r["path"] for r in tree_requests(hub.log())]
        # the root and b/ changed; a/ and a/deep/ have the tree ids listed at the first commit
        T.ok(len(trees) == 2 and not any("/a" in t.split(second, 1)[1] for t in trees),
             "a newer commit lists only its changed directories (%d tree requests)" % len(trees), "\n".join(trees))
        T.ok(seen["/a"] == ["deep", "x.txt"] and seen["/a/deep"] == ["z.txt"] and seen["/b"] == ["y.txt"],
             "reused listings have the directory's entries", repr(seen))
        with open(fresh.p("%s@%s/a/deep/z.txt" % (repo, second)), "rb") as f:
            T.eq(f.read(), b"z\n", "a file of a reused listing reads")
        with open(fresh.p("%s@%s/b/y.txt" % (repo, second)), "rb") as f:
            T.eq(f.read(), b"y2\n", "a changed directory has the newer file")
        hub.clear_log()
        ls_l(fresh, repo + "/main")
        T.eq(len(tree_requests(hub.log())), 0, "the branch at a commit listed before costs no tree request")
        fresh.unmount()
        check_sanitizers(fresh, "listings by tree id")


def main():
    if not have_fuse():
        print("1..0 # SKIP /dev/fuse or fusermount3 missing")
        return 0
    with LocalHub(seed=True) as hub:
        create_repo(hub, "huge-model")
        big_oid = upload_lfs(hub, "alice/huge-model", "model.safetensors", safetensors_bytes(1 << 30))
        T.diag("1 GiB safetensors uploaded: %s" % big_oid)
        with Mount(hub, token=ALICE_WRITE_TOKEN) as m:
            for test in (test_layout, test_all_files, test_pinned, test_names):
                try:
                    test(hub, m)
                except Exception as e:  # noqa: B902 - a crash of a test is a failure, the rest go on
                    T.ok(False, "%s raised %r" % (test.__name__, e))
            try:
                test_requests(hub, m, "alice/huge-model", big_oid)
            except Exception as e:  # noqa: B902
                T.ok(False, "test_requests raised %r" % e)
            cache_dir = os.path.join(tempfile.mkdtemp(prefix="hubfs-cache-"), "cache")
            m.unmount()
            check_sanitizers(m, "main mount")
            subprocess.run(["cp", "-a", m.cache_dir, cache_dir], check=True)
        for test, args in ((test_remount_cached, (hub, cache_dir)), (test_threads, (hub,)), (test_many_pages, ()),
                           (test_faults, (hub,)), (test_private, (hub,)), (test_listings, (hub,)), (test_offline_and_eviction, (hub,)),
                           (test_page_cache, (hub,))):
            try:
                test(*args)
            except Exception as e:  # noqa: B902
                T.ok(False, "%s raised %r" % (test.__name__, e))
        subprocess.run(["rm", "-rf", os.path.dirname(cache_dir)])
    T.done()


if __name__ == "__main__":
    main()
