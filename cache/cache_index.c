/*
 * The cache's SQLite index.  See cache_index.h for what it holds.
 *
 * Connections: one writer, serialised by write_lock, and readers from a pool
 * of up to INDEX_READERS connections opened on demand.  Not one connection
 * for everything: a tree put of 100,000 entries or a WAL checkpoint takes a
 * noticeable time, and the lookups that FUSE requests make would queue behind
 * it; in WAL mode a reader sees the last committed state without waiting.
 * Not a connection per thread: libfuse's worker threads come and go, and
 * their connections would have to be found and closed.  Every connection is
 * opened with SQLITE_OPEN_NOMUTEX (our locks let one thread use it at a time)
 * and keeps its prepared statements.
 *
 * Durability: synchronous=NORMAL.  In WAL mode a power loss may lose the last
 * transactions but never corrupts the database.  Losing a presence update
 * only means refetching; a discard that must not be lost is made safe by the
 * blob file itself (see cache_blob.c), not by the index.  A transaction that
 * returned is in the WAL, so it survives a crash of the process either way.
 * The writes of the journal (cache_stage.h) alone run with synchronous=FULL
 * (journal_begin()): the WAL is fsync'ed at their commit, which makes them,
 * and every transaction before them, survive a power loss as well.  They are
 * a few per file written, not per chunk read, so the fsync costs little.
 * The upload progress of a row (cache_index_stage_set_sent(), once a second
 * per uploading file) is not synced: it is informative, and the next synced
 * journal write carries it along.
 *
 * Lock order: write_lock and pool_lock are leaves, held for SQLite calls and
 * pool bookkeeping only; the callers hold no other cache lock.
 */
#include "config.h"

#include "cache_index.h"

#include <errno.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

/* Reader connections kept at most. */
#define INDEX_READERS 4
/* How long a statement waits for another process's lock, in ms. */
#define INDEX_BUSY_MS 10000

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

/* "Under" a directory D: the directories D/... of the tree (?2 <= path < ?3,
 * with ?2 = "D/" and ?3 = "D0", since '0' follows '/'; for the root, ?2 = ""
 * and ?3 a BLOB, which sorts after every text). */
/* clang-format off */
static const char *const index_sql[STMT_COUNT] = {
	[STMT_BEGIN] = "BEGIN IMMEDIATE",
	[STMT_BEGIN_READ] = "BEGIN",
	[STMT_COMMIT] = "COMMIT",
	[STMT_ROLLBACK] = "ROLLBACK",
	[STMT_BLOB_GET] = "SELECT row, size, chunk_size, present, chunks, bytes, complete, "
			  "last_used FROM blobs WHERE id = ?1",
	[STMT_BLOB_TOUCH] = "UPDATE blobs SET last_used = ?2, chunk_size = ?3 WHERE row = ?1",
	[STMT_BLOB_INSERT] = "INSERT INTO blobs (id, size, chunk_size, present, chunks, bytes, "
			     "complete, last_used) VALUES (?1, ?2, ?3, NULL, 0, 0, 0, ?4)",
	[STMT_BLOB_DELETE] = "DELETE FROM blobs WHERE id = ?1",
	[STMT_BLOB_PERSIST] = "UPDATE blobs SET present = ?2, chunks = ?3, bytes = ?4, "
			      "complete = ?5, last_used = ?6 WHERE row = ?1",
	[STMT_BLOB_LRU] = "SELECT row, last_used, bytes, id FROM blobs "
			  "WHERE last_used > ?1 OR (last_used = ?1 AND row > ?2) "
			  "ORDER BY last_used, row LIMIT ?3",
	[STMT_TOTALS] = "SELECT count(*), coalesce(sum(complete), 0), coalesce(sum(chunks), 0), "
			"coalesce(sum(bytes), 0) FROM blobs",
	[STMT_COUNTERS] = "SELECT name, value FROM counters",
	[STMT_COUNTER_ADD] = "UPDATE counters SET value = value + ?2 WHERE name = ?1",
	[STMT_KV_PUT] = "INSERT OR REPLACE INTO kv (key, value, fetched_at) VALUES (?1, ?2, ?3)",
	[STMT_KV_GET] = "SELECT value, fetched_at FROM kv WHERE key = ?1",
	[STMT_KV_DELETE] = "DELETE FROM kv WHERE key = ?1",
	[STMT_KV_DELETE_RANGE] = "DELETE FROM kv WHERE key >= ?1 AND key < ?2",
	[STMT_KV_DELETE_FROM] = "DELETE FROM kv WHERE key >= ?1",
	[STMT_TREE_INSERT] = "INSERT OR IGNORE INTO trees (key) VALUES (?1)",
	[STMT_TREE_GET] = "SELECT tree FROM trees WHERE key = ?1",
	[STMT_TREE_DELETE] = "DELETE FROM trees WHERE tree = ?1",
	[STMT_DIR_GET] = "SELECT dir FROM tree_dirs WHERE tree = ?1 AND path = ?2",
	[STMT_DIR_INSERT] = "INSERT INTO tree_dirs (tree, path, complete) VALUES (?1, ?2, 0)",
	[STMT_DIR_COMPLETE] = "UPDATE tree_dirs SET complete = 1 WHERE dir = ?1",
	[STMT_DIRS_COMPLETE_UNDER] = "UPDATE tree_dirs SET complete = 1 "
				     "WHERE tree = ?1 AND path >= ?2 AND path < ?3",
	[STMT_DIRS_DELETE_UNDER] = "DELETE FROM tree_dirs WHERE tree = ?1 AND path >= ?2 AND path < ?3",
	[STMT_DIRS_DELETE_TREE] = "DELETE FROM tree_dirs WHERE tree = ?1",
	[STMT_ENTRIES_DELETE_DIR] = "DELETE FROM tree_entries WHERE dir = ?1",
	[STMT_ENTRIES_DELETE_UNDER] = "DELETE FROM tree_entries WHERE dir IN (SELECT dir FROM "
				      "tree_dirs WHERE tree = ?1 AND path >= ?2 AND path < ?3)",
	[STMT_ENTRIES_DELETE_TREE] = "DELETE FROM tree_entries WHERE dir IN "
				     "(SELECT dir FROM tree_dirs WHERE tree = ?1)",
	[STMT_ENTRY_PUT] = "INSERT OR REPLACE INTO tree_entries (dir, name, is_dir, size, oid, "
			   "sha256) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
	[STMT_ENTRY_ADD] = "INSERT OR IGNORE INTO tree_entries (dir, name, is_dir, size, oid, "
			   "sha256) VALUES (?1, ?2, 1, 0, '', '')",
	[STMT_LOOKUP] = "SELECT d.complete, e.name IS NOT NULL, e.is_dir, e.size, e.oid, e.sha256 "
			"FROM trees t JOIN tree_dirs d ON d.tree = t.tree AND d.path = ?2 "
			"LEFT JOIN tree_entries e ON e.dir = d.dir AND e.name = ?3 "
			"WHERE t.key = ?1",
	[STMT_LIST] = "SELECT d.complete, e.name, e.is_dir, e.size, e.oid, e.sha256 "
		      "FROM trees t JOIN tree_dirs d ON d.tree = t.tree AND d.path = ?2 "
		      "LEFT JOIN tree_entries e ON e.dir = d.dir "
		      "WHERE t.key = ?1 ORDER BY e.name",
	[STMT_SYNC_FULL] = "PRAGMA synchronous = FULL",
	[STMT_SYNC_NORMAL] = "PRAGMA synchronous = NORMAL",
	[STMT_STAGE_INSERT] = "INSERT INTO stage (repo, branch, kind, path, old_path, staged, size, "
			      "sha256, base_commit, state, error, attempts, created_at, updated_at, "
			      "commit_id, sent) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'pending', "
			      "'', 0, ?10, ?10, '', 0)",
	[STMT_STAGE_GET] = "SELECT " STAGE_COLUMNS " FROM stage WHERE id = ?1",
	[STMT_STAGE_GET_PATH] = "SELECT " STAGE_COLUMNS " FROM stage "
				"WHERE repo = ?1 AND branch = ?2 AND path = ?3",
	[STMT_STAGE_LIST] = "SELECT " STAGE_COLUMNS " FROM stage "
			    "WHERE repo = ?1 AND branch = ?2 ORDER BY id",
	[STMT_STAGE_DELETE] = "DELETE FROM stage WHERE id = ?1",
	[STMT_STAGE_BRANCHES] = "SELECT repo, branch, count(*), "
				"coalesce(sum(CASE kind WHEN 'add' THEN size ELSE 0 END), 0), "
				"sum(state = 'pending'), sum(state = 'uploading'), "
				"sum(state = 'committing'), sum(state = 'conflict'), "
				"sum(state = 'failed'), sum(state = 'refused'), "
				"sum(state = 'local'), "
				"(SELECT error FROM stage e WHERE e.repo = s.repo AND "
				"e.branch = s.branch AND e.error != '' "
				"ORDER BY e.updated_at DESC, e.id DESC LIMIT 1), "
				"coalesce(sum(CASE kind WHEN 'add' THEN min(sent, size) ELSE 0 END), 0) "
				"FROM stage s GROUP BY repo, branch ORDER BY repo, branch",
	[STMT_STAGE_COUNT] = "SELECT count(*), "
			     "coalesce(sum(CASE kind WHEN 'add' THEN size ELSE 0 END), 0) "
			     "FROM stage WHERE repo = ?1 AND branch = ?2 AND state != 'local'",
	[STMT_STAGE_UPDATE] = "UPDATE stage SET "
			      "state = CASE WHEN ?2 & 1 THEN ?3 ELSE state END, "
			      "error = CASE WHEN ?2 & 2 THEN ?4 ELSE error END, "
			      "attempts = CASE WHEN ?2 & 4 THEN ?5 "
			      "WHEN ?2 & 8 THEN attempts + 1 ELSE attempts END, "
			      "commit_id = CASE WHEN ?2 & 16 THEN ?6 ELSE commit_id END, "
			      "sent = CASE WHEN ?2 & 8 THEN 0 ELSE sent END, "
			      "base_commit = CASE WHEN ?2 & 32 THEN ?8 ELSE base_commit END, "
			      "updated_at = ?7 WHERE id = ?1",
	[STMT_STAGE_CONTENT] = "UPDATE stage SET size = ?2, sha256 = ?3, updated_at = ?4 "
			       "WHERE id = ?1",
	[STMT_STAGE_SENT] = "UPDATE stage SET sent = min(?2, size) WHERE id = ?1 AND kind = 'add'",
	[STMT_STAGE_REBASE] = "UPDATE stage SET base_commit = ?4, updated_at = ?5 "
			      "WHERE repo = ?1 AND branch = ?2 AND base_commit = ?3",
	[STMT_STAGE_REFERENCED] = "SELECT 1 FROM stage WHERE staged = ?1",
};
/* clang-format on */

