/*
 * The mount as huggingface_hub's cache.  See fs_hfcache.h.
 *
 * What huggingface_hub does with a cache (its file_download.py and
 * _snapshot_download.py), and why each piece is here:
 * - hf_hub_download() of a branch or tag asks the Hub (HEAD), then finds
 *   snapshots/COMMIT/PATH present and returns it; it then reads refs/NAME and
 *   writes it only when its content differs (in a try, as the cache may be
 *   read-only).  Of a commit id it returns snapshots/COMMIT/PATH before any
 *   request.  Offline (HF_HUB_OFFLINE=1) it reads refs/NAME for the commit.
 * - A file the Hub does not have: it checks .no_exist/COMMIT/PATH and
 *   creates it when absent (logging an error when it cannot), so the layout
 *   answers that the file is there: its absence is a fact of the commit.
 * - snapshot_download() reads trees/COMMIT.json (the commit's files, which
 *   it otherwise lists from the Hub and then tries to write there), and
 *   writes refs/NAME without reading it first (a warning when it cannot):
 *   the same bytes again pass (fs_hfcache_rewrite()).
 * - mkdir with exist_ok of refs/, snapshots/COMMIT/...: the kernel answers
 *   EEXIST for a directory that is there, before asking the mount.
 *
 * No state of its own: repos and refs come from meta (cached per --ttl),
 * trees from meta per commit, the listing of .hf-cache from the inode table.
 */
#include "config.h"

#include "fs_hfcache.h"
#include "fs_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hub_id.h"

/* Files of a commit beyond which trees/COMMIT.json is not offered (the
 * library then lists the tree itself): it is made at each lookup and open,
 * some 500 bytes a file in memory while it is made (150 in the JSON). */
#define FS_HFCACHE_TREE_MAX 100000

/* Names a listing gave already: listings here are small (refs, commits). */
struct fs_hfcache_seen {
	char **names;
	size_t n;
};

/* Calls @add for @name (length @len) unless it was added before. */
static int fs_hfcache_add_once(struct fs_hfcache_seen *s, const char *name, size_t len,
			       bool is_dir, fs_hfcache_add_fn add, void *arg)
{
	char **names;
	char *copy;

	for (size_t i = 0; i < s->n; i++)
		if (strlen(s->names[i]) == len && !memcmp(s->names[i], name, len))
			return 0;
	copy = strndup(name, len);
	if (!copy)
		return -ENOMEM;
	names = realloc(s->names, (s->n + 1) * sizeof(*names));
	if (!names) {
		free(copy);
		return -ENOMEM;
	}
	s->names = names;
	s->names[s->n++] = copy;
	return add(arg, copy, is_dir);
}

static void fs_hfcache_seen_release(struct fs_hfcache_seen *s)
{
	for (size_t i = 0; i < s->n; i++)
		free(s->names[i]);
	free(s->names);
}

/* Whether ref name @name is below @prefix ("" or "refs/pr"): then *@rest is
 * the part after "PREFIX/". */
static bool fs_hfcache_below(const char *name, const char *prefix, const char **rest)
{
	size_t plen = strlen(prefix);

	if (!plen) {
		*rest = name;
		return true;
	}
	if (strncmp(name, prefix, plen) || name[plen] != '/')
		return false;
	*rest = name + plen + 1;
	return true;
}

/* refs/NAME: a ref file, a directory of ref names, or a short commit id. */
static int fs_hfcache_ref(struct fs *fs, struct fs_node *proto)
{
	struct hub_repo repo;
	struct hub_refs refs;
	struct hub_revision rev;
	const char *rest;
	int rc;

	fs_repo_of(proto, &repo);
	rc = meta_refs(fs->meta, &repo, &refs);
	if (rc)
		return rc;
	if (!proto->p.rev[0]) {
		proto->is_dir = true; /* refs/ itself */
		goto out;
	}
	rc = -ENOENT;
	for (size_t i = 0; i < refs.n && rc; i++) {
		const struct hub_ref *r = &refs.refs[i];

		if (!strcmp(r->name, proto->p.rev)) {
			memcpy(proto->commit, r->commit, sizeof(proto->commit));
			proto->size = strlen(proto->commit);
			rc = 0;
		} else if (fs_hfcache_below(r->name, proto->p.rev, &rest)) {
			proto->is_dir = true; /* "refs" of refs/refs/pr/1 */
			rc = 0;
		}
	}
	if (rc == -ENOENT && hub_commit_id_valid(proto->p.rev, true)) {
		/* huggingface_hub keeps the short ids it was given as refs */
		rc = meta_revision(fs->meta, &repo, proto->p.rev, &rev);
		if (!rc) {
			memcpy(proto->commit, rev.commit, sizeof(proto->commit));
			proto->size = strlen(proto->commit);
		}
	}
out:
	hub_refs_release(&refs);
	return rc;
}

