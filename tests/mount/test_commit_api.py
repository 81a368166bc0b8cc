#!/usr/bin/env python3
"""The commit calls of src/hub_api.c against the local Hub (TAP), through tests/tools/hub_commit_tool.

Preupload decides LFS, LFS objects go up by basic or multipart PUT (not at all
when stored), the NDJSON commit lands once with the right bytes; renames by
reference, deletions, a stale parent, a read-only token, flaky uploads.
"""

import json
import os
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mountlib import BUILDDIR, Tap, git_blob_id, sha256  # noqa: E402
from harness import ALICE_READ_TOKEN, ALICE_WRITE_TOKEN, BOB_WRITE_TOKEN, LocalHub  # noqa: E402
from test_read import create_repo, hub_tree  # noqa: E402

T = Tap()
MiB = 1 << 20
TOOL = os.path.join(BUILDDIR, "tests", "tools", "hub_commit_tool")


def tool(hub, repo, parent, summary, ops, token=ALICE_WRITE_TOKEN):
    r = subprocess.run([TOOL, hub.url, token, "model/" + repo, "main", parent or "-", summary] + ops,
                       capture_output=True, text=True, timeout=300)
    out = r.stdout.split()
    result = out[-1] if r.returncode == 0 and len(out) >= 2 and out[-2] == "commit" else None
    err = out[-1] if len(out) >= 2 and out[-2] == "error" else None
    lfs = [out[i + 1] for i, w in enumerate(out[:-1]) if w == "lfs"]
    return result, err, lfs, r.stderr


def commits(hub, repo):
    status, body, _ = hub.json("GET", "/api/models/%s/commits/main" % repo, ALICE_WRITE_TOKEN)
    return [c["id"] for c in body]


def head(hub, repo):
    return hub.json("GET", "/api/models/%s/revision/main" % repo, ALICE_WRITE_TOKEN)[1]["sha"]


def matches(entry, data):
    if entry.get("lfs"):
        return entry["lfs"]["oid"] == sha256(data) and entry["lfs"]["size"] == len(data)
    return entry["oid"] == git_blob_id(data) and entry["size"] == len(data)


def downloaded(hub, repo, path):
    status, headers, body = hub.request("GET", "/%s/resolve/main/%s" % (repo, path), ALICE_WRITE_TOKEN)
    if status == 302:
        status, headers, body = hub.request("GET", None, url=headers["location"])
    return body if status == 200 else None


