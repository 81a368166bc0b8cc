/*
 * A test driver of the commit calls of src/hub_api.c (not installed): makes
 * one commit on a Hub from the command line, the way the mount will.
 *
 *   hub_commit_tool ENDPOINT TOKEN TYPE/NS/NAME BRANCH PARENT|- SUMMARY OP...
 *   OP: add:PATH=FILE   del:PATH   delfolder:PATH   mv:OLD=NEW=SHA256=SIZE (an LFS file)
 *   hub_commit_tool repo-create|repo-private ENDPOINT TOKEN TYPE/NS/NAME private|public
 *   hub_commit_tool validate-yaml ENDPOINT TOKEN TYPE FILE
 *
 * Prints "commit ID" (or "ok") and exits 0, or "error ERRNO-NAME [reason]"
 * and exits 1.  Prints "lfs PATH" for every file preupload sent to LFS, and
 * with HUB_COMMIT_TOOL_PROGRESS=1 in the environment, after its upload,
 * "progress PATH CALLS LAST SIZE monotonic|backwards" (what hub_op.progress
 * saw).
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cache_hash.h"
#include "http.h"
#include "hub_api.h"

/* What hub_op.progress of one upload saw. */
struct tool_progress {
	unsigned long calls;
	uint64_t last;
	bool backwards;
};

static void tool_progress_cb(void *arg, uint64_t sent)
{
	struct tool_progress *p = arg;

	if (p->calls && sent < p->last)
		p->backwards = true;
	p->calls++;
	p->last = sent;
}

static int file_sha256(int fd, uint64_t size, char out[65])
{
	static char buf[1 << 16];
	int err = 0;
	struct cache_hasher *h = cache_hasher_new(CACHE_ID_SHA256, size, &err);
	ssize_t n;

	if (!h)
		return err;
	while ((n = read(fd, buf, sizeof(buf))) > 0)
		if ((err = cache_hasher_update(h, buf, (size_t)n)))
			break;
	if (!err)
		err = cache_hasher_final(h, out);
	cache_hasher_free(h);
	return err;
}

static enum hub_repo_type tool_type(const char *word)
{
	return !strcmp(word, "dataset") ? HUB_REPO_DATASET
	       : !strcmp(word, "space") ? HUB_REPO_SPACE : HUB_REPO_MODEL;
}

/* The repo and settings calls: one call, one answer. */
static int tool_repo(int argc, char *argv[])
{
	struct http_client_config hc = { .endpoint = argv[2], .token = argv[3], .max_retries = -1 };
	struct http_client *http;
	char *reason = NULL, *content = NULL;
	int rc;

	if (argc != 6 || http_global_init())
		return 2;
	http = http_client_new(&hc, &rc);
	if (!http)
		return 2;
	if (!strcmp(argv[1], "validate-yaml")) {
		FILE *f = fopen(argv[5], "r");
		size_t n;

		content = calloc(1, 1 << 20);
		if (!f || !content)
			return 2;
		n = fread(content, 1, (1 << 20) - 1, f);
		content[n] = '\0';
		fclose(f);
		rc = hub_validate_yaml(http, tool_type(argv[4]), content, &reason);
	} else {
		struct hub_repo repo;
		char *spec = strdup(argv[4]);
		char *type = strtok(spec, "/");

		repo.type = tool_type(type ? type : "");
		repo.ns = strtok(NULL, "/");
		repo.name = strtok(NULL, "/");
		if (!repo.ns || !repo.name)
			return 2;
		rc = !strcmp(argv[1], "repo-create")
			     ? hub_create_repo(http, &repo, !strcmp(argv[5], "private"))
			     : hub_set_private(http, &repo, !strcmp(argv[5], "private"));
		free(spec);
	}
	if (rc)
		printf("error %s %s\n", strerrorname_np(-rc) ? strerrorname_np(-rc) : "?",
		       reason ? reason : "");
	else
		printf("ok\n");
	free(reason);
	free(content);
	http_client_free(http);
	http_global_release();
	return rc ? 1 : 0;
}

