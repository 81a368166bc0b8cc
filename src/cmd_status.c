/*
 * hubfs status: what is staged and not yet on the Hub, per repo and branch,
 * read from the write journal of the cache.  Works while mounts use the
 * cache (it takes no lock) and after a crash (it shows what the next mount
 * will resume).
 */
#include "config.h"

#include "cmd.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache.h"
#include "cache_stage.h"
#include "log.h"
#include "options.h"

static const char status_usage[] =
	"usage: hubfs status [MOUNTPOINT] [--cache-dir DIR]\n"
	"\n"
	"Pending changes per repo and branch: how many, the bytes to upload, their\n"
	"state (pending, uploading, committing, conflict, failed) and the last error.\n"
	"The cache is the one a mount uses by default, or --cache-dir's.\n";

static const char *const status_states[CACHE_STAGE_STATES] = {
	[CACHE_STAGE_PENDING] = "pending",
	[CACHE_STAGE_UPLOADING] = "uploading",
	[CACHE_STAGE_COMMITTING] = "committing",
	[CACHE_STAGE_CONFLICT] = "conflict",
	[CACHE_STAGE_FAILED] = "failed",
};

static void status_log(int level, const char *fmt, va_list ap)
{
	log_vmsg(level, fmt, ap);
}

int cmd_status(int argc, char *argv[])
{
	struct cache_config cc = { .lock = CACHE_LOCK_NONE, .log = status_log };
	struct cache_stage_branch *b = NULL;
	const char *dir_arg = NULL;
	struct cache *c;
	size_t n = 0;
	char *dir;
	int rc;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			fputs(status_usage, stdout);
			return 0;
		} else if (!strcmp(argv[i], "--cache-dir") && i + 1 < argc) {
			dir_arg = argv[++i];
		} else if (!strncmp(argv[i], "--cache-dir=", 12)) {
			dir_arg = argv[i] + 12;
		} else if (argv[i][0] == '-') {
			fputs(status_usage, stderr);
			return 2;
		}
		/* a MOUNTPOINT is accepted: its cache is the default one */
	}
	dir = options_cache_dir(dir_arg);
	if (!dir) {
		log_msg(LOG_ERR, "no cache directory: set --cache-dir or HOME");
		return 1;
	}
	cc.dir = dir;
	c = cache_open(&cc, &rc);
	if (!c) {
		log_msg(LOG_ERR, "cannot open the cache '%s': %s", dir, strerror(-rc));
		free(dir);
		return 1;
	}
	rc = cache_stage_branches(c, &b, &n);
	if (rc) {
		log_msg(LOG_ERR, "cannot read the write journal of '%s': %s", dir, strerror(-rc));
	} else if (n == 0) {
		printf("nothing pending: every change is on the Hub\n");
	}
	for (size_t i = 0; !rc && i < n; i++) {
		printf("%s @ %s: %llu change%s, %.1f MiB to upload;", b[i].repo, b[i].branch,
		       (unsigned long long)b[i].changes, b[i].changes == 1 ? "" : "s",
		       (double)b[i].bytes / (1 << 20));
		for (int s = 0; s < CACHE_STAGE_STATES; s++)
			if (b[i].by_state[s])
				printf(" %s %llu", status_states[s], (unsigned long long)b[i].by_state[s]);
		printf("\n");
		if (b[i].error && *b[i].error)
			printf("    last error: %s\n", b[i].error);
	}
	cache_stage_branches_free(b, n);
	cache_close(c);
	free(dir);
	return rc ? 1 : 0;
}
