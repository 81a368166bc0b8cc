/*
 * What the two halves of the FUSE operations share: fs_ops.c (lookups,
 * attributes, listings, opens and reads, xattrs, the operations table) and
 * fs_write.c (writes, the namespace changes of branch views, fsync).  Not a
 * public interface: nothing outside src/fs_*.c includes it.
 *
 * Every function here may be called from any FUSE thread.  None holds a
 * lock when it returns; none replies to the request unless it says so.
 */
#ifndef HUBFS_FS_INTERNAL_H
#define HUBFS_FS_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>

#include "fs_ops.h"

/* An open file (the handle fs->files hands out). */
struct fs_file {
	struct fs_node *node;       /* a reference */
	uint64_t size;              /* of the blob */
	struct cache_blob *blob;    /* NULL for an empty file */
	struct fetch_source *src;
	int fd;                     /* staged content read-only, or -1 */
	struct stage_writer *w;     /* opened for writing: the path's writer, or NULL */
	bool append;                /* O_APPEND */
	char *path;                 /* an entry of a branch view: its path in the repo
				       when opened, or NULL */
	char *content;              /* a file of .hf-cache made when opened
				       (fs_hfcache_content()), or NULL */
	bool rewrite;               /* a ref of .hf-cache opened with O_TRUNC for
				       writing its content again (fs_hfcache.h) */
	struct fs_file *live_next;  /* protected by fs->live's lock */
	struct fs_file **live_pprev; /* protected by fs->live's lock; NULL: not listed */
	pthread_mutex_t lock;
	uint64_t next_off;          /* protected by lock: where a sequential read goes on */
	uint64_t run;               /* protected by lock: bytes read sequentially so far */
	uint64_t ahead;             /* protected by lock: read-ahead queued up to here */
	uint64_t rewritten;         /* protected by lock: with rewrite, the bytes
				       of content written again from 0 */
};

static inline struct fs *fs_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

/* Whether @n is a directory (everything but the "me" link and files: of a
 * tree, and of the .hf-cache layout's refs and .no_exist). */
static inline bool fs_is_dir(const struct fs_node *n)
{
	if (n->p.kind == FS_PATH_ENTRY || n->p.kind == FS_PATH_HFC_REF ||
	    n->p.kind == FS_PATH_HFC_NOEXIST || n->p.kind == FS_PATH_HFC_TREES)
		return n->is_dir;
	return n->p.kind != FS_PATH_ME;
}

/* ---- fs_ops.c ---- */

/* How long the kernel may trust names and attributes of @n, in seconds. */
double fs_timeout(struct fs *fs, const struct fs_node *n);

/* The repo of @n (at or below a repo); @repo's strings are @n's, borrowed. */
void fs_repo_of(const struct fs_node *n, struct hub_repo *repo);

/* Resolves the revision of a node at or below a revision root.  Returns 0
 * or -errno. */
int fs_revision(struct fs *fs, const struct fs_node *n, struct hub_revision *rev);

/* The staging key of a node's repo. */
void fs_stage_key(const struct fs_node *n, char key[STAGE_REPO_KEY_MAX]);

/* Whether a node at or below a revision root is in a branch view (writable):
 * 1, 0 (a tag, a commit id, a PR ref), or -errno. */
int fs_is_branch(struct fs *fs, const struct fs_node *n);

/* What the overlay says of an entry node's path (STAGE_NONE for the rest). */
void fs_staged(struct fs *fs, const struct fs_node *n, struct stage_stat *st);

/* The attributes of @n now.  Returns 0 or -errno. */
int fs_stat(struct fs *fs, const struct fs_node *n, struct stat *st);

/* Records that directory node @ino is at @fullpath now (after a rename of
 * this mount), for lookups in it.  Returns 0 or -ENOMEM. */
int fs_dir_moved(struct fs *fs, uint64_t ino, const char *fullpath);

/* Builds and checks the node that @name in @parent would be. */
typedef int (*fs_child_fn)(struct fs *fs, const struct fs_node *parent, const char *name,
			   struct fs_node *proto);

/* Calls @fn with the directory that @parent stands for now: @parent, or
 * where this mount renamed it or a directory above it.  Returns @fn's. */
int fs_child_in_view(struct fs *fs, const struct fs_node *parent, const char *name,
		     struct fs_node *proto, fs_child_fn fn);

/* Fills @proto with the node @name of directory @parent is now (the caller
 * frees proto->fullpath).  Returns 0, -ENOENT, or -errno (then
 * proto->fullpath is NULL).  fs_child() looks in the directory @parent
 * stands for now; fs_child_at() in @parent as it is. */
int fs_child(struct fs *fs, const struct fs_node *parent, const char *name,
	     struct fs_node *proto);
int fs_child_at(struct fs *fs, const struct fs_node *parent, const char *name,
		struct fs_node *proto);

