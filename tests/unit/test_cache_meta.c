/* Unit tests: the metadata stores of the cache (cache/cache_meta.c and the
 * SQLite index): key/value pairs, tree listings, a 100,000-entry tree, and
 * lookups while a big tree is being written. */
#include "config.h"

#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cache.h"
#include "tap.h"

static char top[] = "/tmp/hubfs-test-cache-meta-XXXXXX";

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/*
 * Key/value pairs.
 */

struct kv_case {
	const char *key;
	const char *val;
	size_t len;
	int64_t at;
};

static const struct kv_case kv_cases[] = {
    {"ref/model/alice/tiny/main", "4c7798263c7f0c4d1fd2ed8a5bba2fe1e0b25c6a", 40, 1700000000},
    {"ref/model/alice/tiny/v1.0", "0123456789abcdef0123456789abcdef01234567", 40, 1700000001},
    {"ref/model/alice/tinyer/main", "ffffffffffffffffffffffffffffffffffffffff", 40, 5},
    {"info/model/alice/tiny", "{\"private\":false}", 17, -1},
    {"neg/model/alice/missing", "", 0, 42},
    {"bin", "a\0b\0c", 5, 0},
};

static void test_kv(struct cache *c)
{
	size_t n = sizeof(kv_cases) / sizeof(kv_cases[0]);
	char long_key[CACHE_KEY_MAX + 2];
	void *val = NULL;
	size_t len = 0;
	int64_t at = 0;
	bool all = true;
	int rc;

	for (size_t i = 0; i < n; i++)
		all = all && !cache_kv_put(c, kv_cases[i].key, kv_cases[i].val, kv_cases[i].len,
					   kv_cases[i].at);
	tap_ok(all, "put %zu pairs", n);
	for (size_t i = 0; i < n; i++) {
		rc = cache_kv_get(c, kv_cases[i].key, &val, &len, &at);
		tap_ok(!rc && len == kv_cases[i].len && !memcmp(val, kv_cases[i].val, len) &&
			   ((char *)val)[len] == '\0' && at == kv_cases[i].at,
		       "get \"%s\": %zu bytes, fetched at %lld", kv_cases[i].key, kv_cases[i].len,
		       (long long)kv_cases[i].at);
		free(val);
		val = NULL;
	}
	rc = cache_kv_put(c, "bin", "new", 3, 99);
	rc = rc ? rc : cache_kv_get(c, "bin", &val, &len, NULL);
	tap_ok(!rc && len == 3 && !strcmp(val, "new"), "put replaces a value");
	free(val);
	val = NULL;
	tap_ok(cache_kv_get(c, "nope", &val, &len, &at) == -ENOENT && !val,
	       "a missing key: -ENOENT");
	tap_ok(!cache_kv_delete(c, "bin") && cache_kv_get(c, "bin", &val, NULL, NULL) == -ENOENT &&
		   !cache_kv_delete(c, "bin"),
	       "delete, and delete again");
	tap_ok(!cache_kv_delete_prefix(c, "ref/model/alice/tiny/") &&
		   cache_kv_get(c, kv_cases[0].key, &val, NULL, NULL) == -ENOENT &&
		   cache_kv_get(c, kv_cases[1].key, &val, NULL, NULL) == -ENOENT,
	       "delete a prefix");
	rc = cache_kv_get(c, kv_cases[2].key, &val, NULL, NULL);
	free(val);
	val = NULL;
	tap_ok(!rc && !cache_kv_get(c, kv_cases[3].key, &val, NULL, NULL),
	       "keys that only share part of the prefix stay");
	free(val);
	val = NULL;
	tap_ok(cache_kv_put(c, "\xff\xff", "x", 1, 0) == 0 &&
		   cache_kv_delete_prefix(c, "\xff") == 0 &&
		   cache_kv_get(c, "\xff\xff", &val, NULL, NULL) == -ENOENT,
	       "a prefix of 0xff bytes");
	memset(long_key, 'k', sizeof(long_key) - 1);
	long_key[sizeof(long_key) - 1] = '\0';
	tap_ok(cache_kv_put(c, "", "x", 1, 0) == -EINVAL &&
		   cache_kv_put(c, long_key, "x", 1, 0) == -EINVAL &&
		   cache_kv_get(c, long_key, &val, NULL, NULL) == -EINVAL &&
		   cache_kv_put(c, "k", NULL, 1, 0) == -EINVAL,
	       "bad keys and values: -EINVAL");
	tap_ok(!cache_kv_delete_prefix(c, "") &&
		   cache_kv_get(c, kv_cases[3].key, &val, NULL, NULL) == -ENOENT,
	       "the empty prefix deletes everything");
}

