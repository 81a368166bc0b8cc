/* Unit tests: the mount's path grammar (src/fs_path.c). */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "fs_path.h"
#include "http.h"
#include "tap.h"

struct path_case {
	const char *in;
	int rc;
	enum fs_path_kind kind;
	enum hub_repo_type type;
	const char *ns, *repo, *rev;
	bool pinned;
	const char *path;
};

#define M HUB_REPO_MODEL
#define D HUB_REPO_DATASET
#define S HUB_REPO_SPACE

static const struct path_case cases[] = {
	/* the levels of the layout */
	{ "/", 0, FS_PATH_ROOT, M, "", "", "", false, "" },
	{ "", 0, FS_PATH_ROOT, M, "", "", "", false, "" },
	{ "/me", 0, FS_PATH_ME, M, "", "", "", false, "" },
	{ "/datasets", 0, FS_PATH_TYPE, D, "", "", "", false, "" },
	{ "/spaces", 0, FS_PATH_TYPE, S, "", "", "", false, "" },
	{ "/alice", 0, FS_PATH_NAMESPACE, M, "alice", "", "", false, "" },
	{ "/datasets/acme-research", 0, FS_PATH_NAMESPACE, D, "acme-research", "", "", false, "" },
	{ "/alice/tiny-model", 0, FS_PATH_REPO, M, "alice", "tiny-model", "", false, "" },
	{ "/spaces/alice/demo-space", 0, FS_PATH_REPO, S, "alice", "demo-space", "", false, "" },
	{ "/alice/tiny-model/main", 0, FS_PATH_REVISION, M, "alice", "tiny-model", "main", false, "" },
	{ "/alice/tiny-model/v1.0/config.json", 0, FS_PATH_ENTRY, M, "alice", "tiny-model", "v1.0",
	  false, "config.json" },
	{ "/alice/tiny-model/main/docs/read me.md", 0, FS_PATH_ENTRY, M, "alice", "tiny-model", "main",
	  false, "docs/read me.md" },
	{ "/datasets/acme-research/sample-dataset/main/data/train/part-0000.csv", 0, FS_PATH_ENTRY, D,
	  "acme-research", "sample-dataset", "main", false, "data/train/part-0000.csv" },
	/* branches with '/' are written %-encoded */
	{ "/alice/tiny-model/feature%2Fx/a.txt", 0, FS_PATH_ENTRY, M, "alice", "tiny-model", "feature/x",
	  false, "a.txt" },
	/* refs/pr/N and refs/convert/NAME as nested directories */
	{ "/alice/tiny-model/refs", 0, FS_PATH_REFS, M, "alice", "tiny-model", "refs", false, "" },
	{ "/alice/tiny-model/refs/pr", 0, FS_PATH_REFS, M, "alice", "tiny-model", "refs/pr", false, "" },
	{ "/alice/tiny-model/refs/convert", 0, FS_PATH_REFS, M, "alice", "tiny-model", "refs/convert",
	  false, "" },
	{ "/alice/tiny-model/refs/pr/1", 0, FS_PATH_REVISION, M, "alice", "tiny-model", "refs/pr/1", false,
	  "" },
	{ "/alice/tiny-model/refs/pr/12/pr-file.txt", 0, FS_PATH_ENTRY, M, "alice", "tiny-model",
	  "refs/pr/12", false, "pr-file.txt" },
	{ "/datasets/acme-research/sample-dataset/refs/convert/parquet/default/train/0000.parquet", 0,
	  FS_PATH_ENTRY, D, "acme-research", "sample-dataset", "refs/convert/parquet", false,
	  "default/train/0000.parquet" },
	{ .in = "/alice/tiny-model/refs/pr/x", .rc = -ENOENT },
	{ .in = "/alice/tiny-model/refs/heads", .rc = -ENOENT },
	{ .in = "/alice/tiny-model/refs/convert/.x", .rc = -ENOENT },
	/* pinned revisions */
	{ "/julien-c/EsperBERTo-small@4c77982/config.json", 0, FS_PATH_ENTRY, M, "julien-c",
	  "EsperBERTo-small", "4c77982", true, "config.json" },
	{ "/alice/tiny-model@4c779822c5ac4f1c7e48f2f5f6a5e4d3c2b1a0ff", 0, FS_PATH_REVISION, M, "alice",
	  "tiny-model", "4c779822c5ac4f1c7e48f2f5f6a5e4d3c2b1a0ff", true, "" },
	{ "/alice/tiny-model@v1.0/docs", 0, FS_PATH_ENTRY, M, "alice", "tiny-model", "v1.0", true, "docs" },
	{ "/alice/tiny-model@refs%2Fpr%2F1/pr-file.txt", 0, FS_PATH_ENTRY, M, "alice", "tiny-model",
	  "refs/pr/1", true, "pr-file.txt" },
	{ "/datasets/acme-research/sample-dataset@refs%2Fconvert%2Fparquet", 0, FS_PATH_REVISION, D,
	  "acme-research", "sample-dataset", "refs/convert/parquet", true, "" },
	{ "/alice/tiny-model@refs", 0, FS_PATH_REVISION, M, "alice", "tiny-model", "refs", true, "" },
	{ .in = "/alice/tiny-model@", .rc = -ENOENT },
	{ .in = "/alice/tiny-model@a..b", .rc = -ENOENT },
	{ .in = "/alice/tiny-model@v1%00", .rc = -ENOENT },
	{ .in = "/alice/bad--repo@main", .rc = -ENOENT },
	/* an '@' in a file name is literal */
	{ "/alice/tiny-model/main/user@host.txt", 0, FS_PATH_ENTRY, M, "alice", "tiny-model", "main",
	  false, "user@host.txt" },
	/* huggingface_hub's cache layout */
	{ "/.hf-cache", 0, FS_PATH_HFC, M, "", "", "", false, "" },
	{ "/.hf-cache/models--alice--tiny-model", 0, FS_PATH_HFC_REPO, M, "alice", "tiny-model", "",
	  false, "" },
	{ "/.hf-cache/datasets--acme-research--sample-dataset", 0, FS_PATH_HFC_REPO, D,
	  "acme-research", "sample-dataset", "", false, "" },
	{ "/.hf-cache/spaces--alice--demo-space", 0, FS_PATH_HFC_REPO, S, "alice", "demo-space", "",
	  false, "" },
	{ "/.hf-cache/models--alice--tiny-model/refs", 0, FS_PATH_HFC_REF, M, "alice", "tiny-model", "",
	  true, "" },
	{ "/.hf-cache/models--alice--tiny-model/refs/main", 0, FS_PATH_HFC_REF, M, "alice",
	  "tiny-model", "main", true, "" },
	{ "/.hf-cache/models--alice--tiny-model/refs/refs/pr/1", 0, FS_PATH_HFC_REF, M, "alice",
	  "tiny-model", "refs/pr/1", true, "" },
	{ "/.hf-cache/models--alice--tiny-model/snapshots", 0, FS_PATH_HFC_SNAPSHOTS, M, "alice",
	  "tiny-model", "", true, "" },
	{ "/.hf-cache/models--alice--tiny-model/snapshots/1c515a8adf05274858be17b907b51dd793e15785", 0, FS_PATH_REVISION, M, "alice",
	  "tiny-model", "1c515a8adf05274858be17b907b51dd793e15785", true, "" },
	{ "/.hf-cache/models--alice--tiny-model/snapshots/1c515a8adf05274858be17b907b51dd793e15785/docs/read me.md", 0, FS_PATH_ENTRY, M,
	  "alice", "tiny-model", "1c515a8adf05274858be17b907b51dd793e15785", true, "docs/read me.md" },
	{ "/.hf-cache/models--alice--tiny-model/.no_exist", 0, FS_PATH_HFC_NOEXIST, M, "alice",
	  "tiny-model", "", true, "" },
	{ "/.hf-cache/models--alice--tiny-model/.no_exist/1c515a8adf05274858be17b907b51dd793e15785", 0, FS_PATH_HFC_NOEXIST, M, "alice",
	  "tiny-model", "1c515a8adf05274858be17b907b51dd793e15785", true, "" },
	{ "/.hf-cache/models--alice--tiny-model/.no_exist/1c515a8adf05274858be17b907b51dd793e15785/a/b.json", 0, FS_PATH_HFC_NOEXIST, M,
	  "alice", "tiny-model", "1c515a8adf05274858be17b907b51dd793e15785", true, "a/b.json" },
	{ "/.hf-cache/models--alice--tiny-model/trees", 0, FS_PATH_HFC_TREES, M, "alice", "tiny-model",
	  "", true, "" },
	{ "/.hf-cache/models--alice--tiny-model/trees/1c515a8adf05274858be17b907b51dd793e15785.json", 0,
	  FS_PATH_HFC_TREES, M, "alice", "tiny-model", "1c515a8adf05274858be17b907b51dd793e15785", true,
	  "" },
	{ .in = "/.hf-cache/models--alice--tiny-model/trees/1c515a8adf05274858be17b907b51dd793e15785",
	  .rc = -ENOENT },
	{ .in = "/.hf-cache/models--alice--tiny-model/trees/1c515a8.json", .rc = -ENOENT },
	{ .in = "/.hf-cache/models--alice--tiny-model/trees/x/y", .rc = -ENOENT },
	{ .in = "/.hf-cache/model--alice--tiny-model", .rc = -ENOENT },
	{ .in = "/.hf-cache/kernels--alice--tiny-model", .rc = -ENOENT },
	{ .in = "/.hf-cache/models--gpt2", .rc = -ENOENT },
	{ .in = "/.hf-cache/models--alice--", .rc = -ENOENT },
	{ .in = "/.hf-cache/models----tiny", .rc = -ENOENT },
	{ .in = "/.hf-cache/models--alice--tiny--model", .rc = -ENOENT },
	{ .in = "/.hf-cache/models--alice--tiny-model/blobs", .rc = -ENOENT },
	{ .in = "/.hf-cache/models--alice--tiny-model/.locks", .rc = -ENOENT },
	{ .in = "/.hf-cache/models--alice--tiny-model/trees.json", .rc = -ENOENT },
	{ .in = "/.hf-cache/models--alice--tiny-model/snapshots/main", .rc = -ENOENT },
	{ .in = "/.hf-cache/models--alice--tiny-model/snapshots/1c515a8", .rc = -ENOENT },
	{ .in = "/.hf-cache/models--alice--tiny-model/snapshots/1C515A8ADF05274858BE17B907B51DD793E15785",
	  .rc = -ENOENT },
	{ .in = "/.hf-cache/models--alice--tiny-model/snapshots/1c515a8adf05274858be17b907b51dd793e15785x", .rc = -ENOENT },
	{ .in = "/.hf-cache/models--alice--tiny-model/snapshots/1c515a8adf05274858be17b907b51dd793e15785/../x", .rc = -ENOENT },
	{ .in = "/.hf-cache/models--alice--tiny-model/refs/1c515a8adf05274858be17b907b51dd793e15785", .rc = -ENOENT },
	{ .in = "/.hf-cache/models--alice--tiny-model/refs/a..b", .rc = -ENOENT },
	{ .in = "/.hf-cache/models--alice--tiny-model/.no_exist/main", .rc = -ENOENT },
	/* rejected names: nothing can exist there */
	{ .in = "/.Trash", .rc = -ENOENT },
	{ .in = "/.hidden/x", .rc = -ENOENT },
	{ .in = "/-dash", .rc = -ENOENT },
	{ .in = "/caf\xc3\xa9", .rc = -ENOENT },
	{ .in = "/alice/.git", .rc = -ENOENT },
	{ .in = "/alice/repo.git", .rc = -ENOENT },
	{ .in = "/alice/tiny-model/main/../secret", .rc = -ENOENT },
	{ .in = "/alice/tiny-model/main/./x", .rc = -ENOENT },
	{ .in = "/alice/tiny-model/main/.git/config", .rc = -ENOENT },
	{ .in = "/alice/tiny-model/main/a//b", .rc = -ENOENT },
	{ .in = "/alice/tiny-model/..", .rc = -ENOENT },
	{ .in = "/alice/tiny-model/a..b", .rc = -ENOENT },
	{ .in = "/alice//tiny-model", .rc = -ENOENT },
	{ .in = "/datasets/.x", .rc = -ENOENT },
	{ .in = "/me/anything", .rc = -ENOTDIR },
};

