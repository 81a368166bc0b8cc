/*
 * The daemon's metadata stores in the cache index: key/value pairs with
 * their fetch time, and tree listings indexed by (tree, directory, name).
 * Contracts in cache_index.h and cache_meta.h; the handle and its locking
 * in cache_index.c.
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
	err = cache_index_stmt(idx, conn, STMT_KV_PUT, &st);
	if (!err) {
		sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
		/* zeroblob: a NULL pointer would bind NULL, refused by NOT NULL */
		if (len)
			sqlite3_bind_blob(st, 2, val, (int)len, SQLITE_STATIC);
		else
			sqlite3_bind_zeroblob(st, 2, 0);
		sqlite3_bind_int64(st, 3, fetched_at);
		err = cache_index_done(idx, conn, st, "put pair");
	}
	pthread_mutex_unlock(&idx->write_lock);
	return err;
}

int cache_index_kv_get(struct cache_index *idx, const char *key, void **val, size_t *len,
		       int64_t *fetched_at)
{
	struct index_conn *conn;
	sqlite3_stmt *st;
	int err = cache_index_reader_get(idx, &conn);
	int rc;

	*val = NULL;
	if (err)
		return err;
	err = cache_index_stmt(idx, conn, STMT_KV_GET, &st);
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
		err = cache_index_fail(idx, conn->db, rc, "get pair");
	}
	sqlite3_reset(st);
put_reader:
	cache_index_reader_put(idx, conn);
	return err;
}

int cache_index_kv_delete(struct cache_index *idx, const char *key)
{
	struct index_conn *conn;
	sqlite3_stmt *st;
	int err;

	pthread_mutex_lock(&idx->write_lock);
	conn = idx->writer;
	err = cache_index_stmt(idx, conn, STMT_KV_DELETE, &st);
	if (!err) {
		sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
		err = cache_index_done(idx, conn, st, "delete pair");
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
	err = cache_index_stmt(idx, conn, len ? STMT_KV_DELETE_RANGE : STMT_KV_DELETE_FROM, &st);
	if (!err) {
		sqlite3_bind_text(st, 1, prefix, -1, SQLITE_STATIC);
		if (len)
			sqlite3_bind_text(st, 2, upper, (int)len, SQLITE_STATIC);
		err = cache_index_done(idx, conn, st, "delete pairs");
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
		err = cache_index_stmt(idx, conn, STMT_TREE_INSERT, &st);
		if (err)
			return err;
		sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
		err = cache_index_done(idx, conn, st, "insert tree");
		if (err)
			return err;
	}
	err = cache_index_stmt(idx, conn, STMT_TREE_GET, &st);
	if (err)
		return err;
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		*tree = sqlite3_column_int64(st, 0);
	else if (rc == SQLITE_DONE)
		err = -ENOENT;
	else
		err = cache_index_fail(idx, conn->db, rc, "read tree");
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
	int err = cache_index_stmt(idx, conn, STMT_DIR_GET, &st);
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
		err = cache_index_fail(idx, conn->db, rc, "read directory");
	sqlite3_reset(st);
	if (err || rc == SQLITE_ROW)
		return err;
	err = cache_index_stmt(idx, conn, STMT_DIR_INSERT, &st);
	if (err)
		return err;
	sqlite3_bind_int64(st, 1, tp->tree);
	sqlite3_bind_text(st, 2, path, (int)len, SQLITE_STATIC);
	err = cache_index_done(idx, conn, st, "insert directory");
	if (err)
		return err;
	*dir = sqlite3_last_insert_rowid(conn->db);
	if (!tp->synthesize || len <= tp->scope_len || depth > CACHE_PATH_MAX)
		return 0;
	plen = path_parent_len(path, len);
	err = dir_ensure(tp, path, plen, depth + 1, &parent);
	if (err)
		return err;
	err = cache_index_stmt(idx, conn, STMT_ENTRY_ADD, &st);
	if (err)
		return err;
	sqlite3_bind_int64(st, 1, parent);
	sqlite3_bind_text(st, 2, path + (plen ? plen + 1 : 0), (int)(len - (plen ? plen + 1 : 0)),
			  SQLITE_STATIC);
	return cache_index_done(idx, conn, st, "add directory entry");
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
	int err = cache_index_stmt(tp->idx, tp->conn, which, &st);

	if (err)
		return err;
	sqlite3_bind_int64(st, 1, tp->tree);
	bind_under(st, dir, lo, hi);
	return cache_index_done(tp->idx, tp->conn, st, cache_index_sql[which]);
}

static int entry_put(struct tree_put *tp, int64_t dir, const struct cache_entry *e,
		     const char *name)
{
	sqlite3_stmt *st;
	int err = cache_index_stmt(tp->idx, tp->conn, STMT_ENTRY_PUT, &st);

	if (err)
		return err;
	sqlite3_bind_int64(st, 1, dir);
	sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
	sqlite3_bind_int(st, 3, e->is_dir);
	sqlite3_bind_int64(st, 4, (int64_t)e->size);
	sqlite3_bind_text(st, 5, e->oid, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 6, e->sha256, -1, SQLITE_STATIC);
	return cache_index_done(tp->idx, tp->conn, st, "put entry");
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
		err = cache_index_stmt(tp->idx, tp->conn, STMT_ENTRIES_DELETE_DIR, &st);
		if (err)
			return err;
		sqlite3_bind_int64(st, 1, top);
		err = cache_index_done(tp->idx, tp->conn, st, "delete entries");
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
	err = cache_index_stmt(tp->idx, tp->conn, STMT_DIR_COMPLETE, &st);
	if (err)
		return err;
	sqlite3_bind_int64(st, 1, top);
	err = cache_index_done(tp->idx, tp->conn, st, "complete directory");
	if (!err && recursive)
		err = run_under(tp, STMT_DIRS_COMPLETE_UNDER, tp->scope);
	return err;
}

int cache_index_tree_put(struct cache_index *idx, const char *tree_key, const char *dir,
			 const struct cache_entry *entries, size_t n, unsigned flags)
{
	struct tree_put tp = {.idx = idx, .scope = dir, .scope_len = strlen(dir)};
	int err = cache_index_writer_begin(idx, &tp.conn);

	if (err)
		return err;
	err = tree_id(idx, tp.conn, tree_key, true, &tp.tree);
	if (!err)
		err = tree_put_entries(&tp, entries, n, flags);
	return cache_index_writer_end(idx, tp.conn, err);
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
	int err = cache_index_stmt(idx, conn, STMT_LOOKUP, &st);
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
		err = cache_index_fail(idx, conn->db, rc, "look up entry");
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
	err = cache_index_reader_get(idx, &conn);
	if (err)
		return err;
	err = cache_index_run(idx, conn, STMT_BEGIN_READ); /* one snapshot for the walk */
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
	cache_index_run(idx, conn, STMT_COMMIT);
put_reader:
	cache_index_reader_put(idx, conn);
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
	err = cache_index_reader_get(idx, &conn);
	if (err)
		return err;
	err = cache_index_stmt(idx, conn, STMT_LIST, &st);
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
		err = cache_index_grow((void **)&v, &cap, count, sizeof(*v), 64);
		if (err)
			break;
		err = entry_read(st, 2, dir, name, &v[count]);
		if (err)
			break;
		count++;
	}
	if (!err && rc != SQLITE_ROW && rc != SQLITE_DONE)
		err = cache_index_fail(idx, conn->db, rc, "list directory");
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
	cache_index_reader_put(idx, conn);
	return err;
}

