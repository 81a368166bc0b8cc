/*
 * The cache's SQLite index, private to cache/: the only files of hubfs that
 * include sqlite3.h are cache_index*.c (one handle in cache_index.c, one
 * file per store: _blobs, _meta, _stage; cache_index_internal.h is what they
 * share).  The daemon sees cache.h and cache_meta.h; cache.c, cache_blob.c
 * and cache_meta.c call this.
 *
 * One database, DIR/hubfs.db in WAL mode, holds:
 *   blobs         per blob: id, size, chunk size, the persisted presence
 *                 bitmap, present chunks and bytes, completeness, last use
 *   counters      hit_bytes and miss_bytes (bytes read that were present
 *                 or had to be filled); 'hits' and 'misses' of older
 *                 versions counted chunks and are ignored
 *   kv            the daemon's key/value pairs with their fetch time
 *   trees, tree_dirs, tree_entries
 *                 tree listings, indexed by (tree, directory, name)
 *   stage         the write journal (cache_stage.h), one row per change
 * The schema version is PRAGMA user_version; a newer one is refused, an
 * older one is upgraded in place when the index is opened (version 1 had no
 * journal, version 2 no upload progress in it, version 4 no index of
 * directories by tree id, version 5 no chunk CRCs).
 *
 * A blob row is identified by its `row`, never reused (AUTOINCREMENT): a
 * handle updates its row by number, so once a row was deleted (the blob was
 * evicted or discarded, maybe by another process) the handle's updates find
 * nothing (-ESTALE) instead of describing a file that is no longer there.
 *
 * Errors: SQLite's codes are mapped to errno here, and only here, and their
 * text goes to the log callback.
 *
 * Thread safety: every function may be called from any thread.  Writes go
 * through one connection, serialised by a mutex; reads take a connection
 * from a small pool, so that WAL lets them run while a write is in progress.
 * These locks are leaves: the callers hold no cache lock while calling here.
 */
#ifndef HUBFS_CACHE_INDEX_H
#define HUBFS_CACHE_INDEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cache.h"
#include "cache_meta.h"
#include "cache_stage.h"

/* The schema version this code writes. */
#define CACHE_INDEX_VERSION 6

struct cache_index;

/* Opens the database at @path (the file exists, mode 0600), creating the
 * schema on first use.  @log may be NULL.  Returns an index the caller
 * closes with cache_index_close(), or NULL with *@err set to -EPROTO (a newer
 * schema), -ENOTSUP (SQLite built without threads) or another -errno. */
struct cache_index *cache_index_open(const char *path, cache_log_fn log, int *err);

/* Closes @idx.  NULL is a no-op.  No other call may be in progress. */
void cache_index_close(struct cache_index *idx);

/* A blob's row. */
struct cache_index_blob {
	int64_t row;
	uint64_t size;
	uint32_t chunk_size;
	bool complete;	   /* verified; present is then NULL */
	uint64_t chunks;   /* present chunks */
	uint64_t bytes;	   /* present bytes */
	int64_t last_used; /* ms since the epoch */
	void *present;	   /* bitmap, bit i of byte i/8 = chunk i; the caller
			      frees it with free(); NULL when none */
	size_t present_len;
	void *crcs; /* CRC32C of each chunk, 4 bytes little-endian per
		       chunk (only those of present chunks mean
		       anything); the caller frees it with free(); NULL
		       when none (a row of schema version 5 or older,
		       or whose chunk size changed) */
	size_t crcs_len;
};

/* Reads the row of blob @id into *@out.  Returns 0, -ENOENT or -errno. */
int cache_index_blob_load(struct cache_index *idx, const char *id, struct cache_index_blob *out);

/* In one transaction: returns in *@out the row of blob @id, making a fresh
 * one (nothing present) when there is none, or when the row's size differs
 * from @size or its chunk size from @chunk_size (unless it is complete).
 * Sets its last use to @now.  Returns 0 or -errno. */
int cache_index_blob_attach(struct cache_index *idx, const char *id, uint64_t size,
			    uint32_t chunk_size, int64_t now, struct cache_index_blob *out);

/* What cache_index_blob_persist() writes. */
struct cache_index_persist {
	int64_t row;
	const void *present; /* bitmap as in struct cache_index_blob; NULL if complete */
	size_t present_len;
	uint64_t chunks, bytes;
	bool complete;
	int64_t last_used;
	const void *crcs; /* as in struct cache_index_blob; NULL for none */
	size_t crcs_len;
	uint64_t hit_bytes, miss_bytes; /* added to the counters in the same transaction */
};

/* Updates a blob's row.  Returns 0, -ESTALE when the row is gone (the
 * counters are still added), or -errno (nothing written). */
int cache_index_blob_persist(struct cache_index *idx, const struct cache_index_persist *p);

