/*
 * What the files of the cache index share, private to them: the one SQLite
 * handle (cache_index.c: open, schema, migrations, connections, prepared
 * statements, the errno mapping) and the helpers that run statements on it.
 * The stores are each in a file of their own, behind that handle:
 *   cache_index_blobs.c   blob rows, LRU order, totals, hit/miss counters
 *   cache_index_meta.c    the key/value pairs and the tree listings
 *   cache_index_stage.c   the write journal's table
 * Only these files include sqlite3.h (through this header); the rest of
 * cache/ sees cache_index.h.
 *
 * Locking: as in cache_index.c.  The writer is taken with
 * cache_index_writer_begin() (or write_lock directly for a single
 * statement), a reader with cache_index_reader_get().
 */
#ifndef HUBFS_CACHE_INDEX_INTERNAL_H
#define HUBFS_CACHE_INDEX_INTERNAL_H

#include <pthread.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stddef.h>

#include "cache_index.h"

/* Reader connections kept at most. */
#define INDEX_READERS 4

enum index_stmt {
	STMT_BEGIN,
	STMT_BEGIN_READ,
	STMT_COMMIT,
	STMT_ROLLBACK,
	STMT_BLOB_GET,
	STMT_BLOB_TOUCH,
	STMT_BLOB_INSERT,
	STMT_BLOB_DELETE,
	STMT_BLOB_PERSIST,
	STMT_BLOB_LRU,
	STMT_TOTALS,
	STMT_COUNTERS,
	STMT_COUNTER_ADD,
	STMT_KV_PUT,
	STMT_KV_GET,
	STMT_KV_DELETE,
	STMT_KV_DELETE_RANGE,
	STMT_KV_DELETE_FROM,
	STMT_TREE_INSERT,
	STMT_TREE_GET,
	STMT_TREE_DELETE,
	STMT_DIR_GET,
	STMT_DIR_INSERT,
	STMT_DIR_COMPLETE,
	STMT_DIRS_COMPLETE_UNDER,
	STMT_DIRS_DELETE_UNDER,
	STMT_DIRS_DELETE_TREE,
	STMT_ENTRIES_DELETE_DIR,
	STMT_ENTRIES_DELETE_UNDER,
	STMT_ENTRIES_DELETE_TREE,
	STMT_ENTRY_PUT,
	STMT_ENTRY_ADD,
	STMT_LOOKUP,
	STMT_LIST,
	STMT_TREE_SOURCE,
	STMT_ENTRIES_COPY,
	STMT_SYNC_FULL,
	STMT_SYNC_NORMAL,
	STMT_STAGE_INSERT,
	STMT_STAGE_GET,
	STMT_STAGE_GET_PATH,
	STMT_STAGE_LIST,
	STMT_STAGE_DELETE,
	STMT_STAGE_BRANCHES,
	STMT_STAGE_COUNT,
	STMT_STAGE_UPDATE,
	STMT_STAGE_CONTENT,
	STMT_STAGE_SENT,
	STMT_STAGE_REBASE,
	STMT_STAGE_REFERENCED,
	STMT_COUNT
};

/* The columns read into a struct cache_stage_change, by stage_row(). */
#define STAGE_COLUMNS                                                                              \
	"id, repo, branch, kind, path, old_path, staged, size, sha256, base_commit, state, "       \
	"error, attempts, created_at, updated_at, commit_id, sent"

struct index_conn {
	sqlite3 *db;
	sqlite3_stmt *stmt[STMT_COUNT]; /* prepared on first use */
	struct index_conn *next;	/* in the free readers; protected by pool_lock */
};

struct cache_index {
	char *path;	  /* constant */
	cache_log_fn log; /* constant */

	pthread_mutex_t write_lock;
	struct index_conn *writer; /* protected by write_lock */

	pthread_mutex_t pool_lock;
	pthread_cond_t pool_cond;
	struct index_conn *readers; /* free readers; protected by pool_lock */
	unsigned nreaders;	    /* readers open; protected by pool_lock */
};

/* The SQL text of each statement, by enum index_stmt. */
extern const char *const cache_index_sql[STMT_COUNT];

/* Makes room in the array *@v (*@cap elements of @size bytes, @count used)
 * for one more, doubling it (@first elements at first).  Returns 0 or
 * -ENOMEM (*@v is left as it was). */
int cache_index_grow(void **v, size_t *cap, size_t count, size_t size, size_t first);

/* Sends a message to the index's log callback, if any. */
__attribute__((format(printf, 3, 4))) void cache_index_log(struct cache_index *idx, int level,
							   const char *fmt, ...);

/* Logs a failed SQLite call (@what failed with @rc on @db, which may be
 * NULL) and returns its errno, never 0. */
int cache_index_fail(struct cache_index *idx, sqlite3 *db, int rc, const char *what);

/* The statement @which of @conn in *@out, reset and ready for binding
 * (prepared on first use).  Returns 0 or -errno. */
int cache_index_stmt(struct cache_index *idx, struct index_conn *conn, enum index_stmt which,
		     sqlite3_stmt **out);

/* Steps a statement that returns no row, then resets it.  Returns 0 or
 * -errno, logged with @what. */
int cache_index_done(struct cache_index *idx, struct index_conn *conn, sqlite3_stmt *st,
		     const char *what);

/* Runs statement @which, without parameters and rows. */
int cache_index_run(struct cache_index *idx, struct index_conn *conn, enum index_stmt which);

/* Takes the writer and starts a write transaction.  On success the caller
 * ends it with cache_index_writer_end(). */
int cache_index_writer_begin(struct cache_index *idx, struct index_conn **conn);

/* Commits when @err is 0, rolls back otherwise; releases the writer.
 * Returns @err or the commit's error. */
int cache_index_writer_end(struct cache_index *idx, struct index_conn *conn, int err);

/* Takes a reader connection from the pool (waiting while INDEX_READERS are
 * in use), opening one when none is free.  Returns 0 or -errno; on success
 * the caller gives it back with cache_index_reader_put(). */
int cache_index_reader_get(struct cache_index *idx, struct index_conn **out);
void cache_index_reader_put(struct cache_index *idx, struct index_conn *conn);

#endif
