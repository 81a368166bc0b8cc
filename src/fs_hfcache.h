/*
 * The mount as huggingface_hub's cache: ".hf-cache" under the mount root
 * holds the layout its hf_hub_download() and snapshot_download() read
 * (file_download.py, _snapshot_download.py), so that HF_HUB_CACHE can point
 * at it:
 *
 *   .hf-cache/models--NS--REPO/        (datasets--, spaces--)
 *       refs/NAME                      the commit id NAME points at, 40 hex
 *                                      digits, no newline: branches, tags,
 *                                      refs/pr/N, refs/convert/X (as
 *                                      refs/refs/pr/N), unique short ids
 *       snapshots/COMMIT/PATH          the tree of any commit of the repo,
 *                                      the pinned view REPO@COMMIT itself
 *       .no_exist/COMMIT/PATH          an empty file where COMMIT has no
 *                                      PATH, a directory where it has a
 *                                      directory, nothing where it has a file
 *       trees/COMMIT.json              COMMIT's files as huggingface_hub
 *                                      caches a tree listing (_tree_cache.py)
 *
 * A ref file may be opened with O_TRUNC for writing and given the bytes it
 * holds (snapshot_download() writes the ref it resolved without reading it
 * first): nothing changes; any other write is EROFS.
 *
 * There is no blobs/ (the snapshot files are the files, not symlinks into
 * it): huggingface_hub returns the snapshot path it finds before it looks
 * there.  Everything is read-only (the kinds are below FS_PATH_REVISION, or
 * pinned to a commit, for fs_write.c).  Listing .hf-cache shows the repo
 * folders the kernel holds (looked up since the mount); any repo can be
 * looked up by name.  snapshots/ lists the commits of the repo's refs.
 *
 * Thread safety: as fs_ops.c, any FUSE thread.
 */
#ifndef HUBFS_FS_HFCACHE_H
#define HUBFS_FS_HFCACHE_H

#include <stdbool.h>

#include "fs_ops.h"
#include "fs_inode.h"

/* Whether node @n is one of the layout's files (a ref, a .no_exist file, a
 * tree listing); its content is fs_hfcache_content(). */
static inline bool fs_hfcache_is_file(const struct fs_node *n)
{
	return (n->p.kind == FS_PATH_HFC_REF || n->p.kind == FS_PATH_HFC_NOEXIST ||
		n->p.kind == FS_PATH_HFC_TREES) &&
	       !n->is_dir;
}

/* The content of file node @n (fs_hfcache_is_file()), made when it is
 * opened: for a ref, the commit id it pointed at when the node was made
 * (n->commit); "" for a .no_exist file; the JSON listing for a tree file
 * (n->size bytes: the same as when the node was made, as a commit's tree
 * never changes).  Returns 0 with *@out (the caller frees it) and its length
 * in *@len, or -errno. */
int fs_hfcache_content(struct fs *fs, const struct fs_node *n, char **out, size_t *len);

struct fs_file;

/* Whether @n may be opened with open(2) @flags: read-only, or a ref with
 * O_TRUNC for writing (its content again).  Returns 0 or -EROFS. */
int fs_hfcache_may_open(const struct fs_node *n, int flags);

/* A write to @f, a ref opened for writing: 0 when @buf is the content at
 * @off, else -EROFS (nothing changes either way). */
int fs_hfcache_rewrite(struct fs_file *f, const char *buf, size_t size, uint64_t off);

/* At flush of @f: 0 unless it was opened for writing and not given its
 * whole content again (the file was not left as written): -EROFS. */
int fs_hfcache_rewrite_done(struct fs_file *f);

/* Completes @proto, a node of an FS_PATH_HFC* kind that fs_child_at() parsed
 * (proto->p), from the repo's refs and trees: is_dir, size, commit.
 * Returns 0, -ENOENT when nothing is there, or -errno. */
int fs_hfcache_child(struct fs *fs, struct fs_node *proto);

/* Called for each name of a listing; returns 0 or -errno (which stops it). */
typedef int (*fs_hfcache_add_fn)(void *arg, const char *name, bool is_dir);

/* Lists directory node @n of an FS_PATH_HFC* kind, each name once.
 * Returns 0 or -errno. */
int fs_hfcache_list(struct fs *fs, const struct fs_node *n, fs_hfcache_add_fn add, void *arg);

#endif
