#!/usr/bin/env python3
"""History, branches and commits from the shell, against the local Hub (TAP).

hubfs log of a repo, a branch, a pinned view, a file and a folder: its lines
are the Hub's commits (ids, dates, authors, titles), --json gives the same
as JSON lines, -n limits; on a repo of 2,000 commits, `hubfs log | head -3`
asks for one or two pages (counted in the Hub's log) and the full log has
every commit; a file changed once in 2,000 commits costs a few requests.
mkdir NS/REPO/NAME creates the branch on the Hub at main's head, it shows
at once and takes a commit; EEXIST, EINVAL, EPERM for rmdir, EACCES with a
read-only token.  hubfs commit -m/--description makes exactly one commit
with that title holding the pending files and prints its id and URL;
nothing pending says so and exits 0; a conflict, no rights and an
unreachable Hub exit 1 with a message, the changes staying staged.
"""

import ctypes
import errno
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mountlib import Mount, Tap, have_fuse, hubfs_binary  # noqa: E402
from harness import ALICE_READ_TOKEN, ALICE_WRITE_TOKEN, LocalHub  # noqa: E402
from test_read import errno_of  # noqa: E402
import seed as seedmod  # noqa: E402
from store import Store  # noqa: E402

T = Tap()
TINY = "alice/tiny-model"
LONG = "alice/long-history"
LONG_COMMITS = 2000
CMD_TIMEOUT = 120


def hubfs(*args, token=ALICE_WRITE_TOKEN, shell=None, timeout=CMD_TIMEOUT):
    """Runs the hubfs command line (or @shell, a pipeline using $HUBFS); returns (status, stdout, stderr)."""
    env = dict(os.environ)
    for k in ("HF_TOKEN", "HF_ENDPOINT", "XDG_CACHE_HOME", "HF_TOKEN_PATH", "HF_HOME"):
        env.pop(k, None)
    env["HOME"] = tempfile.gettempdir()
    if token:
        env["HF_TOKEN"] = token
    env["HUBFS"] = hubfs_binary()
    cmd = shell if shell is not None else [hubfs_binary()] + list(args)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL,
                       timeout=timeout, shell=shell is not None)
    return r.returncode, r.stdout, r.stderr


def hub_commits(hub, repo, rev="main"):
    items, url = [], "/api/models/%s/commits/%s" % (repo, rev)
    while url:
        status, headers, body = hub.request("GET", url, ALICE_WRITE_TOKEN)
        assert status == 200, (status, url)
        items += json.loads(body)
        link = headers.get("link", "")
        url = link[link.index("<") + 1:link.index(">")].split(hub.url, 1)[1] if 'rel="next"' in link else None
    return items


def line_of(c):
    """The line hubfs log prints for the Hub's commit @c."""
    return "%s %s %s %s" % (c["id"][:7], c["date"][:19] + "Z", ",".join(a["user"] for a in c["authors"]),
                            c["title"])


def commit_requests(records):
    return [r for r in records if r["origin"] == "api" and "/commits/" in r["path"]]


def hub_commit(hub, repo, branch, path, data, title):
    """Commits @path = @data to @branch directly on the Hub (another client)."""
    lines = [{"key": "header", "value": {"summary": title, "description": ""}},
             {"key": "file", "value": {"path": path, "content": data.decode(), "encoding": "utf-8"}}]
    status, _, body = hub.request("POST", "/api/models/%s/commit/%s" % (repo, branch), ALICE_WRITE_TOKEN,
                                  {"Content-Type": "application/x-ndjson"},
                                  "\n".join(json.dumps(x) for x in lines).encode())
    assert status == 200, (status, body)


def make_long_repo(root):
    """alice/long-history: LONG_COMMITS commits on main (counter.txt each time), fixed.txt only in the first."""
    store = Store(root)
    seedmod.seed(store)
    t0 = 1735689600  # 2025-01-01
    repo = store.create_repo("model", "alice", "long-history", "alice", timestamp=t0)
    for i in range(1, LONG_COMMITS + 1):
        ops = [("file", "counter.txt", b"%d\n" % i, None)]
        if i == 1:
            ops.append(("file", "fixed.txt", b"set once\n", None))
        store.create_commit(repo, "main", ops, "alice", "Count to %d" % i, timestamp=t0 + i)


