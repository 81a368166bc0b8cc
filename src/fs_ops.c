/*
 * FUSE operations: the read side and the operations table.  See fs_ops.h;
 * the writes are in fs_write.c, what both share in fs_internal.h.
 *
 * Every request resolves its inode to a node (a reference held for the
 * request), decides from the node's parsed path what it is, and answers from
 * meta (names, revisions, trees) and the cache (bytes).  Attributes and
 * names are given to the kernel with a timeout of the TTL, or a day for what
 * cannot change (views pinned to a full commit id).  The content of a file
 * of a tree is immutable per inode (see fs_inode.h), so open files keep the
 * kernel's page cache (keep_cache) and mmap works.
 *
 * Reads: a present range is one pread from the blob file into a per-thread
 * buffer and one reply (a copy beat splice on this kind of machine, see
 * MEASUREMENTS.md).  Missing chunks are filled through fetch_fill.  A
 * sequential reader gets a read-ahead window that grows with what it read
 * (FS_READAHEAD_MIN to FS_READAHEAD_MAX), fetched in parallel pieces by
 * fetch's threads.
 *
 * Branch views: lookups, stat, listings and reads of an entry ask the
 * staging overlay (stage.h) before the tree.  A staged file's node gets the
 * oid "staged:N"; once committed, it is answered from the tree.  An open for
 * writing takes the path's writer (fs_writer_open(), in fs_write.c).  A
 * node through which a writer or staged content was opened is "live"
 * (fs_inode.h): its content changes under it, as a local file's does, so
 * its opens drop the kernel's pages (no keep_cache), every handle of it
 * reads the path's staged content as it is now (fs_read_staged()), and
 * changes made through other nodes of the path drop its pages
 * (fs_live_changed()).  The kernel's page cache of a live node thus holds
 * one version, and shared maps of files being written work: a write through
 * a map is written back through the node's writer, and msync commits.  After a rename the kernel names the new path by the old
 * path's inode until its entry expires (and invalidating the entry after the
 * reply races with the kernel's own move of it), so getattr and open of a
 * node whose path was renamed away follow the overlay to where it went
 * (fs_moved()), and lookups in a renamed directory find its new path
 * (fs_dir_view()).
 *
 * Locking: no lock of this file is held across a reply or a call into meta,
 * the cache or the stage.  fs->moves_lock protects the list of renamed
 * directories, fs->notify_lock the session that notifications go to; an
 * open file's lock its read-ahead state.
 */
#include "config.h"

#include "fs_ops.h"
#include "fs_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fs_hfcache.h"
#include "hub_id.h"
#include "log.h"

#define FS_PINNED_TIMEOUT 86400.0
/* Read-ahead of a sequential reader.  The window (bytes queued past the
 * read) is a sixth of what the reader read in sequence plus a chunk, at
 * least FS_READAHEAD_MIN, at most FS_READAHEAD_MAX: a reader that stops (a
 * tensor loaded through a map) has fetched at most a sixth more than it
 * read plus a chunk, and the kernel's own read-ahead and the rounding to
 * chunks stay within 1.25x + 2 MiB with its header read.  It is fetched in
 * pieces of a third of the window, at most FS_PIECE_MAX, so that a GiB costs
 * about 130 range requests.
 *
 * Where range answers wait FS_LATENT or more for their first byte (a far
 * CDN), that window would leave the link idle for most of each round trip:
 * the window is then what hides the wait, FS_LATENCY_SHARE times the bytes
 * one answer moves while a request waits (so that each of the fetch threads'
 * requests spends most of its time moving bytes), at most what the reader
 * read plus FS_LATENT_LEAD: it about doubles per round trip, and a reader
 * that stops costs at most twice what it read plus FS_LATENT_LEAD.  Its
 * pieces are an eighth of it (one per fetch thread), at most
 * FS_LATENT_PIECE_MAX, and it grows to FS_LATENT_MAX: with 50 ms per request
 * and 8 requests in flight, 32 MiB pieces move up to 3 GB/s.  The window
 * lies in the blob file, not in memory: memory stays what the fetch threads
 * hold (a 1 MiB buffer each). */
#define FS_READAHEAD_MIN (2u << 20)
#define FS_READAHEAD_MAX (128u << 20)
#define FS_PIECE_MAX (16u << 20)
#define FS_LATENT 0.010
#define FS_LATENCY_SHARE 32
#define FS_LATENT_LEAD (8u << 20)
#define FS_LATENT_MAX (256u << 20)
#define FS_LATENT_PIECE_MAX (32u << 20)
/* Files up to this size are fetched whole at their first read, so that they
 * are verified before any of their bytes is served. */
#define FS_WHOLE_MAX (8u << 20)

/* An open directory: its whole listing, built at opendir. */
struct fs_dir {
	char *buf;      /* the entries, as fuse_add_direntry() lays them out */
	size_t len, cap;
	size_t *ends;   /* where each entry ends: its offset for readdir */
	size_t n, n_cap;
};

/* Names and attributes under a full commit id never change (in .hf-cache
 * too: snapshots/COMMIT/, trees/COMMIT.json, .no_exist/COMMIT/). */
double fs_timeout(struct fs *fs, const struct fs_node *n)
{
	bool of_commit = n->p.kind >= FS_PATH_REVISION || n->p.kind == FS_PATH_HFC_TREES ||
			 n->p.kind == FS_PATH_HFC_NOEXIST;

	if (of_commit && n->p.pinned && hub_commit_id_valid(n->p.rev, false))
		return FS_PINNED_TIMEOUT;
	return fs->ttl;
}

void fs_repo_of(const struct fs_node *n, struct hub_repo *repo)
{
	repo->type = n->p.type;
	repo->ns = n->p.ns;
	repo->name = n->p.repo;
}

/* Resolves the revision of a node at or below a revision root. */
int fs_revision(struct fs *fs, const struct fs_node *n, struct hub_revision *rev)
{
	struct hub_repo repo;

	fs_repo_of(n, &repo);
	return meta_revision(fs->meta, &repo, n->p.rev, rev);
}

/* The staging key of a node's repo. */
void fs_stage_key(const struct fs_node *n, char key[STAGE_REPO_KEY_MAX])
{
	struct hub_repo repo;

	fs_repo_of(n, &repo);
	stage_repo_key(&repo, key);
}

/* Whether a node at or below a revision root is in a branch view (writable):
 * 1, 0 (a tag, a commit id, a PR ref), or -errno. */
int fs_is_branch(struct fs *fs, const struct fs_node *n)
{
	struct hub_repo repo;
	struct hub_refs refs;
	int rc;

	if (n->p.kind < FS_PATH_REVISION || !fs->stage)
		return 0;
	if (n->p.pinned && hub_commit_id_valid(n->p.rev, false))
		return 0;
	fs_repo_of(n, &repo);
	rc = meta_refs(fs->meta, &repo, &refs);
	if (rc)
		return rc;
	for (size_t i = 0; i < refs.n && rc == 0; i++)
		if (refs.refs[i].kind == HUB_REF_BRANCH && !strcmp(refs.refs[i].name, n->p.rev))
			rc = 1;
	hub_refs_release(&refs);
	return rc;
}

/* What the overlay says of an entry node's path. */
void fs_staged(struct fs *fs, const struct fs_node *n, struct stage_stat *st)
{
	char key[STAGE_REPO_KEY_MAX];

	memset(st, 0, sizeof(*st));
	if (!fs->stage || n->p.kind != FS_PATH_ENTRY)
		return;
	fs_stage_key(n, key);
	stage_stat(fs->stage, key, n->p.rev, n->p.path, st);
}

/* Whether an unpinned revision directory name is one of the repo's refs. */
static int fs_ref_exists(struct fs *fs, const struct fs_path *p)
{
	struct hub_repo repo = { p->type, p->ns, p->repo };
	struct hub_refs refs;
	size_t plen = strlen(p->rev);
	int rc = meta_refs(fs->meta, &repo, &refs);

	if (rc)
		return rc;
	rc = -ENOENT;
	for (size_t i = 0; i < refs.n && rc; i++) {
		const struct hub_ref *r = &refs.refs[i];

		if (p->kind == FS_PATH_REVISION) {
			if (!strcmp(r->name, p->rev))
				rc = 0;
		} else if (p->kind == FS_PATH_REFS) {
			/* "refs", "refs/pr", "refs/convert": a group with members */
			if (!strncmp(r->name, p->rev, plen) && r->name[plen] == '/' &&
			    (r->kind == HUB_REF_PR || r->kind == HUB_REF_CONVERT))
				rc = 0;
		}
	}
	hub_refs_release(&refs);
	return rc;
}

static void fs_fill_stat(struct fs *fs, const struct fs_node *n, int64_t mtime, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = n->st_ino;
	st->st_uid = fs->uid;
	st->st_gid = fs->gid;
	st->st_blksize = FS_MAX_READ;
	if (n->p.kind == FS_PATH_ME) {
		st->st_mode = S_IFLNK | 0777;
		st->st_size = fs->me ? (off_t)strlen(fs->me) : 0;
		st->st_nlink = 1;
	} else if (fs_is_dir(n)) {
		/* above a revision, the subdirectories are not counted (a
		 * listing would cost a request): 1, as the convention for
		 * "not counted" has it; below, fs_stat() counts them */
		st->st_mode = S_IFDIR | 0555;
		st->st_nlink = 1;
		st->st_size = 4096;
	} else {
		st->st_mode = S_IFREG | 0444;
		st->st_nlink = __atomic_load_n(&n->unlinked, __ATOMIC_ACQUIRE) ? 0 : 1;
		st->st_size = (off_t)n->size;
		st->st_blocks = (blkcnt_t)((n->size + 511) / 512);
	}
	st->st_mtim.tv_sec = mtime;
	st->st_atim = st->st_mtim;
	st->st_ctim = st->st_mtim;
}

