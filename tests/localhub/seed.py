"""Deterministic sample content (--seed). README.md lists all of it.

Every date, author and byte here is fixed, and big files come from seeded
PRNGs, so two seeded roots have the same commit ids, blob ids and sha256s.
Seeding a root that is already seeded does nothing; each repo is also only
created when absent.
"""

import json
import random
import struct

ALICE_WRITE_TOKEN = "hf_seed_alice_write_0000000000000000"
ALICE_READ_TOKEN = "hf_seed_alice_read_00000000000000000"
BOB_WRITE_TOKEN = "hf_seed_bob_write_000000000000000000"
ORG = "acme-research"

T0 = 1704067200  # 2024-01-01T00:00:00Z
HOUR = 3600
DAY = 24 * HOUR

_F32_TABLE = bytes((b & 0x80) | 0x3C | (b & 0x03) for b in range(256))


def safetensors(tensors, seed):
    """A valid safetensors file: F32 tensors [(name, shape)], finite PRNG values."""
    header = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in tensors:
        n = 4
        for d in shape:
            n *= d
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * (-len(hjson) % 8)
    data = bytearray(random.Random(seed).randbytes(offset))
    data[3::4] = data[3::4].translate(_F32_TABLE)  # exponent byte: |x| in [2^-7, 2)
    return struct.pack("<Q", len(hjson)) + hjson + bytes(data)


def _csv(seed, rows):
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    lines = ["id,text,label"]
    for i in range(rows):
        lines.append("%d,%s %s %s,%d" % (i, rng.choice(words), rng.choice(words), rng.choice(words),
                                         rng.randrange(2)))
    return ("\n".join(lines) + "\n").encode()


def _binary_with_nuls(seed, size):
    rng = random.Random(seed)
    data = bytearray(rng.randbytes(size))
    for start in range(0, size, 4096):  # zero runs: this is binary, not text
        data[start:start + 64] = bytes(64)
    return bytes(data)


def _lfs(store, data):
    oid, size = store.lfs.put_bytes(data)
    return oid, size


TINY_README = b"""---
license: apache-2.0
---

# tiny-model

A tiny model for tests of the local Hub.
"""

TINY_CONFIG_V1 = b'{\n  "architectures": ["TinyModel"],\n  "hidden_size": 1024,\n  "vocab_size": 256\n}\n'
TINY_CONFIG_V2 = (b'{\n  "architectures": ["TinyModel"],\n  "hidden_size": 1024,\n  "vocab_size": 256,\n'
                  b'  "torch_dtype": "float32"\n}\n')
TINY_TOKENIZER = (json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {chr(97 + i): i for i in range(26)},
                                                         "merges": []}}, indent=2) + "\n").encode()


def seed(store):
    """Create the sample users and repos; return False if the root was already seeded."""
    with store.lock:
        if store.meta.get("seeded"):
            return False
        acc = store.accounts
        acc.add_org(ORG, T0)
        acc.add_user("alice", ALICE_WRITE_TOKEN, "write", [ORG], T0, "alice-write")
        acc.add_user("alice", ALICE_READ_TOKEN, "read", [], T0, "alice-read")
        acc.add_user("bob", BOB_WRITE_TOKEN, "write", [], T0, "bob-write")
        acc.save()
        _tiny_model(store)
        _big_model(store)
        _private_model(store)
        _dataset(store)
        _space(store)
        _hello_world(store)
        store.set_meta("seeded", True)
        return True


def _tiny_model(store):
    if store.get_repo("model", "alice/tiny-model"):
        return
    t = T0
    repo = store.create_repo("model", "alice", "tiny-model", "alice", timestamp=t,
                             files=[("README.md", TINY_README)])
    c2, _ = store.create_commit(repo, "main", [
        ("file", "config.json", TINY_CONFIG_V1, None),
        ("file", "tokenizer.json", TINY_TOKENIZER, None),
        ("file", "docs/read me.md", b"# Read me\n\nA file name with a space.\n", None),
        ("file", "docs/caf\u00e9 \u2615.txt", "Caf\u00e9 \u2615: a non-ASCII file name.\n".encode(), None),
    ], "alice", "Add config and tokenizer", timestamp=t + HOUR)
    store.set_ref(repo, "tags", "v1.0", c2)
    weights = safetensors([("embed.weight", (256, 1024)), ("lm_head.weight", (256, 1024)),
                           ("norm.weight", (1024,))], seed=2)
    oid, size = _lfs(store, weights)
    c3, _ = store.create_commit(repo, "main", [("lfs", "model.safetensors", oid, size, None)],
                                "alice", "Add weights", timestamp=t + 2 * HOUR)
    store.create_commit(repo, "main", [("file", "config.json", TINY_CONFIG_V2, None)],
                        "alice", "Update config", timestamp=t + 3 * HOUR)
    store.set_ref(repo, "heads", "dev", c3)
    store.create_commit(repo, "dev", [("file", "dev-notes.txt", b"Notes from the dev branch.\n", None)],
                        "alice", "Experiment on dev", timestamp=t + 4 * HOUR)
    store.create_commit(repo, "main", [("file", "pr-file.txt", b"Added by pull request 1.\n", None)],
                        "alice", "Add pr-file", create_pr=True, timestamp=t + 5 * HOUR)