/* Makes room in the array *@v (*@cap elements of @size bytes, @count used)
 * for one more, doubling it (@first elements at first).  Returns 0 or
 * -ENOMEM (*@v is left as it was). */
static int index_grow(void **v, size_t *cap, size_t count, size_t size, size_t first)
{
	size_t ncap;
	void *nv;

	if (count < *cap)
		return 0;
	ncap = *cap ? 2 * *cap : first;
	nv = realloc(*v, ncap * size);
	if (!nv)
		return -ENOMEM;
	*v = nv;
	*cap = ncap;
	return 0;
}

static const char index_schema[] =
    "CREATE TABLE blobs ("
    " row INTEGER PRIMARY KEY AUTOINCREMENT,"
    " id TEXT NOT NULL UNIQUE,"
    " size INTEGER NOT NULL,"
    " chunk_size INTEGER NOT NULL,"
    " present BLOB,"
    " chunks INTEGER NOT NULL,"
    " bytes INTEGER NOT NULL,"
    " complete INTEGER NOT NULL,"
    " last_used INTEGER NOT NULL);"
    "CREATE INDEX blobs_lru ON blobs (last_used);"
    "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;"
    "INSERT INTO counters VALUES ('hits', 0), ('misses', 0);"
    "CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB NOT NULL,"
    " fetched_at INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE TABLE trees (tree INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE);"
    "CREATE TABLE tree_dirs (dir INTEGER PRIMARY KEY, tree INTEGER NOT NULL,"
    " path TEXT NOT NULL, complete INTEGER NOT NULL, UNIQUE (tree, path));"
    "CREATE TABLE tree_entries (dir INTEGER NOT NULL, name TEXT NOT NULL,"
    " is_dir INTEGER NOT NULL, size INTEGER NOT NULL, oid TEXT NOT NULL,"
    " sha256 TEXT NOT NULL, PRIMARY KEY (dir, name)) WITHOUT ROWID;";

/* Version 2: the write journal (cache_stage.h).  Applied on top of version 1
 * by the migration, and after it to a new database.  AUTOINCREMENT: an id is
 * never reused, so a commit in flight never names a newer change.  Kinds and
 * states are text, readable with the sqlite3 shell when something went
 * wrong. */
static const char index_schema_v2[] =
    "CREATE TABLE IF NOT EXISTS stage ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " repo TEXT NOT NULL,"
    " branch TEXT NOT NULL,"
    " kind TEXT NOT NULL CHECK (kind IN ('add', 'delete-file', 'delete-folder', 'rename')),"
    " path TEXT NOT NULL,"
    " old_path TEXT,"
    " staged TEXT UNIQUE,"
    " size INTEGER NOT NULL,"
    " sha256 TEXT NOT NULL,"
    " base_commit TEXT NOT NULL,"
    " state TEXT NOT NULL CHECK (state IN"
    "  ('pending', 'uploading', 'committing', 'conflict', 'failed')),"
    " error TEXT NOT NULL,"
    " attempts INTEGER NOT NULL,"
    " created_at INTEGER NOT NULL,"
    " updated_at INTEGER NOT NULL,"
    " commit_id TEXT NOT NULL,"
    " UNIQUE (repo, branch, path));";

/* Version 3: the upload progress of a journal row (cache_stage_set_sent()).
 * SQLite has no ADD COLUMN IF NOT EXISTS: index_migrate() skips the step
 * when the column is there. */
static const char index_schema_v3[] =
    "ALTER TABLE stage ADD COLUMN sent INTEGER NOT NULL DEFAULT 0;";

/* Version 4: the states 'refused' (set aside: the Hub refused the change,
 * or its staged file is gone) and 'local' (a scratch file kept out of
 * commits).  SQLite cannot change a CHECK constraint: the table is rebuilt,
 * and its AUTOINCREMENT sequence carried over, so that no id is reused. */
static const char index_schema_v4[] =
    "CREATE TABLE stage_v4 ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " repo TEXT NOT NULL,"
    " branch TEXT NOT NULL,"
    " kind TEXT NOT NULL CHECK (kind IN ('add', 'delete-file', 'delete-folder', 'rename')),"
    " path TEXT NOT NULL,"
    " old_path TEXT,"
    " staged TEXT UNIQUE,"
    " size INTEGER NOT NULL,"
    " sha256 TEXT NOT NULL,"
    " base_commit TEXT NOT NULL,"
    " state TEXT NOT NULL CHECK (state IN"
    "  ('pending', 'uploading', 'committing', 'conflict', 'failed', 'refused', 'local')),"
    " error TEXT NOT NULL,"
    " attempts INTEGER NOT NULL,"
    " created_at INTEGER NOT NULL,"
    " updated_at INTEGER NOT NULL,"
    " commit_id TEXT NOT NULL,"
    " sent INTEGER NOT NULL DEFAULT 0,"
    " UNIQUE (repo, branch, path));"
    "INSERT INTO sqlite_sequence (name, seq)"
    " SELECT 'stage_v4', coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'stage';"
    "INSERT INTO stage_v4 (id, repo, branch, kind, path, old_path, staged, size, sha256,"
    " base_commit, state, error, attempts, created_at, updated_at, commit_id, sent)"
    " SELECT id, repo, branch, kind, path, old_path, staged, size, sha256, base_commit,"
    " state, error, attempts, created_at, updated_at, commit_id, sent FROM stage;"
    "DROP TABLE stage;"
    "ALTER TABLE stage_v4 RENAME TO stage;";

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

__attribute__((format(printf, 3, 4))) static void index_log(struct cache_index *idx, int level,
							    const char *fmt, ...)
{
	va_list ap;

	if (!idx->log)
		return;
	va_start(ap, fmt);
	idx->log(level, fmt, ap);
	va_end(ap);
}

/* The one place where SQLite's codes become errno. */
static int index_errno(sqlite3 *db, int rc)
{
	int sys = db ? sqlite3_system_errno(db) : 0;

	switch (rc & 0xff) {
	case SQLITE_OK:
	case SQLITE_ROW:
	case SQLITE_DONE:
		return 0;
	case SQLITE_NOMEM:
		return -ENOMEM;
	case SQLITE_BUSY:
	case SQLITE_LOCKED:
		return -EBUSY;
	case SQLITE_FULL:
		return -ENOSPC;
	case SQLITE_READONLY:
		return -EROFS;
	case SQLITE_PERM:
	case SQLITE_AUTH:
		return -EACCES;
	case SQLITE_TOOBIG:
		return -E2BIG;
	case SQLITE_CONSTRAINT:
		return -EEXIST;
	case SQLITE_MISMATCH:
	case SQLITE_RANGE:
	case SQLITE_MISUSE:
		return -EINVAL;
	case SQLITE_IOERR:
	case SQLITE_CANTOPEN:
		return sys > 0 ? -sys : -EIO;
	default: /* CORRUPT, NOTADB, PROTOCOL, SCHEMA, ... */
		return -EIO;
	}
}

