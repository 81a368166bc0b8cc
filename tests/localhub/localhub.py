#!/usr/bin/env python3
"""localhub: a local Hugging Face Hub server for tests (entry point).

    python3 tests/localhub/localhub.py --root DIR [--host 127.0.0.1] [--port 0] --port-file FILE
            [--cdn-host 127.0.0.2] [--user NAME:TOKEN[:write|read][:ORG,ORG...]]... [--seed]
            [--page-size N] [--lfs-chunk-size BYTES] [--faults FILE.json]

Binds the API origin and the CDN origin, writes http://HOST:PORT to the port
file (tmp + rename) once both accept connections, and serves until SIGTERM or
SIGINT, then closes its listeners and exits 0. See README.md beside this file.
"""

import argparse
import os
import signal
import sys
import threading

sys.dont_write_bytecode = True  # never write __pycache__ into the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import httpcore  # noqa: E402
import seed as seedmod  # noqa: E402
from faults import Faults  # noqa: E402
from hub import HubApp  # noqa: E402
from lfs import CdnApp, LfsService, Signer  # noqa: E402
from reqlog import RequestLog  # noqa: E402
from store import Store, valid_name  # noqa: E402

FORBIDDEN_HOSTS = ("", "0.0.0.0", "::", "0", "*")


def parse_user(spec):
    """NAME:TOKEN[:write|read][:ORG,ORG...] -> (name, token, role, [orgs])."""
    parts = spec.split(":")
    if len(parts) < 2 or len(parts) > 4 or not parts[0] or not parts[1]:
        raise argparse.ArgumentTypeError("--user wants NAME:TOKEN[:write|read][:ORG,ORG...], got %r" % spec)
    name, token, rest = parts[0], parts[1], parts[2:]
    role = "write"
    if rest and rest[0] in ("write", "read"):
        role = rest.pop(0)
    elif len(rest) == 2:
        raise argparse.ArgumentTypeError("role must be write or read in %r" % spec)
    orgs = [o for o in rest[0].split(",") if o] if rest else []
    for n in [name] + orgs:
        if not valid_name(n):
            raise argparse.ArgumentTypeError("invalid user or organisation name %r" % n)
    if not token.startswith("hf_"):
        raise argparse.ArgumentTypeError("tokens look like hf_..., got %r" % token)
    return name, token, role, orgs


def positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def parse_args(argv):
    p = argparse.ArgumentParser(prog="localhub.py", description="Local Hugging Face Hub server for tests.")
    p.add_argument("--root", required=True, help="state directory (created; kept across restarts)")
    p.add_argument("--host", default="127.0.0.1", help="API address (loopback only)")
    p.add_argument("--port", type=int, default=0, help="API port (0: any free port)")
    p.add_argument("--port-file", required=True, help="where to write http://HOST:PORT when ready")
    p.add_argument("--cdn-host", default="127.0.0.2", help="address of the CDN/storage origin")
    p.add_argument("--cdn-port", type=int, default=0, help="CDN port (0: any free port)")
    p.add_argument("--user", action="append", type=parse_user, default=[],
                   metavar="NAME:TOKEN[:write|read][:ORG,ORG...]", help="add a user/token (repeatable)")
    p.add_argument("--seed", action="store_true", help="create the sample users and repos (idempotent)")
    p.add_argument("--page-size", type=positive_int, default=1000, help="page size of every listing")
    p.add_argument("--lfs-chunk-size", type=positive_int, default=None,
                   help="answer LFS uploads larger than this with multipart transfer")
    p.add_argument("--faults", help="JSON file with fault rules to start with")
    p.add_argument("--url-ttl", type=positive_int, default=3600, help="validity of signed CDN URLs (s)")
    args = p.parse_args(argv)
    for host in (args.host, args.cdn_host):
        if host.strip() in FORBIDDEN_HOSTS:
            p.error("refusing to listen on %r: use a loopback address" % host)
    return args


def write_port_file(path, url):
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w") as f:
        f.write(url + "\n")
    os.replace(tmp, path)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        faults = Faults()
        if args.faults:
            with open(args.faults, "rb") as f:
                faults.set(f.read())
    except (OSError, ValueError) as e:
        print("localhub: bad --faults file: %s" % e, file=sys.stderr)
        return 2

    store = Store(args.root)
    with store.lock:
        for name, token, role, orgs in args.user:
            store.accounts.add_user(name, token, role, orgs)
        store.accounts.save()
    if args.seed:
        seedmod.seed(store)

    log = RequestLog()
    stopping = threading.Event()
    lfs = LfsService(store, Signer(store.secret, args.url_ttl), args.lfs_chunk_size)
    hub = HubApp(store, lfs, log, faults, args.page_size)
    try:
        api = httpcore.Server((args.host, args.port), hub, "api", log, faults, stopping)
        cdn = httpcore.Server((args.cdn_host, args.cdn_port), CdnApp(lfs), "cdn", log, faults, stopping)
    except OSError as e:
        print("localhub: cannot listen: %s" % e, file=sys.stderr)
        return 1
    hub.base_url = lfs.api_url = api.base_url
    lfs.cdn_url = cdn.base_url

    def on_signal(signum, frame):
        stopping.set()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    threads = [threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True,
                                name="%s-listener" % srv.origin) for srv in (api, cdn)]
    for t in threads:
        t.start()
    write_port_file(args.port_file, api.base_url)
    print("localhub: api %s cdn %s root %s" % (api.base_url, cdn.base_url, store.root), file=sys.stderr,
          flush=True)
    while not stopping.wait(1.0):
        pass
    for srv in (api, cdn):
        srv.shutdown()
        srv.server_close()
    try:
        os.unlink(args.port_file)
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
