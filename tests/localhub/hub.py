"""The Hub API origin: routes, auth, and the JSON the official clients expect.

Routing works on the raw path split at '/', each segment %-decoded on its own:
a revision is always one segment (refs%2Fpr%2F1), file paths are the segments
after it joined with '/' (so 'docs%2Fa.txt' and 'docs/a.txt' are the same).

Access rules (as on the Hub): a private repo, or a missing one, is 401
RepoNotFound to an anonymous request and 404 RepoNotFound to an authenticated
one without access. A user may read and, with a write token, write the repos
of their own namespace and of the organisations they belong to. Gated repos
hide file content (resolve, raw) from users not in gated_allow.
"""

import base64
import binascii
import json
import re
import time
from urllib.parse import parse_qs, parse_qsl, quote, unquote, urlencode

import card
import gitobj
import store as storemod
from httpcore import Response, file_response
from store import HubError

TRUE = ("1", "true", "True", "TRUE", "yes")
_JSON = ("Content-Type", "application/json; charset=utf-8")
_HEX_PARENT = re.compile(r"^[0-9a-fA-F]{5,40}$")


def as_bool(value):
    if isinstance(value, bool):
        return value
    return value is not None and str(value) in TRUE


def json_response(obj, status=200, headers=()):
    body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return Response(status, [_JSON] + list(headers), body)


def error_response(err):
    headers = [_JSON, ("X-Error-Message", err.message)]
    if err.code:
        headers.append(("X-Error-Code", err.code))
    headers.extend(err.headers)
    return Response(err.status, headers, json.dumps({"error": err.message}).encode("utf-8"))


def normalize_path(path):
    """A repo file path as the Hub accepts it, or HubError 400."""
    if not isinstance(path, str):
        raise HubError(400, "Invalid path: %r" % (path,))
    p = path
    while p.startswith("./"):
        p = p[2:]
    p = p.lstrip("/")
    parts = p.split("/")
    if not p or any(x in ("", ".", "..", ".git") for x in parts) or "\0" in p:
        raise HubError(400, "Invalid path: %r" % path)
    return p


class Identity:
    __slots__ = ("user", "role", "token_info")

    def __init__(self, user, role, token_info):
        self.user = user
        self.role = role
        self.token_info = token_info