/* Logs a failed SQLite call and returns its errno. */
static int index_fail(struct cache_index *idx, sqlite3 *db, int rc, const char *what)
{
	int err = index_errno(db, rc);

	index_log(idx, LOG_ERR, "cache index \"%s\": %s: %s", idx->path, what,
		  db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
	return err ? err : -EIO;
}

static void conn_close(struct index_conn *conn)
{
	if (!conn)
		return;
	for (int i = 0; i < STMT_COUNT; i++)
		sqlite3_finalize(conn->stmt[i]);
	sqlite3_close(conn->db);
	free(conn);
}

static struct index_conn *conn_open(struct cache_index *idx, bool writer, int *err)
{
	int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_NOFOLLOW;
	struct index_conn *conn = calloc(1, sizeof(*conn));
	int rc;

	if (!conn) {
		*err = -ENOMEM;
		return NULL;
	}
	rc = sqlite3_open_v2(idx->path, &conn->db, flags, NULL);
	if (rc != SQLITE_OK) {
		*err = index_fail(idx, conn->db, rc, "open");
		goto close_conn;
	}
	sqlite3_extended_result_codes(conn->db, 1);
	sqlite3_busy_timeout(conn->db, INDEX_BUSY_MS);
	rc =
	    sqlite3_exec(conn->db, writer ? "PRAGMA synchronous = NORMAL" : "PRAGMA query_only = 1",
			 NULL, NULL, NULL);
	if (rc != SQLITE_OK) {
		*err = index_fail(idx, conn->db, rc, "set up connection");
		goto close_conn;
	}
	return conn;

close_conn:
	conn_close(conn);
	return NULL;
}

/* The statement @which of @conn, reset and ready for binding. */
static int conn_stmt(struct cache_index *idx, struct index_conn *conn, enum index_stmt which,
		     sqlite3_stmt **out)
{
	*out = NULL;
	if (!conn->stmt[which]) {
		int rc = sqlite3_prepare_v3(conn->db, index_sql[which], -1,
					    SQLITE_PREPARE_PERSISTENT, &conn->stmt[which], NULL);

		if (rc != SQLITE_OK)
			return index_fail(idx, conn->db, rc, "prepare");
	}
	*out = conn->stmt[which];
	return 0;
}

/* Steps a statement that returns no row, then resets it. */
static int stmt_done(struct cache_index *idx, struct index_conn *conn, sqlite3_stmt *st,
		     const char *what)
{
	int rc = sqlite3_step(st);

	sqlite3_reset(st);
	return rc == SQLITE_DONE ? 0 : index_fail(idx, conn->db, rc, what);
}

/* Runs statement @which, without parameters and rows. */
static int conn_run(struct cache_index *idx, struct index_conn *conn, enum index_stmt which)
{
	sqlite3_stmt *st;
	int err = conn_stmt(idx, conn, which, &st);

	return err ? err : stmt_done(idx, conn, st, index_sql[which]);
}

/* Takes the writer and starts a write transaction.  On success the caller
 * ends it with writer_end(). */
static int writer_begin(struct cache_index *idx, struct index_conn **conn)
{
	int err;

	pthread_mutex_lock(&idx->write_lock);
	*conn = idx->writer;
	err = conn_run(idx, *conn, STMT_BEGIN);
	if (err)
		pthread_mutex_unlock(&idx->write_lock);
	return err;
}

/* Commits when @err is 0, rolls back otherwise; releases the writer.
 * Returns @err or the commit's error. */
static int writer_end(struct cache_index *idx, struct index_conn *conn, int err)
{
	if (!err)
		err = conn_run(idx, conn, STMT_COMMIT);
	if (err && !sqlite3_get_autocommit(conn->db))
		conn_run(idx, conn, STMT_ROLLBACK);
	pthread_mutex_unlock(&idx->write_lock);
	return err;
}

static int reader_get(struct cache_index *idx, struct index_conn **out)
{
	struct index_conn *conn;
	int err = 0;

	pthread_mutex_lock(&idx->pool_lock);
	while (!idx->readers && idx->nreaders >= INDEX_READERS)
		pthread_cond_wait(&idx->pool_cond, &idx->pool_lock);
	conn = idx->readers;
	if (conn) {
		idx->readers = conn->next;
		pthread_mutex_unlock(&idx->pool_lock);
		*out = conn;
		return 0;
	}
	idx->nreaders++;
	pthread_mutex_unlock(&idx->pool_lock);
	conn = conn_open(idx, false, &err);
	if (!conn) {
		pthread_mutex_lock(&idx->pool_lock);
		idx->nreaders--;
		pthread_cond_signal(&idx->pool_cond);
		pthread_mutex_unlock(&idx->pool_lock);
		return err;
	}
	*out = conn;
	return 0;
}

static void reader_put(struct cache_index *idx, struct index_conn *conn)
{
	pthread_mutex_lock(&idx->pool_lock);
	conn->next = idx->readers;
	idx->readers = conn;
	pthread_cond_signal(&idx->pool_cond);
	pthread_mutex_unlock(&idx->pool_lock);
}

/* Reads PRAGMA user_version. */
static int index_version(struct cache_index *idx, sqlite3 *db, int *version)
{
	sqlite3_stmt *st;
	int rc = sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL);

	if (rc != SQLITE_OK)
		return index_fail(idx, db, rc, "read schema version");
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		*version = sqlite3_column_int(st, 0);
	sqlite3_finalize(st);
	return rc == SQLITE_ROW ? 0 : index_fail(idx, db, rc, "read schema version");
}

static int index_check_version(struct cache_index *idx, int version)
{
	if (version <= CACHE_INDEX_VERSION)
		return 0;
	index_log(idx, LOG_ERR,
		  "cache index \"%s\" has schema version %d, newer than %d: made by a newer hubfs",
		  idx->path, version, CACHE_INDEX_VERSION);
	return -EPROTO;
}

/* Whether @table has column @column: SQLITE_OK with *@has set, or an error. */
static int index_has_column(sqlite3 *db, const char *table, const char *column, bool *has)
{
	sqlite3_stmt *st;
	int rc = sqlite3_prepare_v2(db, "SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2", -1,
				    &st, NULL);

	*has = false;
	if (rc != SQLITE_OK)
		return rc;
	sqlite3_bind_text(st, 1, table, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, column, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	*has = rc == SQLITE_ROW;
	sqlite3_finalize(st);
	return rc == SQLITE_ROW || rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* Brings the schema from @version (0: a new database) to
 * CACHE_INDEX_VERSION, inside the caller's transaction.  Each step is the
 * schema of one version on top of the previous one; an old cache keeps its
 * blobs, metadata and journal.  A step that adds a column is skipped where
 * the column exists (an index marked older than it is, as a test does). */
static int index_migrate(struct cache_index *idx, int version)
{
	static const struct {
		const char *sql;
		const char *table, *column; /* the column the step adds, or NULL */
	} steps[CACHE_INDEX_VERSION] = {
	    {index_schema, NULL, NULL},
	    {index_schema_v2, NULL, NULL},
	    {index_schema_v3, "stage", "sent"},
	    {index_schema_v4, NULL, NULL},
	};
	sqlite3 *db = idx->writer->db;
	char pragma[64];
	char *msg = NULL;
	int rc = SQLITE_OK, err = 0;

	for (int v = version; v < CACHE_INDEX_VERSION && rc == SQLITE_OK; v++) {
		bool has = false;

		if (steps[v].column)
			rc = index_has_column(db, steps[v].table, steps[v].column, &has);
		if (rc == SQLITE_OK && !has)
			rc = sqlite3_exec(db, steps[v].sql, NULL, NULL, &msg);
	}
	if (rc == SQLITE_OK) {
		snprintf(pragma, sizeof(pragma), "PRAGMA user_version = %d", CACHE_INDEX_VERSION);
		rc = sqlite3_exec(db, pragma, NULL, NULL, &msg);
	}
	if (rc != SQLITE_OK) {
		index_log(idx, LOG_ERR, "cache index \"%s\": upgrade schema from version %d: %s",
			  idx->path, version, msg ? msg : sqlite3_errstr(rc));
		err = index_errno(db, rc);
		err = err ? err : -EIO;
	} else if (version > 0) {
		index_log(idx, LOG_INFO,
			  "cache index \"%s\": schema upgraded from version %d to %d", idx->path,
			  version, CACHE_INDEX_VERSION);
	}
	sqlite3_free(msg);
	return err;
}

/* Switches to WAL and creates or upgrades the schema. */
static int index_setup(struct cache_index *idx)
{
	sqlite3 *db = idx->writer->db;
	int version = 0;
	int rc, err;

	/* Refuse a newer schema before changing anything. */
	err = index_version(idx, db, &version);
	if (!err)
		err = index_check_version(idx, version);
	if (err)
		return err;
	rc = sqlite3_exec(db, "PRAGMA journal_mode = WAL", NULL, NULL, NULL);
	if (rc != SQLITE_OK)
		return index_fail(idx, db, rc, "switch to WAL");
	err = conn_run(idx, idx->writer, STMT_BEGIN);
	if (err)
		return err;
	err = index_version(idx, db, &version);
	if (!err)
		err = index_check_version(idx, version);
	if (!err && version < CACHE_INDEX_VERSION)
		err = index_migrate(idx, version);
	if (!err)
		err = conn_run(idx, idx->writer, STMT_COMMIT);
	if (err && !sqlite3_get_autocommit(db))
		conn_run(idx, idx->writer, STMT_ROLLBACK);
	return err;
}

struct cache_index *cache_index_open(const char *path, cache_log_fn log, int *err)
{
	struct cache_index *idx;

	if (!sqlite3_threadsafe()) {
		*err = -ENOTSUP;
		return NULL;
	}
	idx = calloc(1, sizeof(*idx));
	if (!idx) {
		*err = -ENOMEM;
		return NULL;
	}
	idx->log = log;
	idx->path = strdup(path);
	if (!idx->path) {
		*err = -ENOMEM;
		goto free_idx;
	}
	pthread_mutex_init(&idx->write_lock, NULL);
	pthread_mutex_init(&idx->pool_lock, NULL);
	pthread_cond_init(&idx->pool_cond, NULL);
	idx->writer = conn_open(idx, true, err);
	if (!idx->writer)
		goto destroy_locks;
	*err = index_setup(idx);
	if (*err)
		goto close_writer;
	return idx;

close_writer:
	conn_close(idx->writer);
destroy_locks:
	pthread_cond_destroy(&idx->pool_cond);
	pthread_mutex_destroy(&idx->pool_lock);
	pthread_mutex_destroy(&idx->write_lock);
	free(idx->path);
free_idx:
	free(idx);
	return NULL;
}

void cache_index_close(struct cache_index *idx)
{
	if (!idx)
		return;
	while (idx->readers) {
		struct index_conn *next = idx->readers->next;

		conn_close(idx->readers);
		idx->readers = next;
	}
	/* The writer last: closing the last connection checkpoints the WAL. */
	conn_close(idx->writer);
	pthread_cond_destroy(&idx->pool_cond);
	pthread_mutex_destroy(&idx->pool_lock);
	pthread_mutex_destroy(&idx->write_lock);
	free(idx->path);
	free(idx);
}

/*
 * Blobs.
 */

/* Reads the current row of STMT_BLOB_GET into *@out (copying the bitmap). */
static int blob_row(sqlite3_stmt *st, struct cache_index_blob *out)
{
	const void *present = sqlite3_column_blob(st, 3);
	int len = sqlite3_column_bytes(st, 3);

	memset(out, 0, sizeof(*out));
	out->row = sqlite3_column_int64(st, 0);
	out->size = (uint64_t)sqlite3_column_int64(st, 1);
	out->chunk_size = (uint32_t)sqlite3_column_int64(st, 2);
	out->chunks = (uint64_t)sqlite3_column_int64(st, 4);
	out->bytes = (uint64_t)sqlite3_column_int64(st, 5);
	out->complete = sqlite3_column_int(st, 6) != 0;
	out->last_used = sqlite3_column_int64(st, 7);
	if (present && len > 0) {
		out->present = malloc((size_t)len);
		if (!out->present)
			return -ENOMEM;
		memcpy(out->present, present, (size_t)len);
		out->present_len = (size_t)len;
	}
	return 0;
}

/* Looks up blob @id on @conn: 0 with *@out, -ENOENT, or -errno. */
static int blob_get(struct cache_index *idx, struct index_conn *conn, const char *id,
		    struct cache_index_blob *out)
{
	sqlite3_stmt *st;
	int err = conn_stmt(idx, conn, STMT_BLOB_GET, &st);
	int rc;

	memset(out, 0, sizeof(*out));
	if (err)
		return err;
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		err = blob_row(st, out);
	else if (rc == SQLITE_DONE)
		err = -ENOENT;
	else
		err = index_fail(idx, conn->db, rc, "read blob");
	sqlite3_reset(st);
	return err;
}

int cache_index_blob_load(struct cache_index *idx, const char *id, struct cache_index_blob *out)
{
	struct index_conn *conn;
	int err = reader_get(idx, &conn);

	if (err)
		return err;
	err = blob_get(idx, conn, id, out);
	reader_put(idx, conn);
	return err;
}

int cache_index_blob_attach(struct cache_index *idx, const char *id, uint64_t size,
			    uint32_t chunk_size, int64_t now, struct cache_index_blob *out)
{
	struct index_conn *conn;
	sqlite3_stmt *st;
	int err = writer_begin(idx, &conn);

	if (err)
		return err;
	err = blob_get(idx, conn, id, out);
	if (!err && out->size == size && (out->complete || out->chunk_size == chunk_size)) {
		err = conn_stmt(idx, conn, STMT_BLOB_TOUCH, &st);
		if (!err) {
			sqlite3_bind_int64(st, 1, out->row);
			sqlite3_bind_int64(st, 2, now);
			sqlite3_bind_int64(st, 3, chunk_size);
			err = stmt_done(idx, conn, st, "touch blob");
		}
		out->last_used = now;
		out->chunk_size = chunk_size;
		goto end_tx;
	}
	if (err && err != -ENOENT)
		goto end_tx;
	free(out->present);
	/* A fresh row: the old one (if any) described another file. */
	err = conn_stmt(idx, conn, STMT_BLOB_DELETE, &st);
	if (err)
		goto end_tx;
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	err = stmt_done(idx, conn, st, "delete blob");
	if (!err)
		err = conn_stmt(idx, conn, STMT_BLOB_INSERT, &st);
	if (err)
		goto end_tx;
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, (int64_t)size);
	sqlite3_bind_int64(st, 3, chunk_size);
	sqlite3_bind_int64(st, 4, now);
	err = stmt_done(idx, conn, st, "insert blob");
	memset(out, 0, sizeof(*out));
	out->row = sqlite3_last_insert_rowid(conn->db);
	out->size = size;
	out->chunk_size = chunk_size;
	out->last_used = now;
end_tx:
	err = writer_end(idx, conn, err);
	if (err) {
		free(out->present);
		memset(out, 0, sizeof(*out));
	}
	return err;
}

static int counter_add(struct cache_index *idx, struct index_conn *conn, const char *name,
		       uint64_t value)
{
	sqlite3_stmt *st;
	int err;

	if (!value)
		return 0;
	err = conn_stmt(idx, conn, STMT_COUNTER_ADD, &st);
	if (err)
		return err;
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, (int64_t)value);
	return stmt_done(idx, conn, st, "add to counter");
}

