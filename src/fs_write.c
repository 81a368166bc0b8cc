/*
 * FUSE operations that change a branch view: open files for writing and
 * their writes, flush, release and fsync, truncation, create, unlink, mkdir
 * and rmdir (and repo creation by mkdir NS/NAME), rename of files and of
 * directories, and the settable xattrs.  See fs_ops.h; the read side and
 * the operations table are in fs_ops.c.
 *
 * Every change goes to the staging overlay (stage.h), which journals it and
 * commits it later; nothing here talks to the Hub but mkdir of a repo and
 * user.hub.private.  Only branch views are writable (fs_is_branch(), decided
 * with the repo's refs); the rest answers EROFS.  Only the mounting user (and
 * root) may change anything (fs_may_change()).  The Hub keeps no modes,
 * owners or times: a branch view accepts changes of them and keeps nothing;
 * links and device nodes it cannot hold are EPERM.  An open for writing
 * takes the path's writer, which copies an existing file in through the
 * cache first (fs_copy_in()); flush and release journal it, fsync commits
 * the branch and waits.  A source the overlay committed meanwhile answers
 * -EAGAIN (fs_fill_again()), and the caller looks at the path again.
 *
 * Handles of branch views are listed (fs_live_add()) so that a change of a
 * path's staged content through one node drops the kernel's pages of the
 * other nodes of the path; a thread of this file sends those invalidations,
 * as a request that waited for one could wait for the pages its own write
 * holds locked.  Unlinks and renames tell the inode table, so that a
 * renamed file keeps its st_ino and a new file at a name gets another.
 *
 * Locking: fs->live's lock protects its list and queue, and is held across
 * nothing but local bookkeeping (an fstat); the stage and the inode table
 * lock what they keep.  A directory rename holds its branch (stage_hold())
 * so that the worker commits all of its moves as one commit.  Nothing waits
 * for the network but fsync, fsyncdir (stage_sync()), mkdir of a repo and
 * user.hub.private.
 */
#include "config.h"

#include "fs_hfcache.h"
#include "fs_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "hub_id.h"
#include "log.h"

int fs_may_change(fuse_req_t req)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);

	return ctx->uid == fs_of(req)->uid || ctx->uid == 0 ? 0 : -EACCES;
}

/* Replies ESTALE when node @n is gone, EACCES when the requester may not
 * change the mount (fs_may_change()), and then drops @n.  Returns whether
 * it replied. */
static bool fs_refuse(fuse_req_t req, struct fs_node *n)
{
	struct fs *fs = fs_of(req);
	int rc = n ? fs_may_change(req) : -ESTALE;

	if (!rc)
		return false;
	fs_inode_put(fs->inodes, n);
	fuse_reply_err(req, -rc);
	return true;
}

/* ---- open files of branch views, and the kernel's pages of their nodes ---- */

struct fs_live {
	pthread_mutex_t lock;
	pthread_cond_t wake;
	struct fs_file *files; /* protected by lock */
	uint64_t *inos;	       /* protected by lock: nodes whose pages to drop */
	size_t n, cap;	       /* protected by lock */
	bool stop;	       /* protected by lock */
	pthread_t thread;
};

static void *fs_live_run(void *arg)
{
	struct fs *fs = arg;
	struct fs_live *l = fs->live;
	uint64_t *inos;
	size_t n;

	pthread_mutex_lock(&l->lock);
	while (!l->stop) {
		if (!l->n) {
			pthread_cond_wait(&l->wake, &l->lock);
			continue;
		}
		inos = l->inos;
		n = l->n;
		l->inos = NULL;
		l->n = l->cap = 0;
		pthread_mutex_unlock(&l->lock);
		pthread_mutex_lock(&fs->notify_lock);
		for (size_t i = 0; fs->se && i < n; i++)
			fuse_lowlevel_notify_inval_inode(fs->se, inos[i], 0, 0);
		pthread_mutex_unlock(&fs->notify_lock);
		free(inos);
		pthread_mutex_lock(&l->lock);
	}
	pthread_mutex_unlock(&l->lock);
	return NULL;
}

int fs_live_init(struct fs *fs)
{
	struct fs_live *l = calloc(1, sizeof(*l));

	if (!l)
		return -ENOMEM;
	pthread_mutex_init(&l->lock, NULL);
	pthread_cond_init(&l->wake, NULL);
	fs->live = l;
	if (pthread_create(&l->thread, NULL, fs_live_run, fs)) {
		fs->live = NULL;
		pthread_cond_destroy(&l->wake);
		pthread_mutex_destroy(&l->lock);
		free(l);
		return -ENOMEM;
	}
	return 0;
}

void fs_live_release(struct fs *fs)
{
	struct fs_live *l = fs->live;

	if (!l)
		return;
	pthread_mutex_lock(&l->lock);
	l->stop = true;
	pthread_cond_signal(&l->wake);
	pthread_mutex_unlock(&l->lock);
	pthread_join(l->thread, NULL);
	fs->live = NULL;
	free(l->inos);
	pthread_cond_destroy(&l->wake);
	pthread_mutex_destroy(&l->lock);
	free(l);
}

void fs_live_add(struct fs *fs, struct fs_file *f)
{
	struct fs_live *l = fs->live;

	pthread_mutex_lock(&l->lock);
	f->live_next = l->files;
	if (l->files)
		l->files->live_pprev = &f->live_next;
	l->files = f;
	f->live_pprev = &l->files;
	pthread_mutex_unlock(&l->lock);
}

void fs_live_remove(struct fs *fs, struct fs_file *f)
{
	struct fs_live *l = fs->live;

	if (!l)
		return;
	pthread_mutex_lock(&l->lock);
	if (f->live_pprev) {
		*f->live_pprev = f->live_next;
		if (f->live_next)
			f->live_next->live_pprev = f->live_pprev;
		f->live_pprev = NULL;
	}
	pthread_mutex_unlock(&l->lock);
}

bool fs_live_size(struct fs *fs, const struct fs_node *n, uint64_t *size)
{
	struct fs_live *l = fs->live;
	bool found = false;
	struct stat st;

	pthread_mutex_lock(&l->lock);
	for (struct fs_file *g = l->files; g && !found; g = g->live_next) {
		if (g->node != n)
			continue;
		if (g->w) {
			*size = stage_writer_size(g->w);
			found = true;
		} else if (g->fd >= 0 && fstat(g->fd, &st) == 0) {
			*size = (uint64_t)st.st_size;
			found = true;
		}
	}
	pthread_mutex_unlock(&l->lock);
	return found;
}

/* Whether two nodes are in the same view of a repo's revision. */
static bool fs_same_rev(const struct fs_node *a, const struct fs_node *b)
{
	return a->p.type == b->p.type && !strcmp(a->p.rev, b->p.rev) &&
	       !strcmp(a->p.repo, b->p.repo) && !strcmp(a->p.ns, b->p.ns);
}