/* A file node whose path a commit of this mount changed, or a node made for
 * a staged file that is committed now: the node's content may not be the
 * path's any more.  Returns 1 with @e (release it) the path's entry in
 * the tree of the revision now when its content differs from the node's,
 * and that revision's commit in @commit (may be NULL); 0 when it does not;
 * or -errno (-ENOENT: the path is gone). */
static int fs_current(struct fs *fs, const struct fs_node *n, struct cache_entry *e,
		      char commit[41])
{
	struct hub_revision rev;
	struct hub_repo repo;
	bool staged;
	int rc;

	if (n->p.kind != FS_PATH_ENTRY || n->is_dir)
		return 0;
	staged = !strncmp(n->oid, "staged:", 7);
	/* A change made elsewhere shows through a new node once the kernel
	 * looks the name up again (--ttl): this node keeps its content for
	 * who opened it.  A commit of this mount marks the nodes it made
	 * stale at once (fs_committed()). */
	if (!staged && !__atomic_load_n(&n->stale, __ATOMIC_ACQUIRE))
		return 0;
	rc = fs_revision(fs, n, &rev);
	if (rc)
		return staged ? rc : 0; /* no answer: the node's content stands */
	if (!staged && !strcmp(rev.commit, n->commit))
		return 0;
	fs_repo_of(n, &repo);
	rc = meta_lookup(fs->meta, &repo, rev.commit, n->p.path, e);
	if (rc)
		return staged || rc == -ENOENT ? rc : 0;
	if (e->is_dir) {
		cache_entry_release(e);
		return -EISDIR;
	}
	if (!staged && !strcmp(e->oid, n->oid) && !strcmp(e->sha256, n->sha256)) {
		cache_entry_release(e);
		return 0;
	}
	if (commit)
		memcpy(commit, rev.commit, 41);
	return 1;
}

/* Whether @ns is the token's user or one of its organisations (known from
 * whoami at mount: no lookup needed). */
static bool fs_own_namespace(const struct fs *fs, const char *ns)
{
	if (fs->me && !strcmp(ns, fs->me))
		return true;
	for (size_t i = 0; i < fs->orgs.n; i++)
		if (!strcmp(fs->orgs.names[i], ns))
			return true;
	return false;
}

/* Whether the mode of node @n (a child of @parent) shows write permission:
 * what is in a branch view, and the namespaces where mkdir makes repos (the
 * token's user and orgs).  Asked once, when the node is made: an entry is
 * writable when its parent is, so stat(2) of the files of a view costs no
 * lookup of the repo's refs. */
static bool fs_writable(struct fs *fs, const struct fs_node *parent, const struct fs_node *n)
{
	if (!fs->stage)
		return false;
	if (n->p.kind == FS_PATH_ENTRY)
		return parent->writable;
	if (n->p.kind == FS_PATH_NAMESPACE)
		return fs_own_namespace(fs, n->p.ns);
	return n->p.kind >= FS_PATH_REVISION && fs_is_branch(fs, n) == 1;
}

static nlink_t fs_dir_nlink(struct fs *fs, const struct fs_node *n);

/* The attributes of @n now. */
int fs_stat(struct fs *fs, const struct fs_node *n, struct stat *st)
{
	struct hub_revision rev;
	int64_t mtime = fs->mount_time;
	int rc;

	if (n->p.kind == FS_PATH_REVISION) {
		rc = fs_revision(fs, n, &rev);
		if (rc)
			return rc;
		mtime = rev.mtime;
	} else if (n->p.kind == FS_PATH_ENTRY) {
		mtime = __atomic_load_n(&n->mtime, __ATOMIC_RELAXED);
	}
	fs_fill_stat(fs, n, mtime, st);
	if (n->writable)
		st->st_mode |= S_ISDIR(st->st_mode) ? 0755 : 0644;
	if (n->p.kind >= FS_PATH_REVISION && fs_is_dir(n))
		st->st_nlink = __atomic_load_n(&n->unlinked, __ATOMIC_ACQUIRE) ? 0
										: fs_dir_nlink(fs, n);
	if (n->p.kind == FS_PATH_ENTRY && !n->is_dir) {
		struct stage_stat ss;
		struct cache_entry e;

		fs_staged(fs, n, &ss);
		if (ss.what == STAGE_NONE && fs_current(fs, n, &e, NULL) == 1) {
			/* the content changed since the node was made */
			ss.what = STAGE_FILE;
			ss.size = e.size;
			cache_entry_release(&e);
		}
		if (ss.what == STAGE_FILE) {
			st->st_size = (off_t)ss.size;
			st->st_blocks = (blkcnt_t)((ss.size + 511) / 512);
		}
	}
	return 0;
}

/* A directory this mount renamed: node @ino is at @fullpath now. */
struct fs_dir_move {
	uint64_t ino;
	char *fullpath;
	struct fs_dir_move *next;
};

/* Records that directory node @ino is at @fullpath now.  Returns 0 or
 * -ENOMEM. */
int fs_dir_moved(struct fs *fs, uint64_t ino, const char *fullpath)
{
	struct fs_dir_move *m;
	char *copy = strdup(fullpath);
	int rc = 0;

	if (!copy)
		return -ENOMEM;
	pthread_mutex_lock(&fs->moves_lock);
	for (m = fs->moves; m && m->ino != ino; m = m->next)
		;
	if (!m && (m = calloc(1, sizeof(*m))) != NULL) {
		m->ino = ino;
		m->next = fs->moves;
		__atomic_store_n(&fs->moves, m, __ATOMIC_RELEASE);
	}
	if (m) {
		free(m->fullpath);
		m->fullpath = copy;
		copy = NULL;
	} else {
		rc = -ENOMEM;
	}
	pthread_mutex_unlock(&fs->moves_lock);
	free(copy);
	return rc;
}

/* Where this mount moved directory node @ino, or NULL (the caller frees). */
static char *fs_dir_moved_to(struct fs *fs, uint64_t ino)
{
	char *path = NULL;

	pthread_mutex_lock(&fs->moves_lock);
	for (struct fs_dir_move *m = fs->moves; m; m = m->next) {
		if (m->ino == ino) {
			path = strdup(m->fullpath);
			break;
		}
	}
	pthread_mutex_unlock(&fs->moves_lock);
	return path;
}

/* The directory that node @n stands for now: @n itself, or, when this mount
 * renamed @n or a directory above it, @tmp, a copy of @n with the path it
 * has now (the caller frees tmp->fullpath when it gets @tmp back).  On
 * failure (no memory) @n. */
static const struct fs_node *fs_dir_view(struct fs *fs, const struct fs_node *n,
					 struct fs_node *tmp)
{
	struct fs_node *held = NULL, *up;
	const struct fs_node *cur = n;
	char *rel = NULL, *to = NULL, *full = NULL;
	/* the lookup hot path: no lock until this mount renamed a directory */
	if (!__atomic_load_n(&fs->moves, __ATOMIC_ACQUIRE) || n->p.kind != FS_PATH_ENTRY)
		return n;
	for (int depth = 0; depth < HUB_PATH_MAX / 2; depth++) {
		char *r;

		to = fs_dir_moved_to(fs, cur->ino);
		if (to || cur->p.kind != FS_PATH_ENTRY)
			break;
		if (asprintf(&r, "%s%s%s", cur->name, rel ? "/" : "", rel ? rel : "") < 0)
			break;
		free(rel);
		rel = r;
		up = fs_inode_get(fs->inodes, cur->parent);
		fs_inode_put(fs->inodes, held);
		held = up;
		if (!up)
			break;
		cur = up;
	}
	fs_inode_put(fs->inodes, held);
	if (to && asprintf(&full, "%s%s%s", to, rel ? "/" : "", rel ? rel : "") < 0)
		full = NULL;
	free(rel);
	free(to);
	if (!full)
		return n;
	*tmp = *n;
	tmp->fullpath = full;
	if (fs_path_parse(full, &tmp->p)) {
		free(full);
		return n;
	}
	return tmp;
}

/* Counting the subdirectories of a directory of a revision. */
struct fs_nlink {
	struct fs *fs;
	const struct fs_node *dir;
	const char *commit;
	char key[STAGE_REPO_KEY_MAX];
	bool in_tree; /* the tree may have the directory */
	nlink_t n;
};

/* A directory of the tree counts unless the overlay deleted it or made it a
 * file. */
static int fs_nlink_tree(void *arg, const struct cache_entry *e)
{
	struct fs_nlink *c = arg;
	struct stage_stat ss;

	if (!e->is_dir)
		return 0;
	if (c->fs->stage) {
		stage_stat(c->fs->stage, c->key, c->dir->p.rev, e->path, &ss);
		if (ss.what == STAGE_DELETED || ss.what == STAGE_FILE)
			return 0;
	}
	c->n++;
	return 0;
}

/* A directory of the overlay counts unless the tree has a directory there
 * (counted above). */