def main():
    tmp = tempfile.mkdtemp(prefix="hubfs-commit-")
    files = {"small.txt": b"hello hub\n", "weights.bin": os.urandom(11 * MiB) + b"x",
             "binary.dat": b"\0\1\2 a small binary file"}
    for name, data in files.items():
        with open(os.path.join(tmp, name), "wb") as f:
            f.write(data)
    p = lambda n: os.path.join(tmp, n)  # noqa: E731
    try:
        with LocalHub(seed=True) as hub:
            create_repo(hub, "commit-api")
            repo = "alice/commit-api"
            parent = head(hub, repo)
            before = len(commits(hub, repo))
            hub.clear_log()
            c, err, lfs, stderr = tool(hub, repo, parent, "Add three files",
                                       ["add:small.txt=" + p("small.txt"), "add:models/weights.bin=" + p("weights.bin"),
                                        "add:binary.dat=" + p("binary.dat")])
            T.ok(c is not None, "a commit of three files lands (%s)" % (c or err), stderr)
            T.eq(sorted(lfs), ["binary.dat", "models/weights.bin"], "preupload sends the big and the binary file to LFS")
            T.eq(len(commits(hub, repo)), before + 1, "exactly one commit")
            tree = hub_tree(hub, "model", repo, "main")
            T.ok(matches(tree["small.txt"], files["small.txt"]) and matches(tree["models/weights.bin"], files["weights.bin"])
                 and matches(tree["binary.dat"], files["binary.dat"]), "the tree holds the files' ids")
            T.ok(downloaded(hub, repo, "models/weights.bin") == files["weights.bin"], "the LFS file downloads byte for byte")
            puts = [r for r in hub.log() if r["method"] == "PUT"]
            T.eq(len(puts), 2, "two LFS objects were PUT")
            T.ok(not any(r["auth"] for r in puts), "no Authorization went with the storage PUTs")

            hub.clear_log()
            c2, err, lfs, _ = tool(hub, repo, c, "Same weights again", ["add:copy/weights.bin=" + p("weights.bin")])
            T.ok(c2 and not [r for r in hub.log() if r["method"] == "PUT"], "a stored LFS object is not sent again")

            w = files["weights.bin"]
            hub.clear_log()
            c3, err, _, _ = tool(hub, repo, c2, "Rename weights",
                                 ["mv:models/weights.bin=models/renamed.bin=%s=%d" % (sha256(w), len(w)), "del:small.txt",
                                  "delfolder:copy"])
            tree = hub_tree(hub, "model", repo, "main")
            T.ok(c3 and "models/renamed.bin" in tree and "models/weights.bin" not in tree and matches(tree["models/renamed.bin"], w),
                 "an LFS file is renamed by reference", err)
            T.ok("small.txt" not in tree and not any(k.startswith("copy/") for k in tree), "a file and a folder are deleted")
            T.ok(not [r for r in hub.log() if r["method"] == "PUT"], "the rename uploaded nothing")

            n = len(commits(hub, repo))
            c4, err, _, _ = tool(hub, repo, parent, "Stale", ["add:stale.txt=" + p("small.txt")])
            T.ok(c4 is None and err == "ESTALE", "a stale parent is refused with ESTALE (%s)" % err)
            T.eq(len(commits(hub, repo)), n, "and no commit was made")
            c5, err, _, _ = tool(hub, repo, c3, "No rights", ["add:ro.txt=" + p("small.txt")], token=ALICE_READ_TOKEN)
            T.ok(c5 is None and err == "EACCES", "a read-only token gets EACCES (%s)" % err)
            c6, err, _, _ = tool(hub, repo, c3, "Missing", ["del:no-such-file"])
            T.ok(c6 is None and err == "EINVAL", "deleting a missing file is refused: EINVAL (%s)" % err)

            # Flaky storage and API: 503s and resets on every step but the commit.
            big = os.urandom(3 * MiB)
            with open(p("flaky.bin"), "wb") as f:
                f.write(big)
            hub.set_faults([{"path": "/preupload/", "action": "status", "status": 503, "count": 1},
                            {"path": "/preupload/", "action": "reset", "count": 1},
                            {"path": "/objects/batch", "action": "status", "status": 502, "count": 1},
                            {"method": "PUT", "origin": "cdn", "path": ".", "action": "reset", "count": 1},
                            {"method": "PUT", "origin": "cdn", "path": ".", "action": "status", "status": 503,
                             "count": 1}])
            n = len(commits(hub, repo))
            hub.clear_log()
            c7, err, _, stderr = tool(hub, repo, c3, "Flaky upload", ["add:flaky.bin=" + p("flaky.bin")])
            faults = [r for r in hub.log() if r.get("fault")]
            hub.clear_faults()
            T.ok(c7 is not None and len(faults) >= 4, "with 5xx and resets (%d faults) the commit lands" % len(faults),
                 stderr)
            T.ok(len(commits(hub, repo)) == n + 1 and downloaded(hub, repo, "flaky.bin") == big,
                 "exactly once, with the right bytes")

            # Repos, visibility, model cards.
            def call(*args, token=ALICE_WRITE_TOKEN):
                r = subprocess.run([TOOL, args[0], hub.url, token] + list(args[1:]), capture_output=True, text=True,
                                   timeout=60)
                return r.stdout.strip()
            T.eq(call("repo-create", "model/alice/made-by-hubfs", "private"), "ok", "a private model repo is created")
            st, info, _ = hub.json("GET", "/api/models/alice/made-by-hubfs", ALICE_WRITE_TOKEN)
            T.ok(st == 200 and info["private"] is True, "the Hub has it, private")
            T.eq(hub.json("GET", "/api/models/alice/made-by-hubfs")[0], 401, "anonymous cannot see it")
            T.eq(call("repo-create", "dataset/acme-research/made-ds", "public"), "ok", "a public dataset in an org is created")
            T.eq(hub.json("GET", "/api/datasets/acme-research/made-ds")[0], 200, "anonymous sees the public dataset")
            T.eq(call("repo-create", "model/alice/made-by-hubfs", "private").split()[:2], ["error", "EEXIST"],
                 "creating it again is EEXIST")
            T.eq(call("repo-create", "model/acme-research/x", "public", token=BOB_WRITE_TOKEN).split()[:2],
                 ["error", "EACCES"], "creating in an org one is not in is EACCES")
            T.eq(call("repo-private", "model/alice/made-by-hubfs", "public"), "ok", "visibility is changed")
            T.eq(hub.json("GET", "/api/models/alice/made-by-hubfs")[0], 200, "and anonymous now sees it")
            good, bad = p("good.md"), p("bad.md")
            with open(good, "w") as f:
                f.write("---\nlicense: apache-2.0\ntags:\n- test\n---\n# Card\n")
            with open(bad, "w") as f:
                f.write("---\nlicense: apache-2.0\nthis line is not yaml\n---\n# Card\n")
            T.eq(call("validate-yaml", "model", good), "ok", "a valid model card passes validate-yaml")
            out = call("validate-yaml", "model", bad)
            T.ok(out.startswith("error EINVAL") and len(out.split()) > 2, "an invalid card is EINVAL with the Hub's reason (%s)" % out)

        with LocalHub(seed=True, lfs_chunk_size=4 * MiB) as hub:
            create_repo(hub, "multi")
            data = os.urandom(10 * MiB + 5)
            with open(p("multi.bin"), "wb") as f:
                f.write(data)
            hub.clear_log()
            c, err, lfs, stderr = tool(hub, "alice/multi", head(hub, "alice/multi"), "Multipart",
                                       ["add:multi.bin=" + p("multi.bin")])
            parts = [r for r in hub.log() if r["method"] == "PUT"]
            T.ok(c is not None and len(parts) == 3, "a 10 MiB file goes up in 3 parts of 4 MiB (%d PUTs)" % len(parts), stderr)
            T.ok(downloaded(hub, "alice/multi", "multi.bin") == data, "the multipart file downloads byte for byte")
    finally:
        subprocess.run(["rm", "-rf", tmp])
    T.done()


if __name__ == "__main__":
    main()