/* Queues the invalidation of node @ino (once).  Returns 0 or -ENOMEM. */
static int fs_live_queue_locked(struct fs_live *l, uint64_t ino)
{
	for (size_t i = 0; i < l->n; i++)
		if (l->inos[i] == ino)
			return 0;
	if (l->n == l->cap) {
		size_t cap = l->cap ? 2 * l->cap : 8;
		uint64_t *v = realloc(l->inos, cap * sizeof(*v));

		if (!v)
			return -ENOMEM;
		l->inos = v;
		l->cap = cap;
	}
	l->inos[l->n++] = ino;
	pthread_cond_signal(&l->wake);
	return 0;
}

void fs_live_changed(struct fs *fs, const struct fs_node *n, const char *path, uint64_t except)
{
	struct fs_live *l = fs->live;

	pthread_mutex_lock(&l->lock);
	for (struct fs_file *g = l->files; g; g = g->live_next) {
		if (g->node->ino == except || strcmp(g->path, path) || !fs_same_rev(g->node, n))
			continue;
		if (fs_live_queue_locked(l, g->node->ino)) {
			log_msg(LOG_ERR, "out of memory: the kernel may show old bytes of '%s'", path);
			break;
		}
	}
	pthread_mutex_unlock(&l->lock);
}

void fs_live_inval(struct fs *fs, uint64_t ino)
{
	struct fs_live *l = fs->live;

	pthread_mutex_lock(&l->lock);
	if (fs_live_queue_locked(l, ino))
		log_msg(LOG_DEBUG, "out of memory: attributes of inode %llu stay cached",
			(unsigned long long)ino);
	pthread_mutex_unlock(&l->lock);
}

/* What the copy of a file of the tree into a staged file needs. */
struct fs_copy {
	struct fs *fs;
	const struct fs_node *n;
	const char *commit;
	const char *path; /* in the tree of commit */
	struct cache_entry e;
};

/* Copies a file of the tree, through the cache, into a new staged file. */
static int fs_copy_in(void *arg, int fd)
{
	struct fs_copy *c = arg;
	struct fs *fs = c->fs;
	const char *id = c->e.sha256[0] ? c->e.sha256 : c->e.oid;
	struct fetch_call call = { 0 };
	struct cache_blob *blob;
	struct hub_repo repo;
	uint64_t off = 0;
	char *url, *buf;
	int rc = 0;

	if (c->e.size == 0)
		return 0;
	fs_repo_of(c->n, &repo);
	url = hub_resolve_url(fs->http, &repo, c->commit, c->path);
	buf = malloc(FS_MAX_READ);
	blob = cache_blob_get(fs->cache, id, c->e.size, &rc);
	call.src = url ? fetch_source_new(fs->fetch, &repo, url, id, c->e.size) : NULL;
	if (!url || !buf || !call.src) {
		rc = rc ? rc : -ENOMEM;
		goto out;
	}
	while (blob && off < c->e.size) {
		ssize_t n = cache_blob_read(blob, buf, FS_MAX_READ, off,
					    fs->offline ? NULL : fetch_fill, &call);

		if (n <= 0) {
			rc = n == -ENODATA ? -EIO : n < 0 ? (int)n : -EIO;
			break;
		}
		if (pwrite(fd, buf, (size_t)n, (off_t)off) != n) {
			rc = -errno ? -errno : -EIO;
			break;
		}
		off += (uint64_t)n;
	}
out:
	cache_blob_put(blob);
	fetch_source_unref(call.src);
	free(buf);
	free(url);
	return rc;
}

/* The fill of a source that the overlay had when the caller looked: asked
 * only when the overlay has it no more (committed meanwhile), so that the
 * caller looks again instead of starting from nothing. */
static int fs_fill_again(void *arg, int fd)
{
	(void)arg;
	(void)fd;
	return -EAGAIN;
}

/* Opens the writer of file node @n; see fs_internal.h. */
struct stage_writer *fs_writer_open(struct fs *fs, const struct fs_node *n, bool trunc, int *err)
{
	struct fs_copy c = { .fs = fs, .n = n, .path = n->p.path };
	struct hub_revision rev;
	struct hub_repo repo;
	struct stage_stat ss;
	char key[STAGE_REPO_KEY_MAX];
	struct stage_writer *w;
	bool have = false;

	fs_repo_of(n, &repo);
	fs_stage_key(n, key);
	/* the overlay may commit the path meanwhile: look again then */
	for (int i = 0; i < 3; i++) {
		stage_fill_fn fill = NULL;

		if (have)
			cache_entry_release(&c.e);
		have = false;
		c.path = n->p.path;
		*err = fs_revision(fs, n, &rev);
		if (*err)
			return NULL;
		fs_staged(fs, n, &ss);
		if (!trunc && ss.what == STAGE_NONE) {
			*err = meta_lookup(fs->meta, &repo, rev.commit, n->p.path, &c.e);
			if (*err == 0 && c.e.is_dir) {
				cache_entry_release(&c.e);
				*err = -EISDIR;
				return NULL;
			}
			if (*err && *err != -ENOENT && *err != -ENOTDIR)
				return NULL;
			have = *err == 0;
			c.commit = rev.commit;
		} else if (!trunc && ss.what == STAGE_FILE && ss.from[0]) {
			/* moved by reference: the content is the old path's */
			*err = meta_lookup(fs->meta, &repo, ss.base, ss.from, &c.e);
			if (*err)
				return NULL;
			have = true;
			c.commit = ss.base;
			c.path = ss.from;
		} else if (!trunc && ss.what == STAGE_FILE) {
			fill = fs_fill_again;
		}
		if (have)
			fill = fs_copy_in;
		w = stage_writer_open(fs->stage, key, n->p.rev, n->p.path, rev.commit, trunc, fill,
				      &c, err);
		if (w || *err != -EAGAIN)
			break;
	}
	if (have)
		cache_entry_release(&c.e);
	return w;
}

void fs_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
	      struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct fs_file *f = fs_handle_get(fs->files, fi->fh);
	ssize_t n;

	(void)ino;
	if (!f) {
		fuse_reply_err(req, EBADF);
		return;
	}
	if (f->rewrite && off >= 0) {
		/* a ref of .hf-cache given its content again */
		n = fs_hfcache_rewrite(f, buf, size, (uint64_t)off);
		if (n < 0)
			fuse_reply_err(req, (int)-n);
		else
			fuse_reply_write(req, size);
	} else if (!f->w || off < 0) {
		fuse_reply_err(req, f->w ? EINVAL : EBADF);
	} else {
		/* the kernel's write-back of a shared map writes where the
		 * pages are, O_APPEND or not */
		n = stage_writer_write(f->w, buf, size, (uint64_t)off, f->append && !fi->writepage);
		if (n < 0)
			fuse_reply_err(req, (int)-n);
		else
			fuse_reply_write(req, (size_t)n);
		if (n > 0 && f->path)
			fs_live_changed(fs, f->node, f->path, f->node->ino);
	}
	fs_handle_put(fs->files, fi->fh, f);
}

/* posix_fallocate() of a file open for writing: the staged content grows.
 * Other modes (keeping the size, punching holes, ...) have nothing on the
 * Hub to stand for: EOPNOTSUPP. */
