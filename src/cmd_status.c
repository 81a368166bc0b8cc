/*
 * hubfs status: what is staged and not yet on the Hub, per repo and branch,
 * read from the write journal of a cache: how many changes, in which
 * states, how many of their bytes the current uploads have sent, and the
 * last error.  Works while mounts use the cache (it takes no lock) and after
 * a crash (it shows what the next mount will resume).  Then the files of
 * DIR/lost+found, if any: staged data whose journal row was lost, which the
 * mount moved there instead of committing or deleting it.
 *
 * The cache is the default one, --cache-dir's, or the one a mount uses: the
 * daemon tells it through the xattr user.hubfs.cache_dir of the mount's
 * root (and its pid through user.hubfs.pid).  hubfs umount reads the same
 * through the helpers below (cmd.h).
 */
#include "config.h"

#include "cmd.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include "cache.h"
#include "cache_stage.h"
#include "log.h"
#include "options.h"

static const char status_usage[] =
	"usage: hubfs status [MOUNTPOINT | --cache-dir DIR]\n"
	"\n"
	"Pending changes per repo and branch: how many, their state (pending,\n"
	"uploading, committing, conflict, failed, refused, local-only), the bytes uploaded of those to\n"
	"upload, and the last error.  The journal read is that of the cache of the\n"
	"mount on MOUNTPOINT, of --cache-dir, or of the default cache of a mount.\n"
	"Then the files in the cache's lost+found, if any: staged data whose journal\n"
	"row was lost, kept there and not committed.\n";

static const char *const status_states[CACHE_STAGE_STATES] = {
	[CACHE_STAGE_PENDING] = "pending",
	[CACHE_STAGE_UPLOADING] = "uploading",
	[CACHE_STAGE_COMMITTING] = "committing",
	[CACHE_STAGE_CONFLICT] = "conflict",
	[CACHE_STAGE_FAILED] = "failed",
	[CACHE_STAGE_REFUSED] = "refused",
	[CACHE_STAGE_LOCAL] = "local-only",
};

/*
 * Shared helpers (cmd.h).
 */

const char *cmd_size_text(uint64_t bytes, char buf[CMD_SIZE_TEXT])
{
	static const char *const units[] = { "KiB", "MiB", "GiB", "TiB", "PiB", "EiB" };
	double v = (double)bytes;
	int u = -1;

	if (bytes < 1024) {
		snprintf(buf, CMD_SIZE_TEXT, "%llu B", (unsigned long long)bytes);
		return buf;
	}
	/* 1023.96 KiB would print as "1024.0 KiB": the next unit then */
	while (u < 5 && (u < 0 || v >= 1023.95)) {
		v /= 1024;
		u++;
	}
	snprintf(buf, CMD_SIZE_TEXT, "%.1f %s", v, units[u]);
	return buf;
}

const char *cmd_repo_text(const char *key, char *buf, size_t size)
{
	static const struct {
		const char *type, *prefix;
	} types[] = { { "model/", "" }, { "dataset/", "datasets/" }, { "space/", "spaces/" } };

	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
		size_t len = strlen(types[i].type);

		if (!strncmp(key, types[i].type, len)) {
			snprintf(buf, size, "%s%s", types[i].prefix, key + len);
			return buf;
		}
	}
	snprintf(buf, size, "%s", key);
	return buf;
}

/* Decodes the octal escapes (\040 for a space ...) of a mountinfo field in
 * place. */
static void status_unescape(char *s)
{
	char *w = s;

	for (char *r = s; *r; r++) {
		if (r[0] == '\\' && r[1] >= '0' && r[1] <= '3' && r[2] >= '0' && r[2] <= '7' &&
		    r[3] >= '0' && r[3] <= '7') {
			*w++ = (char)((r[1] - '0') * 64 + (r[2] - '0') * 8 + (r[3] - '0'));
			r += 3;
		} else {
			*w++ = *r;
		}
	}
	*w = '\0';
}

bool cmd_mountinfo_next(FILE *f, char **line, size_t *cap, struct cmd_mountinfo *m)
{
	while (getline(line, cap, f) > 0) {
		char *save = NULL, *sep;

		/* id parent major:minor root MOUNTPOINT options ... - FSTYPE source superopts */
		sep = strstr(*line, " - ");
		if (!sep)
			continue;
		*sep = '\0';
		m->point = strtok_r(*line, " ", &save);
		for (int i = 0; m->point && i < 4; i++)
			m->point = strtok_r(NULL, " ", &save);
		if (!m->point)
			continue;
		status_unescape(m->point);
		save = NULL;
		m->fstype = strtok_r(sep + 3, " \n", &save);
		if (!m->fstype)
			continue;
		m->super_opts = NULL;
		if (strtok_r(NULL, " \n", &save)) /* the source */
			m->super_opts = strtok_r(NULL, " \n", &save);
		return true;
	}
	return false;
}

