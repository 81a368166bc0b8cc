#!/usr/bin/env python3
"""Read speed of a hubfs mount against curl and the local disk (a benchmark, not a test).

    python3 bench/read_speed.py [--size-mib 1024] [--runs 3]

Starts a local Hub, uploads a file of random bytes (LFS), and prints MB/s
(10^6 bytes/s, median of --runs) of:
  curl        curl of the resolve URL (following the CDN redirect) to /dev/null
  cold        dd bs=1M through a fresh mount (empty cache): the network path
  warm        the same after the kernel's page cache was dropped: the blob cache
  hot         the same with the page cache (keep_cache): the daemon is not asked
  remount     dd through a new mount of a cache that holds the file, the page cache of
              its blob file dropped: the first read of each chunk checks its CRC32C
  disk cold   dd of the same file on local disk, page cache dropped
  disk hot    dd of the same file on local disk, page cache hot
and the ratios cold/curl, warm/disk cold, hot/disk hot; the bytes fetched to
read a safetensors header; the daemon's peak RSS.  Run it as root so the
mount's read-ahead can be raised to 1 MiB (see MEASUREMENTS.md).
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "mount"))
sys.dont_write_bytecode = True

from mountlib import Mount, drop_page_cache, range_bytes  # noqa: E402,F401
from harness import ALICE_WRITE_TOKEN, LocalHub  # noqa: E402

sys.path.insert(0, os.path.join(HERE, "..", "tests", "mount"))
from test_read import create_repo, upload_lfs  # noqa: E402

MB = 1e6


def dd(path):
    t0 = time.monotonic()
    subprocess.run(["dd", "if=" + path, "of=/dev/null", "bs=1M"], check=True, capture_output=True)
    return time.monotonic() - t0


def curl(url, token):
    out = subprocess.run(["curl", "-s", "-L", "-o", "/dev/null", "-w", "%{size_download} %{time_total}",
                          "-H", "Authorization: Bearer " + token, url], check=True, capture_output=True,
                         text=True).stdout.split()
    return float(out[1]), int(out[0])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    size = a.size_mib << 20
    tmp = tempfile.mkdtemp(prefix="hubfs-bench-")
    local = os.path.join(tmp, "model.bin")
    with open(local, "wb") as f:
        for _ in range(a.size_mib):
            f.write(os.urandom(1 << 20))
    with open(local, "rb") as f:
        data = f.read()
    res = {}
    with LocalHub(users=["alice:%s:write" % ALICE_WRITE_TOKEN]) as hub:
        create_repo(hub, "bench")
        upload_lfs(hub, "alice/bench", "model.bin", data)
        del data
        url = hub.url + "/alice/bench/resolve/main/model.bin"
        res["curl"] = [size / curl(url, ALICE_WRITE_TOKEN)[0] / MB for _ in range(a.runs)]
        cold, warm, hot, rss = [], [], [], 0
        for _ in range(a.runs):
            with Mount(hub, token=ALICE_WRITE_TOKEN) as m:
                p = m.p("alice/bench/main/model.bin")
                os.stat(p)
                cold.append(size / dd(p) / MB)
                drop_page_cache(p)
                warm.append(size / dd(p) / MB)
                dd(p)
                hot.append(size / dd(p) / MB)
                with open("/proc/%d/status" % m.proc.pid) as f:
                    rss = max(rss, int([x for x in f if x.startswith("VmHWM")][0].split()[1]))
                m.unmount()
        res["cold"], res["warm"], res["hot"] = cold, warm, hot
        remount = []
        cache_dir = os.path.join(tmp, "cache")
        for run in range(a.runs + 1):
            with Mount(hub, token=ALICE_WRITE_TOKEN, cache_dir=cache_dir) as m:
                p = m.p("alice/bench/main/model.bin")
                os.stat(p)
                for root, _, names in os.walk(os.path.join(cache_dir, "blobs")):
                    for n in names:
                        drop_page_cache(os.path.join(root, n))
                t = dd(p)
                if run:  # the first run fills the cache
                    remount.append(size / t / MB)
                m.unmount()
        subprocess.run(["rm", "-rf", cache_dir], check=True)
        res["remount"] = remount
        disk_cold, disk_hot = [], []
        for _ in range(a.runs):
            drop_page_cache(local)
            disk_cold.append(size / dd(local) / MB)
            disk_hot.append(size / dd(local) / MB)
        res["disk cold"], res["disk hot"] = disk_cold, disk_hot

        # A safetensors-like header read: 8 bytes, then a few KiB.
        with Mount(hub, token=ALICE_WRITE_TOKEN) as m:
            p = m.p("alice/bench/main/model.bin")
            os.stat(p)
            hub.clear_log()
            with open(p, "rb") as f:
                f.read(8)
                f.read(16384)
            header_bytes = sum(r["bytes"] for r in hub.log() if r["origin"] == "cdn")
            m.unmount()
    os.unlink(local)
    os.rmdir(tmp)

    med = {k: statistics.median(v) for k, v in res.items()}
    print("file: %d MiB, median of %d runs, MB/s = 10^6 bytes/s" % (a.size_mib, a.runs))
    for k in ("curl", "cold", "warm", "hot", "remount", "disk cold", "disk hot"):
        print("  %-10s %8.0f MB/s   (%s)" % (k, med[k], ", ".join("%.0f" % x for x in res[k])))
    print("  cold / curl       %.2f" % (med["cold"] / med["curl"]))
    print("  warm / disk cold  %.2f" % (med["warm"] / med["disk cold"]))
    print("  remount / disk cold  %.2f" % (med["remount"] / med["disk cold"]))
    print("  hot / disk hot    %.2f" % (med["hot"] / med["disk hot"]))
    print("  header read: %d bytes fetched from the CDN" % header_bytes)
    print("  daemon peak RSS: %d MiB" % (rss // 1024))


if __name__ == "__main__":
    main()