void fs_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t len,
		  struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct fs_file *f = fs_handle_get(fs->files, fi->fh);
	int rc;

	(void)ino;
	if (!f) {
		fuse_reply_err(req, EBADF);
		return;
	}
	if (mode)
		rc = -EOPNOTSUPP;
	else if (!f->w)
		rc = -EBADF;
	else if (off < 0 || len <= 0)
		rc = -EINVAL;
	else
		rc = stage_writer_allocate(f->w, (uint64_t)off, (uint64_t)len);
	if (!rc && f->path)
		fs_live_changed(fs, f->node, f->path, f->node->ino);
	fs_handle_put(fs->files, fi->fh, f);
	fuse_reply_err(req, -rc);
}

/* Journals what a handle wrote: the result goes to close(2). */
void fs_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct fs_file *f = fs_handle_get(fs->files, fi->fh);
	int rc = 0;

	(void)ino;
	if (!f) {
		fuse_reply_err(req, EBADF);
		return;
	}
	if (f->w)
		rc = stage_writer_flush(f->w);
	else
		rc = fs_hfcache_rewrite_done(f);
	fs_handle_put(fs->files, fi->fh, f);
	fuse_reply_err(req, -rc);
}

void fs_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct fs_file *f = fs_handle_get(fs->files, fi->fh);

	(void)ino;
	/* journaled before the reply, even if a read still holds the handle */
	if (f && f->w && stage_writer_flush(f->w))
		log_msg(LOG_ERR, "'%s': the last writes could not be journaled", f->node->fullpath);
	if (f)
		fs_handle_put(fs->files, fi->fh, f);
	fs_handle_release(fs->files, fi->fh);
	fuse_reply_err(req, 0);
}

/* Commits the branch of @n now; 0 once the commit is on the Hub. */
/* fsync: commits the branch of @n now; for a file (@file) answers for that
 * file (stage_sync_path()).  A local-only file (editor scratch) is synced
 * locally only: its journaled bytes are on disk already. */
static int fs_commit_now(struct fs *fs, const struct fs_node *n, bool file)
{
	char key[STAGE_REPO_KEY_MAX];
	int rc;

	if (n->p.kind < FS_PATH_REVISION || !fs->stage)
		return 0;
	rc = fs_is_branch(fs, n);
	if (rc <= 0)
		return rc;
	if (file && n->p.path[0] && stage_local_only(fs->stage, n->p.path))
		return 0;
	fs_stage_key(n, key);
	if (file && n->p.path[0])
		return stage_sync_path(fs->stage, key, n->p.rev, n->p.path);
	return stage_sync(fs->stage, key, n->p.rev);
}

void fs_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct fs_file *f = fs_handle_get(fs->files, fi->fh);
	int rc = 0;

	(void)ino;
	(void)datasync;
	if (!f) {
		fuse_reply_err(req, EBADF);
		return;
	}
	if (f->w)
		rc = stage_writer_flush(f->w);
	if (!rc)
		rc = fs_commit_now(fs, f->node, true);
	fs_handle_put(fs->files, fi->fh, f);
	fuse_reply_err(req, -rc);
}

void fs_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct fs_node *n = fs_inode_get(fs->inodes, ino);
	int rc;

	(void)datasync;
	(void)fi;
	if (!n) {
		fuse_reply_err(req, ESTALE);
		return;
	}
	rc = fs_commit_now(fs, n, false);
	fs_inode_put(fs->inodes, n);
	fuse_reply_err(req, -rc);
}

static int fs_branch_child(struct fs *fs, const struct fs_node *parent, const char *name,
			   struct fs_node *proto);

/* What the Hub cannot hold (symlinks, hard links, device nodes, FIFOs,
 * sockets) named @name: EEXIST when the name is taken, else EPERM in a
 * branch view, where the parent could take a file; EROFS elsewhere.
 * Replies. */
static void fs_no_entry(fuse_req_t req, fuse_ino_t parent_ino, const char *name)
{
	struct fs *fs = fs_of(req);
	struct fs_node *parent = fs_inode_get(fs->inodes, parent_ino);
	struct fs_node proto;
	int rc;

	if (fs_refuse(req, parent))
		return;
	rc = fs_is_branch(fs, parent);
	if (rc > 0) {
		/* a name that is taken is EEXIST first, as on any filesystem */
		int child;

		memset(&proto, 0, sizeof(proto));
		child = fs_branch_child(fs, parent, name, &proto);
		if (child == 0)
			rc = -EEXIST;
		free(proto.fullpath); /* set for a new name (-ENOENT) too */
	}
	fs_inode_put(fs->inodes, parent);
	fuse_reply_err(req, rc < 0 ? -rc : rc ? EPERM : EROFS);
}

/* mknod of a regular file makes an empty file, as create does; the rest is
 * what the Hub cannot hold (fs_no_entry()). */
void fs_mknod(fuse_req_t req, fuse_ino_t parent_ino, const char *name, mode_t mode, dev_t rdev)
{
	struct fs *fs = fs_of(req);
	struct fs_node *parent, *n;
	struct stage_writer *w;
	struct fs_node proto;
	int rc;

	(void)rdev;
	if (!S_ISREG(mode)) {
		fs_no_entry(req, parent_ino, name);
		return;
	}
	parent = fs_inode_get(fs->inodes, parent_ino);
	if (fs_refuse(req, parent))
		return;
	rc = fs_branch_child(fs, parent, name, &proto);
	if (rc == 0) {
		free(proto.fullpath);
		rc = -EEXIST;
	}
	if (rc != -ENOENT)
		goto out;
	w = fs_writer_open(fs, &proto, true, &rc);
	free(proto.fullpath);
	if (!w)
		goto out;
	rc = stage_writer_close(w);
	if (!rc)
		rc = fs_child(fs, parent, name, &proto);
	if (rc)
		goto out;
	n = fs_inode_link(fs->inodes, parent, name, &proto);
	rc = n ? fs_reply_node(req, fs, n) : -ENOMEM;
out:
	fs_inode_put(fs->inodes, parent);
	if (rc)
		fuse_reply_err(req, -rc);
}

/* mkdir in a branch view: a directory of the overlay (stage_mkdir()).
 * Returns 0 with @proto the new directory's node, or -errno. */
static int fs_branch_mkdir(struct fs *fs, const struct fs_node *parent, const char *name,
			   struct fs_node *proto)
{
	char key[STAGE_REPO_KEY_MAX];
	int rc = fs_branch_child(fs, parent, name, proto);

	if (rc == 0) {
		free(proto->fullpath);
		proto->fullpath = NULL;
		return -EEXIST;
	}
	if (rc != -ENOENT)
		return rc;
	fs_stage_key(proto, key);
	rc = stage_mkdir(fs->stage, key, proto->p.rev, proto->p.path);
	free(proto->fullpath);
	proto->fullpath = NULL;
	if (rc)
		return rc;
	return fs_child(fs, parent, name, proto);
}

