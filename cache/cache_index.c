/*
 * The cache's SQLite index: the handle.  See cache_index.h for what it
 * holds.  This file opens the database, creates and upgrades the schema,
 * keeps the connections and their prepared statements, and maps SQLite's
 * codes to errno; the stores are in cache_index_blobs.c, cache_index_meta.c
 * and cache_index_stage.c, sharing cache_index_internal.h.
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

#include "cache_index_internal.h"

#include <errno.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

/* How long a statement waits for another process's lock, in ms. */
#define INDEX_BUSY_MS 10000

/* "Under" a directory D: the directories D/... of the tree (?2 <= path < ?3,
 * with ?2 = "D/" and ?3 = "D0", since '0' follows '/'; for the root, ?2 = ""
 * and ?3 a BLOB, which sorts after every text). */
/* clang-format off */
const char *const cache_index_sql[STMT_COUNT] = {
	[STMT_BEGIN] = "BEGIN IMMEDIATE",
	[STMT_BEGIN_READ] = "BEGIN",
	[STMT_COMMIT] = "COMMIT",
	[STMT_ROLLBACK] = "ROLLBACK",
	[STMT_BLOB_GET] = "SELECT row, size, chunk_size, present, chunks, bytes, complete, "
			  "last_used, crcs FROM blobs WHERE id = ?1",
	[STMT_BLOB_TOUCH] = "UPDATE blobs SET last_used = ?2, chunk_size = ?3, "
			   "crcs = CASE WHEN chunk_size = ?3 THEN crcs END WHERE row = ?1",
	[STMT_BLOB_INSERT] = "INSERT INTO blobs (id, size, chunk_size, present, chunks, bytes, "
			     "complete, last_used) VALUES (?1, ?2, ?3, NULL, 0, 0, 0, ?4)",
	[STMT_BLOB_DELETE] = "DELETE FROM blobs WHERE id = ?1",
	[STMT_BLOB_PERSIST] = "UPDATE blobs SET present = ?2, chunks = ?3, bytes = ?4, "
			      "complete = ?5, last_used = ?6, crcs = ?7 WHERE row = ?1",
	[STMT_BLOB_LRU] = "SELECT row, last_used, bytes, id FROM blobs "
			  "WHERE last_used > ?1 OR (last_used = ?1 AND row > ?2) "
			  "ORDER BY last_used, row LIMIT ?3",
	[STMT_TOTALS] = "SELECT count(*), coalesce(sum(complete), 0), coalesce(sum(chunks), 0), "
			"coalesce(sum(bytes), 0) FROM blobs",
	[STMT_COUNTERS] = "SELECT name, value FROM counters",
	[STMT_COUNTER_ADD] = "INSERT INTO counters VALUES (?1, ?2) "
			     "ON CONFLICT (name) DO UPDATE SET value = value + ?2",
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
	/* A complete listing of a directory whose git tree id is ?1, in a tree
	 * whose key starts with ?2 (the same endpoint). */
	[STMT_TREE_SOURCE] = "SELECT c.dir FROM tree_entries e INDEXED BY tree_entries_by_oid "
			     "JOIN tree_dirs p ON p.dir = e.dir "
			     "JOIN trees t ON t.tree = p.tree AND substr(t.key, 1, length(?2)) = ?2 "
			     "JOIN tree_dirs c ON c.tree = p.tree AND c.complete = 1 AND c.path = "
			     "(CASE p.path WHEN '' THEN e.name ELSE p.path || '/' || e.name END) "
			     "WHERE e.is_dir = 1 AND e.oid = ?1 LIMIT 1",
	[STMT_ENTRIES_COPY] = "INSERT INTO tree_entries (dir, name, is_dir, size, oid, sha256) "
			      "SELECT ?1, name, is_dir, size, oid, sha256 FROM tree_entries "
			      "WHERE dir = ?2",
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

int cache_index_grow(void **v, size_t *cap, size_t count, size_t size, size_t first)
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

/* Version 5: directories found by their git tree id, so that a directory
 * unchanged between two commits is listed once (cache_tree_adopt()).  Only
 * directory entries are indexed. */
static const char index_schema_v5[] =
    "CREATE INDEX IF NOT EXISTS tree_entries_by_oid ON tree_entries (oid) WHERE is_dir = 1;";

/* Version 6: the CRC32C of each chunk of a blob (cache_blob.c), 4 bytes per
 * chunk, little-endian, persisted with the presence.  NULL in the rows of
 * older versions: their chunks are not checked. */
static const char index_schema_v6[] = "ALTER TABLE blobs ADD COLUMN crcs BLOB;";

void cache_index_log(struct cache_index *idx, int level, const char *fmt, ...)
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
int cache_index_fail(struct cache_index *idx, sqlite3 *db, int rc, const char *what)
{
	int err = index_errno(db, rc);

	cache_index_log(idx, LOG_ERR, "cache index \"%s\": %s: %s", idx->path, what,
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
		*err = cache_index_fail(idx, conn->db, rc, "open");
		goto close_conn;
	}
	sqlite3_extended_result_codes(conn->db, 1);
	sqlite3_busy_timeout(conn->db, INDEX_BUSY_MS);
	rc =
	    sqlite3_exec(conn->db, writer ? "PRAGMA synchronous = NORMAL" : "PRAGMA query_only = 1",
			 NULL, NULL, NULL);
	if (rc != SQLITE_OK) {
		*err = cache_index_fail(idx, conn->db, rc, "set up connection");
		goto close_conn;
	}
	return conn;

close_conn:
	conn_close(conn);
	return NULL;
}

/* The statement @which of @conn, reset and ready for binding. */
int cache_index_stmt(struct cache_index *idx, struct index_conn *conn, enum index_stmt which,
		     sqlite3_stmt **out)
{
	*out = NULL;
	if (!conn->stmt[which]) {
		int rc = sqlite3_prepare_v3(conn->db, cache_index_sql[which], -1,
					    SQLITE_PREPARE_PERSISTENT, &conn->stmt[which], NULL);

		if (rc != SQLITE_OK)
			return cache_index_fail(idx, conn->db, rc, "prepare");
	}
	*out = conn->stmt[which];
	return 0;
}

/* Steps a statement that returns no row, then resets it. */
int cache_index_done(struct cache_index *idx, struct index_conn *conn, sqlite3_stmt *st,
		     const char *what)
{
	int rc = sqlite3_step(st);

	sqlite3_reset(st);
	return rc == SQLITE_DONE ? 0 : cache_index_fail(idx, conn->db, rc, what);
}

/* Runs statement @which, without parameters and rows. */
int cache_index_run(struct cache_index *idx, struct index_conn *conn, enum index_stmt which)
{
	sqlite3_stmt *st;
	int err = cache_index_stmt(idx, conn, which, &st);

	return err ? err : cache_index_done(idx, conn, st, cache_index_sql[which]);
}

/* Takes the writer and starts a write transaction.  On success the caller
 * ends it with cache_index_writer_end(). */
int cache_index_writer_begin(struct cache_index *idx, struct index_conn **conn)
{
	int err;

	pthread_mutex_lock(&idx->write_lock);
	*conn = idx->writer;
	err = cache_index_run(idx, *conn, STMT_BEGIN);
	if (err)
		pthread_mutex_unlock(&idx->write_lock);
	return err;
}

/* Commits when @err is 0, rolls back otherwise; releases the writer.
 * Returns @err or the commit's error. */
int cache_index_writer_end(struct cache_index *idx, struct index_conn *conn, int err)
{
	if (!err)
		err = cache_index_run(idx, conn, STMT_COMMIT);
	if (err && !sqlite3_get_autocommit(conn->db))
		cache_index_run(idx, conn, STMT_ROLLBACK);
	pthread_mutex_unlock(&idx->write_lock);
	return err;
}

int cache_index_reader_get(struct cache_index *idx, struct index_conn **out)
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

void cache_index_reader_put(struct cache_index *idx, struct index_conn *conn)
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
		return cache_index_fail(idx, db, rc, "read schema version");
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		*version = sqlite3_column_int(st, 0);
	sqlite3_finalize(st);
	return rc == SQLITE_ROW ? 0 : cache_index_fail(idx, db, rc, "read schema version");
}