static int fs_nlink_staged(void *arg, const char *name, bool is_dir)
{
	struct fs_nlink *c = arg;
	struct hub_repo repo;
	struct cache_entry e;
	char *path;
	int rc;

	if (!is_dir)
		return 0;
	if (!c->in_tree) {
		c->n++;
		return 0;
	}
	if (asprintf(&path, "%s%s%s", c->dir->p.path, *c->dir->p.path ? "/" : "", name) < 0)
		return -ENOMEM;
	fs_repo_of(c->dir, &repo);
	rc = meta_lookup(c->fs->meta, &repo, c->commit, path, &e);
	free(path);
	if (rc == 0) {
		if (!e.is_dir)
			c->n++; /* where the tree has a file the overlay deleted */
		cache_entry_release(&e);
		return 0;
	}
	if (rc == -ENOENT || rc == -ENOTDIR) {
		c->n++;
		return 0;
	}
	return rc;
}

/* The link count of directory @n of a revision: 2 and one per subdirectory
 * that its listing shows (opendir's rules).  Counted from a listing the
 * cache index has, never with a request to the Hub (ls -l of a directory
 * would cost one per subdirectory): 1, "not counted", until the directory
 * was listed, and on errors. */
static nlink_t fs_dir_nlink(struct fs *fs, const struct fs_node *n)
{
	struct fs_node tmp;
	const struct fs_node *v = fs_dir_view(fs, n, &tmp); /* renamed? */
	struct fs_nlink c = { .fs = fs, .dir = v, .commit = v->commit, .in_tree = true };
	struct hub_revision rev;
	struct hub_repo repo;
	int rc = 0;

	fs_repo_of(v, &repo);
	fs_stage_key(v, c.key);
	if (v->p.kind == FS_PATH_REVISION || fs->stage) {
		/* a branch view lists the branch's current head */
		rc = fs_revision(fs, v, &rev);
		c.commit = rev.commit;
	}
	/* a directory that only the overlay had when its node was made (no
	 * tree id): the overlay's subdirectories are all there is */
	if (v->p.kind == FS_PATH_ENTRY && !v->oid[0])
		c.in_tree = false;
	if (!rc && c.in_tree)
		rc = meta_list_cached(fs->meta, &repo, c.commit, v->p.path, fs_nlink_tree, &c);
	if ((rc == -ENOENT || rc == -ENOTDIR) && fs->stage)
		rc = 0;
	if (!rc && fs->stage)
		rc = stage_list_dir(fs->stage, c.key, v->p.rev, v->p.path, fs_nlink_staged, &c);
	if (v == &tmp)
		free(tmp.fullpath);
	return rc ? 1 : 2 + c.n;
}

/* Calls @fn with the directory that @parent stands for now (fs_dir_view()). */
int fs_child_in_view(struct fs *fs, const struct fs_node *parent, const char *name,
		     struct fs_node *proto, fs_child_fn fn)
{
	struct fs_node tmp;
	const struct fs_node *v = fs_dir_view(fs, parent, &tmp);
	int rc = fn(fs, v, name, proto);

	if (v == &tmp)
		free(tmp.fullpath);
	return rc;
}

int fs_child(struct fs *fs, const struct fs_node *parent, const char *name, struct fs_node *proto)
{
	return fs_child_in_view(fs, parent, name, proto, fs_child_at);
}

/*
 * A name in a repo's directory that is none of its revisions stands for the
 * file or directory of that name in the repo's default branch ("main" when
 * it has one, else its first branch): the node is NS/REPO/BRANCH/NAME.  So
 * a repo's directory works where a model's directory is expected
 * (from_pretrained("~/hub/NS/REPO"), transformers.js with localModelPath
 * and the repo id); listing it still shows the revisions.
 */

/* The default branch of the repo @repo_dir lists into @out (@size bytes).
 * Returns 0, -ENOENT (none, or one whose name a path would have to
 * %-encode) or -errno. */
static int fs_repo_default_branch(struct fs *fs, const struct fs_node *repo_dir, char *out,
				  size_t size)
{
	struct hub_repo repo;
	struct hub_refs refs;
	const char *pick = NULL;
	int rc;

	fs_repo_of(repo_dir, &repo);
	rc = meta_refs(fs->meta, &repo, &refs);
	if (rc)
		return rc;
	for (size_t i = 0; i < refs.n; i++) {
		const struct hub_ref *r = &refs.refs[i];

		if (r->kind != HUB_REF_BRANCH)
			continue;
		if (!strcmp(r->name, "main")) {
			pick = r->name;
			break;
		}
		if (!pick)
			pick = r->name;
	}
	/* A branch name that needs no %-encoding in a path. */
	rc = pick && strlen(pick) < size && !strpbrk(pick, "/%@") ? 0 : -ENOENT;
	if (!rc)
		strcpy(out, pick);
	hub_refs_release(&refs);
	return rc;
}

/* Makes @proto NS/REPO/BRANCH/@name of the default branch when @name is not
 * a revision of the repo that @parent (FS_PATH_REPO) lists.  Returns 0,
 * -ENOENT (no such revision, and no default branch to fall back on: @proto
 * as it was) or -errno. */
static int fs_repo_default_entry(struct fs *fs, const struct fs_node *parent, const char *name,
				 struct fs_node *proto)
{
	char branch[HUB_REV_MAX + 1], *path;
	struct fs_path p;
	int rc;

	if (parent->p.kind != FS_PATH_REPO || strchr(name, '@'))
		return -ENOENT;
	rc = fs_repo_default_branch(fs, parent, branch, sizeof(branch));
	if (rc)
		return rc;
	if (asprintf(&path, "%s/%s/%s", parent->fullpath, branch, name) < 0)
		return -ENOMEM;
	rc = fs_path_parse(path, &p);
	if (!rc && p.kind != FS_PATH_ENTRY)
		rc = -ENOENT;
	if (rc) {
		free(path);
		return rc;
	}
	free(proto->fullpath);
	proto->fullpath = path;
	rc = fs_path_parse(proto->fullpath, &proto->p); /* its strings point into fullpath */
	return rc;
}

int fs_child_at(struct fs *fs, const struct fs_node *parent, const char *name,
		struct fs_node *proto)
{
	struct hub_revision rev;
	struct hub_repo repo;
	struct cache_entry e;
	bool ref_known = false; /* a revision of the repo, as fs_ref_exists() said */
	int rc;

	memset(proto, 0, sizeof(*proto));
	if (!fs_is_dir(parent))
		return -ENOTDIR;
	if (!strcmp(name, ".") || !strcmp(name, ".."))
		return -ENOENT;
	if (asprintf(&proto->fullpath, "%s%s%s", parent->fullpath, *parent->fullpath ? "/" : "",
		     name) < 0) {
		proto->fullpath = NULL;
		return -ENOMEM;
	}
	rc = fs_path_parse(proto->fullpath, &proto->p);
	/* Not a revision's name (it cannot be, or the repo has no such ref):
	 * maybe a name in the default branch. */
	if ((rc == -ENOENT || rc == -EINVAL) && parent->p.kind == FS_PATH_REPO)
		rc = fs_repo_default_entry(fs, parent, name, proto);
	else if (!rc && proto->p.kind == FS_PATH_REVISION && !proto->p.pinned &&
		 parent->p.kind == FS_PATH_REPO) {
		rc = fs_ref_exists(fs, &proto->p);
		if (rc == -ENOENT)
			rc = fs_repo_default_entry(fs, parent, name, proto);
		else
			ref_known = rc == 0;
	}
	if (rc)
		goto fail;
	fs_repo_of(proto, &repo);
	switch (proto->p.kind) {
	case FS_PATH_ROOT:
		rc = -ENOENT;
		break;
	case FS_PATH_ME:
		rc = fs->me ? 0 : -ENOENT;
		break;
	case FS_PATH_TYPE:
		rc = 0;
		break;
	case FS_PATH_NAMESPACE:
		rc = fs_own_namespace(fs, proto->p.ns) ? 0 : meta_namespace(fs->meta, proto->p.ns);
		break;
	case FS_PATH_REPO: {
		struct hub_refs refs;

		rc = meta_refs(fs->meta, &repo, &refs);
		if (!rc)
			hub_refs_release(&refs);
		break;
	}
	case FS_PATH_REFS:
		rc = fs_ref_exists(fs, &proto->p);
		break;
	case FS_PATH_HFC:
	case FS_PATH_HFC_REPO:
	case FS_PATH_HFC_SNAPSHOTS:
	case FS_PATH_HFC_REF:
	case FS_PATH_HFC_NOEXIST:
	case FS_PATH_HFC_TREES:
		rc = fs_hfcache_child(fs, proto);
		break;
	case FS_PATH_REVISION:
		rc = proto->p.pinned || ref_known ? 0 : fs_ref_exists(fs, &proto->p);
		if (!rc)
			rc = fs_revision(fs, proto, &rev);
		if (!rc)
			memcpy(proto->commit, rev.commit, sizeof(proto->commit));
		proto->is_dir = true;
		break;
	case FS_PATH_ENTRY: {
		struct stage_stat ss;

		rc = fs_revision(fs, proto, &rev);
		if (rc)
			break;
		fs_staged(fs, proto, &ss);
		if (ss.what == STAGE_DELETED) {
			rc = -ENOENT;
			break;
		}
		if (ss.what == STAGE_FILE) {
			/* a staged file: a new node per staged version */
			proto->size = ss.size;
			snprintf(proto->oid, sizeof(proto->oid), "%s", ss.version);
			memcpy(proto->commit, rev.commit, sizeof(proto->commit));
			proto->mtime = (int64_t)time(NULL);
			break;
		}
		rc = meta_lookup(fs->meta, &repo, rev.commit, proto->p.path, &e);
		if (rc == 0 && ss.what == STAGE_DIR && !e.is_dir) {
			/* a directory made where the tree has a file the
			 * overlay deleted: the directory is what the view has */
			cache_entry_release(&e);
			rc = -ENOENT;
		}
		/* the parent is a directory of the view: where the tree has a
		 * file above the path, the overlay made a directory of it */
		if (rc == -ENOTDIR)
			rc = -ENOENT;
		if (rc == -ENOENT && ss.what == STAGE_DIR) {
			proto->is_dir = true;
			memcpy(proto->commit, rev.commit, sizeof(proto->commit));
			proto->mtime = rev.mtime;
			rc = 0;
			break;
		}
		if (rc)
			break;
		proto->is_dir = e.is_dir;
		proto->size = e.size;
		memcpy(proto->oid, e.oid, sizeof(proto->oid));
		memcpy(proto->sha256, e.sha256, sizeof(proto->sha256));
		memcpy(proto->commit, rev.commit, sizeof(proto->commit));
		proto->mtime = rev.mtime;
		cache_entry_release(&e);
		break;
	}
	}
	if (!rc) {
		proto->writable = fs_writable(fs, parent, proto);
		return 0;
	}
fail:
	free(proto->fullpath);
	proto->fullpath = NULL;
	return rc;
}

