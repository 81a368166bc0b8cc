/* Unit tests: the life of a cache (cache/cache.c): directory and file modes,
 * ids and symlinks, persistence across a crash, LRU eviction and pinning,
 * statistics, clear and its lock, the schema version, and a concurrent
 * stress run.  Real files and a real SQLite index in a temporary directory. */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cache.h"
#include "tap.h"

#define KiB 1024ull
#define CHUNK (64 * KiB)
#define BLOB (4 * CHUNK)

static char top[] = "/tmp/hubfs-test-cache-life-XXXXXX";
static unsigned dir_serial;

static void new_dir(char *dir, size_t size)
{
	snprintf(dir, size, "%s/c%u", top, dir_serial++);
}

static struct cache *open_with(const char *dir, uint64_t limit, uint64_t sync_bytes,
			       enum cache_lock lock, int *err)
{
	struct cache_config cfg = {
	    .dir = dir,
	    .limit = limit,
	    .chunk_size = CHUNK,
	    .sync_bytes = sync_bytes,
	    .lock = lock,
	};

	return cache_open(&cfg, err);
}

static struct cache *open_cache(const char *dir, uint64_t limit)
{
	int err = 0;
	struct cache *c = open_with(dir, limit, 0, CACHE_LOCK_SHARED, &err);

	if (!c)
		tap_diag("cache_open(%s): %s", dir, strerror(-err));
	return c;
}

static unsigned char gen_byte(unsigned seed, uint64_t off)
{
	uint64_t x = (off + 1) * 0x9e3779b97f4a7c15ull ^ ((uint64_t)seed << 32 | seed);

	return (unsigned char)(x >> 29);
}

/* The id of @size bytes of content @seed. */
static void gen_id(unsigned seed, uint64_t size, char id[CACHE_ID_MAX])
{
	unsigned char *p = malloc(size ? size : 1);

	for (uint64_t i = 0; p && i < size; i++)
		p[i] = gen_byte(seed, i);
	cache_id_of_buffer(CACHE_ID_SHA256, p, size, id);
	free(p);
}

struct source {
	unsigned seed;
	int fail_every; /* fail one fill in this many, 0 never */
	unsigned calls; /* atomic */
};

static int fill(void *arg, struct cache_blob *b, uint64_t off, uint64_t len)
{
	struct source *s = arg;
	unsigned n = __atomic_add_fetch(&s->calls, 1, __ATOMIC_RELAXED);
	unsigned char buf[4096];
	int err = 0;

	if (s->fail_every && n % (unsigned)s->fail_every == 0)
		return -ECONNRESET;
	for (uint64_t p = 0; p < len && !err; p += sizeof(buf)) {
		uint64_t k = len - p < sizeof(buf) ? len - p : sizeof(buf);

		for (uint64_t i = 0; i < k; i++)
			buf[i] = gen_byte(s->seed, off + p + i);
		err = cache_blob_write(b, off + p, buf, k);
	}
	return err;
}

/* Reads [off, off+len) of @b and compares it with content @seed. */
static bool read_check(struct cache_blob *b, unsigned seed, uint64_t off, uint64_t len,
		       struct source *s, ssize_t *rc)
{
	unsigned char *buf = malloc(len ? len : 1);
	bool ok;

	*rc = buf ? cache_blob_read(b, buf, len, off, s ? fill : NULL, s) : -ENOMEM;
	ok = *rc == (ssize_t)len;
	for (uint64_t i = 0; ok && i < len; i++)
		ok = buf[i] == gen_byte(seed, off + i);
	free(buf);
	return ok;
}

/* Makes blob @seed complete in @c; its id goes to @id. */
static bool make_blob(struct cache *c, unsigned seed, uint64_t size, char id[CACHE_ID_MAX])
{
	struct source s = {.seed = seed};
	struct cache_blob *b;
	ssize_t rc = 0;
	bool ok;
	int err;

	gen_id(seed, size, id);
	b = cache_blob_get(c, id, size, &err);
	ok = b && read_check(b, seed, 0, size, &s, &rc) && cache_blob_complete(b);
	cache_blob_put(b);
	return ok;
}