/* Whether @path is the mountpoint of a hubfs mount in /proc/self/mountinfo
 * (the newest mount on it decides). */
static bool status_is_hubfs_mount(const char *path)
{
	char *real = realpath(path, NULL), *line = NULL;
	FILE *f = fopen("/proc/self/mountinfo", "re");
	struct cmd_mountinfo m;
	bool hubfs = false;
	size_t cap = 0;

	if (!real || !f)
		goto out;
	while (cmd_mountinfo_next(f, &line, &cap, &m))
		if (!strcmp(m.point, real))
			hubfs = !strcmp(m.fstype, CMD_FSTYPE);
out:
	free(line);
	if (f)
		fclose(f);
	free(real);
	return hubfs;
}

ssize_t cmd_xattr(const char *path, const char *name, char *buf, size_t size)
{
	ssize_t len = getxattr(path, name, buf, size - 1);

	if (len < 0)
		return errno == ERANGE || errno == E2BIG ? -EIO : -errno;
	buf[len] = '\0';
	return strlen(buf) == (size_t)len ? len : -EIO;
}

int cmd_mount_info_read(const char *mountpoint, struct cmd_mount_info *info)
{
	char buf[PATH_MAX + 1], *end;
	ssize_t len;
	long pid;

	memset(info, 0, sizeof(*info));
	len = cmd_xattr(mountpoint, "user.hubfs.cache_dir", buf, sizeof(buf));
	if (len == -ENODATA || len == -ENOTSUP) {
		/* Not ours, or a hubfs that does not tell: mountinfo knows. */
		return status_is_hubfs_mount(mountpoint) ? -EPROTO : -ENODATA;
	}
	if (len < 0)
		return (int)len;
	if (buf[0] != '/')
		return -EIO;
	info->cache_dir = strdup(buf);
	if (!info->cache_dir)
		return -ENOMEM;
	len = cmd_xattr(mountpoint, "user.hubfs.pid", buf, sizeof(buf));
	if (len == -ENODATA)
		return 0;
	if (len < 0) {
		cmd_mount_info_release(info);
		return (int)len;
	}
	errno = 0;
	pid = strtol(buf, &end, 10);
	if (errno || end == buf || *end || pid <= 0) {
		cmd_mount_info_release(info);
		return -EIO;
	}
	info->pid = pid;
	return 0;
}

void cmd_mount_info_release(struct cmd_mount_info *info)
{
	if (!info)
		return;
	free(info->cache_dir);
	memset(info, 0, sizeof(*info));
}

static void status_log(int level, const char *fmt, va_list ap)
{
	log_vmsg(level, fmt, ap);
}

struct cache *cmd_cache_open_existing(const char *dir, int *err)
{
	struct cache_config cc = { .dir = dir, .lock = CACHE_LOCK_NONE, .log = status_log };
	char index[PATH_MAX + 16];
	struct cache *c;
	struct stat st;

	/* The path comes from a filesystem's answer: open a cache that is
	 * there, never make one. */
	if (snprintf(index, sizeof(index), "%s/hubfs.db", dir) >= (int)sizeof(index)) {
		*err = -ENAMETOOLONG;
	} else if (lstat(index, &st)) {
		*err = -errno;
	} else if (!S_ISREG(st.st_mode)) {
		*err = -ENOENT;
	} else {
		c = cache_open(&cc, err);
		if (c)
			return c;
	}
	log_msg(LOG_ERR, "cannot open the cache '%s': %s", dir,
		*err == -EPROTO ? "written by a newer hubfs" : strerror(-*err));
	return NULL;
}

/*
 * hubfs status
 */

/* Says why @mountpoint gave no cache (@rc from cmd_mount_info_read()). */
static void status_not_mount(const char *mountpoint, int rc)
{
	switch (rc) {
	case -ENODATA:
		log_msg(LOG_ERR, "'%s' is not a hubfs mount (no xattr user.hubfs.cache_dir)",
			mountpoint);
		break;
	case -EPROTO:
		log_msg(LOG_ERR,
			"'%s' is mounted by an older hubfs that does not tell its cache: "
			"use --cache-dir",
			mountpoint);
		break;
	case -ENOTCONN:
		log_msg(LOG_ERR,
			"'%s' is a mount whose daemon is gone: unmount it with 'hubfs umount %s'; "
			"its changes stay in its cache ('hubfs status --cache-dir DIR')",
			mountpoint, mountpoint);
		break;
	default:
		log_msg(LOG_ERR, "'%s': %s", mountpoint, strerror(-rc));
		break;
	}
}