def test_log(hub, m):
    hist = hub_commits(hub, TINY)
    want = [line_of(c) for c in hist]
    st, out, err = hubfs("log", m.p(TINY))
    T.eq((st, out.splitlines()), (0, want), "log of a repo directory: the Hub's commits of main, newest first")
    st, out, _ = hubfs("log", m.p(TINY + "/main"))
    T.eq(out.splitlines(), want, "log of the main branch: the same")
    st, out, _ = hubfs("log", "--json", m.p(TINY + "/main"))
    rows = [json.loads(x) for x in out.splitlines()]
    T.eq([(r["id"], r["title"], r["authors"], r["date"], r["message"]) for r in rows],
         [(c["id"], c["title"], [a["user"] for a in c["authors"]], c["date"], c["message"]) for c in hist],
         "--json: one object per line with the Hub's id, title, authors, date, message")
    st, out, _ = hubfs("log", "-n", "2", m.p(TINY + "/main"))
    T.eq(out.splitlines(), want[:2], "-n 2: the two newest")
    dev = [line_of(c) for c in hub_commits(hub, TINY, "dev")]
    st, out, _ = hubfs("log", m.p(TINY + "/dev"))
    T.eq(out.splitlines(), dev, "log of branch dev")
    v1 = hist[2]["id"]
    st, out, _ = hubfs("log", m.p("alice/tiny-model@%s" % v1[:7]))
    T.eq(out.splitlines(), want[2:], "log of a view pinned to a short commit id: from that commit")
    st, out, _ = hubfs("log", m.p(TINY + "/v1.0"))
    T.eq(out.splitlines(), want[2:], "log of tag v1.0")

    ds = "acme-research/sample-dataset"
    for rev, view in (("main", "datasets/%s" % ds), ("refs%2Fconvert%2Fparquet", "datasets/%s/refs/convert/parquet" % ds)):
        items = hub.json("GET", "/api/datasets/%s/commits/%s" % (ds, rev), ALICE_WRITE_TOKEN)[1]
        st, out, err = hubfs("log", m.p(view))
        T.eq((st, out.splitlines()), (0, [line_of(c) for c in items]), "log of %s: the Hub's commits" % view)

    # a file and a folder: the commits that changed them
    by_title = {c["title"]: line_of(c) for c in hist}
    st, out, _ = hubfs("log", m.p(TINY + "/main/config.json"))
    T.eq(out.splitlines(), [by_title["Update config"], by_title["Add config and tokenizer"]],
         "log of a file: the two commits that changed config.json")
    st, out, _ = hubfs("log", m.p(TINY + "/main/model.safetensors"))
    T.eq(out.splitlines(), [by_title["Add weights"]], "log of an LFS file: the commit that added it")
    st, out, _ = hubfs("log", m.p(TINY + "/main/docs"))
    T.eq(out.splitlines(), [by_title["Add config and tokenizer"]], "log of a folder")
    st, out, _ = hubfs("log", "--json", m.p(TINY + "/main/README.md"))
    T.eq([json.loads(x)["title"] for x in out.splitlines()], ["initial commit"], "--json of a file")

    # a private repo: the caller's own token, never the daemon's
    priv = "acme-research/private-model"
    want = [line_of(c) for c in hub_commits(hub, priv)]
    st, out, err = hubfs("log", m.p(priv))
    T.eq((st, out.splitlines()), (0, want), "log of a private repo with the caller's token")
    st, out, err = hubfs("log", m.p(priv), token=None)
    T.ok(st == 1 and out == "" and "no such repository" in err,
         "without a token of its own the caller sees no private history (the daemon's is not lent)", err)
    tok = os.path.join(m._tmp, "token")
    with open(tok, "w") as f:
        f.write(ALICE_WRITE_TOKEN + "\n")
    st, out, err = hubfs("log", "--token-file", tok, m.p(priv), token=None)
    T.eq((st, out.splitlines()), (0, want), "--token-file gives the token")
    values = [os.getxattr(p, x) for p in (m.path, m.p(priv), m.p(priv + "/main"), m.p(priv + "/main/config.json"))
              for x in os.listxattr(p)]
    T.ok(len(values) >= 8 and all(ALICE_WRITE_TOKEN.encode() not in v for v in values),
         "no xattr of the root, a repo, a branch or a file holds the token (%d values)" % len(values))

    st, out, err = hubfs("log", m.path)
    T.ok(st == 1 and "not in a repository" in err, "log of the mount root: exit 1, says why", err)
    st, out, err = hubfs("log", tempfile.gettempdir())
    T.ok(st == 1 and "not in a hubfs mount" in err, "log outside a mount: exit 1, says why", err)