int cache_index_blob_persist(struct cache_index *idx, const struct cache_index_persist *p)
{
	struct index_conn *conn;
	sqlite3_stmt *st;
	bool gone = false;
	int err = writer_begin(idx, &conn);

	if (err)
		return err;
	err = conn_stmt(idx, conn, STMT_BLOB_PERSIST, &st);
	if (err)
		goto end_tx;
	sqlite3_bind_int64(st, 1, p->row);
	if (p->present)
		sqlite3_bind_blob(st, 2, p->present, (int)p->present_len, SQLITE_STATIC);
	else
		sqlite3_bind_null(st, 2);
	sqlite3_bind_int64(st, 3, (int64_t)p->chunks);
	sqlite3_bind_int64(st, 4, (int64_t)p->bytes);
	sqlite3_bind_int(st, 5, p->complete);
	sqlite3_bind_int64(st, 6, p->last_used);
	err = stmt_done(idx, conn, st, "persist blob");
	if (err)
		goto end_tx;
	gone = sqlite3_changes(conn->db) == 0;
	err = counter_add(idx, conn, "hits", p->hits);
	if (!err)
		err = counter_add(idx, conn, "misses", p->misses);
end_tx:
	err = writer_end(idx, conn, err);
	return err ? err : gone ? -ESTALE : 0;
}

int cache_index_blob_delete(struct cache_index *idx, const char *id, uint64_t *bytes)
{
	struct cache_index_blob row;
	struct index_conn *conn;
	sqlite3_stmt *st;
	int err = writer_begin(idx, &conn);

	*bytes = 0;
	if (err)
		return err;
	err = blob_get(idx, conn, id, &row);
	if (err == -ENOENT) {
		err = 0;
		goto end_tx;
	}
	if (err)
		goto end_tx;
	free(row.present);
	err = conn_stmt(idx, conn, STMT_BLOB_DELETE, &st);
	if (err)
		goto end_tx;
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	err = stmt_done(idx, conn, st, "delete blob");
	if (!err)
		*bytes = row.bytes;
end_tx:
	err = writer_end(idx, conn, err);
	if (err)
		*bytes = 0;
	return err;
}

int cache_index_blob_exists(struct cache_index *idx, const char *id, bool *exists)
{
	struct cache_index_blob row;
	int err = cache_index_blob_load(idx, id, &row);

	*exists = err == 0;
	if (!err)
		free(row.present);
	return err == -ENOENT ? 0 : err;
}

int cache_index_blob_lru(struct cache_index *idx, int64_t after_used, int64_t after_row,
			 struct cache_index_lru *out, size_t max, size_t *n)
{
	struct index_conn *conn;
	sqlite3_stmt *st;
	int err = reader_get(idx, &conn);
	int rc;

	*n = 0;
	if (err)
		return err;
	err = conn_stmt(idx, conn, STMT_BLOB_LRU, &st);
	if (err)
		goto put_reader;
	sqlite3_bind_int64(st, 1, after_used);
	sqlite3_bind_int64(st, 2, after_row);
	sqlite3_bind_int64(st, 3, (int64_t)max);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW && *n < max) {
		const unsigned char *id = sqlite3_column_text(st, 3);
		struct cache_index_lru *e = &out[*n];

		if (!id || strlen((const char *)id) >= CACHE_ID_MAX)
			continue; /* not a valid id: never a file name */
		e->row = sqlite3_column_int64(st, 0);
		e->last_used = sqlite3_column_int64(st, 1);
		e->bytes = (uint64_t)sqlite3_column_int64(st, 2);
		strcpy(e->id, (const char *)id);
		(*n)++;
	}
	if (rc != SQLITE_DONE && rc != SQLITE_ROW)
		err = index_fail(idx, conn->db, rc, "list blobs");
	sqlite3_reset(st);
put_reader:
	reader_put(idx, conn);
	return err;
}

int cache_index_totals(struct cache_index *idx, struct cache_index_totals *t)
{
	struct index_conn *conn;
	sqlite3_stmt *st;
	int err = reader_get(idx, &conn);
	int rc;

	memset(t, 0, sizeof(*t));
	if (err)
		return err;
	/* One read transaction, so that both statements see the same state. */
	err = conn_run(idx, conn, STMT_BEGIN_READ);
	if (err)
		goto put_reader;
	err = conn_stmt(idx, conn, STMT_TOTALS, &st);
	if (err)
		goto end_read;
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		t->blobs = (uint64_t)sqlite3_column_int64(st, 0);
		t->complete = (uint64_t)sqlite3_column_int64(st, 1);
		t->chunks = (uint64_t)sqlite3_column_int64(st, 2);
		t->bytes = (uint64_t)sqlite3_column_int64(st, 3);
	} else {
		err = index_fail(idx, conn->db, rc, "sum blobs");
	}
	sqlite3_reset(st);
	if (err)
		goto end_read;
	err = conn_stmt(idx, conn, STMT_COUNTERS, &st);
	if (err)
		goto end_read;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		const char *name = (const char *)sqlite3_column_text(st, 0);
		uint64_t value = (uint64_t)sqlite3_column_int64(st, 1);

		if (name && !strcmp(name, "hits"))
			t->hits = value;
		else if (name && !strcmp(name, "misses"))
			t->misses = value;
	}
	if (rc != SQLITE_DONE)
		err = index_fail(idx, conn->db, rc, "read counters");
	sqlite3_reset(st);
end_read:
	conn_run(idx, conn, STMT_COMMIT);
put_reader:
	reader_put(idx, conn);
	return err;
}

int cache_index_counters_add(struct cache_index *idx, uint64_t hits, uint64_t misses)
{
	struct index_conn *conn;
	int err;

	if (!hits && !misses)
		return 0;
	err = writer_begin(idx, &conn);
	if (err)
		return err;
	err = counter_add(idx, conn, "hits", hits);
	if (!err)
		err = counter_add(idx, conn, "misses", misses);
	return writer_end(idx, conn, err);
}