/* Replies to a lookup (or mkdir) with the node @n that fs_inode_link() just
 * returned, and drops the request's reference to it.  Returns 0 once
 * replied; on -errno nothing was replied and the lookup of @n is undone. */
int fs_reply_node(fuse_req_t req, struct fs *fs, struct fs_node *n)
{
	struct fuse_entry_param ep;
	int rc;

	memset(&ep, 0, sizeof(ep));
	rc = fs_stat(fs, n, &ep.attr);
	if (rc) {
		fs_inode_forget(fs->inodes, n->ino, 1);
		fs_inode_put(fs->inodes, n);
		return rc;
	}
	ep.ino = n->ino;
	ep.generation = 1;
	ep.attr_timeout = ep.entry_timeout = fs_timeout(fs, n);
	if (fuse_reply_entry(req, &ep))
		fs_inode_forget(fs->inodes, n->ino, 1);
	fs_inode_put(fs->inodes, n);
	return 0;
}

static void fs_lookup(fuse_req_t req, fuse_ino_t parent_ino, const char *name)
{
	struct fs *fs = fs_of(req);
	struct fs_node *parent = fs_inode_get(fs->inodes, parent_ino), *n;
	struct fuse_entry_param ep;
	struct fs_node proto;
	int rc;

	if (!parent) {
		fuse_reply_err(req, ESTALE);
		return;
	}
	memset(&ep, 0, sizeof(ep));
	rc = fs_child(fs, parent, name, &proto);
	if (rc == -ENOENT) {
		/* A negative entry, cached by the kernel for the TTL. */
		ep.entry_timeout = fs_timeout(fs, parent);
		fuse_reply_entry(req, &ep);
		goto out;
	}
	if (rc) {
		fuse_reply_err(req, -rc);
		goto out;
	}
	n = fs_inode_link(fs->inodes, parent, name, &proto);
	if (!n) {
		fuse_reply_err(req, ENOMEM);
		goto out;
	}
	rc = fs_reply_node(req, fs, n);
	if (rc)
		fuse_reply_err(req, -rc);
out:
	fs_inode_put(fs->inodes, parent);
}

static void fs_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	fs_inode_forget(fs_of(req)->inodes, ino, nlookup);
	fuse_reply_none(req);
}

static void fs_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	struct fs *fs = fs_of(req);

	for (size_t i = 0; i < count; i++)
		fs_inode_forget(fs->inodes, forgets[i].ino, forgets[i].nlookup);
	fuse_reply_none(req);
}

/* Whether the tree of @n's revision now has @n's path (errors count as
 * yes: the node stands). */
static bool fs_path_in_tree(struct fs *fs, const struct fs_node *n)
{
	struct hub_revision rev;
	struct hub_repo repo;
	struct cache_entry e;
	int rc;

	if (fs_revision(fs, n, &rev))
		return true;
	fs_repo_of(n, &repo);
	rc = meta_lookup(fs->meta, &repo, rev.commit, n->p.path, &e);
	if (rc == 0)
		cache_entry_release(&e);
	return rc != -ENOENT && rc != -ENOTDIR;
}

/* What the kernel may still call @n: after a rename, it names the new path
 * by the old path's inode until its entry expires; the overlay knows where
 * the old path went, and once that is committed the inode table.  Returns 1 with @proto the node of the new path (the
 * caller frees proto->fullpath), 0 when @n was not renamed away, or -errno. */
static int fs_moved(struct fs *fs, const struct fs_node *n, struct fs_node *proto)
{
	char key[STAGE_REPO_KEY_MAX], *path = NULL, *full = NULL, *slash;
	struct stage_stat *ss;
	struct fs_node parent;
	size_t prefix;
	int rc = 0;

	if (n->p.kind != FS_PATH_ENTRY || n->is_dir || !fs->stage)
		return 0;
	ss = malloc(sizeof(*ss));
	if (!ss)
		return -ENOMEM;
	fs_stage_key(n, key);
	stage_stat(fs->stage, key, n->p.rev, n->p.path, ss);
	/* follow a file renamed more than once, a few hops */
	for (int hop = 0; hop < 8 && ss->what == STAGE_DELETED && ss->moved_to[0]; hop++) {
		free(path);
		path = strdup(ss->moved_to);
		if (!path) {
			rc = -ENOMEM;
			goto out;
		}
		stage_stat(fs->stage, key, n->p.rev, path, ss);
	}
	if (!path && ss->what != STAGE_FILE && ss->what != STAGE_DIR) {
		/* once the move is committed the overlay forgets it, but the
		 * kernel may still name the new path by this node: the inode
		 * table remembers where this mount renamed it (unless the file
		 * is back at the node's path) */
		full = fs_inode_renamed_to(fs->inodes, n->ino);
		if (!full || fs_path_in_tree(fs, n))
			goto out;
	} else if (!path) {
		goto out;
	} else {
		prefix = (size_t)(n->p.path - n->fullpath);
		if (asprintf(&full, "%.*s%s", (int)prefix, n->fullpath, path) < 0) {
			full = NULL;
			rc = -ENOMEM;
			goto out;
		}
	}
	slash = strrchr(full, '/');
	if (!slash) {
		rc = -ENOENT;
		goto out;
	}
	*slash = '\0';
	memset(&parent, 0, sizeof(parent));
	parent.fullpath = full;
	parent.is_dir = true;
	parent.writable = n->writable;
	rc = fs_path_parse(full, &parent.p);
	if (!rc)
		rc = fs_child(fs, &parent, slash + 1, proto);
	if (!rc)
		rc = 1;
out:
	free(full);
	free(path);
	free(ss);
	return rc;
}

static void fs_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct fs_node *n = fs_inode_get(fs->inodes, ino);
	struct fs_node moved;
	struct stat st;
	uint64_t size;
	int rc;

	if (!n) {
		fuse_reply_err(req, ESTALE);
		return;
	}
	(void)fi; /* NULL for fstat(2) too */
	rc = fs_moved(fs, n, &moved);
	if (rc == 1) {
		rc = fs_stat(fs, &moved, &st);
		st.st_ino = n->st_ino;
		free(moved.fullpath);
	} else if (rc == 0) {
		rc = fs_stat(fs, n, &st);
	}
	if (!rc && __atomic_load_n(&n->unlinked, __ATOMIC_ACQUIRE) && !fs_is_dir(n) &&
	    fs_live_size(fs, n, &size)) {
		/* fstat(2) of an unlinked file: what its open files have */
		st.st_size = (off_t)size;
		st.st_blocks = (blkcnt_t)((size + 511) / 512);
	}
	if (rc)
		fuse_reply_err(req, -rc);
	else
		fuse_reply_attr(req, &st, fs_timeout(fs, n));
	fs_inode_put(fs->inodes, n);
}

static void fs_readlink(fuse_req_t req, fuse_ino_t ino)
{
	struct fs *fs = fs_of(req);
	struct fs_node *n = fs_inode_get(fs->inodes, ino);

	if (!n) {
		fuse_reply_err(req, ESTALE);
		return;
	}
	if (n->p.kind == FS_PATH_ME && fs->me)
		fuse_reply_readlink(req, fs->me);
	else
		fuse_reply_err(req, EINVAL);
	fs_inode_put(fs->inodes, n);
}

/* ---- directories ---- */

static void fs_dir_free(struct fs_dir *d)
{
	free(d->buf);
	free(d->ends);
	free(d);
}

static int fs_dir_add(fuse_req_t req, struct fs_dir *d, const char *name, mode_t type)
{
	/* glibc hides entries whose inode number is 0 */
	struct stat st = { .st_mode = type, .st_ino = 0xffffffffu };
	size_t need = fuse_add_direntry(req, NULL, 0, name, NULL, 0);

	if (d->len + need > d->cap) {
		size_t cap = d->cap ? d->cap : 4096;
		char *b;

		while (cap < d->len + need)
			cap *= 2;
		b = realloc(d->buf, cap);
		if (!b)
			return -ENOMEM;
		d->buf = b;
		d->cap = cap;
	}
	if (d->n == d->n_cap) {
		size_t ncap = d->n_cap ? 2 * d->n_cap : 64;
		size_t *e = realloc(d->ends, ncap * sizeof(*e));

		if (!e)
			return -ENOMEM;
		d->ends = e;
		d->n_cap = ncap;
	}
	fuse_add_direntry(req, d->buf + d->len, need, name, &st, (off_t)(d->len + need));
	d->len += need;
	d->ends[d->n++] = d->len;
	return 0;
}