static bool blob_file_exists(const char *dir, const char *id)
{
	char path[512];
	struct stat st;

	snprintf(path, sizeof(path), "%s/blobs/%.2s/%s", dir, id, id);
	return !lstat(path, &st);
}

static mode_t mode_of(const char *path)
{
	struct stat st;

	return lstat(path, &st) ? (mode_t)-1 : st.st_mode & 07777;
}

static void sleep_ms(unsigned ms)
{
	usleep(ms * 1000);
}

/*
 * Modes, configuration, ids, symlinks.
 */

static void test_modes(void)
{
	char dir[256], path[600], id[CACHE_ID_MAX];
	struct cache *c;
	int err = 0;

	snprintf(dir, sizeof(dir), "%s/deep/er/cache", top);
	c = open_cache(dir, 0);
	tap_ok(c && make_blob(c, 1, BLOB, id), "a cache in a directory whose parents are missing");
	cache_close(c);
	tap_ok(mode_of(dir) == 0700, "the cache directory is 0700");
	snprintf(path, sizeof(path), "%s/deep", top);
	tap_ok(mode_of(path) == 0700, "parents it made are 0700");
	snprintf(path, sizeof(path), "%s/hubfs.db", dir);
	tap_ok(mode_of(path) == 0600, "hubfs.db is 0600");
	snprintf(path, sizeof(path), "%s/lock", dir);
	tap_ok(mode_of(path) == 0600, "lock is 0600");
	snprintf(path, sizeof(path), "%s/blobs/%.2s", dir, id);
	tap_ok(mode_of(path) == 0700, "blob subdirectories are 0700");
	snprintf(path, sizeof(path), "%s/blobs/%.2s/%s", dir, id, id);
	tap_ok(mode_of(path) == 0600, "blob files are 0600");
	chmod(dir, 0755);
	c = open_cache(dir, 0);
	tap_ok(c && mode_of(dir) == 0700, "a cache directory made wider is made private again");
	cache_close(c);

	tap_ok(!open_with(NULL, 0, 0, CACHE_LOCK_NONE, &err) && err == -EINVAL, "no directory");
	{
		struct cache_config cfg = {.dir = dir, .chunk_size = 3 * 4096};

		err = 0;
		tap_ok(!cache_open(&cfg, &err) && err == -EINVAL,
		       "a chunk size not a power of two");
		cfg.chunk_size = 1024;
		err = 0;
		tap_ok(!cache_open(&cfg, &err) && err == -EINVAL, "a chunk size too small");
	}
}

static const char *const bad_ids[] = {
    "",
    "../x",
    "../../../../etc/passwd0000000000000000000",
    "CE013625030BA8DBA906F756967F9E9CA394464A",
    "ce013625030ba8dba906f756967f9e9ca394464",
    "ce013625030ba8dba906f756967f9e9ca394464aa",
    "ce/13625030ba8dba906f756967f9e9ca394464a",
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85 ",
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85g",
};

static void test_bad_ids(void)
{
	char dir[256], path[300];
	struct cache *c;
	size_t entries = 0;
	struct dirent *de;
	DIR *d;

	new_dir(dir, sizeof(dir));
	c = open_cache(dir, 0);
	for (size_t i = 0; c && i < sizeof(bad_ids) / sizeof(bad_ids[0]); i++) {
		int err = 0;
		struct cache_blob *b = cache_blob_get(c, bad_ids[i], 10, &err);

		tap_ok(!b && err == -EINVAL, "id \"%s\" refused", bad_ids[i]);
		cache_blob_put(b);
	}
	{
		int err = 0;

		tap_ok(!cache_blob_get(c, NULL, 10, &err) && err == -EINVAL, "NULL id refused");
	}
	cache_close(c);
	snprintf(path, sizeof(path), "%s/blobs", dir);
	d = opendir(path);
	while (d && (de = readdir(d)))
		entries += de->d_name[0] != '.';
	if (d)
		closedir(d);
	tap_ok(d && entries == 0, "nothing was created for them");
}

