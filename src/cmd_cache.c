/*
 * hubfs cache stats|prune|clear: the blob cache from the command line.
 * stats and prune work while mounts use the cache; clear is refused then.
 */
#include "config.h"

#include "cmd.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache.h"
#include "log.h"
#include "options.h"

static const char cache_usage[] =
	"usage: hubfs cache stats|prune|clear [--cache-dir DIR] [--cache-size SIZE]\n"
	"\n"
	"  stats    blobs, bytes, chunks and the hit ratio of the cache\n"
	"  prune    evict least recently used blobs down to --cache-size (default 10G)\n"
	"  clear    empty the cache (refused while a mount uses it)\n";

static void cache_log(int level, const char *fmt, va_list ap)
{
	log_vmsg(level, fmt, ap);
}

static void cache_print_bytes(const char *label, uint64_t v)
{
	static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB" };
	double d = (double)v;
	int u = 0;

	while (d >= 1024 && u < 4) {
		d /= 1024;
		u++;
	}
	printf("%-10s %.1f %s (%llu bytes)\n", label, d, units[u], (unsigned long long)v);
}

int cmd_cache(int argc, char *argv[])
{
	const char *action = NULL, *dir_arg = NULL, *size_arg = NULL;
	struct cache_config cc = { 0 };
	struct cache_stats st;
	struct cache *c;
	uint64_t limit = 10ULL << 30;
	char *dir;
	int rc, status = 1;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			fputs(cache_usage, stdout);
			return 0;
		} else if (!strcmp(argv[i], "--cache-dir") && i + 1 < argc) {
			dir_arg = argv[++i];
		} else if (!strncmp(argv[i], "--cache-dir=", 12)) {
			dir_arg = argv[i] + 12;
		} else if (!strcmp(argv[i], "--cache-size") && i + 1 < argc) {
			size_arg = argv[++i];
		} else if (!strncmp(argv[i], "--cache-size=", 13)) {
			size_arg = argv[i] + 13;
		} else if (!action && argv[i][0] != '-') {
			action = argv[i];
		} else {
			fputs(cache_usage, stderr);
			return 2;
		}
	}
	if (!action || (strcmp(action, "stats") && strcmp(action, "prune") && strcmp(action, "clear"))) {
		fputs(cache_usage, stderr);
		return 2;
	}
	if (size_arg && (options_parse_size(size_arg, &limit) || limit == 0)) {
		log_msg(LOG_ERR, "--cache-size '%s' is not a size (examples: 500M, 10G)", size_arg);
		return 2;
	}
	dir = options_cache_dir(dir_arg);
	if (!dir) {
		log_msg(LOG_ERR, "no cache directory: set --cache-dir or HOME");
		return 1;
	}
	if (!strcmp(action, "clear")) {
		rc = cache_clear(dir, cache_log);
		if (rc == -EBUSY)
			log_msg(LOG_ERR, "the cache '%s' is in use by a mount: unmount it first", dir);
		else if (rc)
			log_msg(LOG_ERR, "cannot clear the cache '%s': %s", dir, strerror(-rc));
		else
			printf("cleared %s\n", dir);
		free(dir);
		return rc ? 1 : 0;
	}
	cc.dir = dir;
	cc.limit = strcmp(action, "prune") ? 0 : limit;
	cc.lock = CACHE_LOCK_NONE;
	cc.log = cache_log;
	c = cache_open(&cc, &rc);
	if (!c) {
		log_msg(LOG_ERR, "cannot open the cache '%s': %s", dir, strerror(-rc));
		goto out;
	}
	if (!strcmp(action, "prune")) {
		rc = cache_prune(c);
		if (rc) {
			log_msg(LOG_ERR, "cannot prune the cache '%s': %s", dir, strerror(-rc));
			goto out_close;
		}
	}
	rc = cache_stats(c, &st);
	if (rc) {
		log_msg(LOG_ERR, "cannot read the cache '%s': %s", dir, strerror(-rc));
		goto out_close;
	}
	printf("%-10s %s\n", "cache", dir);
	printf("%-10s %llu (%llu complete)\n", "blobs", (unsigned long long)st.blobs,
	       (unsigned long long)st.complete);
	cache_print_bytes("bytes", st.bytes);
	if (cc.limit)
		cache_print_bytes("limit", cc.limit);
	printf("%-10s %llu\n", "chunks", (unsigned long long)st.chunks);
	/* Of the bytes read, the share the cache held (the rest was fetched). */
	printf("%-10s %.3f of bytes read (%llu from the cache, %llu fetched)\n", "hit ratio",
	       cache_stats_hit_ratio(&st), (unsigned long long)st.hit_bytes,
	       (unsigned long long)st.miss_bytes);
	status = 0;
out_close:
	cache_close(c);
out:
	free(dir);
	return status;
}