static void check_case(const struct path_case *c)
{
	struct fs_path p;
	int rc = fs_path_parse(c->in, &p);
	bool ok;

	if (c->rc != 0) {
		tap_ok(rc == c->rc, "'%s' is refused with %d (got %d)", c->in, c->rc, rc);
		return;
	}
	ok = rc == 0 && p.kind == c->kind && p.type == c->type && !strcmp(p.ns, c->ns) &&
	     !strcmp(p.repo, c->repo) && !strcmp(p.rev, c->rev) && p.pinned == c->pinned &&
	     !strcmp(p.path, c->path);
	if (!tap_ok(ok, "'%s' parses", c->in))
		tap_diag("got rc=%d kind=%d type=%d ns='%s' repo='%s' rev='%s' pinned=%d path='%s'", rc,
			 p.kind, p.type, p.ns, p.repo, p.rev, p.pinned, p.path);
}

static void test_lengths(void)
{
	char buf[8192];
	struct fs_path p;
	int n;

	/* a namespace one byte over the limit */
	buf[0] = '/';
	memset(buf + 1, 'n', HUB_NAME_MAX + 1);
	buf[HUB_NAME_MAX + 2] = '\0';
	tap_ok(fs_path_parse(buf, &p) == -ENAMETOOLONG, "namespace of %d bytes: ENAMETOOLONG",
	       HUB_NAME_MAX + 1);
	buf[HUB_NAME_MAX + 1] = '\0';
	tap_ok(fs_path_parse(buf, &p) == 0 && p.kind == FS_PATH_NAMESPACE, "namespace of %d bytes",
	       HUB_NAME_MAX);

	/* a file name component over NAME_MAX */
	n = snprintf(buf, sizeof(buf), "/alice/tiny-model/main/");
	memset(buf + n, 'f', HUB_PATH_COMPONENT_MAX + 1);
	buf[n + HUB_PATH_COMPONENT_MAX + 1] = '\0';
	tap_ok(fs_path_parse(buf, &p) == -ENAMETOOLONG, "file name of %d bytes: ENAMETOOLONG",
	       HUB_PATH_COMPONENT_MAX + 1);

	/* a path far over the limit */
	n = snprintf(buf, sizeof(buf), "/alice/tiny-model/main");
	while (n < (int)sizeof(buf) - 3) {
		buf[n++] = '/';
		buf[n++] = 'd';
	}
	buf[n] = '\0';
	tap_ok(fs_path_parse(buf, &p) == -ENAMETOOLONG, "path of %d bytes: ENAMETOOLONG", n);
}

int main(void)
{
	if (http_global_init() < 0)
		return 99;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		check_case(&cases[i]);
	test_lengths();
	http_global_release();
	return tap_done();
}
