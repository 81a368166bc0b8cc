/*
 * The write journal's table in the cache index (cache_stage.h): one row per
 * staged change.  Its writes run with synchronous=FULL (see "Durability" in
 * cache_index.c), except the upload progress.  Contracts in cache_index.h
 * and cache_stage.h; the handle and its locking in cache_index.c.
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

/* Like cache_index_writer_begin(), with the WAL fsync'ed at the commit. */
static int journal_begin(struct cache_index *idx, struct index_conn **conn)
{
	int err;

	pthread_mutex_lock(&idx->write_lock);
	*conn = idx->writer;
	err = cache_index_run(idx, *conn, STMT_SYNC_FULL);
	if (!err)
		err = cache_index_run(idx, *conn, STMT_BEGIN);
	if (err) {
		cache_index_run(idx, *conn, STMT_SYNC_NORMAL);
		pthread_mutex_unlock(&idx->write_lock);
	}
	return err;
}

/* Like cache_index_writer_end(), back to synchronous=NORMAL for the other writes. */
static int journal_end(struct cache_index *idx, struct index_conn *conn, int err)
{
	if (!err)
		err = cache_index_run(idx, conn, STMT_COMMIT);
	if (err && !sqlite3_get_autocommit(conn->db))
		cache_index_run(idx, conn, STMT_ROLLBACK);
	cache_index_run(idx, conn, STMT_SYNC_NORMAL);
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
			cache_index_log(idx, LOG_ERR,
					"cache index \"%s\": journal row %lld is malformed",
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
	int err = cache_index_stmt(idx, conn, STMT_STAGE_GET_PATH, &st);
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
		err = cache_index_fail(idx, conn->db, rc, "read journal row");
	sqlite3_reset(st);
	return err;
}

static int stage_delete(struct cache_index *idx, struct index_conn *conn, int64_t id)
{
	sqlite3_stmt *st;
	int err = cache_index_stmt(idx, conn, STMT_STAGE_DELETE, &st);

	if (err)
		return err;
	sqlite3_bind_int64(st, 1, id);
	return cache_index_done(idx, conn, st, "delete journal row");
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
	err = cache_index_stmt(idx, conn, STMT_STAGE_INSERT, &st);
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
	err = cache_index_done(idx, conn, st, "add journal row");
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
	int err = cache_index_reader_get(idx, &conn);
	int rc;

	memset(out, 0, sizeof(*out));
	if (err)
		return err;
	err = cache_index_stmt(idx, conn, STMT_STAGE_GET, &st);
	if (err)
		goto put_reader;
	sqlite3_bind_int64(st, 1, id);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		err = stage_row(idx, st, out);
	else if (rc == SQLITE_DONE)
		err = -ENOENT;
	else
		err = cache_index_fail(idx, conn->db, rc, "read journal row");
	sqlite3_reset(st);
put_reader:
	cache_index_reader_put(idx, conn);
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
	err = cache_index_reader_get(idx, &conn);
	if (err)
		return err;
	err = cache_index_stmt(idx, conn, STMT_STAGE_LIST, &st);
	if (err)
		goto put_reader;
	bind_branch(st, repo, branch);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		err = cache_index_grow((void **)&v, &cap, count, sizeof(*v), 16);
		if (err)
			break;
		err = stage_row(idx, st, &v[count]);
		if (err)
			break;
		count++;
	}
	if (!err && rc != SQLITE_DONE)
		err = cache_index_fail(idx, conn->db, rc, "list journal");
	sqlite3_reset(st);
	if (err) {
		cache_stage_changes_free(v, count);
	} else {
		*changes = v;
		*n = count;
	}
put_reader:
	cache_index_reader_put(idx, conn);
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
	err = cache_index_reader_get(idx, &conn);
	if (err)
		return err;
	err = cache_index_stmt(idx, conn, STMT_STAGE_BRANCHES, &st);
	if (err)
		goto put_reader;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		err = cache_index_grow((void **)&v, &cap, count, sizeof(*v), 8);
		if (err)
			break;
		err = stage_branch_row(st, &v[count]);
		count++; /* freed below even when half filled */
		if (err)
			break;
	}
	if (!err && rc != SQLITE_DONE)
		err = cache_index_fail(idx, conn->db, rc, "list journal branches");
	sqlite3_reset(st);
	if (err) {
		cache_stage_branches_free(v, count);
	} else {
		*branches = v;
		*n = count;
	}
put_reader:
	cache_index_reader_put(idx, conn);
	return err;
}