struct fs_empty {
	struct fs *fs;
	const char *key, *rev;
	bool empty;
};

static int fs_empty_tree(void *arg, const struct cache_entry *e)
{
	struct fs_empty *x = arg;
	struct stage_stat ss;

	stage_stat(x->fs->stage, x->key, x->rev, e->path, &ss);
	if (ss.what == STAGE_DELETED)
		return 0;
	x->empty = false;
	return 1;
}

static int fs_empty_staged(void *arg, const char *name, bool is_dir)
{
	struct fs_empty *x = arg;

	(void)name;
	(void)is_dir;
	x->empty = false;
	return 1;
}

/* Whether directory @dir (an entry of a branch view) shows nothing; with
 * *@in_tree whether the tree of @commit has it (a directory: not a file the
 * overlay deleted).  Returns 0 or -errno. */
static int fs_dir_empty(struct fs *fs, const struct fs_node *dir, const char *commit, bool *empty,
			bool *in_tree)
{
	struct fs_empty x = { .fs = fs, .empty = true };
	struct hub_repo repo;
	struct cache_entry e;
	char key[STAGE_REPO_KEY_MAX];
	int rc;

	fs_repo_of(dir, &repo);
	fs_stage_key(dir, key);
	x.key = key;
	x.rev = dir->p.rev;
	*in_tree = false;
	rc = meta_lookup(fs->meta, &repo, commit, dir->p.path, &e);
	if (rc == 0) {
		*in_tree = e.is_dir;
		cache_entry_release(&e);
	} else if (rc != -ENOENT && rc != -ENOTDIR) {
		return rc;
	}
	if (*in_tree) {
		rc = meta_list(fs->meta, &repo, commit, dir->p.path, fs_empty_tree, &x);
		if (rc < 0 && rc != -ENOENT)
			return rc;
	}
	if (x.empty)
		stage_list_dir(fs->stage, key, dir->p.rev, dir->p.path, fs_empty_staged, &x);
	*empty = x.empty;
	return 0;
}

/* rmdir in a branch view: ENOTEMPTY unless the view shows nothing in the
 * directory; a folder of the tree becomes a DELETE_FOLDER change. */
static int fs_branch_rmdir(struct fs *fs, const struct fs_node *parent, const char *name)
{
	struct fs_node proto;
	struct hub_revision rev;
	char key[STAGE_REPO_KEY_MAX];
	bool empty, in_tree;
	int rc = fs_branch_child(fs, parent, name, &proto);

	if (rc)
		goto out;
	if (!proto.is_dir || proto.p.kind != FS_PATH_ENTRY) {
		rc = proto.is_dir ? -EBUSY : -ENOTDIR;
		goto out;
	}
	rc = fs_revision(fs, &proto, &rev);
	if (!rc)
		rc = fs_dir_empty(fs, &proto, rev.commit, &empty, &in_tree);
	if (rc)
		goto out;
	if (!empty) {
		rc = -ENOTEMPTY;
		goto out;
	}
	fs_stage_key(&proto, key);
	rc = stage_rmdir(fs->stage, key, proto.p.rev, proto.p.path, rev.commit, in_tree);
	if (rc == 0)
		fs_inode_unhash(fs->inodes, parent->ino, name, proto.fullpath);
out:
	free(proto.fullpath);
	return rc;
}

/* mkdir NS/NAME (datasets/NS/NAME, spaces/NS/NAME): creates the repo on the
 * Hub, private unless --public-repos; its main branch is then writable.
 * Inside a branch view: a directory of the overlay.  Elsewhere: EROFS. */
void fs_mkdir(fuse_req_t req, fuse_ino_t parent_ino, const char *name, mode_t mode)
{
	struct fs *fs = fs_of(req);
	struct fs_node *parent = fs_inode_get(fs->inodes, parent_ino), *n;
	struct fuse_entry_param ep;
	struct fs_node proto;
	struct hub_repo repo;
	int rc;

	(void)mode;
	if (fs_refuse(req, parent))
		return;
	memset(&ep, 0, sizeof(ep));
	if (parent->p.kind == FS_PATH_REPO) { /* a branch (fs_history.c) */
		rc = fs_history_mkbranch(fs, parent, name, &proto);
		if (rc)
			goto out;
		goto made;
	}
	if (parent->p.kind != FS_PATH_NAMESPACE) {
		rc = fs_branch_mkdir(fs, parent, name, &proto);
		if (rc)
			goto out;
		goto made;
	}
	rc = fs_child(fs, parent, name, &proto);
	if (rc == 0) {
		free(proto.fullpath);
		rc = -EEXIST;
		goto out;
	}
	if (rc != -ENOENT)
		goto out;
	if (!fs->stage || fs->offline) {
		rc = -EROFS;
		goto out;
	}
	repo.type = parent->p.type;
	repo.ns = parent->p.ns;
	repo.name = name;
	if (!hub_name_valid(name)) {
		rc = -EINVAL;
		goto out;
	}
	rc = hub_create_repo(fs->http, &repo, !fs->public_repos);
	if (rc) {
		log_msg(LOG_WARNING, "cannot create repo '%s/%s': %s", repo.ns, name,
			strerror(-rc));
		goto out;
	}
	log_msg(LOG_NOTICE, "created %s repo '%s/%s'", fs->public_repos ? "public" : "private",
		repo.ns, name);
	meta_forget_repo(fs->meta, &repo);
	rc = fs_child(fs, parent, name, &proto);
	if (rc)
		goto out;
made:
	n = fs_inode_link(fs->inodes, parent, name, &proto);
	if (!n) {
		rc = -ENOMEM;
		goto out;
	}
	rc = fs_reply_node(req, fs, n);
	if (rc)
		goto out;
	fs_inode_put(fs->inodes, parent);
	return;
out:
	fs_inode_put(fs->inodes, parent);
	fuse_reply_err(req, -rc);
}

/* rmdir of a repo or of a branch or tag is refused: deleting them is not a
 * filesystem operation.
 * Inside a branch view: see fs_branch_rmdir().  Elsewhere: EROFS. */
void fs_rmdir(fuse_req_t req, fuse_ino_t parent_ino, const char *name)
{
	struct fs *fs = fs_of(req);
	struct fs_node *parent = fs_inode_get(fs->inodes, parent_ino);
	int rc = -EROFS;

	if (fs_refuse(req, parent))
		return;
	if (parent->p.kind == FS_PATH_NAMESPACE || parent->p.kind == FS_PATH_REPO) {
		/* a repo, or a branch or tag: not deleted by rmdir */
		struct fs_node proto;

		rc = fs_child(fs, parent, name, &proto);
		if (rc == 0) {
			free(proto.fullpath);
			rc = -EPERM;
		}
	} else if (parent->p.kind >= FS_PATH_REVISION) {
		rc = fs_branch_rmdir(fs, parent, name);
	}
	fs_inode_put(fs->inodes, parent);
	fuse_reply_err(req, -rc);
}

/* The node @name of @parent would be, when @parent is a directory of a
 * branch view.  Returns 0 (the caller frees proto->fullpath), -EROFS, or
 * -errno. */