static int index_check_version(struct cache_index *idx, int version)
{
	if (version <= CACHE_INDEX_VERSION)
		return 0;
	cache_index_log(
	    idx, LOG_ERR,
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
	    {index_schema_v5, NULL, NULL},
	    {index_schema_v6, "blobs", "crcs"},
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
		cache_index_log(idx, LOG_ERR,
				"cache index \"%s\": upgrade schema from version %d: %s", idx->path,
				version, msg ? msg : sqlite3_errstr(rc));
		err = index_errno(db, rc);
		err = err ? err : -EIO;
	} else if (version > 0) {
		cache_index_log(idx, LOG_INFO,
				"cache index \"%s\": schema upgraded from version %d to %d",
				idx->path, version, CACHE_INDEX_VERSION);
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
		return cache_index_fail(idx, db, rc, "switch to WAL");
	err = cache_index_run(idx, idx->writer, STMT_BEGIN);
	if (err)
		return err;
	err = index_version(idx, db, &version);
	if (!err)
		err = index_check_version(idx, version);
	if (!err && version < CACHE_INDEX_VERSION)
		err = index_migrate(idx, version);
	if (!err)
		err = cache_index_run(idx, idx->writer, STMT_COMMIT);
	if (err && !sqlite3_get_autocommit(db))
		cache_index_run(idx, idx->writer, STMT_ROLLBACK);
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

int cache_index_clear(struct cache_index *idx)
{
	static const char sql[] = "DELETE FROM blobs; DELETE FROM kv; DELETE FROM tree_entries;"
				  "DELETE FROM tree_dirs; DELETE FROM trees;"
				  "UPDATE counters SET value = 0;";
	struct index_conn *conn;
	int err = cache_index_writer_begin(idx, &conn);
	int rc;

	if (err)
		return err;
	rc = sqlite3_exec(conn->db, sql, NULL, NULL, NULL);
	if (rc != SQLITE_OK)
		err = cache_index_fail(idx, conn->db, rc, "clear");
	return cache_index_writer_end(idx, conn, err);
}
