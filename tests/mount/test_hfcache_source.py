#!/usr/bin/env python3
"""Existing huggingface_hub caches as blob sources (--hf-cache), against the local Hub (TAP).

A cache directory is laid out as huggingface_hub lays it out
(models--NS--NAME/{blobs,snapshots,refs}, .locks) with the bytes of files of
the seeded Hub. What a user checks: the bytes read through the mount have the
Hub's ids; the Hub's log shows no data request when the cache holds a good
copy, and the files' requests when the copy is corrupt (with one log line
naming it); the cache directory is the same afterwards, byte for byte, with
the same times.
"""

import errno
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mountlib import Mount, Tap, data_requests, drop_page_cache, git_blob_id, have_fuse, sha256  # noqa: E402
from harness import ALICE_WRITE_TOKEN, LocalHub  # noqa: E402

T = Tap()

# (repo, path) of the seeded files put in the cache
FILES = [("alice/big-model", "config.json"), ("alice/big-model", "model.safetensors"),
         ("alice/tiny-model", "config.json"), ("alice/tiny-model", "model.safetensors")]
# in the cache, but only in another repo's folder (content-addressed)
ELSEWHERE = ("alice/tiny-model", "tokenizer.json")


class EnvMount(Mount):
    """A Mount with extra environment variables."""

    def __init__(self, hub, extra_env=None, **kw):
        super().__init__(hub, **kw)
        self.extra_env = dict(extra_env or {})

    def env(self):
        env = super().env()
        env.update(self.extra_env)
        return env


def hub_file(hub, repo, path):
    """(bytes, entry) of @path at main, straight from the Hub (following the CDN redirect)."""
    status, info, _ = hub.json("GET", "/api/models/%s/revision/main?blobs=true" % repo, ALICE_WRITE_TOKEN)
    assert status == 200, (repo, status)
    entry = [s for s in info["siblings"] if s["rfilename"] == path][0]
    status, headers, body = hub.request("GET", "/%s/resolve/main/%s" % (repo, path), ALICE_WRITE_TOKEN)
    if status in (301, 302, 307):
        status, headers, body = hub.request("GET", None, url=headers["location"])
    assert status == 200, (repo, path, status)
    return body, entry, info["sha"]


def etag(entry, data):
    """The name huggingface_hub gives the blob: the LFS sha256, else the git blob id."""
    if entry.get("lfs"):
        return entry["lfs"]["sha256"]
    return git_blob_id(data)


def folder(repo):
    return "models--" + repo.replace("/", "--")


def lay_out(root, files):
    """A huggingface_hub cache at @root holding @files: {(repo, path): (data, entry, commit)}."""
    for (repo, path), (data, entry, commit) in files.items():
        base = os.path.join(root, folder(repo))
        blob = os.path.join(base, "blobs", etag(entry, data))
        snap = os.path.join(base, "snapshots", commit, path)
        os.makedirs(os.path.dirname(blob), exist_ok=True)
        os.makedirs(os.path.dirname(snap), exist_ok=True)
        os.makedirs(os.path.join(base, "refs"), exist_ok=True)
        os.makedirs(os.path.join(root, ".locks", folder(repo)), exist_ok=True)
        with open(blob, "wb") as f:
            f.write(data)
        if not os.path.lexists(snap):
            os.symlink(os.path.relpath(blob, os.path.dirname(snap)), snap)
        with open(os.path.join(base, "refs", "main"), "w") as f:
            f.write(commit)
        open(os.path.join(root, ".locks", folder(repo), etag(entry, data) + ".lock"), "w").close()


def put_elsewhere(root, data, entry):
    """The blob in the folder of a repo that is not its own."""
    blobs = os.path.join(root, "models--bob--some-other-model", "blobs")
    os.makedirs(blobs, exist_ok=True)
    with open(os.path.join(blobs, etag(entry, data)), "wb") as f:
        f.write(data)