/* .no_exist/COMMIT/PATH: there when COMMIT has no PATH. */
static int fs_hfcache_noexist(struct fs *fs, struct fs_node *proto)
{
	struct hub_repo repo;
	struct hub_revision rev;
	struct cache_entry e;
	int rc;

	proto->is_dir = true;
	if (!proto->p.rev[0])
		return 0; /* .no_exist/ itself */
	fs_repo_of(proto, &repo);
	rc = meta_revision(fs->meta, &repo, proto->p.rev, &rev); /* a commit of the repo? */
	if (rc || !*proto->p.path)
		return rc;
	memcpy(proto->commit, rev.commit, sizeof(proto->commit));
	rc = meta_lookup(fs->meta, &repo, rev.commit, proto->p.path, &e);
	if (rc == 0) {
		/* a directory of the tree holds what it does not have; a
		 * file of the tree exists, so it has no .no_exist entry */
		rc = e.is_dir ? 0 : -ENOENT;
		cache_entry_release(&e);
		return rc;
	}
	if (rc == -ENOTDIR)
		return -ENOENT; /* below a file: reached only through it */
	if (rc == -ENOENT) {
		proto->is_dir = false;
		proto->size = 0;
		return 0;
	}
	return rc;
}

/* The files of a commit, gathered for its trees/COMMIT.json. */
struct fs_hfcache_file {
	char *path;
	uint64_t size;
	char oid[41];
	char sha256[65];
};

struct fs_hfcache_tree {
	struct fs_hfcache_file *files;
	size_t n, cap;
	char **dirs; /* directories still to list */
	size_t n_dirs, cap_dirs;
};

static int fs_hfcache_tree_entry(void *arg, const struct cache_entry *e)
{
	struct fs_hfcache_tree *t = arg;

	if (e->is_dir) {
		if (t->n_dirs == t->cap_dirs) {
			size_t cap = t->cap_dirs ? 2 * t->cap_dirs : 16;
			char **d = realloc(t->dirs, cap * sizeof(*d));

			if (!d)
				return -ENOMEM;
			t->dirs = d;
			t->cap_dirs = cap;
		}
		t->dirs[t->n_dirs] = strdup(e->path);
		return t->dirs[t->n_dirs++] ? 0 : -ENOMEM;
	}
	if (t->n == FS_HFCACHE_TREE_MAX)
		return -EFBIG;
	if (t->n == t->cap) {
		size_t cap = t->cap ? 2 * t->cap : 64;
		struct fs_hfcache_file *f = realloc(t->files, cap * sizeof(*f));

		if (!f)
			return -ENOMEM;
		t->files = f;
		t->cap = cap;
	}
	t->files[t->n].path = strdup(e->path);
	if (!t->files[t->n].path)
		return -ENOMEM;
	t->files[t->n].size = e->size;
	snprintf(t->files[t->n].oid, sizeof(t->files[t->n].oid), "%s", e->oid);
	snprintf(t->files[t->n].sha256, sizeof(t->files[t->n].sha256), "%s", e->sha256);
	t->n++;
	return 0;
}

static int fs_hfcache_file_cmp(const void *a, const void *b)
{
	const struct fs_hfcache_file *x = a, *y = b;

	/* bytes of UTF-8 sort as Python sorts the code points */
	return strcmp(x->path, y->path);
}

