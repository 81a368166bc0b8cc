/*
 * Where a path of a hubfs mount is: which mount, which repo, revision and
 * path in the repo.  For the commands that act on a path of a mount
 * (hubfs log, hubfs commit).  The daemon tells it through xattrs of the
 * path (see src/fs_history.c); the mount is found in /proc/self/mountinfo.
 */
#ifndef HUBFS_CMD_WHERE_H
#define HUBFS_CMD_WHERE_H

#include <stdbool.h>

#include "hub_api.h"
#include "hub_id.h"

struct cmd_where {
	char *real;	  /* realpath(3) of the path; owned */
	char *mountpoint; /* of the hubfs mount holding it; owned */
	char *endpoint;	  /* the Hub the mount talks to; owned */
	char *token_file; /* the mount's --token-file (a path), or NULL; owned */
	bool own;	  /* the mount belongs to the caller (user_id=) */
	enum hub_repo_type type;
	char ns[HUB_NAME_MAX + 1];
	char name[HUB_NAME_MAX + 1];
	char rev[HUB_REV_MAX + 1];	 /* the view's revision, "" for a repo directory */
	char commit[HUB_COMMIT_LEN + 1]; /* user.hub.commit of the path, or "" */
	char path[HUB_PATH_MAX + 1];	 /* in the repo, "" at the revision's root */
};

/* Fills @w for @path (release it with cmd_where_release()).  Returns 0, or
 * -errno after logging why: -ENOENT (no such path), -ENODATA (not in a repo
 * of a hubfs mount), -ENOTCONN (a mount whose daemon is gone), -EIO (an
 * answer that makes no sense). */
int cmd_where_read(const char *path, struct cmd_where *w);

/* The repo of @w, borrowing its strings. */
void cmd_where_repo(const struct cmd_where *w, struct hub_repo *repo);

/* Frees what @w holds.  NULL is a no-op. */
void cmd_where_release(struct cmd_where *w);

#endif