static int fs_branch_child_at(struct fs *fs, const struct fs_node *parent, const char *name,
			      struct fs_node *proto);

static int fs_branch_child(struct fs *fs, const struct fs_node *parent, const char *name,
			   struct fs_node *proto)
{
	return fs_child_in_view(fs, parent, name, proto, fs_branch_child_at);
}

static int fs_branch_child_at(struct fs *fs, const struct fs_node *parent, const char *name,
			      struct fs_node *proto)
{
	int rc;

	memset(proto, 0, sizeof(*proto));
	if (!fs_is_dir(parent))
		return -ENOTDIR;
	if (parent->p.kind < FS_PATH_REVISION)
		return -EROFS;
	rc = fs_is_branch(fs, parent);
	if (rc <= 0)
		return rc ? rc : -EROFS;
	rc = fs_child_at(fs, parent, name, proto);
	if (rc == -ENOENT) {
		/* a new name: parse it all the same */
		if (asprintf(&proto->fullpath, "%s/%s", parent->fullpath, name) < 0) {
			proto->fullpath = NULL;
			return -ENOMEM;
		}
		rc = fs_path_parse(proto->fullpath, &proto->p);
		if (rc) {
			free(proto->fullpath);
			proto->fullpath = NULL;
			return rc == -ENOENT ? -EINVAL : rc;
		}
		return -ENOENT;
	}
	return rc;
}

void fs_unlink(fuse_req_t req, fuse_ino_t parent_ino, const char *name)
{
	struct fs *fs = fs_of(req);
	struct fs_node *parent = fs_inode_get(fs->inodes, parent_ino);
	struct hub_revision rev;
	struct fs_node proto;
	char key[STAGE_REPO_KEY_MAX];
	int rc;

	if (fs_refuse(req, parent))
		return;
	rc = fs_branch_child(fs, parent, name, &proto);
	if (rc == 0 && proto.is_dir)
		rc = -EISDIR;
	if (rc == 0)
		rc = fs_revision(fs, &proto, &rev);
	if (rc == 0) {
		struct hub_repo repo;
		struct cache_entry e;
		int in_tree;

		fs_repo_of(&proto, &repo);
		fs_stage_key(&proto, key);
		in_tree = meta_lookup(fs->meta, &repo, rev.commit, proto.p.path, &e);
		if (in_tree == 0)
			cache_entry_release(&e);
		/* under a directory made where the tree has a file: only the
		 * overlay has the file, no deletion to journal */
		if (in_tree == -ENOTDIR)
			rc = stage_drop(fs->stage, key, proto.p.rev, proto.p.path);
		else
			rc = stage_unlink(fs->stage, key, proto.p.rev, proto.p.path, rev.commit);
	}
	if (rc == 0)
		fs_inode_unhash(fs->inodes, parent_ino, name, proto.fullpath);
	free(proto.fullpath);
	fs_inode_put(fs->inodes, parent);
	fuse_reply_err(req, -rc);
}

void fs_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
	(void)link;
	fs_no_entry(req, parent, name);
}

#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)
#endif

/* Whether two entry nodes are in the same branch view of the same repo. */
static bool fs_same_view(const struct fs_node *a, const struct fs_node *b)
{
	return a->p.kind == FS_PATH_ENTRY && b->p.kind == FS_PATH_ENTRY && a->p.type == b->p.type &&
	       !strcmp(a->p.ns, b->p.ns) && !strcmp(a->p.repo, b->p.repo) &&
	       !strcmp(a->p.rev, b->p.rev);
}

/* A file under a directory being renamed. */
struct fs_mv_file {
	char *path;		/* in the repo */
	bool staged;		/* the overlay has its content */
	struct cache_entry e;	/* otherwise the tree's entry (e.path NULL) */
};

struct fs_mv_walk {
	struct fs *fs;
	struct hub_repo repo;
	const char *key, *rev, *commit;
	struct fs_mv_file *files;
	size_t n, cap;
	char **dirs; /* to walk */
	size_t ndirs, capdirs;
	const char *dir; /* being walked */
};

static int fs_mv_add(struct fs_mv_walk *w, const char *path, bool staged,
		     const struct cache_entry *e)
{
	struct fs_mv_file *f;

	if (w->n == w->cap) {
		size_t cap = w->cap ? 2 * w->cap : 64;
		struct fs_mv_file *v = realloc(w->files, cap * sizeof(*v));

		if (!v)
			return -ENOMEM;
		w->files = v;
		w->cap = cap;
	}
	f = &w->files[w->n];
	memset(f, 0, sizeof(*f));
	f->path = strdup(path);
	if (!f->path)
		return -ENOMEM;
	f->staged = staged;
	if (e) {
		f->e.size = e->size;
		memcpy(f->e.oid, e->oid, sizeof(f->e.oid));
		memcpy(f->e.sha256, e->sha256, sizeof(f->e.sha256));
	}
	w->n++;
	return 0;
}

static int fs_mv_push(struct fs_mv_walk *w, const char *path)
{
	if (w->ndirs == w->capdirs) {
		size_t cap = w->capdirs ? 2 * w->capdirs : 16;
		char **v = realloc(w->dirs, cap * sizeof(*v));

		if (!v)
			return -ENOMEM;
		w->dirs = v;
		w->capdirs = cap;
	}
	w->dirs[w->ndirs] = strdup(path);
	return w->dirs[w->ndirs++] ? 0 : -ENOMEM;
}

/* A tree entry of the directory walked: what the view shows there. */
static int fs_mv_tree(void *arg, const struct cache_entry *e)
{
	struct fs_mv_walk *w = arg;
	struct stage_stat ss;

	stage_stat(w->fs->stage, w->key, w->rev, e->path, &ss);
	if (ss.what == STAGE_DELETED)
		return 0;
	if (ss.what == STAGE_FILE && !ss.committed)
		return fs_mv_add(w, e->path, true, NULL);
	if (e->is_dir)
		return fs_mv_push(w, e->path);
	return fs_mv_add(w, e->path, false, e);
}

/* A name the overlay adds to the directory walked. */
static int fs_mv_staged(void *arg, const char *name, bool is_dir)
{
	struct fs_mv_walk *w = arg;
	struct cache_entry e;
	char *path;
	int rc;

	if (asprintf(&path, "%s/%s", w->dir, name) < 0)
		return -ENOMEM;
	rc = meta_lookup(w->fs->meta, &w->repo, w->commit, path, &e);
	if (rc == 0) {
		cache_entry_release(&e); /* the tree walk saw it */
	} else if (rc == -ENOENT || rc == -ENOTDIR) {
		rc = is_dir ? fs_mv_push(w, path) : fs_mv_add(w, path, true, NULL);
	}
	free(path);
	return rc;
}

/* Looks again at the source of @f (the overlay committed it, or staged it,
 * since the walk).  Returns 0 or -errno. */