/* Prints the pending changes of @b. */
static void status_print_branch(const struct cache_stage_branch *b)
{
	char repo[CACHE_STAGE_REPO_MAX + 16], sent[CMD_SIZE_TEXT], total[CMD_SIZE_TEXT];
	const char *sep = "";

	printf("%s@%s: %llu change%s (", cmd_repo_text(b->repo, repo, sizeof(repo)), b->branch,
	       (unsigned long long)b->changes, b->changes == 1 ? "" : "s");
	for (int s = 0; s < CACHE_STAGE_STATES; s++) {
		if (!b->by_state[s])
			continue;
		printf("%s%llu %s", sep, (unsigned long long)b->by_state[s], status_states[s]);
		sep = ", ";
	}
	if (b->bytes)
		printf("), %s of %s uploaded\n", cmd_size_text(b->sent, sent),
		       cmd_size_text(b->bytes, total));
	else
		printf("), nothing to upload\n");
	if (b->error && *b->error)
		printf("    last error: %s\n", b->error);
}

/* The files of lost+found: counted, then printed. */
struct status_lost {
	bool print;
	uint64_t files, bytes;
};

static int status_lost_file(void *arg, const char *name, uint64_t size, int64_t mtime)
{
	struct status_lost *l = arg;
	char when[32] = "?", text[CMD_SIZE_TEXT];
	time_t t = (time_t)(mtime / 1000);
	struct tm tm;

	if (!l->print) {
		l->files++;
		l->bytes += size;
		return 0;
	}
	if (localtime_r(&t, &tm))
		strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", &tm);
	printf("    %s (%s, last written %s)\n", name, cmd_size_text(size, text), when);
	return 0;
}

/* Prints the files of the lost+found of @c (cache directory @dir), if any.
 * Returns 0 or -errno (logged). */
static int status_print_lost(struct cache *c, const char *dir)
{
	struct status_lost l = { 0 };
	char total[CMD_SIZE_TEXT];
	int rc = cache_stage_lost(c, status_lost_file, &l);

	if (!rc && l.files) {
		printf("lost+found: %llu file%s, %s, in %s/lost+found (staged data whose journal "
		       "row was lost: copy what you need, then delete it)\n",
		       (unsigned long long)l.files, l.files == 1 ? "" : "s",
		       cmd_size_text(l.bytes, total), dir);
		l.print = true;
		rc = cache_stage_lost(c, status_lost_file, &l);
	}
	if (rc)
		log_msg(LOG_ERR, "cannot list '%s/lost+found': %s", dir, strerror(-rc));
	return rc;
}

int cmd_status(int argc, char *argv[])
{
	struct cache_config cc = { .lock = CACHE_LOCK_NONE, .log = status_log };
	struct cmd_mount_info info = { 0 };
	struct cache_stage_branch *b = NULL;
	const char *dir_arg = NULL, *mountpoint = NULL;
	struct cache *c;
	size_t n = 0;
	char *dir = NULL;
	int rc;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			fputs(status_usage, stdout);
			return 0;
		} else if (!strcmp(argv[i], "--cache-dir") && i + 1 < argc) {
			dir_arg = argv[++i];
		} else if (!strncmp(argv[i], "--cache-dir=", 12)) {
			dir_arg = argv[i] + 12;
		} else if (argv[i][0] == '-' || mountpoint) {
			fputs(status_usage, stderr);
			return 2;
		} else {
			mountpoint = argv[i];
		}
	}
	if (mountpoint && dir_arg) {
		log_msg(LOG_ERR, "give a MOUNTPOINT or --cache-dir, not both");
		return 2;
	}
	if (mountpoint) {
		rc = cmd_mount_info_read(mountpoint, &info);
		if (rc) {
			status_not_mount(mountpoint, rc);
			return 1;
		}
		if (info.pid)
			printf("%s: hubfs mount (pid %ld), cache %s\n", mountpoint, info.pid,
			       info.cache_dir);
		else
			printf("%s: hubfs mount, cache %s\n", mountpoint, info.cache_dir);
		dir = info.cache_dir;
		info.cache_dir = NULL;
		c = cmd_cache_open_existing(dir, &rc);
	} else {
		dir = options_cache_dir(dir_arg);
		if (!dir) {
			log_msg(LOG_ERR, "no cache directory: set --cache-dir or HOME");
			return 1;
		}
		cc.dir = dir;
		c = cache_open(&cc, &rc);
		if (!c)
			log_msg(LOG_ERR, "cannot open the cache '%s': %s", dir,
				rc == -EPROTO ? "written by a newer hubfs" : strerror(-rc));
	}
	if (!c) {
		free(dir);
		return 1;
	}
	rc = cache_stage_branches(c, &b, &n);
	if (rc)
		log_msg(LOG_ERR, "cannot read the write journal of '%s': %s", dir, strerror(-rc));
	else if (n == 0)
		printf("nothing pending: every change is on the Hub\n");
	for (size_t i = 0; !rc && i < n; i++)
		status_print_branch(&b[i]);
	cache_stage_branches_free(b, n);
	if (status_print_lost(c, dir))
		rc = 1;
	cache_close(c);
	free(dir);
	return rc ? 1 : 0;
}