class HubApp:
    def __init__(self, store, lfs, log, faults, page_size=1000):
        self.store = store
        self.lfs = lfs
        self.log = log
        self.faults = faults
        self.page_size = max(1, int(page_size))
        self.base_url = None

    # ---- entry points ------------------------------------------------------

    def handle(self, req):
        try:
            return self._route(req)
        except HubError as e:
            return error_response(e)

    def admin(self, req):
        try:
            return self._admin(req)
        except HubError as e:
            return error_response(e)
        except ValueError as e:
            return error_response(HubError(400, str(e)))

    # ---- helpers -----------------------------------------------------------

    def _auth(self, req):
        """The caller's Identity, None if anonymous; 401 for an unknown token."""
        value = req.headers.get("authorization")
        if value is None:
            return None
        scheme, _, cred = value.strip().partition(" ")
        token = None
        if scheme.lower() == "bearer":
            token = cred.strip()
        elif scheme.lower() == "basic":
            try:
                token = base64.b64decode(cred.strip()).decode("utf-8").partition(":")[2]
            except (binascii.Error, UnicodeDecodeError):
                token = None
        info = self.store.accounts.token(token) if token else None
        if info is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return Identity(info["user"], info["role"], info)

    def _owns(self, ident, namespace):
        return ident is not None and (ident.user == namespace
                                      or self.store.accounts.is_member(ident.user, namespace))

    def _can_read(self, ident, repo):
        return not repo.private or self._owns(ident, repo.namespace)

    def _repo(self, ident, rtype, ns, name):
        repo = self.store.get_repo(rtype, "%s/%s" % (ns, name))
        if repo is None or not self._can_read(ident, repo):
            raise HubError(401 if ident is None else 404, "Repository not found", "RepoNotFound")
        return repo

    def _require_write(self, ident, repo=None, namespace=None):
        namespace = namespace or repo.namespace
        if ident is None:
            raise HubError(401, "You must be authenticated to do this (Authorization: Bearer <token>)")
        if ident.role != "write":
            raise HubError(403, "Forbidden: this token has the read role; you must use a write token")
        if not self._owns(ident, namespace):
            raise HubError(403, "You don't have the rights to write to %s" % (repo.id if repo else namespace))

    def _rev(self, repo, rev):
        sha = self.store.resolve(repo, rev)
        if sha is None:
            raise HubError(404, "Invalid rev id: %s" % rev, "RevisionNotFound")
        return sha

    def _body_json(self, req, default=None):
        data = req.read_all(64 << 20)
        if not data.strip():
            return {} if default is None else default
        try:
            return json.loads(data)
        except ValueError:
            raise HubError(400, "Invalid JSON body") from None

    def _repo_url(self, repo):
        return "%s/%s%s" % (self.base_url, repo.url_prefix, repo.id)

    def _page(self, req, items, extra=(), key=None):
        """(page of items, headers, cursor) with a Link rel="next" when more remain.

        Cursors hold an offset (plus extra, e.g. the pinned commit), or with key
        the key of the last item sent, so that insertions do not shift pages."""
        limit = self.page_size
        if req.param("limit"):
            try:
                limit = max(1, min(limit, int(req.param("limit"))))
            except ValueError:
                raise HubError(400, "limit must be an integer") from None
        cur = storemod.parse_cursor(req.param("cursor", "")) if req.param("cursor") else {}
        if cur is None:
            raise HubError(400, "Invalid cursor")
        if key is not None:
            if "a" in cur:
                items = [x for x in items if key(x) > cur["a"]]
            offset = 0
        else:
            offset = int(cur.get("o", 0))
        page = items[offset:offset + limit]
        headers = []
        if offset + limit < len(items):
            nxt = dict(extra)
            if key is not None:
                nxt["a"] = key(page[-1])
            else:
                nxt["o"] = offset + limit
            query = [(k, v) for k, v in parse_qsl(req.query, keep_blank_values=True) if k != "cursor"]
            query.append(("cursor", storemod.b64_cursor(nxt)))
            headers.append(("Link", '<%s%s?%s>; rel="next"' % (self.base_url, req.path, urlencode(query))))
        return page, headers, cur

    # ---- routing -----------------------------------------------------------

    def _route(self, req):
        raw = req.path.split("/")[1:]
        s = [unquote(x) for x in raw]
        if not s or s == [""]:
            return Response(200, [("Content-Type", "text/plain; charset=utf-8")], b"localhub\n")
        if s[0] == "api":
            return self._api(req, s)
        rtype, i = "model", 0
        if s[0] in ("datasets", "spaces") and len(s) >= 3:
            rtype, i = s[0][:-1], 1
        if len(s) >= i + 6 and s[i + 1].endswith(".git") and s[i + 2:i + 5] == ["info", "lfs", "objects"]:
            return self._lfs_api(req, rtype, s[i], s[i + 1][:-4], s[i + 5:])
        if len(s) >= i + 5 and s[i + 2] in ("resolve", "raw"):
            return self._resolve(req, rtype, s[i], s[i + 1], s[i + 2], s[i + 3], "/".join(s[i + 4:]))
        raise HubError(404, "Not Found: %s" % req.path)

    def _api(self, req, s):
        m = req.method
        n = len(s)
        if s[1:] == ["complete_multipart"] and m == "POST":
            return self.lfs.complete(req)  # signed URL: no Authorization needed
        ident = self._auth(req)
        if s[1:] == ["whoami-v2"] and m in ("GET", "HEAD"):
            return self._whoami(ident)
        if n == 4 and s[1] in ("users", "organizations") and s[3] == "overview":
            return self._overview(ident, s[1], s[2])
        if s[1:] == ["repos", "create"] and m == "POST":
            return self._create_repo(req, ident)
        if s[1:] == ["repos", "delete"] and m == "DELETE":
            return self._delete_repo(req, ident)
        if s[1:] == ["validate-yaml"] and m == "POST":
            return self._validate_yaml(req)
        if n >= 2 and s[1] in ("models", "datasets", "spaces"):
            rtype = s[1][:-1]
            if n == 2 and m in ("GET", "HEAD"):
                return self._list_repos(req, ident, rtype)
            if n >= 4:
                return self._repo_api(req, ident, rtype, s[2], s[3], s[4:])
            if n == 3:  # a legacy id without namespace: none exist here
                raise HubError(401 if ident is None else 404, "Repository not found", "RepoNotFound")
        raise HubError(404, "Not Found: %s" % req.path)

    def _repo_api(self, req, ident, rtype, ns, name, rest):
        m = req.method
        what = rest[0] if rest else ""
        arg = "/".join(rest[1:])
        get = m in ("GET", "HEAD")
        if not rest and get:
            return self._info(req, ident, rtype, ns, name, "main")
        if what == "revision" and get and arg:
            return self._info(req, ident, rtype, ns, name, arg)
        if what == "tree" and get and len(rest) >= 2:
            return self._tree(req, ident, rtype, ns, name, rest[1], "/".join(rest[2:]))
        if what == "paths-info" and m == "POST" and arg:
            return self._paths_info(req, ident, rtype, ns, name, arg)
        if what == "refs" and get and len(rest) == 1:
            return self._refs(req, ident, rtype, ns, name)
        if what == "commits" and get and arg:
            return self._commits(req, ident, rtype, ns, name, arg)
        if what == "branch" and arg and m in ("POST", "DELETE"):
            return self._branch(req, ident, rtype, ns, name, arg)
        if what == "tag" and arg and m in ("POST", "DELETE"):
            return self._tag(req, ident, rtype, ns, name, arg)
        if what == "preupload" and m == "POST" and arg:
            return self._preupload(req, ident, rtype, ns, name, arg)
        if what == "commit" and m == "POST" and arg:
            return self._commit(req, ident, rtype, ns, name, arg)
        if what == "settings" and m == "PUT" and len(rest) == 1:
            return self._settings(req, ident, rtype, ns, name)
        if what == "auth-check" and get:
            repo = self._repo(ident, rtype, ns, name)
            if arg == "write":
                self._require_write(ident, repo)
            return json_response({})
        raise HubError(404, "Not Found: %s" % req.path)

    # ---- accounts ----------------------------------------------------------

    def _whoami(self, ident):
        if ident is None:
            raise HubError(401, "Invalid username or password.")
        acc = self.store.accounts
        user = acc.users.get(ident.user, {})
        orgs = [{"type": "org", "id": acc.orgs.get(o, {}).get("_id", ""), "name": o, "fullname": o,
                 "email": None, "canPay": False, "avatarUrl": "/avatars/%s.svg" % o,
                 "periodEnd": None, "roleInOrg": "write"} for o in user.get("orgs", [])]
        tok = ident.token_info
        return json_response({
            "type": "user", "id": user.get("_id", ""), "name": ident.user, "fullname": ident.user,
            "email": "%s@localhub.invalid" % ident.user, "emailVerified": True, "isPro": False,
            "canPay": False, "avatarUrl": "/avatars/%s.svg" % ident.user, "periodEnd": None,
            "billingMode": "prepaid", "orgs": orgs,
            "auth": {"type": "access_token", "accessToken": {
                "displayName": tok["displayName"], "role": tok["role"],
                "createdAt": gitobj.iso_date(tok["createdAt"])}},
        })

    def _overview(self, ident, kind, name):
        acc = self.store.accounts
        table = acc.users if kind == "users" else acc.orgs
        if name not in table:
            raise HubError(404, "%s not found" % ("User" if kind == "users" else "Organization"))
        counts = {t: 0 for t in storemod.REPO_TYPES}
        for repo in list(self.store.repos.values()):
            if repo.namespace == name and self._can_read(ident, repo):
                counts[repo.type] += 1
        info = table[name]
        out = {"_id": info.get("_id", ""), "name": name, "fullname": name,
               "avatarUrl": "/avatars/%s.svg" % name, "isPro": False,
               "createdAt": gitobj.iso_date(info.get("createdAt", 0)),
               "numModels": counts["model"], "numDatasets": counts["dataset"],
               "numSpaces": counts["space"], "numFollowers": 0, "isFollowing": False}
        if kind == "users":
            out.update({"type": "user", "user": name,
                        "orgs": [{"name": o, "fullname": o, "avatarUrl": "/avatars/%s.svg" % o}
                                 for o in info.get("orgs", [])]})
        else:
            out.update({"type": "org", "numUsers": sum(1 for u in acc.users.values()
                                                       if name in u.get("orgs", []))})
        return json_response(out)

    # ---- repo management ---------------------------------------------------

    def _create_repo(self, req, ident):
        body = self._body_json(req)
        if ident is None:
            raise HubError(401, "You must be authenticated to create a repo")
        name = body.get("name")
        org = body.get("organization")
        if isinstance(name, str) and "/" in name:
            org, name = name.split("/", 1)
        rtype = body.get("type") or "model"
        if rtype not in storemod.REPO_TYPES:
            raise HubError(400, "Invalid repo type: %r" % (rtype,))
        ns = org or ident.user
        if not storemod.valid_name(name) or not storemod.valid_name(ns):
            raise HubError(400, "Invalid repo name: %r" % ("%s/%s" % (ns, name)))
        if ident.role != "write" or not self._owns(ident, ns):
            raise HubError(403, 'You don\'t have the rights to create a %s under the namespace "%s"'
                           % (rtype, ns))
        private = body.get("visibility") == "private" or body.get("private") is True
        files = []
        for f in body.get("files") or []:
            files.append((normalize_path(f.get("path")), self._decode_content(f)))
        sdk = body.get("sdk") if rtype == "space" else None
        repo = self.store.create_repo(rtype, ns, name, ident.user, private=private, sdk=sdk, files=files)
        if repo is None:
            existing = self.store.get_repo(rtype, "%s/%s" % (ns, name))
            url = self._repo_url(existing)
            return json_response({"error": "You already created this %s repo" % rtype, "url": url}, 409,
                                 [("X-Error-Message", "You already created this %s repo" % rtype)])
        return json_response({"url": self._repo_url(repo), "name": repo.id, "id": repo.oid})

    def _delete_repo(self, req, ident):
        body = self._body_json(req)
        name = body.get("name")
        org = body.get("organization")
        if isinstance(name, str) and "/" in name:
            org, name = name.split("/", 1)
        rtype = body.get("type") or "model"
        if ident is None:
            raise HubError(401, "You must be authenticated to delete a repo")
        repo = self._repo(ident, rtype, org or ident.user, name or "")
        self._require_write(ident, repo)
        self.store.delete_repo(repo)
        return json_response({})

    def _settings(self, req, ident, rtype, ns, name):
        repo = self._repo(ident, rtype, ns, name)
        self._require_write(ident, repo)
        body = self._body_json(req)
        changes = {}
        if "visibility" in body:
            changes["private"] = body["visibility"] == "private"
        if "private" in body:
            changes["private"] = bool(body["private"])
        if "gated" in body:
            if body["gated"] not in (False, "auto", "manual"):
                raise HubError(400, "gated must be false, 'auto' or 'manual'")
            changes["gated"] = body["gated"]
        self.store.update_repo(repo, **changes)
        return json_response({"private": repo.private, "gated": repo.gated})

    # ---- repo info and listings ------------------------------------------

    def _card(self, tree):
        e = self.store.lookup(tree, "README.md")
        if e is None or e.is_dir or e.lfs:
            return None
        return card.card_data(self.store.read_blob(e.oid).decode("utf-8", "replace"))

    def _repo_summary(self, repo, sha, blobs=False, siblings=True):
        commit = self.store.commit(sha)
        data = self._card(commit.tree)
        files = [e for e in self.store.walk(commit.tree) if not e.is_dir]
        tags = []
        if any(e.path.endswith(".safetensors") for e in files):
            tags.append("safetensors")
        if isinstance(data, dict):
            if isinstance(data.get("tags"), list):
                tags += [str(t) for t in data["tags"]]
            if data.get("license"):
                tags.append("license:%s" % data["license"])
        tags.append("region:us")
        info = {"_id": repo.oid, "id": repo.id}
        if repo.type == "model":
            info["modelId"] = repo.id
        info.update({
            "author": repo.namespace, "sha": sha, "lastModified": commit.date,
            "createdAt": gitobj.iso_date(repo.created_at), "private": repo.private,
            "gated": repo.gated, "disabled": repo.disabled, "downloads": 0, "likes": 0,
            "tags": tags, "usedStorage": sum(e.size for e in files),
        })
        if isinstance(data, dict):
            info["cardData"] = data
            if repo.type == "model" and data.get("pipeline_tag"):
                info["pipeline_tag"] = data["pipeline_tag"]
            if repo.type == "model" and data.get("library_name"):
                info["library_name"] = data["library_name"]
        if repo.type == "space":
            info["sdk"] = (data.get("sdk") if isinstance(data, dict) else None) or repo.sdk
            info["runtime"] = {"stage": "RUNNING", "hardware": {"current": "cpu-basic", "requested": "cpu-basic"}}
        if repo.type == "dataset":
            info["description"] = str(data.get("pretty_name", "")) if isinstance(data, dict) else ""
        if siblings:
            sib = []
            for e in files:
                s = {"rfilename": e.path}
                if blobs:
                    s["size"] = e.size
                    s["blobId"] = e.oid
                    if e.lfs:
                        s["lfs"] = {"sha256": e.lfs[0], "size": e.lfs[1], "pointerSize": e.lfs[2]}
                sib.append(s)
            info["siblings"] = sib
            info["spaces"] = []
        return info

    @staticmethod
    def _expand(req):
        return req.params.get("expand", []) + req.params.get("expand[]", [])

    @staticmethod
    def _pick(info, keys):
        out = {"_id": info["_id"], "id": info["id"]}
        for k in keys:
            if k in info:
                out[k] = info[k]
        return out

    def _info(self, req, ident, rtype, ns, name, rev):
        repo = self._repo(ident, rtype, ns, name)
        if repo.disabled:
            raise HubError(403, "Access to this resource is disabled.")
        sha = self._rev(repo, rev)
        info = self._repo_summary(repo, sha, blobs=as_bool(req.param("blobs")))
        expand = self._expand(req)
        return json_response(self._pick(info, expand) if expand else info)

    def _list_repos(self, req, ident, rtype):
        author = req.param("author")
        search = (req.param("search") or "").lower()
        repos = sorted((r for r in list(self.store.repos.values())
                        if r.type == rtype and self._can_read(ident, r)
                        and (not author or r.namespace == author)
                        and (not search or search in r.id.lower())), key=lambda r: r.id)
        page, headers, _ = self._page(req, repos, key=lambda r: r.id)
        expand = self._expand(req)
        full = as_bool(req.param("full"))
        out = []
        for repo in page:
            sha = self.store.resolve(repo, "main")
            if sha is None:
                continue
            info = self._repo_summary(repo, sha, siblings=full or "siblings" in expand)
            if expand:
                info = self._pick(info, expand)
            else:
                info.pop("cardData", None)
                info.pop("usedStorage", None)
            out.append(info)
        return json_response(out, headers=headers)

    def _entry_json(self, entry, sha, expand):
        d = {"type": "directory" if entry.is_dir else "file", "oid": entry.oid, "size": entry.size,
             "path": entry.path}
        if entry.lfs:
            d["lfs"] = {"oid": entry.lfs[0], "size": entry.lfs[1], "pointerSize": entry.lfs[2]}
        if expand:
            c = self.store.last_commit(sha, entry.path)
            d["lastCommit"] = {"id": c.id, "title": c.title, "date": c.date}
        return d

    def _pinned(self, req, repo, rev):
        """Commit of rev, or the one a pagination cursor pinned."""
        cur = storemod.parse_cursor(req.param("cursor", "")) if req.param("cursor") else None
        if cur and cur.get("c") in repo.commit_set:
            return cur["c"]
        return self._rev(repo, rev)

    def _tree(self, req, ident, rtype, ns, name, rev, path):
        repo = self._repo(ident, rtype, ns, name)
        sha = self._pinned(req, repo, rev)
        path = path.strip("/")
        commit = self.store.commit(sha)
        entry = self.store.lookup(commit.tree, path)
        if entry is None:
            raise HubError(404, "Entry not found: %s does not exist at revision %s" % (path, rev),
                           "EntryNotFound", [("X-Repo-Commit", sha)])
        if not entry.is_dir:
            raise HubError(404, "Entry not found: %s is a file, not a directory" % path, "EntryNotFound",
                           [("X-Repo-Commit", sha)])
        if as_bool(req.param("recursive")):
            entries = self.store.walk(entry.oid, path)
        else:
            entries = self.store.list_dir(entry.oid, path)
        page, headers, _ = self._page(req, entries, extra={"c": sha})
        expand = as_bool(req.param("expand"))
        return json_response([self._entry_json(e, sha, expand) for e in page],
                             headers=headers + [("X-Repo-Commit", sha)])

    def _paths_info(self, req, ident, rtype, ns, name, rev):
        repo = self._repo(ident, rtype, ns, name)
        sha = self._rev(repo, rev)
        data = req.read_all(64 << 20)
        ctype = req.headers.get("content-type", "")
        if "json" in ctype or data.lstrip().startswith(b"{"):
            try:
                body = json.loads(data or b"{}")
            except ValueError:
                raise HubError(400, "Invalid JSON body") from None
            paths = body.get("paths", [])
            expand = as_bool(body.get("expand"))
        else:
            form = parse_qs(data.decode("utf-8", "replace"), keep_blank_values=True)
            paths = form.get("paths", [])
            expand = as_bool((form.get("expand") or ["false"])[-1])
        if isinstance(paths, str):
            paths = [paths]
        if not isinstance(paths, list):
            raise HubError(400, "paths must be a list of strings")
        tree = self.store.commit(sha).tree
        out = []
        seen = set()
        for p in paths:
            p = str(p).strip("/")
            if p in seen or not p:
                continue
            seen.add(p)
            e = self.store.lookup(tree, p)
            if e is not None:
                out.append(self._entry_json(e, sha, expand))
        return json_response(out, headers=[("X-Repo-Commit", sha)])

    # ---- refs and history --------------------------------------------------

    def _refs(self, req, ident, rtype, ns, name):
        repo = self._repo(ident, rtype, ns, name)
        with self.store.lock:
            heads = dict(repo.heads)
            tags = dict(repo.tags)
            converts = dict(repo.converts)
            prs = dict(repo.prs)
        branches = sorted(heads.items(), key=lambda kv: (kv[0] != "main", kv[0]))
        out = {
            "branches": [{"name": k, "ref": "refs/heads/%s" % k, "targetCommit": v} for k, v in branches],
            "converts": [{"name": k, "ref": "refs/convert/%s" % k, "targetCommit": v}
                         for k, v in sorted(converts.items())],
            "tags": [{"name": k, "ref": "refs/tags/%s" % k, "targetCommit": v} for k, v in sorted(tags.items())],
        }
        if as_bool(req.param("include_prs")):
            out["pullRequests"] = [{"name": str(k), "ref": "refs/pr/%d" % k, "targetCommit": v}
                                   for k, v in sorted(prs.items())]
        return json_response(out)

    def _commits(self, req, ident, rtype, ns, name, rev):
        repo = self._repo(ident, rtype, ns, name)
        sha = self._pinned(req, repo, rev)
        history = self.store.history(sha)
        # The Hub pages commits by number: p=N (0-based) of limit items
        # (default 50; capped by the page size here), Link rel="next" with p+1
        # and the limit (the Hub's reads "?p=1&limit=50").
        limit = min(50, self.page_size)
        try:
            if req.param("limit"):
                limit = max(1, min(self.page_size, int(req.param("limit"))))
            p = int(req.param("p", "0"))
        except ValueError:
            raise HubError(400, "limit and p must be integers") from None
        if p < 0:
            raise HubError(400, "p must not be negative")
        page = history[p * limit:(p + 1) * limit]
        headers = []
        if (p + 1) * limit < len(history):
            query = [("p", str(p + 1)), ("limit", str(limit))]
            query += [(k, v) for k, v in parse_qsl(req.query, keep_blank_values=True) if k not in ("p", "limit")]
            headers.append(("Link", '<%s%s?%s>; rel="next"' % (self.base_url, req.path, urlencode(query))))
        out = []
        for cid in page:
            c = self.store.commit(cid)
            out.append({"id": c.id, "title": c.title, "message": c.body,
                        "authors": [{"user": c.author, "avatar": "/avatars/%s.svg" % c.author}],
                        "date": c.date})
        return json_response(out, headers=headers + [("X-Total-Count", str(len(history)))])

    def _branch(self, req, ident, rtype, ns, name, branch):
        repo = self._repo(ident, rtype, ns, name)
        self._require_write(ident, repo)
        if req.method == "DELETE":
            if branch == "main":
                raise HubError(403, "You cannot delete the default branch (main)")
            if branch not in repo.heads:
                raise HubError(404, "Invalid rev id: %s" % branch, "RevisionNotFound")
            self.store.set_ref(repo, "heads", branch, None)
            return json_response({})
        if (branch.startswith("refs/") or ".." in branch or branch.endswith((".lock", "/"))
                or re.search(r"[\s~^:?*\[\\]", branch) or gitobj.is_sha1(branch)):
            raise HubError(400, "Invalid branch name: %s" % branch)
        body = self._body_json(req)
        if branch in repo.heads:
            if not as_bool(body.get("overwrite")):
                raise HubError(409, "Reference already exists: refs/heads/%s" % branch)
            if not body.get("startingPoint") and not as_bool(body.get("emptyBranch")):
                return json_response({})  # overwrite alone keeps an existing branch
        if as_bool(body.get("emptyBranch")):
            sha = self.store.create_empty_commit(repo, ident.user, "Create empty branch %s" % branch)
        else:
            sha = self._rev(repo, body.get("startingPoint") or "main")
        self.store.set_ref(repo, "heads", branch, sha)
        return json_response({})

    def _tag(self, req, ident, rtype, ns, name, arg):
        repo = self._repo(ident, rtype, ns, name)
        self._require_write(ident, repo)
        if req.method == "DELETE":
            if arg not in repo.tags:
                raise HubError(404, "Invalid rev id: %s" % arg, "RevisionNotFound")
            self.store.set_ref(repo, "tags", arg, None)
            return json_response({})
        body = self._body_json(req)
        tag = body.get("tag")
        if (not isinstance(tag, str) or not tag or tag.startswith("refs/") or ".." in tag
                or re.search(r"[\s~^:?*\[\\]", tag)):
            raise HubError(400, "Invalid tag name: %r" % (tag,))
        sha = self._rev(repo, arg)
        if tag in repo.tags:
            raise HubError(409, "Tag %s already exists" % tag)
        self.store.set_ref(repo, "tags", tag, sha)
        return json_response({})

    # ---- uploads and commits -----------------------------------------------

    def _write_repo(self, req, ident, rtype, ns, name):
        """The repo a write (commit, preupload) goes to, with the caller checked."""
        repo = self._repo(ident, rtype, ns, name)
        if as_bool(req.param("create_pr")):
            if ident is None:
                raise HubError(401, "You must be authenticated to open a pull request")
            if ident.role != "write":
                raise HubError(403, "Forbidden: you must use a write token to open a pull request")
        else:
            self._require_write(ident, repo)
        return repo

    def _preupload(self, req, ident, rtype, ns, name, rev):
        repo = self._write_repo(req, ident, rtype, ns, name)
        sha = self._rev(repo, rev)
        body = self._body_json(req)
        tree = self.store.commit(sha).tree
        if isinstance(body.get("gitAttributes"), str):
            attrs = gitobj.GitAttributes(body["gitAttributes"])
        else:
            attrs = self.store.gitattributes(tree)
        out = []
        for f in body.get("files") or []:
            path = normalize_path(f.get("path"))
            size = int(f.get("size") or 0)
            try:
                sample = base64.b64decode(f.get("sample") or "")
            except (binascii.Error, ValueError):
                sample = b""
            lfs = attrs.is_lfs(path) or size > storemod.MAX_REGULAR_FILE or b"\0" in sample
            item = {"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False}
            e = self.store.lookup(tree, path)
            if e is not None and not e.is_dir:
                item["oid"] = e.lfs[0] if e.lfs else e.oid
            out.append(item)
        return json_response({"files": out})

    @staticmethod
    def _decode_content(value):
        content = value.get("content", "")
        enc = (value.get("encoding") or "utf-8").lower()
        if not isinstance(content, str):
            raise HubError(400, "content must be a string")
        if enc == "base64":
            try:
                return base64.b64decode(content, validate=False)
            except (binascii.Error, ValueError):
                raise HubError(400, "Invalid base64 content") from None
        if enc in ("utf-8", "utf8"):
            return content.encode("utf-8")
        raise HubError(400, "Unsupported encoding: %s" % enc)

    def _parse_commit(self, data):
        header = None
        ops = []
        for n, line in enumerate(data.split(b"\n"), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                key, value = obj["key"], obj["value"]
            except (ValueError, KeyError, TypeError):
                raise HubError(400, "Invalid NDJSON line %d" % n) from None
            if not isinstance(value, dict):
                raise HubError(400, "Invalid value on line %d" % n)
            if header is None:
                if key != "header":
                    raise HubError(400, "The first line must be the commit header")
                header = value
                continue
            old = value.get("oldPath")
            old = normalize_path(old) if old is not None else None
            if key == "file":
                ops.append(("file", normalize_path(value.get("path")), self._decode_content(value), old))
            elif key == "lfsFile":
                oid = value.get("oid")
                if oid is None and old is None:
                    raise HubError(400, "lfsFile needs an oid (or an oldPath to move)")
                if oid is not None and (not gitobj.is_sha256(oid) or value.get("algo", "sha256") != "sha256"):
                    raise HubError(400, "lfsFile oid must be a sha256 hex digest")
                size = value.get("size")
                ops.append(("lfs", normalize_path(value.get("path")), oid,
                            int(size) if size is not None else None, old))
            elif key == "deletedFile":
                ops.append(("delete", normalize_path(value.get("path"))))
            elif key == "deletedFolder":
                p = str(value.get("path", ""))
                ops.append(("delete_folder", "" if p.strip("/") == "" else normalize_path(p.rstrip("/"))))
            else:
                raise HubError(400, "Unknown operation %r on line %d" % (key, n))
        if header is None:
            raise HubError(400, "Missing commit header")
        return header, ops

    def _commit(self, req, ident, rtype, ns, name, rev):
        repo = self._write_repo(req, ident, rtype, ns, name)
        create_pr = as_bool(req.param("create_pr"))
        header, ops = self._parse_commit(req.read_all())
        summary = header.get("summary")
        if not isinstance(summary, str) or not summary.strip():
            raise HubError(400, "A commit summary (title) is required")
        parent = header.get("parentCommit")
        if parent is not None:
            if not isinstance(parent, str) or not _HEX_PARENT.match(parent):
                raise HubError(400, "parentCommit must be a commit id (5 to 40 hex digits)")
            parent = parent.lower()
        sha, pr = self.store.create_commit(repo, rev, ops, ident.user, summary,
                                           header.get("description") or "", parent, create_pr)
        url = self._repo_url(repo)
        return json_response({"success": True, "commitOid": sha, "commitUrl": "%s/commit/%s" % (url, sha),
                              "hookOutput": "",
                              "pullRequestUrl": "%s/discussions/%d" % (url, pr) if pr else None})

    def _validate_yaml(self, req):
        body = self._body_json(req)
        content = body.get("content")
        if not isinstance(content, str):
            raise HubError(400, "content must be a string")
        errors, warnings = card.validate(content)
        return json_response({"errors": errors, "warnings": warnings}, 400 if errors else 200)

    def _lfs_api(self, req, rtype, ns, name, rest):
        ident = self._auth(req)
        repo = self._repo(ident, rtype, ns, name)
        if rest == ["batch"] and req.method == "POST":
            body = req.read_all(64 << 20)
            try:
                parsed = json.loads(body or b"{}")
            except ValueError:
                parsed = {}
            if not isinstance(parsed, dict):
                parsed = {}
            if parsed.get("operation") == "upload":
                if ident is None:
                    raise HubError(401, "Invalid username or password.")
                if parsed.get("ref"):
                    self._require_write(ident, repo)
            return self.lfs.batch(repo, body)
        if rest == ["verify"] and req.method == "POST":
            if ident is None:
                raise HubError(401, "Invalid username or password.")
            return self.lfs.verify(req.read_all(1 << 20))
        raise HubError(404, "Not Found: %s" % req.path)

    # ---- file content --------------------------------------------------------

    def _resolve(self, req, rtype, ns, name, kind, rev, path):
        if req.method not in ("GET", "HEAD"):
            raise HubError(405, "Method not allowed")
        ident = self._auth(req)
        repo = self._repo(ident, rtype, ns, name)
        sha = self._rev(repo, rev)
        if repo.disabled:
            raise HubError(403, "Access to this resource is disabled.")
        if repo.gated and not self._owns(ident, repo.namespace) and \
                (ident is None or ident.user not in repo.gated_allow):
            what = "%s %s" % (repo.type, repo.id)
            if ident is None:
                raise HubError(401, "Access to %s is restricted. You must have access to it and be "
                               "authenticated to access it. Please log in." % what, "GatedRepo")
            raise HubError(403, "Access to %s is restricted and you are not in the authorized list. "
                           "Visit %s to ask for access." % (what, self._repo_url(repo)), "GatedRepo")
        base = [("X-Repo-Commit", sha), ("Accept-Ranges", "bytes")]
        entry = self.store.lookup(self.store.commit(sha).tree, path) if path else None
        if entry is None or entry.is_dir:
            raise HubError(404, "Entry not found", "EntryNotFound", base)
        filename = path.rsplit("/", 1)[-1]
        disposition = None
        if not as_bool(req.param("noContentDisposition")):
            ascii_name = filename.encode("ascii", "replace").decode().replace('"', "")
            disposition = ("Content-Disposition", "inline; filename*=UTF-8''%s; filename=\"%s\";"
                           % (quote(filename), ascii_name))
        inm = req.headers.get("if-none-match", "")
        if entry.lfs and kind == "resolve":
            oid, size = entry.lfs[0], entry.lfs[1]
            etag = '"%s"' % oid
            headers = base + [("ETag", etag), ("X-Linked-Etag", etag), ("X-Linked-Size", str(size))]
            if etag in inm:
                return Response(304, headers, b"")
            if self.store.lfs.size(oid) is None:
                raise HubError(404, "LFS object %s is missing from storage" % oid, "EntryNotFound", base)
            headers += [("Location", self.lfs.download_url(oid)), ("Content-Type", "text/plain; charset=utf-8")]
            if disposition:
                headers.append(disposition)
            return Response(302, headers, b"")
        blob_path, offset, size = self.store.objects.blob_location(entry.oid)
        etag = '"%s"' % entry.oid
        headers = base + [("ETag", etag), ("Content-Type", self._content_type(blob_path, offset, size))]
        if disposition:
            headers.append(disposition)
        if etag in inm:
            return Response(304, headers, b"")
        return file_response(headers, blob_path, offset, size, req.headers.get("range"))

    @staticmethod
    def _content_type(path, offset, size):
        with open(path, "rb") as f:
            f.seek(offset)
            head = f.read(min(size, 8192))
        if b"\0" in head:
            return "application/octet-stream"
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as e:
            if e.start < len(head) - 4:
                return "application/octet-stream"
        return "text/plain; charset=utf-8"

    # ---- admin ---------------------------------------------------------------

    def _admin(self, req):
        s = [unquote(x) for x in req.path.split("/")[2:]]
        m = req.method
        if s == ["log"]:
            if m == "GET":
                since = req.param("since")
                try:
                    since = int(since) if since not in (None, "") else None
                except ValueError:
                    raise HubError(400, "since must be an integer") from None
                return json_response(self.log.records(since))
            if m == "DELETE":
                self.log.clear()
                return json_response({"cleared": True})
        if s == ["faults"]:
            if m == "GET":
                return json_response(self.faults.describe())
            if m == "PUT":
                try:
                    self.faults.set(req.read_all(16 << 20))
                except (ValueError, TypeError) as e:
                    raise HubError(400, "Invalid fault rules: %s" % e) from None
                return json_response(self.faults.describe())
            if m == "DELETE":
                self.faults.clear()
                return json_response([])
        if s == ["info"] and m == "GET":
            return json_response({"api": self.base_url, "cdn": self.lfs.cdn_url, "root": self.store.root,
                                  "page_size": self.page_size, "lfs_chunk_size": self.lfs.chunk_size,
                                  "time": time.time()})
        if len(s) == 4 and s[0] == "repos":
            rtype = s[1][:-1] if s[1].endswith("s") else s[1]
            repo = self.store.get_repo(rtype, "%s/%s" % (s[2], s[3]))
            if repo is None:
                raise HubError(404, "Repository not found", "RepoNotFound")
            if m == "PUT":
                body = self._body_json(req)
                changes = {}
                for key in ("private", "disabled"):
                    if key in body:
                        changes[key] = bool(body[key])
                if "gated" in body:
                    if body["gated"] not in (False, "auto", "manual"):
                        raise HubError(400, "gated must be false, 'auto' or 'manual'")
                    changes["gated"] = body["gated"]
                if "gated_allow" in body:
                    changes["gated_allow"] = [str(u) for u in body["gated_allow"]]
                self.store.update_repo(repo, **changes)
            if m in ("PUT", "GET"):
                return json_response(repo.to_json())
        raise HubError(404, "Unknown admin route: %s %s" % (m, req.path))