static int fs_mv_refresh(struct fs_mv_walk *w, struct fs_mv_file *f)
{
	struct stage_stat ss;
	struct cache_entry e;
	int rc;

	stage_stat(w->fs->stage, w->key, w->rev, f->path, &ss);
	if (ss.what == STAGE_FILE && !ss.committed) {
		f->staged = true;
		return 0;
	}
	if (ss.what == STAGE_DELETED)
		return -ENOENT;
	rc = meta_lookup(w->fs->meta, &w->repo, w->commit, f->path, &e);
	if ((rc == -ENOENT || rc == -ENOTDIR) && ss.what == STAGE_FILE) {
		/* committed after the commit the walk saw: the overlay reads it */
		f->staged = true;
		return 0;
	}
	if (rc)
		return rc;
	f->staged = false;
	f->e.size = e.size;
	memcpy(f->e.oid, e.oid, sizeof(f->e.oid));
	memcpy(f->e.sha256, e.sha256, sizeof(f->e.sha256));
	cache_entry_release(&e);
	return 0;
}

/* Renames directory @src to @dst (not there: @rd -ENOENT; or there, @rd 0)
 * within one branch view: every file under it is renamed, in ONE commit
 * (the branch is held meanwhile).  A failure half-way leaves the files
 * moved so far under @dst and the rest under @src: nothing is lost. */
static int fs_rename_dir(struct fs *fs, const struct fs_node *src, const struct fs_node *dst,
			 int rd, unsigned int flags)
{
	struct fs_mv_walk w = { .fs = fs };
	struct hub_revision rev;
	char key[STAGE_REPO_KEY_MAX];
	size_t slen = strlen(src->p.path);
	bool empty, in_tree;
	int rc;

	if (src->p.kind != FS_PATH_ENTRY)
		return -EBUSY; /* a revision root */
	if (!strncmp(dst->p.path, src->p.path, slen) && dst->p.path[slen] == '/')
		return -EINVAL; /* into itself */
	if (!strcmp(src->p.path, dst->p.path))
		return 0;
	rc = fs_revision(fs, src, &rev);
	if (rc)
		return rc;
	fs_stage_key(src, key);
	if (rd == 0) {
		if (flags & RENAME_NOREPLACE)
			return -EEXIST;
		if (!dst->is_dir)
			return -ENOTDIR;
		rc = fs_dir_empty(fs, dst, rev.commit, &empty, &in_tree);
		if (rc)
			return rc;
		if (!empty)
			return -ENOTEMPTY;
		/* an empty directory of the tree has its files deleted already */
		if (!in_tree)
			stage_rmdir(fs->stage, key, dst->p.rev, dst->p.path, rev.commit, false);
	}
	fs_repo_of(src, &w.repo);
	w.key = key;
	w.rev = src->p.rev;
	w.commit = rev.commit;
	rc = fs_mv_push(&w, src->p.path);
	while (!rc && w.ndirs) {
		char *dir = w.dirs[--w.ndirs];

		w.dir = dir;
		rc = meta_list(fs->meta, &w.repo, rev.commit, dir, fs_mv_tree, &w);
		if (rc == -ENOENT || rc == -ENOTDIR)
			rc = 0; /* only the overlay has it */
		if (!rc)
			rc = stage_list_dir(fs->stage, key, w.rev, dir, fs_mv_staged, &w);
		free(dir);
	}
	if (!rc)
		rc = stage_hold(fs->stage, key, w.rev);
	if (rc)
		goto out;
	for (size_t i = 0; i < w.n && !rc; i++) {
		struct fs_mv_file *f = &w.files[i];
		struct fs_copy c = { .fs = fs, .n = src, .commit = rev.commit, .path = f->path };
		bool regular = !f->staged && !f->e.sha256[0];
		char *to;

		if (asprintf(&to, "%s%s", dst->p.path, f->path + slen) < 0) {
			rc = -ENOMEM;
			break;
		}
		for (int attempt = 0;; attempt++) {
			c.e = f->e;
			rc = stage_rename(fs->stage, key, w.rev, f->path, to, rev.commit,
					  f->staged ? NULL : f->e.sha256, f->e.size,
					  regular ? fs_copy_in : f->staged ? fs_fill_again : NULL, &c);
			if (rc != -EAGAIN || attempt == 3)
				break;
			/* committed meanwhile (or the reverse): look at it again,
			 * here, since the files before it moved already */
			rc = fs_mv_refresh(&w, f);
			if (rc)
				break;
			regular = !f->staged && !f->e.sha256[0];
		}
		if (rc)
			log_msg(LOG_ERR, "cannot move '%s' to '%s': %s; %zu of %zu files moved",
				f->path, to, strerror(-rc), i, w.n);
		free(to);
	}
	if (!rc)
		rc = stage_dir_moved(fs->stage, key, w.rev, src->p.path, dst->p.path);
	stage_unhold(fs->stage, key, w.rev);
out:
	for (size_t i = 0; i < w.n; i++)
		free(w.files[i].path);
	free(w.files);
	for (size_t i = 0; i < w.ndirs; i++)
		free(w.dirs[i]);
	free(w.dirs);
	return rc;
}

/* One try of fs_rename(): fills @src and @dst (the caller frees their
 * fullpath).  Returns 0, -EAGAIN or -errno. */
static int fs_rename_once(struct fs *fs, const struct fs_node *parent, const char *name,
			  const struct fs_node *newparent, const char *newname, unsigned int flags,
			  struct fs_node *src, struct fs_node *dst)
{
	struct fs_copy c = { .fs = fs };
	struct hub_revision rev;
	struct hub_repo repo;
	char key[STAGE_REPO_KEY_MAX];
	bool have = false;
	int rc, rd;

	rc = fs_branch_child(fs, parent, name, src);
	if (rc)
		return rc;
	rd = fs_branch_child(fs, newparent, newname, dst);
	if (rd && rd != -ENOENT)
		return rd == -EROFS ? -EXDEV : rd;
	if (!fs_same_view(src, dst))
		return -EXDEV;
	if (src->is_dir)
		return fs_rename_dir(fs, src, dst, rd, flags);
	if (rd == 0 && dst->is_dir)
		return -EISDIR;
	if (rd == 0 && (flags & RENAME_NOREPLACE))
		return -EEXIST;
	if (!strcmp(src->p.path, dst->p.path))
		return 0; /* the same file: nothing to do */
	rc = fs_revision(fs, src, &rev);
	if (rc)
		return rc;
	fs_repo_of(src, &repo);
	if (strncmp(src->oid, "staged:", 7) && !src->sha256[0]) {
		/* a regular file of the tree: its content is staged anew */
		rc = meta_lookup(fs->meta, &repo, rev.commit, src->p.path, &c.e);
		if (rc)
			return rc;
		have = true;
		c.n = src;
		c.commit = rev.commit;
		c.path = src->p.path;
	}
	fs_stage_key(src, key);
	rc = stage_rename(fs->stage, key, src->p.rev, src->p.path, dst->p.path, rev.commit,
			  strncmp(src->oid, "staged:", 7) ? src->sha256 : NULL, src->size,
			  have ? fs_copy_in : strncmp(src->oid, "staged:", 7) ? NULL : fs_fill_again,
			  &c);
	if (have)
		cache_entry_release(&c.e);
	return rc;
}

