"""Git objects, LFS pointers and .gitattributes patterns.

Everything here is pure (no I/O): encoding and decoding of git blob, tree and
commit objects exactly as git hashes them, so the ids the server hands out are
the ids a real git repository with the same content would have; the text of a
Git LFS pointer; and the subset of gitattributes pattern matching the Hub uses
to decide which paths go to LFS.
"""

import hashlib
import re
import time

MODE_FILE = "100644"
MODE_EXEC = "100755"
MODE_DIR = "40000"

LFS_SPEC = "https://git-lfs.github.com/spec/v1"
LFS_ATTRS = "filter=lfs diff=lfs merge=lfs -text"

_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def is_sha1(text):
    return isinstance(text, str) and bool(_HEX40.match(text))


def is_sha256(text):
    return isinstance(text, str) and bool(_HEX64.match(text))


def object_header(kind, size):
    return b"%s %d\0" % (kind.encode("ascii"), size)


def object_id(kind, data):
    """The git object id (sha1 hex) of an object of this kind and content."""
    h = hashlib.sha1(object_header(kind, len(data)))
    h.update(data)
    return h.hexdigest()


def blob_id(data):
    return object_id("blob", data)


def _tree_sort_key(entry):
    name, mode, _ = entry
    key = name.encode("utf-8")
    return key + b"/" if mode == MODE_DIR else key


def encode_tree(entries):
    """Tree object content from (name, mode, sha1 hex) triples, in git order."""
    out = []
    for name, mode, sha in sorted(entries, key=_tree_sort_key):
        out.append(b"%s %s\0" % (mode.encode("ascii"), name.encode("utf-8")))
        out.append(bytes.fromhex(sha))
    return b"".join(out)


def decode_tree(data):
    """(name, mode, sha1 hex) triples of a tree object, in stored order."""
    entries = []
    pos = 0
    end = len(data)
    while pos < end:
        sp = data.index(b" ", pos)
        nul = data.index(b"\0", sp)
        mode = data[pos:sp].decode("ascii")
        name = data[sp + 1:nul].decode("utf-8")
        sha = data[nul + 1:nul + 21].hex()
        entries.append((name, MODE_DIR if mode == "040000" else mode, sha))
        pos = nul + 21
    return entries


EMPTY_TREE = object_id("tree", b"")


def author_email(user):
    return "%s@users.noreply.huggingface.co" % user


def encode_commit(tree, parents, author, timestamp, message):
    """Commit object content. author is a Hub user name; time is UTC."""
    ident = "%s <%s> %d +0000" % (author, author_email(author), int(timestamp))
    lines = ["tree %s" % tree]
    lines += ["parent %s" % p for p in parents]
    lines.append("author %s" % ident)
    lines.append("committer %s" % ident)
    if not message.endswith("\n"):
        message += "\n"
    return ("\n".join(lines) + "\n\n" + message).encode("utf-8")


def commit_message(summary, description):
    summary = summary.strip("\n")
    description = (description or "").strip("\n")
    return summary + ("\n\n" + description if description else "") + "\n"


class Commit:
    """A decoded commit object."""

    __slots__ = ("id", "tree", "parents", "author", "timestamp", "message")

    def __init__(self, oid, tree, parents, author, timestamp, message):
        self.id = oid
        self.tree = tree
        self.parents = parents
        self.author = author
        self.timestamp = timestamp
        self.message = message

    @property
    def title(self):
        return self.message.split("\n", 1)[0]

    @property
    def body(self):
        """The message after the title line and the blank line after it."""
        parts = self.message.split("\n", 1)
        return parts[1].strip("\n") if len(parts) > 1 else ""

    @property
    def date(self):
        return iso_date(self.timestamp)


def decode_commit(oid, data):
    text = data.decode("utf-8", "replace")
    head, _, message = text.partition("\n\n")
    tree = None
    parents = []
    author = ""
    timestamp = 0
    for line in head.split("\n"):
        key, _, value = line.partition(" ")
        if key == "tree":
            tree = value
        elif key == "parent":
            parents.append(value)
        elif key == "author":
            m = re.match(r"^(.*) <[^>]*> (\d+) [-+]\d{4}$", value)
            if m:
                author, timestamp = m.group(1), int(m.group(2))
    return Commit(oid, tree, parents, author, timestamp, message.rstrip("\n"))