int cache_index_clear(struct cache_index *idx)
{
	static const char sql[] = "DELETE FROM blobs; DELETE FROM kv; DELETE FROM tree_entries;"
				  "DELETE FROM tree_dirs; DELETE FROM trees;"
				  "UPDATE counters SET value = 0;";
	struct index_conn *conn;
	int err = writer_begin(idx, &conn);
	int rc;

	if (err)
		return err;
	rc = sqlite3_exec(conn->db, sql, NULL, NULL, NULL);
	if (rc != SQLITE_OK)
		err = index_fail(idx, conn->db, rc, "clear");
	return writer_end(idx, conn, err);
}

/*
 * Key/value pairs.
 */

int cache_index_kv_put(struct cache_index *idx, const char *key, const void *val, size_t len,
		       int64_t fetched_at)
{
	struct index_conn *conn;
	sqlite3_stmt *st;
	int err;

	pthread_mutex_lock(&idx->write_lock);
	conn = idx->writer;
	err = conn_stmt(idx, conn, STMT_KV_PUT, &st);
	if (!err) {
		sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
		/* zeroblob: a NULL pointer would bind NULL, refused by NOT NULL */
		if (len)
			sqlite3_bind_blob(st, 2, val, (int)len, SQLITE_STATIC);
		else
			sqlite3_bind_zeroblob(st, 2, 0);
		sqlite3_bind_int64(st, 3, fetched_at);
		err = stmt_done(idx, conn, st, "put pair");
	}
	pthread_mutex_unlock(&idx->write_lock);
	return err;
}

int cache_index_kv_get(struct cache_index *idx, const char *key, void **val, size_t *len,
		       int64_t *fetched_at)
{
	struct index_conn *conn;
	sqlite3_stmt *st;
	int err = reader_get(idx, &conn);
	int rc;

	*val = NULL;
	if (err)
		return err;
	err = conn_stmt(idx, conn, STMT_KV_GET, &st);
	if (err)
		goto put_reader;
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		const void *data = sqlite3_column_blob(st, 0);
		size_t n = (size_t)sqlite3_column_bytes(st, 0);
		char *copy = malloc(n + 1);

		if (copy) {
			if (n)
				memcpy(copy, data, n);
			copy[n] = '\0';
			*val = copy;
			*len = n;
			*fetched_at = sqlite3_column_int64(st, 1);
		} else {
			err = -ENOMEM;
		}
	} else if (rc == SQLITE_DONE) {
		err = -ENOENT;
	} else {
		err = index_fail(idx, conn->db, rc, "get pair");
	}
	sqlite3_reset(st);
put_reader:
	reader_put(idx, conn);
	return err;
}

int cache_index_kv_delete(struct cache_index *idx, const char *key)
{
	struct index_conn *conn;
	sqlite3_stmt *st;
	int err;

	pthread_mutex_lock(&idx->write_lock);
	conn = idx->writer;
	err = conn_stmt(idx, conn, STMT_KV_DELETE, &st);
	if (!err) {
		sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
		err = stmt_done(idx, conn, st, "delete pair");
	}
	pthread_mutex_unlock(&idx->write_lock);
	return err;
}

int cache_index_kv_delete_prefix(struct cache_index *idx, const char *prefix)
{
	size_t len = strlen(prefix);
	char *upper = malloc(len + 1);
	struct index_conn *conn;
	sqlite3_stmt *st;
	int err;

	if (!upper)
		return -ENOMEM;
	/* The keys >= prefix and < upper, where upper is the prefix with its
	 * last byte below 0xff incremented (keys compare as bytes). */
	memcpy(upper, prefix, len + 1);
	while (len > 0 && (unsigned char)upper[len - 1] == 0xff)
		len--;
	if (len > 0)
		upper[len - 1] = (char)((unsigned char)upper[len - 1] + 1);
	pthread_mutex_lock(&idx->write_lock);
	conn = idx->writer;
	err = conn_stmt(idx, conn, len ? STMT_KV_DELETE_RANGE : STMT_KV_DELETE_FROM, &st);
	if (!err) {
		sqlite3_bind_text(st, 1, prefix, -1, SQLITE_STATIC);
		if (len)
			sqlite3_bind_text(st, 2, upper, (int)len, SQLITE_STATIC);
		err = stmt_done(idx, conn, st, "delete pairs");
	}
	pthread_mutex_unlock(&idx->write_lock);
	free(upper);
	return err;
}

/*
 * Trees.
 */

/* The number of tree @key, made when @create; -ENOENT when unknown. */
static int tree_id(struct cache_index *idx, struct index_conn *conn, const char *key, bool create,
		   int64_t *tree)
{
	sqlite3_stmt *st;
	int err, rc;

	if (create) {
		err = conn_stmt(idx, conn, STMT_TREE_INSERT, &st);
		if (err)
			return err;
		sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
		err = stmt_done(idx, conn, st, "insert tree");
		if (err)
			return err;
	}
	err = conn_stmt(idx, conn, STMT_TREE_GET, &st);
	if (err)
		return err;
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		*tree = sqlite3_column_int64(st, 0);
	else if (rc == SQLITE_DONE)
		err = -ENOENT;
	else
		err = index_fail(idx, conn->db, rc, "read tree");
	sqlite3_reset(st);
	return err;
}

/* What a tree put works on. */
struct tree_put {
	struct cache_index *idx;
	struct index_conn *conn;
	int64_t tree;
	const char *scope; /* the directory put */
	size_t scope_len;
	bool synthesize; /* add the entries of directories implied by a path */
};

/* Length of the parent of @path[0..@len): up to its last '/', 0 at the top. */
static size_t path_parent_len(const char *path, size_t len)
{
	while (len > 0 && path[len - 1] != '/')
		len--;
	return len ? len - 1 : 0;
}

/* Finds or makes the row of directory @path[0..@len) into *@dir.  With
 * tp->synthesize, a directory made below the scope also gets its entry in
 * its parent (made the same way). */