int main(int argc, char *argv[])
{
	struct http_client_config hc = { 0 };
	struct http_client *http;
	struct hub_repo repo = { HUB_REPO_MODEL, NULL, NULL };
	struct hub_op ops[64];
	struct tool_progress progress[64];
	bool show_progress = getenv("HUB_COMMIT_TOOL_PROGRESS") != NULL;
	char *spec, *type, *commit_parent;
	char commit[HUB_COMMIT_LEN + 1];
	int n = 0, rc;

	if (argc > 1 && (!strcmp(argv[1], "repo-create") || !strcmp(argv[1], "repo-private") ||
			 !strcmp(argv[1], "validate-yaml")))
		return tool_repo(argc, argv);
	if (argc < 8 || argc - 7 > 64) {
		fprintf(stderr, "usage: hub_commit_tool ENDPOINT TOKEN TYPE/NS/NAME BRANCH PARENT|- SUMMARY OP...\n");
		return 2;
	}
	spec = strdup(argv[3]);
	type = strtok(spec, "/");
	repo.ns = strtok(NULL, "/");
	repo.name = strtok(NULL, "/");
	if (!type || !repo.ns || !repo.name)
		return 2;
	repo.type = !strcmp(type, "dataset") ? HUB_REPO_DATASET
		    : !strcmp(type, "space") ? HUB_REPO_SPACE : HUB_REPO_MODEL;
	commit_parent = strcmp(argv[5], "-") ? argv[5] : NULL;
	memset(ops, 0, sizeof(ops));
	memset(progress, 0, sizeof(progress));
	for (int i = 7; i < argc; i++, n++) {
		struct hub_op *op = &ops[n];
		char *arg = argv[i], *eq;
		struct stat st;

		if (!strncmp(arg, "add:", 4)) {
			op->kind = HUB_OP_ADD;
			op->path = arg + 4;
			eq = strchr(arg, '=');
			if (!eq)
				return 2;
			*eq = '\0';
			op->fd = open(eq + 1, O_RDONLY);
			if (op->fd < 0 || fstat(op->fd, &st) < 0)
				return 2;
			op->size = (uint64_t)st.st_size;
			if (file_sha256(op->fd, op->size, op->sha256))
				return 2;
		} else if (!strncmp(arg, "del:", 4)) {
			op->kind = HUB_OP_DELETE_FILE;
			op->path = arg + 4;
		} else if (!strncmp(arg, "delfolder:", 10)) {
			op->kind = HUB_OP_DELETE_FOLDER;
			op->path = arg + 10;
		} else if (!strncmp(arg, "mv:", 3)) {
			char *f[4] = { arg + 3, NULL, NULL, NULL };

			for (int k = 1; k < 4; k++) {
				f[k] = strchr(f[k - 1], '=');
				if (!f[k])
					return 2;
				*f[k]++ = '\0';
			}
			op->kind = HUB_OP_ADD;
			op->old_path = f[0];
			op->path = f[1];
			snprintf(op->sha256, sizeof(op->sha256), "%s", f[2]);
			op->size = strtoull(f[3], NULL, 10);
			op->lfs = true;
		} else {
			return 2;
		}
	}
	if (http_global_init())
		return 1;
	hc.endpoint = argv[1];
	hc.token = argv[2];
	hc.max_retries = -1;
	hc.backoff_unit = 0.1;
	http = http_client_new(&hc, &rc);
	if (!http)
		return 1;
	rc = hub_preupload(http, &repo, argv[4], ops, (size_t)n);
	for (int i = 0; !rc && i < n; i++) {
		if (ops[i].kind != HUB_OP_ADD || !ops[i].lfs || ops[i].old_path)
			continue;
		printf("lfs %s\n", ops[i].path);
		if (show_progress) {
			ops[i].progress = tool_progress_cb;
			ops[i].progress_arg = &progress[i];
		}
		rc = hub_lfs_upload(http, &repo, argv[4], &ops[i]);
		if (show_progress)
			printf("progress %s %lu %llu %llu %s\n", ops[i].path, progress[i].calls,
			       (unsigned long long)progress[i].last, (unsigned long long)ops[i].size,
			       progress[i].backwards ? "backwards" : "monotonic");
	}
	if (!rc)
		rc = hub_commit(http, &repo, argv[4], argv[6], commit_parent, ops, (size_t)n, commit, NULL, 0);
	if (rc)
		printf("error %s\n", strerrorname_np(-rc) ? strerrorname_np(-rc) : "?");
	else
		printf("commit %s\n", commit);
	for (int i = 0; i < n; i++)
		if (ops[i].kind == HUB_OP_ADD && !ops[i].old_path)
			close(ops[i].fd);
	http_client_free(http);
	http_global_release();
	free(spec);
	return rc ? 1 : 0;
}
