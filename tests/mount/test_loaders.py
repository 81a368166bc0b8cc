#!/usr/bin/env python3
"""Loading models from the mount as the HF libraries do (TAP).

A repo's directory lists its revisions, and every other name in it is the
file or directory of that name in the default branch: so `NS/REPO` works as a
model directory (transformers' from_pretrained of a path, transformers.js
with localModelPath and the repo id).  Checked with plain Python (bytes by
sha256 against the Hub, ENOENT for a name that is in no revision, the
revisions still listed) and with transformers.js itself (tests/loaders/,
installed by scripts/install-deps; skipped when it is missing).
"""

import errno
import json
import os
import shutil
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mountlib import Mount, Tap, have_fuse, sha256, with_timeout  # noqa: E402
from harness import ALICE_WRITE_TOKEN, LocalHub  # noqa: E402
from test_read import commit_files, create_repo, errno_of  # noqa: E402

T = Tap()
REPO = "alice/tok-model"
SRCDIR = os.environ.get("HUBFS_SRCDIR") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
LOADERS = os.path.join(SRCDIR, "tests", "loaders")

VOCAB = {"[UNK]": 0, "hello": 1, "world": 2, "hub": 3, "fs": 4}
FILES = {
    "config.json": json.dumps({"model_type": "bert", "architectures": ["BertModel"], "vocab_size": len(VOCAB),
                               "hidden_size": 8}).encode(),
    "tokenizer.json": json.dumps({
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": 0, "content": "[UNK]", "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True}],
        "normalizer": None, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None, "decoder": None,
        "model": {"type": "WordLevel", "vocab": VOCAB, "unk_token": "[UNK]"}}).encode(),
    "tokenizer_config.json": json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                         "unk_token": "[UNK]"}).encode(),
    "sub/notes.txt": b"a file in a folder\n",
}


def read(path):
    data, err = with_timeout(lambda: open(path, "rb").read(), 60)
    if err:
        raise err
    return data


def test_paths(hub, m):
    top = m.p(REPO)
    T.eq(sorted(os.listdir(top)), ["main"], "the repo's directory lists its revisions only")
    for name, data in FILES.items():
        got = read(os.path.join(top, name))
        T.ok(sha256(got) == sha256(data) and got == read(m.p(REPO + "/main/" + name)),
             "%s/%s reads the default branch's bytes" % (REPO, name))
    T.ok(os.path.isdir(os.path.join(top, "sub")) and os.listdir(os.path.join(top, "sub")) == ["notes.txt"],
         "a folder of the default branch is a directory there")
    T.eq(errno_of(os.stat, os.path.join(top, "missing.json")), errno.ENOENT, "a name in no revision: ENOENT")
    T.eq(errno_of(os.stat, os.path.join(top, "bad name..x")), errno.ENOENT, "a name no ref can have: ENOENT")
    T.ok(os.path.isdir(m.p(REPO + "/main")), "main is still the branch's directory")
    # The alias follows the branch: a new commit is seen there (after the ttl).
    commit_files(hub, REPO, {"added.txt": b"later\n"}, summary="add a file")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not os.path.exists(os.path.join(top, "added.txt")):
        time.sleep(0.2)
    T.ok(os.path.exists(os.path.join(top, "added.txt")) and read(os.path.join(top, "added.txt")) == b"later\n",
         "a file committed on the Hub appears there once the ttl passed")


def test_transformers_js(m):
    node = shutil.which("node")
    if not node or not os.path.isdir(os.path.join(LOADERS, "node_modules", "@huggingface", "transformers")):
        print("ok %d - transformers.js loads %s # SKIP not installed (scripts/install-deps)" % (T.n + 1, REPO))
        T.n += 1
        return
    r = subprocess.run([node, os.path.join(LOADERS, "tjs_load.mjs"), m.path, REPO, "hello hub fs world"],
                       cwd=LOADERS, capture_output=True, text=True, timeout=120)
    out = r.stdout.strip().splitlines()
    try:
        got = json.loads(out[-1]) if out else None
    except ValueError:
        got = None
    T.ok(r.returncode == 0 and got is not None, "transformers.js loads %s with localModelPath = the mount" % REPO,
         r.stdout + r.stderr)
    if got:
        T.eq(got.get("architectures"), ["BertModel"], "transformers.js read config.json")
        T.eq(got.get("ids"), [1, 3, 4, 2], "transformers.js tokenizes with tokenizer.json from the mount")


def main():
    if not have_fuse():
        print("1..0 # SKIP /dev/fuse or fusermount3 missing")
        return 0
    with LocalHub(seed=True) as hub:
        create_repo(hub, REPO.split("/")[1])
        commit_files(hub, REPO, FILES, summary="a tokenizer")
        with Mount(hub, token=ALICE_WRITE_TOKEN, args=["--ttl", "1"]) as m:
            for test in (lambda: test_paths(hub, m), lambda: test_transformers_js(m)):
                try:
                    test()
                except Exception as e:  # noqa: B902 - a crash is a failure
                    T.ok(False, "raised %r" % e)
            m.unmount()
            T.ok(not m.sanitizer_report(), "no sanitizer report", "\n".join(m.sanitizer_report()))
    T.done()


if __name__ == "__main__":
    main()