static int dir_ensure(struct tree_put *tp, const char *path, size_t len, int depth, int64_t *dir)
{
	struct cache_index *idx = tp->idx;
	struct index_conn *conn = tp->conn;
	sqlite3_stmt *st;
	int err = conn_stmt(idx, conn, STMT_DIR_GET, &st);
	size_t plen;
	int64_t parent;
	int rc;

	if (err)
		return err;
	sqlite3_bind_int64(st, 1, tp->tree);
	sqlite3_bind_text(st, 2, path, (int)len, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		*dir = sqlite3_column_int64(st, 0);
	else if (rc != SQLITE_DONE)
		err = index_fail(idx, conn->db, rc, "read directory");
	sqlite3_reset(st);
	if (err || rc == SQLITE_ROW)
		return err;
	err = conn_stmt(idx, conn, STMT_DIR_INSERT, &st);
	if (err)
		return err;
	sqlite3_bind_int64(st, 1, tp->tree);
	sqlite3_bind_text(st, 2, path, (int)len, SQLITE_STATIC);
	err = stmt_done(idx, conn, st, "insert directory");
	if (err)
		return err;
	*dir = sqlite3_last_insert_rowid(conn->db);
	if (!tp->synthesize || len <= tp->scope_len || depth > CACHE_PATH_MAX)
		return 0;
	plen = path_parent_len(path, len);
	err = dir_ensure(tp, path, plen, depth + 1, &parent);
	if (err)
		return err;
	err = conn_stmt(idx, conn, STMT_ENTRY_ADD, &st);
	if (err)
		return err;
	sqlite3_bind_int64(st, 1, parent);
	sqlite3_bind_text(st, 2, path + (plen ? plen + 1 : 0), (int)(len - (plen ? plen + 1 : 0)),
			  SQLITE_STATIC);
	return stmt_done(idx, conn, st, "add directory entry");
}

/* Binds the scope "under @dir" of the *_UNDER statements at ?2 and ?3. */
static void bind_under(sqlite3_stmt *st, const char *dir, char *lo, char *hi)
{
	size_t len = strlen(dir);

	if (!len) {
		static const unsigned char after_text[1] = {0};

		sqlite3_bind_text(st, 2, "", 0, SQLITE_STATIC);
		sqlite3_bind_blob(st, 3, after_text, 1, SQLITE_STATIC);
		return;
	}
	memcpy(lo, dir, len);
	memcpy(hi, dir, len);
	lo[len] = '/';
	hi[len] = '0';
	sqlite3_bind_text(st, 2, lo, (int)len + 1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, hi, (int)len + 1, SQLITE_STATIC);
}

/* Runs a *_UNDER statement for tree tp->tree and directory @dir. */
static int run_under(struct tree_put *tp, enum index_stmt which, const char *dir)
{
	char lo[CACHE_PATH_MAX + 2], hi[CACHE_PATH_MAX + 2];
	sqlite3_stmt *st;
	int err = conn_stmt(tp->idx, tp->conn, which, &st);

	if (err)
		return err;
	sqlite3_bind_int64(st, 1, tp->tree);
	bind_under(st, dir, lo, hi);
	return stmt_done(tp->idx, tp->conn, st, index_sql[which]);
}

static int entry_put(struct tree_put *tp, int64_t dir, const struct cache_entry *e,
		     const char *name)
{
	sqlite3_stmt *st;
	int err = conn_stmt(tp->idx, tp->conn, STMT_ENTRY_PUT, &st);

	if (err)
		return err;
	sqlite3_bind_int64(st, 1, dir);
	sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
	sqlite3_bind_int(st, 3, e->is_dir);
	sqlite3_bind_int64(st, 4, (int64_t)e->size);
	sqlite3_bind_text(st, 5, e->oid, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 6, e->sha256, -1, SQLITE_STATIC);
	return stmt_done(tp->idx, tp->conn, st, "put entry");
}

static int tree_put_entries(struct tree_put *tp, const struct cache_entry *entries, size_t n,
			    unsigned flags)
{
	bool complete = flags & CACHE_TREE_COMPLETE;
	bool recursive = complete && (flags & CACHE_TREE_RECURSIVE);
	const char *last = NULL; /* the parent of the previous entry, memoised */
	size_t last_len = 0;
	int64_t top, dir = 0;
	sqlite3_stmt *st;
	int err;

	if (recursive) {
		err = run_under(tp, STMT_ENTRIES_DELETE_UNDER, tp->scope);
		if (!err)
			err = run_under(tp, STMT_DIRS_DELETE_UNDER, tp->scope);
		if (err)
			return err;
	}
	err = dir_ensure(tp, tp->scope, tp->scope_len, 0, &top);
	if (err)
		return err;
	if (complete) {
		err = conn_stmt(tp->idx, tp->conn, STMT_ENTRIES_DELETE_DIR, &st);
		if (err)
			return err;
		sqlite3_bind_int64(st, 1, top);
		err = stmt_done(tp->idx, tp->conn, st, "delete entries");
		if (err)
			return err;
	}
	tp->synthesize = recursive;
	for (size_t i = 0; i < n; i++) {
		const char *path = entries[i].path;
		size_t len = strlen(path);
		size_t plen = path_parent_len(path, len);

		if (!last || plen != last_len || memcmp(path, last, plen)) {
			err = dir_ensure(tp, path, plen, 0, &dir);
			if (err)
				return err;
			last = path;
			last_len = plen;
		}
		err = entry_put(tp, dir, &entries[i], path + (plen ? plen + 1 : 0));
		if (!err && recursive && entries[i].is_dir) {
			int64_t sub;

			/* so that an empty directory has a (complete) listing */
			err = dir_ensure(tp, path, len, 0, &sub);
		}
		if (err)
			return err;
	}
	if (!complete)
		return 0;
	err = conn_stmt(tp->idx, tp->conn, STMT_DIR_COMPLETE, &st);
	if (err)
		return err;
	sqlite3_bind_int64(st, 1, top);
	err = stmt_done(tp->idx, tp->conn, st, "complete directory");
	if (!err && recursive)
		err = run_under(tp, STMT_DIRS_COMPLETE_UNDER, tp->scope);
	return err;
}

int cache_index_tree_put(struct cache_index *idx, const char *tree_key, const char *dir,
			 const struct cache_entry *entries, size_t n, unsigned flags)
{
	struct tree_put tp = {.idx = idx, .scope = dir, .scope_len = strlen(dir)};
	int err = writer_begin(idx, &tp.conn);

	if (err)
		return err;
	err = tree_id(idx, tp.conn, tree_key, true, &tp.tree);
	if (!err)
		err = tree_put_entries(&tp, entries, n, flags);
	return writer_end(idx, tp.conn, err);
}

/* Copies the entry columns (is_dir, size, oid, sha256 at @col...) of @st. */
static int entry_read(sqlite3_stmt *st, int col, const char *dir, const char *name,
		      struct cache_entry *out)
{
	const char *oid = (const char *)sqlite3_column_text(st, col + 2);
	const char *sha = (const char *)sqlite3_column_text(st, col + 3);
	size_t dlen = strlen(dir), nlen = strlen(name);

	memset(out, 0, sizeof(*out));
	out->path = malloc(dlen + 1 + nlen + 1);
	if (!out->path)
		return -ENOMEM;
	if (dlen) {
		memcpy(out->path, dir, dlen);
		out->path[dlen++] = '/';
	}
	memcpy(out->path + dlen, name, nlen + 1);
	out->is_dir = sqlite3_column_int(st, col) != 0;
	out->size = (uint64_t)sqlite3_column_int64(st, col + 1);
	snprintf(out->oid, sizeof(out->oid), "%s", oid ? oid : "");
	snprintf(out->sha256, sizeof(out->sha256), "%s", sha ? sha : "");
	return 0;
}

/* What the index knows of one path. */
enum lookup_answer {
	LOOKUP_FOUND,	  /* an entry (out filled when asked) */
	LOOKUP_ABSENT,	  /* the parent's listing is complete and lacks it */
	LOOKUP_PARTIAL,	  /* the parent is known, its listing is not complete */
	LOOKUP_NO_PARENT, /* nothing known of the parent */
};

/* Looks up @path[0..@len) (NUL-terminated there).  With @out, fills it when
 * found; *@is_dir tells what was found. */
static int lookup_one(struct cache_index *idx, struct index_conn *conn, const char *tree_key,
		      const char *path, size_t len, struct cache_entry *out, bool *is_dir,
		      enum lookup_answer *answer)
{
	size_t plen = path_parent_len(path, len);
	const char *name = path + (plen ? plen + 1 : 0);
	char parent[CACHE_PATH_MAX + 1];
	sqlite3_stmt *st;
	int err = conn_stmt(idx, conn, STMT_LOOKUP, &st);
	int rc;

	if (err)
		return err;
	memcpy(parent, path, plen);
	parent[plen] = '\0';
	sqlite3_bind_text(st, 1, tree_key, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, parent, (int)plen, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, name, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		if (sqlite3_column_int(st, 1)) {
			*answer = LOOKUP_FOUND;
			*is_dir = sqlite3_column_int(st, 2) != 0;
			if (out)
				err = entry_read(st, 2, parent, name, out);
		} else {
			*answer = sqlite3_column_int(st, 0) ? LOOKUP_ABSENT : LOOKUP_PARTIAL;
		}
	} else if (rc == SQLITE_DONE) {
		*answer = LOOKUP_NO_PARENT;
	} else {
		err = index_fail(idx, conn->db, rc, "look up entry");
	}
	sqlite3_reset(st);
	return err;
}

int cache_index_tree_lookup(struct cache_index *idx, const char *tree_key, const char *path,
			    struct cache_entry *out)
{
	char buf[CACHE_PATH_MAX + 1];
	size_t len = strlen(path);
	enum lookup_answer answer;
	struct index_conn *conn;
	bool is_dir = false;
	int err;

	memcpy(buf, path, len + 1);
	err = reader_get(idx, &conn);
	if (err)
		return err;
	err = conn_run(idx, conn, STMT_BEGIN_READ); /* one snapshot for the walk */
	if (err)
		goto put_reader;
	err = lookup_one(idx, conn, tree_key, buf, len, out, &is_dir, &answer);
	/* Parent unknown: the nearest known ancestor may still answer, e.g. a
	 * complete root without "a" says that "a/b/c" does not exist. */
	while (!err && answer == LOOKUP_NO_PARENT) {
		len = path_parent_len(buf, len);
		if (!len)
			break;
		buf[len] = '\0';
		err = lookup_one(idx, conn, tree_key, buf, len, NULL, &is_dir, &answer);
		if (!err && answer == LOOKUP_FOUND)
			err = is_dir ? -ENODATA : -ENOTDIR;
	}
	if (!err)
		err = answer == LOOKUP_FOUND ? 0 : answer == LOOKUP_ABSENT ? -ENOENT : -ENODATA;
	conn_run(idx, conn, STMT_COMMIT);
put_reader:
	reader_put(idx, conn);
	return err;
}

void cache_index_entries_free(struct cache_entry *entries, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(entries[i].path);
	free(entries);
}

int cache_index_tree_list(struct cache_index *idx, const char *tree_key, const char *dir,
			  struct cache_entry **entries, size_t *n)
{
	struct cache_entry *v = NULL;
	size_t count = 0, cap = 0;
	struct index_conn *conn;
	sqlite3_stmt *st;
	bool known = false;
	int err, rc;

	*entries = NULL;
	*n = 0;
	err = reader_get(idx, &conn);
	if (err)
		return err;
	err = conn_stmt(idx, conn, STMT_LIST, &st);
	if (err)
		goto put_reader;
	sqlite3_bind_text(st, 1, tree_key, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, dir, -1, SQLITE_STATIC);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		const char *name = (const char *)sqlite3_column_text(st, 1);

		if (!sqlite3_column_int(st, 0))
			break; /* not complete: known is false */
		known = true;
		if (!name)
			continue; /* an empty directory */
		err = index_grow((void **)&v, &cap, count, sizeof(*v), 64);
		if (err)
			break;
		err = entry_read(st, 2, dir, name, &v[count]);
		if (err)
			break;
		count++;
	}
	if (!err && rc != SQLITE_ROW && rc != SQLITE_DONE)
		err = index_fail(idx, conn->db, rc, "list directory");
	sqlite3_reset(st);
	if (!err && !known)
		err = -ENODATA;
	if (err) {
		cache_index_entries_free(v, count);
	} else {
		*entries = v;
		*n = count;
	}
put_reader:
	reader_put(idx, conn);
	return err;
}

int cache_index_tree_delete(struct cache_index *idx, const char *tree_key)
{
	static const enum index_stmt steps[] = {STMT_ENTRIES_DELETE_TREE, STMT_DIRS_DELETE_TREE,
						STMT_TREE_DELETE};
	struct index_conn *conn;
	sqlite3_stmt *st;
	int64_t tree;
	int err = writer_begin(idx, &conn);

	if (err)
		return err;
	err = tree_id(idx, conn, tree_key, false, &tree);
	if (err == -ENOENT) {
		err = 0;
		goto end_tx;
	}
	for (size_t i = 0; !err && i < sizeof(steps) / sizeof(steps[0]); i++) {
		err = conn_stmt(idx, conn, steps[i], &st);
		if (err)
			break;
		sqlite3_bind_int64(st, 1, tree);
		err = stmt_done(idx, conn, st, "delete tree");
	}
end_tx:
	return writer_end(idx, conn, err);
}

