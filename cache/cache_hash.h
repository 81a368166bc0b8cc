/*
 * Blob ids of the cache: how content is named and verified.
 *
 * A blob is named by the id the Hub gives it: the sha256 of the content for
 * LFS files, git's blob id (sha1 of "blob <size>\0" followed by the content)
 * for the others.  Ids are lowercase hex: 64 digits for sha256, 40 for git.
 * This is the only file of hubfs that includes OpenSSL headers.
 */
#ifndef HUBFS_CACHE_HASH_H
#define HUBFS_CACHE_HASH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum cache_id_kind {
	CACHE_ID_GIT_SHA1, /* git blob id, 40 hex digits */
	CACHE_ID_SHA256,   /* sha256 of the content (LFS oid), 64 hex digits */
};

/* Room for the longest id and its NUL. */
#define CACHE_ID_MAX 65

/* True if @id is a lowercase hex blob id; its kind goes to *@kind (may be
 * NULL): 40 digits are CACHE_ID_GIT_SHA1, 64 digits CACHE_ID_SHA256. */
bool cache_id_valid(const char *id, enum cache_id_kind *kind);

/* An incremental hash of a blob's content. */
struct cache_hasher;

/* Starts hashing a blob of @size bytes (git ids include the size, so it must
 * be known first).  Returns a hasher the caller frees with
 * cache_hasher_free(), or NULL with *@err = -ENOMEM or -EIO. */
struct cache_hasher *cache_hasher_new(enum cache_id_kind kind, uint64_t size, int *err);

/* Feeds @len bytes.  Returns 0, -EOVERFLOW when more than the announced size
 * is fed, or -EIO. */
int cache_hasher_update(struct cache_hasher *h, const void *buf, size_t len);

/* Writes the id as NUL-terminated lowercase hex to @hex.  Returns 0, -EIO when
 * fewer bytes than announced were fed (or on a library error).  The hasher
 * cannot be used afterwards except to be freed. */
int cache_hasher_final(struct cache_hasher *h, char hex[CACHE_ID_MAX]);

/* Frees @h; NULL is a no-op. */
void cache_hasher_free(struct cache_hasher *h);

/* The id of the @len bytes at @buf.  Returns 0, -ENOMEM or -EIO. */
int cache_id_of_buffer(enum cache_id_kind kind, const void *buf, size_t len,
		       char hex[CACHE_ID_MAX]);

/* The crypto library's version (static, borrowed). */
const char *cache_hash_lib_version(void);

#endif
