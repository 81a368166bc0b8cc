#!/usr/bin/env python3
"""Measure the CDN origin's download speed against nginx (README.md, "Speed").

    python3 tests/localhub/bench_cdn.py [--size-mib 1024] [--runs 5] [--workdir DIR]

Starts localhub on a temp root, uploads a random file of the given size
through the real LFS flow (batch, PUT, commit), then times curl downloads of
its CDN URL: the whole file, and the whole file as 1 MiB Range requests on one
keep-alive connection. If /usr/sbin/nginx exists, the same file is served by
nginx on 127.0.0.1 (temporary config, sendfile on and off) and timed the same
way. Prints medians in MB/s (10^6 bytes per second). Not part of `make check`.
"""

import argparse
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True
sys.path.insert(0, HERE)

from harness import ALICE_WRITE_TOKEN, LocalHub  # noqa: E402

MIB = 1 << 20


def curl_speed(args):
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{speed_download}\n"] + args,
                         check=True, capture_output=True, text=True).stdout.split()
    return [float(x) for x in out]


def whole(url, runs):
    return [curl_speed([url])[0] / 1e6 for _ in range(runs)]


def ranged(url, size, runs, workdir):
    """The whole file as 1 MiB ranges over one connection (curl --next)."""
    cfg = os.path.join(workdir, "ranges.curl")
    with open(cfg, "w") as f:
        for i, start in enumerate(range(0, size, MIB)):
            if i:
                f.write("next\n")
            f.write('url = "%s"\nrange = %d-%d\noutput = /dev/null\nsilent\n'
                    % (url, start, min(start + MIB, size) - 1))
    speeds = []
    for _ in range(runs):
        t = time.monotonic()
        subprocess.run(["curl", "-K", cfg], check=True)
        speeds.append(size / (time.monotonic() - t) / 1e6)
    return speeds


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def nginx(path, workdir, sendfile):
    """Start nginx serving path on a free 127.0.0.1 port: (process, URL)."""
    name = "sendfile-%s" % ("on" if sendfile else "off")
    www = os.path.join(workdir, "www")
    os.makedirs(www, exist_ok=True)
    target = os.path.join(www, "big.bin")
    if not os.path.exists(target):
        try:
            os.link(path, target)
        except OSError:
            shutil.copyfile(path, target)
    port = free_port()
    conf = os.path.join(workdir, "nginx-%s.conf" % name)
    with open(conf, "w") as f:
        f.write("worker_processes 1;\nerror_log %s/nginx-%s.log;\npid %s/nginx-%s.pid;\n"
                "events { worker_connections 64; }\nhttp {\n access_log off;\n keepalive_requests 100000;\n"
                " %s\n server { listen 127.0.0.1:%d; root %s; }\n}\n"
                % (workdir, name, workdir, name, "sendfile on; tcp_nopush on;" if sendfile
                   else "sendfile off; output_buffers 2 1m;", port, www))
    proc = subprocess.Popen(["/usr/sbin/nginx", "-c", conf, "-g", "daemon off;"])
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, "http://127.0.0.1:%d/big.bin" % port


def upload(hub, src, size, oid):
    """The LFS flow: batch, basic PUT, commit; returns (MB/s of the PUT, CDN URL)."""
    status, _, body = hub.request("POST", "/alice/tiny-model.git/info/lfs/objects/batch", ALICE_WRITE_TOKEN,
                                  {"Content-Type": "application/vnd.git-lfs+json"},
                                  json.dumps({"operation": "upload", "transfers": ["basic"],
                                              "objects": [{"oid": oid, "size": size}]}).encode())
    href = json.loads(body)["objects"][0]["actions"]["upload"]["href"]
    t = time.monotonic()
    subprocess.run(["curl", "-s", "-f", "-o", "/dev/null", "-T", src, href], check=True)
    up = size / (time.monotonic() - t) / 1e6
    commit = (json.dumps({"key": "header", "value": {"summary": "bench"}}) + "\n"
              + json.dumps({"key": "lfsFile", "value": {"path": "bench.bin", "algo": "sha256",
                                                        "oid": oid, "size": size}})).encode()
    status, _, body = hub.request("POST", "/api/models/alice/tiny-model/commit/main", ALICE_WRITE_TOKEN,
                                  {"Content-Type": "application/x-ndjson"}, commit)
    assert status == 200, body
    status, headers, _ = hub.request("HEAD", "/alice/tiny-model/resolve/main/bench.bin")
    return up, headers["location"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--workdir")
    a = p.parse_args()
    workdir = a.workdir or tempfile.mkdtemp(prefix="localhub-bench-")
    size = a.size_mib * MIB
    src = os.path.join(workdir, "src.bin")
    if not os.path.exists(src) or os.path.getsize(src) != size:
        with open(src, "wb") as f:
            for _ in range(a.size_mib):
                f.write(os.urandom(MIB))
    h = hashlib.sha256()
    with open(src, "rb") as f:
        for chunk in iter(lambda: f.read(8 * MIB), b""):
            h.update(chunk)
    oid = h.hexdigest()
    targets = []
    procs = []
    results = {}
    try:
        with LocalHub(seed=True) as hub:
            up, url = upload(hub, src, size, oid)
            results["localhub LFS upload (PUT, sha256, to disk)"] = [up]
            targets.append(("localhub CDN", url))
            if os.path.exists("/usr/sbin/nginx"):
                for sendfile in (True, False):
                    proc, nurl = nginx(src, workdir, sendfile)
                    procs.append(proc)
                    targets.append(("nginx sendfile %s" % ("on" if sendfile else "off"), nurl))
            for _, u in targets:
                whole(u, 1)  # page cache and connection warm-up
            for _ in range(a.runs):  # interleaved: this machine's speed drifts over time
                for name, u in targets:
                    results.setdefault(name + ", whole file", []).extend(whole(u, 1))
                for name, u in targets:
                    results.setdefault(name + ", 1 MiB ranges", []).extend(ranged(u, size, 1, workdir))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
    for name in sorted(results, key=lambda n: ("ranges" in n, n)):
        speeds = results[name]
        print("%-45s median %6.0f MB/s  (runs: %s)" % (name, statistics.median(speeds),
                                                       " ".join("%.0f" % s for s in speeds)))
    if not a.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