/*
 * Trees.
 */

struct list_acc {
	size_t n;
	bool sorted, dirs_ok;
	char last[256];
	struct cache *c;
	const char *key;
	int stop_after;
	bool reentrant_ok;
};

static int list_cb(void *arg, const struct cache_entry *e)
{
	struct list_acc *a = arg;
	const char *name = strrchr(e->path, '/');

	name = name ? name + 1 : e->path;
	if (a->n && strcmp(a->last, name) >= 0)
		a->sorted = false;
	snprintf(a->last, sizeof(a->last), "%s", name);
	if (a->c) {
		/* The callback may use the cache. */
		struct cache_entry again;

		a->reentrant_ok = a->reentrant_ok &&
				  !cache_tree_lookup(a->c, a->key, e->path, &again) &&
				  again.is_dir == e->is_dir && again.size == e->size;
		cache_entry_release(&again);
	}
	a->n++;
	return a->stop_after && a->n == (size_t)a->stop_after ? 7 : 0;
}

static int list(struct cache *c, const char *key, const char *dir, struct list_acc *a)
{
	a->n = 0;
	a->sorted = true;
	a->reentrant_ok = true;
	return cache_tree_list(c, key, dir, list_cb, a);
}

static const char big_key[] = "model/alice/huge@0123456789abcdef0123456789abcdef01234567";

/* The 100,200 entries of the big tree: d000..d099, each with f00000..f00999
 * and an empty directory "empty". */
static struct cache_entry *big_tree(size_t *n)
{
	struct cache_entry *v = calloc(100 * 1002, sizeof(*v));
	size_t k = 0;

	for (int d = 0; v && d < 100; d++) {
		v[k].path = malloc(8);
		snprintf(v[k].path, 8, "d%03d", d);
		v[k++].is_dir = true;
		v[k].path = malloc(16);
		snprintf(v[k].path, 16, "d%03d/empty", d);
		v[k++].is_dir = true;
		for (int f = 0; f < 1000; f++) {
			v[k].path = malloc(24);
			snprintf(v[k].path, 24, "d%03d/f%05d.bin", d, f);
			v[k].size = (uint64_t)(d * 1000 + f);
			snprintf(v[k].oid, sizeof(v[k].oid), "%040x", d * 1000 + f);
			if (f % 10 == 0)
				snprintf(v[k].sha256, sizeof(v[k].sha256), "%064x", f);
			k++;
		}
	}
	*n = k;
	return v;
}

static void big_tree_free(struct cache_entry *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i].path);
	free(v);
}