/* Replies to a lookup (or mkdir) with the node @n that fs_inode_link() just
 * returned, and drops the request's reference to it.  Returns 0 once
 * replied; on -errno nothing was replied and the lookup of @n is undone. */
int fs_reply_node(fuse_req_t req, struct fs *fs, struct fs_node *n);

/* Frees an open file: journals and drops its writer, drops its node. */
void fs_file_free(struct fs *fs, struct fs_file *f);

/* A handle of node @n (the handle takes the caller's reference), nothing
 * open yet; NULL without memory. */
struct fs_file *fs_file_new(struct fs_node *n);

/* ---- fs_write.c ---- */

/* Whether the requester may change the mount (write, create, remove,
 * rename, set attributes): the mounting user, or root, whom the kernel lets
 * past the modes too.  Other users reach the mount only with allow_other,
 * which implies default_permissions (the kernel refuses them first): this is
 * defence in depth.  Returns 0 or -EACCES. */
int fs_may_change(fuse_req_t req);

/* Opens the writer of file node @n (a branch view, checked by the caller):
 * its content is empty with @trunc, else the staged or committed content of
 * the path, copied in through the cache.  Returns the writer (close it with
 * stage_writer_close()), or NULL with *@err. */
struct stage_writer *fs_writer_open(struct fs *fs, const struct fs_node *n, bool trunc,
				    int *err);

/* The open files of branch views (fs->live), so that a change of a path's
 * staged content through one node invalidates the kernel's pages of the
 * other nodes of that path (views NS/REPO/BRANCH and NS/REPO@BRANCH, a node
 * the kernel still holds after a newer one was made).  The invalidations
 * run on a thread of their own: a FUSE request that waited for one could
 * wait for pages its own write holds.  fs_live_init() returns 0 or -ENOMEM;
 * fs_live_release() (NULL fs->live: a no-op) stops the thread, once every
 * file is freed. */
int fs_live_init(struct fs *fs);
void fs_live_release(struct fs *fs);

/* Lists @f (f->path set, an entry of a branch view), or takes it out of the
 * list (a no-op when it is not listed). */
void fs_live_add(struct fs *fs, struct fs_file *f);
void fs_live_remove(struct fs *fs, struct fs_file *f);

/* Whether a file of node @n is open (listed) with content of its own: a
 * writer, or a staged file; then *@size is its size now.  For fstat(2) of
 * an unlinked file. */
bool fs_live_size(struct fs *fs, const struct fs_node *n, uint64_t *size);

/* The staged content of @path in the view of node @n changed other than
 * through the kernel's pages of node @except (0: of none): the pages of every
 * other node with that path open are dropped, soon. */
void fs_live_changed(struct fs *fs, const struct fs_node *n, const char *path, uint64_t except);

/* Drops the kernel's attributes (and pages) of node @ino, soon. */
void fs_live_inval(struct fs *fs, uint64_t ino);

/* The operations of fs_write.c, as struct fuse_lowlevel_ops has them. */
void fs_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
	      struct fuse_file_info *fi);
void fs_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t len,
		  struct fuse_file_info *fi);
void fs_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void fs_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void fs_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi);
void fs_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi);
void fs_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev);
void fs_mkdir(fuse_req_t req, fuse_ino_t parent_ino, const char *name, mode_t mode);
void fs_unlink(fuse_req_t req, fuse_ino_t parent_ino, const char *name);
void fs_rmdir(fuse_req_t req, fuse_ino_t parent_ino, const char *name);
void fs_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name);
void fs_rename(fuse_req_t req, fuse_ino_t parent_ino, const char *name, fuse_ino_t newparent_ino,
	       const char *newname, unsigned int flags);
void fs_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname);
void fs_create(fuse_req_t req, fuse_ino_t parent_ino, const char *name, mode_t mode,
	       struct fuse_file_info *fi);
void fs_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
		struct fuse_file_info *fi);
void fs_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
		 size_t size, int flags);
void fs_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name);

/* ---- fs_history.c ---- */

/* The xattrs that say where @n is (user.hub.repo, .revision, .path,
 * user.hubfs.endpoint, user.hubfs.commit), as fs_ops.c's getxattr wants
 * them: the length, or -ENODATA when @name is none of them for @n. */
int fs_history_xattr(struct fs *fs, const struct fs_node *n, const char *name, char *buf,
		     size_t size);

/* setxattr user.hubfs.commit on branch root @n: commits the branch now with
 * the title and description in @value and waits.  Returns 0 or -errno. */
int fs_history_commit(struct fs *fs, const struct fs_node *n, const char *value, size_t size);

/* mkdir @name in repo directory @parent: creates the branch on the Hub and
 * fills @proto as fs_child() does.  Returns 0, -EEXIST, -EINVAL (not a
 * name a branch can have), -EACCES, -EROFS (offline), or -errno. */
int fs_history_mkbranch(struct fs *fs, const struct fs_node *parent, const char *name,
			struct fs_node *proto);

#endif