def test_long(hub, m):
    hub.clear_log()
    t = time.monotonic()
    st, out, err = hubfs(shell='"$HUBFS" log "%s" | head -3' % m.p(LONG))
    took = time.monotonic() - t
    lines = out.splitlines()
    T.eq((st, [x.split(" ", 3)[3] for x in lines]), (0, ["Count to 2000", "Count to 1999", "Count to 1998"]),
         "hubfs log | head -3 on %d commits: the three newest" % LONG_COMMITS)
    T.ok(err == "", "head closing the pipe ends the log quietly", err)
    pages = commit_requests(hub.log())
    T.ok(1 <= len(pages) <= 2, "it asked for %d page(s) of commits, not %d" % (len(pages), LONG_COMMITS // 100),
         [r["path"] + "?" + (r["query"] or "") for r in pages])
    T.diag("hubfs log | head -3 of %d commits: %.2f s, %d page request(s)" % (LONG_COMMITS, took, len(pages)))

    hub.clear_log()
    t = time.monotonic()
    st, out, _ = hubfs("log", m.p(LONG + "/main"))
    took = time.monotonic() - t
    lines = out.splitlines()
    total = hub.request("GET", "/api/models/%s/commits/main?limit=1" % LONG, ALICE_WRITE_TOKEN)[1]["x-total-count"]
    T.eq((len(lines), str(len(lines))), (LONG_COMMITS + 1, total), "the full log has every commit (X-Total-Count)")
    T.ok(lines[0].endswith(" alice Count to 2000") and lines[-1].endswith(" alice initial commit"),
         "from the newest to the initial commit", [lines[0], lines[-1]])
    T.diag("full log of %d commits: %.2f s, %d page requests" % (len(lines), took, len(commit_requests(hub.log()))))

    hub.clear_log()
    st, out, _ = hubfs("log", m.p(LONG + "/main/fixed.txt"))
    api = [r for r in hub.log() if r["origin"] == "api" and r["path"].startswith("/api/")]
    T.eq([x.split(" ", 3)[3] for x in out.splitlines()], ["Count to 1"],
         "log of a file changed once in %d commits: that commit" % LONG_COMMITS)
    T.ok(len(api) <= 4, "in %d API requests (lastCommit, then the commit and the one before it)" % len(api),
         [r["method"] + " " + r["path"] for r in api])


def test_branches(hub, m):
    head = hub.json("GET", "/api/models/%s" % TINY, ALICE_WRITE_TOKEN)[1]["sha"]
    os.listdir(m.p(TINY))  # the listing is known before the branch is made
    T.eq(errno_of(os.mkdir, m.p(TINY + "/feature-1")), 0, "mkdir NS/REPO/NAME")
    T.ok("feature-1" in os.listdir(m.p(TINY)), "the branch shows at once in the repo's listing")
    refs = hub.json("GET", "/api/models/%s/refs" % TINY, ALICE_WRITE_TOKEN)[1]
    T.eq([b["targetCommit"] for b in refs["branches"] if b["name"] == "feature-1"], [head],
         "the Hub has the branch, at the head of main")
    T.eq(sorted(os.listdir(m.p(TINY + "/feature-1"))), sorted(os.listdir(m.p(TINY + "/main"))),
         "it holds main's tree")
    T.eq(errno_of(os.mkdir, m.p(TINY + "/feature%2Fx")), 0, "mkdir of a %-encoded name makes feature/x")
    refs = hub.json("GET", "/api/models/%s/refs" % TINY, ALICE_WRITE_TOKEN)[1]
    T.ok("feature/x" in [b["name"] for b in refs["branches"]], "the Hub has branch feature/x")

    T.eq(errno_of(os.mkdir, m.p(TINY + "/feature-1")), errno.EEXIST, "mkdir of an existing branch: EEXIST")
    T.eq(errno_of(os.mkdir, m.p(TINY + "/v1.0")), errno.EEXIST, "mkdir of an existing tag's name: EEXIST")
    for bad in ("a..b", "x.lock", "1c515a8adf05274858be17b907b51dd793e15785"):
        T.eq(errno_of(os.mkdir, m.p(TINY + "/" + bad)), errno.EINVAL, "mkdir %s: EINVAL" % bad)
    T.eq(errno_of(os.mkdir, m.p(LONG + "/refs")), errno.EINVAL, "mkdir refs (where the PRs go): EINVAL")
    T.eq(errno_of(os.rmdir, m.p(TINY + "/feature-1")), errno.EPERM, "rmdir of a branch: EPERM")
    T.ok("feature-1" in [b["name"] for b in hub.json("GET", "/api/models/%s/refs" % TINY,
                                                       ALICE_WRITE_TOKEN)[1]["branches"]],
         "the branch is still on the Hub")

    # a file into the new branch, committed with hubfs commit
    before = len(hub_commits(hub, TINY, "feature-1"))
    with open(m.p(TINY + "/feature-1/new.txt"), "wb") as f:
        f.write(b"on the feature branch\n")
    with open(m.p(TINY + "/feature-1/two.txt"), "wb") as f:
        f.write(b"second file\n")
    st, out, err = hubfs("commit", "-m", "Start the feature", "--description", "Two files.\nFrom the shell.",
                         m.p(TINY + "/feature-1/new.txt"))
    lines = out.splitlines()
    hist = hub_commits(hub, TINY, "feature-1")
    T.ok(st == 0, "hubfs commit -m exits 0", err)
    T.eq((len(hist) - before, hist[0]["title"], hist[0]["message"]),
         (1, "Start the feature", "Two files.\nFrom the shell."),
         "exactly one commit on the Hub, with that title and description")
    T.eq(lines, [hist[0]["id"], "%s/%s/commit/%s" % (hub.url, TINY, hist[0]["id"])],
         "it prints the commit's id and its URL")
    st_, _, body = hub.request("GET", "/%s/resolve/feature-1/new.txt" % TINY, ALICE_WRITE_TOKEN)
    st2, _, body2 = hub.request("GET", "/%s/resolve/feature-1/two.txt" % TINY, ALICE_WRITE_TOKEN)
    T.eq((st_, body, st2, body2), (200, b"on the feature branch\n", 200, b"second file\n"),
         "the commit holds both pending files")
    main = hub.json("GET", "/api/models/%s" % TINY, ALICE_WRITE_TOKEN)[1]["sha"]
    T.eq(main, head, "main did not move")
    st, out, err = hubfs("commit", m.p(TINY + "/feature-1"))
    T.ok(st == 0 and out.startswith("nothing to commit"), "nothing pending: says so, exit 0", out + err)
    T.eq(len(hub_commits(hub, TINY, "feature-1")), before + 1, "and makes no commit")
    st, out, err = hubfs("commit", m.p(TINY))
    T.ok(st == 1 and "name a branch" in err, "hubfs commit of a repo directory: exit 1, says why", err)
    st, out, err = hubfs("commit", m.p(TINY + "/v1.0"))
    T.ok(st == 1 and "not a branch" in err, "hubfs commit of a tag: exit 1, not a branch", err)
    st, out, err = hubfs("commit", "-m", "two\nlines", m.p(TINY + "/feature-1"))
    T.eq(st, 2, "a message of two lines is a usage error")

    # a conflict: the Hub changed the path since it was written here
    with open(m.p(TINY + "/feature-1/new.txt"), "wb") as f:
        f.write(b"ours\n")
    hub_commit(hub, TINY, "feature-1", "new.txt", b"theirs\n", "Someone else")
    st, out, err = hubfs("commit", "-m", "Ours", m.p(TINY + "/feature-1"))
    T.ok(st == 1 and "conflict" in err, "a conflict: exit 1, and the reason names it", err)
    body = hub.request("GET", "/%s/resolve/feature-1/new.txt" % TINY, ALICE_WRITE_TOKEN)[2]
    T.eq(body, b"theirs\n", "their change is not overwritten")
    os.setxattr(m.p(TINY + "/feature-1/new.txt"), "user.hub.resolve", b"theirs")

    # sync(1) and syncfs(2) do not reach the daemon (no FUSE_SYNCFS but for
    # virtiofs, no syncfs in libfuse 3.14): hubfs commit is the way
    n = len(hub_commits(hub, TINY, "feature-1"))
    with open(m.p(TINY + "/feature-1/synced.txt"), "wb") as f:
        f.write(b"after sync\n")
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(m.p(TINY + "/feature-1"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        rc = libc.syncfs(fd)
    finally:
        os.close(fd)
    os.sync()
    T.eq((rc, len(hub_commits(hub, TINY, "feature-1"))), (0, n),
         "syncfs and sync succeed and commit nothing, as the man page says")
    st, out, err = hubfs("commit", m.p(TINY + "/feature-1/synced.txt"))
    hist = hub_commits(hub, TINY, "feature-1")
    T.ok(st == 0 and len(hist) == n + 1 and hist[0]["title"] == "Add synced.txt with hubfs",
         "hubfs commit without -m: one commit with hubfs's own title", (st, err, hist[0]["title"]))

    # a title with a terminal escape: shown as '?', kept whole in --json
    hub_commit(hub, TINY, "feature-1", "esc.txt", b"x\n", "Colour \x1b[31mred")
    st, out, _ = hubfs("log", "-n", "1", m.p(TINY + "/feature-1"))
    T.ok(out.endswith(" alice Colour ?[31mred\n"), "control characters of a title are shown as ?", out)
    st, out, _ = hubfs("log", "--json", "-n", "1", m.p(TINY + "/feature-1"))
    T.eq(json.loads(out)["title"], "Colour \x1b[31mred", "--json keeps the title as the Hub has it")


def test_read_only(hub):
    with Mount(hub, token=ALICE_READ_TOKEN, args=["--commit-delay", "600"]) as m:
        T.eq(errno_of(os.mkdir, m.p(TINY + "/ro-branch")), errno.EACCES, "mkdir of a branch, read-only token: EACCES")
        refs = hub.json("GET", "/api/models/%s/refs" % TINY, ALICE_WRITE_TOKEN)[1]
        T.ok("ro-branch" not in [b["name"] for b in refs["branches"]], "and the Hub has no such branch")
        with open(m.p(TINY + "/main/ro.txt"), "wb") as f:
            f.write(b"cannot land\n")
        st, out, err = hubfs("commit", "-m", "Nope", m.p(TINY + "/main"), token=ALICE_READ_TOKEN)
        T.ok(st == 1 and "may not write" in err and re.search(r"1 change of .* stays staged", err),
             "hubfs commit with a read-only token: exit 1, no rights, the change stays staged", err)
        st, out, _ = hubfs("log", m.p(TINY), token=ALICE_READ_TOKEN)
        T.eq(st, 0, "log works with a read-only token")


def test_offline(hub):
    with Mount(hub, token=ALICE_WRITE_TOKEN, args=["--commit-delay", "600"]) as m:
        with open(m.p(TINY + "/main/later.txt"), "wb") as f:
            f.write(b"when the Hub is back\n")
        hub.stop()
        try:
            t = time.monotonic()
            st, out, err = hubfs("commit", "-m", "Later", m.p(TINY + "/main"))
            T.ok(st == 1 and "stay staged" in err, "the Hub out of reach: exit 1, the change stays staged", err)
            T.diag("hubfs commit with the Hub down failed after %.1f s (retries with backoff)" %
                   (time.monotonic() - t))
            st, out, err = hubfs("log", m.p(TINY))
            T.ok(st == 1 and "cannot list" in err, "log with the Hub down: exit 1, says why", err)
        finally:
            hub.start()


def test_token_file(hub):
    """A mount given --token-file: hubfs log of a private repo reads that file, with the caller's rights."""
    priv = "acme-research/private-model"
    want = [line_of(c) for c in hub_commits(hub, priv)]
    tmp = tempfile.mkdtemp(prefix="hubfs-history-tok-")
    try:
        tok = os.path.join(tmp, "token")
        with open(tok, "w") as f:
            f.write(ALICE_WRITE_TOKEN + "\n")
        os.chmod(tok, 0o600)
        with Mount(hub, token=None, args=["--token-file", tok]) as m:
            T.eq(os.getxattr(m.path, "user.hubfs.token_file").decode(), os.path.realpath(tok),
                 "the mount's root names its token file (the path)")
            st, out, err = hubfs("log", m.p(priv), token=None)
            T.eq((st, out.splitlines()), (0, want), "log of a private repo on a --token-file mount, no token given", )
            m.unmount()
            T.eq(m.sanitizer_report(), [], "no sanitizer report (--token-file mount)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    if not have_fuse():
        print("1..0 # SKIP no /dev/fuse")
        return 77
    root = tempfile.mkdtemp(prefix="hubfs-history-")
    try:
        make_long_repo(os.path.join(root, "hub"))
        with LocalHub(root=os.path.join(root, "hub"), seed=True) as hub:
            with Mount(hub, token=ALICE_WRITE_TOKEN, args=["--commit-delay", "600"]) as m:
                for test in (test_log, test_long, test_branches):
                    try:
                        test(hub, m)
                    except Exception as e:  # a broken step fails, the rest still runs
                        T.ok(False, "%s raised %r" % (test.__name__, e))
            T.eq(m.sanitizer_report(), [], "no sanitizer report")
            for test in (test_read_only, test_offline, test_token_file):
                try:
                    test(hub)
                except Exception as e:
                    T.ok(False, "%s raised %r" % (test.__name__, e))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return T.done()


if __name__ == "__main__":
    sys.exit(main())