/* Adds @name unless it was added already (listings are small here). */
static int fs_dir_add_unique(fuse_req_t req, struct fs_dir *d, const char *name, char ***seen,
			     size_t *n_seen)
{
	char **s;

	for (size_t i = 0; i < *n_seen; i++)
		if (!strcmp((*seen)[i], name))
			return 0;
	s = realloc(*seen, (*n_seen + 1) * sizeof(char *));
	if (!s)
		return -ENOMEM;
	*seen = s;
	s[*n_seen] = strdup(name);
	if (!s[*n_seen])
		return -ENOMEM;
	(*n_seen)++;
	return fs_dir_add(req, d, name, S_IFDIR);
}

static int fs_list_namespaces(fuse_req_t req, struct fs *fs, struct fs_dir *d, bool root)
{
	struct hub_names seen_ns;
	char **seen = NULL;
	size_t n_seen = 0;
	int rc = 0;

	if (root) {
		if (fs->me)
			rc = fs_dir_add(req, d, FS_PATH_ME_NAME, S_IFLNK);
		if (!rc)
			rc = fs_dir_add_unique(req, d, "datasets", &seen, &n_seen);
		if (!rc)
			rc = fs_dir_add_unique(req, d, "spaces", &seen, &n_seen);
		if (!rc)
			rc = fs_dir_add_unique(req, d, FS_PATH_HFC_NAME, &seen, &n_seen);
	}
	if (!rc && fs->me)
		rc = fs_dir_add_unique(req, d, fs->me, &seen, &n_seen);
	for (size_t i = 0; !rc && i < fs->orgs.n; i++)
		rc = fs_dir_add_unique(req, d, fs->orgs.names[i], &seen, &n_seen);
	if (!rc && meta_seen_namespaces(fs->meta, &seen_ns) == 0) {
		for (size_t i = 0; !rc && i < seen_ns.n; i++)
			rc = fs_dir_add_unique(req, d, seen_ns.names[i], &seen, &n_seen);
		hub_names_release(&seen_ns);
	}
	for (size_t i = 0; i < n_seen; i++)
		free(seen[i]);
	free(seen);
	return rc;
}

static int fs_list_refs(fuse_req_t req, struct fs *fs, const struct fs_node *n, struct fs_dir *d)
{
	struct hub_repo repo;
	struct hub_refs refs;
	char **seen = NULL;
	size_t n_seen = 0;
	int rc;

	fs_repo_of(n, &repo);
	rc = meta_refs(fs->meta, &repo, &refs);
	if (rc)
		return rc;
	for (size_t i = 0; !rc && i < refs.n; i++) {
		const struct hub_ref *r = &refs.refs[i];
		char *name = NULL;

		if (n->p.kind == FS_PATH_REPO) {
			if (r->kind == HUB_REF_BRANCH || r->kind == HUB_REF_TAG) {
				/* "feature/x" is listed as "feature%2Fx" */
				name = strchr(r->name, '/') || !strncmp(r->name, "refs", 4)
					       ? hub_revision_encode(r->name)
					       : strdup(r->name);
			} else {
				name = strdup("refs");
			}
		} else if (!strcmp(n->p.rev, "refs")) {
			if (r->kind == HUB_REF_PR || r->kind == HUB_REF_CONVERT)
				name = strdup(r->kind == HUB_REF_PR ? "pr" : "convert");
		} else {
			size_t plen = strlen(n->p.rev);

			if ((r->kind == HUB_REF_PR || r->kind == HUB_REF_CONVERT) &&
			    !strncmp(r->name, n->p.rev, plen) && r->name[plen] == '/')
				name = strdup(r->name + plen + 1);
		}
		if (name)
			rc = fs_dir_add_unique(req, d, name, &seen, &n_seen);
		free(name);
	}
	hub_refs_release(&refs);
	for (size_t i = 0; i < n_seen; i++)
		free(seen[i]);
	free(seen);
	return rc;
}

struct fs_tree_list {
	fuse_req_t req;
	struct fs_dir *d;
	struct fs *fs;
	const struct fs_node *n;
	const char *commit;
	char key[STAGE_REPO_KEY_MAX];
};

static int fs_tree_entry(void *arg, const struct cache_entry *e)
{
	struct fs_tree_list *l = arg;
	const char *name = strrchr(e->path, '/');
	struct stage_stat ss;

	bool is_dir = e->is_dir;

	if (l->fs->stage) {
		stage_stat(l->fs->stage, l->key, l->n->p.rev, e->path, &ss);
		if (ss.what == STAGE_DELETED)
			return 0;
		/* the overlay's kind wins: a file made where a folder was
		 * removed, a directory made where a file was unlinked */
		if (ss.what == STAGE_FILE || ss.what == STAGE_DIR)
			is_dir = ss.what == STAGE_DIR;
	}
	return fs_dir_add(l->req, l->d, name ? name + 1 : e->path, is_dir ? S_IFDIR : S_IFREG);
}

/* A name the overlay adds to a listing, unless the tree has it already. */
static int fs_staged_entry(void *arg, const char *name, bool is_dir)
{
	struct fs_tree_list *l = arg;
	struct hub_repo repo;
	struct cache_entry e;
	char *path;
	int rc;

	if (asprintf(&path, "%s%s%s", l->n->p.path, *l->n->p.path ? "/" : "", name) < 0)
		return -ENOMEM;
	fs_repo_of(l->n, &repo);
	rc = meta_lookup(l->fs->meta, &repo, l->commit, path, &e);
	free(path);
	if (rc == 0) {
		cache_entry_release(&e);
		return 0;
	}
	if (rc != -ENOENT && rc != -ENOTDIR) /* ENOTDIR: a file of the tree above */
		return rc;
	return fs_dir_add(l->req, l->d, name, is_dir ? S_IFDIR : S_IFREG);
}

/* Stops a listing at its first entry. */
static int fs_stop(void *arg, const struct cache_entry *e)
{
	(void)arg;
	(void)e;
	return 1;
}

struct fs_hfcache_dir {
	fuse_req_t req;
	struct fs_dir *d;
};

static int fs_hfcache_dir_add(void *arg, const char *name, bool is_dir)
{
	struct fs_hfcache_dir *hd = arg;

	return fs_dir_add(hd->req, hd->d, name, is_dir ? S_IFDIR : S_IFREG);
}

static void fs_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct fs_node *n = fs_inode_get(fs->inodes, ino);
	struct fs_dir *d;
	int rc = 0;

	if (!n) {
		fuse_reply_err(req, ESTALE);
		return;
	}
	if (!fs_is_dir(n)) {
		rc = -ENOTDIR;
		goto out;
	}
	d = calloc(1, sizeof(*d));
	if (!d) {
		rc = -ENOMEM;
		goto out;
	}
	rc = fs_dir_add(req, d, ".", S_IFDIR);
	if (!rc)
		rc = fs_dir_add(req, d, "..", S_IFDIR);
	if (rc)
		goto listed;
	switch (n->p.kind) {
	case FS_PATH_ROOT:
	case FS_PATH_TYPE:
		rc = fs_list_namespaces(req, fs, d, n->p.kind == FS_PATH_ROOT);
		break;
	case FS_PATH_NAMESPACE: {
		struct hub_names repos;

		rc = meta_repos(fs->meta, n->p.type, n->p.ns, &repos);
		for (size_t i = 0; !rc && i < repos.n; i++)
			rc = fs_dir_add(req, d, repos.names[i], S_IFDIR);
		if (repos.names)
			hub_names_release(&repos);
		break;
	}
	case FS_PATH_REPO:
	case FS_PATH_REFS:
		rc = fs_list_refs(req, fs, n, d);
		break;
	case FS_PATH_HFC:
	case FS_PATH_HFC_REPO:
	case FS_PATH_HFC_SNAPSHOTS:
	case FS_PATH_HFC_REF:
	case FS_PATH_HFC_NOEXIST:
	case FS_PATH_HFC_TREES: {
		struct fs_hfcache_dir hd = { req, d };

		rc = fs_hfcache_list(fs, n, fs_hfcache_dir_add, &hd);
		break;
	}
	case FS_PATH_REVISION:
	case FS_PATH_ENTRY: {
		struct fs_node tmp;
		const struct fs_node *v = fs_dir_view(fs, n, &tmp); /* renamed? */
		struct fs_tree_list l = { .req = req, .d = d, .fs = fs, .n = v };
		struct hub_repo repo;
		struct hub_revision rev;
		const char *commit = v->commit;
		bool fresh;

		fs_repo_of(v, &repo);
		fs_stage_key(v, l.key);
		if (v->p.kind == FS_PATH_REVISION || fs->stage) {
			/* a branch view lists the branch's current head */
			rc = fs_revision(fs, v, &rev);
			commit = rev.commit;
		}
		l.commit = commit;
		/* listed for the first time: the kernel's attributes of the
		 * directory have an uncounted link count (fs_dir_nlink()) */
		fresh = !rc && meta_list_cached(fs->meta, &repo, commit, v->p.path, fs_stop,
						NULL) == -ENODATA;
		if (!rc)
			rc = meta_list(fs->meta, &repo, commit, v->p.path, fs_tree_entry, &l);
		if (!rc && fresh)
			fs_live_inval(fs, n->ino);
		if ((rc == -ENOENT || rc == -ENOTDIR) && fs->stage)
			rc = 0; /* a directory that only staged files make */
		if (!rc && fs->stage)
			rc = stage_list_dir(fs->stage, l.key, v->p.rev, v->p.path, fs_staged_entry, &l);
		if (v == &tmp)
			free(tmp.fullpath);
		break;
	}
	case FS_PATH_ME:
		rc = -ENOTDIR;
		break;
	}