def snapshot(root):
    """Every entry under @root: type, bytes' sha256 or link target, mode, mtime, atime (ns)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                what = "link " + os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    what = "file " + hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISDIR(st.st_mode):
                what = "dir"
            else:
                what = "other %o" % stat.S_IFMT(st.st_mode)
            out[os.path.relpath(p, root)] = (what, st.st_mode, st.st_mtime_ns, st.st_size)
    return out


def set_old_atimes(root):
    """Access times before the modification times, so a read would move them (relatime)."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            p = os.path.join(dirpath, name)
            if os.path.islink(p) or not os.path.isfile(p):
                continue
            st = os.stat(p)
            os.utime(p, ns=(st.st_mtime_ns - 10**9 * 3600, st.st_mtime_ns))


def atimes(root):
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p) and os.path.isfile(p):
                out[os.path.relpath(p, root)] = os.stat(p).st_atime_ns
    return out


def read_file(m, rel):
    drop_page_cache_safe(m.p(rel))
    return m.read(rel)


def drop_page_cache_safe(path):
    try:
        drop_page_cache(path)
    except OSError:
        pass


def data_paths(hub, since):
    return sorted(r["path"] for r in data_requests(hub.log(since)))


def last_seq(hub):
    recs = hub.log()
    return recs[-1]["seq"] if recs else 0