static void test_big_tree(struct cache *c)
{
	struct cache_entry e = {0};
	struct list_acc a = {0};
	size_t n = 0;
	struct cache_entry *v = big_tree(&n);
	double t0, t1;
	int rc;

	t0 = now_s();
	rc = cache_tree_put(c, big_key, "", v, n, CACHE_TREE_COMPLETE | CACHE_TREE_RECURSIVE);
	t1 = now_s();
	tap_ok(!rc && n == 100200, "put a recursive listing of %zu entries", n);
	tap_diag("tree put: %zu entries in %.2f s", n, t1 - t0);
	t0 = now_s();
	rc = cache_tree_lookup(c, big_key, "d042/f00500.bin", &e);
	t1 = now_s();
	tap_ok(!rc && !e.is_dir && e.size == 42500 && !strcmp(e.path, "d042/f00500.bin") &&
		   !strcmp(e.oid, "000000000000000000000000000000000000a604") &&
		   !strcmp(e.sha256,
			   "00000000000000000000000000000000000000000000000000000000000001f4"),
	       "look up one file: its size, oid and sha256");
	tap_diag("first lookup: %.0f us", (t1 - t0) * 1e6);
	cache_entry_release(&e);
	t0 = now_s();
	for (int i = 0; i < 10000; i++) {
		char path[32];

		snprintf(path, sizeof(path), "d%03d/f%05d.bin", i % 100, i % 1000);
		if (!cache_tree_lookup(c, big_key, path, &e))
			cache_entry_release(&e);
	}
	t1 = now_s();
	tap_diag("10,000 lookups: %.1f us each", (t1 - t0) * 1e6 / 10000);
	tap_ok(cache_tree_lookup(c, big_key, "d042/nope", &e) == -ENOENT,
	       "a name missing from a complete directory: -ENOENT");
	tap_ok(cache_tree_lookup(c, big_key, "nodir/x/y", &e) == -ENOENT,
	       "a path under a directory the complete root lacks: -ENOENT");
	tap_ok(cache_tree_lookup(c, big_key, "d042/f00500.bin/x", &e) == -ENOTDIR,
	       "a path under a file: -ENOTDIR");
	tap_ok(!cache_tree_lookup(c, big_key, "d042/empty", &e) && e.is_dir, "a directory entry");
	cache_entry_release(&e);
	t0 = now_s();
	rc = list(c, big_key, "d042", &a);
	t1 = now_s();
	tap_ok(!rc && a.n == 1001 && a.sorted, "list one directory: 1001 entries in name order");
	tap_diag("one directory list (1001 entries): %.1f ms", (t1 - t0) * 1e3);
	tap_ok(!list(c, big_key, "", &a) && a.n == 100, "list the root: 100 directories");
	tap_ok(!list(c, big_key, "d007/empty", &a) && a.n == 0, "an empty directory lists empty");
	tap_ok(list(c, big_key, "d007/nope", &a) == -ENODATA, "an unknown directory: -ENODATA");
	/* Again: idempotent. */
	rc = cache_tree_put(c, big_key, "", v, n, CACHE_TREE_COMPLETE | CACHE_TREE_RECURSIVE);
	tap_ok(!rc && !list(c, big_key, "d099", &a) && a.n == 1001,
	       "putting it again changes nothing");
	big_tree_free(v, n);
}

static void test_tree_dirs(struct cache *c)
{
	static const char key[] = "dataset/acme/data@ffffffffffffffffffffffffffffffffffffffff";
	struct cache_entry root[] = {
	    {.path = (char *)"a",
	     .is_dir = true,
	     .oid = "1111111111111111111111111111111111111111"},
	    {.path = (char *)"README.md",
	     .size = 12,
	     .oid = "2222222222222222222222222222222222222222"},
	};
	struct cache_entry a1[] = {{.path = (char *)"a/b", .size = 1}};
	struct cache_entry a2[] = {{.path = (char *)"a/b", .size = 1},
				   {.path = (char *)"a/c", .size = 2}};
	struct cache_entry a3[] = {{.path = (char *)"a/x", .size = 3}};
	struct cache_entry e = {0};
	struct list_acc acc = {0};

	tap_ok(cache_tree_lookup(c, key, "a", &e) == -ENODATA, "an unknown tree: -ENODATA");
	tap_ok(!cache_tree_put(c, key, "", root, 2, CACHE_TREE_COMPLETE), "put the root listing");
	tap_ok(cache_tree_lookup(c, key, "a/b", &e) == -ENODATA,
	       "in a directory whose listing is unknown: -ENODATA");
	tap_ok(list(c, key, "a", &acc) == -ENODATA, "its listing: -ENODATA");
	tap_ok(cache_tree_lookup(c, key, "zzz", &e) == -ENOENT,
	       "not in the complete root: -ENOENT");
	tap_ok(!cache_tree_put(c, key, "a", a1, 1, 0), "put one entry of a, not complete");
	tap_ok(!cache_tree_lookup(c, key, "a/b", &e) && e.size == 1, "that entry is found");
	cache_entry_release(&e);
	tap_ok(cache_tree_lookup(c, key, "a/c", &e) == -ENODATA &&
		   list(c, key, "a", &acc) == -ENODATA,
	       "others are unknown, the listing too");
	tap_ok(!cache_tree_put(c, key, "a", a2, 2, CACHE_TREE_COMPLETE) &&
		   !cache_tree_put(c, key, "a", a2, 2, CACHE_TREE_COMPLETE),
	       "put the complete listing of a, twice");
	tap_ok(!cache_tree_lookup(c, key, "a/c", &e) && e.size == 2 &&
		   cache_tree_lookup(c, key, "a/d", &e) == -ENOENT,
	       "now a/c is found and a/d does not exist");
	cache_entry_release(&e);
	acc.c = c;
	acc.key = key;
	tap_ok(!list(c, key, "a", &acc) && acc.n == 2 && acc.sorted && acc.reentrant_ok,
	       "list a: 2 entries; the callback could look them up");
	acc.c = NULL;
	tap_ok(!cache_tree_put(c, key, "a", a3, 1, CACHE_TREE_COMPLETE) &&
		   cache_tree_lookup(c, key, "a/b", &e) == -ENOENT && !list(c, key, "a", &acc) &&
		   acc.n == 1,
	       "a new complete listing replaces the old one");
	acc.stop_after = 1;
	tap_ok(list(c, key, "", &acc) == 7 && acc.n == 1, "a callback's non-zero return stops it");
	acc.stop_after = 0;
	tap_ok(!cache_tree_delete(c, key) &&
		   cache_tree_lookup(c, key, "README.md", &e) == -ENODATA &&
		   !cache_tree_delete(c, key),
	       "delete the tree, and again");
}