listed:
	if (rc) {
		fs_dir_free(d);
		goto out;
	}
	fi->fh = fs_handle_add(fs->dirs, d);
	if (!fi->fh) {
		fs_dir_free(d);
		rc = -ENOMEM;
		goto out;
	}
	if (fuse_reply_open(req, fi))
		fs_handle_release(fs->dirs, fi->fh);
out:
	if (rc)
		fuse_reply_err(req, -rc);
	fs_inode_put(fs->inodes, n);
}

static void fs_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct fs_dir *d = fs_handle_get(fs->dirs, fi->fh);
	size_t lo = 0, hi, start, end;

	(void)ino;
	if (!d) {
		fuse_reply_err(req, EBADF);
		return;
	}
	if (off < 0 || (size_t)off >= d->len) {
		fuse_reply_buf(req, NULL, 0);
		fs_handle_put(fs->dirs, fi->fh, d);
		return;
	}
	/* @off is the end of the last entry given: find the entry after it */
	start = (size_t)off;
	hi = d->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (d->ends[mid] <= start)
			lo = mid + 1;
		else
			hi = mid;
	}
	end = start;
	while (lo < d->n && d->ends[lo] - start <= size)
		end = d->ends[lo++];
	fuse_reply_buf(req, d->buf + start, end - start);
	fs_handle_put(fs->dirs, fi->fh, d);
}

static void fs_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	fs_handle_release(fs_of(req)->dirs, fi->fh);
	fuse_reply_err(req, 0);
}

/* ---- files ---- */

void fs_file_free(struct fs *fs, struct fs_file *f)
{
	fs_live_remove(fs, f);
	free(f->path);
	free(f->content);
	if (f->w && stage_writer_close(f->w))
		log_msg(LOG_ERR, "'%s': the last writes could not be journaled", f->node->fullpath);
	if (f->fd >= 0)
		close(f->fd);
	cache_blob_put(f->blob);
	fetch_source_unref(f->src);
	fs_inode_put(fs->inodes, f->node);
	pthread_mutex_destroy(&f->lock);
	free(f);
}

struct fs_file *fs_file_new(struct fs_node *n)
{
	struct fs_file *f = calloc(1, sizeof(*f));

	if (!f)
		return NULL;
	pthread_mutex_init(&f->lock, NULL);
	f->fd = -1;
	f->node = n;
	return f;
}

static void fs_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct fs_node *n = fs_inode_get(fs->inodes, ino);
	struct fs_file *f = NULL;
	struct hub_repo repo;
	struct stage_stat ss;
	const char *id, *commit;
	char *url = NULL;
	struct cache_entry e;
	bool writing;
	struct fs_node moved;
	const struct fs_node *v = n; /* what is opened: @n, or where it moved */
	char cur[41];
	size_t len;
	int rc = 0;

	memset(&e, 0, sizeof(e));
	memset(&moved, 0, sizeof(moved));
	if (!n) {
		fuse_reply_err(req, ESTALE);
		return;
	}
	rc = fs_moved(fs, n, &moved);
	if (rc < 0)
		goto fail;
	if (rc == 1)
		v = &moved;
	rc = 0;
	writing = (fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC);
	if (fs_hfcache_is_file(n)) {
		/* a file of .hf-cache: its content is the node's, read-only
		 * but for a ref written again as it is */
		rc = writing ? fs_may_change(req) : 0;
		if (!rc)
			rc = fs_hfcache_may_open(n, fi->flags);
		if (rc)
			goto fail;
		f = fs_file_new(n);
		if (!f) {
			rc = -ENOMEM;
			goto fail;
		}
		n = NULL;
		rc = fs_hfcache_content(fs, f->node, &f->content, &len);
		if (rc)
			goto fail;
		f->size = len;
		f->rewrite = writing;
		fi->keep_cache = !writing;
		goto opened;
	}
	if (fs_is_dir(n) || n->p.kind != FS_PATH_ENTRY) {
		rc = -EISDIR;
		goto fail;
	}
	if (writing) {
		rc = fs_may_change(req);
		if (rc)
			goto fail;
		rc = fs_is_branch(fs, n);
		if (rc <= 0) {
			rc = rc ? rc : -EROFS;
			goto fail;
		}
		rc = 0;
	}
	f = fs_file_new(n);
	if (!f) {
		rc = -ENOMEM;
		goto fail;
	}
	n = NULL;
	if (writing) {
		f->w = fs_writer_open(fs, v, (fi->flags & O_TRUNC) != 0, &rc);
		if (!f->w)
			goto fail;
		f->append = (fi->flags & O_APPEND) != 0;
		__atomic_store_n(&f->node->live, true, __ATOMIC_RELEASE);
		goto opened;
	}
	fs_staged(fs, v, &ss);
	if (ss.what == STAGE_DELETED) {
		rc = -ENOENT;
		goto fail;
	}
	if (ss.what == STAGE_FILE)
		__atomic_store_n(&f->node->live, true, __ATOMIC_RELEASE);
	if (ss.what == STAGE_FILE && ss.from[0]) {
		/* an LFS file moved by reference: the old path's content */
		f->size = ss.size;
		if (f->size > 0) {
			fs_repo_of(v, &repo);
			url = hub_resolve_url(fs->http, &repo, ss.base, ss.from);
			f->blob = cache_blob_get(fs->cache, ss.sha256, f->size, &rc);
			if (!f->blob)
				goto fail;
			f->src = url ? fetch_source_new(fs->fetch, &repo, url, ss.sha256, f->size) : NULL;
			if (!f->src) {
				rc = -ENOMEM;
				goto fail;
			}
			free(url);
			url = NULL;
		}
		goto opened;
	}
	if (ss.what == STAGE_FILE) {
		char key[STAGE_REPO_KEY_MAX];

		fs_stage_key(v, key);
		f->fd = stage_open_read(fs->stage, key, v->p.rev, v->p.path);
		if (f->fd >= 0)
			goto opened;
		if (f->fd != -ENOENT) {
			rc = f->fd;
			goto fail;
		}
		f->fd = -1; /* committed meanwhile: read the tree */
	}
	id = v->sha256[0] ? v->sha256 : v->oid;
	commit = v->commit;
	f->size = v->size;
	fi->keep_cache = 1;
	rc = fs_current(fs, v, &e, cur);
	if (rc < 0)
		goto fail;
	if (rc == 1) {
		/* the path's content changed since the node was made (an
		 * overwrite committed): the kernel's pages of the node are old */
		id = e.sha256[0] ? e.sha256 : e.oid;
		commit = cur;
		f->size = e.size;
		fi->keep_cache = 0;
	}
	rc = 0;
	if (f->size > 0) {
		fs_repo_of(v, &repo);
		url = hub_resolve_url(fs->http, &repo, commit, v->p.path);
		f->blob = cache_blob_get(fs->cache, id, f->size, &rc);
		if (!f->blob)
			goto fail;
		f->src = url ? fetch_source_new(fs->fetch, &repo, url, id, f->size) : NULL;
		if (!f->src) {
			rc = -ENOMEM;
			goto fail;
		}
	}
	cache_entry_release(&e);
	free(url);
	url = NULL;
opened:
	if (__atomic_load_n(&f->node->live, __ATOMIC_ACQUIRE)) {
		/* the path's staged content: its pages may be older than it
		 * (written through another node), and it changes under the
		 * node (through its pages: fs_live_changed() for the rest) */
		fi->keep_cache = 0;
	}
	if (f->node->writable && f->node->p.kind == FS_PATH_ENTRY) {
		f->path = strdup(v->p.path);
		if (!f->path) {
			rc = -ENOMEM;
			goto fail;
		}
		fs_live_add(fs, f);
		if (f->w && (fi->flags & O_TRUNC))
			fs_live_changed(fs, v, v->p.path, f->node->ino);
	}
	fi->fh = fs_handle_add(fs->files, f);
	if (!fi->fh) {
		rc = -ENOMEM;
		goto fail;
	}
	if (fuse_reply_open(req, fi))
		fs_handle_release(fs->files, fi->fh);
	free(moved.fullpath);
	return;
fail:
	free(moved.fullpath);
	cache_entry_release(&e);
	free(url);
	if (f)
		fs_file_free(fs, f);
	fs_inode_put(fs->inodes, n);
	fuse_reply_err(req, rc < 0 ? -rc : EIO);
}

static bool fs_interrupted(void *arg)
{
	return fuse_req_interrupted(arg);
}

/* Each FUSE thread's read buffer, freed when the thread ends. */
static pthread_key_t fs_buf_key;
static pthread_once_t fs_buf_once = PTHREAD_ONCE_INIT;

static void fs_buf_key_init(void)
{
	pthread_key_create(&fs_buf_key, free);
}

static char *fs_read_buffer(void)
{
	char *buf;

	pthread_once(&fs_buf_once, fs_buf_key_init);
	buf = pthread_getspecific(fs_buf_key);
	if (!buf) {
		/* Page-aligned: the kernel copies file pages into it several
		 * times faster than into malloc's buffer, 16 bytes into a page. */
		buf = aligned_alloc(4096, FS_MAX_READ);
		if (buf && pthread_setspecific(fs_buf_key, buf)) {
			free(buf);
			buf = NULL;
		}
	}
	return buf;
}

