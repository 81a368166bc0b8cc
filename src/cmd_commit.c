/*
 * hubfs commit PATH: commits every pending change of PATH's branch now,
 * with a title and description, waits until the commit is on the Hub, and
 * prints its id and URL.
 *
 * The pending changes live in the daemon, so the daemon commits them: the
 * command sets the xattr user.hubfs.commit of the branch's root (the
 * revision directory above PATH) to "TITLE\nDESCRIPTION"; the daemon
 * commits the branch as an fsync of that directory would, with that title,
 * and the setxattr(2) returns once the commit is on the Hub, or with the
 * errno an fsync would give.  The daemon then answers the xattr
 * user.hubfs.commit of the branch root with the commit's id ("" when there
 * was nothing to commit).  On a failure the reason comes from the mount's
 * write journal (the last error of the branch's changes, as hubfs status
 * shows it).
 */
#include "config.h"

#include "cmd.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>

#include "cache.h"
#include "cache_stage.h"
#include "cmd_where.h"
#include "log.h"
#include "stage.h"

static const char commit_usage[] =
    "usage: hubfs commit [-m MESSAGE] [--description TEXT] PATH\n"
    "\n"
    "Commits every pending change of the branch that PATH is in (a branch's\n"
    "directory, or a file or folder in it) now, as one commit, waits until it is\n"
    "on the Hub, and prints its id and URL.  Exit status 0 once it is there (also\n"
    "when nothing was pending: it says so), 1 when it failed (a conflict, no\n"
    "rights, the Hub unreachable: the changes stay staged), 2 for a usage error.\n"
    "\n"
    "  -m, --message MESSAGE  the commit's title (one line, at most 400 bytes);\n"
    "                         default: the titles hubfs gives (see hubfs(1))\n"
    "  --description TEXT     the text below the title\n";

/* The revision directory above @real (where user.hub.path ends), into
 * @root.  Returns 0 or -errno. */
static int commit_branch_root(const char *real, char root[PATH_MAX])
{
	char buf[8], *slash;

	if (strlen(real) >= PATH_MAX)
		return -ENAMETOOLONG;
	memcpy(root, real, strlen(real) + 1);
	for (int depth = 0; depth < HUB_PATH_MAX; depth++) {
		ssize_t len = getxattr(root, "user.hub.path", buf, 0);

		if (len < 0 && errno == ENODATA)
			return 0;
		if (len < 0)
			return -errno;
		slash = strrchr(root, '/');
		if (!slash || slash == root)
			return -ENOENT;
		*slash = '\0';
	}
	return -ELOOP;
}

/* Says why the commit of @w's branch failed with @err: the errno, and the
 * last error of the branch's changes in the mount's journal. */
static void commit_explain(const struct cmd_where *w, int err)
{
	struct cmd_mount_info info;
	struct cache_stage_branch *b = NULL;
	struct hub_repo repo;
	struct cache *c = NULL;
	char key[STAGE_REPO_KEY_MAX];
	size_t n = 0;
	int rc;

	switch (err) {
	case -EACCES:
		log_msg(LOG_ERR,
			"not committed: the mount's token may not write to '%s/%s' "
			"(or this is not the mount's user)",
			w->ns, w->name);
		break;
	case -EROFS:
		log_msg(LOG_ERR,
			"not committed: '%s' is not a branch (a tag, commit or pull "
			"request view is read-only), or the mount is offline",
			w->rev);
		break;
	case -EINVAL:
		log_msg(LOG_ERR, "not committed: the Hub refused a change (an invalid README.md "
				 "card?) or the message is not one line of at most 400 bytes");
		break;
	case -EPERM:
	case -ENOTSUP:
		log_msg(LOG_ERR, "not committed: the daemon of this mount is an older hubfs that "
				 "has no 'hubfs commit'");
		return;
	case -ETIMEDOUT:
		log_msg(LOG_ERR, "not committed after 15 minutes: the changes stay staged");
		break;
	default:
		log_msg(LOG_ERR,
			"not committed: %s (a conflict, a change the Hub refused, or "
			"the Hub failing or out of reach); the changes stay staged",
			strerror(-err));
		break;
	}
	if (cmd_mount_info_read(w->mountpoint, &info))
		return;
	c = cmd_cache_open_existing(info.cache_dir, &rc);
	if (!c)
		goto out;
	cmd_where_repo(w, &repo);
	stage_repo_key(&repo, key);
	if (cache_stage_branches(c, &b, &n))
		goto out;
	for (size_t i = 0; i < n; i++) {
		if (strcmp(b[i].repo, key) || strcmp(b[i].branch, w->rev))
			continue;
		log_msg(LOG_ERR, "%llu change%s of '%s/%s@%s' stay%s staged (%llu in conflict)%s%s",
			(unsigned long long)b[i].changes, b[i].changes == 1 ? "" : "s", w->ns,
			w->name, w->rev, b[i].changes == 1 ? "s" : "",
			(unsigned long long)b[i].by_state[CACHE_STAGE_CONFLICT],
			b[i].error && *b[i].error ? "; last error: " : "",
			b[i].error ? b[i].error : "");
	}
out:
	cache_stage_branches_free(b, n);
	if (c)
		cache_close(c);
	cmd_mount_info_release(&info);
}

