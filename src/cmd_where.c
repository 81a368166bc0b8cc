/*
 * Where a path of a hubfs mount is.  See cmd_where.h.
 *
 * Every fact comes from the daemon of the mount (xattrs user.hub.repo,
 * user.hub.revision, user.hub.path, user.hub.commit of the path, and
 * user.hubfs.endpoint of the mount's root), checked like any answer from
 * outside: names with the Hub's rules, lengths bounded.  Which mount holds
 * the path, and whose it is, comes from the kernel (/proc/self/mountinfo):
 * the longest mount point above the path, of type fuse.hubfs, and its
 * user_id= option.
 */
#include "config.h"

#include "cmd_where.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "cmd.h"
#include "log.h"

/* Whether mount point @mnt is @real or above it. */
static bool where_above(const char *mnt, const char *real)
{
	size_t len = strlen(mnt);

	if (!strcmp(mnt, "/"))
		return true;
	return !strncmp(real, mnt, len) && (real[len] == '/' || real[len] == '\0');
}

/* The mount that holds @real (the newest of the longest mount points above
 * it) when it is a hubfs mount: its mount point in *@mnt (caller frees) and
 * whether its user_id= is ours.  Returns 0 or -ENODATA. */
static int where_mount(const char *real, char **mnt, bool *own)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	char *line = NULL, *best = NULL;
	struct cmd_mountinfo m;
	size_t cap = 0, best_len = 0;
	bool hubfs = false, mine = false;

	*mnt = NULL;
	if (!f)
		return -ENODATA;
	while (cmd_mountinfo_next(f, &line, &cap, &m)) {
		size_t len = strlen(m.point);
		const char *opts = m.super_opts, *uid;

		if (!where_above(m.point, real) || len < best_len)
			continue;
		free(best);
		best = strdup(m.point);
		best_len = len;
		hubfs = !strcmp(m.fstype, CMD_FSTYPE);
		uid = opts ? strstr(opts, "user_id=") : NULL;
		mine = uid && (uid == opts || uid[-1] == ',') &&
		       strtol(uid + 8, NULL, 10) == (long)getuid();
	}
	free(line);
	fclose(f);
	if (!best || !hubfs) {
		free(best);
		return -ENODATA;
	}
	*mnt = best;
	*own = mine;
	return 0;
}

/* Copies @src into @dst of @size bytes; -EIO when it does not fit. */
static int where_copy(char *dst, size_t size, const char *src)
{
	size_t len = strlen(src);

	if (len >= size)
		return -EIO;
	memcpy(dst, src, len + 1);
	return 0;
}

/* Parses user.hub.repo ("NS/NAME", "datasets/NS/NAME", "spaces/NS/NAME"). */
static int where_repo(char *v, struct cmd_where *w)
{
	char *slash;

	w->type = HUB_REPO_MODEL;
	if (!strncmp(v, "datasets/", 9)) {
		w->type = HUB_REPO_DATASET;
		v += 9;
	} else if (!strncmp(v, "spaces/", 7)) {
		w->type = HUB_REPO_SPACE;
		v += 7;
	}
	slash = strchr(v, '/');
	if (!slash)
		return -EIO;
	*slash = '\0';
	if (!hub_name_valid(v) || !hub_name_valid(slash + 1))
		return -EIO;
	if (where_copy(w->ns, sizeof(w->ns), v))
		return -EIO;
	return where_copy(w->name, sizeof(w->name), slash + 1);
}

int cmd_where_read(const char *path, struct cmd_where *w)
{
	char buf[HUB_PATH_MAX + 2];
	ssize_t len;
	int rc;

	memset(w, 0, sizeof(*w));
	w->real = realpath(path, NULL);
	if (!w->real) {
		rc = -errno;
		log_msg(LOG_ERR, "'%s': %s", path, strerror(errno));
		return rc;
	}
	rc = where_mount(w->real, &w->mountpoint, &w->own);
	if (rc) {
		log_msg(LOG_ERR, "'%s' is not in a hubfs mount", path);
		goto fail;
	}
	len = cmd_xattr(w->real, "user.hub.repo", buf, sizeof(buf));
	if (len == -ENODATA) {
		log_msg(LOG_ERR,
			"'%s' is not in a repository (a repository's directory, a revision, or a "
			"file or folder in one)",
			path);
		rc = -ENODATA;
		goto fail;
	}
	if (len == -ENOTCONN) {
		log_msg(LOG_ERR, "'%s': the daemon of the mount on '%s' is gone", path,
			w->mountpoint);
		rc = -ENOTCONN;
		goto fail;
	}
	rc = len < 0 ? (int)len : where_repo(buf, w);
	if (!rc) {
		len = cmd_xattr(w->real, "user.hub.revision", buf, sizeof(buf));
		if (len >= 0 && hub_revision_valid(buf))
			rc = where_copy(w->rev, sizeof(w->rev), buf);
		else if (len != -ENODATA)
			rc = len < 0 ? (int)len : -EIO;
	}
	if (!rc && w->rev[0]) {
		len = cmd_xattr(w->real, "user.hub.commit", buf, sizeof(buf));
		if (len >= 0 && hub_commit_id_valid(buf, false))
			where_copy(w->commit, sizeof(w->commit), buf);
		len = cmd_xattr(w->real, "user.hub.path", buf, sizeof(buf));
		if (len >= 0 && hub_repo_path_valid(buf))
			rc = where_copy(w->path, sizeof(w->path), buf);
		else if (len != -ENODATA)
			rc = len < 0 ? (int)len : -EIO;
	}
	if (!rc) {
		len = cmd_xattr(w->mountpoint, "user.hubfs.endpoint", buf, sizeof(buf));
		if (len > 0 && (!strncmp(buf, "https://", 8) || !strncmp(buf, "http://", 7)))
			w->endpoint = strdup(buf);
		else
			rc = len < 0 && len != -ENODATA ? (int)len : -EIO;
		if (len >= 0 && !w->endpoint && rc == 0)
			rc = -ENOMEM;
	}
	if (!rc) {
		len = cmd_xattr(w->mountpoint, "user.hubfs.token_file", buf, sizeof(buf));
		if (len > 0 && buf[0] == '/' && !(w->token_file = strdup(buf)))
			rc = -ENOMEM;
	}
	if (rc) {
		log_msg(LOG_ERR, "'%s': the mount on '%s' does not say where it is: %s", path,
			w->mountpoint, strerror(-rc));
		goto fail;
	}
	return 0;
fail:
	cmd_where_release(w);
	return rc;
}

void cmd_where_repo(const struct cmd_where *w, struct hub_repo *repo)
{
	repo->type = w->type;
	repo->ns = w->ns;
	repo->name = w->name;
}

void cmd_where_release(struct cmd_where *w)
{
	if (!w)
		return;
	free(w->real);
	free(w->token_file);
	free(w->mountpoint);
	free(w->endpoint);
	memset(w, 0, sizeof(*w));
}