/* Deletes the row of blob @id; its present bytes go to *@bytes (0 when
 * there was none).  Returns 0 or -errno. */
int cache_index_blob_delete(struct cache_index *idx, const char *id, uint64_t *bytes);

/* True in *@exists when blob @id has a row.  Returns 0 or -errno. */
int cache_index_blob_exists(struct cache_index *idx, const char *id, bool *exists);

/* One blob in least-recently-used order. */
struct cache_index_lru {
	int64_t row;
	int64_t last_used;
	uint64_t bytes;
	char id[CACHE_ID_MAX];
};

/* Up to @max blobs that come after (@after_used, @after_row) in the order
 * (last_used, row), oldest first, into @out; their number into *@n.
 * Returns 0 or -errno. */
int cache_index_blob_lru(struct cache_index *idx, int64_t after_used, int64_t after_row,
			 struct cache_index_lru *out, size_t max, size_t *n);

struct cache_index_totals {
	uint64_t blobs, complete, chunks, bytes, hit_bytes, miss_bytes;
};

/* Sums over all blobs, and the counters.  Returns 0 or -errno. */
int cache_index_totals(struct cache_index *idx, struct cache_index_totals *t);

/* Adds to the byte hit and miss counters.  Returns 0 or -errno. */
int cache_index_counters_add(struct cache_index *idx, uint64_t hit_bytes, uint64_t miss_bytes);

/* Deletes every blob row, pair and tree, and zeroes the counters; the
 * journal is kept.  Returns 0 or -errno. */
int cache_index_clear(struct cache_index *idx);

/* The stores of cache_meta.h, arguments already checked by cache_meta.c. */
int cache_index_kv_put(struct cache_index *idx, const char *key, const void *val, size_t len,
		       int64_t fetched_at);
int cache_index_kv_get(struct cache_index *idx, const char *key, void **val, size_t *len,
		       int64_t *fetched_at);
int cache_index_kv_delete(struct cache_index *idx, const char *key);
int cache_index_kv_delete_prefix(struct cache_index *idx, const char *prefix);
int cache_index_tree_put(struct cache_index *idx, const char *tree_key, const char *dir,
			 const struct cache_entry *entries, size_t n, unsigned flags);
int cache_index_tree_lookup(struct cache_index *idx, const char *tree_key, const char *path,
			    struct cache_entry *out);
/* Returns the listing of @dir in *@entries (*@n of them; the caller frees
 * each path and the array with cache_index_entries_free()). */
int cache_index_tree_list(struct cache_index *idx, const char *tree_key, const char *dir,
			  struct cache_entry **entries, size_t *n);
void cache_index_entries_free(struct cache_entry *entries, size_t n);
int cache_index_tree_delete(struct cache_index *idx, const char *tree_key);
int cache_index_tree_adopt(struct cache_index *idx, const char *tree_key, const char *dir,
			   const char *oid, const char *scope);

/* The journal of cache_stage.h, arguments already checked by cache_stage.c.
 * Its writes are durable against a power loss (synchronous=FULL). */
/* Adds @ch as a PENDING row made at @now.  With @old, first forgets the row
 * of the same path, returned in *@old (old->id 0 when none). */
int cache_index_stage_add(struct cache_index *idx, const struct cache_stage_change *ch, int64_t now,
			  int64_t *id, struct cache_stage_change *old);
int cache_index_stage_get(struct cache_index *idx, int64_t id, struct cache_stage_change *out);
int cache_index_stage_list(struct cache_index *idx, const char *repo, const char *branch,
			   struct cache_stage_change **changes, size_t *n);
int cache_index_stage_branches(struct cache_index *idx, struct cache_stage_branch **branches,
			       size_t *n);
int cache_index_stage_count(struct cache_index *idx, const char *repo, const char *branch,
			    uint64_t *changes, uint64_t *bytes);
int cache_index_stage_update(struct cache_index *idx, const int64_t *ids, size_t n,
			     const struct cache_stage_update *u, int64_t now, size_t *updated);
int cache_index_stage_set_content(struct cache_index *idx, int64_t id, uint64_t size,
				  const char *sha256, int64_t now);
/* Not synced (synchronous=NORMAL): progress, see cache_stage_set_sent(). */
int cache_index_stage_set_sent(struct cache_index *idx, int64_t id, uint64_t sent);
int cache_index_stage_committed(struct cache_index *idx, const char *repo, const char *branch,
				const int64_t *ids, size_t n, const char *parent,
				const char *commit_id, int64_t now,
				char (**staged)[CACHE_STAGE_NAME_SIZE], size_t *nstaged);
/* True in *@referenced when a row names staged file @name (also on error). */
int cache_index_stage_referenced(struct cache_index *idx, const char *name, bool *referenced);

#endif