/* Reads the staged content that the path of @f has now (a handle of a live
 * node: see fs_inode.h).  Returns the bytes read, -ENOENT when the overlay
 * has no file there, or -errno. */
static ssize_t fs_read_staged(struct fs *fs, const struct fs_file *f, char *buf, size_t size,
			      off_t off)
{
	char key[STAGE_REPO_KEY_MAX];
	ssize_t n;
	int fd;

	if (!fs->stage)
		return -ENOENT;
	fs_stage_key(f->node, key);
	fd = stage_open_read(fs->stage, key, f->node->p.rev, f->path);
	if (fd < 0)
		return fd;
	n = pread(fd, buf, size, off);
	if (n < 0)
		n = -errno;
	close(fd);
	return n;
}

/* What a sequential reader of @f, whose read ends at @end, gets queued:
 * whole pieces from where the queued read-ahead ends up to the window's end
 * (nothing when less than a piece is missing, unless the file ends there).
 * Called with f->lock held. */
static void fs_readahead_plan(struct fs_file *f, uint64_t end, uint64_t chunk, double wait,
			      double rate, uint64_t *from, uint64_t *len, uint64_t *piece)
{
	uint64_t window = f->run / 6 + chunk, pmax = FS_PIECE_MAX, p, stop;
	unsigned share = 3;

	if (window > FS_READAHEAD_MAX)
		window = FS_READAHEAD_MAX;
	if (wait >= FS_LATENT && rate > 0) {
		double hide = FS_LATENCY_SHARE * rate * wait;
		uint64_t lead = f->run + FS_LATENT_LEAD;
		uint64_t w = hide < (double)lead ? (uint64_t)hide : lead;

		if (w > window) {
			window = w < FS_LATENT_MAX ? w : FS_LATENT_MAX;
			pmax = FS_LATENT_PIECE_MAX;
			share = 8;
		}
	}
	if (window < FS_READAHEAD_MIN)
		window = FS_READAHEAD_MIN;
	p = window / share < pmax ? window / share : pmax;
	p = p > chunk ? p - p % chunk : chunk;
	if (f->ahead < end) /* the reader overtook it (or it starts now) */
		f->ahead = (end + chunk - 1) / chunk * chunk;
	stop = end + window < f->size ? end + window : f->size;
	if (f->ahead >= stop)
		return;
	if (stop - f->ahead < p && stop < f->size)
		return;
	*from = f->ahead;
	*len = stop - f->ahead;
	if (stop < f->size)
		*len -= *len % p;
	*piece = p;
	f->ahead += *len;
}

static void fs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct fs_file *f = fs_handle_get(fs->files, fi->fh);
	struct fetch_call call = { .cancel = fs_interrupted, .cancel_arg = req };
	/* Offline, only what is cached (or in a blob source) can be read. */
	cache_fill_fn fill = fetch_filler(fs->fetch);
	uint64_t end, ra_from = 0, ra_len = 0, ra_piece = 0;
	double wait = 0, rate = 0;
	char *buf;
	ssize_t n;

	(void)ino;
	if (!f) {
		fuse_reply_err(req, EBADF);
		return;
	}
	call.src = f->src;
	if (off < 0) {
		fuse_reply_err(req, EINVAL);
		goto out;
	}
	if (f->content) {
		/* a file of .hf-cache, made at open */
		if ((uint64_t)off >= f->size)
			size = 0;
		else if (size > f->size - (uint64_t)off)
			size = (size_t)(f->size - (uint64_t)off);
		fuse_reply_buf(req, size ? f->content + off : NULL, size);
		goto out;
	}
	if (f->w || f->fd >= 0 || (f->path && __atomic_load_n(&f->node->live, __ATOMIC_ACQUIRE))) {
		/* staged content: what the path has now, so that the node's
		 * pages, which every handle of the node shares, never mix
		 * versions; once the overlay has nothing there (unlinked,
		 * renamed, committed), what the handle opened */
		if (size > FS_MAX_READ)
			size = FS_MAX_READ;
		buf = fs_read_buffer();
		if (!buf) {
			fuse_reply_err(req, ENOMEM);
			goto out;
		}
		if (f->w) {
			n = stage_writer_read(f->w, buf, size, (uint64_t)off);
		} else {
			/* an unlinked or replaced file is not the path's any more */
			n = f->path && !__atomic_load_n(&f->node->unlinked, __ATOMIC_ACQUIRE)
				    ? fs_read_staged(fs, f, buf, size, off)
				    : -ENOENT;
			if (n == -ENOENT && f->fd >= 0) {
				n = pread(f->fd, buf, size, off);
				if (n < 0)
					n = -errno;
			}
		}
		if (n != -ENOENT || f->w || f->fd >= 0) {
			if (n < 0)
				fuse_reply_err(req, (int)-n);
			else
				fuse_reply_buf(req, buf, (size_t)n);
			goto out;
		}
	}
	if (!f->blob || (uint64_t)off >= f->size) {
		fuse_reply_buf(req, NULL, 0);
		goto out;
	}
	if (size > FS_MAX_READ)
		size = FS_MAX_READ;
	buf = fs_read_buffer();
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		goto out;
	}
	end = (uint64_t)off + size;
	if (fill && !cache_blob_complete(f->blob))
		fetch_link(fs->fetch, &wait, &rate);
	pthread_mutex_lock(&f->lock);
	f->run = (uint64_t)off == f->next_off ? f->run + size : size;
	/* Read-ahead starts with the third sequential request: the kernel's own
	 * read-ahead of a small read (a safetensors header) stays unanswered. */
	if (f->run > 2 * FS_MAX_READ)
		fs_readahead_plan(f, end, cache_chunk_size(fs->cache), wait, rate, &ra_from, &ra_len,
				  &ra_piece);
	else if (f->run == size)
		f->ahead = 0;
	f->next_off = end;
	pthread_mutex_unlock(&f->lock);
	if (ra_len && fill)
		fetch_readahead(fs->fetch, f->blob, f->src, ra_from, ra_len, ra_piece);

	if (f->size <= FS_WHOLE_MAX && !cache_blob_complete(f->blob)) {
		n = cache_blob_prefetch(f->blob, 0, f->size, fill, &call);
		if (n < 0)
			goto fail;
	}
	n = cache_blob_read(f->blob, buf, size, (uint64_t)off, fill, &call);
fail:
	if (n == -ENODATA) {
		log_msg(LOG_NOTICE, "offline: '%s' is not cached", f->node->fullpath);
		n = -EIO;
	}
	if (n < 0) {
		fuse_reply_err(req, (int)-n);
	} else {
		fuse_reply_buf(req, buf, (size_t)n);
		/* after the reply: the reader does not wait for the hash */
		cache_blob_read_done(f->blob, buf, (size_t)n, (uint64_t)off);
	}
out:
	fs_handle_put(fs->files, fi->fh, f);
}

/* ---- extended attributes ---- */

/* Whether the repo of node @n is private, as its default branch's info
 * says ("main", else its first branch). */
static int fs_repo_private(struct fs *fs, const struct fs_node *n, bool *priv)
{
	struct hub_revision rev;
	struct hub_repo repo;
	struct hub_refs refs;
	int rc;

	fs_repo_of(n, &repo);
	rc = meta_revision(fs->meta, &repo, "main", &rev);
	if (rc == -ENOENT) {
		rc = meta_refs(fs->meta, &repo, &refs);
		if (rc)
			return rc;
		rc = -ENODATA;
		for (size_t i = 0; i < refs.n && rc == -ENODATA; i++)
			if (refs.refs[i].kind == HUB_REF_BRANCH)
				rc = meta_revision(fs->meta, &repo, refs.refs[i].name, &rev);
		hub_refs_release(&refs);
	}
	if (!rc)
		*priv = rev.private;
	return rc;
}

/* The value of attribute @name of @n into @buf (size @size); returns the
 * length, or -ENODATA. */
static int fs_xattr(struct fs *fs, const struct fs_node *n, const char *name, char *buf, size_t size)
{
	struct hub_revision rev;
	struct hub_repo repo;
	char *url;
	int len;

	/* the mount's own facts, for hubfs status and hubfs umount */
	if (n->p.kind == FS_PATH_ROOT && !strcmp(name, "user.hubfs.cache_dir") && fs->cache_dir)
		return snprintf(buf, size, "%s", fs->cache_dir);
	if (n->p.kind == FS_PATH_ROOT && !strcmp(name, "user.hubfs.pid"))
		return snprintf(buf, size, "%ld", (long)getpid());
	/* where the token came from, so hubfs log asks as the mount does: the
	 * file's own permissions decide who may read it */
	if (n->p.kind == FS_PATH_ROOT && !strcmp(name, "user.hubfs.token_file") && fs->token_file)
		return snprintf(buf, size, "%s", fs->token_file);
	/* where a node is, for hubfs log and hubfs commit (fs_history.c) */
	len = fs_history_xattr(fs, n, name, buf, size);
	if (len != -ENODATA)
		return len;
	if (n->p.kind == FS_PATH_REPO && !strcmp(name, "user.hub.private")) {
		bool priv;
		int rc = fs_repo_private(fs, n, &priv);

		return rc ? rc : snprintf(buf, size, "%d", priv);
	}
	if (n->p.kind == FS_PATH_REVISION && !strcmp(name, "user.hub.message")) {
		char key[STAGE_REPO_KEY_MAX], *m;

		if (!fs->stage)
			return -ENODATA;
		fs_stage_key(n, key);
		m = stage_get_message(fs->stage, key, n->p.rev);
		if (!m)
			return -ENODATA;
		len = snprintf(buf, size, "%s", m);
		free(m);
		return len;
	}
	if (n->p.kind == FS_PATH_REVISION && !strcmp(name, "user.hub.commit")) {
		int rc = fs_revision(fs, n, &rev);

		return rc ? rc : snprintf(buf, size, "%s", rev.commit);
	}
	if (n->p.kind != FS_PATH_ENTRY)
		return -ENODATA;
	if (!strcmp(name, "user.hub.commit"))
		return snprintf(buf, size, "%s", n->commit);
	if (!strcmp(name, "user.hub.oid"))
		return snprintf(buf, size, "%s", n->oid);
	if (n->is_dir)
		return -ENODATA;
	if (!strcmp(name, "user.hub.lfs"))
		return snprintf(buf, size, "%d", n->sha256[0] != '\0');
	if (!strcmp(name, "user.hub.sha256") && n->sha256[0])
		return snprintf(buf, size, "%s", n->sha256);
	if (!strcmp(name, "user.hub.url")) {
		fs_repo_of(n, &repo);
		url = hub_resolve_url(fs->http, &repo, n->commit, n->p.path);
		if (!url)
			return -ENOMEM;
		len = snprintf(buf, size, "%s", url);
		free(url);
		return len;
	}
	return -ENODATA;
}