static void test_symlinks(void)
{
	char dir[256], path[600], outside[300], outdir[300], id[CACHE_ID_MAX], id2[CACHE_ID_MAX];
	struct cache_blob *b;
	struct cache *c;
	char content[16] = "";
	int err = 0, fd;
	DIR *d;
	struct dirent *de;
	size_t entries = 0;

	new_dir(dir, sizeof(dir));
	c = open_cache(dir, 0);
	snprintf(outside, sizeof(outside), "%s/outside-file", top);
	fd = open(outside, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd >= 0) {
		if (write(fd, "secret", 6) != 6)
			tap_diag("short write");
		close(fd);
	}
	gen_id(100, BLOB, id);
	snprintf(path, sizeof(path), "%s/blobs/%.2s", dir, id);
	mkdir(path, 0700);
	snprintf(path, sizeof(path), "%s/blobs/%.2s/%s", dir, id, id);
	if (symlink(outside, path))
		tap_diag("symlink: %s", strerror(errno));
	b = cache_blob_get(c, id, BLOB, &err);
	tap_ok(!b && err == -ELOOP, "a symlink where a blob file should be: -ELOOP");
	cache_blob_put(b);
	fd = open(outside, O_RDONLY);
	if (fd >= 0) {
		if (read(fd, content, sizeof(content) - 1) < 0)
			content[0] = '\0';
		close(fd);
	}
	tap_ok(!strcmp(content, "secret") && mode_of(outside) == 0600,
	       "the file it points to is untouched");

	/* A symlinked subdirectory. */
	snprintf(outdir, sizeof(outdir), "%s/outside-dir", top);
	mkdir(outdir, 0700);
	for (unsigned seed = 200;; seed++) {
		gen_id(seed, BLOB, id2);
		if (strncmp(id2, id, 2))
			break;
	}
	snprintf(path, sizeof(path), "%s/blobs/%.2s", dir, id2);
	if (symlink(outdir, path))
		tap_diag("symlink: %s", strerror(errno));
	err = 0;
	b = cache_blob_get(c, id2, BLOB, &err);
	tap_ok(!b && (err == -ELOOP || err == -ENOTDIR), "a symlinked subdirectory is refused (%s)",
	       strerror(-err));
	cache_blob_put(b);
	d = opendir(outdir);
	while (d && (de = readdir(d)))
		entries += de->d_name[0] != '.';
	if (d)
		closedir(d);
	tap_ok(d && entries == 0, "nothing was written through it");
	cache_close(c);
}

/*
 * Persistence across a crash.
 */

static void test_crash(void)
{
	char dir[256], id[CACHE_ID_MAX];
	struct cache_blob *b = NULL;
	struct cache *c;
	int status = -1, err = 0;
	ssize_t rc;
	pid_t pid;

	new_dir(dir, sizeof(dir));
	gen_id(7, 10 * CHUNK, id);
	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		/* Chunks 0-3 are synced and persisted, 4-5 are not. */
		struct source s = {.seed = 7};

		c = open_with(dir, 0, 0, CACHE_LOCK_SHARED, &err);
		b = c ? cache_blob_get(c, id, 10 * CHUNK, &err) : NULL;
		if (!b || !read_check(b, 7, 0, 4 * CHUNK, &s, &rc) || cache_blob_sync(b) ||
		    !read_check(b, 7, 4 * CHUNK, 2 * CHUNK, &s, &rc))
			_exit(1);
		_exit(0); /* a crash: no put, no close */
	}
	waitpid(pid, &status, 0);
	tap_ok(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	       "a child filled 6 chunks and died without closing");
	c = open_cache(dir, 0);
	if (c)
		b = cache_blob_get(c, id, 10 * CHUNK, &err);
	tap_ok(b && cache_blob_present(b, 0, 4 * CHUNK),
	       "the chunks synced before the crash are present");
	tap_ok(b && !cache_blob_present(b, 4 * CHUNK, 1) && !cache_blob_present(b, 5 * CHUNK, 1),
	       "the chunks never synced are not");
	tap_ok(b && read_check(b, 7, 0, 4 * CHUNK, NULL, &rc),
	       "the present chunks read back right without a fill");
	cache_blob_put(b);
	cache_close(c);

	/* A clean run: put and close persist everything. */
	pid = fork();
	if (pid == 0) {
		struct source s = {.seed = 7};

		c = open_with(dir, 0, 0, CACHE_LOCK_SHARED, &err);
		b = c ? cache_blob_get(c, id, 10 * CHUNK, &err) : NULL;
		if (!b || !read_check(b, 7, 4 * CHUNK, 2 * CHUNK, &s, &rc))
			_exit(1);
		cache_blob_put(b);
		cache_close(c);
		_exit(0);
	}
	waitpid(pid, &status, 0);
	c = open_cache(dir, 0);
	b = c ? cache_blob_get(c, id, 10 * CHUNK, &err) : NULL;
	tap_ok(WIFEXITED(status) && WEXITSTATUS(status) == 0 && b &&
		   cache_blob_present(b, 0, 6 * CHUNK) && !cache_blob_present(b, 6 * CHUNK, 1),
	       "after a clean put the chunks filled are present");
	cache_blob_put(b);
	cache_close(c);
}

