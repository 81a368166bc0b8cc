#!/usr/bin/env python3
"""The conventions of a mount (TAP): -o keys, mount(8) and fstab, the token's environment.

- `hubfs mount -o cache_dir=DIR,ttl=N,token_file=F` does what the long options do;
- `hubfs URL MOUNTPOINT -o ...`, the form mount.fuse3 runs, mounts URL;
- as root: `mount -t fuse 'HUBFS#URL' MOUNTPOINT -o ...`, an fstab line read with `mount -T FSTAB`, and
  `mount.fuse3 hubfs MOUNTPOINT -t fuse.hubfs -o endpoint=URL,...` (hubfs found on PATH) mount and read;
- the token given in HF_TOKEN is not in the daemon's /proc/PID/environ (nor HF_TOKEN at all), and the
  daemon still uses it (a private repo reads).
Every mount is unmounted and its daemon waited for, also when a check fails.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mountlib import Mount, Tap, have_fuse, hubfs_binary, hubfs_env, mounted, sha256, with_timeout  # noqa: E402
from harness import ALICE_WRITE_TOKEN, LocalHub  # noqa: E402

T = Tap()
PRIVATE = "acme-research/private-model/main/config.json"
WAIT = 20  # seconds for a mount to appear


def hub_file(hub, rel):
    repo, _, path = rel.partition("/main/")
    status, _, body = hub.request("GET", "/%s/resolve/main/%s" % (repo, path), token=ALICE_WRITE_TOKEN)
    if status == 302:
        raise RuntimeError("%s is an LFS file" % rel)
    if status != 200:
        raise RuntimeError("the Hub answered %d for %s" % (status, rel))
    return body


def wait_mounted(path):
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if mounted(path):
            return True
        time.sleep(0.05)
    return False


def daemon_pid(path):
    """The daemon's pid from the mount root's xattr (what hubfs umount uses), or None."""
    try:
        return int(os.getxattr(path, "user.hubfs.pid").decode())
    except (OSError, ValueError):
        return None


def unmount(path, pid=None):
    if mounted(path):
        r = subprocess.run(["fusermount3", "-u", path], capture_output=True, timeout=30)
        if r.returncode != 0 and mounted(path):
            subprocess.run(["fusermount3", "-uz", path], capture_output=True, timeout=30)
    if pid:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


def read_ok(path, want, what):
    data, err = with_timeout(lambda: open(path, "rb").read(), 60)
    T.ok(err is None and data is not None and sha256(data) == sha256(want), what, repr(err))


def test_environ(hub, tmp):
    """The daemon's environment no longer holds the token; it still uses it."""
    with Mount(hub, token=ALICE_WRITE_TOKEN) as m:
        read_ok(m.p(PRIVATE), hub_file(hub, PRIVATE), "the daemon reads a private repo with HF_TOKEN's token")
        with open("/proc/%d/environ" % m.proc.pid, "rb") as f:
            env = f.read()
        T.ok(ALICE_WRITE_TOKEN.encode() not in env, "the token is not in the daemon's /proc/PID/environ")
        T.ok(not any(v.startswith(b"HF_TOKEN=") and len(v) > len(b"HF_TOKEN=") for v in env.split(b"\0")),
             "no HF_TOKEN with a value in it")
        m.unmount()
        T.ok(not m.sanitizer_report(), "no sanitizer report", "\n".join(m.sanitizer_report()))


def run_mount(cmd, env, mnt, what):
    """Runs a command that mounts and returns (daemonised hubfs); (ok, pid)."""
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    ok = r.returncode == 0 and wait_mounted(mnt)
    T.ok(ok, what + " mounts", "exit %d: %s" % (r.returncode, r.stdout + r.stderr))
    return ok, daemon_pid(mnt) if ok else None


