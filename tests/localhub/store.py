"""On-disk state of the local Hub: objects, LFS objects, accounts, repos, history.

Layout under the root directory (all of it survives restarts):

    localhub.json                 server secret (signs CDN/upload URLs), seed marker
    accounts.json                 users, organisations, tokens
    repos/<type>/<ns>/<name>.json one file per repo: settings, refs, every commit id
    objects/<2 hex>/<38 hex>      git objects, uncompressed ("blob 12\\0..." as hashed)
    lfs/<2>/<2>/<sha256>          LFS objects, content-addressed by sha256
    tmp/                          partial uploads (renamed into lfs/ when verified)
    uploads/<id>/                 multipart upload sessions

Invariants: objects and LFS objects are immutable and written with tmp+rename,
so a reader never sees a partial file. Metadata files are rewritten whole with
tmp+rename. Every mutation of accounts or repos (and so every ref update)
happens under Store.lock; readers take the lock only to copy a ref, and read
objects without it. Commits stay readable by id forever: deleting a branch only
removes the ref, the repo keeps the list of every commit it ever had.
"""

import base64
import hashlib
import json
import os
import re
import threading
import time

import gitobj

MAX_REGULAR_FILE = 10 * 1024 * 1024
REPO_TYPES = ("model", "dataset", "space")

_NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$")


def valid_name(name):
    """Hub rules for a namespace or repo name (ASCII subset)."""
    return (isinstance(name, str) and bool(_NAME_RE.match(name)) and "--" not in name
            and ".." not in name and not name.endswith(".git"))


def atomic_write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = "%s.tmp.%d.%d" % (path, os.getpid(), threading.get_ident())
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_json(path, obj):
    atomic_write(path, json.dumps(obj, indent=1, sort_keys=True).encode("utf-8"))


def read_json(path, default=None):
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        return default