/* The JSON of trees/COMMIT.json: every file of @commit, sorted by path. */
static int fs_hfcache_tree_json(struct fs *fs, const struct hub_repo *repo, const char *commit,
				char **out)
{
	struct fs_hfcache_tree t = { 0 };
	struct hub_tree_file *files = NULL;
	char *dir = strdup("");
	int rc = dir ? 0 : -ENOMEM;

	/* A stack of the directories still to list, not a listing inside
	 * another's callback: the depth of a tree costs no C stack. */
	while (!rc && dir) {
		rc = meta_list(fs->meta, repo, commit, dir, fs_hfcache_tree_entry, &t);
		free(dir);
		dir = t.n_dirs ? t.dirs[--t.n_dirs] : NULL;
	}
	free(dir);
	if (!rc) {
		qsort(t.files, t.n, sizeof(*t.files), fs_hfcache_file_cmp);
		files = calloc(t.n ? t.n : 1, sizeof(*files));
		rc = files ? 0 : -ENOMEM;
	}
	for (size_t i = 0; !rc && i < t.n; i++) {
		files[i].path = t.files[i].path;
		files[i].size = t.files[i].size;
		files[i].oid = t.files[i].oid;
		files[i].sha256 = t.files[i].sha256;
	}
	if (!rc) {
		*out = hub_tree_cache_json(files, t.n);
		rc = *out ? 0 : -ENOMEM;
	}
	free(files);
	for (size_t i = 0; i < t.n; i++)
		free(t.files[i].path);
	free(t.files);
	for (size_t i = 0; i < t.n_dirs; i++)
		free(t.dirs[i]);
	free(t.dirs);
	return rc;
}

int fs_hfcache_content(struct fs *fs, const struct fs_node *n, char **out, size_t *len)
{
	struct hub_repo repo;
	int rc = 0;

	if (n->p.kind == FS_PATH_HFC_TREES) {
		fs_repo_of(n, &repo);
		rc = fs_hfcache_tree_json(fs, &repo, n->p.rev, out);
	} else {
		*out = strdup(n->p.kind == FS_PATH_HFC_REF ? n->commit : "");
		if (!*out)
			rc = -ENOMEM;
	}
	if (!rc)
		*len = strlen(*out);
	return rc;
}

/* trees/COMMIT.json: there for any commit of the repo not too big. */
static int fs_hfcache_trees(struct fs *fs, struct fs_node *proto)
{
	struct hub_repo repo;
	struct hub_revision rev;
	char *json;
	int rc;

	if (!proto->p.rev[0]) {
		proto->is_dir = true;
		return 0;
	}
	fs_repo_of(proto, &repo);
	rc = meta_revision(fs->meta, &repo, proto->p.rev, &rev);
	if (rc)
		return rc;
	memcpy(proto->commit, rev.commit, sizeof(proto->commit));
	rc = fs_hfcache_tree_json(fs, &repo, rev.commit, &json);
	if (rc == -EFBIG)
		return -ENOENT; /* the library lists the tree itself */
	if (rc)
		return rc;
	proto->size = strlen(json);
	free(json);
	return 0;
}

int fs_hfcache_child(struct fs *fs, struct fs_node *proto)
{
	struct hub_repo repo;
	struct hub_refs refs;
	int rc;

	switch (proto->p.kind) {
	case FS_PATH_HFC:
	case FS_PATH_HFC_SNAPSHOTS: /* its repo was looked up as its parent */
		return 0;
	case FS_PATH_HFC_REPO:
		fs_repo_of(proto, &repo);
		rc = meta_refs(fs->meta, &repo, &refs);
		if (!rc)
			hub_refs_release(&refs);
		return rc;
	case FS_PATH_HFC_REF:
		return fs_hfcache_ref(fs, proto);
	case FS_PATH_HFC_NOEXIST:
		return fs_hfcache_noexist(fs, proto);
	case FS_PATH_HFC_TREES:
		return fs_hfcache_trees(fs, proto);
	default:
		return -ENOENT;
	}
}

static bool fs_hfcache_is_repo(void *arg, const struct fs_node *n)
{
	(void)arg;
	return n->p.kind == FS_PATH_HFC_REPO;
}