/*
 * The write journal.  Its writes are durable against a power loss: see
 * "Durability" at the top.
 */

static const char *const stage_kind_text[] = {
    [CACHE_STAGE_ADD] = "add",
    [CACHE_STAGE_DELETE_FILE] = "delete-file",
    [CACHE_STAGE_DELETE_FOLDER] = "delete-folder",
    [CACHE_STAGE_RENAME] = "rename",
};

static const char *const stage_state_text[CACHE_STAGE_STATES] = {
    [CACHE_STAGE_PENDING] = "pending",	     [CACHE_STAGE_UPLOADING] = "uploading",
    [CACHE_STAGE_COMMITTING] = "committing", [CACHE_STAGE_CONFLICT] = "conflict",
    [CACHE_STAGE_FAILED] = "failed",	     [CACHE_STAGE_REFUSED] = "refused",
    [CACHE_STAGE_LOCAL] = "local",
};

/* The index of @text in @names[0..@n), or -1. */
static int text_lookup(const char *const *names, int n, const unsigned char *text)
{
	for (int i = 0; text && i < n; i++)
		if (!strcmp(names[i], (const char *)text))
			return i;
	return -1;
}

/* Like writer_begin(), with the WAL fsync'ed at the commit. */
static int journal_begin(struct cache_index *idx, struct index_conn **conn)
{
	int err;

	pthread_mutex_lock(&idx->write_lock);
	*conn = idx->writer;
	err = conn_run(idx, *conn, STMT_SYNC_FULL);
	if (!err)
		err = conn_run(idx, *conn, STMT_BEGIN);
	if (err) {
		conn_run(idx, *conn, STMT_SYNC_NORMAL);
		pthread_mutex_unlock(&idx->write_lock);
	}
	return err;
}

/* Like writer_end(), back to synchronous=NORMAL for the other writes. */
static int journal_end(struct cache_index *idx, struct index_conn *conn, int err)
{
	if (!err)
		err = conn_run(idx, conn, STMT_COMMIT);
	if (err && !sqlite3_get_autocommit(conn->db))
		conn_run(idx, conn, STMT_ROLLBACK);
	conn_run(idx, conn, STMT_SYNC_NORMAL);
	pthread_mutex_unlock(&idx->write_lock);
	return err;
}

/* A copy of a text column, NULL for a NULL one when @nullable. */
static int column_strdup(sqlite3_stmt *st, int col, bool nullable, char **out)
{
	const unsigned char *text = sqlite3_column_text(st, col);

	*out = NULL;
	if (!text) {
		if (sqlite3_column_type(st, col) == SQLITE_NULL)
			return nullable ? 0 : -EIO;
		return -ENOMEM;
	}
	*out = strdup((const char *)text);
	return *out ? 0 : -ENOMEM;
}

/* Copies a text column into @buf of @size bytes; -EIO when too long. */
static int column_copy(sqlite3_stmt *st, int col, char *buf, size_t size)
{
	const unsigned char *text = sqlite3_column_text(st, col);
	size_t len = text ? strlen((const char *)text) : 0;

	buf[0] = '\0';
	if (!text)
		return sqlite3_column_type(st, col) == SQLITE_NULL ? 0 : -ENOMEM;
	if (len >= size)
		return -EIO;
	memcpy(buf, text, len + 1);
	return 0;
}

/* Reads the STAGE_COLUMNS of the current row of @st into *@out.  A row that
 * this code would not write (an unknown kind, a field too long) is -EIO. */
static int stage_row(struct cache_index *idx, sqlite3_stmt *st, struct cache_stage_change *out)
{
	int kind = text_lookup(stage_kind_text, 4, sqlite3_column_text(st, 3));
	int state = text_lookup(stage_state_text, CACHE_STAGE_STATES, sqlite3_column_text(st, 10));
	int64_t size = sqlite3_column_int64(st, 7);
	int64_t attempts = sqlite3_column_int64(st, 12);
	int64_t sent = sqlite3_column_int64(st, 16);
	int err;

	memset(out, 0, sizeof(*out));
	out->id = sqlite3_column_int64(st, 0);
	err = column_strdup(st, 1, false, &out->repo);
	if (!err)
		err = column_strdup(st, 2, false, &out->branch);
	if (!err)
		err = column_strdup(st, 4, false, &out->path);
	if (!err)
		err = column_strdup(st, 5, true, &out->old_path);
	if (!err)
		err = column_copy(st, 6, out->staged, sizeof(out->staged));
	if (!err)
		err = column_copy(st, 8, out->sha256, sizeof(out->sha256));
	if (!err)
		err = column_copy(st, 9, out->base_commit, sizeof(out->base_commit));
	if (!err)
		err = column_strdup(st, 11, false, &out->error);
	if (!err)
		err = column_copy(st, 15, out->commit_id, sizeof(out->commit_id));
	if (!err && (kind < 0 || state < 0 || size < 0 || attempts < 0 || attempts > UINT32_MAX ||
		     sent < 0))
		err = -EIO;
	if (err) {
		if (err == -EIO)
			index_log(idx, LOG_ERR, "cache index \"%s\": journal row %lld is malformed",
				  idx->path, (long long)out->id);
		cache_stage_change_release(out);
		return err;
	}
	out->kind = (enum cache_stage_kind)kind;
	out->state = (enum cache_stage_state)state;
	out->size = (uint64_t)size;
	out->attempts = (uint32_t)attempts;
	out->sent = (uint64_t)sent;
	out->created_at = sqlite3_column_int64(st, 13);
	out->updated_at = sqlite3_column_int64(st, 14);
	return 0;
}

/* Binds ?1 and ?2 to @repo and @branch. */
static void bind_branch(sqlite3_stmt *st, const char *repo, const char *branch)
{
	sqlite3_bind_text(st, 1, repo, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, branch, -1, SQLITE_STATIC);
}

/* The row of @ch's path into *@out (out->id 0 when none). */
static int stage_get_path(struct cache_index *idx, struct index_conn *conn,
			  const struct cache_stage_change *ch, struct cache_stage_change *out)
{
	sqlite3_stmt *st;
	int err = conn_stmt(idx, conn, STMT_STAGE_GET_PATH, &st);
	int rc;

	memset(out, 0, sizeof(*out));
	if (err)
		return err;
	bind_branch(st, ch->repo, ch->branch);
	sqlite3_bind_text(st, 3, ch->path, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		err = stage_row(idx, st, out);
	else if (rc != SQLITE_DONE)
		err = index_fail(idx, conn->db, rc, "read journal row");
	sqlite3_reset(st);
	return err;
}

static int stage_delete(struct cache_index *idx, struct index_conn *conn, int64_t id)
{
	sqlite3_stmt *st;
	int err = conn_stmt(idx, conn, STMT_STAGE_DELETE, &st);

	if (err)
		return err;
	sqlite3_bind_int64(st, 1, id);
	return stmt_done(idx, conn, st, "delete journal row");
}

int cache_index_stage_add(struct cache_index *idx, const struct cache_stage_change *ch, int64_t now,
			  int64_t *id, struct cache_stage_change *old)
{
	struct index_conn *conn;
	sqlite3_stmt *st;
	int err = journal_begin(idx, &conn);

	if (old)
		memset(old, 0, sizeof(*old));
	if (err)
		return err;
	if (old) {
		err = stage_get_path(idx, conn, ch, old);
		if (!err && old->id)
			err = stage_delete(idx, conn, old->id);
		if (err)
			goto end_tx;
	}
	err = conn_stmt(idx, conn, STMT_STAGE_INSERT, &st);
	if (err)
		goto end_tx;
	bind_branch(st, ch->repo, ch->branch);
	sqlite3_bind_text(st, 3, stage_kind_text[ch->kind], -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 4, ch->path, -1, SQLITE_STATIC);
	if (ch->old_path)
		sqlite3_bind_text(st, 5, ch->old_path, -1, SQLITE_STATIC);
	else
		sqlite3_bind_null(st, 5);
	if (ch->staged[0])
		sqlite3_bind_text(st, 6, ch->staged, -1, SQLITE_STATIC);
	else
		sqlite3_bind_null(st, 6);
	sqlite3_bind_int64(st, 7, (int64_t)ch->size);
	sqlite3_bind_text(st, 8, ch->sha256, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 9, ch->base_commit, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 10, now);
	/* A second row for the path, or a staged file in two rows: -EEXIST. */
	err = stmt_done(idx, conn, st, "add journal row");
	if (!err && id)
		*id = sqlite3_last_insert_rowid(conn->db);
end_tx:
	err = journal_end(idx, conn, err);
	if (err && old)
		cache_stage_change_release(old);
	return err;
}

int cache_index_stage_get(struct cache_index *idx, int64_t id, struct cache_stage_change *out)
{
	struct index_conn *conn;
	sqlite3_stmt *st;
	int err = reader_get(idx, &conn);
	int rc;

	memset(out, 0, sizeof(*out));
	if (err)
		return err;
	err = conn_stmt(idx, conn, STMT_STAGE_GET, &st);
	if (err)
		goto put_reader;
	sqlite3_bind_int64(st, 1, id);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		err = stage_row(idx, st, out);
	else if (rc == SQLITE_DONE)
		err = -ENOENT;
	else
		err = index_fail(idx, conn->db, rc, "read journal row");
	sqlite3_reset(st);
put_reader:
	reader_put(idx, conn);
	return err;
}

int cache_index_stage_list(struct cache_index *idx, const char *repo, const char *branch,
			   struct cache_stage_change **changes, size_t *n)
{
	struct cache_stage_change *v = NULL;
	size_t count = 0, cap = 0;
	struct index_conn *conn;
	sqlite3_stmt *st;
	int err, rc;

	*changes = NULL;
	*n = 0;
	err = reader_get(idx, &conn);
	if (err)
		return err;
	err = conn_stmt(idx, conn, STMT_STAGE_LIST, &st);
	if (err)
		goto put_reader;
	bind_branch(st, repo, branch);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		err = index_grow((void **)&v, &cap, count, sizeof(*v), 16);
		if (err)
			break;
		err = stage_row(idx, st, &v[count]);
		if (err)
			break;
		count++;
	}
	if (!err && rc != SQLITE_DONE)
		err = index_fail(idx, conn->db, rc, "list journal");
	sqlite3_reset(st);
	if (err) {
		cache_stage_changes_free(v, count);
	} else {
		*changes = v;
		*n = count;
	}
put_reader:
	reader_put(idx, conn);
	return err;
}