/* Presence is persisted in batches by the cache's worker, without a put. */
static void test_batches(void)
{
	char dir[256], id[CACHE_ID_MAX];
	struct source s = {.seed = 14};
	struct cache_blob *b = NULL;
	struct cache *c, *other;
	struct cache_stats st = {0};
	ssize_t rc = 0;
	int err = 0;

	new_dir(dir, sizeof(dir));
	gen_id(14, 16 * CHUNK, id);
	c = open_with(dir, 0, 4 * CHUNK, CACHE_LOCK_SHARED, &err);
	if (c)
		b = cache_blob_get(c, id, 16 * CHUNK, &err);
	tap_ok(b && read_check(b, 14, 0, 6 * CHUNK, &s, &rc), "fill 6 chunks, batches of 4");
	/* Another handle on the directory sees only what is persisted. */
	other = open_with(dir, 0, 0, CACHE_LOCK_NONE, &err);
	for (int i = 0; other && i < 500 && st.chunks < 4; i++) {
		sleep_ms(10);
		cache_stats(other, &st);
	}
	tap_ok(st.chunks >= 4, "the worker persisted a batch (%llu chunks) while the blob is open",
	       (unsigned long long)st.chunks);
	cache_close(other);
	cache_blob_put(b);
	cache_close(c);
}

/*
 * Eviction.
 */

static void test_lru(void)
{
	char dir[256], a[CACHE_ID_MAX], bb[CACHE_ID_MAX], cc[CACHE_ID_MAX], d[CACHE_ID_MAX],
	    e[CACHE_ID_MAX], g[CACHE_ID_MAX];
	const uint64_t limit = 3 * BLOB;
	struct cache_blob *b, *pinned;
	struct cache_stats st;
	struct cache *c;
	ssize_t rc;
	int err = 0;

	new_dir(dir, sizeof(dir));
	c = open_cache(dir, limit);
	if (!tap_ok(c && make_blob(c, 1, BLOB, a), "blob A"))
		goto out;
	sleep_ms(5);
	make_blob(c, 2, BLOB, bb);
	sleep_ms(5);
	make_blob(c, 3, BLOB, cc);
	sleep_ms(5);
	b = cache_blob_get(c, a, BLOB, &err); /* A is used again */
	tap_ok(b && read_check(b, 1, 0, 10, NULL, &rc), "A read again from the cache");
	cache_blob_put(b);
	sleep_ms(5);
	make_blob(c, 4, BLOB, d);
	err = cache_stats(c, &st);
	tap_ok(!err && st.bytes <= limit && st.blobs == 3,
	       "a fourth blob over the limit: %llu bytes in %llu blobs",
	       (unsigned long long)st.bytes, (unsigned long long)st.blobs);
	tap_ok(!blob_file_exists(dir, bb) && blob_file_exists(dir, a) &&
		   blob_file_exists(dir, cc) && blob_file_exists(dir, d),
	       "the least recently used (B) was evicted, not A which was read again");

	/* C is now the least recently used, but pinned. */
	pinned = cache_blob_get(c, cc, BLOB, &err);
	sleep_ms(5);
	make_blob(c, 5, BLOB, e);
	tap_ok(pinned && blob_file_exists(dir, cc) && !blob_file_exists(dir, a) &&
		   read_check(pinned, 3, 0, BLOB, NULL, &rc),
	       "a pinned blob is not evicted; the next least recently used (A) is");
	cache_blob_put(pinned);

	/* A pinned blob bigger than the limit stays while pinned. */
	gen_id(6, 4 * BLOB, g);
	pinned = cache_blob_get(c, g, 4 * BLOB, &err);
	{
		struct source s = {.seed = 6};

		tap_ok(pinned && read_check(pinned, 6, 0, 4 * BLOB, &s, &rc) &&
			   blob_file_exists(dir, g),
		       "a pinned blob bigger than the limit is filled and kept");
	}
	err = cache_stats(c, &st);
	tap_ok(!err && st.open == 1 && st.bytes == 4 * BLOB && !blob_file_exists(dir, d) &&
		   !blob_file_exists(dir, e),
	       "everything else was evicted for it (%llu bytes)", (unsigned long long)st.bytes);
	cache_blob_put(pinned);
	err = cache_prune(c);
	err = err ? err : cache_stats(c, &st);
	tap_ok(!err && st.bytes <= limit && !blob_file_exists(dir, g),
	       "unpinned, it is evicted: %llu bytes left", (unsigned long long)st.bytes);
out:
	cache_close(c);
}