static void fs_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	struct fs *fs = fs_of(req);
	struct fs_node *n = fs_inode_get(fs->inodes, ino);
	char buf[8192];
	int len;

	if (!n) {
		fuse_reply_err(req, ESTALE);
		return;
	}
	len = fs_xattr(fs, n, name, buf, sizeof(buf));
	if (len < 0)
		fuse_reply_err(req, -len);
	else if ((size_t)len >= sizeof(buf))
		fuse_reply_err(req, E2BIG);
	else if (size == 0)
		fuse_reply_xattr(req, (size_t)len);
	else if (size < (size_t)len)
		fuse_reply_err(req, ERANGE);
	else
		fuse_reply_buf(req, buf, (size_t)len);
	fs_inode_put(fs->inodes, n);
}

static void fs_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	static const char *const names[] = { "user.hub.commit",	     "user.hub.oid",
					     "user.hub.lfs",	     "user.hub.sha256",
					     "user.hub.url",	     "user.hub.private",
					     "user.hub.message",     "user.hubfs.cache_dir",
					     "user.hubfs.pid",	     "user.hub.repo",
					     "user.hub.revision",    "user.hub.path",
					     "user.hubfs.endpoint",  "user.hubfs.token_file" };
	struct fs *fs = fs_of(req);
	struct fs_node *n = fs_inode_get(fs->inodes, ino);
	char list[256], buf[8192];
	size_t len = 0;

	if (!n) {
		fuse_reply_err(req, ESTALE);
		return;
	}
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (fs_xattr(fs, n, names[i], buf, sizeof(buf)) < 0)
			continue;
		memcpy(list + len, names[i], strlen(names[i]) + 1);
		len += strlen(names[i]) + 1;
	}
	if (size == 0)
		fuse_reply_xattr(req, len);
	else if (size < len)
		fuse_reply_err(req, ERANGE);
	else
		fuse_reply_buf(req, list, len);
	fs_inode_put(fs->inodes, n);
}

/* ---- after a commit ---- */

struct fs_commit_match {
	const char *repo, *branch;
	const char *const *paths;
	size_t n;
};

static bool fs_commit_matches(void *arg, const struct fs_node *node)
{
	const struct fs_commit_match *cm = arg;
	char key[STAGE_REPO_KEY_MAX];

	if (node->p.kind != FS_PATH_ENTRY || strcmp(node->p.rev, cm->branch))
		return false;
	fs_stage_key(node, key);
	if (strcmp(key, cm->repo))
		return false;
	for (size_t i = 0; i < cm->n; i++) {
		size_t len = strlen(cm->paths[i]);

		if (!strncmp(node->p.path, cm->paths[i], len) &&
		    (node->p.path[len] == '\0' || node->p.path[len] == '/'))
			return true;
	}
	return false;
}

void fs_committed(void *arg, const char *repo, const char *branch, const char *const *paths,
		  size_t n)
{
	struct fs *fs = arg;
	struct fs_commit_match cm = { repo, branch, paths, n };
	uint64_t *inos;
	size_t k;

	if (fs_inodes_collect(fs->inodes, fs_commit_matches, &cm, &inos, &k))
		return;
	/* Invalidating an inode waits for no request of ours (unlike an entry,
	 * whose parent directory the kernel may hold locked during fsyncdir),
	 * so holding notify_lock meanwhile is safe. */
	for (size_t i = 0; i < k; i++) {
		struct fs_node *node = fs_inode_get(fs->inodes, inos[i]);

		if (node)
			__atomic_store_n(&node->stale, true, __ATOMIC_RELEASE);
		fs_inode_put(fs->inodes, node);
	}
	pthread_mutex_lock(&fs->notify_lock);
	for (size_t i = 0; fs->se && i < k; i++)
		fuse_lowlevel_notify_inval_inode(fs->se, inos[i], 0, 0);
	pthread_mutex_unlock(&fs->notify_lock);
	free(inos);
}

/* ---- the rest ---- */

static void fs_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct statvfs sv;

	(void)ino;
	memset(&sv, 0, sizeof(sv));
	sv.f_bsize = FS_MAX_READ;
	sv.f_frsize = 4096;
	sv.f_namemax = HUB_PATH_COMPONENT_MAX;
	sv.f_flag = ST_NOSUID | ST_NODEV;
	fuse_reply_statfs(req, &sv);
}

static void fs_access(fuse_req_t req, fuse_ino_t ino, int mask)
{
	struct fs *fs = fs_of(req);
	struct fs_node *n;
	int rc = 0;

	if (mask & W_OK) {
		n = fs_inode_get(fs->inodes, ino);
		if (!n) {
			fuse_reply_err(req, ESTALE);
			return;
		}
		rc = fs_is_branch(fs, n);
		rc = rc < 0 ? rc : rc ? 0 : -EROFS;
		fs_inode_put(fs->inodes, n);
	}
	fuse_reply_err(req, -rc);
}

static void fs_init(void *userdata, struct fuse_conn_info *conn)
{
	(void)userdata;
	conn->max_read = FS_MAX_READ;
	conn->max_readahead = FS_MAX_READ;
	/* Writes of 1 MiB too (the default is 128 KiB): cp runs at ~230 MB/s
	 * with 128 KiB requests. */
	conn->max_write = FS_MAX_READ;
	/* A file's attributes may change date without its content changing:
	 * keep its pages (content is immutable per inode). */
	conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
	/* Synchronous reads: the kernel's read-ahead requests are then ones a
	 * signal can interrupt (background requests are not), so an
	 * interrupted reader gets EINTR instead of waiting for the network.
	 * hubfs reads ahead on its own threads. */
	conn->want &= ~FUSE_CAP_ASYNC_READ;
}

static void fs_dir_free_cb(void *ctx, void *obj)
{
	(void)ctx;
	fs_dir_free(obj);
}

static void fs_file_free_cb(void *ctx, void *obj)
{
	fs_file_free(ctx, obj);
}

int fs_handles_init(struct fs *fs)
{
	pthread_mutex_init(&fs->notify_lock, NULL); /* lives as long as fs */
	pthread_mutex_init(&fs->moves_lock, NULL);
	fs->dirs = fs_handles_new(fs_dir_free_cb, fs);
	fs->files = fs_handles_new(fs_file_free_cb, fs);
	if (!fs->dirs || !fs->files)
		return -ENOMEM;
	return fs_live_init(fs);
}

void fs_set_session(struct fs *fs, struct fuse_session *se)
{
	pthread_mutex_lock(&fs->notify_lock);
	fs->se = se;
	pthread_mutex_unlock(&fs->notify_lock);
}

void fs_handles_release(struct fs *fs)
{
	pthread_mutex_lock(&fs->moves_lock);
	while (fs->moves) {
		struct fs_dir_move *m = fs->moves;

		fs->moves = m->next;
		free(m->fullpath);
		free(m);
	}
	pthread_mutex_unlock(&fs->moves_lock);
	fs_handles_free(fs->dirs);
	fs_handles_free(fs->files);
	fs->dirs = fs->files = NULL;
	fs_live_release(fs);
}

const struct fuse_lowlevel_ops fs_ops = {
	.init = fs_init,
	.lookup = fs_lookup,
	.forget = fs_forget,
	.forget_multi = fs_forget_multi,
	.getattr = fs_getattr,
	.readlink = fs_readlink,
	.opendir = fs_opendir,
	.readdir = fs_readdir,
	.releasedir = fs_releasedir,
	.open = fs_open,
	.read = fs_read,
	.write = fs_write,
	.fallocate = fs_fallocate,
	.flush = fs_flush,
	.release = fs_release,
	.fsync = fs_fsync,
	.fsyncdir = fs_fsyncdir,
	.getxattr = fs_getxattr,
	.listxattr = fs_listxattr,
	.statfs = fs_statfs,
	.access = fs_access,
	.mknod = fs_mknod,
	.mkdir = fs_mkdir,
	.unlink = fs_unlink,
	.rmdir = fs_rmdir,
	.symlink = fs_symlink,
	.rename = fs_rename,
	.link = fs_link,
	.create = fs_create,
	.setattr = fs_setattr,
	.setxattr = fs_setxattr,
	.removexattr = fs_removexattr,
};