def test_o_keys(hub, tmp):
    """-o keys of the long options, in 'hubfs mount' and in the mount.fuse3 form."""
    token_file = os.path.join(tmp, "token")
    with open(token_file, "w") as f:
        f.write(ALICE_WRITE_TOKEN + "\n")
    want = hub_file(hub, PRIVATE)
    for form in ("mount", "source"):
        mnt = tempfile.mkdtemp(prefix="mnt-", dir=tmp)
        cache = os.path.join(tmp, "cache-" + form)
        opts = "cache_dir=%s,token_file=%s,ttl=5,commit_delay=1,local_only=*.scratch" % (cache, token_file)
        if form == "mount":
            cmd = [hubfs_binary(), "mount", mnt, "-o", opts + ",endpoint=" + hub.url]
        else:
            cmd = [hubfs_binary(), hub.url, mnt, "-o", opts]
        ok, pid = run_mount(cmd, hubfs_env(tmp), mnt, "'%s' with -o %s" % (" ".join(cmd[1:3]), opts))
        try:
            if ok:
                read_ok(os.path.join(mnt, PRIVATE), want, "%s form: a private file reads with token_file=" % form)
                T.ok(os.path.exists(os.path.join(cache, "hubfs.db")), "%s form: cache_dir= holds the index" % form)
        finally:
            unmount(mnt, pid)
    # A bad value is refused, with the option's name.
    mnt = tempfile.mkdtemp(prefix="mnt-", dir=tmp)
    r = subprocess.run([hubfs_binary(), "mount", mnt, "-f", "-o", "ttl=soon,endpoint=" + hub.url],
                       env=hubfs_env(tmp), capture_output=True, text=True, timeout=60)
    T.ok(r.returncode != 0 and "ttl" in r.stderr and not mounted(mnt), "-o ttl=soon is refused", r.stderr)
    unmount(mnt)


def test_mount8(hub, tmp):
    """mount(8) with the 'PROGRAM#SOURCE' form, an fstab line, and mount.fuse3 -t fuse.hubfs."""
    token_file = os.path.join(tmp, "token")
    want = hub_file(hub, PRIVATE)
    bindir = os.path.join(tmp, "bin")
    os.makedirs(bindir, exist_ok=True)
    link = os.path.join(bindir, "hubfs")
    if not os.path.exists(link):
        os.symlink(os.path.abspath(hubfs_binary()), link)
    cases = []
    mnt = tempfile.mkdtemp(prefix="mnt-", dir=tmp)
    opts = "cache_dir=%s,token_file=%s" % (os.path.join(tmp, "cache-m8"), token_file)
    cases.append(("mount -t fuse 'hubfs#URL'", mnt,
                  ["mount", "-t", "fuse", "%s#%s" % (link, hub.url), mnt, "-o", opts], hubfs_env(tmp)))
    mnt = tempfile.mkdtemp(prefix="mnt-", dir=tmp)
    fstab = os.path.join(tmp, "fstab")
    with open(fstab, "w") as f:
        f.write("# hubfs test\n%s#%s %s fuse %s,noauto,_netdev 0 0\n" % (
            link, hub.url, mnt, "cache_dir=%s,token_file=%s" % (os.path.join(tmp, "cache-fstab"), token_file)))
    cases.append(("an fstab line", mnt, ["mount", "-T", fstab, mnt], hubfs_env(tmp)))
    mnt = tempfile.mkdtemp(prefix="mnt-", dir=tmp)
    env = hubfs_env(tmp)
    env["PATH"] = bindir + ":" + env.get("PATH", "/usr/bin:/bin")
    mount_fuse = shutil.which("mount.fuse3") or "/sbin/mount.fuse3"
    cases.append(("mount.fuse3 hubfs -t fuse.hubfs", mnt,
                  [mount_fuse, "hubfs", mnt, "-t", "fuse.hubfs", "-o",
                   "endpoint=%s,cache_dir=%s,token_file=%s" % (hub.url, os.path.join(tmp, "cache-mf"), token_file)],
                  env))
    for what, mnt, cmd, env in cases:
        ok, pid = run_mount(cmd, env, mnt, what)
        try:
            if ok:
                read_ok(os.path.join(mnt, PRIVATE), want, what + ": a private file reads right")
                with open("/proc/self/mountinfo") as f:
                    line = [x for x in f if (" %s " % mnt) in x]
                T.ok(line and "fuse.hubfs" in line[0], what + ": the mount's type is fuse.hubfs",
                     line[0] if line else "not in mountinfo")
        finally:
            unmount(mnt, pid)


def main():
    if not have_fuse():
        print("1..0 # SKIP /dev/fuse or fusermount3 missing")
        return 0
    tmp = tempfile.mkdtemp(prefix="hubfs-conv-")
    os.chmod(tmp, 0o755)
    try:
        with LocalHub(seed=True) as hub:
            for test in (test_environ, test_o_keys):
                try:
                    test(hub, tmp)
                except Exception as e:  # noqa: B902 - a crash is a failure
                    T.ok(False, "%s raised %r" % (test.__name__, e))
            if os.geteuid() != 0:
                print("ok %d - mount(8), fstab and mount.fuse3 # SKIP not root" % (T.n + 1)); T.n += 1
            else:
                try:
                    test_mount8(hub, tmp)
                except Exception as e:  # noqa: B902
                    T.ok(False, "test_mount8 raised %r" % e)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    T.done()


if __name__ == "__main__":
    main()