def test_good(hub, files, root):
    """A good cache: every file is read from it, not one data request."""
    set_old_atimes(root)
    before = snapshot(root)
    at_before = atimes(root)
    with Mount(hub, token=ALICE_WRITE_TOKEN, args=["--hf-cache", root]) as m:
        seq = last_seq(hub)
        big, big_entry, _ = files[("alice/big-model", "model.safetensors")]
        with open(m.p("alice/big-model/main/model.safetensors"), "rb") as f:
            head = f.read(4096)
        T.eq(head, big[:4096], "the 4 KiB header of a %d MiB LFS file, from the cache dir" % (len(big) >> 20))
        for (repo, path), (data, entry, _) in files.items():
            got = read_file(m, "%s/main/%s" % (repo, path))
            T.eq(sha256(got), sha256(data), "%s/%s: right bytes (sha256) through the mount" % (repo, path))
        data = files_elsewhere[0]
        got = read_file(m, "%s/main/%s" % ELSEWHERE)
        T.eq(sha256(got), sha256(data), "%s/%s: found in another repo's blobs/, right bytes" % ELSEWHERE)
        # random reads of the big file after a fresh open
        with open(m.p("alice/big-model/main/model.safetensors"), "rb") as f:
            ok = True
            for off in (len(big) - 100, len(big) // 2, 12345):
                f.seek(off)
                ok = ok and f.read(100) == big[off:off + 100]
        T.ok(ok, "random reads of the LFS file match")
        paths = data_paths(hub, seq)
        T.eq(paths, [], "0 data requests to the Hub for files the cache dir holds")
        m.unmount()
        warnings = [ln for ln in m.stderr.splitlines() if "huggingface_hub" in ln]
        T.eq(warnings, [], "no warning about the cache dir")
        T.eq(m.sanitizer_report(), [], "no sanitizer report")
    T.eq(snapshot(root), before, "the cache dir is unchanged: same entries, bytes, modes, mtimes")
    T.eq(atimes(root), at_before, "and the access times did not move (O_NOATIME)")


def test_default(hub, files, hf_home):
    """The default cache: HF_HUB_CACHE, HF_HOME/hub; --no-hf-cache turns it off."""
    root = os.path.join(hf_home, "hub")
    rel = "alice/tiny-model/main/config.json"
    want = files[("alice/tiny-model", "config.json")][0]
    for env, args, expect_hub, what in (
            ({"HF_HUB_CACHE": root}, [], False, "HF_HUB_CACHE"),
            ({"HF_HOME": hf_home}, [], False, "HF_HOME/hub"),
            ({}, ["-o", "hf_cache=" + root], False, "-o hf_cache=DIR"),
            ({"HF_HUB_CACHE": root}, ["--no-hf-cache"], True, "HF_HUB_CACHE with --no-hf-cache"),
            ({"HF_HUB_CACHE": root}, ["-o", "no_hf_cache"], True, "HF_HUB_CACHE with -o no_hf_cache"),
            ({}, [], True, "no huggingface_hub cache at all")):
        with EnvMount(hub, extra_env=env, token=ALICE_WRITE_TOKEN, args=args) as m:
            seq = last_seq(hub)
            got = read_file(m, rel)
            n = len(data_paths(hub, seq))
            T.ok(got == want and (n > 0) == expect_hub,
                 "%s: right bytes, %s" % (what, "read from the Hub" if expect_hub else "0 data requests"),
                 "data requests: %d" % n)


def test_corrupt(hub, files, root):
    """Corrupt copies (flipped bytes, wrong size) are ignored: the Hub is used, one log line each."""
    big, big_entry, _ = files[("alice/big-model", "model.safetensors")]
    tiny, tiny_entry, _ = files[("alice/tiny-model", "model.safetensors")]
    big_blob = os.path.join(root, folder("alice/big-model"), "blobs", etag(big_entry, big))
    tiny_blob = os.path.join(root, folder("alice/tiny-model"), "blobs", etag(tiny_entry, tiny))
    with open(big_blob, "r+b") as f:
        f.seek(len(big) // 3)
        b = f.read(16)
        f.seek(len(big) // 3)
        f.write(bytes(x ^ 0xFF for x in b))
    with open(tiny_blob, "r+b") as f:
        f.truncate(len(tiny) - 1000)
    before = snapshot(root)
    with Mount(hub, token=ALICE_WRITE_TOKEN, args=["--hf-cache", root]) as m:
        seq = last_seq(hub)
        # several separate fills of the corrupt big file: the copy is checked once
        ok = True
        with open(m.p("alice/big-model/main/model.safetensors"), "rb") as f:
            for off in (0, len(big) - 4096, len(big) // 2, len(big) // 3):
                f.seek(off)
                ok = ok and f.read(4096) == big[off:off + 4096]
        T.ok(ok, "random reads of a file whose copy has flipped bytes: the Hub's bytes")
        got = read_file(m, "alice/big-model/main/model.safetensors")
        T.eq(sha256(got), big_entry["lfs"]["sha256"], "flipped bytes in the copy: right sha256 through the mount")
        got = read_file(m, "alice/tiny-model/main/model.safetensors")
        T.eq(sha256(got), tiny_entry["lfs"]["sha256"], "a copy of the wrong size: right sha256 through the mount")
        got = read_file(m, "alice/big-model/main/config.json")
        T.eq(got, files[("alice/big-model", "config.json")][0], "a good copy beside them is still used")
        paths = data_paths(hub, seq)
        T.ok(all("config.json" not in p for p in paths), "no data request for the good copy", paths)
        T.ok(any(p.startswith("/alice/big-model/resolve/") for p in paths) and
             any(p.startswith("/alice/tiny-model/resolve/") for p in paths),
             "the Hub was asked for both corrupt files", paths)
        m.unmount()
        lines = m.stderr.splitlines()
        flipped = [ln for ln in lines if big_blob in ln]
        short = [ln for ln in lines if tiny_blob in ln]
        T.ok(len(flipped) == 1 and "does not match its id" in flipped[0],
             "one log line names the copy with flipped bytes (checked once)", m.stderr)
        T.ok(len(short) == 1 and ("is not %d bytes long" % len(tiny)) in short[0],
             "one log line names the copy of the wrong size", m.stderr)
        T.eq(m.sanitizer_report(), [], "no sanitizer report")
    T.eq(snapshot(root), before, "the corrupt cache dir is unchanged")


def test_odd_entries(hub, files, tmp):
    """A FIFO named like a blob, a blob that is a symlink out of the cache, a missing DIR."""
    root = os.path.join(tmp, "odd")
    outside = os.path.join(tmp, "outside")
    os.makedirs(outside)
    cfg, cfg_entry, _ = files[("alice/tiny-model", "config.json")]
    big_cfg, big_cfg_entry, _ = files[("alice/big-model", "config.json")]
    tiny_blobs = os.path.join(root, folder("alice/tiny-model"), "blobs")
    big_blobs = os.path.join(root, folder("alice/big-model"), "blobs")
    os.makedirs(tiny_blobs)
    os.makedirs(big_blobs)
    os.mkfifo(os.path.join(tiny_blobs, etag(cfg_entry, cfg)))
    with open(os.path.join(outside, "real-config"), "wb") as f:
        f.write(big_cfg)
    os.symlink(os.path.join(outside, "real-config"), os.path.join(big_blobs, etag(big_cfg_entry, big_cfg)))
    before = snapshot(root)
    missing = os.path.join(tmp, "no-such-dir")
    with Mount(hub, token=ALICE_WRITE_TOKEN, args=["--hf-cache", missing, "--hf-cache", root]) as m:
        seq = last_seq(hub)
        got = read_file(m, "alice/tiny-model/main/config.json")
        T.eq(got, cfg, "a FIFO named like the blob: no hang, the Hub's bytes")
        seq2 = last_seq(hub)
        got = read_file(m, "alice/big-model/main/config.json")
        T.eq(got, big_cfg, "a blob that is a symlink out of the cache: followed, right bytes")
        T.eq(data_paths(hub, seq2), [], "and 0 data requests for it")
        T.ok(len(data_paths(hub, seq)) > 0, "the FIFO's file came from the Hub")
        m.unmount()
        T.ok(any(missing in ln and "not used" in ln for ln in m.stderr.splitlines()),
             "a missing --hf-cache DIR is one log line, not fatal", m.stderr)
        T.eq(m.sanitizer_report(), [], "no sanitizer report")
    T.eq(snapshot(root), before, "the odd cache dir is unchanged")
    m = Mount(hub, token=ALICE_WRITE_TOKEN)
    m.args += ["--hf-cache", m.path]  # the mount reading itself would wait on itself
    with m:
        got = read_file(m, "alice/tiny-model/main/config.json")
        m.unmount()
        T.ok(got == cfg and any("inside the mountpoint; not used" in ln for ln in m.stderr.splitlines()),
             "--hf-cache of the mountpoint itself: refused with a log line, reads work", m.stderr)


def test_offline(hub, files, root, tmp):
    """Offline (--offline), a file the hubfs cache lacks is read from the cache dir."""
    cache_dir = os.path.join(tmp, "hubfs-cache-offline")
    rels = ["%s/main/%s" % k for k in files]
    with Mount(hub, token=ALICE_WRITE_TOKEN, cache_dir=cache_dir, args=["--no-hf-cache"]) as m:
        sizes = {rel: os.stat(m.p(rel)).st_size for rel in rels}  # the trees, not the bytes
    T.ok(all(sizes[rel] == len(files[k][0]) for rel, k in zip(rels, files)), "online: the trees are seen")
    with Mount(hub, token=ALICE_WRITE_TOKEN, cache_dir=cache_dir, args=["--offline", "--no-hf-cache"]) as m:
        try:
            m.read(rels[1])
            err = 0
        except OSError as e:
            err = e.errno
    T.eq(err, errno.EIO, "offline without the cache dir: %s is not there (EIO)" % rels[1])
    with Mount(hub, token=ALICE_WRITE_TOKEN, cache_dir=cache_dir, args=["--offline", "--hf-cache", root]) as m:
        ok = all(sha256(read_file(m, rel)) == sha256(files[k][0]) for rel, k in zip(rels, files))
        T.ok(ok, "offline with --hf-cache: every file, right bytes")


def official_client():
    """(python, PYTHONPATH, version) that run huggingface_hub's snapshot_download (HUBFS_HF_HUB_SRC: its
    src/ directory), or None."""
    src = os.environ.get("HUBFS_HF_HUB_SRC", "")
    env = dict(os.environ, PYTHONPATH=src) if src else dict(os.environ)
    code = "import huggingface_hub as h; from huggingface_hub import snapshot_download; print(h.__version__)"
    for python in (sys.executable, "/usr/bin/python3"):
        if not os.path.exists(python):
            continue
        r = subprocess.run([python, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        if r.returncode == 0:
            return python, src, r.stdout.strip()
    return None


def test_official_client(hub, tmp):
    """A cache filled by huggingface_hub's own snapshot_download: 0 data requests through the mount."""
    client = official_client()
    if not client:
        T.ok(True, "# SKIP huggingface_hub cannot be imported (set HUBFS_HF_HUB_SRC to its src/)")
        return
    python, src, version = client
    root = os.path.join(tmp, "official")
    env = dict(os.environ, HF_ENDPOINT=hub.url, HF_TOKEN=ALICE_WRITE_TOKEN, HF_HUB_DISABLE_XET="1",
               HF_HUB_CACHE=root, HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    if src:
        env["PYTHONPATH"] = src
    code = ("import json, sys; from huggingface_hub import snapshot_download as s; "
            "print(json.dumps([s(r) for r in sys.argv[1:]]))")
    r = subprocess.run([python, "-c", code, "alice/big-model", "alice/tiny-model"], env=env,
                       capture_output=True, text=True, timeout=300)
    if not T.ok(r.returncode == 0, "huggingface_hub %s: snapshot_download of two repos" % version, r.stderr[-2000:]):
        return
    snaps = dict(zip(("alice/big-model", "alice/tiny-model"), json.loads(r.stdout.strip().splitlines()[-1])))
    before = snapshot(root)
    with Mount(hub, token=ALICE_WRITE_TOKEN, args=["--hf-cache", root]) as m:
        seq = last_seq(hub)
        ok, n = True, 0
        for repo, snap in snaps.items():
            for dirpath, _, names in os.walk(snap):
                for name in names:
                    rel = os.path.relpath(os.path.join(dirpath, name), snap)
                    with open(os.path.join(dirpath, name), "rb") as f:
                        want = f.read()
                    got = read_file(m, "%s/main/%s" % (repo, rel))
                    ok = ok and sha256(got) == sha256(want)
                    n += 1
        T.ok(ok and n >= 8, "every file snapshot_download fetched (%d) reads the same through the mount" % n)
        T.eq(data_paths(hub, seq), [], "and costs 0 data requests to the Hub")
        m.unmount()
        T.eq(m.sanitizer_report(), [], "no sanitizer report")
    T.eq(snapshot(root), before, "the cache huggingface_hub filled is unchanged")


files_elsewhere = None


def main():
    global files_elsewhere
    if not have_fuse():
        print("1..0 # SKIP /dev/fuse or fusermount3 missing")
        return 0
    tmp = tempfile.mkdtemp(prefix="hubfs-hfcache-")
    try:
        with LocalHub(seed=True) as hub:
            files = {k: hub_file(hub, *k) for k in FILES}
            files_elsewhere = hub_file(hub, *ELSEWHERE)
            hf_home = os.path.join(tmp, "hfhome")
            root = os.path.join(hf_home, "hub")
            lay_out(root, files)
            put_elsewhere(root, files_elsewhere[0], files_elsewhere[1])
            T.diag("cache dir %s: %s" % (root, json.dumps(sorted(os.listdir(root)))))
            broken = os.path.join(tmp, "broken")
            shutil.copytree(root, broken, symlinks=True)
            for test, args in ((test_good, (hub, files, root)), (test_default, (hub, files, hf_home)),
                               (test_corrupt, (hub, files, broken)), (test_odd_entries, (hub, files, tmp)),
                               (test_offline, (hub, files, root, tmp)), (test_official_client, (hub, tmp))):
                try:
                    test(*args)
                except Exception as e:  # noqa: B902 - a crash of a test is a failure, the rest go on
                    T.ok(False, "%s raised %r" % (test.__name__, e))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    T.done()


if __name__ == "__main__":
    main()