static int stage_branch_row(sqlite3_stmt *st, struct cache_stage_branch *b)
{
	int err;

	memset(b, 0, sizeof(*b));
	b->changes = (uint64_t)sqlite3_column_int64(st, 2);
	b->bytes = (uint64_t)sqlite3_column_int64(st, 3);
	for (int i = 0; i < CACHE_STAGE_STATES; i++)
		b->by_state[i] = (uint64_t)sqlite3_column_int64(st, 4 + i);
	err = column_strdup(st, 0, false, &b->repo);
	if (!err)
		err = column_strdup(st, 1, false, &b->branch);
	if (!err && sqlite3_column_type(st, 4 + CACHE_STAGE_STATES) != SQLITE_NULL)
		err = column_strdup(st, 4 + CACHE_STAGE_STATES, false, &b->error);
	else if (!err)
		err = (b->error = strdup("")) ? 0 : -ENOMEM;
	b->sent = (uint64_t)sqlite3_column_int64(st, 5 + CACHE_STAGE_STATES);
	return err;
}

int cache_index_stage_branches(struct cache_index *idx, struct cache_stage_branch **branches,
			       size_t *n)
{
	struct cache_stage_branch *v = NULL;
	size_t count = 0, cap = 0;
	struct index_conn *conn;
	sqlite3_stmt *st;
	int err, rc;

	*branches = NULL;
	*n = 0;
	err = reader_get(idx, &conn);
	if (err)
		return err;
	err = conn_stmt(idx, conn, STMT_STAGE_BRANCHES, &st);
	if (err)
		goto put_reader;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		err = index_grow((void **)&v, &cap, count, sizeof(*v), 8);
		if (err)
			break;
		err = stage_branch_row(st, &v[count]);
		count++; /* freed below even when half filled */
		if (err)
			break;
	}
	if (!err && rc != SQLITE_DONE)
		err = index_fail(idx, conn->db, rc, "list journal branches");
	sqlite3_reset(st);
	if (err) {
		cache_stage_branches_free(v, count);
	} else {
		*branches = v;
		*n = count;
	}
put_reader:
	reader_put(idx, conn);
	return err;
}

int cache_index_stage_count(struct cache_index *idx, const char *repo, const char *branch,
			    uint64_t *changes, uint64_t *bytes)
{
	struct index_conn *conn;
	sqlite3_stmt *st;
	int err = reader_get(idx, &conn);
	int rc;

	*changes = *bytes = 0;
	if (err)
		return err;
	err = conn_stmt(idx, conn, STMT_STAGE_COUNT, &st);
	if (err)
		goto put_reader;
	bind_branch(st, repo, branch);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		*changes = (uint64_t)sqlite3_column_int64(st, 0);
		*bytes = (uint64_t)sqlite3_column_int64(st, 1);
	} else {
		err = index_fail(idx, conn->db, rc, "count journal");
	}
	sqlite3_reset(st);
put_reader:
	reader_put(idx, conn);
	return err;
}

int cache_index_stage_update(struct cache_index *idx, const int64_t *ids, size_t n,
			     const struct cache_stage_update *u, int64_t now, size_t *updated)
{
	struct index_conn *conn;
	sqlite3_stmt *st;
	size_t count = 0;
	int err = journal_begin(idx, &conn);

	*updated = 0;
	if (err)
		return err;
	err = conn_stmt(idx, conn, STMT_STAGE_UPDATE, &st);
	for (size_t i = 0; !err && i < n; i++) {
		sqlite3_bind_int64(st, 1, ids[i]);
		sqlite3_bind_int(st, 2, (int)u->set);
		sqlite3_bind_text(st, 3, stage_state_text[u->state], -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 4, u->error ? u->error : "", -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 5, u->attempts);
		sqlite3_bind_text(st, 6, u->commit_id ? u->commit_id : "", -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 7, now);
		sqlite3_bind_text(st, 8, u->base_commit ? u->base_commit : "", -1, SQLITE_STATIC);
		err = stmt_done(idx, conn, st, "update journal row");
		if (!err)
			count += (size_t)sqlite3_changes(conn->db);
	}
	err = journal_end(idx, conn, err);
	if (!err)
		*updated = count;
	return err;
}

int cache_index_stage_set_content(struct cache_index *idx, int64_t id, uint64_t size,
				  const char *sha256, int64_t now)
{
	struct index_conn *conn;
	sqlite3_stmt *st;
	int err = journal_begin(idx, &conn);

	if (err)
		return err;
	err = conn_stmt(idx, conn, STMT_STAGE_CONTENT, &st);
	if (!err) {
		sqlite3_bind_int64(st, 1, id);
		sqlite3_bind_int64(st, 2, (int64_t)size);
		sqlite3_bind_text(st, 3, sha256, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 4, now);
		err = stmt_done(idx, conn, st, "set journal content");
	}
	if (!err && sqlite3_changes(conn->db) == 0)
		err = -ENOENT;
	return journal_end(idx, conn, err);
}

/* Progress only: synchronous=NORMAL (writer_begin()), no fsync. */
int cache_index_stage_set_sent(struct cache_index *idx, int64_t id, uint64_t sent)
{
	struct index_conn *conn;
	sqlite3_stmt *st;
	int err = writer_begin(idx, &conn);

	if (err)
		return err;
	err = conn_stmt(idx, conn, STMT_STAGE_SENT, &st);
	if (!err) {
		sqlite3_bind_int64(st, 1, id);
		sqlite3_bind_int64(st, 2, (int64_t)sent);
		err = stmt_done(idx, conn, st, "set journal upload progress");
	}
	if (!err && sqlite3_changes(conn->db) == 0)
		err = -ENOENT;
	return writer_end(idx, conn, err);
}

/* Forgets row @id if it belongs to @repo and @branch, appending its staged
 * file (if any) to @names (room for one more is there). */
static int stage_forget(struct cache_index *idx, struct index_conn *conn, const char *repo,
			const char *branch, int64_t id, char (*names)[CACHE_STAGE_NAME_SIZE],
			size_t *count)
{
	struct cache_stage_change row;
	sqlite3_stmt *st;
	int err = conn_stmt(idx, conn, STMT_STAGE_GET, &st);
	int rc;

	if (err)
		return err;
	sqlite3_bind_int64(st, 1, id);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		err = stage_row(idx, st, &row);
	else if (rc != SQLITE_DONE)
		err = index_fail(idx, conn->db, rc, "read journal row");
	sqlite3_reset(st);
	if (err || rc == SQLITE_DONE)
		return err;
	if (!strcmp(row.repo, repo) && !strcmp(row.branch, branch)) {
		err = stage_delete(idx, conn, id);
		if (!err && row.staged[0])
			memcpy(names[(*count)++], row.staged, CACHE_STAGE_NAME_SIZE);
	}
	cache_stage_change_release(&row);
	return err;
}

int cache_index_stage_committed(struct cache_index *idx, const char *repo, const char *branch,
				const int64_t *ids, size_t n, const char *parent,
				const char *commit_id, int64_t now,
				char (**staged)[CACHE_STAGE_NAME_SIZE], size_t *nstaged)
{
	char(*names)[CACHE_STAGE_NAME_SIZE] = malloc((n ? n : 1) * sizeof(*names));
	struct index_conn *conn;
	sqlite3_stmt *st;
	size_t count = 0;
	int err;

	*staged = NULL;
	*nstaged = 0;
	if (!names)
		return -ENOMEM;
	err = journal_begin(idx, &conn);
	if (err)
		goto free_names;
	for (size_t i = 0; !err && i < n; i++)
		err = stage_forget(idx, conn, repo, branch, ids[i], names, &count);
	if (!err && parent[0] && commit_id[0]) {
		err = conn_stmt(idx, conn, STMT_STAGE_REBASE, &st);
		if (!err) {
			bind_branch(st, repo, branch);
			sqlite3_bind_text(st, 3, parent, -1, SQLITE_STATIC);
			sqlite3_bind_text(st, 4, commit_id, -1, SQLITE_STATIC);
			sqlite3_bind_int64(st, 5, now);
			err = stmt_done(idx, conn, st, "rebase journal");
		}
	}
	err = journal_end(idx, conn, err);
	if (err)
		goto free_names;
	*staged = names;
	*nstaged = count;
	return 0;

free_names:
	free(names);
	return err;
}

int cache_index_stage_referenced(struct cache_index *idx, const char *name, bool *referenced)
{
	struct index_conn *conn;
	sqlite3_stmt *st;
	int err = reader_get(idx, &conn);
	int rc;

	*referenced = true; /* on error, keep the file */
	if (err)
		return err;
	err = conn_stmt(idx, conn, STMT_STAGE_REFERENCED, &st);
	if (err)
		goto put_reader;
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW || rc == SQLITE_DONE)
		*referenced = rc == SQLITE_ROW;
	else
		err = index_fail(idx, conn->db, rc, "look up staged file");
	sqlite3_reset(st);
put_reader:
	reader_put(idx, conn);
	return err;
}
