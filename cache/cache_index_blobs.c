/*
 * The blob rows of the cache index: one per blob, with its presence bitmap,
 * present chunks and bytes, completeness and last use; the LRU order that
 * eviction walks; the totals and the hit/miss counters.  Contracts in
 * cache_index.h; the handle and its locking in cache_index.c.
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

/*
 * Blobs.
 */

/* Reads the current row of STMT_BLOB_GET into *@out (copying the bitmap). */
static int blob_row(sqlite3_stmt *st, struct cache_index_blob *out)
{
	const void *present = sqlite3_column_blob(st, 3), *crcs;
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
	crcs = sqlite3_column_blob(st, 8);
	len = sqlite3_column_bytes(st, 8);
	if (crcs && len > 0) {
		out->crcs = malloc((size_t)len);
		if (!out->crcs) {
			free(out->present);
			out->present = NULL;
			return -ENOMEM;
		}
		memcpy(out->crcs, crcs, (size_t)len);
		out->crcs_len = (size_t)len;
	}
	return 0;
}

/* Looks up blob @id on @conn: 0 with *@out, -ENOENT, or -errno. */
static int blob_get(struct cache_index *idx, struct index_conn *conn, const char *id,
		    struct cache_index_blob *out)
{
	sqlite3_stmt *st;
	int err = cache_index_stmt(idx, conn, STMT_BLOB_GET, &st);
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
		err = cache_index_fail(idx, conn->db, rc, "read blob");
	sqlite3_reset(st);
	return err;
}

int cache_index_blob_load(struct cache_index *idx, const char *id, struct cache_index_blob *out)
{
	struct index_conn *conn;
	int err = cache_index_reader_get(idx, &conn);

	if (err)
		return err;
	err = blob_get(idx, conn, id, out);
	cache_index_reader_put(idx, conn);
	return err;
}

int cache_index_blob_attach(struct cache_index *idx, const char *id, uint64_t size,
			    uint32_t chunk_size, int64_t now, struct cache_index_blob *out)
{
	struct index_conn *conn;
	sqlite3_stmt *st;
	int err = cache_index_writer_begin(idx, &conn);

	if (err)
		return err;
	err = blob_get(idx, conn, id, out);
	if (!err && out->size == size && (out->complete || out->chunk_size == chunk_size)) {
		err = cache_index_stmt(idx, conn, STMT_BLOB_TOUCH, &st);
		if (!err) {
			sqlite3_bind_int64(st, 1, out->row);
			sqlite3_bind_int64(st, 2, now);
			sqlite3_bind_int64(st, 3, chunk_size);
			err = cache_index_done(idx, conn, st, "touch blob");
		}
		out->last_used = now;
		if (out->chunk_size != chunk_size) { /* the CRCs were of other chunks */
			free(out->crcs);
			out->crcs = NULL;
			out->crcs_len = 0;
		}
		out->chunk_size = chunk_size;
		goto end_tx;
	}
	if (err && err != -ENOENT)
		goto end_tx;
	free(out->present);
	free(out->crcs);
	/* A fresh row: the old one (if any) described another file. */
	err = cache_index_stmt(idx, conn, STMT_BLOB_DELETE, &st);
	if (err)
		goto end_tx;
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	err = cache_index_done(idx, conn, st, "delete blob");
	if (!err)
		err = cache_index_stmt(idx, conn, STMT_BLOB_INSERT, &st);
	if (err)
		goto end_tx;
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, (int64_t)size);
	sqlite3_bind_int64(st, 3, chunk_size);
	sqlite3_bind_int64(st, 4, now);
	err = cache_index_done(idx, conn, st, "insert blob");
	memset(out, 0, sizeof(*out));
	out->row = sqlite3_last_insert_rowid(conn->db);
	out->size = size;
	out->chunk_size = chunk_size;
	out->last_used = now;
end_tx:
	err = cache_index_writer_end(idx, conn, err);
	if (err) {
		free(out->present);
		free(out->crcs);
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
	err = cache_index_stmt(idx, conn, STMT_COUNTER_ADD, &st);
	if (err)
		return err;
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, (int64_t)value);
	return cache_index_done(idx, conn, st, "add to counter");
}

