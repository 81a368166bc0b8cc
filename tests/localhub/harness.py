"""Start and drive a localhub server from Python tests (standard library only).

    import sys; sys.path.insert(0, "tests/localhub")
    from harness import LocalHub, ALICE_WRITE_TOKEN

    with LocalHub(seed=True, page_size=5) as hub:
        status, headers, body = hub.request("GET", "/api/models/alice/tiny-model", token=ALICE_WRITE_TOKEN)
        hub.set_faults([{"path": "/resolve/", "action": "status", "status": 503, "count": 1}])
        records = hub.log()

The server runs as a subprocess of sys.executable. On exit (also when the body
of the with-block raised) it gets SIGTERM, then SIGKILL after 5 s, and a root
directory the harness created is removed. See README.md beside this file.
"""

import atexit
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlsplit

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "localhub.py")

ALICE_WRITE_TOKEN = "hf_seed_alice_write_0000000000000000"
ALICE_READ_TOKEN = "hf_seed_alice_read_00000000000000000"
BOB_WRITE_TOKEN = "hf_seed_bob_write_000000000000000000"
SEED_ORG = "acme-research"

START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0


class LocalHubError(RuntimeError):
    pass


_open = set()  # hubs not closed yet: closed (server stopped, temp dir removed) at interpreter exit


@atexit.register
def _close_all():
    for hub in list(_open):
        hub.close()


class LocalHub:
    """A running localhub server; a context manager (start() / stop() also work)."""

    def __init__(self, root=None, seed=False, users=(), page_size=None, lfs_chunk_size=None,
                 faults=None, extra_args=(), cdn_host="127.0.0.2"):
        self._own_root = root is None
        self._tmp = tempfile.mkdtemp(prefix="localhub-")
        _open.add(self)
        self.root = root or os.path.join(self._tmp, "root")
        self.seed = seed
        self.users = list(users)
        self.page_size = page_size
        self.lfs_chunk_size = lfs_chunk_size
        self.faults = faults
        self.extra_args = list(extra_args)
        self.cdn_host = cdn_host
        self.url = None
        self.cdn_url = None
        self.proc = None
        self._conn = None
        self._stderr = None

    # ---- lifecycle ---------------------------------------------------------

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

    def start(self):
        """Start the server and wait (START_TIMEOUT at most) for its port file."""
        port_file = os.path.join(self._tmp, "port")
        if os.path.exists(port_file):
            os.unlink(port_file)
        cmd = [sys.executable, SERVER, "--root", self.root, "--port-file", port_file,
               "--cdn-host", self.cdn_host]
        if self.seed:
            cmd.append("--seed")
        for user in self.users:
            cmd += ["--user", user]
        if self.page_size:
            cmd += ["--page-size", str(self.page_size)]
        if self.lfs_chunk_size:
            cmd += ["--lfs-chunk-size", str(self.lfs_chunk_size)]
        if self.faults is not None:
            faults_file = os.path.join(self._tmp, "faults.json")
            with open(faults_file, "w") as f:
                json.dump(self.faults, f)
            cmd += ["--faults", faults_file]
        cmd += self.extra_args
        self._stderr = open(os.path.join(self._tmp, "stderr.log"), "w+b")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._stderr,
                                     stderr=self._stderr)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if os.path.exists(port_file):
                with open(port_file) as f:
                    self.url = f.read().strip()
                break
            if self.proc.poll() is not None:
                raise LocalHubError("localhub exited with status %d:\n%s" % (self.proc.returncode, self.stderr()))
            if time.monotonic() > deadline:
                printed = self.stderr()  # before stop() closes the log
                self.stop()
                raise LocalHubError("localhub did not write its port file within %.0f s:\n%s"
                                    % (START_TIMEOUT, printed))
            time.sleep(0.02)
        self.cdn_url = self.admin("GET", "/_admin/info")["cdn"]
        return self

    def stderr(self):
        """Everything the server printed so far (stdout and stderr)."""
        if self._stderr is None:
            return ""
        if not self._stderr.closed:
            self._stderr.flush()
        with open(self._stderr.name, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self):
        """SIGTERM, then SIGKILL after 5 s; returns the exit status."""
        self._drop_conn()
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        status = self.proc.returncode
        self.proc = None
        if self._stderr is not None:
            self._stderr.close()
        return status

    def restart(self):
        """Stop and start again on the same root (a new port)."""
        self.stop()
        self.seed = False
        return self.start()

    def close(self):
        self.stop()
        shutil.rmtree(self._tmp, ignore_errors=True)  # holds the root only if we made it
        _open.discard(self)

    # ---- HTTP ----------------------------------------------------------------

    def _drop_conn(self):
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(self, method, path, token=None, headers=None, body=None, url=None, timeout=30):
        """One request on a kept-alive connection; returns (status, headers, body bytes).

        path is sent as given (already %-encoded). Header names in the answer are
        lower-cased; a repeated header's values are joined with ', '. url (an
        absolute http URL, e.g. a CDN Location) replaces url + path.
        """
        hdrs = dict(headers or {})
        if token:
            hdrs["Authorization"] = "Bearer %s" % token
        if isinstance(body, str):
            body = body.encode("utf-8")
        if url is not None:
            parts = urlsplit(url)
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
            target = parts.path + ("?" + parts.query if parts.query else "")
            try:
                return self._exchange(conn, method, target, hdrs, body)
            finally:
                conn.close()
        for attempt in (0, 1):
            if self._conn is None:
                parts = urlsplit(self.url)
                self._conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
            self._conn.timeout = timeout
            try:
                result = self._exchange(self._conn, method, path, hdrs, body)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self._drop_conn()
                if attempt:
                    raise
                continue
            if result[1].get("connection", "").lower() == "close":
                self._drop_conn()
            return result

    @staticmethod
    def _exchange(conn, method, target, headers, body):
        conn.request(method, target, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        out = {}
        for k, v in resp.getheaders():
            k = k.lower()
            out[k] = out[k] + ", " + v if k in out else v
        return resp.status, out, data

    def json(self, method, path, token=None, body=None, headers=None):
        """request() with a JSON body and answer: (status, decoded answer or None, headers)."""
        hdrs = {"Content-Type": "application/json"}
        hdrs.update(headers or {})
        data = json.dumps(body).encode() if body is not None else None
        status, rh, raw = self.request(method, path, token, hdrs, data)
        try:
            value = json.loads(raw) if raw else None
        except ValueError:
            value = None
        return status, value, rh

    def admin(self, method, path, body=None):
        status, value, _ = self.json(method, path, body=body)
        if status != 200:
            raise LocalHubError("%s %s -> %d %r" % (method, path, status, value))
        return value

    # ---- admin API -----------------------------------------------------------

    def log(self, since=None):
        """Request records (all, or those with seq > since)."""
        return self.admin("GET", "/_admin/log" + ("?since=%d" % since if since is not None else ""))

    def clear_log(self):
        self.admin("DELETE", "/_admin/log")

    def set_faults(self, rules):
        """Replace the fault rules; returns them as the server reports them."""
        return self.admin("PUT", "/_admin/faults", rules)

    def clear_faults(self):
        self.admin("DELETE", "/_admin/faults")

    def faults_state(self):
        return self.admin("GET", "/_admin/faults")

    def set_repo(self, repo_type, repo_id, **settings):
        """Admin change of a repo: gated, gated_allow, private, disabled."""
        return self.admin("PUT", "/_admin/repos/%s/%s" % (repo_type, repo_id), settings)