/* Another cache handle on the same directory (as another process would)
 * evicts a blob this one has open. */
static void test_evicted_elsewhere(void)
{
	char dir[256], id[CACHE_ID_MAX];
	struct cache *c1, *c2;
	struct cache_blob *b;
	struct cache_stats st;
	ssize_t rc;
	int err = 0;

	new_dir(dir, sizeof(dir));
	c1 = open_cache(dir, 0);
	make_blob(c1, 8, BLOB, id);
	b = cache_blob_get(c1, id, BLOB, &err);
	c2 = open_with(dir, 1, 0, CACHE_LOCK_NONE, &err);
	tap_ok(b && c2 && cache_prune(c2) == 0 && !blob_file_exists(dir, id),
	       "another handle's prune removes a blob open here");
	tap_ok(b && read_check(b, 8, 0, BLOB, NULL, &rc), "the open handle still reads its bytes");
	cache_blob_put(b);
	err = cache_stats(c2, &st);
	tap_ok(!err && st.blobs == 0, "its last put does not bring the row back");
	b = cache_blob_get(c1, id, BLOB, &err);
	tap_ok(b && !cache_blob_present(b, 0, 1), "a new handle starts empty");
	cache_blob_put(b);
	cache_close(c2);
	cache_close(c1);
}

static void test_gc(void)
{
	char dir[256], path[600], id[CACHE_ID_MAX], stray[CACHE_ID_MAX];
	struct cache_blob *b;
	struct cache *c;
	int fd, err = 0;

	new_dir(dir, sizeof(dir));
	c = open_cache(dir, 0);
	gen_id(50, BLOB, stray);
	snprintf(path, sizeof(path), "%s/blobs/%.2s", dir, stray);
	mkdir(path, 0700);
	snprintf(path, sizeof(path), "%s/blobs/%.2s/%s", dir, stray, stray);
	fd = open(path, O_WRONLY | O_CREAT, 0600);
	if (fd >= 0)
		close(fd);
	gen_id(51, BLOB, id);
	b = cache_blob_get(c, id, BLOB, &err);
	tap_ok(c && cache_prune(c) == 0 && !blob_file_exists(dir, stray) &&
		   blob_file_exists(dir, id),
	       "prune removes a file the index does not know, not an open blob's");
	cache_blob_put(b);
	cache_close(c);
}

static void test_size_conflict(void)
{
	char dir[256], id[CACHE_ID_MAX];
	struct cache_blob *b, *b2;
	struct cache *c;
	int err = 0;

	new_dir(dir, sizeof(dir));
	c = open_cache(dir, 0);
	make_blob(c, 9, BLOB, id);
	b = cache_blob_get(c, id, BLOB + 1, &err);
	tap_ok(!b && err == -EINVAL, "a size that contradicts a complete blob: -EINVAL");
	b = cache_blob_get(c, id, BLOB, &err);
	err = 0;
	b2 = cache_blob_get(c, id, BLOB - 1, &err);
	tap_ok(b && cache_blob_complete(b) && !b2 && err == -EINVAL,
	       "and one that contradicts an open handle; the blob is still complete");
	cache_blob_put(b);
	cache_close(c);
}

