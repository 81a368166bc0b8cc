/*
 * Local blob sources: caches of huggingface_hub (`hf download`,
 * from_pretrained) read instead of the Hub.
 *
 * huggingface_hub keeps a repo in DIR/{models,datasets,spaces}--NS--NAME/,
 * its file contents in blobs/ETAG there, where ETAG is the sha256 of an LFS
 * file and the git blob id of the others: the ids hubfs names its blobs by.
 * A blob found there is read from there, after its whole content was checked
 * against its id once (a partly written, truncated or rotten file is never
 * served), and only read: files are opened O_RDONLY (O_NOATIME when allowed)
 * and nothing in DIR is ever written, renamed, removed or created, so many
 * machines may share one DIR.
 *
 * A blob is looked up in its own repo's folder first, then in the blobs/ of
 * the other repos of each DIR (content-addressed: the same id is the same
 * bytes whichever repo holds it), at most 256 of them per DIR and lookup
 * (one stat each: a shared file system answers each over the network).  Symlinks are followed; only
 * a regular file of the right size is used, and the hash decides, so where a link points does not
 * matter.  A file that fails its check is not checked again while it stays the same file (device,
 * inode, size, mtime, ctime); each failure is logged once.  Not finding an id is remembered for
 * BLOBSRC_MISS_TTL seconds.  A file that checked good is remembered in the hubfs cache's index by
 * its identity, so later mounts do not hash it again; only when its times were at least
 * BLOBSRC_RACY seconds older than the check (as git does with its index: a file changed in the same
 * tick could look unchanged).
 *
 * Thread safety: every function may be called from any thread.  Checking a
 * file is done once however many threads ask; the others wait for it.
 */
#ifndef HUBFS_BLOBSRC_H
#define HUBFS_BLOBSRC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cache.h"
#include "hub_api.h"

/* How long a lookup that found nothing is trusted, in seconds. */
#define BLOBSRC_MISS_TTL 30
/* How much older than a check a file's times must be for its result to be
 * kept across mounts, in seconds. */
#define BLOBSRC_RACY 2

/* Room for a repo's folder name: "datasets--" NS "--" NAME and the NUL. */
#define BLOBSRC_FOLDER_MAX (sizeof("datasets----") + 2 * HUB_NAME_MAX)

struct blobsrc;

/* A set of huggingface_hub cache directories @dirs (@n of them; the strings
 * are copied).  A directory that cannot be read is logged and skipped, not
 * an error.  @cache (borrowed, may be NULL) remembers the files that checked
 * good.  Returns NULL with *@err = -ENOMEM.  Free with blobsrc_free(). */
struct blobsrc *blobsrc_new(const char *const *dirs, size_t n, struct cache *cache, int *err);

/* Frees @bs; NULL is a no-op.  No other call may be running. */
void blobsrc_free(struct blobsrc *bs);

/* Writes the folder name huggingface_hub gives @repo ("models--NS--NAME")
 * to @out.  Returns 0, or -ENAMETOOLONG. */
int blobsrc_folder(const struct hub_repo *repo, char out[BLOBSRC_FOLDER_MAX]);

/* Opens blob @id of @size bytes from a cache: first in @folder (a name from
 * blobsrc_folder(), or NULL), then in the other repos.  The first use of a
 * file hashes all of it (at the disk's speed); @cancel(@cancel_arg) (may be
 * NULL) is asked between pieces and stops that with -EINTR.  Returns a
 * read-only descriptor of a regular file whose content has that id (caller
 * closes it), or -ENOENT when no cache holds a good copy (read from the Hub
 * instead), -EINTR, -ENOMEM. */
int blobsrc_open(struct blobsrc *bs, const char *folder, const char *id, uint64_t size,
		 bool (*cancel)(void *arg), void *cancel_arg);

#endif