/* .hf-cache/: the repo folders the kernel holds. */
static int fs_hfcache_list_root(struct fs *fs, struct fs_hfcache_seen *s, fs_hfcache_add_fn add,
				void *arg)
{
	uint64_t *inos;
	size_t n;
	int rc = fs_inodes_collect(fs->inodes, fs_hfcache_is_repo, NULL, &inos, &n);

	if (rc)
		return rc;
	for (size_t i = 0; !rc && i < n; i++) {
		struct fs_node *node = fs_inode_get(fs->inodes, inos[i]);

		if (!node)
			continue;
		rc = fs_hfcache_add_once(s, node->name, strlen(node->name), true, add, arg);
		fs_inode_put(fs->inodes, node);
	}
	free(inos);
	return rc;
}

/* refs/ or a directory of ref names, snapshots/, trees/: from the repo's
 * refs. */
static int fs_hfcache_list_refs(struct fs *fs, const struct fs_node *n, struct fs_hfcache_seen *s,
				fs_hfcache_add_fn add, void *arg)
{
	struct hub_repo repo;
	struct hub_refs refs;
	const char *rest;
	int rc;

	fs_repo_of(n, &repo);
	rc = meta_refs(fs->meta, &repo, &refs);
	if (rc)
		return rc;
	for (size_t i = 0; !rc && i < refs.n; i++) {
		const struct hub_ref *r = &refs.refs[i];

		if (n->p.kind == FS_PATH_HFC_SNAPSHOTS) {
			rc = fs_hfcache_add_once(s, r->commit, strlen(r->commit), true, add, arg);
		} else if (n->p.kind == FS_PATH_HFC_TREES) {
			char name[HUB_COMMIT_LEN + sizeof(".json")];

			snprintf(name, sizeof(name), "%s.json", r->commit);
			rc = fs_hfcache_add_once(s, name, strlen(name), false, add, arg);
		} else if (fs_hfcache_below(r->name, n->p.rev, &rest)) {
			const char *slash = strchr(rest, '/');

			rc = fs_hfcache_add_once(s, rest, slash ? (size_t)(slash - rest) : strlen(rest),
						 slash != NULL, add, arg);
		}
	}
	hub_refs_release(&refs);
	return rc;
}

int fs_hfcache_list(struct fs *fs, const struct fs_node *n, fs_hfcache_add_fn add, void *arg)
{
	struct fs_hfcache_seen s = { NULL, 0 };
	int rc = 0;

	switch (n->p.kind) {
	case FS_PATH_HFC:
		rc = fs_hfcache_list_root(fs, &s, add, arg);
		break;
	case FS_PATH_HFC_REPO:
		rc = add(arg, "refs", true);
		if (!rc)
			rc = add(arg, "snapshots", true);
		if (!rc)
			rc = add(arg, "trees", true);
		if (!rc)
			rc = add(arg, ".no_exist", true);
		break;
	case FS_PATH_HFC_SNAPSHOTS:
	case FS_PATH_HFC_REF:
	case FS_PATH_HFC_TREES:
		rc = fs_hfcache_list_refs(fs, n, &s, add, arg);
		break;
	default:
		/* .no_exist/...: what a commit does not have is not listed */
		break;
	}
	fs_hfcache_seen_release(&s);
	return rc;
}

int fs_hfcache_may_open(const struct fs_node *n, int flags)
{
	if ((flags & O_ACCMODE) == O_RDONLY && !(flags & O_TRUNC))
		return 0;
	if (n->p.kind == FS_PATH_HFC_REF && (flags & O_ACCMODE) != O_RDONLY && (flags & O_TRUNC) &&
	    !(flags & O_APPEND))
		return 0;
	return -EROFS;
}

int fs_hfcache_rewrite(struct fs_file *f, const char *buf, size_t size, uint64_t off)
{
	if (!f->rewrite || off > f->size || size > f->size - off ||
	    memcmp(f->content + off, buf, size))
		return -EROFS;
	pthread_mutex_lock(&f->lock);
	if (off <= f->rewritten && off + size > f->rewritten)
		f->rewritten = off + size;
	pthread_mutex_unlock(&f->lock);
	return 0;
}

int fs_hfcache_rewrite_done(struct fs_file *f)
{
	uint64_t done;

	if (!f->rewrite)
		return 0;
	pthread_mutex_lock(&f->lock);
	done = f->rewritten;
	pthread_mutex_unlock(&f->lock);
	return done == f->size ? 0 : -EROFS;
}
