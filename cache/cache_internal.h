/*
 * What cache.c and cache_blob.c share: the cache and blob structures and the
 * functions one calls in the other.  Private to cache/.
 *
 * Lock order (take them in this order, never the reverse):
 *   1. cache.table_lock   the blob table, the id being evicted
 *   2. blob.io            rwlock: read-held around every pread/pwrite of the
 *                         blob file, write-held to swap the file (discard)
 *   3. blob.lock          the blob's state: bitmaps, fills, persistence
 *   4. the index's locks  (cache_index.c), leaves
 *   cache.work_lock       the worker's queue, a leaf too
 * Nobody holds table_lock, io or lock while a fill callback runs, during an
 * fdatasync, or while calling the index.  io is read-held around preads and
 * pwrites of the blob file (and the hashing of a chunk), write-held only to
 * clear a blob's presence and to swap its file descriptor.
 * Fields read without their lock are read with __atomic builtins; they say so.
 */
#ifndef HUBFS_CACHE_INTERNAL_H
#define HUBFS_CACHE_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "cache.h"
#include "cache_hash.h"

struct cache_index;

/* Buckets of the blob table (open blobs, keyed by id). */
#define CACHE_TABLE_SIZE 256

struct cache {
	char *dir;	      /* DIR, absolute (realpath(3) at open), for messages; constant */
	int dirfd;	      /* DIR; constant */
	int blobs_fd;	      /* DIR/blobs; constant */
	int stage_fd;	      /* DIR/stage, the staged files (cache_stage.c); constant */
	int lock_fd;	      /* DIR/lock, -1 without a lock; constant */
	bool direct;	      /* content with O_DIRECT (enum cache_io); constant */
	unsigned long fs_type; /* statfs f_type of DIR; constant */
	bool alone;	      /* holds DIR/lock exclusively (while opening, for a
				 mount); constant after cache_open() */
	uint32_t chunk_size;  /* constant */
	unsigned chunk_shift; /* log2(chunk_size); constant */
	uint64_t limit;	      /* constant */
	uint64_t sync_bytes;  /* constant */
	cache_log_fn log;     /* constant */
	struct cache_index *idx;

	pthread_mutex_t table_lock;
	pthread_cond_t table_cond;		    /* an eviction ended, a handle was removed */
	struct cache_blob *table[CACHE_TABLE_SIZE]; /* protected by table_lock */
	uint64_t nopen;		     /* handles in the table; protected by table_lock */
	char evicting[CACHE_ID_MAX]; /* id being evicted, or ""; protected by table_lock */
	bool pruning;		     /* an eviction pass runs; protected by table_lock */

	pthread_mutex_t work_lock;
	pthread_cond_t work_cond;
	pthread_t worker;	      /* hashes, persists presence batches, evicts */
	bool worker_started;	      /* protected by work_lock */
	bool worker_stop;	      /* protected by work_lock */
	bool worker_busy;	      /* running a job; protected by work_lock */
	pthread_cond_t work_idle;     /* the queue is empty and no job runs */
	struct cache_blob *work_head; /* blobs to flush, each with a reference; */
	struct cache_blob *work_tail; /* protected by work_lock */

	int64_t used;	     /* bytes present, an estimate that triggers eviction; atomic */
	int64_t evict_retry; /* ms: no eviction triggered by new data before; atomic */
	uint64_t hit_bytes;  /* bytes read from present chunks, not yet in the index; atomic */
	uint64_t miss_bytes; /* bytes read that had to be filled, not yet in the index; atomic */
};

enum cache_blob_state {
	CACHE_BLOB_OPENING, /* the first get opens the file and the row */
	CACHE_BLOB_READY,
	CACHE_BLOB_FAILED, /* the opening failed: err says why */
};

/* A fill in progress: the chunks [first, last] claimed by one thread. */
struct cache_fill {
	uint64_t first, last;
	int err; /* its result, once done */
	bool done;
	unsigned refs; /* the filler and the waiters */
	struct cache_fill *next;
};

/* The bytes written so far to a chunk that is not complete yet. */
struct cache_partial {
	uint64_t chunk;
	struct cache_range {
		uint64_t start, end;
	} * ranges; /* sorted, disjoint, not adjacent */
	size_t n, cap;
};

struct cache_blob {
	struct cache *c;	 /* constant */
	char id[CACHE_ID_MAX];	 /* constant */
	enum cache_id_kind kind; /* constant */
	uint64_t size;		 /* constant */
	uint64_t nchunks;	 /* constant */
	size_t nwords;		 /* words of the bitmaps; constant */
	int subdir_fd;		 /* DIR/blobs/xx; set while OPENING, then constant */

	struct cache_blob *next; /* in its bucket; protected by c->table_lock */
	unsigned refs;		 /* protected by c->table_lock */

	pthread_rwlock_t io;
	int fd; /* the blob file; protected by io (written write-held) */
	int dfd; /* the same file opened with O_DIRECT, -1 where the file system
		    refuses it; protected by io like fd */

