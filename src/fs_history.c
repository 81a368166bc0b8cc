/*
 * What the mount does for hubfs log and hubfs commit, and branches made
 * with mkdir.
 *
 * The commands find out where a path is through xattrs the daemon answers
 * (none of them holds a secret: the token never leaves the daemon):
 *   user.hub.repo       every node at or below a repo directory: "NS/NAME",
 *                       "datasets/NS/NAME" or "spaces/NS/NAME"
 *   user.hub.revision   at or below a revision root: the view's revision as
 *                       written ("main", "refs/pr/1", "v1.0", a commit id)
 *   user.hub.path       inside a revision: the path in the repo
 *   user.hubfs.endpoint the mount root: the Hub the mount talks to
 *   user.hubfs.commit   a branch root: the answer to the last hubfs commit
 *                       of the branch, its commit id ("" when it made none)
 * and hubfs commit asks for a commit by setting user.hubfs.commit on a
 * branch root to "TITLE" or "TITLE\nDESCRIPTION" (an empty TITLE: the
 * usual titles); the setxattr(2) returns once the commit is on the Hub, as
 * an fsync of the branch root does, with its errno otherwise.
 *
 * mkdir NS/REPO/NAME makes branch NAME on the Hub, at the head of the
 * default branch; it shows at once (the repo's refs are forgotten).
 *
 * Locking: none here; the stage and meta lock what they keep.
 */
#include "config.h"

#include "fs_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hub_id.h"
#include "log.h"

/* The largest value of user.hubfs.commit: a title and a description. */
#define FS_COMMIT_VALUE_MAX (64 * 1024)

int fs_history_xattr(struct fs *fs, const struct fs_node *n, const char *name, char *buf,
		     size_t size)
{
	if (!strcmp(name, "user.hubfs.endpoint"))
		return n->p.kind == FS_PATH_ROOT && fs->http
			   ? snprintf(buf, size, "%s", http_client_endpoint(fs->http))
			   : -ENODATA;
	if (n->p.kind < FS_PATH_REPO || n->p.kind == FS_PATH_REFS)
		return -ENODATA;
	if (!strcmp(name, "user.hub.repo"))
		return snprintf(buf, size, "%s%s%s/%s",
				n->p.type == HUB_REPO_MODEL ? "" : hub_repo_type_api(n->p.type),
				n->p.type == HUB_REPO_MODEL ? "" : "/", n->p.ns, n->p.repo);
	if (n->p.kind < FS_PATH_REVISION)
		return -ENODATA;
	if (!strcmp(name, "user.hub.revision"))
		return snprintf(buf, size, "%s", n->p.rev);
	if (!strcmp(name, "user.hub.path"))
		return n->p.kind == FS_PATH_ENTRY ? snprintf(buf, size, "%s", n->p.path) : -ENODATA;
	if (!strcmp(name, "user.hubfs.commit") && n->p.kind == FS_PATH_REVISION && fs->stage) {
		char key[STAGE_REPO_KEY_MAX], commit[HUB_COMMIT_LEN + 1];
		bool made;

		fs_stage_key(n, key);
		if (stage_commit_asked(fs->stage, key, n->p.rev, &made, commit))
			return -ENODATA;
		return made ? snprintf(buf, size, "%s", commit) : 0;
	}
	return -ENODATA;
}

int fs_history_commit(struct fs *fs, const struct fs_node *n, const char *value, size_t size)
{
	char key[STAGE_REPO_KEY_MAX], commit[HUB_COMMIT_LEN + 1], *text, *nl;
	const char *description = NULL;
	bool made;
	int rc;

	if (n->p.kind != FS_PATH_REVISION)
		return -EINVAL;
	if (!fs->stage || fs->offline)
		return -EROFS;
	rc = fs_is_branch(fs, n);
	if (rc <= 0)
		return rc ? rc : -EROFS;
	if (size > FS_COMMIT_VALUE_MAX || memchr(value, '\0', size))
		return -EINVAL;
	text = strndup(value, size);
	if (!text)
		return -ENOMEM;
	nl = strchr(text, '\n');
	if (nl) {
		*nl = '\0';
		description = nl + 1;
	}
	if (*text && !stage_message_valid(text)) {
		free(text);
		return -EINVAL;
	}
	fs_stage_key(n, key);
	rc = stage_commit_now(fs->stage, key, n->p.rev, *text ? text : NULL,
			      description && *description ? description : NULL, &made, commit);
	if (rc)
		log_msg(LOG_WARNING, "'%s@%s': hubfs commit failed: %s", key, n->p.rev,
			strerror(-rc));
	else if (!made)
		log_msg(LOG_INFO, "'%s@%s': hubfs commit: nothing to commit", key, n->p.rev);
	free(text);
	return rc;
}

int fs_history_mkbranch(struct fs *fs, const struct fs_node *parent, const char *name,
			struct fs_node *proto)
{
	struct hub_repo repo;
	int rc = fs_child(fs, parent, name, proto);

	if (rc == 0) {
		free(proto->fullpath);
		proto->fullpath = NULL;
		return -EEXIST;
	}
	if (rc != -ENOENT)
		return rc;
	/* a name that cannot be a branch (fs_child() finds nothing there) */
	memset(proto, 0, sizeof(*proto));
	if (asprintf(&proto->fullpath, "%s/%s", parent->fullpath, name) < 0) {
		proto->fullpath = NULL;
		return -ENOMEM;
	}
	rc = fs_path_parse(proto->fullpath, &proto->p);
	free(proto->fullpath);
	proto->fullpath = NULL;
	if (rc == -ENAMETOOLONG)
		return rc;
	if (rc || proto->p.kind != FS_PATH_REVISION || proto->p.pinned ||
	    !strncmp(proto->p.rev, "refs/", 5) || hub_commit_id_valid(proto->p.rev, false))
		return -EINVAL;
	if (!fs->stage || fs->offline)
		return -EROFS;
	fs_repo_of(parent, &repo);
	rc = hub_create_branch(fs->http, &repo, proto->p.rev);
	if (rc) {
		log_msg(LOG_WARNING, "cannot create branch '%s' of '%s/%s': %s", proto->p.rev,
			repo.ns, repo.name, strerror(-rc));
		return rc;
	}
	log_msg(LOG_NOTICE, "created branch '%s' of '%s/%s'", proto->p.rev, repo.ns, repo.name);
	meta_forget_repo(fs->meta, &repo);
	return fs_child(fs, parent, name, proto);
}