/* A directory of another tree takes the listing of a directory with the same
 * tree id, within the same scope only. */
static void test_tree_adopt(struct cache *c)
{
	static const char k1[] = "E1 model/alice/m@1111111111111111111111111111111111111111";
	static const char k2[] = "E1 model/bob/n@2222222222222222222222222222222222222222";
	static const char oid[] = "3333333333333333333333333333333333333333";
	struct cache_entry root[] = {{.path = (char *)"src", .is_dir = true, .oid = ""}};
	struct cache_entry sub[] = {{.path = (char *)"src/a.c", .size = 5},
				    {.path = (char *)"src/lib", .is_dir = true}};
	struct cache_entry e = {0};
	struct list_acc acc = {0};

	snprintf(root[0].oid, sizeof(root[0].oid), "%s", oid);
	tap_ok(cache_tree_adopt(c, k2, "pkg", oid, "E1 ") == -ENOENT,
	       "adopt: no listing of that tree id yet, -ENOENT");
	tap_ok(!cache_tree_put(c, k1, "", root, 1, CACHE_TREE_COMPLETE) &&
		   !cache_tree_put(c, k1, "src", sub, 2, CACHE_TREE_COMPLETE),
	       "put a root and its directory src");
	tap_ok(cache_tree_adopt(c, k2, "pkg", oid, "E2 ") == -ENOENT,
	       "adopt: a listing of another scope is not taken");
	tap_ok(!cache_tree_adopt(c, k2, "pkg", oid, "E1 "), "adopt: taken by tree id");
	tap_ok(!list(c, k2, "pkg", &acc) && acc.n == 2 && acc.sorted,
	       "the adopted directory lists the same two entries");
	tap_ok(!cache_tree_lookup(c, k2, "pkg/a.c", &e) && e.size == 5 &&
		   cache_tree_lookup(c, k2, "pkg/zz", &e) == -ENOENT,
	       "its entries are found under the new path, others do not exist");
	cache_entry_release(&e);
	tap_ok(cache_tree_adopt(c, k2, "pkg", "", "E1 ") == -EINVAL &&
		   cache_tree_adopt(c, k2, "", oid, "E1 ") == -EINVAL,
	       "adopt: an empty oid or the root is -EINVAL");
	tap_ok(!cache_tree_delete(c, k1) && !cache_tree_delete(c, k2), "delete both trees");
}

struct bad_tree_case {
	const char *dir;
	const char *path;
	unsigned flags;
	const char *oid;
};

static const struct bad_tree_case bad_trees[] = {
    {"", "../x", CACHE_TREE_COMPLETE, ""},
    {"", "/a", CACHE_TREE_COMPLETE, ""},
    {"", "a/", CACHE_TREE_COMPLETE, ""},
    {"", "a//b", CACHE_TREE_COMPLETE | CACHE_TREE_RECURSIVE, ""},
    {"", ".", CACHE_TREE_COMPLETE, ""},
    {"", "a/./b", CACHE_TREE_COMPLETE | CACHE_TREE_RECURSIVE, ""},
    {"", "tab\there", CACHE_TREE_COMPLETE, ""},
    {"", "", CACHE_TREE_COMPLETE, ""},
    {"", "a/b", CACHE_TREE_COMPLETE, ""},  /* not a child without RECURSIVE */
    {"a", "b/c", CACHE_TREE_COMPLETE, ""}, /* outside the directory */
    {"a", "ab", CACHE_TREE_COMPLETE, ""},
    {"a/", "a/b", CACHE_TREE_COMPLETE, ""},
    {"..", "../b", CACHE_TREE_COMPLETE, ""},
    {"", "a", CACHE_TREE_RECURSIVE, ""}, /* recursive needs complete */
    {"", "a", 1u << 7, ""},
    {"", "a", CACHE_TREE_COMPLETE, "XYZ"},
    {"", "a", CACHE_TREE_COMPLETE, "ABCDEF0123456789ABCDEF0123456789ABCDEF01"},
};

