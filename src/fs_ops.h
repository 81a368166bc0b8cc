/*
 * The FUSE operations of a mount (libfuse's low-level API).
 *
 * Branch views are writable: files are created, written, truncated,
 * unlinked and renamed, directories made, removed and renamed, through the
 * staging overlay, and committed by its worker (stage.h); mkdir NS/NAME
 * creates a repo.  Tags, commit ids and PR refs answer EROFS, and so do
 * symlink, link and mknod everywhere.  No HTTP and no SQL here: names go
 * through the path grammar (fs_path.h), facts through meta.h, bytes through
 * the cache and fetch.h.  The read side is fs_ops.c, the writes fs_write.c.
 */
#ifndef HUBFS_FS_OPS_H
#define HUBFS_FS_OPS_H

#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>

#include <stdint.h>

#include "cache.h"
#include "fetch.h"
#include "fs_handle.h"
#include "fs_inode.h"
#include "meta.h"
#include "stage.h"

/* The size of FUSE read requests asked for (max_read, read-ahead). */
#define FS_MAX_READ (1u << 20)

struct fs {
	struct fs_inodes *inodes;
	struct meta *meta;
	struct cache *cache;
	struct fetch *fetch;
	struct http_client *http;
	int ttl;               /* seconds a branch view, a name or an answer is trusted */
	bool offline;          /* --offline: never fetch */
	bool public_repos;     /* --public-repos: mkdir makes public repos */
	uid_t uid;
	gid_t gid;
	int64_t mount_time;
	char *me;              /* the token's user, or NULL */
	struct hub_names orgs; /* its organisations */
	struct fs_handles *dirs;  /* open directories */
	struct fs_handles *files; /* open files */
	struct stage *stage;      /* writes: the overlay and the commit worker */
	/* For notifications to the kernel; NULL before the mount and once it
	 * ends (set with fs_set_session()). */
	struct fuse_session *se;     /* protected by notify_lock */
	pthread_mutex_t notify_lock; /* initialised by fs_handles_init() */
	/* Directories this mount renamed, by inode: the kernel keeps naming
	 * the new path by the old node until it looks the name up again. */
	struct fs_dir_move *moves;  /* protected by moves_lock; read atomically for NULL */
	pthread_mutex_t moves_lock; /* initialised by fs_handles_init() */
	char *cache_dir;          /* absolute; the mount root's xattr user.hubfs.cache_dir */
	char *token_file;         /* absolute, of --token-file, or NULL; the mount root's
				     xattr user.hubfs.token_file (a path, never the token) */
	/* Open files of branch views and the page invalidations their changes
	 * call for (fs_write.c; created by fs_handles_init()). */
	struct fs_live *live;
};

/* Creates fs->dirs and fs->files.  Returns 0 or -ENOMEM. */
int fs_handles_init(struct fs *fs);

/* Sets (or with NULL, clears before the session is destroyed) the session
 * that notifications go to. */
void fs_set_session(struct fs *fs, struct fuse_session *se);

/* Frees them and what is still open in them.  NULL tables are skipped. */
void fs_handles_release(struct fs *fs);

/* The stage's commit callback (struct stage_config.committed, @arg a struct
 * fs): tells the kernel that the attributes and pages it caches of the
 * committed paths' nodes, in every view of the branch, are stale.  Never
 * waits for a FUSE request. */
void fs_committed(void *arg, const char *repo, const char *branch, const char *const *paths,
		  size_t n);

/* The operations; the session's userdata is a struct fs. */
extern const struct fuse_lowlevel_ops fs_ops;

#endif