int cache_index_tree_delete(struct cache_index *idx, const char *tree_key)
{
	static const enum index_stmt steps[] = {STMT_ENTRIES_DELETE_TREE, STMT_DIRS_DELETE_TREE,
						STMT_TREE_DELETE};
	struct index_conn *conn;
	sqlite3_stmt *st;
	int64_t tree;
	int err = cache_index_writer_begin(idx, &conn);

	if (err)
		return err;
	err = tree_id(idx, conn, tree_key, false, &tree);
	if (err == -ENOENT) {
		err = 0;
		goto end_tx;
	}
	for (size_t i = 0; !err && i < sizeof(steps) / sizeof(steps[0]); i++) {
		err = cache_index_stmt(idx, conn, steps[i], &st);
		if (err)
			break;
		sqlite3_bind_int64(st, 1, tree);
		err = cache_index_done(idx, conn, st, "delete tree");
	}
end_tx:
	return cache_index_writer_end(idx, conn, err);
}

int cache_index_tree_adopt(struct cache_index *idx, const char *tree_key, const char *dir,
			   const char *oid, const char *scope)
{
	struct tree_put tp = {.idx = idx, .scope = dir, .scope_len = strlen(dir)};
	int64_t source = 0, target;
	sqlite3_stmt *st;
	int err = cache_index_writer_begin(idx, &tp.conn), rc;

	if (err)
		return err;
	err = cache_index_stmt(idx, tp.conn, STMT_TREE_SOURCE, &st);
	if (err)
		goto end_tx;
	sqlite3_bind_text(st, 1, oid, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, scope, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		source = sqlite3_column_int64(st, 0);
	else if (rc == SQLITE_DONE)
		err = -ENOENT;
	else
		err = cache_index_fail(idx, tp.conn->db, rc, "find directory by tree id");
	sqlite3_reset(st);
	if (err)
		goto end_tx;
	err = tree_id(idx, tp.conn, tree_key, true, &tp.tree);
	if (!err)
		err = dir_ensure(&tp, dir, tp.scope_len, 0, &target);
	if (!err && target == source)
		goto end_tx; /* complete already */
	if (!err)
		err = cache_index_stmt(idx, tp.conn, STMT_ENTRIES_DELETE_DIR, &st);
	if (!err) {
		sqlite3_bind_int64(st, 1, target);
		err = cache_index_done(idx, tp.conn, st, "delete entries");
	}
	if (!err)
		err = cache_index_stmt(idx, tp.conn, STMT_ENTRIES_COPY, &st);
	if (!err) {
		sqlite3_bind_int64(st, 1, target);
		sqlite3_bind_int64(st, 2, source);
		err = cache_index_done(idx, tp.conn, st, "copy entries");
	}
	if (!err)
		err = cache_index_stmt(idx, tp.conn, STMT_DIR_COMPLETE, &st);
	if (!err) {
		sqlite3_bind_int64(st, 1, target);
		err = cache_index_done(idx, tp.conn, st, "complete directory");
	}
end_tx:
	return cache_index_writer_end(idx, tp.conn, err);
}