int cache_index_blob_persist(struct cache_index *idx, const struct cache_index_persist *p)
{
	struct index_conn *conn;
	sqlite3_stmt *st;
	bool gone = false;
	int err = cache_index_writer_begin(idx, &conn);

	if (err)
		return err;
	err = cache_index_stmt(idx, conn, STMT_BLOB_PERSIST, &st);
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
	if (p->crcs)
		sqlite3_bind_blob(st, 7, p->crcs, (int)p->crcs_len, SQLITE_STATIC);
	else
		sqlite3_bind_null(st, 7);
	err = cache_index_done(idx, conn, st, "persist blob");
	if (err)
		goto end_tx;
	gone = sqlite3_changes(conn->db) == 0;
	err = counter_add(idx, conn, "hit_bytes", p->hit_bytes);
	if (!err)
		err = counter_add(idx, conn, "miss_bytes", p->miss_bytes);
end_tx:
	err = cache_index_writer_end(idx, conn, err);
	return err ? err : gone ? -ESTALE : 0;
}

int cache_index_blob_delete(struct cache_index *idx, const char *id, uint64_t *bytes)
{
	struct cache_index_blob row;
	struct index_conn *conn;
	sqlite3_stmt *st;
	int err = cache_index_writer_begin(idx, &conn);

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
	free(row.crcs);
	err = cache_index_stmt(idx, conn, STMT_BLOB_DELETE, &st);
	if (err)
		goto end_tx;
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	err = cache_index_done(idx, conn, st, "delete blob");
	if (!err)
		*bytes = row.bytes;
end_tx:
	err = cache_index_writer_end(idx, conn, err);
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
	free(row.crcs);
	return err == -ENOENT ? 0 : err;
}

int cache_index_blob_lru(struct cache_index *idx, int64_t after_used, int64_t after_row,
			 struct cache_index_lru *out, size_t max, size_t *n)
{
	struct index_conn *conn;
	sqlite3_stmt *st;
	int err = cache_index_reader_get(idx, &conn);
	int rc;

	*n = 0;
	if (err)
		return err;
	err = cache_index_stmt(idx, conn, STMT_BLOB_LRU, &st);
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
		err = cache_index_fail(idx, conn->db, rc, "list blobs");
	sqlite3_reset(st);
put_reader:
	cache_index_reader_put(idx, conn);
	return err;
}

int cache_index_totals(struct cache_index *idx, struct cache_index_totals *t)
{
	struct index_conn *conn;
	sqlite3_stmt *st;
	int err = cache_index_reader_get(idx, &conn);
	int rc;

	memset(t, 0, sizeof(*t));
	if (err)
		return err;
	/* One read transaction, so that both statements see the same state. */
	err = cache_index_run(idx, conn, STMT_BEGIN_READ);
	if (err)
		goto put_reader;
	err = cache_index_stmt(idx, conn, STMT_TOTALS, &st);
	if (err)
		goto end_read;
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		t->blobs = (uint64_t)sqlite3_column_int64(st, 0);
		t->complete = (uint64_t)sqlite3_column_int64(st, 1);
		t->chunks = (uint64_t)sqlite3_column_int64(st, 2);
		t->bytes = (uint64_t)sqlite3_column_int64(st, 3);
	} else {
		err = cache_index_fail(idx, conn->db, rc, "sum blobs");
	}
	sqlite3_reset(st);
	if (err)
		goto end_read;
	err = cache_index_stmt(idx, conn, STMT_COUNTERS, &st);
	if (err)
		goto end_read;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		const char *name = (const char *)sqlite3_column_text(st, 0);
		uint64_t value = (uint64_t)sqlite3_column_int64(st, 1);

		if (name && !strcmp(name, "hit_bytes"))
			t->hit_bytes = value;
		else if (name && !strcmp(name, "miss_bytes"))
			t->miss_bytes = value;
	}
	if (rc != SQLITE_DONE)
		err = cache_index_fail(idx, conn->db, rc, "read counters");
	sqlite3_reset(st);
end_read:
	cache_index_run(idx, conn, STMT_COMMIT);
put_reader:
	cache_index_reader_put(idx, conn);
	return err;
}

int cache_index_counters_add(struct cache_index *idx, uint64_t hit_bytes, uint64_t miss_bytes)
{
	struct index_conn *conn;
	int err;

	if (!hit_bytes && !miss_bytes)
		return 0;
	err = cache_index_writer_begin(idx, &conn);
	if (err)
		return err;
	err = counter_add(idx, conn, "hit_bytes", hit_bytes);
	if (!err)
		err = counter_add(idx, conn, "miss_bytes", miss_bytes);
	return cache_index_writer_end(idx, conn, err);
}