/*
 * Statistics, clear, schema.
 */

static void test_stats(void)
{
	char dir[256], id[CACHE_ID_MAX];
	struct source s = {.seed = 12};
	struct cache_blob *b = NULL;
	struct cache_stats st;
	struct cache *c;
	ssize_t rc;
	int err = 0;

	new_dir(dir, sizeof(dir));
	gen_id(12, BLOB, id);
	c = open_cache(dir, 0);
	if (c)
		b = cache_blob_get(c, id, BLOB, &err);
	if (!tap_ok(b != NULL, "a blob for stats"))
		goto out;
	read_check(b, 12, 0, 100, &s, &rc);	    /* miss */
	read_check(b, 12, 100, 100, &s, &rc);	    /* hit */
	read_check(b, 12, CHUNK - 10, 20, &s, &rc); /* hit + miss */
	err = cache_stats(c, &st);
	tap_ok(!err && st.hit_bytes == 110 && st.miss_bytes == 110 &&
		   cache_stats_hit_ratio(&st) == 0.5,
	       "110 bytes from the cache, 110 fetched: byte ratio 0.5");
	tap_ok(st.blobs == 1 && st.chunks == 2 && st.bytes == 2 * CHUNK && st.open == 1 &&
		   st.complete == 0,
	       "1 blob open, 2 chunks, 128 KiB");
	cache_blob_put(b);
	cache_close(c);
	c = open_cache(dir, 0);
	err = c ? cache_stats(c, &st) : -1;
	tap_ok(!err && st.hit_bytes == 110 && st.miss_bytes == 110 && st.chunks == 2 &&
		   st.open == 0,
	       "the same after reopening");
out:
	cache_close(c);
}

static void test_clear(void)
{
	char dir[256], id[CACHE_ID_MAX], path[600];
	struct cache *c1, *c2;
	struct cache_stats st;
	void *val = NULL;
	int err = 0;

	new_dir(dir, sizeof(dir));
	c1 = open_cache(dir, 0);
	make_blob(c1, 13, BLOB, id);
	cache_kv_put(c1, "ref/x", "abc", 3, 1);
	tap_ok(cache_clear(dir, NULL) == -EBUSY, "clear while a mount holds the lock: -EBUSY");
	c2 = open_with(dir, 0, 0, CACHE_LOCK_SHARED, &err);
	tap_ok(c2 != NULL, "a second mount shares the cache");
	cache_close(c2);
	err = 0;
	tap_ok(!open_with(dir, 0, 0, CACHE_LOCK_EXCLUSIVE, &err) && err == -EBUSY,
	       "an exclusive open while mounted: -EBUSY");
	cache_close(c1);
	tap_ok(cache_clear(dir, NULL) == 0, "clear once unmounted");
	c1 = open_cache(dir, 0);
	err = c1 ? cache_stats(c1, &st) : -1;
	tap_ok(!err && st.blobs == 0 && st.bytes == 0 && st.hit_bytes == 0 && st.miss_bytes == 0,
	       "the index is empty");
	tap_ok(c1 && cache_kv_get(c1, "ref/x", &val, NULL, NULL) == -ENOENT, "so is the metadata");
	snprintf(path, sizeof(path), "%s/blobs/%.2s", dir, id);
	tap_ok(!blob_file_exists(dir, id) && mode_of(path) == (mode_t)-1, "blob files are gone");
	cache_close(c1);
}

static void test_schema_version(void)
{
	static const unsigned char v99[4] = {0, 0, 0, 99}, v1[4] = {0, 0, 0, 1};
	char dir[256], path[600];
	struct cache *c;
	int fd, err = 0;

	new_dir(dir, sizeof(dir));
	c = open_cache(dir, 0);
	cache_close(c);
	/* PRAGMA user_version is the 4 bytes at offset 60 of the header. */
	snprintf(path, sizeof(path), "%s/hubfs.db-wal", dir);
	tap_ok(c && access(path, F_OK) != 0, "the WAL is checkpointed at close");
	snprintf(path, sizeof(path), "%s/hubfs.db", dir);
	fd = open(path, O_RDWR);
	tap_ok(fd >= 0 && pwrite(fd, v99, 4, 60) == 4, "set the schema version to 99");
	c = open_with(dir, 0, 0, CACHE_LOCK_SHARED, &err);
	tap_ok(!c && err == -EPROTO, "a newer schema is refused: -EPROTO");
	cache_close(c);
	if (fd >= 0 && pwrite(fd, v1, 4, 60) != 4)
		tap_diag("cannot restore the version");
	c = open_cache(dir, 0);
	tap_ok(c != NULL, "version 1 opens again");
	cache_close(c);
	if (fd >= 0)
		close(fd);
}

