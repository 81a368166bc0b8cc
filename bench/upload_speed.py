#!/usr/bin/env python3
"""Upload speed: cp + sync through a hubfs mount against the official JS client (a benchmark).

    python3 bench/upload_speed.py [--size-mib 1024] [--runs 3]

Uploads a file of random bytes to a local Hub with @huggingface/hub's
uploadFiles (tests/conformance/node_modules, installed by scripts/install-deps)
and with `cp` into a mounted branch followed by `sync` of the file, and prints
MB/s (10^6 bytes/s, median of --runs), the ratio hubfs/JS, and the peak RSS
of the node process and of the hubfs daemon.
"""

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "mount"))
sys.dont_write_bytecode = True

from mountlib import Mount  # noqa: E402
from harness import ALICE_WRITE_TOKEN, LocalHub  # noqa: E402
from test_read import create_repo  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    size = a.size_mib << 20
    tmp = tempfile.mkdtemp(prefix="hubfs-upbench-")
    src = os.path.join(tmp, "model.bin")
    js, fs, js_rss, fs_rss = [], [], 0, 0
    try:
        with LocalHub(users=["alice:%s:write" % ALICE_WRITE_TOKEN]) as hub:
            for run in range(a.runs):
                with open(src, "wb") as f:  # new content each run: nothing is already stored
                    for _ in range(a.size_mib):
                        f.write(os.urandom(1 << 20))
                create_repo(hub, "js-%d" % run)
                before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
                out = subprocess.run(["node", os.path.join(HERE, "js_upload.mjs"), hub.url, ALICE_WRITE_TOKEN,
                                      "alice/js-%d" % run, "model.bin", src], capture_output=True, text=True,
                                     timeout=1800, check=True).stdout
                js.append(size / float(out.strip().splitlines()[-1]) / 1e6)
                js_rss = max(js_rss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before)

                with open(src, "r+b") as f:  # new content again for hubfs
                    f.write(os.urandom(1 << 20))
                create_repo(hub, "fs-%d" % run)
                with Mount(hub, token=ALICE_WRITE_TOKEN) as m:
                    dst = m.p("alice/fs-%d/main/model.bin" % run)
                    t0 = time.monotonic()
                    try:
                        shutil.copyfile(src, dst)
                        fd = os.open(dst, os.O_RDONLY)
                        os.fsync(fd)
                        os.close(fd)
                    except OSError as e:
                        print("hubfs cannot write here (%s): only the JS client was measured" % e)
                        m.unmount()
                        break
                    fs.append(size / (time.monotonic() - t0) / 1e6)
                    with open("/proc/%d/status" % m.proc.pid) as f:
                        fs_rss = max(fs_rss, int([x for x in f if x.startswith("VmHWM")][0].split()[1]))
                    m.unmount()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("file: %d MiB, median of %d runs, MB/s = 10^6 bytes/s" % (a.size_mib, a.runs))
    print("  JS client uploadFiles  %8.0f MB/s  (%s)  peak RSS %d MiB" % (
        statistics.median(js), ", ".join("%.0f" % x for x in js), js_rss // 1024))
    if fs:
        print("  hubfs cp + fsync       %8.0f MB/s  (%s)  daemon peak RSS %d MiB" % (
            statistics.median(fs), ", ".join("%.0f" % x for x in fs), fs_rss // 1024))
        print("  hubfs / JS             %.2f" % (statistics.median(fs) / statistics.median(js)))


if __name__ == "__main__":
    main()
