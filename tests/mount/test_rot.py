#!/usr/bin/env python3
"""Integration test of the chunk CRCs of the blob cache (TAP): bytes that rot in a blob file
between two mounts are caught on the first read after the remount and fetched again, alone.

Uploads an LFS file, reads it through a mount, unmounts, flips bytes of one chunk of the blob
file under the cache directory, remounts the same cache and reads again: the sha256 is the
original's, the Hub's request log shows one range request covering the rotten chunk (not the
whole file), the daemon logs the mismatch once, and a third read fetches nothing.
"""

import os
import random
import shutil
import sys
import tempfile

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mountlib import Mount, Tap, data_requests, drop_page_cache, have_fuse, sha256  # noqa: E402
from harness import ALICE_WRITE_TOKEN, LocalHub  # noqa: E402
from test_read import create_repo, upload_lfs  # noqa: E402

T = Tap()
MiB = 1 << 20
CHUNK = MiB  # the default chunk size (cache.h)
SIZE = 12 * MiB + 4321
ROTTEN = 7  # the chunk whose bytes are flipped


def ranges(records):
    """(first, last) byte of each data request that carried a Range, from the CDN or the Hub."""
    out = []
    for r in data_requests(records):
        rng = r.get("range") or ""
        if r["method"] == "GET" and rng.startswith("bytes=") and r.get("status") in (200, 206):
            a, _, b = rng[6:].partition("-")
            out.append((int(a), int(b) if b else SIZE - 1, r["origin"]))
    return out


def flip(path, offsets):
    with open(path, "r+b") as f:
        for off in offsets:
            f.seek(off)
            x = f.read(1)
            f.seek(off)
            f.write(bytes([x[0] ^ 0xff]))


def main():
    if not have_fuse():
        print("1..0 # SKIP /dev/fuse or fusermount3 missing")
        return 0
    data = random.Random(17).randbytes(SIZE)
    want = sha256(data)
    tmp = tempfile.mkdtemp(prefix="hubfs-rot-")
    cache_dir = os.path.join(tmp, "cache")
    path = "alice/rot-model/main/weights.bin"
    try:
        with LocalHub(seed=True) as hub:
            create_repo(hub, "rot-model")
            oid = upload_lfs(hub, "alice/rot-model", "weights.bin", data)
            with Mount(hub, token=ALICE_WRITE_TOKEN, cache_dir=cache_dir) as m:
                T.ok(sha256(m.read(path)) == want, "first read through the mount has the right sha256")
                m.unmount()
            blob = os.path.join(cache_dir, "blobs", oid[:2], oid)
            T.ok(os.path.isfile(blob) and os.path.getsize(blob) == SIZE, "the blob file is in the cache")
            start = ROTTEN * CHUNK
            flip(blob, [start + 5, start + 1000, start + CHUNK - 1])
            with open(blob, "rb") as f:
                T.ok(sha256(f.read()) != want, "bytes of chunk %d flipped in the blob file" % ROTTEN)

            with Mount(hub, token=ALICE_WRITE_TOKEN, cache_dir=cache_dir) as m:
                hub.clear_log()
                T.ok(sha256(m.read(path)) == want, "after the remount, the read has the original sha256")
                got = ranges(hub.log())
                T.diag("ranges fetched after the remount: %r" % got)
                cdn = [r for r in got if r[2] == "cdn"] or got
                T.ok(len(cdn) == 1 and cdn[0][0] <= start and cdn[0][1] >= start + CHUNK - 1 and
                     cdn[0][1] - cdn[0][0] + 1 < SIZE,
                     "exactly one range refetch, covering chunk %d and not the whole file" % ROTTEN,
                     "ranges fetched: %r" % got)
                hub.clear_log()
                drop_page_cache(m.p(path))
                T.ok(sha256(m.read(path)) == want and not data_requests(hub.log()),
                     "a third read fetches nothing")
                m.unmount()
                lines = [ln for ln in m.stderr.splitlines() if "does not match its crc32c" in ln]
                T.ok(len(lines) == 1 and oid in lines[0] and ("chunk %d " % ROTTEN) in lines[0],
                     "the daemon logged the mismatch once, with the blob and the chunk", "\n".join(lines))
                T.ok(not m.sanitizer_report(), "no sanitizer report from the daemon",
                     "\n".join(m.sanitizer_report()[:20]))
            with open(blob, "rb") as f:
                T.ok(sha256(f.read()) == want, "the blob file holds the right bytes again")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    T.done()


if __name__ == "__main__":
    main()