def _big_model(store):
    if store.get_repo("model", "alice/big-model"):
        return
    t = T0 + DAY
    repo = store.create_repo("model", "alice", "big-model", "alice", timestamp=t)
    tensors = [("layers.%d.weight" % i, (4096, 1024)) for i in range(4)] + [("norm.weight", (1024,))]
    oid, size = _lfs(store, safetensors(tensors, seed=3))
    store.create_commit(repo, "main", [
        ("file", "config.json", b'{\n  "architectures": ["BigModel"],\n  "num_layers": 4\n}\n', None),
        ("lfs", "model.safetensors", oid, size, None),
    ], "alice", "Add big model", timestamp=t + HOUR)


def _private_model(store):
    if store.get_repo("model", "%s/private-model" % ORG):
        return
    t = T0 + 2 * DAY
    repo = store.create_repo("model", ORG, "private-model", "alice", private=True, timestamp=t)
    oid, size = _lfs(store, random.Random(4).randbytes(1 << 20))
    store.create_commit(repo, "main", [
        ("file", "config.json", b'{\n  "architectures": ["SecretModel"]\n}\n', None),
        ("lfs", "weights.bin", oid, size, None),
    ], "alice", "Add private weights", timestamp=t + HOUR)


def _dataset(store):
    if store.get_repo("dataset", "%s/sample-dataset" % ORG):
        return
    t = T0 + 3 * DAY
    readme = (b"---\nlicense: cc-by-4.0\npretty_name: Sample Dataset\ntask_categories:\n"
              b"- text-classification\n---\n\n# sample-dataset\n\nCSV shards for tests.\n")
    repo = store.create_repo("dataset", ORG, "sample-dataset", "alice", timestamp=t,
                             files=[("README.md", readme)])
    oid, size = _lfs(store, _binary_with_nuls(5, 3 << 20))
    main, _ = store.create_commit(repo, "main", [
        ("file", "data/train/part-0000.csv", _csv(10, 200), None),
        ("file", "data/train/part-0001.csv", _csv(11, 200), None),
        ("file", "data/test/part-0000.csv", _csv(12, 50), None),
        ("file", "data/nested/deep/er/file.jsonl",
         b"".join(b'{"id": %d, "text": "row %d"}\n' % (i, i) for i in range(20)), None),
        ("lfs", "data/train.bin", oid, size, None),
    ], "alice", "Add data", timestamp=t + HOUR)
    parquet = b"PAR1" + random.Random(6).randbytes(4096) + b"PAR1"
    poid, psize = _lfs(store, parquet)
    with store.lock:
        convert = store._write_commit(repo, main, [
            ("delete", "README.md"), ("delete_folder", "data"),
            ("lfs", "default/train/0000.parquet", poid, psize, None),
        ], "parquet-converter", "Update parquet files", "", t + 2 * HOUR)
    store.set_ref(repo, "convert", "parquet", convert)


def _space(store):
    if store.get_repo("space", "alice/demo-space"):
        return
    t = T0 + 4 * DAY
    readme = ("---\ntitle: Demo Space\nemoji: \U0001F680\ncolorFrom: blue\ncolorTo: green\nsdk: gradio\n"
              "sdk_version: 4.44.0\napp_file: app.py\npinned: false\n---\n\n# Demo Space\n").encode()
    app = (b"import gradio as gr\n\n\ndef greet(name):\n    return 'Hello ' + name + '!'\n\n\n"
           b"gr.Interface(fn=greet, inputs='text', outputs='text').launch()\n")
    store.create_repo("space", "alice", "demo-space", "alice", sdk="gradio", timestamp=t,
                      files=[("README.md", readme), ("app.py", app), ("requirements.txt", b"gradio\n")])


def _hello_world(store):
    if store.get_repo("model", "bob/hello-world"):
        return
    t = T0 + 5 * DAY
    store.create_repo("model", "bob", "hello-world", "bob", timestamp=t, files=[
        ("README.md", b"# hello-world\n\nBob's first model.\n"),
        ("hello.txt", b"Hello, world!\n"),
    ])