	pthread_mutex_t lock;
	pthread_mutex_t wlock;		/* held across each pwrite of content */
	pthread_cond_t cond;		/* state, presence, fills, persisting changed */
	enum cache_blob_state state;	/* protected by lock */
	int err;			/* protected by lock: why FAILED, or broken */
	bool broken;			/* protected by lock: no usable file; reads fail with err */
	bool detached;			/* protected by lock: the file is being replaced */
	bool persisting;		/* protected by lock: one flush/discard at a time */
	bool hashing;			/* protected by lock: one thread feeds the hasher */
	bool orphan;			/* protected by lock: the row is gone, persist nothing */
	uint64_t gen;			/* bumped by every discard; written with lock and
					   io (write) held, read with either */
	int64_t row;			/* protected by lock: the index row */
	uint64_t *present;		/* written under lock, read with __atomic anywhere */
	uint64_t npresent;		/* written under lock, read with __atomic anywhere */
	bool verified;			/* written under lock, read with __atomic anywhere */
	bool warm;			/* complete when its row was loaded: reads go
					   through the page cache (blob_pread); as
					   verified */
	uint32_t *crcs;			/* CRC32C of each present chunk: written under lock
					   before the chunk's present bit is set, read with
					   __atomic once that bit was seen (io read-held) */
	uint64_t *checked;		/* chunks whose CRC was checked against the file (or
					   that were written) since the handle was opened:
					   set with __atomic anywhere, cleared with lock and
					   io (write) held */
	bool crcs_legacy;		/* protected by lock: the row had no CRCs (schema 4
					   or older, or another chunk size): its chunks are
					   not checked, no CRCs are persisted until a discard */
	uint64_t *filling;		/* protected by lock */
	struct cache_fill *fills;	/* protected by lock */
	struct cache_partial *partials; /* protected by lock */
	size_t npartials, partials_cap; /* protected by lock */
	uint64_t present_bytes;		/* protected by lock */
	uint64_t dirty;		     /* bytes made present since the last sync; protected by lock */
	uint64_t persisted_chunks;   /* what the row says; protected by lock */
	uint64_t persisted_bytes;    /* protected by lock */
	bool persisted_complete;     /* protected by lock */
	int64_t persisted_used;	     /* protected by lock */
	int64_t last_used;	     /* ms since the epoch; atomic */
	struct cache_hasher *hasher; /* the running hash; protected by lock, used
					outside it by the thread that set hashing */
	uint64_t hashed;	     /* leading chunks fed to it; protected by lock */
	uint64_t read_end;	     /* the furthest end of a read served; atomic */
	bool queued;		     /* waits for the worker; protected by c->work_lock */
	struct cache_blob *work_next; /* protected by c->work_lock */
};

/* cache.c */
/* Has the worker run cache_blob_work(@b) soon (it takes a reference). */
void cache_work_later(struct cache_blob *b);
__attribute__((format(printf, 3, 4))) void cache_log(struct cache *c, int level, const char *fmt,
						     ...);
int64_t cache_now_ms(void);
/* Evicts if the cache is over its limit, or its disk below the free-space
 * floor, and no eviction runs already (nor ran in vain within a second). */
void cache_evict_if_needed(struct cache *c);
/* After a write or the index failed with ENOSPC/EDQUOT: evicts unpinned
 * blobs, least recently used first, at least @want bytes (0: a chunk) and
 * down to the floor, now (no back-off; an eviction that runs already is
 * waited for 200 ms at most).  True if it freed something or @want bytes
 * are free: worth trying again.  No lock held. */
bool cache_space_reclaim(struct cache *c, uint64_t want);
/* Makes the row of each blob and its file agree (see cache.c); at open. */
int cache_recount(struct cache *c);
/* Deallocates [@off, @off+@len) of file @fd, keeping its size.  0 or -errno. */
int cache_punch(int fd, uint64_t off, uint64_t len);

/* cache_meta.c: checks of what comes from outside, shared with cache_stage.c */
/* A repo path as cache_meta.h defines it; "" only with @root. */
bool cache_path_valid(const char *path, bool root);
/* "" or exactly @len lowercase hex digits, NUL-terminated within @size. */
bool cache_hex_valid(const char *s, size_t size, size_t len);

/* cache_blob.c */
/* Allocates an OPENING handle with one reference; NULL with *@err. */
struct cache_blob *cache_blob_alloc(struct cache *c, const char *id, enum cache_id_kind kind,
				    uint64_t size, int *err);
/* Opens the blob's file and row (creating them as needed) and loads its
 * presence.  Called once, while OPENING, by the thread that allocated it. */
int cache_blob_open(struct cache_blob *b);
/* Frees a handle nobody can reach any more. */
void cache_blob_free(struct cache_blob *b);
/* Persists what is new (fdatasync, then the index); with @final, also the
 * last use, after verifying a blob that became complete.  Returns 0 or
 * -errno (then nothing was persisted). */
int cache_blob_flush(struct cache_blob *b, bool final);
/* The worker's job: advances the running hash, persists presence when a
 * batch is due. */
void cache_blob_work(struct cache_blob *b);
/* True if something was made present and not persisted since. */
bool cache_blob_dirty(struct cache_blob *b);
/* What the handle knows that its row does not say yet (for statistics). */
void cache_blob_unpersisted(struct cache_blob *b, int64_t *chunks, int64_t *bytes,
			    int64_t *complete);
/* Opens DIR/blobs/xx of @id (creating it with @create) without following
 * symlinks.  Returns the fd or -errno. */
int cache_subdir_open(struct cache *c, const char *id, bool create);

#endif