/*
 * Stress: threads read random ranges of blobs that are being evicted, with
 * fills that fail now and then.  Every successful read must be right.
 */

enum { STRESS_BLOBS = 6, STRESS_THREADS = 4, STRESS_OPS = 250 };

struct stress {
	struct cache *c;
	char ids[STRESS_BLOBS][CACHE_ID_MAX];
	unsigned seed;
	int bad, errors, reads;
};

static void *stress_main(void *arg)
{
	struct stress *t = arg;
	unsigned r = t->seed;

	for (int op = 0; op < STRESS_OPS; op++) {
		unsigned k = ((r = r * 1103515245 + 12345) >> 16) % STRESS_BLOBS;
		uint64_t off = ((r = r * 1103515245 + 12345) >> 8) % (2 * BLOB);
		uint64_t len = 1 + ((r = r * 1103515245 + 12345) >> 8) % (CHUNK * 3);
		struct source s = {.seed = 1000 + k, .fail_every = 7};
		struct cache_blob *b;
		ssize_t rc;
		int err;

		if (off + len > 2 * BLOB)
			len = 2 * BLOB - off;
		b = cache_blob_get(t->c, t->ids[k], 2 * BLOB, &err);
		if (!b) {
			t->errors++;
			continue;
		}
		if (read_check(b, s.seed, off, len, &s, &rc))
			t->reads++;
		else if (rc >= 0)
			t->bad++; /* wrong bytes: never acceptable */
		else if (rc != -ECONNRESET)
			t->errors++;
		if (op % 50 == 0) {
			struct cache_stats st;

			cache_stats(t->c, &st);
		}
		cache_blob_put(b);
	}
	return NULL;
}

static void test_stress(void)
{
	struct stress t[STRESS_THREADS];
	pthread_t th[STRESS_THREADS];
	char dir[256], ids[STRESS_BLOBS][CACHE_ID_MAX];
	struct cache_stats st;
	struct cache *c;
	int bad = 0, errors = 0, reads = 0;

	new_dir(dir, sizeof(dir));
	c = open_cache(dir, 5 * BLOB);
	for (unsigned k = 0; k < STRESS_BLOBS; k++)
		gen_id(1000 + k, 2 * BLOB, ids[k]);
	for (int i = 0; c && i < STRESS_THREADS; i++) {
		t[i] = (struct stress){.c = c, .seed = 77u + (unsigned)i};
		memcpy(t[i].ids, ids, sizeof(ids));
		pthread_create(&th[i], NULL, stress_main, &t[i]);
	}
	for (int i = 0; c && i < STRESS_THREADS; i++) {
		pthread_join(th[i], NULL);
		bad += t[i].bad;
		errors += t[i].errors;
		reads += t[i].reads;
	}
	tap_ok(c && bad == 0 && errors == 0,
	       "stress: %d good reads, no wrong byte (%d), no unexpected error (%d)", reads, bad,
	       errors);
	memset(&st, 0, sizeof(st));
	bad = c ? cache_prune(c) : -1;
	bad = bad ? bad : cache_stats(c, &st);
	tap_ok(!bad && st.bytes <= 5 * BLOB && st.open == 0,
	       "stress: within the limit afterwards (%llu bytes)", (unsigned long long)st.bytes);
	cache_close(c);
}

int main(void)
{
	if (!mkdtemp(top)) {
		perror("mkdtemp");
		return 1;
	}
	test_modes();
	test_bad_ids();
	test_symlinks();
	test_crash();
	test_batches();
	test_lru();
	test_evicted_elsewhere();
	test_gc();
	test_size_conflict();
	test_stats();
	test_clear();
	test_schema_version();
	test_stress();
	tap_rm_rf(top);
	return tap_done();
}