int cache_index_stage_count(struct cache_index *idx, const char *repo, const char *branch,
			    uint64_t *changes, uint64_t *bytes)
{
	struct index_conn *conn;
	sqlite3_stmt *st;
	int err = cache_index_reader_get(idx, &conn);
	int rc;

	*changes = *bytes = 0;
	if (err)
		return err;
	err = cache_index_stmt(idx, conn, STMT_STAGE_COUNT, &st);
	if (err)
		goto put_reader;
	bind_branch(st, repo, branch);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		*changes = (uint64_t)sqlite3_column_int64(st, 0);
		*bytes = (uint64_t)sqlite3_column_int64(st, 1);
	} else {
		err = cache_index_fail(idx, conn->db, rc, "count journal");
	}
	sqlite3_reset(st);
put_reader:
	cache_index_reader_put(idx, conn);
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
	err = cache_index_stmt(idx, conn, STMT_STAGE_UPDATE, &st);
	for (size_t i = 0; !err && i < n; i++) {
		sqlite3_bind_int64(st, 1, ids[i]);
		sqlite3_bind_int(st, 2, (int)u->set);
		sqlite3_bind_text(st, 3, stage_state_text[u->state], -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 4, u->error ? u->error : "", -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 5, u->attempts);
		sqlite3_bind_text(st, 6, u->commit_id ? u->commit_id : "", -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 7, now);
		sqlite3_bind_text(st, 8, u->base_commit ? u->base_commit : "", -1, SQLITE_STATIC);
		err = cache_index_done(idx, conn, st, "update journal row");
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
	err = cache_index_stmt(idx, conn, STMT_STAGE_CONTENT, &st);
	if (!err) {
		sqlite3_bind_int64(st, 1, id);
		sqlite3_bind_int64(st, 2, (int64_t)size);
		sqlite3_bind_text(st, 3, sha256, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 4, now);
		err = cache_index_done(idx, conn, st, "set journal content");
	}
	if (!err && sqlite3_changes(conn->db) == 0)
		err = -ENOENT;
	return journal_end(idx, conn, err);
}

/* Progress only: synchronous=NORMAL (cache_index_writer_begin()), no fsync. */
int cache_index_stage_set_sent(struct cache_index *idx, int64_t id, uint64_t sent)
{
	struct index_conn *conn;
	sqlite3_stmt *st;
	int err = cache_index_writer_begin(idx, &conn);

	if (err)
		return err;
	err = cache_index_stmt(idx, conn, STMT_STAGE_SENT, &st);
	if (!err) {
		sqlite3_bind_int64(st, 1, id);
		sqlite3_bind_int64(st, 2, (int64_t)sent);
		err = cache_index_done(idx, conn, st, "set journal upload progress");
	}
	if (!err && sqlite3_changes(conn->db) == 0)
		err = -ENOENT;
	return cache_index_writer_end(idx, conn, err);
}

/* Forgets row @id if it belongs to @repo and @branch, appending its staged
 * file (if any) to @names (room for one more is there). */
static int stage_forget(struct cache_index *idx, struct index_conn *conn, const char *repo,
			const char *branch, int64_t id, char (*names)[CACHE_STAGE_NAME_SIZE],
			size_t *count)
{
	struct cache_stage_change row;
	sqlite3_stmt *st;
	int err = cache_index_stmt(idx, conn, STMT_STAGE_GET, &st);
	int rc;

	if (err)
		return err;
	sqlite3_bind_int64(st, 1, id);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		err = stage_row(idx, st, &row);
	else if (rc != SQLITE_DONE)
		err = cache_index_fail(idx, conn->db, rc, "read journal row");
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
		err = cache_index_stmt(idx, conn, STMT_STAGE_REBASE, &st);
		if (!err) {
			bind_branch(st, repo, branch);
			sqlite3_bind_text(st, 3, parent, -1, SQLITE_STATIC);
			sqlite3_bind_text(st, 4, commit_id, -1, SQLITE_STATIC);
			sqlite3_bind_int64(st, 5, now);
			err = cache_index_done(idx, conn, st, "rebase journal");
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
	int err = cache_index_reader_get(idx, &conn);
	int rc;

	*referenced = true; /* on error, keep the file */
	if (err)
		return err;
	err = cache_index_stmt(idx, conn, STMT_STAGE_REFERENCED, &st);
	if (err)
		goto put_reader;
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW || rc == SQLITE_DONE)
		*referenced = rc == SQLITE_ROW;
	else
		err = cache_index_fail(idx, conn->db, rc, "look up staged file");
	sqlite3_reset(st);
put_reader:
	cache_index_reader_put(idx, conn);
	return err;
}
