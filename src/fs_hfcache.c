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
 * - snapshot_download() writes refs/NAME and trees/COMMIT.json without
 *   looking first and logs a warning when it cannot: here it cannot (EROFS).
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
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hub_id.h"

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

/* refs/ or a directory of ref names, or snapshots/: from the repo's refs. */
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
			rc = add(arg, ".no_exist", true);
		break;
	case FS_PATH_HFC_SNAPSHOTS:
	case FS_PATH_HFC_REF:
		rc = fs_hfcache_list_refs(fs, n, &s, add, arg);
		break;
	default:
		/* .no_exist/...: what a commit does not have is not listed */
		break;
	}
	fs_hfcache_seen_release(&s);
	return rc;
}