class HubError(Exception):
    """An error answer: status, message, optional X-Error-Code and headers."""

    def __init__(self, status, message, code=None, headers=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = list(headers or ())


class BlobInfo:
    __slots__ = ("size", "lfs_oid", "lfs_size", "pointer_size")

    def __init__(self, size, lfs=None):
        self.size = size
        self.lfs_oid, self.lfs_size = lfs if lfs else (None, None)
        self.pointer_size = size if lfs else None

    @property
    def real_size(self):
        return self.lfs_size if self.lfs_oid else self.size


class ObjectStore:
    """Loose git objects, stored uncompressed so blobs can be sent with sendfile."""

    def __init__(self, root):
        self.dir = os.path.join(root, "objects")
        os.makedirs(self.dir, exist_ok=True)
        self._trees = {}
        self._commits = {}
        self._blobs = {}

    def path(self, sha):
        return os.path.join(self.dir, sha[:2], sha[2:])

    def put(self, kind, data):
        sha = gitobj.object_id(kind, data)
        path = self.path(sha)
        if not os.path.exists(path):
            atomic_write(path, gitobj.object_header(kind, len(data)) + data)
        return sha

    def read(self, sha, kind=None):
        """(kind, content) of an object; KeyError if absent or of another kind."""
        if not gitobj.is_sha1(sha):
            raise KeyError(sha)
        try:
            with open(self.path(sha), "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raise KeyError(sha) from None
        nul = raw.index(b"\0")
        okind = raw[:nul].split(b" ")[0].decode("ascii")
        if kind and okind != kind:
            raise KeyError(sha)
        return okind, raw[nul + 1:]

    def blob_location(self, sha):
        """(file path, offset of content, size) of a blob, for sendfile."""
        path = self.path(sha)
        with open(path, "rb") as f:
            head = f.read(64)
        nul = head.index(b"\0")
        return path, nul + 1, int(head[5:nul])

    @staticmethod
    def _remember(cache, key, value):
        if len(cache) > 200000:
            cache.clear()
        cache[key] = value
        return value

    def tree(self, sha):
        """Entries of a tree: tuple of (name, mode, sha), in git order."""
        t = self._trees.get(sha)
        if t is None:
            t = tuple(gitobj.decode_tree(self.read(sha, "tree")[1]))
            self._remember(self._trees, sha, t)
        return t

    def commit(self, sha):
        c = self._commits.get(sha)
        if c is None:
            c = gitobj.decode_commit(sha, self.read(sha, "commit")[1])
            self._remember(self._commits, sha, c)
        return c

    def blob_info(self, sha):
        info = self._blobs.get(sha)
        if info is None:
            path, off, size = self.blob_location(sha)
            lfs = None
            if size <= 1024:
                with open(path, "rb") as f:
                    f.seek(off)
                    lfs = gitobj.parse_lfs_pointer(f.read())
            info = self._remember(self._blobs, sha, BlobInfo(size, lfs))
        return info


class LfsStore:
    """LFS objects by sha256, sharded as lfs/ab/cd/<sha256>."""

    def __init__(self, root):
        self.dir = os.path.join(root, "lfs")
        self.tmp = os.path.join(root, "tmp")
        os.makedirs(self.dir, exist_ok=True)
        os.makedirs(self.tmp, exist_ok=True)

    def path(self, oid):
        return os.path.join(self.dir, oid[:2], oid[2:4], oid)

    def size(self, oid):
        """Size of a stored object, or None."""
        if not gitobj.is_sha256(oid):
            return None
        try:
            return os.stat(self.path(oid)).st_size
        except FileNotFoundError:
            return None

    def temp_path(self):
        return os.path.join(self.tmp, "up-%s" % os.urandom(12).hex())

    def install(self, tmp_path, oid):
        """Move a verified temp file into place (a no-op if already stored)."""
        dest = self.path(oid)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if os.path.exists(dest):
            os.unlink(tmp_path)
        else:
            os.replace(tmp_path, dest)

    def put_bytes(self, data):
        oid = hashlib.sha256(data).hexdigest()
        if self.size(oid) is None:
            tmp = self.temp_path()
            with open(tmp, "wb") as f:
                f.write(data)
            self.install(tmp, oid)
        return oid, len(data)

    def receive(self, chunks):
        """Stream chunks into a temp file, hashing as they come.

        Returns (sha256, size, temp path). The caller installs or removes it.
        """
        tmp = self.temp_path()
        h = hashlib.sha256()
        size = 0
        try:
            with open(tmp, "wb") as f:
                for chunk in chunks:
                    h.update(chunk)
                    f.write(chunk)
                    size += len(chunk)
        except BaseException:
            _unlink(tmp)
            raise
        return h.hexdigest(), size, tmp


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class Accounts:
    """Users, organisations and tokens, persisted in accounts.json."""

    def __init__(self, root):
        self.path = os.path.join(root, "accounts.json")
        data = read_json(self.path, {})
        self.users = data.get("users", {})
        self.orgs = data.get("orgs", {})
        self.tokens = data.get("tokens", {})

    def save(self):
        write_json(self.path, {"users": self.users, "orgs": self.orgs, "tokens": self.tokens})

    def add_org(self, name, created=None):
        if name not in self.orgs:
            self.orgs[name] = {"createdAt": int(created or time.time()),
                               "_id": _mongo_id("org", name)}

    def add_user(self, name, token=None, role="write", orgs=(), created=None, display_name=None):
        """Create or extend a user; tokens and memberships only accumulate."""
        created = int(created or time.time())
        user = self.users.setdefault(name, {"createdAt": created, "orgs": [],
                                            "_id": _mongo_id("user", name)})
        for org in orgs:
            self.add_org(org, created)
            if org not in user["orgs"]:
                user["orgs"].append(org)
        if token:
            old = self.tokens.get(token)
            if old is None or old["user"] != name or old["role"] != role:
                self.tokens[token] = {
                    "user": name, "role": role,
                    "displayName": display_name or "%s-%s-token" % (name, role),
                    "createdAt": old["createdAt"] if old else created}

    def token(self, token):
        return self.tokens.get(token)

    def is_member(self, user, namespace):
        u = self.users.get(user)
        return bool(u) and namespace in u["orgs"]


def _mongo_id(*parts):
    """A stable 24-hex id for a Hub object, derived from what names it."""
    return hashlib.sha1("\0".join(parts).encode("utf-8")).hexdigest()[:24]


class Repo:
    """Settings, refs and commit list of one repo (mutated under Store.lock)."""

    def __init__(self, rtype, namespace, name, data=None):
        data = data or {}
        self.type = rtype
        self.namespace = namespace
        self.name = name
        self.id = "%s/%s" % (namespace, name)
        self.oid = data.get("_id") or _mongo_id(rtype, self.id, os.urandom(8).hex())
        self.private = bool(data.get("private", False))
        self.gated = data.get("gated", False)
        self.gated_allow = list(data.get("gated_allow", []))
        self.disabled = bool(data.get("disabled", False))
        self.created_at = int(data.get("createdAt", time.time()))
        self.sdk = data.get("sdk")
        refs = data.get("refs", {})
        self.heads = dict(refs.get("heads", {}))
        self.tags = dict(refs.get("tags", {}))
        self.prs = {int(k): v for k, v in refs.get("pr", {}).items()}
        self.converts = dict(refs.get("convert", {}))
        self.next_pr = int(data.get("next_pr", 1))
        self.commits = list(data.get("commits", []))
        self.commit_set = set(self.commits)

    def to_json(self):
        return {
            "type": self.type, "namespace": self.namespace, "name": self.name, "_id": self.oid,
            "private": self.private, "gated": self.gated, "gated_allow": self.gated_allow,
            "disabled": self.disabled, "createdAt": self.created_at, "sdk": self.sdk,
            "refs": {"heads": self.heads, "tags": self.tags,
                     "pr": {str(k): v for k, v in self.prs.items()}, "convert": self.converts},
            "next_pr": self.next_pr, "commits": self.commits,
        }

    @property
    def url_prefix(self):
        """'' for models, 'datasets/' or 'spaces/' for the others."""
        return "" if self.type == "model" else self.type + "s/"

    def add_commit(self, sha):
        if sha not in self.commit_set:
            self.commit_set.add(sha)
            self.commits.append(sha)


class Entry:
    """A path in a tree: a file (blob) or a directory (tree)."""

    __slots__ = ("path", "is_dir", "oid", "size", "lfs")

    def __init__(self, path, is_dir, oid, size, lfs):
        self.path = path
        self.is_dir = is_dir
        self.oid = oid
        self.size = size
        self.lfs = lfs  # (sha256, size, pointer size) or None


class Store:
    """Everything the server knows, on disk under root."""

    def __init__(self, root):
        self.root = os.path.abspath(root)
        os.makedirs(self.root, exist_ok=True)
        self.lock = threading.RLock()
        self.objects = ObjectStore(self.root)
        self.lfs = LfsStore(self.root)
        self.accounts = Accounts(self.root)
        self.meta_path = os.path.join(self.root, "localhub.json")
        self.meta = read_json(self.meta_path, None)
        if self.meta is None:
            self.meta = {"version": 1, "secret": os.urandom(32).hex(), "seeded": False}
            write_json(self.meta_path, self.meta)
        self.secret = bytes.fromhex(self.meta["secret"])
        self.repos = {}
        self._flat = {}
        self._last = {}
        self._history = {}
        self._load_repos()

    # ---- persistence ------------------------------------------------------

    def _repo_path(self, rtype, namespace, name):
        return os.path.join(self.root, "repos", rtype, namespace, name + ".json")

    def _load_repos(self):
        base = os.path.join(self.root, "repos")
        for rtype in REPO_TYPES:
            tdir = os.path.join(base, rtype)
            if not os.path.isdir(tdir):
                continue
            for ns in sorted(os.listdir(tdir)):
                for fn in sorted(os.listdir(os.path.join(tdir, ns))):
                    if fn.endswith(".json"):
                        data = read_json(os.path.join(tdir, ns, fn))
                        repo = Repo(rtype, ns, fn[:-5], data)
                        self.repos[(rtype, repo.id)] = repo

    def save_repo(self, repo):
        write_json(self._repo_path(repo.type, repo.namespace, repo.name), repo.to_json())

    def set_meta(self, key, value):
        with self.lock:
            self.meta[key] = value
            write_json(self.meta_path, self.meta)

    # ---- repos -----------------------------------------------------------

    def get_repo(self, rtype, repo_id):
        return self.repos.get((rtype, repo_id))

    def create_repo(self, rtype, namespace, name, author, private=False, sdk=None,
                    timestamp=None, files=()):
        """Create a repo with the Hub's initial commit; None if it exists."""
        with self.lock:
            if (rtype, "%s/%s" % (namespace, name)) in self.repos:
                return None
            ts = int(timestamp if timestamp is not None else time.time())
            repo = Repo(rtype, namespace, name, {"private": private, "createdAt": ts, "sdk": sdk})
            if timestamp is not None:  # deterministic (seeded) repo: stable _id
                repo.oid = _mongo_id(rtype, repo.id)
            ops = [("file", ".gitattributes", gitobj.default_gitattributes(rtype).encode(), None)]
            ops += [("file", p, data, None) for p, data in files]
            sha = self._write_commit(repo, None, ops, author, "initial commit", "", ts)
            repo.heads["main"] = sha
            self.repos[(rtype, repo.id)] = repo
            self.save_repo(repo)
            return repo

    def delete_repo(self, repo):
        with self.lock:
            self.repos.pop((repo.type, repo.id), None)
            _unlink(self._repo_path(repo.type, repo.namespace, repo.name))

    def update_repo(self, repo, **changes):
        with self.lock:
            for key, value in changes.items():
                setattr(repo, key, value)
            self.save_repo(repo)

    # ---- revisions and trees ---------------------------------------------

    def resolve(self, repo, rev):
        """Commit id of a revision (branch, tag, ref, full or short id), or None."""
        if not rev:
            return None
        with self.lock:
            if rev == "HEAD":
                return repo.heads.get("main")
            for prefix, table in (("refs/heads/", repo.heads), ("refs/tags/", repo.tags),
                                  ("refs/convert/", repo.converts)):
                if rev.startswith(prefix):
                    return table.get(rev[len(prefix):])
            if rev.startswith("refs/pr/"):
                num = rev[len("refs/pr/"):]
                return repo.prs.get(int(num)) if num.isdigit() else None
            if rev in repo.heads:
                return repo.heads[rev]
            if rev in repo.tags:
                return repo.tags[rev]
            if re.match(r"^[0-9a-f]{7,40}$", rev):
                if len(rev) == 40:
                    return rev if rev in repo.commit_set else None
                found = [c for c in repo.commits if c.startswith(rev)]
                return found[0] if len(found) == 1 else None
        return None

    def commit(self, sha):
        return self.objects.commit(sha)

    def _entry(self, path, mode, sha):
        if mode == gitobj.MODE_DIR:
            return Entry(path, True, sha, 0, None)
        info = self.objects.blob_info(sha)
        lfs = (info.lfs_oid, info.lfs_size, info.pointer_size) if info.lfs_oid else None
        return Entry(path, False, sha, info.real_size, lfs)

    def lookup(self, tree, path):
        """Entry at path in a tree (root tree if path is ''), or None."""
        if not path:
            return Entry("", True, tree, 0, None)
        mode, sha = gitobj.MODE_DIR, tree
        for part in path.split("/"):
            if mode != gitobj.MODE_DIR:
                return None
            for name, m, s in self.objects.tree(sha):
                if name == part:
                    mode, sha = m, s
                    break
            else:
                return None
        return self._entry(path, mode, sha)

    def list_dir(self, tree, path):
        """Direct children of a directory entry's tree, as Entries."""
        prefix = path + "/" if path else ""
        return [self._entry(prefix + name, mode, sha) for name, mode, sha in self.objects.tree(tree)]

    def walk(self, tree, path=""):
        """All entries below a tree, directories before their content (cached)."""
        key = (tree, path)
        flat = self._flat.get(key)
        if flat is None:
            flat = []
            for entry in self.list_dir(tree, path):
                flat.append(entry)
                if entry.is_dir:
                    flat.extend(self.walk(entry.oid, entry.path))
            flat = tuple(flat)
            if len(self._flat) > 20000:
                self._flat.clear()
            self._flat[key] = flat
        return flat

    def files(self, tree):
        """{path: (mode, blob sha)} of every file in a tree."""
        out = {}

        def rec(sha, prefix):
            for name, mode, s in self.objects.tree(sha):
                if mode == gitobj.MODE_DIR:
                    rec(s, prefix + name + "/")
                else:
                    out[prefix + name] = (mode, s)
        rec(tree, "")
        return out

    def history(self, sha):
        """Commit ids reachable from sha, newest first."""
        hist = self._history.get(sha)
        if hist is None:
            seen = set()
            order = []
            stack = [sha]
            while stack:
                c = stack.pop()
                if c in seen:
                    continue
                seen.add(c)
                commit = self.objects.commit(c)
                order.append(commit)
                stack.extend(commit.parents)
            order.sort(key=lambda c: -c.timestamp)
            hist = tuple(c.id for c in order)
            if len(self._history) > 10000:
                self._history.clear()
            self._history[sha] = hist
        return hist

    def last_commit(self, sha, path):
        """The commit that last changed path, walking first parents from sha."""
        key = (sha, path)
        found = self._last.get(key)
        if found is None:
            def oid_at(c):
                e = self.lookup(self.objects.commit(c).tree, path)
                return e.oid if e else None
            target = oid_at(sha)
            found = sha
            while True:
                parents = self.objects.commit(found).parents
                if not parents or oid_at(parents[0]) != target:
                    break
                found = parents[0]
            if len(self._last) > 100000:
                self._last.clear()
            self._last[key] = found
        return self.objects.commit(found)

    def read_blob(self, sha):
        return self.objects.read(sha, "blob")[1]

    def gitattributes(self, tree):
        e = self.lookup(tree, ".gitattributes")
        if e is None or e.is_dir:
            return gitobj.GitAttributes("")
        return gitobj.GitAttributes(self.read_blob(e.oid).decode("utf-8", "replace"))

    # ---- commits ---------------------------------------------------------

    def _build_tree(self, files):
        """Write the trees for {path: (mode, sha)}; return the root tree id."""
        root = {}
        for path, (mode, sha) in files.items():
            node = root
            parts = path.split("/")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = (mode, sha)

        def write(node):
            entries = []
            for name, value in node.items():
                if isinstance(value, dict):
                    entries.append((name, gitobj.MODE_DIR, write(value)))
                else:
                    entries.append((name, value[0], value[1]))
            return self.objects.put("tree", gitobj.encode_tree(entries))
        return write(root)

    def _write_commit(self, repo, parent, ops, author, summary, description, timestamp):
        """Apply operations on top of parent (a commit id or None); return the new id."""
        files = self.files(self.objects.commit(parent).tree) if parent else {}
        lfs_added = []
        for op in ops:
            kind, path = op[0], op[1]
            if kind == "file":
                _, _, data, old = op
                if len(data) > MAX_REGULAR_FILE:
                    raise HubError(400, "Your push was rejected because it contains files larger than "
                                   "10 MiB. Please use https://git-lfs.github.com/ to store large files. "
                                   "Offending files: - %s" % path)
                if old is not None:
                    self._take(files, old)
                files[path] = (gitobj.MODE_FILE, self.objects.put("blob", data))
            elif kind == "lfs":
                _, _, oid, size, old = op
                if oid is None:
                    files[path] = self._take(files, old)
                    continue
                stored = self.lfs.size(oid)
                if stored is None or (size is not None and stored != size):
                    raise HubError(400, "Your push was rejected because an LFS pointer pointed to a "
                                   "file that does not exist. Offending file: - %s" % path)
                if old is not None:
                    self._take(files, old)
                files[path] = (gitobj.MODE_FILE, self.objects.put("blob", gitobj.lfs_pointer(oid, stored)))
                lfs_added.append(path)
            elif kind == "delete":
                if path not in files:
                    raise HubError(404, "A file with this name doesn't exist: %s" % path, "EntryNotFound")
                del files[path]
            elif kind == "delete_folder":
                prefix = path.rstrip("/") + "/"
                doomed = [p for p in files if p.startswith(prefix)] if prefix != "/" else list(files)
                if not doomed:
                    raise HubError(404, "A folder with this name doesn't exist: %s" % path, "EntryNotFound")
                for p in doomed:
                    del files[p]
        self._track_lfs(files, lfs_added)
        for path in files:
            parts = path.split("/")
            for i in range(1, len(parts)):
                if "/".join(parts[:i]) in files:
                    raise HubError(400, "Cannot create %s: %s is a file" % (path, "/".join(parts[:i])))
        tree = self._build_tree(files)
        message = gitobj.commit_message(summary, description)
        data = gitobj.encode_commit(tree, [parent] if parent else [], author, timestamp, message)
        sha = self.objects.put("commit", data)
        repo.add_commit(sha)
        return sha

    @staticmethod
    def _take(files, old):
        if old not in files:
            raise HubError(404, "A file with this name doesn't exist: %s" % old, "EntryNotFound")
        return files.pop(old)

    def _track_lfs(self, files, paths):
        """Add LFS paths that no .gitattributes rule matches to .gitattributes."""
        if not paths:
            return
        cur = files.get(".gitattributes")
        text = self.read_blob(cur[1]).decode("utf-8", "replace") if cur else ""
        attrs = gitobj.GitAttributes(text)
        missing = [p for p in paths if not attrs.is_lfs(p)]
        if not missing:
            return
        if text and not text.endswith("\n"):
            text += "\n"
        text += "".join(gitobj.gitattributes_line(p) for p in missing)
        files[".gitattributes"] = (gitobj.MODE_FILE, self.objects.put("blob", text.encode("utf-8")))

    def create_commit(self, repo, rev, ops, author, summary, description="", parent_commit=None,
                      create_pr=False, timestamp=None):
        """Commit ops to a branch or PR ref, or open a PR; return (commit id, PR number)."""
        with self.lock:
            if create_pr:
                base = self.resolve(repo, rev)
                if base is None:
                    raise HubError(404, "Invalid rev id: %s" % rev, "RevisionNotFound")
                if parent_commit:
                    matches = [c for c in repo.commits if c.startswith(parent_commit)]
                    if len(matches) != 1:
                        raise HubError(404, "Invalid rev id: %s" % parent_commit, "RevisionNotFound")
                    base = matches[0]
            else:
                table, key = self._branch_ref(repo, rev)
                base = table[key]
                if parent_commit and not base.startswith(parent_commit):
                    raise HubError(412, "The branch was updated since you opened this page. "
                                   "Please refresh and try again.")
            ts = int(timestamp if timestamp is not None else time.time())
            sha = self._write_commit(repo, base, ops, author, summary, description, ts)
            pr = None
            if create_pr:
                pr = repo.next_pr
                repo.next_pr += 1
                repo.prs[pr] = sha
            else:
                table[key] = sha
            self.save_repo(repo)
            return sha, pr

    def _branch_ref(self, repo, rev):
        """(table, key) of the branch or PR ref a commit may move; HubError otherwise."""
        if rev.startswith("refs/pr/") and rev[8:].isdigit() and int(rev[8:]) in repo.prs:
            return repo.prs, int(rev[8:])
        name = rev[len("refs/heads/"):] if rev.startswith("refs/heads/") else rev
        if name in repo.heads:
            return repo.heads, name
        if rev in repo.tags or rev.startswith("refs/tags/"):
            raise HubError(400, "Invalid rev id: %s (cannot commit to a tag)" % rev)
        if self.resolve(repo, rev):
            raise HubError(400, "Invalid rev id: %s (can only commit to a branch)" % rev)
        raise HubError(404, "Invalid rev id: %s" % rev, "RevisionNotFound")

    def create_empty_commit(self, repo, author, summary, timestamp=None):
        with self.lock:
            ts = int(timestamp if timestamp is not None else time.time())
            return self._write_commit(repo, None, [], author, summary, "", ts)

    def set_ref(self, repo, kind, name, sha):
        """Set (sha) or delete (None) a ref: kind is heads, tags, pr or convert."""
        with self.lock:
            table = {"heads": repo.heads, "tags": repo.tags, "pr": repo.prs, "convert": repo.converts}[kind]
            if sha is None:
                table.pop(name, None)
            else:
                table[name] = sha
                if kind == "pr":
                    repo.next_pr = max(repo.next_pr, int(name) + 1)
            self.save_repo(repo)


def b64_cursor(obj):
    return base64.urlsafe_b64encode(json.dumps(obj, separators=(",", ":")).encode()).decode().rstrip("=")


def parse_cursor(text):
    """Decode an opaque cursor; None if it is not one of ours."""
    try:
        pad = "=" * (-len(text) % 4)
        obj = json.loads(base64.urlsafe_b64decode(text + pad).decode())
        return obj if isinstance(obj, dict) else None
    except (ValueError, UnicodeDecodeError):
        return None
