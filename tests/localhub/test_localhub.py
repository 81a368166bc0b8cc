#!/usr/bin/env python3
"""Tests of the local Hub server; prints TAP (run by automake's TAP driver).

Standard library only. Starts its servers with harness.LocalHub in temp dirs
(never writes in the source tree), stops them all, and exits non-zero if any
test failed. Run from any directory: python3 tests/localhub/test_localhub.py
"""

import base64
import hashlib
import http.client
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from urllib.parse import quote, urlsplit

sys.dont_write_bytecode = True  # the source tree may be read-only; keep it clean
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from harness import (ALICE_READ_TOKEN, ALICE_WRITE_TOKEN, BOB_WRITE_TOKEN,  # noqa: E402
                     LocalHub, LocalHubError)

CAROL_TOKEN = "hf_test_carol_0000000000000000000000"
TINY = "/api/models/alice/tiny-model"
DS = "/api/datasets/acme-research/sample-dataset"
PRIV = "/api/models/acme-research/private-model"
LFS_HDRS = {"Content-Type": "application/vnd.git-lfs+json", "Accept": "application/vnd.git-lfs+json"}
MIB = 1 << 20

TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


def eq(actual, expected, what=""):
    if actual != expected:
        raise AssertionError("%s: expected %r, got %r" % (what or "value", expected, actual))


def ok(cond, what):
    if not cond:
        raise AssertionError(what)