/* Renames a file or a directory within one branch view: ONE commit with
 * the adds and the deletes (stage_rename()).  Across views: EXDEV, so that
 * mv copies. */
void fs_rename(fuse_req_t req, fuse_ino_t parent_ino, const char *name, fuse_ino_t newparent_ino,
	       const char *newname, unsigned int flags)
{
	struct fs *fs = fs_of(req);
	struct fs_node *parent = fs_inode_get(fs->inodes, parent_ino);
	struct fs_node *newparent = fs_inode_get(fs->inodes, newparent_ino);
	struct fs_node src, dst;
	int rc;

	memset(&src, 0, sizeof(src));
	memset(&dst, 0, sizeof(dst));
	if (!parent || !newparent) {
		rc = -ESTALE;
		goto out;
	}
	rc = fs_may_change(req);
	if (rc)
		goto out;
	if (flags & ~(unsigned int)RENAME_NOREPLACE) {
		rc = -EINVAL;
		goto out;
	}
	/* the source may be committed meanwhile (-EAGAIN): look at it again */
	for (int attempt = 0;; attempt++) {
		rc = fs_rename_once(fs, parent, name, newparent, newname, flags, &src, &dst);
		if (rc != -EAGAIN || attempt == 2)
			break;
		free(src.fullpath);
		free(dst.fullpath);
		memset(&src, 0, sizeof(src));
		memset(&dst, 0, sizeof(dst));
	}
	if (rc == 0 && !src.is_dir && strcmp(src.fullpath, dst.fullpath))
		fs_live_changed(fs, &dst, dst.p.path, 0); /* the target has the source's content */
	if (rc == 0 && src.is_dir && strcmp(src.fullpath, dst.fullpath)) {
		/* the kernel keeps the directory's node: lookups in it must
		 * find the new path */
		uint64_t ino = fs_inode_find(fs->inodes, parent_ino, name);

		if (ino && fs_dir_moved(fs, ino, dst.fullpath))
			log_msg(LOG_ERR, "out of memory: '%s' may look empty until --ttl",
				dst.fullpath);
	}
	/* the file keeps its st_ino under the new name; the one it replaced
	 * and a file made at the old name are others */
	if (rc == 0 && strcmp(src.fullpath, dst.fullpath) &&
	    fs_inode_rename(fs->inodes, parent_ino, name, newparent_ino, newname, src.fullpath,
			    dst.fullpath))
		log_msg(LOG_WARNING, "out of memory: '%s' gets a new inode number", dst.fullpath);
out:
	free(src.fullpath);
	free(dst.fullpath);
	fuse_reply_err(req, -rc);
	if (rc == 0 && fs->se) {
		/* the kernel moved its dentry to the old file's node: drop it, so
		 * that the next lookup finds the renamed file (after the reply:
		 * the kernel holds the directory until it has it) */
		int nrc = fuse_lowlevel_notify_inval_entry(fs->se, newparent_ino, newname,
							   strlen(newname));

		if (nrc && nrc != -ENOENT)
			log_msg(LOG_WARNING, "cannot tell the kernel that '%s' was renamed: %s",
				newname, strerror(-nrc));
	}
	fs_inode_put(fs->inodes, parent);
	fs_inode_put(fs->inodes, newparent);
}

void fs_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
	(void)ino;
	fs_no_entry(req, newparent, newname);
}

void fs_create(fuse_req_t req, fuse_ino_t parent_ino, const char *name, mode_t mode,
	       struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct fs_node *parent = fs_inode_get(fs->inodes, parent_ino), *n = NULL;
	struct fuse_entry_param ep;
	struct fs_node proto;
	struct fs_file *f = NULL;
	struct stage_writer *w = NULL;
	int rc;

	if (fs_refuse(req, parent))
		return;
	memset(&ep, 0, sizeof(ep));
	if (!S_ISREG(mode)) {
		rc = -EPERM;
		goto fail;
	}
	rc = fs_branch_child(fs, parent, name, &proto);
	if (rc == 0 && (fi->flags & O_EXCL))
		rc = -EEXIST;
	if (rc == 0 && proto.is_dir)
		rc = -EISDIR;
	if (rc && rc != -ENOENT)
		goto fail_proto;
	/* exists: O_TRUNC decides; new: an empty file */
	w = fs_writer_open(fs, &proto, rc == -ENOENT || (fi->flags & O_TRUNC), &rc);
	free(proto.fullpath);
	proto.fullpath = NULL;
	if (!w)
		goto fail;
	rc = fs_child(fs, parent, name, &proto);
	if (rc)
		goto fail;
	n = fs_inode_link(fs->inodes, parent, name, &proto);
	if (!n) {
		rc = -ENOMEM;
		goto fail;
	}
	rc = fs_stat(fs, n, &ep.attr);
	f = rc ? NULL : fs_file_new(n);
	if (rc || !f) {
		rc = rc ? rc : -ENOMEM;
		fs_inode_forget(fs->inodes, n->ino, 1);
		goto fail;
	}
	f->w = w;
	w = NULL;
	f->append = (fi->flags & O_APPEND) != 0;
	n = NULL;
	__atomic_store_n(&f->node->live, true, __ATOMIC_RELEASE);
	f->path = strdup(f->node->p.path);
	if (!f->path) {
		fs_inode_forget(fs->inodes, f->node->ino, 1);
		rc = -ENOMEM;
		goto fail;
	}
	fs_live_add(fs, f);
	fs_live_changed(fs, f->node, f->path, f->node->ino); /* new or truncated */
	ep.ino = f->node->ino;
	ep.generation = 1;
	ep.attr_timeout = ep.entry_timeout = fs_timeout(fs, f->node);
	fi->fh = fs_handle_add(fs->files, f);
	if (!fi->fh) {
		fs_inode_forget(fs->inodes, f->node->ino, 1);
		rc = -ENOMEM;
		goto fail;
	}
	fi->keep_cache = 0;
	if (fuse_reply_create(req, &ep, fi)) {
		fs_inode_forget(fs->inodes, ep.ino, 1);
		fs_handle_release(fs->files, fi->fh);
	}
	fs_inode_put(fs->inodes, parent);
	return;
fail_proto:
	free(proto.fullpath);
fail:
	if (f)
		fs_file_free(fs, f);
	else if (w)
		stage_writer_close(w);
	fs_inode_put(fs->inodes, n);
	fs_inode_put(fs->inodes, parent);
	fuse_reply_err(req, -rc);
}