static void test_bad_trees(struct cache *c)
{
	static const char key[] = "model/x/y@1";
	struct cache_entry e;

	for (size_t i = 0; i < sizeof(bad_trees) / sizeof(bad_trees[0]); i++) {
		memset(&e, 0, sizeof(e));
		e.path = (char *)bad_trees[i].path;
		snprintf(e.oid, sizeof(e.oid), "%s", bad_trees[i].oid);
		tap_ok(cache_tree_put(c, key, bad_trees[i].dir, &e, 1, bad_trees[i].flags) ==
			   -EINVAL,
		       "refused: dir \"%s\", path \"%s\", flags %u, oid \"%s\"", bad_trees[i].dir,
		       bad_trees[i].path, bad_trees[i].flags, bad_trees[i].oid);
	}
	tap_ok(cache_tree_lookup(c, key, "", &e) == -EINVAL &&
		   cache_tree_lookup(c, key, "../etc", &e) == -EINVAL &&
		   cache_tree_lookup(c, "", "a", &e) == -EINVAL,
	       "bad lookups: -EINVAL");
	tap_ok(cache_tree_lookup(c, key, "a", &e) == -ENODATA, "nothing of them was stored");
}

/* Lookups keep working, quickly, while another thread writes a big tree. */
struct writer {
	struct cache *c;
	struct cache_entry *v;
	size_t n;
	int rc;
	double seconds;
	bool done; /* atomic */
};

static void *writer_main(void *arg)
{
	struct writer *w = arg;
	double t0 = now_s();

	w->rc = cache_tree_put(w->c, "model/alice/huge@other", "", w->v, w->n,
			       CACHE_TREE_COMPLETE | CACHE_TREE_RECURSIVE);
	w->seconds = now_s() - t0;
	__atomic_store_n(&w->done, true, __ATOMIC_RELEASE);
	return NULL;
}

static void test_read_during_write(struct cache *c)
{
	struct writer w = {.c = c};
	double worst = 0;
	int lookups = 0, failed = 0;
	pthread_t th;

	w.v = big_tree(&w.n);
	pthread_create(&th, NULL, writer_main, &w);
	while (!__atomic_load_n(&w.done, __ATOMIC_ACQUIRE)) {
		struct cache_entry e;
		double t0 = now_s(), t;

		if (cache_tree_lookup(c, big_key, "d001/f00001.bin", &e))
			failed++;
		else
			cache_entry_release(&e);
		t = now_s() - t0;
		if (t > worst)
			worst = t;
		lookups++;
	}
	pthread_join(th, NULL);
	tap_ok(!w.rc && !failed && lookups > 0,
	       "%d lookups answered while a %zu-entry tree was written", lookups, w.n);
	tap_diag("tree put of %zu entries took %.2f s; slowest lookup meanwhile %.1f ms", w.n,
		 w.seconds, worst * 1e3);
	big_tree_free(w.v, w.n);
}

int main(void)
{
	struct cache_config cfg = {.lock = CACHE_LOCK_SHARED};
	char dir[256];
	struct cache *c;
	int err = 0;

	if (!mkdtemp(top)) {
		perror("mkdtemp");
		return 1;
	}
	snprintf(dir, sizeof(dir), "%s/cache", top);
	cfg.dir = dir;
	c = cache_open(&cfg, &err);
	if (tap_ok(c != NULL, "open a cache")) {
		test_kv(c);
		test_big_tree(c);
		test_tree_dirs(c);
		test_tree_adopt(c);
		test_bad_trees(c);
		test_read_during_write(c);
	}
	cache_close(c);
	/* Reopened, the trees are still there. */
	c = cache_open(&cfg, &err);
	{
		struct cache_entry e = {0};

		tap_ok(c && !cache_tree_lookup(c, big_key, "d099/f00999.bin", &e) &&
			   e.size == 99999,
		       "the tree is still there after reopening");
		cache_entry_release(&e);
	}
	cache_close(c);
	nftw(top, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	return tap_done();
}