def iso_date(timestamp):
    """ISO 8601 UTC with milliseconds, as the Hub writes dates."""
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(int(timestamp)))


def lfs_pointer(oid, size):
    return ("version %s\noid sha256:%s\nsize %d\n" % (LFS_SPEC, oid, size)).encode("ascii")


def parse_lfs_pointer(data):
    """(sha256, size) if data is exactly a Git LFS pointer, else None."""
    if len(data) > 1024 or not data.startswith(b"version https://git-lfs.github.com/spec/v1\n"):
        return None
    oid = size = None
    for line in data.decode("ascii", "replace").split("\n")[1:]:
        if line.startswith("oid sha256:"):
            oid = line[len("oid sha256:"):]
        elif line.startswith("size "):
            try:
                size = int(line[5:])
            except ValueError:
                return None
    if oid is None or size is None or not is_sha256(oid) or size < 0:
        return None
    return oid, size


# The .gitattributes the Hub commits into every new model repo (and space).
DEFAULT_GITATTRIBUTES = "".join("%s %s\n" % (p, LFS_ATTRS) for p in (
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*",
    "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb",
    "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors", "saved_model/**/*", "*.tar.*",
    "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst", "*tfevents*"))

# Datasets get a longer list (compression formats and media files).
DEFAULT_GITATTRIBUTES_DATASET = "".join("%s %s\n" % (p, LFS_ATTRS) for p in (
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*",
    "*.lz4", "*.mds", "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot",
    "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors",
    "saved_model/**/*", "*.tar.*", "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst",
    "*tfevents*")) + "".join(
    "# %s\n%s" % (title, "".join("%s %s\n" % (p, LFS_ATTRS) for p in pats)) for title, pats in (
        ("Audio files - uncompressed", ("*.pcm", "*.sam", "*.raw")),
        ("Audio files - compressed", ("*.aac", "*.flac", "*.mp3", "*.ogg", "*.wav")),
        ("Image files - uncompressed", ("*.bmp", "*.gif", "*.png", "*.tiff")),
        ("Image files - compressed", ("*.jpg", "*.jpeg", "*.webp")),
        ("Video files - compressed", ("*.mp4", "*.webm"))))


def default_gitattributes(repo_type):
    return DEFAULT_GITATTRIBUTES_DATASET if repo_type == "dataset" else DEFAULT_GITATTRIBUTES


def _glob_regex(pattern):
    """Regex for a gitattributes glob matched against a full repo path."""
    out = []
    i = 0
    n = len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("/**", i) and i + 3 == n:
            out.append("/.*")
            i += 3
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            if pattern.startswith("[[:space:]]", i):
                out.append(r"\s")
                i += len("[[:space:]]")
                continue
            j = pattern.find("]", i + 2)
            if j < 0:
                out.append(re.escape(c))
                i += 1
                continue
            body = pattern[i + 1:j].replace("\\", "\\\\")
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[%s]" % body)
            i = j + 1
        elif c == "\\" and i + 1 < n:
            out.append(re.escape(pattern[i + 1]))
            i += 2
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


class GitAttributes:
    """The filter=lfs rules of a .gitattributes text; the last match wins."""

    def __init__(self, text):
        self.rules = []
        for line in (text or "").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            fields = line.split()
            pattern, attrs = fields[0], fields[1:]
            lfs = None
            for a in attrs:
                if a == "filter=lfs":
                    lfs = True
                elif a in ("-filter", "!filter") or (a.startswith("filter=") and a != "filter=lfs"):
                    lfs = False
            if lfs is None:
                continue
            anchored = "/" in pattern.rstrip("/")
            pattern = pattern.lstrip("/")
            try:
                rx = re.compile("^" + _glob_regex(pattern) + "$")
            except re.error:
                continue
            self.rules.append((rx, anchored, lfs))

    def is_lfs(self, path):
        base = path.rsplit("/", 1)[-1]
        result = False
        for rx, anchored, lfs in self.rules:
            if rx.match(path if anchored else base):
                result = lfs
        return result


def gitattributes_line(path):
    """The line the Hub appends to track one exact path with LFS."""
    escaped = re.sub(r"([\[\]*?!\\#])", r"\\\1", path).replace(" ", "[[:space:]]")
    return "%s %s\n" % (escaped, LFS_ATTRS)
