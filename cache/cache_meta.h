/*
 * The daemon's metadata, kept in the cache's SQLite index so that an offline
 * mount can browse everything it has seen before.
 *
 * Two stores, typed by hubfs structs (only cache_index.c sees SQLite):
 * - key/value pairs with the time they were fetched: refs (branch -> commit,
 *   the fetch time drives the TTL), repo info, negative lookups;
 * - the entries of trees, one tree per key (e.g. "model/alice/tiny@<commit>"),
 *   stored per directory so that one path is looked up, or one directory
 *   listed, without loading a whole 100,000-file tree.
 *
 * Paths are repo paths: '/'-separated components, none empty, "." or "..",
 * no leading or trailing '/', at most CACHE_PATH_MAX bytes; "" is the root.
 * They come from servers: every function checks them and answers -EINVAL.
 *
 * Thread safety: every function may be called from any thread.  Reads use
 * their own SQLite connections and never wait for a write in progress.
 */
#ifndef HUBFS_CACHE_META_H
#define HUBFS_CACHE_META_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct cache;

/* Bounds of what the stores accept. */
#define CACHE_KEY_MAX 1024
#define CACHE_VALUE_MAX (256u << 20)
#define CACHE_PATH_MAX 4096

/*
 * Key/value pairs.  A key is 1 to CACHE_KEY_MAX bytes, NUL-terminated.
 */

/* Stores @len bytes of @val under @key (replacing any value) with
 * @fetched_at (any unit; the caller's).  Returns 0, -EINVAL (bad key, value
 * over CACHE_VALUE_MAX), or -errno. */
int cache_kv_put(struct cache *c, const char *key, const void *val, size_t len, int64_t fetched_at);

/* Reads the value of @key into *@val (the caller frees it with free(); it
 * has a NUL byte after its @len bytes, so text can be used as a string),
 * its length into *@len and its fetch time into *@fetched_at (@len and
 * @fetched_at may be NULL).  Returns 0, -ENOENT, -EINVAL or -errno; *@val is
 * NULL on error. */
int cache_kv_get(struct cache *c, const char *key, void **val, size_t *len, int64_t *fetched_at);

/* Deletes @key.  Returns 0 (also when it did not exist) or -errno. */
int cache_kv_delete(struct cache *c, const char *key);

/* Deletes every key that starts with @prefix ("" deletes all).  Returns 0
 * or -errno. */
int cache_kv_delete_prefix(struct cache *c, const char *prefix);

/*
 * Trees.  A tree key is 1 to CACHE_KEY_MAX bytes.  A tree key names an
 * immutable tree (a commit's); putting a complete listing again replaces the
 * previous one.
 */

struct cache_entry {
	char *path; /* full path in the repo */
	bool is_dir;
	uint64_t size;	 /* bytes of a file, 0 for a directory */
	char oid[41];	 /* git object id, or "" */
	char sha256[65]; /* LFS oid, or "" */
};

/* Frees what cache_tree_lookup() allocated in @e (its path).  NULL is a
 * no-op. */
void cache_entry_release(struct cache_entry *e);

/* Flags of cache_tree_put(). */
enum {
	/* The entries are the whole listing of @dir: names it does not contain
	 * do not exist (-ENOENT), and the listing can be read back. */
	CACHE_TREE_COMPLETE = 1 << 0,
	/* With CACHE_TREE_COMPLETE: the entries are every descendant of @dir
	 * (a recursive listing), so every directory under @dir gets a complete
	 * listing too.  Directories implied by a path but not listed are added. */
	CACHE_TREE_RECURSIVE = 1 << 1,
};

/* Stores @n entries of tree @tree_key found under directory @dir ("" for the
 * root): children of @dir, or with CACHE_TREE_RECURSIVE any descendants.
 * Without CACHE_TREE_COMPLETE the entries add to what is known.  One
 * transaction; putting the same thing twice changes nothing.  @entries is
 * borrowed.  Returns 0, -EINVAL (a bad key or path, an entry outside @dir,
 * an oid or sha256 that is not lowercase hex of the right length) or
 * -errno. */
int cache_tree_put(struct cache *c, const char *tree_key, const char *dir,
		   const struct cache_entry *entries, size_t n, unsigned flags);

/* Looks up @path (not "") in tree @tree_key.  On success fills *@out (the
 * caller releases it with cache_entry_release(), or frees out->path) and
 * returns 0.  Returns -ENOENT when the complete listing of the parent, or of
 * a nearer ancestor, lacks the name; -ENOTDIR when an ancestor is a file;
 * -ENODATA when it is not known; -EINVAL or -errno. */
int cache_tree_lookup(struct cache *c, const char *tree_key, const char *path,
		      struct cache_entry *out);

/* Called once per entry of a listing, in byte order of the names; @e is
 * borrowed for the call.  A non-zero return stops the listing and is
 * returned by cache_tree_list(). */
typedef int (*cache_tree_fn)(void *arg, const struct cache_entry *e);

/* Calls @fn for every entry of directory @dir of tree @tree_key.  The
 * callback runs with no cache lock held and may call any cache function.
 * Returns 0, the callback's non-zero value, -ENODATA when the listing of
 * @dir is not complete, -EINVAL or -errno. */
int cache_tree_list(struct cache *c, const char *tree_key, const char *dir, cache_tree_fn fn,
		    void *arg);

/* Gives directory @dir of tree @tree_key the listing of a directory whose git
 * tree id is @oid, known complete in any tree whose key starts with @scope
 * (a listing is the same wherever its tree id is: the id hashes it).
 * Returns 0, -ENOENT when no such listing is known (nothing changes),
 * -EINVAL or -errno. */
int cache_tree_adopt(struct cache *c, const char *tree_key, const char *dir, const char *oid,
		     const char *scope);

/* Forgets tree @tree_key.  Returns 0 (also when unknown) or -errno. */
int cache_tree_delete(struct cache *c, const char *tree_key);

#endif
