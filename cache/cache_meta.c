/*
 * The daemon's metadata stores: checks what comes in (keys, paths and ids
 * that servers sent), then hands it to the index.  See cache_meta.h.
 *
 * Thread safety: no state of its own; the index serialises its writes.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cache_index.h"
#include "cache_internal.h"
#include "cache_meta.h"

static bool key_valid(const char *key)
{
	size_t len = key ? strnlen(key, CACHE_KEY_MAX + 1) : 0;

	return len >= 1 && len <= CACHE_KEY_MAX;
}

/* A repo path: components separated by single '/', none empty, "." or "..",
 * no control character, at most CACHE_PATH_MAX bytes; "" (the root) only
 * with @root. */
bool cache_path_valid(const char *path, bool root)
{
	size_t len = path ? strnlen(path, CACHE_PATH_MAX + 1) : CACHE_PATH_MAX + 1;
	const char *s;

	if (len > CACHE_PATH_MAX)
		return false;
	if (len == 0)
		return root;
	for (s = path; *s;) {
		const char *end = strchr(s, '/');
		size_t n = end ? (size_t)(end - s) : strlen(s);

		if (n == 0 || (n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.'))
			return false;
		for (size_t i = 0; i < n; i++)
			if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
				return false;
		if (!end)
			break;
		s = end + 1;
		if (!*s)
			return false; /* a trailing '/' */
	}
	return true;
}

/* "" or exactly @len lowercase hex digits, NUL-terminated within @size. */
bool cache_hex_valid(const char *s, size_t size, size_t len)
{
	size_t n = strnlen(s, size);

	if (n == size)
		return false;
	if (n == 0)
		return true;
	if (n != len)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
	return true;
}

/* True if @path is a child of @dir (any descendant with @deep). */
static bool path_under(const char *path, const char *dir, bool deep)
{
	size_t dlen = strlen(dir);
	const char *rest = path;

	if (dlen) {
		if (strncmp(path, dir, dlen) || path[dlen] != '/')
			return false;
		rest = path + dlen + 1;
	}
	return *rest && (deep || !strchr(rest, '/'));
}

static bool entry_valid(const struct cache_entry *e, const char *dir, bool deep)
{
	return cache_path_valid(e->path, false) && path_under(e->path, dir, deep) &&
	       e->size <= INT64_MAX && cache_hex_valid(e->oid, sizeof(e->oid), 40) &&
	       cache_hex_valid(e->sha256, sizeof(e->sha256), 64);
}

int cache_kv_put(struct cache *c, const char *key, const void *val, size_t len, int64_t fetched_at)
{
	if (!key_valid(key) || len > CACHE_VALUE_MAX || (len && !val))
		return -EINVAL;
	return cache_index_kv_put(c->idx, key, val, len, fetched_at);
}

int cache_kv_get(struct cache *c, const char *key, void **val, size_t *len, int64_t *fetched_at)
{
	size_t n = 0;
	int64_t at = 0;
	int err;

	if (!val)
		return -EINVAL;
	*val = NULL;
	if (!key_valid(key))
		return -EINVAL;
	err = cache_index_kv_get(c->idx, key, val, &n, &at);
	if (err)
		return err;
	if (len)
		*len = n;
	if (fetched_at)
		*fetched_at = at;
	return 0;
}

int cache_kv_delete(struct cache *c, const char *key)
{
	if (!key_valid(key))
		return -EINVAL;
	return cache_index_kv_delete(c->idx, key);
}

int cache_kv_delete_prefix(struct cache *c, const char *prefix)
{
	if (!prefix || strnlen(prefix, CACHE_KEY_MAX + 1) > CACHE_KEY_MAX)
		return -EINVAL;
	return cache_index_kv_delete_prefix(c->idx, prefix);
}

void cache_entry_release(struct cache_entry *e)
{
	if (!e)
		return;
	free(e->path);
	e->path = NULL;
}

int cache_tree_put(struct cache *c, const char *tree_key, const char *dir,
		   const struct cache_entry *entries, size_t n, unsigned flags)
{
	bool deep = flags & CACHE_TREE_RECURSIVE;

	if (!key_valid(tree_key) || !cache_path_valid(dir, true) || (n && !entries) ||
	    (flags & ~(unsigned)(CACHE_TREE_COMPLETE | CACHE_TREE_RECURSIVE)) ||
	    (deep && !(flags & CACHE_TREE_COMPLETE)))
		return -EINVAL;
	for (size_t i = 0; i < n; i++)
		if (!entry_valid(&entries[i], dir, deep))
			return -EINVAL;
	return cache_index_tree_put(c->idx, tree_key, dir, entries, n, flags);
}

int cache_tree_lookup(struct cache *c, const char *tree_key, const char *path,
		      struct cache_entry *out)
{
	if (!out || !key_valid(tree_key) || !cache_path_valid(path, false))
		return -EINVAL;
	return cache_index_tree_lookup(c->idx, tree_key, path, out);
}

int cache_tree_list(struct cache *c, const char *tree_key, const char *dir, cache_tree_fn fn,
		    void *arg)
{
	struct cache_entry *entries;
	size_t n;
	int err;

	if (!fn || !key_valid(tree_key) || !cache_path_valid(dir, true))
		return -EINVAL;
	/* Read it all first: the callback runs with no connection held. */
	err = cache_index_tree_list(c->idx, tree_key, dir, &entries, &n);
	if (err)
		return err;
	for (size_t i = 0; i < n && !err; i++)
		err = fn(arg, &entries[i]);
	cache_index_entries_free(entries, n);
	return err;
}

int cache_tree_adopt(struct cache *c, const char *tree_key, const char *dir, const char *oid,
		     const char *scope)
{
	if (!key_valid(tree_key) || !cache_path_valid(dir, false) || !oid || !*oid ||
	    !cache_hex_valid(oid, 41, 40) || !scope)
		return -EINVAL;
	return cache_index_tree_adopt(c->idx, tree_key, dir, oid, scope);
}

int cache_tree_delete(struct cache *c, const char *tree_key)
{
	if (!key_valid(tree_key))
		return -EINVAL;
	return cache_index_tree_delete(c->idx, tree_key);
}