def js(body):
    return json.loads(body)


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def git_blob(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Ctx:
    """State shared by the tests: the main seeded hub and a few remembered values."""

    hub = None


def get(path, token=None, headers=None):
    return Ctx.hub.request("GET", path, token, headers)


def get_json(path, token=None):
    status, headers, body = get(path, token)
    return status, (js(body) if body else None), headers


def follow(path, token=None, limit=100, hub=None):
    """All items of a paginated listing, and the number of pages."""
    hub = hub or Ctx.hub
    items, pages, url = [], 0, hub.url + path
    while url and pages < limit:
        parts = urlsplit(url)
        status, headers, body = hub.request("GET", parts.path + ("?" + parts.query if parts.query else ""), token)
        eq(status, 200, "GET %s" % url)
        items += js(body)
        pages += 1
        link = headers.get("link", "")
        url = None
        if 'rel="next"' in link:
            url = link[link.index("<") + 1:link.index(">")]
            ok(url.startswith("http://"), "Link URL is absolute: %s" % url)
    return items, pages


def commit(path, lines, token=ALICE_WRITE_TOKEN, query=""):
    body = "\n".join(json.dumps(x) for x in lines)
    status, headers, raw = Ctx.hub.request("POST", path + query, token, {"Content-Type": "application/x-ndjson"},
                                           body.encode())
    return status, (js(raw) if raw else None), headers


def header(summary, **kw):
    value = {"summary": summary}
    value.update(kw)
    return {"key": "header", "value": value}


def add_file(path, data, **kw):
    value = {"path": path, "content": base64.b64encode(data).decode(), "encoding": "base64"}
    value.update(kw)
    return {"key": "file", "value": value}


def lfs_upload(repo_web, data, token=ALICE_WRITE_TOKEN, transfers=("basic", "multipart")):
    """Batch + PUT (basic or multipart, parts in parallel); returns (oid, batch answer)."""
    oid = sha256(data)
    status, headers, body = Ctx.hub.request(
        "POST", "/%s.git/info/lfs/objects/batch" % repo_web, token, LFS_HDRS,
        json.dumps({"operation": "upload", "transfers": list(transfers), "hash_algo": "sha_256",
                    "ref": {"name": "main"}, "objects": [{"oid": oid, "size": len(data)}]}).encode())
    eq(status, 200, "LFS batch: %s" % body[:200])
    ans = js(body)
    obj = ans["objects"][0]
    upload = obj.get("actions", {}).get("upload")
    if upload is None:
        return oid, ans
    hdr = upload.get("header") or {}
    if "chunk_size" in hdr:
        chunk = int(hdr["chunk_size"])
        parts = sorted((k for k in hdr if k.isdigit()), key=int)
        eq(len(parts), (len(data) + chunk - 1) // chunk, "number of parts")
        etags = {}

        def put(n):
            i = int(n) - 1
            st, h, _ = Ctx.hub.request("PUT", None, url=hdr[n], body=data[i * chunk:(i + 1) * chunk])
            eq(st, 200, "part %s" % n)
            etags[int(n)] = h["etag"]
        threads = [threading.Thread(target=put, args=(n,)) for n in reversed(parts)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        eq(sorted(etags), list(range(1, len(parts) + 1)), "every part has an ETag")
        done = json.dumps({"oid": oid, "parts": [{"partNumber": n, "etag": etags[n]} for n in sorted(etags)]})
        st, _, b = Ctx.hub.request("POST", None, headers=LFS_HDRS, body=done.encode(), url=upload["href"])
        eq(st, 200, "multipart completion: %s" % b[:200])
    else:
        st, _, b = Ctx.hub.request("PUT", None, url=upload["href"], body=data)
        eq(st, 200, "basic PUT: %s" % b[:200])
    return oid, ans


def raw_exchange(url, method="GET", path=None, headers=None, body=None, timeout=10):
    """One request on a fresh connection, no retries (for fault tests)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        target = path if path is not None else parts.path + ("?" + parts.query if parts.query else "")
        conn.request(method, target, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def lfs_location(web_path, token=None):
    status, headers, _ = Ctx.hub.request("HEAD", web_path, token)
    eq(status, 302, "resolve of an LFS file")
    return headers["location"]


def tree_ids(hub):
    """Every ref and every file id of the seeded repos, as one comparable dict."""
    out = {}
    for api in (TINY, "/api/models/alice/big-model", PRIV, DS, "/api/spaces/alice/demo-space",
                "/api/models/bob/hello-world"):
        st, h, b = hub.request("GET", api + "/refs?include_prs=1", ALICE_WRITE_TOKEN)
        out[api + " refs"] = js(b)
        out[api + " tree"] = follow(api + "/tree/main?recursive=1", ALICE_WRITE_TOKEN, hub=hub)[0]
        out[api + " history"] = follow(api + "/commits/main", ALICE_WRITE_TOKEN, hub=hub)[0]
    return out


# ---------------------------------------------------------------- seeding --

@test
def seed_content():
    """seed: repos, files, refs and history as documented"""
    items, _ = follow(TINY + "/tree/main?recursive=true")
    paths = {e["path"]: e for e in items}
    eq(sorted(paths), [".gitattributes", "README.md", "config.json", "docs", "docs/caf\u00e9 \u2615.txt",
                       "docs/read me.md", "model.safetensors", "tokenizer.json"], "tiny-model main tree")
    st = paths["model.safetensors"]
    ok(st["lfs"]["size"] == st["size"] and 2 * MIB <= st["size"] < 3 * MIB, "model.safetensors ~2 MiB LFS")
    eq(paths[".gitattributes"]["oid"], "a6344aac8c09253b3b630fb776ae94478aa0275b", "Hub default .gitattributes")
    eq(paths["docs"]["type"], "directory", "docs is a directory")
    _, refs, _ = get_json(TINY + "/refs?include_prs=1")
    eq(sorted(b["name"] for b in refs["branches"]), ["dev", "main"], "branches")
    eq([t["name"] for t in refs["tags"]], ["v1.0"], "tags")
    eq([p["ref"] for p in refs["pullRequests"]], ["refs/pr/1"], "pull requests")
    titles = [c["title"] for c in follow(TINY + "/commits/main")[0]]
    eq(titles, ["Update config", "Add weights", "Add config and tokenizer", "initial commit"], "main history")
    eq([c["title"] for c in follow(TINY + "/commits/dev")[0]][0], "Experiment on dev", "dev head")
    eq([c["title"] for c in follow(TINY + "/commits/refs%2Fpr%2F1")[0]][:2], ["Add pr-file", "Update config"],
       "PR 1 = main + one commit")
    v1 = [t["targetCommit"] for t in refs["tags"]][0]
    eq(follow(TINY + "/commits/main")[0][2]["id"], v1, "v1.0 is commit 2")
    files, _ = follow(DS + "/tree/main?recursive=1")
    eq(sorted(e["path"] for e in files if e["type"] == "file"),
       [".gitattributes", "README.md", "data/nested/deep/er/file.jsonl", "data/test/part-0000.csv",
        "data/train.bin", "data/train/part-0000.csv", "data/train/part-0001.csv"], "dataset files")
    conv, _ = follow(DS + "/tree/refs%2Fconvert%2Fparquet?recursive=1")
    ok("default/train/0000.parquet" in [e["path"] for e in conv], "refs/convert/parquet has the parquet file")
    big, _ = follow("/api/models/alice/big-model/tree/main")
    st = [e for e in big if e["path"] == "model.safetensors"][0]
    ok(st["size"] >= 64 * MIB and "lfs" in st, "big-model safetensors >= 64 MiB, LFS")
    status, h, data = get("/alice/big-model/resolve/main/model.safetensors", headers={"Range": "bytes=0-4095"})
    eq(status, 302, "big-model resolve")
    status, h, data = Ctx.hub.request("GET", None, headers={"Range": "bytes=0-4095"}, url=h["location"])
    n = int.from_bytes(data[:8], "little")
    hdr = json.loads(data[8:8 + n])
    end = max(v["data_offsets"][1] for k, v in hdr.items() if k != "__metadata__")
    eq(8 + n + end, st["size"], "safetensors header offsets cover the file exactly")
    space, _ = follow("/api/spaces/alice/demo-space/tree/main")
    eq(sorted(e["path"] for e in space), [".gitattributes", "README.md", "app.py", "requirements.txt"], "space")
    _, info, _ = get_json("/api/spaces/alice/demo-space")
    eq(info.get("sdk"), "gradio", "space sdk")
    hello, _ = follow("/api/models/bob/hello-world/tree/main")
    eq(sorted(e["path"] for e in hello), [".gitattributes", "README.md", "hello.txt"], "bob/hello-world")
    priv, _ = follow(PRIV + "/tree/main", ALICE_WRITE_TOKEN)
    w = [e for e in priv if e["path"] == "weights.bin"][0]
    eq((w["size"], "lfs" in w), (MIB, True), "private weights.bin 1 MiB LFS")


SEED_IDS = {  # documented in README.md; other tests may rely on them
    TINY: {"refs/heads/main": "1c515a8adf05274858be17b907b51dd793e15785",
           "refs/heads/dev": "65ab5cf7918f07e4e382e62576d39482a4b8adfa",
           "refs/tags/v1.0": "67b8c9fd5420996e890259d65cce0444dcbd04dc",
           "refs/pr/1": "511f4cbdbc46b700424923246e42cbf14ca01718"},
    "/api/models/alice/big-model": {"refs/heads/main": "30e1f3262d105c2f5e7af5cceceda5c32bcbb815"},
    PRIV: {"refs/heads/main": "92f98d2a2b3c9c20dc8cc52bc3dd09263c6d8998"},
    DS: {"refs/heads/main": "5e2f7d0ed8c9a0a307da355f685095a6f55f8781",
         "refs/convert/parquet": "1fe77b164613e2ff8e3d97bc4bf8a8692f18aa11"},
    "/api/spaces/alice/demo-space": {"refs/heads/main": "4515e2440972bcf250198158e288b3bdf8a47ce7"},
    "/api/models/bob/hello-world": {"refs/heads/main": "662bbb45d0678fc7654c05192da6a5be0e64778b"},
}


@test
def seed_documented_ids():
    """seed: commit ids are the ones README.md documents"""
    for api, expected in SEED_IDS.items():
        _, refs, _ = get_json(api + "/refs?include_prs=1", ALICE_WRITE_TOKEN)
        got = {x["ref"]: x["targetCommit"] for k in ("branches", "tags", "converts", "pullRequests")
               for x in refs[k]}
        eq(got, expected, api)


@test
def seed_ids_stable():
    """seed: two seeded roots have the same commit and file ids"""
    with LocalHub(seed=True) as other:
        eq(tree_ids(other), tree_ids(Ctx.hub), "refs and trees of a second seeded root")


# ------------------------------------------------------- accounts and auth --

@test
def whoami():
    """whoami-v2: user, orgs, token role and createdAt; 401 without or with a bad token"""
    st, me, _ = get_json("/api/whoami-v2", ALICE_WRITE_TOKEN)
    eq(st, 200, "status")
    eq((me["name"], me["type"]), ("alice", "user"), "identity")
    eq([o["name"] for o in me["orgs"]], ["acme-research"], "orgs")
    eq(me["auth"]["accessToken"]["role"], "write", "role")
    ok(me["auth"]["accessToken"]["createdAt"].endswith("Z"), "createdAt")
    ok(me["auth"]["accessToken"]["displayName"], "displayName")
    eq(get_json("/api/whoami-v2", ALICE_READ_TOKEN)[1]["auth"]["accessToken"]["role"], "read", "read token")
    eq(get_json("/api/whoami-v2", BOB_WRITE_TOKEN)[1]["orgs"], [], "bob has no org")
    eq(get("/api/whoami-v2")[0], 401, "anonymous")
    st, h, _ = get("/api/whoami-v2", "hf_not_a_token")
    eq((st, h.get("x-error-message")), (401, "Invalid credentials in Authorization header"), "bad token")
    st, h, _ = get(TINY, "hf_not_a_token")
    eq(st, 401, "a bad token is refused on public routes too")


@test
def overview():
    """users/organizations overview: 200, and 404 when absent"""
    st, u, _ = get_json("/api/users/alice/overview")
    eq((st, u["type"], u["name"]), (200, "user", "alice"), "user")
    st, o, _ = get_json("/api/organizations/acme-research/overview")
    eq((st, o["type"]), (200, "org"), "org")
    eq(o["numModels"], 0, "private models are not counted for anonymous")
    eq(get_json("/api/organizations/acme-research/overview", ALICE_WRITE_TOKEN)[1]["numModels"], 1, "alice sees it")
    eq(get("/api/users/nobody/overview")[0], 404, "missing user")
    eq(get("/api/organizations/alice/overview")[0], 404, "a user is not an org")


# --------------------------------------------------------- repo management --

@test
def create_repo():
    """repos/create: initial commit, 409 with url, 403 and 401"""
    hub = Ctx.hub
    st, ans, _ = hub.json("POST", "/api/repos/create", ALICE_WRITE_TOKEN, {"name": "fresh-model"})
    eq(st, 200, "create")
    eq(ans["url"], hub.url + "/alice/fresh-model", "url")
    st, ans, h = hub.json("POST", "/api/repos/create", ALICE_WRITE_TOKEN, {"name": "fresh-model", "type": "model"})
    eq(st, 409, "exists")
    ok(ans["url"].endswith("/alice/fresh-model") and ans["error"], "409 body has url and error")
    files, _ = follow("/api/models/alice/fresh-model/tree/main")
    eq([(f["path"], f["oid"]) for f in files], [(".gitattributes", "a6344aac8c09253b3b630fb776ae94478aa0275b")],
       "initial commit")
    eq(follow("/api/models/alice/fresh-model/commits/main")[0][0]["title"], "initial commit", "title")
    eq(hub.json("POST", "/api/repos/create", BOB_WRITE_TOKEN,
                {"name": "x", "organization": "acme-research"})[0], 403, "bob is not in acme-research")
    eq(hub.json("POST", "/api/repos/create", ALICE_READ_TOKEN, {"name": "x"})[0], 403, "read token")
    eq(hub.json("POST", "/api/repos/create", None, {"name": "x"})[0], 401, "anonymous")
    eq(hub.json("POST", "/api/repos/create", ALICE_WRITE_TOKEN, {"name": "bad--name"})[0], 400, "invalid name")
    st, ans, _ = hub.json("POST", "/api/repos/create", ALICE_WRITE_TOKEN,
                          {"name": "org-data", "organization": "acme-research", "type": "dataset",
                           "private": True})
    eq(st, 200, "private dataset in the org (old 'private' field)")
    eq(get("/api/datasets/acme-research/org-data")[0], 401, "anonymous: 401")
    st, h, _ = get("/api/datasets/acme-research/org-data", BOB_WRITE_TOKEN)
    eq((st, h.get("x-error-code")), (404, "RepoNotFound"), "bob: 404 RepoNotFound")
    eq(get("/api/datasets/acme-research/org-data", ALICE_READ_TOKEN)[0], 200, "alice's read token")
    st, ans, _ = hub.json("POST", "/api/repos/create", ALICE_WRITE_TOKEN,
                          {"name": "a-space", "type": "space", "sdk": "static", "visibility": "public"})
    eq(st, 200, "space")
    eq(ans["url"], hub.url + "/spaces/alice/a-space", "space url")


@test
def settings_privacy():
    """settings: private repos answer 401/404 RepoNotFound on every route"""
    hub = Ctx.hub
    hub.json("POST", "/api/repos/create", ALICE_WRITE_TOKEN, {"name": "secret-soon"})
    api = "/api/models/alice/secret-soon"
    eq(hub.json("PUT", api + "/settings", BOB_WRITE_TOKEN, {"visibility": "private"})[0], 403, "bob cannot")
    eq(hub.json("PUT", api + "/settings", ALICE_WRITE_TOKEN, {"visibility": "private"})[0], 200, "set private")
    routes = [("GET", api), ("GET", api + "/revision/main"), ("GET", api + "/tree/main"),
              ("GET", api + "/refs"), ("GET", api + "/commits/main"), ("POST", api + "/paths-info/main"),
              ("GET", "/alice/secret-soon/resolve/main/.gitattributes"),
              ("HEAD", "/alice/secret-soon/raw/main/.gitattributes"),
              ("POST", "/alice/secret-soon.git/info/lfs/objects/batch"),
              ("POST", api + "/preupload/main"), ("POST", api + "/commit/main")]
    for method, path in routes:
        body = b'{"paths":["x"]}' if method == "POST" else None
        for token, expect in ((None, 401), (BOB_WRITE_TOKEN, 404)):
            st, h, _ = hub.request(method, path, token, {"Content-Type": "application/json"}, body)
            eq((st, h.get("x-error-code")), (expect, "RepoNotFound"), "%s %s as %s" % (method, path, token))
    eq(hub.request("GET", "/alice/secret-soon/resolve/main/.gitattributes", ALICE_WRITE_TOKEN)[0], 200, "alice")
    eq(hub.json("PUT", api + "/settings", ALICE_WRITE_TOKEN, {"private": False})[0], 200, "public again")
    eq(get(api)[0], 200, "anonymous sees it again")


@test
def delete_repo():
    """repos/delete: gone afterwards, 404 when absent, 403 for others"""
    hub = Ctx.hub
    hub.json("POST", "/api/repos/create", ALICE_WRITE_TOKEN, {"name": "doomed", "type": "dataset"})
    eq(hub.json("DELETE", "/api/repos/delete", BOB_WRITE_TOKEN,
                {"name": "doomed", "organization": "alice", "type": "dataset"})[0], 403, "bob")
    eq(hub.json("DELETE", "/api/repos/delete", ALICE_WRITE_TOKEN,
                {"name": "doomed", "organization": "alice", "type": "dataset"})[0], 200, "delete")
    eq(get("/api/datasets/alice/doomed", ALICE_WRITE_TOKEN)[0], 404, "gone")
    eq(get("/api/datasets/alice/doomed")[0], 401, "gone (anonymous)")
    st, _, h = hub.json("DELETE", "/api/repos/delete", ALICE_WRITE_TOKEN,
                        {"name": "doomed", "organization": "alice", "type": "dataset"})
    eq((st, h.get("x-error-code")), (404, "RepoNotFound"), "delete again")


# ------------------------------------------------------------- repo info --

@test
def repo_info():
    """repo info: blobs, revisions, expand, cardData, errors"""
    st, info, _ = get_json(TINY + "?blobs=true")
    eq(st, 200, "status")
    for key in ("_id", "id", "author", "sha", "lastModified", "createdAt", "private", "gated", "disabled",
                "siblings", "tags", "cardData"):
        ok(key in info, "info has %s" % key)
    eq((info["id"], info["author"], info["private"], info["gated"]), ("alice/tiny-model", "alice", False, False), "")
    eq(info["cardData"], {"license": "apache-2.0"}, "cardData")
    sib = {s["rfilename"]: s for s in info["siblings"]}
    eq(sib["config.json"]["size"], len(get("/alice/tiny-model/resolve/main/config.json")[2]), "sibling size")
    lfs = sib["model.safetensors"]["lfs"]
    ok(len(lfs["sha256"]) == 64 and lfs["size"] == sib["model.safetensors"]["size"] and lfs["pointerSize"] > 100,
       "sibling lfs")
    ok("size" not in get_json(TINY)[1]["siblings"][0], "no blobs without blobs=true")
    history, _ = follow(TINY + "/commits/main")
    eq(info["sha"], history[0]["id"], "sha = main head")
    eq(info["lastModified"], history[0]["date"], "lastModified = head commit date")
    _, v1, _ = get_json(TINY + "/revision/v1.0")
    eq((v1["sha"], v1["lastModified"]), (history[2]["id"], history[2]["date"]), "revision v1.0")
    ok("model.safetensors" not in [s["rfilename"] for s in v1["siblings"]], "v1.0 has no weights")
    eq(get_json(TINY + "/revision/HEAD")[1]["sha"], info["sha"], "HEAD (as the JS client asks)")
    ok("pr-file.txt" in [s["rfilename"] for s in get_json(TINY + "/revision/refs%2Fpr%2F1")[1]["siblings"]],
       "revision refs%2Fpr%2F1")
    _, ex, _ = get_json(TINY + "?expand=sha&expand=private&expand[]=author")
    eq(sorted(ex), ["_id", "author", "id", "private", "sha"], "expand keeps only the asked keys")
    st, h, _ = get(TINY + "/revision/nope")
    eq((st, h.get("x-error-code")), (404, "RevisionNotFound"), "missing revision")
    st, h, _ = get("/api/models/alice/nope")
    eq((st, h.get("x-error-code")), (401, "RepoNotFound"), "missing repo, anonymous")
    st, h, _ = get("/api/models/alice/nope", BOB_WRITE_TOKEN)
    eq((st, h.get("x-error-code")), (404, "RepoNotFound"), "missing repo, authenticated")
    ok(all(h.get("x-request-id") for h in (get(TINY)[1], h)), "X-Request-Id on answers and errors")


@test
def models_listing():
    """/api/models: author, search, limit, privacy, Link pagination"""
    hub = Ctx.hub
    for i in range(7):
        hub.json("POST", "/api/repos/create", ALICE_WRITE_TOKEN, {"name": "list-me-%d" % i})
    items, pages = follow("/api/models?author=alice")
    ids = [x["id"] for x in items]
    eq(len(ids), len(set(ids)), "no duplicates across pages")
    ok(pages >= 3, "page size 5 gives several pages (%d)" % pages)
    ok({"alice/tiny-model", "alice/big-model", "alice/list-me-6"} <= set(ids), "alice's models listed")
    ok(all(i.startswith("alice/") for i in ids), "author filter")
    for key in ("_id", "id", "author", "private", "lastModified"):
        ok(key in items[0], "listing item has %s" % key)
    items2, pages2 = follow("/api/models?author=alice&limit=2")
    eq([x["id"] for x in items2], ids, "limit=2 pages give the same list")
    ok(pages2 > pages, "limit makes pages smaller")
    eq([x["id"] for x in follow("/api/models?search=list-me-3")[0]], ["alice/list-me-3"], "search")
    eq(follow("/api/models?author=acme-research")[0], [], "private model hidden from anonymous")
    eq(follow("/api/models?author=acme-research", BOB_WRITE_TOKEN)[0], [], "hidden from bob")
    eq([x["id"] for x in follow("/api/models?author=acme-research", ALICE_WRITE_TOKEN)[0]],
       ["acme-research/private-model"], "visible to alice")
    eq([x["id"] for x in follow("/api/datasets?author=acme-research")[0]], ["acme-research/sample-dataset"],
       "datasets")
    st, h, body = get("/api/models?author=alice")
    first = [x["id"] for x in js(body)]
    hub.json("POST", "/api/repos/create", ALICE_WRITE_TOKEN, {"name": "aaa-inserted"})
    nxt = h["link"][h["link"].index("<") + len(hub.url) + 1:h["link"].index(">")]
    rest, _ = follow(nxt)
    ids3 = first + [x["id"] for x in rest]
    eq(len(ids3), len(set(ids3)), "a repo created between pages shifts nothing (keyset cursor)")
    _, one, _ = get_json("/api/models?search=tiny-model&expand=sha&expand=downloads")
    eq(sorted(one[0]), ["_id", "downloads", "id", "sha"], "expand in listings")


# ------------------------------------------------------------ tree listing --

@test
def tree_pagination():
    """tree: small pages, recursive and not, every entry exactly once"""
    rec, pages = follow(DS + "/tree/main?recursive=true")
    paths = [e["path"] for e in rec]
    eq(len(paths), len(set(paths)), "no duplicates")
    ok(pages >= 3, "several pages (%d)" % pages)
    expected = {".gitattributes", "README.md", "data", "data/nested", "data/nested/deep", "data/nested/deep/er",
                "data/nested/deep/er/file.jsonl", "data/test", "data/test/part-0000.csv", "data/train",
                "data/train.bin", "data/train/part-0000.csv", "data/train/part-0001.csv"}
    eq(set(paths), expected, "recursive listing")
    for i, p in enumerate(paths):
        if "/" in p:
            ok(p.rsplit("/", 1)[0] in paths[:i], "directory %s comes before %s" % (p.rsplit("/", 1)[0], p))
    for flag in ("True", "1"):
        eq([e["path"] for e in follow(DS + "/tree/main?recursive=" + flag)[0]], paths, "recursive=%s" % flag)
    top, _ = follow(DS + "/tree/main")
    eq(sorted(e["path"] for e in top), [".gitattributes", "README.md", "data"], "non-recursive root")
    sub, _ = follow(DS + "/tree/main/data%2Ftrain")
    eq(sorted(e["path"] for e in sub), ["data/train/part-0000.csv", "data/train/part-0001.csv"], "%2F path")
    eq(follow(DS + "/tree/main/data/train")[0], sub, "plain / path")
    deep, _ = follow(DS + "/tree/main/data?recursive=1")
    eq(len(deep), len([p for p in paths if p.startswith("data/")]), "recursive below a path")
    e = [x for x in rec if x["path"] == "data/train.bin"][0]
    ok(e["lfs"]["oid"] and e["lfs"]["size"] == e["size"] and e["oid"] != e["lfs"]["oid"], "LFS entry")
    d = [x for x in rec if x["path"] == "data"][0]
    eq((d["type"], len(d["oid"]), d["size"]), ("directory", 40, 0), "directory entry")
    st, h, _ = get(DS + "/tree/main/no/such/dir")
    eq((st, h.get("x-error-code")), (404, "EntryNotFound"), "missing path")
    exp, _ = follow(TINY + "/tree/main?expand=true")
    lc = {x["path"]: x["lastCommit"]["title"] for x in exp}
    eq((lc["config.json"], lc["model.safetensors"], lc["README.md"], lc["docs"]),
       ("Update config", "Add weights", "initial commit", "Add config and tokenizer"), "lastCommit")


@test
def tree_cursor_pins_commit():
    """tree: pages after the first stay on the commit of the first page"""
    hub = Ctx.hub
    hub.json("POST", "/api/repos/create", ALICE_WRITE_TOKEN, {"name": "moving"})
    commit("/api/models/alice/moving/commit/main",
           [header("many files")] + [add_file("f%02d.txt" % i, b"%d" % i) for i in range(12)])
    st, h, body = get("/api/models/alice/moving/tree/main")
    first = [e["path"] for e in js(body)]
    commit("/api/models/alice/moving/commit/main", [header("delete some")] +
           [{"key": "deletedFile", "value": {"path": "f%02d.txt" % i}} for i in range(12)])
    rest = []
    url = h["link"][h["link"].index("<") + 1:h["link"].index(">")]
    while url:
        parts = urlsplit(url)
        st, h, body = get(parts.path + "?" + parts.query)
        rest += [e["path"] for e in js(body)]
        url = h["link"][h["link"].index("<") + 1:h["link"].index(">")] if "link" in h else None
    eq(len(first + rest), 13, "all 13 entries of the first commit")


@test
def paths_info():
    """paths-info: JSON and form bodies, directories, missing paths omitted"""
    hub = Ctx.hub
    st, ans, _ = hub.json("POST", TINY + "/paths-info/main", None,
                          {"paths": ["config.json", "docs", "nope.txt", "model.safetensors"], "expand": True})
    eq(st, 200, "JSON")
    by = {e["path"]: e for e in ans}
    eq(sorted(by), ["config.json", "docs", "model.safetensors"], "missing omitted, directory included")
    eq(by["docs"]["type"], "directory", "directory")
    eq(by["config.json"]["lastCommit"]["title"], "Update config", "expand")
    ok("lfs" in by["model.safetensors"], "lfs entry")
    st, h, body = hub.request("POST", TINY + "/paths-info/v1.0", None,
                              {"Content-Type": "application/x-www-form-urlencoded"},
                              b"paths=config.json&paths=docs%2Fread+me.md&expand=false")
    ans = js(body)
    eq(sorted(e["path"] for e in ans), ["config.json", "docs/read me.md"], "form, at a tag")
    ok("lastCommit" not in ans[0], "expand=false")
    st, h, body = hub.request("POST", TINY + "/paths-info/main", None,
                              {"Content-Type": "application/x-www-form-urlencoded"}, b"paths=README.md")
    eq([e["path"] for e in js(body)], ["README.md"], "a single form value")


# ----------------------------------------------------------- refs, history --

@test
def refs_with_prs():
    """refs: branches, tags, converts, pullRequests only with include_prs"""
    _, refs, _ = get_json(TINY + "/refs")
    ok("pullRequests" not in refs, "no PRs without include_prs")
    main = [b for b in refs["branches"] if b["name"] == "main"][0]
    eq(main["ref"], "refs/heads/main", "ref name")
    eq(main["targetCommit"], get_json(TINY)[1]["sha"], "targetCommit")
    _, refs, _ = get_json(TINY + "/refs?include_prs=1")
    eq(refs["pullRequests"][0]["ref"], "refs/pr/1", "PR")
    _, refs, _ = get_json(DS + "/refs")
    eq([(c["name"], c["ref"]) for c in refs["converts"]], [("parquet", "refs/convert/parquet")], "converts")


@test
def commits_pagination():
    """commits: newest first, paginated with Link, X-Total-Count"""
    st, h, body = get(TINY + "/commits/main?limit=1")
    eq(h.get("x-total-count"), "4", "X-Total-Count")
    eq(len(js(body)), 1, "limit=1")
    items, pages = follow(TINY + "/commits/main?limit=1")
    eq(pages, 4, "four pages of one")
    eq([c["title"] for c in items], ["Update config", "Add weights", "Add config and tokenizer", "initial commit"],
       "newest first")
    c = items[0]
    ok(len(c["id"]) == 40 and c["authors"][0]["user"] == "alice" and c["date"].endswith("Z") and "message" in c,
       "commit fields")
    eq(get(TINY + "/commits/dev")[1].get("x-total-count"), "4", "dev history")
    st, h, body = get(TINY + "/commits/main?limit=3")
    ok(re.search(r'[?&]p=1(&|>)', h.get("link", "")) and "limit=3" in h["link"],
       "next page by number, as the Hub: p=1 with the same limit (%s)" % h.get("link"))
    eq([c["title"] for c in js(get(TINY + "/commits/main?limit=3&p=1")[2])], ["initial commit"], "p=1 of 3")
    eq(js(get(TINY + "/commits/main?limit=3&p=5")[2]), [], "a page past the end is empty")
    eq(get(TINY + "/commits/main?p=x")[0], 400, "p must be a number")
    ok("/commits/main?p=1&limit=3>" in get(TINY + "/commits/main?limit=3")[1]["link"],
       "the next link reads ?p=1&limit=N, as the Hub's")
    ok("link" not in get(TINY + "/commits/main")[1], "4 commits fit the default page (50)")


@test
def short_ids_and_encoded_refs():
    """revisions: short ids, %-encoded refs, unencoded refs/pr/N is revision 'refs'"""
    items, _ = follow(TINY + "/commits/main")
    full = items[2]["id"]
    eq(get_json(TINY + "/revision/" + full[:7])[1]["sha"], full, "7-hex short id")
    eq(get_json(TINY + "/revision/" + full[:12])[1]["sha"], full, "12-hex short id")
    eq(get("/alice/tiny-model/resolve/%s/config.json" % full[:7])[1]["x-repo-commit"], full, "short id in resolve")
    eq(get(TINY + "/revision/0000000")[0], 404, "unknown short id")
    st, h, body = get("/alice/tiny-model/resolve/refs%2Fpr%2F1/pr-file.txt")
    eq((st, body), (200, b"Added by pull request 1.\n"), "%-encoded PR ref")
    st, h, _ = get("/alice/tiny-model/resolve/refs/pr/1/pr-file.txt")
    eq((st, h.get("x-error-code")), (404, "RevisionNotFound"), "unencoded refs/pr/1")
    eq(get("/alice/tiny-model/raw/refs%2Fheads%2Fdev/dev-notes.txt")[0], 200, "refs/heads/dev")
    eq(get("/datasets/acme-research/sample-dataset/resolve/refs%2Fconvert%2Fparquet/default/train/0000.parquet")[0],
       302, "refs/convert/parquet")
    eq(get("/alice/tiny-model/resolve/v1.0/model.safetensors")[0], 404, "file absent at the tag")


# ------------------------------------------------------------ file content --

@test
def resolve_and_raw():
    """resolve/raw: GET/HEAD, ETag, X-Repo-Commit, 404 EntryNotFound, 304, prefixes"""
    sha = get_json(TINY)[1]["sha"]
    st, h, body = get("/alice/tiny-model/resolve/main/config.json")
    eq(st, 200, "GET")
    eq(h["etag"], '"%s"' % git_blob(body), "ETag is the quoted git blob id")
    eq((h["x-repo-commit"], h["content-length"], h["accept-ranges"]), (sha, str(len(body)), "bytes"), "headers")
    st, hh, b2 = Ctx.hub.request("HEAD", "/alice/tiny-model/resolve/main/config.json")
    eq((st, b2, hh["etag"], hh["content-length"]), (200, b"", h["etag"], str(len(body))), "HEAD")
    st, h, body = get("/alice/tiny-model/raw/main/model.safetensors")
    ok(st == 200 and body.startswith(b"version https://git-lfs.github.com/spec/v1\noid sha256:"), "raw LFS pointer")
    eq(h["etag"], '"%s"' % git_blob(body), "raw ETag")
    st, h, body = get("/alice/tiny-model/resolve/main/" + quote("docs/caf\u00e9 \u2615.txt"))
    eq((st, body.decode()), (200, "Caf\u00e9 \u2615: a non-ASCII file name.\n"), "non-ASCII path")
    eq(get("/alice/tiny-model/resolve/main/docs/read%20me.md")[0], 200, "space in path")
    st, h, body = get("/alice/tiny-model/resolve/main/missing.txt")
    eq((st, h.get("x-error-code"), h.get("x-repo-commit")), (404, "EntryNotFound", sha), "missing file")
    ok(h["content-type"].startswith("application/json") and js(body)["error"], "JSON error body")
    eq(Ctx.hub.request("HEAD", "/alice/tiny-model/raw/main/missing.txt")[1].get("x-error-code"), "EntryNotFound",
       "HEAD raw of a missing file (fileExists)")
    eq(get("/alice/tiny-model/resolve/main/docs")[0], 404, "a directory")
    etag = get("/alice/tiny-model/resolve/main/config.json")[1]["etag"]
    eq(get("/alice/tiny-model/resolve/main/config.json", headers={"If-None-Match": etag})[0], 304, "If-None-Match")
    eq(get("/datasets/acme-research/sample-dataset/resolve/main/data/test/part-0000.csv")[2][:13], b"id,text,label",
       "datasets/ prefix")
    eq(get("/spaces/alice/demo-space/resolve/main/requirements.txt")[2], b"gradio\n", "spaces/ prefix")


@test
def ranges():
    """ranges: 206 with Content-Range, suffix, open end, 416 past the end"""
    path = "/alice/tiny-model/resolve/main/tokenizer.json"
    full = get(path)[2]
    n = len(full)
    st, h, body = get(path, headers={"Range": "bytes=0-9"})
    eq((st, body, h["content-range"], h["content-length"]), (206, full[:10], "bytes 0-9/%d" % n, "10"), "a-b")
    st, h, body = get(path, headers={"Range": "bytes=-5"})
    eq((st, body, h["content-range"]), (206, full[-5:], "bytes %d-%d/%d" % (n - 5, n - 1, n)), "suffix")
    st, h, body = get(path, headers={"Range": "bytes=%d-" % (n - 3)})
    eq((st, body), (206, full[-3:]), "open end")
    st, h, body = get(path, headers={"Range": "bytes=5-100000"})
    eq((st, body, h["content-range"]), (206, full[5:], "bytes 5-%d/%d" % (n - 1, n)), "end clamped")
    st, h, _ = get(path, headers={"Range": "bytes=%d-" % n})
    eq((st, h["content-range"]), (416, "bytes */%d" % n), "416")
    st, h, _ = Ctx.hub.request("HEAD", path, headers={"Range": "bytes=0-0"})
    eq((st, h["content-length"]), (206, "1"), "HEAD with a range")
    loc = lfs_location("/alice/tiny-model/resolve/main/model.safetensors")
    size = int(Ctx.hub.request("HEAD", "/alice/tiny-model/resolve/main/model.safetensors")[1]["x-linked-size"])
    st, h, body = Ctx.hub.request("GET", None, headers={"Range": "bytes=0-0"}, url=loc)
    eq((st, h["content-range"], len(body)), (206, "bytes 0-0/%d" % size, 1), "CDN range (fileDownloadInfo probe)")
    ok(h.get("etag"), "CDN ETag")
    st, h, body = Ctx.hub.request("GET", None, headers={"Range": "bytes=%d-" % size}, url=loc)
    eq((st, h["content-range"]), (416, "bytes */%d" % size), "CDN 416")
    st, h, body = Ctx.hub.request("GET", None, headers={"Range": "bytes=-100"}, url=loc)
    eq((st, len(body)), (206, 100), "CDN suffix")


@test
def lfs_redirect_to_cdn():
    """resolve of LFS: 302 to the CDN with X-Linked-*, no Authorization needed there"""
    hub = Ctx.hub
    st, h, _ = hub.request("GET", "/alice/tiny-model/resolve/main/model.safetensors")
    eq(st, 302, "302")
    loc = h["location"]
    ok(loc.startswith(hub.cdn_url + "/") and "127.0.0.2" in loc, "Location on the CDN origin: %s" % loc)
    ok("expires=" in loc and "sig=" in loc, "signed and expiring")
    oid = h["x-linked-etag"].strip('"')
    eq(h["etag"], h["x-linked-etag"], "ETag is the quoted sha256")
    ok(h["x-repo-commit"] and int(h["x-linked-size"]) > 0, "X-Repo-Commit, X-Linked-Size")
    st, ch, body = hub.request("GET", None, url=loc)
    eq((st, sha256(body), len(body)), (200, oid, int(h["x-linked-size"])), "CDN body")
    st, ch, body = hub.request("HEAD", None, url=loc)
    eq((st, ch["content-length"], body), (200, h["x-linked-size"], b""), "CDN HEAD")
    ok(ch.get("x-request-id"), "X-Request-Id on CDN answers")
    st, h, _ = hub.request("GET", "/acme-research/private-model/resolve/main/weights.bin", ALICE_WRITE_TOKEN)
    eq(st, 302, "private LFS file for alice")
    st, _, body = hub.request("GET", None, url=h["location"])
    eq((st, len(body)), (200, MIB), "private CDN URL needs no Authorization")
    eq(hub.request("GET", "/acme-research/private-model/resolve/main/weights.bin", BOB_WRITE_TOKEN)[0], 404, "bob")


@test
def cdn_signature():
    """CDN: expired or badly signed URLs answer 403"""
    loc = lfs_location("/alice/tiny-model/resolve/main/model.safetensors")
    st, h, body = Ctx.hub.request("GET", None, url=loc[:-1] + ("0" if loc[-1] != "0" else "1"))
    ok(st == 403 and b"AccessDenied" in body, "bad signature")
    st, h, body = Ctx.hub.request("GET", None, url=loc.replace("/lfs/", "/lfs/0").replace("/lfs/0", "/lfs/", 1))
    eq(st, 200, "untouched URL works")
    with open(os.path.join(Ctx.hub.root, "localhub.json")) as f:
        secret = bytes.fromhex(json.load(f)["secret"])
    sys.path.insert(0, HERE)
    from lfs import Signer
    path = urlsplit(loc).path
    q = Signer(secret, -10).query(path)
    st, h, body = Ctx.hub.request("GET", None, url="%s%s?%s" % (Ctx.hub.cdn_url, path, q))
    ok(st == 403 and b"expired" in body, "expired URL: %d %r" % (st, body[:100]))
    q = Signer(secret, 60).query(path)
    eq(Ctx.hub.request("GET", None, url="%s%s?%s" % (Ctx.hub.cdn_url, path, q))[0], 200, "fresh URL")


# ----------------------------------------------------------------- uploads --

@test
def preupload_modes():
    """preupload: regular vs lfs by .gitattributes, size, NUL sample; oid of remote files"""
    files = [{"path": "notes.txt", "size": 10, "sample": base64.b64encode(b"hello text").decode()},
             {"path": "weights.bin", "size": 10, "sample": base64.b64encode(b"hello text").decode()},
             {"path": "huge.txt", "size": 11 * MIB, "sample": base64.b64encode(b"x" * 512).decode()},
             {"path": "blob.dat", "size": 4, "sample": base64.b64encode(b"a\0b\0").decode()},
             {"path": "config.json", "size": 10, "sample": ""},
             {"path": "model.safetensors", "size": 10, "sample": ""}]
    st, ans, _ = Ctx.hub.json("POST", TINY + "/preupload/main", ALICE_WRITE_TOKEN, {"files": files})
    eq(st, 200, "status")
    modes = {f["path"]: f["uploadMode"] for f in ans["files"]}
    eq(modes, {"notes.txt": "regular", "weights.bin": "lfs", "huge.txt": "lfs", "blob.dat": "lfs",
               "config.json": "regular", "model.safetensors": "lfs"}, "modes")
    ok(all(f["shouldIgnore"] is False for f in ans["files"]), "shouldIgnore")
    oids = {f["path"]: f.get("oid") for f in ans["files"]}
    eq(oids["config.json"], git_blob(get("/alice/tiny-model/resolve/main/config.json")[2]), "regular oid = sha1")
    sib = [s for s in get_json(TINY + "?blobs=1")[1]["siblings"] if s["rfilename"] == "model.safetensors"][0]
    eq(oids["model.safetensors"], sib["lfs"]["sha256"], "LFS oid = sha256")
    eq(oids["notes.txt"], None, "no oid for new files")
    st, ans, _ = Ctx.hub.json("POST", TINY + "/preupload/main", ALICE_WRITE_TOKEN,
                              {"files": files[:1], "gitAttributes": "*.txt filter=lfs diff=lfs merge=lfs -text\n"})
    eq(ans["files"][0]["uploadMode"], "lfs", "gitAttributes from the body")
    eq(Ctx.hub.json("POST", TINY + "/preupload/main", None, {"files": files})[0], 401, "anonymous")
    eq(Ctx.hub.json("POST", TINY + "/preupload/main", BOB_WRITE_TOKEN, {"files": files})[0], 403, "bob")


@test
def lfs_basic_upload_and_commit():
    """LFS basic: batch, PUT without auth, no actions when stored, commit, .gitattributes"""
    hub = Ctx.hub
    hub.json("POST", "/api/repos/create", ALICE_WRITE_TOKEN, {"name": "uploads"})
    data = random.Random(7).randbytes(300000)
    oid, ans = lfs_upload("alice/uploads", data)
    eq(ans["transfer"], "basic", "basic transfer below the chunk size")
    ok(ans["objects"][0]["actions"]["upload"]["href"].startswith(hub.cdn_url), "upload URL on the CDN origin")
    _, again = lfs_upload("alice/uploads", data)
    ok("actions" not in again["objects"][0], "stored objects get no actions")
    st, body, _ = hub.json("POST", "/alice/uploads.git/info/lfs/objects/verify", ALICE_WRITE_TOKEN,
                           {"oid": oid, "size": len(data)})
    eq(st, 200, "verify")
    eq(hub.json("POST", "/alice/uploads.git/info/lfs/objects/verify", ALICE_WRITE_TOKEN,
                {"oid": "0" * 64, "size": 1})[0], 404, "verify of an unknown object")
    st, ans, _ = commit("/api/models/alice/uploads/commit/main", [
        header("Add blob", description="with a description"),
        {"key": "lfsFile", "value": {"path": "data/blob.xyz", "algo": "sha256", "oid": oid, "size": len(data)}},
        add_file("small.txt", b"small\n")])
    eq(st, 200, "commit: %r" % (ans,))
    ok(ans["success"] and len(ans["commitOid"]) == 40 and ans["pullRequestUrl"] is None, "commit answer")
    eq(ans["commitUrl"], hub.url + "/alice/uploads/commit/" + ans["commitOid"], "commitUrl")
    st, h, _ = hub.request("GET", "/alice/uploads/resolve/main/data/blob.xyz")
    eq((st, h["x-linked-etag"]), (302, '"%s"' % oid), "committed LFS file")
    eq(sha256(hub.request("GET", None, url=h["location"])[2]), oid, "content")
    attrs = get("/alice/uploads/resolve/main/.gitattributes")[2].decode()
    ok(attrs.endswith("data/blob.xyz filter=lfs diff=lfs merge=lfs -text\n"), ".gitattributes tracks the new path")
    c = follow("/api/models/alice/uploads/commits/main")[0][0]
    eq((c["title"], c["message"]), ("Add blob", "with a description"), "title and message")
    data2 = random.Random(8).randbytes(1000)
    oid2, _ = lfs_upload("alice/uploads", data2)
    commit("/api/models/alice/uploads/commit/main", [header("another"), {"key": "lfsFile", "value": {
        "path": "x.bin", "algo": "sha256", "oid": oid2, "size": 1000}}])
    attrs2 = get("/alice/uploads/resolve/main/.gitattributes")[2].decode()
    eq(attrs2, attrs, "*.bin already matched: .gitattributes unchanged")


@test
def lfs_multipart_upload():
    """LFS multipart: parts on the CDN, ETags, completion checks them, then commit"""
    hub = Ctx.hub
    data = random.Random(9).randbytes(2 * MIB + 12345)
    oid = sha256(data)
    st, _, body = hub.request("POST", "/alice/uploads.git/info/lfs/objects/batch", ALICE_WRITE_TOKEN, LFS_HDRS,
                              json.dumps({"operation": "upload", "transfers": ["basic", "multipart", "xet"],
                                          "hash_algo": "sha256",
                                          "objects": [{"oid": oid, "size": len(data)}]}).encode())
    ans = js(body)
    eq(ans["transfer"], "multipart", "multipart transfer (xet ignored)")
    up = ans["objects"][0]["actions"]["upload"]
    eq(up["header"]["chunk_size"], str(MIB), "chunk_size")
    eq(sorted(k for k in up["header"] if k.isdigit()), ["00001", "00002", "00003"], "part keys")
    ok(up["href"].startswith(hub.url + "/"), "completion URL on the API origin")
    etags = {}
    for n in (3, 1, 2):
        st, h, _ = hub.request("PUT", None, url=up["header"]["%05d" % n], body=data[(n - 1) * MIB:n * MIB])
        eq(st, 200, "part %d" % n)
        etags[n] = h["etag"]
    eq(etags[1], '"%s"' % hashlib.md5(data[:MIB]).hexdigest(), "part ETag (quoted md5, like S3)")
    bad = {"oid": oid, "parts": [{"partNumber": n, "etag": etags[n] if n != 2 else '"0000"'} for n in (1, 2, 3)]}
    st, _, body = hub.request("POST", None, headers=LFS_HDRS, body=json.dumps(bad).encode(), url=up["href"])
    eq(st, 400, "wrong ETag refused")
    missing = {"oid": oid, "parts": [{"partNumber": n, "etag": etags[n]} for n in (1, 3)]}
    eq(hub.request("POST", None, headers=LFS_HDRS, body=json.dumps(missing).encode(), url=up["href"])[0], 400,
       "missing part refused")
    st, _, body = hub.request("PUT", None, url=up["header"]["00002"], body=b"short")
    eq(st, 400, "a part of the wrong size is refused")
    good = {"oid": oid, "parts": [{"partNumber": n, "etag": etags[n]} for n in (1, 2, 3)]}
    st, _, body = hub.request("POST", None, headers=LFS_HDRS, body=json.dumps(good).encode(), url=up["href"])
    eq(st, 200, "completion: %r" % body[:200])
    st, ans, _ = commit("/api/models/alice/uploads/commit/main", [header("big"), {"key": "lfsFile", "value": {
        "path": "big.bin", "algo": "sha256", "oid": oid, "size": len(data)}}])
    eq(st, 200, "commit")
    loc = lfs_location("/alice/uploads/resolve/main/big.bin")
    eq(sha256(hub.request("GET", None, url=loc)[2]), oid, "assembled content")
    oid2, _ = lfs_upload("alice/uploads", random.Random(10).randbytes(MIB + 1))  # parallel, reversed parts
    st, h, _ = hub.request("POST", "/alice/uploads.git/info/lfs/objects/verify", ALICE_WRITE_TOKEN, LFS_HDRS,
                           json.dumps({"oid": oid2, "size": MIB + 1}).encode())
    eq(st, 200, "parallel out-of-order parts")


@test
def put_sha_mismatch():
    """LFS PUT: sha256 or size mismatch is 400 and stores nothing"""
    hub = Ctx.hub
    data = b"the real content" * 100
    oid = sha256(data)
    st, _, body = hub.request("POST", "/alice/uploads.git/info/lfs/objects/batch", ALICE_WRITE_TOKEN, LFS_HDRS,
                              json.dumps({"operation": "upload", "objects": [{"oid": oid, "size": len(data)}]}
                                         ).encode())
    href = js(body)["objects"][0]["actions"]["upload"]["href"]
    eq(hub.request("PUT", None, url=href, body=b"X" * len(data))[0], 400, "wrong content")
    eq(hub.request("PUT", None, url=href, body=data[:-1])[0], 400, "wrong size")
    ok(not os.path.exists(os.path.join(hub.root, "lfs", oid[:2], oid[2:4], oid)), "nothing stored")
    st, _, body = hub.request("POST", "/alice/uploads.git/info/lfs/objects/batch", ALICE_WRITE_TOKEN, LFS_HDRS,
                              json.dumps({"operation": "upload", "objects": [{"oid": oid, "size": len(data)}]}
                                         ).encode())
    ok("actions" in js(body)["objects"][0], "still to upload")
    st, ans, _ = commit("/api/models/alice/uploads/commit/main", [header("dangling"), {"key": "lfsFile", "value": {
        "path": "dangling.bin", "algo": "sha256", "oid": oid, "size": len(data)}}])
    eq(st, 400, "commit of an LFS oid that is not stored")
    eq(hub.request("PUT", None, url=href.replace("sig=", "sig=0"), body=data)[0], 403, "bad signature on PUT")


# ----------------------------------------------------------------- commits --

@test
def commit_parent_412():
    """commit: 412 when parentCommit is not the branch head; short parent ok"""
    api = "/api/models/alice/uploads/commit/main"
    head = get_json("/api/models/alice/uploads")[1]["sha"]
    old = follow("/api/models/alice/uploads/commits/main")[0][-1]["id"]
    st, ans, _ = commit(api, [header("stale", parentCommit=old), add_file("a.txt", b"a")])
    eq(st, 412, "stale parent")
    eq(get_json("/api/models/alice/uploads")[1]["sha"], head, "branch unchanged")
    st, ans, _ = commit(api, [header("fresh", parentCommit=head[:7]), add_file("a.txt", b"a")])
    eq(st, 200, "short current parent")
    eq(commit(api, [header("x", parentCommit="xyz"), add_file("a.txt", b"b")])[0], 400, "bad parentCommit")
    eq(commit(api, [header(""), add_file("a.txt", b"b")])[0], 400, "empty summary")
    eq(commit(api, [add_file("a.txt", b"b")])[0], 400, "no header")


@test
def commit_operations():
    """commit: deletedFile 404, deletedFolder, renames via oldPath, utf-8 content"""
    hub = Ctx.hub
    hub.json("POST", "/api/repos/create", ALICE_WRITE_TOKEN, {"name": "ops"})
    api = "/api/models/alice/ops/commit/main"
    st, _, _ = commit(api, [header("files"), add_file("dir/a.txt", b"A"), add_file("dir/sub/b.txt", b"B"),
                            add_file("keep.txt", b"K"),
                            {"key": "file", "value": {"path": "u.txt", "content": "h\u00e9", "encoding": "utf-8"}}])
    eq(st, 200, "add")
    eq(get("/alice/ops/resolve/main/u.txt")[2], "h\u00e9".encode(), "utf-8 encoding")
    st, _, h = commit(api, [header("rm missing"), {"key": "deletedFile", "value": {"path": "nope.txt"}}])
    eq((st, h.get("x-error-code")), (404, "EntryNotFound"), "deletedFile of a missing file")
    st, _, _ = commit(api, [header("mv"), add_file("moved.txt", b"K2", oldPath="keep.txt")])
    eq(st, 200, "rename with new content")
    eq((get("/alice/ops/resolve/main/keep.txt")[0], get("/alice/ops/resolve/main/moved.txt")[2]), (404, b"K2"), "")
    st, _, _ = commit(api, [header("rm dir"), {"key": "deletedFolder", "value": {"path": "dir/"}}])
    eq(st, 200, "deletedFolder with /")
    paths = [e["path"] for e in follow("/api/models/alice/ops/tree/main?recursive=1")[0]]
    eq(sorted(paths), [".gitattributes", "moved.txt", "u.txt"], "folder gone")
    commit(api, [header("again"), add_file("d2/x.txt", b"x")])
    eq(commit(api, [header("rm d2"), {"key": "deletedFolder", "value": {"path": "d2"}}])[0], 200, "without /")
    eq(commit(api, [header("rm d3"), {"key": "deletedFolder", "value": {"path": "d3/"}}])[0], 404, "missing folder")
    oid, _ = lfs_upload("alice/ops", b"\0binary" * 1000)
    commit(api, [header("lfs"), {"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256", "oid": oid,
                                                             "size": 7000}}])
    st, _, _ = commit(api, [header("mv lfs"), {"key": "lfsFile", "value": {"path": "w2.bin", "oldPath": "w.bin"}}])
    eq(st, 200, "LFS rename by oldPath")
    eq(lfs_location("/alice/ops/resolve/main/w2.bin").split("/lfs/")[1][:64], oid, "renamed LFS file")
    eq(commit(api, [header("x"), add_file("../evil", b"x")])[0], 400, "path with ..")
    eq(commit(api, [header("x"), add_file("u.txt/child", b"x")])[0], 400, "a file under a file")


@test
def commit_refusals():
    """commit: >10 MiB regular, tags, unknown branches, read token, anonymous, others"""
    api = "/api/models/alice/ops/commit/"
    st, ans, _ = commit(api + "main", [header("big"), add_file("big.txt", b"x" * (10 * MIB + 1))])
    eq(st, 400, ">10 MiB regular file")
    ok("larger than 10 MiB" in ans["error"], "message: %s" % ans["error"])
    Ctx.hub.json("POST", "/api/models/alice/ops/tag/main", ALICE_WRITE_TOKEN, {"tag": "t1"})
    eq(commit(api + "t1", [header("x"), add_file("a", b"a")])[0], 400, "to a tag")
    head = get_json("/api/models/alice/ops")[1]["sha"]
    eq(commit(api + head, [header("x"), add_file("a", b"a")])[0], 400, "to a commit id")
    st, _, h = commit(api + "nope", [header("x"), add_file("a", b"a")])
    eq((st, h.get("x-error-code")), (404, "RevisionNotFound"), "unknown branch")
    eq(commit(api + "main", [header("x"), add_file("a", b"a")], ALICE_READ_TOKEN)[0], 403, "read token")
    eq(commit(api + "main", [header("x"), add_file("a", b"a")], None)[0], 401, "anonymous")
    eq(commit(api + "main", [header("x"), add_file("a", b"a")], BOB_WRITE_TOKEN)[0], 403, "bob")


@test
def create_pr():
    """commit create_pr=1: refs/pr/N numbered after the seeded PR, main unchanged"""
    main = get_json(TINY)[1]["sha"]
    st, ans, _ = commit(TINY + "/commit/main", [header("PR from bob"), add_file("bob.txt", b"bob\n")],
                        BOB_WRITE_TOKEN, "?create_pr=1")
    eq(st, 200, "bob may open a PR on a public repo")
    ok(ans["pullRequestUrl"].endswith("/alice/tiny-model/discussions/2"), "PR 2: %s" % ans["pullRequestUrl"])
    eq(get_json(TINY)[1]["sha"], main, "main unchanged")
    _, refs, _ = get_json(TINY + "/refs?include_prs=true")
    pr2 = [p for p in refs["pullRequests"] if p["ref"] == "refs/pr/2"][0]
    eq(pr2["targetCommit"], ans["commitOid"], "refs/pr/2")
    st, ans2, _ = commit(TINY + "/commit/refs%2Fpr%2F2", [header("more"), add_file("bob2.txt", b"2")])
    eq(st, 200, "commit onto the PR ref")
    eq(get("/alice/tiny-model/resolve/refs%2Fpr%2F2/bob2.txt")[2], b"2", "PR updated")


@test
def branches_and_tags():
    """branch/tag: create, 409, overwrite, delete, main protected"""
    hub = Ctx.hub
    api = "/api/models/alice/ops"
    v = follow(api + "/commits/main")[0][-1]["id"]
    eq(hub.json("POST", api + "/branch/feature", ALICE_WRITE_TOKEN, {"startingPoint": v})[0], 200, "create")
    eq(get_json(api + "/revision/feature")[1]["sha"], v, "startingPoint")
    eq(hub.json("POST", api + "/branch/feature", ALICE_WRITE_TOKEN, {})[0], 409, "exists")
    eq(hub.json("POST", api + "/branch/feature", ALICE_WRITE_TOKEN, {"overwrite": True})[0], 200, "overwrite")
    eq(get_json(api + "/revision/feature")[1]["sha"], v, "overwrite without startingPoint keeps the branch")
    eq(hub.json("POST", api + "/branch/feature", ALICE_WRITE_TOKEN, {"overwrite": True,
                                                                    "startingPoint": "main"})[0], 200, "")
    eq(get_json(api + "/revision/feature")[1]["sha"], get_json(api)[1]["sha"], "overwritten from main")
    eq(hub.json("POST", api + "/branch/refs%2Fpr%2F5", ALICE_WRITE_TOKEN, {})[0], 400, "invalid name")
    eq(hub.json("POST", api + "/branch/x", BOB_WRITE_TOKEN, {})[0], 403, "bob")
    eq(hub.json("POST", api + "/branch/empty", ALICE_WRITE_TOKEN, {"emptyBranch": True})[0], 200, "empty branch")
    eq(follow(api + "/tree/empty")[0], [], "empty branch has no files")
    eq(hub.json("DELETE", api + "/branch/main", ALICE_WRITE_TOKEN)[0], 403, "main is protected")
    eq(hub.json("DELETE", api + "/branch/feature", ALICE_WRITE_TOKEN)[0], 200, "delete")
    eq(get(api + "/revision/feature")[0], 404, "deleted")
    eq(get(api + "/revision/%s" % v)[0], 200, "its commits stay readable")
    eq(hub.json("DELETE", api + "/branch/feature", ALICE_WRITE_TOKEN)[0], 404, "delete again")
    eq(hub.json("POST", api + "/tag/main", ALICE_WRITE_TOKEN, {"tag": "v2", "message": "m"})[0], 200, "tag")
    eq(hub.json("POST", api + "/tag/main", ALICE_WRITE_TOKEN, {"tag": "v2"})[0], 409, "tag exists")
    eq(hub.json("POST", api + "/tag/nope", ALICE_WRITE_TOKEN, {"tag": "v3"})[0], 404, "tag of an unknown rev")
    eq(hub.json("DELETE", api + "/tag/v2", ALICE_WRITE_TOKEN)[0], 200, "delete tag")
    st, _, h = hub.json("DELETE", api + "/tag/v2", ALICE_WRITE_TOKEN)
    eq((st, h.get("x-error-code")), (404, "RevisionNotFound"), "delete a missing tag")


@test
def concurrent_commits():
    """commits from 8 connections at once: none lost"""
    before = int(get("/api/models/alice/ops/commits/main?limit=1")[1]["x-total-count"])
    results = []

    def one(i):
        body = "\n".join(json.dumps(x) for x in [header("c%d" % i), add_file("c/%d.txt" % i, b"%d" % i)])
        results.append(raw_exchange(Ctx.hub.url, "POST", "/api/models/alice/ops/commit/main",
                                    {"Authorization": "Bearer " + ALICE_WRITE_TOKEN,
                                     "Content-Type": "application/x-ndjson"}, body.encode())[0])
    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    eq(sorted(results), [200] * 8, "all committed")
    after = int(get("/api/models/alice/ops/commits/main?limit=1")[1]["x-total-count"])
    eq(after, before + 8, "history grew by 8")
    eq(len(follow("/api/models/alice/ops/tree/main/c")[0]), 8, "all files there")


@test
def validate_yaml():
    """validate-yaml: 200 for good front matter, 400 with a message for bad"""
    st, ans, _ = Ctx.hub.json("POST", "/api/validate-yaml", None,
                              {"content": "---\nlicense: mit\ntags:\n- a\n---\n# hi\n", "repoType": "model"})
    eq((st, ans), (200, {"errors": [], "warnings": []}), "valid")
    st, ans, _ = Ctx.hub.json("POST", "/api/validate-yaml", None,
                              {"content": "---\nlicense: mit\nthis line is wrong\n---\n", "repoType": "model"})
    eq(st, 400, "invalid")
    ok("line 3" in ans["errors"][0]["message"], "message says where: %s" % ans["errors"][0]["message"])


@test
def gated_repo():
    """gated: 401 GatedRepo anonymous, 403 not approved, owner and approved users read"""
    hub = Ctx.hub
    hub.set_repo("model", "bob/hello-world", gated="manual", gated_allow=["alice"])
    path = "/bob/hello-world/resolve/main/hello.txt"
    st, h, _ = get(path)
    eq((st, h.get("x-error-code")), (401, "GatedRepo"), "anonymous")
    st, h, _ = get(path, CAROL_TOKEN)
    eq((st, h.get("x-error-code")), (403, "GatedRepo"), "carol is not approved")
    eq(get(path, ALICE_WRITE_TOKEN)[0], 200, "alice is approved")
    eq(get(path, BOB_WRITE_TOKEN)[0], 200, "owner")
    eq(get_json("/api/models/bob/hello-world")[1]["gated"], "manual", "info says gated")
    eq(get("/api/models/bob/hello-world/tree/main")[0], 200, "listing stays visible")
    hub.set_repo("model", "bob/hello-world", gated=False)
    eq(get(path)[0], 200, "ungated")


# ------------------------------------------------------------------ faults --

def with_faults(rules, fn):
    Ctx.hub.set_faults(rules)
    try:
        return fn()
    finally:
        Ctx.hub.clear_faults()


@test
def fault_status():
    """fault status: status, headers, error_code, count"""
    def run():
        st, h, body = raw_exchange(Ctx.hub.url + TINY)
        eq((st, h.get("retry-after"), h.get("x-error-code")), (503, "1", "Overloaded"), "first request")
        eq(js(body)["error"], "Injected fault (503)", "JSON body")
        eq(raw_exchange(Ctx.hub.url + TINY)[0], 503, "second request")
        eq(raw_exchange(Ctx.hub.url + TINY)[0], 200, "spent after count=2")
        eq(raw_exchange(Ctx.hub.url + "/api/models/alice/big-model")[0], 200, "path regex")
        state = Ctx.hub.faults_state()
        eq((state[0]["fired"], state[0]["spent"]), (2, True), "GET /_admin/faults reports it spent")
    with_faults([{"method": "GET", "path": r"^/api/models/alice/tiny-model$", "action": "status", "status": 503,
                  "headers": {"Retry-After": "1"}, "error_code": "Overloaded", "count": 2}], run)


def read_until_closed(url):
    """Raw GET: (bytes received, True if the connection ended with a RST)."""
    parts = urlsplit(url)
    s = socket.create_connection((parts.hostname, parts.port), 10)
    got = b""
    try:
        s.sendall(("GET %s?%s HTTP/1.1\r\nHost: x\r\n\r\n" % (parts.path, parts.query)).encode())
        while True:
            d = s.recv(65536)
            if not d:
                return got, False
            got += d
    except ConnectionResetError:
        return got, True
    finally:
        s.close()


@test
def fault_reset():
    """fault reset: RST with no answer, or after after_bytes body bytes"""
    loc = lfs_location("/alice/tiny-model/resolve/main/model.safetensors")

    def run():
        got, reset = read_until_closed(loc)
        eq((got, reset), (b"", True), "no answer, RST")
        got, reset = read_until_closed(loc)
        ok(reset, "RST, not FIN")
        head, _, body = got.partition(b"\r\n\r\n")
        ok(head.startswith(b"HTTP/1.1 200") and len(body) <= 1000, "headers, then at most 1000 bytes")
        eq(raw_exchange(loc)[0], 200, "both rules spent")
        eq(len([r for r in Ctx.hub.log() if r["fault"] == "reset"]), 2, "log records the faults")
    with_faults([{"path": "^/lfs/", "origin": "cdn", "action": "reset", "count": 1},
                 {"path": "^/lfs/", "origin": "cdn", "action": "reset", "after_bytes": 1000, "count": 1}], run)


@test
def fault_truncate():
    """fault truncate: full Content-Length, fewer bytes, then close"""
    loc = lfs_location("/alice/tiny-model/resolve/main/model.safetensors")

    def run():
        try:
            raw_exchange(loc)
            raise AssertionError("expected a truncated body")
        except http.client.IncompleteRead as e:
            eq(len(e.partial), 4096, "bytes received")
            ok(e.expected > 0, "Content-Length was the full size")
        eq(raw_exchange(loc)[0], 200, "spent")
    with_faults([{"origin": "cdn", "action": "truncate", "after_bytes": 4096, "count": 1}], run)


@test
def fault_stall():
    """fault stall: delays the matching request only"""
    def run():
        done = {}

        def slow():
            t = time.monotonic()
            raw_exchange(Ctx.hub.url + TINY)
            done["slow"] = time.monotonic() - t
        th = threading.Thread(target=slow)
        th.start()
        time.sleep(0.1)
        t = time.monotonic()
        eq(raw_exchange(Ctx.hub.url + "/api/models/bob/hello-world")[0], 200, "other request")
        fast = time.monotonic() - t
        th.join(10)
        ok(done.get("slow", 0) >= 1.0, "stalled %.2f s" % done.get("slow", 0))
        ok(fast < 0.8, "not blocking others (%.2f s)" % fast)
    with_faults([{"path": "tiny-model$", "action": "stall", "seconds": 1.1, "count": 1}], run)


@test
def fault_bandwidth():
    """fault bandwidth: body rate capped"""
    loc = lfs_location("/alice/tiny-model/resolve/main/model.safetensors")

    def run():
        t = time.monotonic()
        st, _, body = raw_exchange(loc, headers={"Range": "bytes=0-524287"})
        took = time.monotonic() - t
        eq((st, len(body)), (206, 512 * 1024), "complete body")
        ok(took >= 0.9, "512 KiB at 512 KiB/s took %.2f s" % took)
        t = time.monotonic()
        raw_exchange(loc, headers={"Range": "bytes=0-524287"})
        ok(time.monotonic() - t < 0.5, "spent")
    with_faults([{"origin": "cdn", "action": "bandwidth", "bytes_per_sec": 512 * 1024, "count": 1}], run)


@test
def fault_wan():
    """fault wan: latency per request and a bandwidth cap per connection, together"""
    loc = lfs_location("/alice/big-model/resolve/main/model.safetensors")
    four = {"Range": "bytes=0-%d" % (4 * MIB - 1)}

    def timed(fn):
        t = time.monotonic()
        fn()
        return time.monotonic() - t

    def one(out=None):
        st, _, body = raw_exchange(loc, headers=four)
        eq((st, len(body)), (206, 4 * MIB), "complete body")

    def run():
        single = timed(one)
        ok(single >= 0.5, "4 MiB at 50 ms + 8 MiB/s took %.2f s" % single)
        ok(single < 1.5, "not much slower than the cap (%.2f s)" % single)
        threads = [threading.Thread(target=one) for _ in range(2)]

        def both():
            for th in threads:
                th.start()
            for th in threads:
                th.join(10)
        pair = timed(both)
        ok(0.5 <= pair < 1.5 * single, "two connections in parallel: %.2f s, one: %.2f s" % (pair, single))
        parts = urlsplit(loc)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        try:
            def three():
                for _ in range(3):
                    conn.request("GET", parts.path + "?" + parts.query, headers={"Range": "bytes=0-0"})
                    eq(len(conn.getresponse().read()), 1, "one byte")
            small = timed(three)
        finally:
            conn.close()
        ok(small >= 0.15, "3 requests on one connection: %.2f s, latency per request" % small)
        eq(len([r for r in Ctx.hub.log() if r["fault"] == "wan"]), 6, "log records the faults")
    with_faults([{"origin": "cdn", "action": "wan", "seconds": 0.05, "bytes_per_sec": 8 * MIB}], run)


@test
def fault_corrupt():
    """fault corrupt: same length, different bytes"""
    path = "/alice/tiny-model/resolve/main/tokenizer.json"
    good = get(path)[2]

    def run():
        st, h, bad = raw_exchange(Ctx.hub.url + path)
        eq((st, len(bad)), (200, len(good)), "same length")
        ok(bad != good and bad[:10] == good[:10] and bad[10] == good[10] ^ 0xFF, "byte 10 flipped")
        st, h, bad = raw_exchange(Ctx.hub.url + path)
        ok(bad[5] != good[5] and bad[7] != good[7] and bad[6] == good[6], "positions")
    with_faults([{"path": "tokenizer", "action": "corrupt", "after_bytes": 10, "count": 1},
                 {"path": "tokenizer", "action": "corrupt", "positions": [5, 7], "count": 1}], run)


@test
def fault_expire():
    """fault expire: CDN answers 403 as for an expired URL"""
    loc = lfs_location("/alice/tiny-model/resolve/main/model.safetensors")

    def run():
        st, _, body = raw_exchange(loc)
        ok(st == 403 and b"expired" in body, "expired")
        eq(raw_exchange(loc)[0], 200, "spent")
        eq(raw_exchange(Ctx.hub.url + TINY)[0], 200, "origin filter: api unaffected")
    with_faults([{"origin": "cdn", "action": "expire", "count": 1}], run)


@test
def fault_ratelimit():
    """fault ratelimit: 429 with Retry-After and RateLimit headers, per token bucket"""
    def run():
        for i in range(2):
            st, h, _ = raw_exchange(Ctx.hub.url + TINY)
            eq(st, 200, "request %d" % i)
            ok(h.get("ratelimit", "").startswith('"api";r=%d;' % (1 - i)), "RateLimit %r" % h.get("ratelimit"))
        st, h, body = raw_exchange(Ctx.hub.url + TINY)
        eq(st, 429, "third anonymous request")
        t = int(h["retry-after"])
        ok(0 < t <= 60, "Retry-After %d" % t)
        eq(h["ratelimit"], '"api";r=0;t=%d' % t, "RateLimit")
        eq(h["ratelimit-policy"], '"fixed window";"api";q=2;w=60', "RateLimit-Policy")
        eq(raw_exchange(Ctx.hub.url + TINY, headers={"Authorization": "Bearer " + ALICE_WRITE_TOKEN})[0], 200,
           "another bucket")
        st, h, _ = raw_exchange(Ctx.hub.url + "/alice/tiny-model/resolve/main/config.json")
        eq(st, 429, "same anonymous bucket")
        ok(h["ratelimit"].startswith('"resolvers"'), "resolvers bucket name on /resolve/")
    with_faults([{"action": "ratelimit", "origin": "api", "limit": 2, "window": 60}], run)


@test
def fault_rate_count_semantics():
    """fault rules: rate 0 never fires, rate 0.5 sometimes, method filter, first rule wins"""
    def run():
        statuses = [raw_exchange(Ctx.hub.url + TINY)[0] for _ in range(40)]
        n = statuses.count(500)
        ok(5 <= n <= 35, "rate 0.5 fired %d/40 times" % n)
        eq(Ctx.hub.request("HEAD", TINY)[0], 200, "method filter (HEAD not matched)")
        state = Ctx.hub.faults_state()
        eq(state[0]["fired"], 0, "rate 0 never fired")
        eq(state[1]["fired"], n, "fired count")
    with_faults([{"method": "GET", "path": "tiny", "action": "status", "status": 418, "rate": 0},
                 {"method": "get", "path": "tiny", "action": "status", "status": 500, "rate": 0.5}], run)


@test
def admin_faults_api():
    """admin faults: PUT replaces, GET lists, DELETE clears, bad rules 400"""
    hub = Ctx.hub
    st, ans, _ = hub.json("PUT", "/_admin/faults", None, [{"action": "explode"}])
    eq(st, 400, "unknown action")
    eq(hub.json("PUT", "/_admin/faults", None, [{"action": "status", "path": "("}])[0], 400, "bad regex")
    hub.set_faults([{"action": "status", "status": 500, "path": "^/nothing"}])
    hub.set_faults([{"action": "status", "status": 501, "path": "^/nothing"}])
    eq([r["status"] for r in hub.faults_state()], [501], "PUT replaces")
    hub.clear_faults()
    eq(hub.faults_state(), [], "DELETE clears")
    with_faults([{"action": "status", "status": 500}], lambda: eq(hub.faults_state()[0]["status"], 500,
                                                                  "admin routes bypass faults"))


@test
def request_log():
    """request log: fields, since, both origins, admin not logged, clear"""
    hub = Ctx.hub
    last = hub.log()[-1]["seq"]
    get("/alice/tiny-model/resolve/main/config.json", ALICE_WRITE_TOKEN, {"Range": "bytes=0-4"})
    loc = lfs_location("/alice/tiny-model/resolve/main/model.safetensors")
    hub.request("GET", None, headers={"Range": "bytes=0-99"}, url=loc)
    recs = hub.log(since=last)
    eq(len(recs), 3, "three records since %d: %r" % (last, recs))
    a, b, c = recs
    for key in ("seq", "time", "method", "path", "query", "status", "range", "bytes", "auth", "origin", "addr",
                "fault"):
        ok(key in a, "record has %s" % key)
    eq((a["method"], a["path"], a["status"], a["range"], a["bytes"], a["auth"], a["origin"], a["fault"]),
       ("GET", "/alice/tiny-model/resolve/main/config.json", 206, "bytes=0-4", 5, True, "api", None), "api record")
    eq(a["addr"], urlsplit(hub.url).netloc, "api addr")
    eq((b["method"], b["status"], b["bytes"]), ("HEAD", 302, 0), "HEAD record")
    eq((c["origin"], c["status"], c["bytes"], c["auth"], c["addr"]),
       ("cdn", 206, 100, False, urlsplit(hub.cdn_url).netloc), "cdn record")
    ok(c["query"].startswith("expires=") and c["path"].startswith("/lfs/"), "raw path and query")
    eq(c["seq"], a["seq"] + 2, "seq increments")
    eq(hub.log(since=c["seq"]), [], "since the last seq")
    get("/api/models/alice/tiny-model/tree/main/docs%2Fread%20me.md")
    eq(hub.log()[-1]["path"], "/api/models/alice/tiny-model/tree/main/docs%2Fread%20me.md", "path not decoded")
    hub.clear_log()
    eq(hub.log(), [], "cleared (admin requests are not logged)")
    get(TINY)
    ok(hub.log()[0]["seq"] > c["seq"], "seq keeps growing after a clear")


@test
def keep_alive():
    """HTTP/1.1 keep-alive: many requests on one connection, request ids differ"""
    parts = urlsplit(Ctx.hub.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    ids = set()
    try:
        sock = None
        for i in range(20):
            conn.request("GET", TINY + "/refs")
            r = conn.getresponse()
            r.read()
            eq((r.status, r.version), (200, 11), "HTTP/1.1 200")
            ids.add(r.getheader("X-Request-Id"))
            if sock is None:
                sock = conn.sock
            ok(conn.sock is sock, "same socket")
    finally:
        conn.close()
    eq(len(ids), 20, "X-Request-Id differs")


# ---------------------------------------------------------------- lifecycle --

@test
def command_line():
    """command line: bad --user and 0.0.0.0 refused; SIGINT exits 0 and closes the port"""
    for bad in (["--user", "nocolon"], ["--host", "0.0.0.0"], ["--user", "a:notatoken"]):
        with tempfile.TemporaryDirectory() as d:
            p = subprocess.run([sys.executable, os.path.join(HERE, "localhub.py"), "--root", d,
                                "--port-file", os.path.join(d, "p")] + bad, capture_output=True, timeout=20)
            ok(p.returncode != 0, "%s refused" % bad)
    with tempfile.TemporaryDirectory() as d:
        pf = os.path.join(d, "port")
        proc = subprocess.Popen([sys.executable, os.path.join(HERE, "localhub.py"), "--root", d, "--port-file", pf,
                                 "--user", "dora:hf_dora_0000000000000000000000000:read:team-x"],
                                stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while not os.path.exists(pf) and time.monotonic() < deadline:
                time.sleep(0.02)
            url = open(pf).read().strip()
            ok(url.startswith("http://127.0.0.1:"), "port file: %s" % url)
            st, h, body = raw_exchange(url + "/api/whoami-v2",
                                       headers={"Authorization": "Bearer hf_dora_0000000000000000000000000"})
            me = js(body)
            eq((me["name"], me["auth"]["accessToken"]["role"], [o["name"] for o in me["orgs"]]),
               ("dora", "read", ["team-x"]), "--user with role and orgs")
            proc.send_signal(signal.SIGINT)
            eq(proc.wait(10), 0, "exit status after SIGINT")
            port = int(url.rsplit(":", 1)[1])
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                raise AssertionError("port still open")
            except ConnectionRefusedError:
                pass
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@test
def restart_persistence():
    """restart: same root keeps repos, commits, LFS objects, tokens; --seed again is a no-op"""
    hub = Ctx.hub
    before = tree_ids(hub)
    uploads = follow("/api/models/alice/uploads/tree/main?recursive=1")[0]
    pr = get_json(TINY + "/refs?include_prs=1")[1]["pullRequests"]
    hub.seed = True  # start again with --seed on a seeded root
    eq(hub.stop(), 0, "SIGTERM exit status")
    hub.start()
    eq(tree_ids(hub), before, "seeded repos unchanged (seed is idempotent)")
    eq(follow("/api/models/alice/uploads/tree/main?recursive=1")[0], uploads, "repo created by the tests")
    eq(get_json(TINY + "/refs?include_prs=1")[1]["pullRequests"], pr, "pull requests")
    eq(get("/api/whoami-v2", CAROL_TOKEN)[0], 200, "token given at first start")
    loc = lfs_location("/alice/uploads/resolve/main/big.bin")
    eq(hub.request("GET", None, url=loc)[0], 200, "LFS object")
    st, ans, _ = commit("/api/models/alice/uploads/commit/main", [header("after restart"), add_file("r.txt", b"r")])
    eq(st, 200, "commits work after restart")


# ------------------------------------------------------------------- main --

def main():
    # A TERM from the test driver unwinds through the finally blocks: no server outlives us.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))
    print("1..%d" % len(TESTS), flush=True)
    failed = 0
    start = time.monotonic()
    Ctx.hub = LocalHub(seed=True, page_size=5, lfs_chunk_size=MIB, users=["carol:%s:write" % CAROL_TOKEN])
    try:
        try:
            Ctx.hub.start()
        except (LocalHubError, OSError) as e:
            for n, fn in enumerate(TESTS, 1):
                print("not ok %d - %s" % (n, fn.__doc__.strip()))
            print("# cannot start localhub: %s" % e)
            return 1
        for n, fn in enumerate(TESTS, 1):
            t = time.monotonic()
            try:
                fn()
                print("ok %d - %s # %.2fs" % (n, fn.__doc__.strip(), time.monotonic() - t), flush=True)
            except Exception:
                failed += 1
                print("not ok %d - %s" % (n, fn.__doc__.strip()), flush=True)
                for line in traceback.format_exc().rstrip().split("\n"):
                    print("# " + line)
                err = Ctx.hub.stderr().strip()
                if err:
                    for line in err.split("\n")[-20:]:
                        print("# server: " + line)
                sys.stdout.flush()
    finally:
        Ctx.hub.close()
    print("# %d passed, %d failed in %.1fs" % (len(TESTS) - failed, failed, time.monotonic() - start))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
