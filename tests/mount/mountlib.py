"""Mount hubfs in tests: start `hubfs mount -f` against a LocalHub, and always unmount.

    from mountlib import Mount, Tap
    with LocalHub(seed=True) as hub, Mount(hub, token=ALICE_WRITE_TOKEN) as m:
        data = m.read("alice/tiny-model/main/config.json")

Every wait has a timeout. On exit the mount is unmounted (lazily if it is busy),
the daemon is stopped (SIGTERM, then SIGKILL), and its stderr is checked for
sanitizer reports: a report is a test failure. File operations that could
hang on a broken daemon run in a thread with a timeout.
"""

import ctypes
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRCDIR = os.environ.get("HUBFS_SRCDIR", os.path.dirname(os.path.dirname(HERE)))
BUILDDIR = os.environ.get("HUBFS_BUILDDIR", os.getcwd())
sys.path.insert(0, os.path.join(SRCDIR, "tests", "localhub"))

MOUNT_TIMEOUT = 15.0
STOP_TIMEOUT = 15.0
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                   "SUMMARY: UndefinedBehaviorSanitizer")


class Tap:
    """TAP output: ok()/eq() per assertion, done() prints the plan and exits."""

    def __init__(self):
        self.n = 0
        self.failed = 0

    def ok(self, cond, what, diag=None):
        self.n += 1
        if not cond:
            self.failed += 1
        print("%sok %d - %s" % ("" if cond else "not ", self.n, what), flush=True)
        if not cond and diag is not None:
            for line in str(diag).splitlines()[:40]:
                print("# " + line, flush=True)
        return bool(cond)

    def skip(self, what):
        self.n += 1
        print("ok %d # SKIP %s" % (self.n, what), flush=True)

    def eq(self, actual, expected, what):
        return self.ok(actual == expected, what, "got %r, expected %r" % (actual, expected))

    def diag(self, text):
        for line in str(text).splitlines():
            print("# " + line, flush=True)

    def done(self):
        print("1..%d" % self.n, flush=True)
        sys.exit(1 if self.failed else 0)


def hubfs_binary():
    return os.path.join(BUILDDIR, "hubfs")


def have_fuse():
    return os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def git_blob_id(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def with_timeout(fn, timeout, *args):
    """Runs fn(*args) in a thread; returns (result, exception); raises TimeoutError if it hangs."""
    box = {}

    def run():
        try:
            box["result"] = fn(*args)
        except BaseException as e:  # noqa: B902 - reported to the caller
            box["error"] = e
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError("%s did not return within %.0f s" % (getattr(fn, "__name__", fn), timeout))
    return box.get("result"), box.get("error")


def mounted(path):
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4 and fields[4] == path:
                return True
    return False


def drop_page_cache(path):
    """Asks the kernel to forget the pages of @path, so the next read reaches the daemon."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def hubfs_env(home, token=None):
    """The environment of a hubfs run by a test: none of the user's Hub settings, HOME=@home (so no real
    token file is ever found), HF_TOKEN=@token if given."""
    env = dict(os.environ)
    for k in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_HOME", "HF_ENDPOINT",
              "HF_HUB_OFFLINE", "XDG_CACHE_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        env.pop(k, None)
    env["HOME"] = home
    if token:
        env["HF_TOKEN"] = token
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
    return env


class Mount:
    """A hubfs mount of a LocalHub; a context manager."""

    def __init__(self, hub, token=None, args=(), cache_dir=None, endpoint=None):
        self.hub = hub
        self.token = token
        self.args = list(args)
        self._tmp = tempfile.mkdtemp(prefix="hubfs-mount-")
        self.path = os.path.join(self._tmp, "mnt")
        os.mkdir(self.path)
        self.cache_dir = cache_dir or os.path.join(self._tmp, "cache")
        self.endpoint = endpoint or hub.url
        self.proc = None
        self.stderr_path = os.path.join(self._tmp, "stderr")
        self.stderr = ""

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def env(self):
        return hubfs_env(self._tmp, self.token)

    def start(self):
        cmd = [hubfs_binary(), "mount", "-f", "--endpoint", self.endpoint, "--cache-dir", self.cache_dir]
        cmd += self.args + [self.path]
        self._err = open(self.stderr_path, "w")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._err, stderr=self._err,
                                     env=self.env())
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while time.monotonic() < deadline:
            if mounted(self.path):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self._err.flush()
        raise RuntimeError("hubfs did not mount (exit %r): %s" % (self.proc.poll(), self.read_stderr()))

    def read_stderr(self):
        try:
            with open(self.stderr_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def p(self, rel):
        return os.path.join(self.path, rel)

    def read(self, rel, timeout=120):
        def rd():
            with open(self.p(rel), "rb") as f:
                return f.read()
        result, err = with_timeout(rd, timeout)
        if err:
            raise err
        return result

    def unmount(self):
        """Unmounts and waits for the daemon; returns its exit status (None if it was killed)."""
        if self.proc is None:
            return None
        if mounted(self.path):
            r = subprocess.run(["fusermount3", "-u", self.path], capture_output=True, timeout=STOP_TIMEOUT)
            if r.returncode != 0 and mounted(self.path):
                subprocess.run(["fusermount3", "-uz", self.path], capture_output=True, timeout=STOP_TIMEOUT)
        try:
            status = self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGTERM)
            try:
                status = self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                status = None
        self.proc = None
        self._err.close()
        self.stderr = self.read_stderr()
        return status

    def sanitizer_report(self):
        return [line for line in self.stderr.splitlines() if any(m in line for m in SANITIZER_MARKS)]

    def close(self):
        try:
            self.unmount()
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)


def data_requests(records):
    """Log records that carried file content: resolve and raw GETs, and the CDN."""
    return [r for r in records if r["method"] in ("GET", "HEAD") and
            (r["origin"] == "cdn" or "/resolve/" in r["path"] or "/raw/" in r["path"])]


def api_requests(records):
    return [r for r in records if r["origin"] == "api" and r["path"].startswith("/api/")]


def range_bytes(record):
    """Bytes a record's Range asked for, or None."""
    rng = record.get("range")
    if not rng or not rng.startswith("bytes="):
        return None
    a, _, b = rng[6:].partition("-")
    return int(b) - int(a) + 1 if a and b else None