int cmd_commit(int argc, char *argv[])
{
	const char *path = NULL, *message = "", *description = NULL;
	char root[PATH_MAX], id[HUB_COMMIT_LEN + 2], *value = NULL;
	struct cmd_where w;
	ssize_t len;
	int rc;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			fputs(commit_usage, stdout);
			return 0;
		} else if ((!strcmp(argv[i], "-m") || !strcmp(argv[i], "--message")) &&
			   i + 1 < argc) {
			message = argv[++i];
		} else if (!strncmp(argv[i], "--message=", 10)) {
			message = argv[i] + 10;
		} else if (!strcmp(argv[i], "--description") && i + 1 < argc) {
			description = argv[++i];
		} else if (!strncmp(argv[i], "--description=", 14)) {
			description = argv[i] + 14;
		} else if (argv[i][0] == '-' || path) {
			fputs(commit_usage, stderr);
			return 2;
		} else {
			path = argv[i];
		}
	}
	if (!path) {
		fputs(commit_usage, stderr);
		return 2;
	}
	if (*message && !stage_message_valid(message)) {
		log_msg(LOG_ERR, "the message must be one line of at most %d bytes",
			STAGE_MESSAGE_MAX);
		return 2;
	}
	if (cmd_where_read(path, &w))
		return 1;
	rc = 1;
	if (!w.rev[0]) {
		log_msg(LOG_ERR, "'%s' is a repository's directory: name a branch in it", path);
		goto out;
	}
	if (commit_branch_root(w.real, root)) {
		log_msg(LOG_ERR, "'%s': cannot find its branch's directory", path);
		goto out;
	}
	if (asprintf(&value, "%s%s%s", message, description ? "\n" : "",
		     description ? description : "") < 0) {
		value = NULL;
		log_msg(LOG_ERR, "out of memory");
		goto out;
	}
	if (setxattr(root, "user.hubfs.commit", value, strlen(value), 0)) {
		commit_explain(&w, -errno);
		goto out;
	}
	len = getxattr(root, "user.hubfs.commit", id, sizeof(id) - 1);
	if (len == 0) {
		printf("nothing to commit: every change of %s/%s@%s is on the Hub\n", w.ns, w.name,
		       w.rev);
		rc = 0;
		goto out;
	}
	if (len != HUB_COMMIT_LEN) {
		log_msg(LOG_ERR, "committed, but the mount does not say which commit: %s",
			len < 0 ? strerror(errno) : "a bad answer");
		goto out;
	}
	id[len] = '\0';
	printf("%s\n%s/%s%s%s/%s/commit/%s\n", id, w.endpoint,
	       w.type == HUB_REPO_MODEL ? "" : hub_repo_type_api(w.type),
	       w.type == HUB_REPO_MODEL ? "" : "/", w.ns, w.name, id);
	rc = 0;
out:
	free(value);
	cmd_where_release(&w);
	return rc;
}