void fs_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
		struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct fs_node *n = fs_inode_get(fs->inodes, ino);
	struct fs_file *f = NULL;
	struct stage_writer *w = NULL;
	struct stat st;
	int rc;

	if (fs_refuse(req, n))
		return;
	/* Modes, owners and times: the Hub keeps none of them, so a branch
	 * view accepts any change and keeps nothing (cp -a, rsync -a, tar and
	 * install set them); the reply is the attributes as they are. */
	rc = fs_is_branch(fs, n);
	if (rc <= 0) {
		rc = rc ? rc : -EROFS;
		goto out;
	}
	rc = 0;
	if (!(to_set & FUSE_SET_ATTR_SIZE))
		goto reply;
	if (fs_is_dir(n) || n->p.kind != FS_PATH_ENTRY) {
		rc = -EISDIR;
		goto out;
	}
	if (fi)
		f = fs_handle_get(fs->files, fi->fh);
	if (f && f->w) {
		rc = stage_writer_truncate(f->w, (uint64_t)attr->st_size);
	} else {
		w = fs_writer_open(fs, n, attr->st_size == 0, &rc);
		if (w) {
			rc = stage_writer_truncate(w, (uint64_t)attr->st_size);
			if (stage_writer_close(w) && !rc)
				rc = -EIO;
		}
	}
	if (rc)
		goto out;
	fs_live_changed(fs, n, n->p.path, n->ino); /* the kernel truncated n's pages */
reply:
	rc = fs_stat(fs, n, &st);
	if (!rc)
		fuse_reply_attr(req, &st, fs_timeout(fs, n));
out:
	if (f)
		fs_handle_put(fs->files, fi->fh, f);
	if (rc)
		fuse_reply_err(req, -rc);
	fs_inode_put(fs->inodes, n);
}

/* A boolean xattr value: "1", "0", "true", "false" (a newline may end it). */
static int fs_parse_bool(const char *value, size_t size, bool *out)
{
	if (size > 0 && value[size - 1] == '\n')
		size--;
	if ((size == 1 && value[0] == '1') || (size == 4 && !strncmp(value, "true", 4)))
		*out = true;
	else if ((size == 1 && value[0] == '0') || (size == 5 && !strncmp(value, "false", 5)))
		*out = false;
	else
		return -EINVAL;
	return 0;
}

/* user.hub.resolve on a file or a branch root: "ours" commits the changes
 * in conflict on top of the branch's head, "theirs" drops the staged changes
 * (stage_resolve()). */
static int fs_resolve(struct fs *fs, const struct fs_node *n, const char *value, size_t size)
{
	char key[STAGE_REPO_KEY_MAX];
	const char *path = n->p.kind == FS_PATH_ENTRY ? n->p.path : NULL;
	struct hub_revision rev;
	struct hub_repo repo;
	bool ours;
	int rc;

	if (size > 0 && value[size - 1] == '\n')
		size--;
	if (size == 4 && !strncmp(value, "ours", 4))
		ours = true;
	else if (size == 6 && !strncmp(value, "theirs", 6))
		ours = false;
	else
		return -EINVAL;
	rc = fs_is_branch(fs, n);
	if (rc <= 0)
		return rc ? rc : -EROFS;
	fs_repo_of(n, &repo);
	fs_stage_key(n, key);
	meta_forget_revision(fs->meta, &repo, n->p.rev); /* the head now */
	rc = fs_revision(fs, n, &rev);
	if (!rc)
		rc = stage_resolve(fs->stage, key, n->p.rev, path, ours, rev.commit);
	if (!rc && path)
		fs_committed(fs, key, n->p.rev, &path, 1); /* the content shown changed */
	return rc;
}

/* Settable: user.hub.private of a repo directory (its visibility, through
 * the settings API), user.hub.message of a branch's root (the message of
 * its next commits).  Other hubfs attributes are facts (EPERM); other names
 * have no place to go (ENOTSUP, which cp -a and rsync -X pass over). */
static int fs_set_xattr(struct fs *fs, const struct fs_node *n, const char *name,
			const char *value, size_t size, int flags)
{
	char key[STAGE_REPO_KEY_MAX], msg[STAGE_MESSAGE_MAX + 2], *old;
	struct hub_repo repo;
	bool priv;
	int rc;

	if (n->p.kind == FS_PATH_REPO && !strcmp(name, "user.hub.private")) {
		if (flags & XATTR_CREATE)
			return -EEXIST;
		if (fs_parse_bool(value, size, &priv))
			return -EINVAL;
		if (!fs->stage)
			return -EROFS; /* --offline */
		fs_repo_of(n, &repo);
		rc = hub_set_private(fs->http, &repo, priv);
		if (rc)
			return rc;
		meta_forget_repo(fs->meta, &repo);
		log_msg(LOG_NOTICE, "'%s' is %s now", n->fullpath, priv ? "private" : "public");
		return 0;
	}
	if (n->p.kind == FS_PATH_REVISION && !strcmp(name, "user.hub.message")) {
		rc = fs_is_branch(fs, n);
		if (rc <= 0)
			return rc ? rc : -EROFS;
		if (size > 0 && value[size - 1] == '\n')
			size--;
		if (size > STAGE_MESSAGE_MAX)
			return -E2BIG;
		memcpy(msg, value, size);
		msg[size] = '\0';
		if (!stage_message_valid(msg))
			return -EINVAL;
		fs_stage_key(n, key);
		old = stage_get_message(fs->stage, key, n->p.rev);
		free(old);
		if ((flags & XATTR_CREATE) && old)
			return -EEXIST;
		if ((flags & XATTR_REPLACE) && !old)
			return -ENODATA;
		return stage_set_message(fs->stage, key, n->p.rev, msg);
	}
	if (!strcmp(name, "user.hub.resolve") &&
	    (n->p.kind == FS_PATH_REVISION || (n->p.kind == FS_PATH_ENTRY && !n->is_dir)))
		return fs_resolve(fs, n, value, size);
	if (!strcmp(name, "user.hubfs.commit")) /* hubfs commit (fs_history.c) */
		return fs_history_commit(fs, n, value, size);
	if (!strncmp(name, "user.hub.", 9) || !strncmp(name, "user.hubfs.", 11))
		return -EPERM;
	return -ENOTSUP;
}

void fs_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value, size_t size,
		 int flags)
{
	struct fs *fs = fs_of(req);
	struct fs_node *n = fs_inode_get(fs->inodes, ino);

	if (fs_refuse(req, n))
		return;
	fuse_reply_err(req, -fs_set_xattr(fs, n, name, value, size, flags));
	fs_inode_put(fs->inodes, n);
}

void fs_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	struct fs *fs = fs_of(req);
	struct fs_node *n = fs_inode_get(fs->inodes, ino);
	char key[STAGE_REPO_KEY_MAX], *old;
	int rc;

	if (fs_refuse(req, n))
		return;
	if (n->p.kind == FS_PATH_REVISION && !strcmp(name, "user.hub.message") && fs->stage) {
		fs_stage_key(n, key);
		old = stage_get_message(fs->stage, key, n->p.rev);
		rc = old ? stage_set_message(fs->stage, key, n->p.rev, NULL) : -ENODATA;
		free(old);
	} else if (!strncmp(name, "user.hub.", 9) || !strncmp(name, "user.hubfs.", 11)) {
		rc = -EPERM;
	} else {
		rc = -ENODATA;
	}
	fuse_reply_err(req, -rc);
	fs_inode_put(fs->inodes, n);
}
