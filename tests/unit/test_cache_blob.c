/* Unit tests: blob reads through the cache (cache/cache_blob.c): fills,
 * sparse files, single flight, errors, verification, import, rot.  Real files and
 * a real SQLite index in a temporary directory.
 *
 * HUBFS_CACHE_BENCH=1 adds a benchmark: a 1 GiB blob filled, then read. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#include "cache.h"
#include "tap.h"

#define KiB 1024ull
#define MiB (1024ull * 1024)
#define GiB (1024ull * MiB)
#define CHUNK (64 * KiB)

static char top[] = "/tmp/hubfs-test-cache-blob-XXXXXX";
static unsigned dir_serial;

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A fresh cache directory under top (not created: cache_open makes it). */
static void new_dir(char *dir, size_t size)
{
	snprintf(dir, size, "%s/c%u", top, dir_serial++);
}

static struct cache *open_cache(const char *dir, uint64_t limit, uint64_t sync_bytes)
{
	struct cache_config cfg = {
	    .dir = dir,
	    .limit = limit,
	    .chunk_size = CHUNK,
	    .sync_bytes = sync_bytes,
	    .lock = CACHE_LOCK_SHARED,
	};
	int err = 0;
	struct cache *c = cache_open(&cfg, &err);

	if (!c)
		tap_diag("cache_open(%s): %s", dir, strerror(-err));
	return c;
}

/* The byte at @off of content @seed. */
static unsigned char gen_byte(unsigned seed, uint64_t off)
{
	uint64_t x = (off + 1) * 0x9e3779b97f4a7c15ull ^ seed;

	return (unsigned char)(x >> 29);
}

static unsigned char *gen(unsigned seed, size_t size)
{
	unsigned char *p = malloc(size ? size : 1);

	for (size_t i = 0; p && i < size; i++)
		p[i] = gen_byte(seed, i);
	return p;
}

/* What the fill callback serves, and what it counts. */
enum deliver { DELIVER_WHOLE, DELIVER_PIECES, DELIVER_REVERSE, DELIVER_OVERLAP };

struct source {
	const unsigned char *data; /* NULL: gen_byte(seed, ...) */
	unsigned seed;
	enum deliver how;
	int fail; /* returned after delivering fail_after bytes */
	uint64_t fail_after;
	int64_t corrupt_at;  /* -1, or the offset of a byte delivered wrong */
	unsigned delay_us;   /* sleep before delivering */
	int calls;	     /* atomic */
	int chunk_calls[64]; /* fills that covered chunk i; atomic */
	uint64_t last_off, last_len;
};

static int deliver(struct cache_blob *b, struct source *s, uint64_t off, uint64_t len)
{
	unsigned char *buf = malloc(len ? len : 1);
	int err = 0;

	if (!buf)
		return -ENOMEM;
	for (uint64_t i = 0; i < len; i++)
		buf[i] = s->data ? s->data[off + i] : gen_byte(s->seed, off + i);
	if (s->corrupt_at >= 0 && (uint64_t)s->corrupt_at >= off &&
	    (uint64_t)s->corrupt_at < off + len)
		buf[(uint64_t)s->corrupt_at - off] ^= 0x5a;
	if (s->fail && s->fail_after < len)
		len = s->fail_after;
	switch (s->how) {
	case DELIVER_WHOLE:
		err = cache_blob_write(b, off, buf, len);
		break;
	case DELIVER_PIECES:
		for (uint64_t p = 0; p < len && !err; p += 1000)
			err =
			    cache_blob_write(b, off + p, buf + p, len - p < 1000 ? len - p : 1000);
		break;
	case DELIVER_REVERSE:
		for (uint64_t end = len; end > 0 && !err;) {
			uint64_t p = end > 777 ? end - 777 : 0;

			err = cache_blob_write(b, off + p, buf + p, end - p);
			end = p;
		}
		break;
	case DELIVER_OVERLAP:
		for (uint64_t p = 0; p < len && !err; p += 3000) {
			uint64_t n = len - p < 5000 ? len - p : 5000;

			err = cache_blob_write(b, off + p, buf + p, n);
		}
		break;
	}
	free(buf);
	return err;
}

static int fill(void *arg, struct cache_blob *b, uint64_t off, uint64_t len)
{
	struct source *s = arg;
	int err;

	__atomic_add_fetch(&s->calls, 1, __ATOMIC_RELAXED);
	for (uint64_t i = off / CHUNK; i < (off + len + CHUNK - 1) / CHUNK && i < 64; i++)
		__atomic_add_fetch(&s->chunk_calls[i], 1, __ATOMIC_RELAXED);
	s->last_off = off;
	s->last_len = len;
	if (s->delay_us)
		usleep(s->delay_us);
	err = deliver(b, s, off, len);
	return err ? err : s->fail;
}

static struct source source_of(const unsigned char *data, unsigned seed)
{
	struct source s;

	memset(&s, 0, sizeof(s));
	s.data = data;
	s.seed = seed;
	s.corrupt_at = -1;
	return s;
}

/* Reads all of @b in pieces of @step bytes; returns a buffer or NULL. */
static unsigned char *read_all(struct cache_blob *b, size_t step, struct source *s, int *err)
{
	uint64_t size = cache_blob_size(b);
	unsigned char *out = malloc(size ? size : 1);

	uint64_t off = 0;
	unsigned char eof[1];

	*err = out ? 0 : -ENOMEM;
	/* Like read(2) callers: until a read returns 0. */
	while (out) {
		ssize_t n =
		    cache_blob_read(b, off < size ? out + off : eof, step, off, s ? fill : NULL, s);

		if (n < 0 || (n == 0 && off != size)) {
			*err = n < 0 ? (int)n : -EIO;
			free(out);
			return NULL;
		}
		if (n == 0)
			break;
		off += (uint64_t)n;
	}
	return out;
}

/*
 * Fill and read back, table-driven.
 */

struct roundtrip_case {
	uint64_t size;
	enum cache_id_kind kind;
	enum deliver how;
	size_t step;
};

static const struct roundtrip_case roundtrips[] = {
    {0, CACHE_ID_SHA256, DELIVER_WHOLE, 4096},
    {1, CACHE_ID_GIT_SHA1, DELIVER_WHOLE, 4096},
    {CHUNK - 1, CACHE_ID_SHA256, DELIVER_PIECES, 5000},
    {CHUNK, CACHE_ID_GIT_SHA1, DELIVER_REVERSE, CHUNK},
    {CHUNK + 1, CACHE_ID_SHA256, DELIVER_OVERLAP, 3 * CHUNK},
    {3 * CHUNK + 7, CACHE_ID_GIT_SHA1, DELIVER_PIECES, 77777},
    {20 * CHUNK + 12345, CACHE_ID_SHA256, DELIVER_REVERSE, 1 * MiB},
    {20 * CHUNK + 12345, CACHE_ID_GIT_SHA1, DELIVER_WHOLE, 100},
};

static void test_roundtrip(void)
{
	for (size_t k = 0; k < sizeof(roundtrips) / sizeof(roundtrips[0]); k++) {
		const struct roundtrip_case *t = &roundtrips[k];
		unsigned char *data = gen((unsigned)k, t->size), *back = NULL;
		char dir[256], id[CACHE_ID_MAX], back_id[CACHE_ID_MAX] = "";
		struct source s = source_of(data, 0);
		struct cache_blob *b;
		struct cache *c;
		int err = 0;

		s.how = t->how;
		new_dir(dir, sizeof(dir));
		cache_id_of_buffer(t->kind, data, t->size, id);
		c = open_cache(dir, 0, 0);
		b = c ? cache_blob_get(c, id, t->size, &err) : NULL;
		if (b)
			back = read_all(b, t->step, &s, &err);
		if (back)
			cache_id_of_buffer(t->kind, back, t->size, back_id);
		tap_ok(back && !memcmp(back, data, t->size) && !strcmp(back_id, id),
		       "case %zu: %llu bytes (%s, delivered %d) read back equal, same id", k,
		       (unsigned long long)t->size, t->kind == CACHE_ID_SHA256 ? "sha256" : "git",
		       (int)t->how);
		tap_ok(b && cache_blob_complete(b) && cache_blob_present(b, 0, t->size),
		       "case %zu: complete and verified after the read", k);
		free(back);
		back = NULL;
		cache_blob_put(b);
		cache_close(c);

		/* Reopened: complete, served without a fill. */
		c = open_cache(dir, 0, 0);
		b = c ? cache_blob_get(c, id, t->size, &err) : NULL;
		if (b)
			back = read_all(b, t->step, NULL, &err);
		tap_ok(b && cache_blob_complete(b) && back && !memcmp(back, data, t->size),
		       "case %zu: complete after reopening, read without fill", k);
		free(back);
		cache_blob_put(b);
		cache_close(c);
		free(data);
	}
}

/*
 * Sparse files.
 */

static void test_sparse(void)
{
	char dir[256], id[CACHE_ID_MAX], path[512];
	struct source s = source_of(NULL, 7);
	struct cache_config cfg = {.lock = CACHE_LOCK_SHARED}; /* 1 MiB chunks */
	unsigned char buf[4096];
	struct cache_blob *b = NULL;
	struct cache *c;
	struct stat st;
	ssize_t n = -1;
	int err = 0;

	new_dir(dir, sizeof(dir));
	cfg.dir = dir;
	cache_id_of_buffer(CACHE_ID_SHA256, "sparse", 6, id);
	c = cache_open(&cfg, &err);
	if (c)
		b = cache_blob_get(c, id, 1 * GiB, &err);
	if (b)
		n = cache_blob_read(b, buf, sizeof(buf), 1 * GiB - sizeof(buf), fill, &s);
	snprintf(path, sizeof(path), "%s/blobs/%.2s/%s", dir, id, id);
	tap_ok(n == (ssize_t)sizeof(buf) && buf[0] == gen_byte(7, 1 * GiB - sizeof(buf)),
	       "read the last 4 KiB of a 1 GiB blob");
	tap_ok(s.calls == 1 && s.last_off == 1 * GiB - 1 * MiB && s.last_len == 1 * MiB,
	       "one fill, of the last 1 MiB chunk only");
	memset(&st, 0, sizeof(st));
	stat(path, &st);
	tap_ok((uint64_t)st.st_size == 1 * GiB && st.st_blocks > 0 &&
		   (uint64_t)st.st_blocks * 512 <= 1 * MiB + 64 * KiB,
	       "the file is 1 GiB long and allocates %llu KiB",
	       (unsigned long long)st.st_blocks / 2);
	tap_ok(b && !cache_blob_present(b, 0, 1) && cache_blob_present(b, 1 * GiB - 1, 1),
	       "only the last chunk is present");
	cache_blob_put(b);
	cache_close(c);
}

/*
 * Single flight.
 */

struct reader {
	struct cache_blob *b;
	struct source *s;
	const unsigned char *data;
	uint64_t off, len;
	ssize_t rc;
	bool equal;
};

static void *reader_main(void *arg)
{
	struct reader *r = arg;
	unsigned char *buf = malloc(r->len);

	r->rc = buf ? cache_blob_read(r->b, buf, r->len, r->off, fill, r->s) : -ENOMEM;
	r->equal = r->rc == (ssize_t)r->len && !memcmp(buf, r->data + r->off, r->len);
	free(buf);
	return NULL;
}

static void test_single_flight(void)
{
	enum { THREADS = 8, CHUNKS = 10 };
	uint64_t size = CHUNKS * CHUNK - 100;
	unsigned char *data = gen(11, size);
	struct source s = source_of(data, 0);
	struct reader r[THREADS];
	pthread_t th[THREADS];
	char dir[256], id[CACHE_ID_MAX];
	struct cache_blob *b = NULL;
	struct cache *c;
	bool all = true, once = true;
	int err = 0;

	new_dir(dir, sizeof(dir));
	cache_id_of_buffer(CACHE_ID_SHA256, data, size, id);
	c = open_cache(dir, 0, 0);
	if (c)
		b = cache_blob_get(c, id, size, &err);
	if (!tap_ok(b != NULL, "get a blob for 8 threads"))
		goto out;
	s.delay_us = 30000;
	s.how = DELIVER_PIECES;
	/* Same range for half of the threads, overlapping ranges for the rest. */
	for (int i = 0; i < THREADS; i++) {
		r[i] = (struct reader){.b = b, .s = &s, .data = data};
		r[i].off = i < THREADS / 2 ? CHUNK / 2 : (uint64_t)(i % 4) * 2 * CHUNK + 10;
		r[i].len = i < THREADS / 2 ? 4 * CHUNK : 3 * CHUNK;
		if (r[i].off + r[i].len > size)
			r[i].len = size - r[i].off;
		pthread_create(&th[i], NULL, reader_main, &r[i]);
	}
	for (int i = 0; i < THREADS; i++) {
		pthread_join(th[i], NULL);
		all = all && r[i].equal;
	}
	/* The ranges read cover chunks 0-9. */
	for (int i = 0; i < CHUNKS; i++)
		once = once && s.chunk_calls[i] == 1;
	tap_ok(all, "8 concurrent readers got the right bytes");
	tap_ok(once, "each chunk was filled exactly once (%d fills)", s.calls);
	tap_ok(cache_blob_present(b, 0, size), "all chunks present");
	cache_blob_put(b);
out:
	cache_close(c);
	free(data);
}

/*
 * Errors of fills.
 */

static void *failing_reader(void *arg)
{
	struct reader *r = arg;
	unsigned char buf[100];

	r->rc = cache_blob_read(r->b, buf, sizeof(buf), r->off, fill, r->s);
	return NULL;
}

static void test_fill_errors(void)
{
	uint64_t size = 4 * CHUNK;
	unsigned char *data = gen(3, size), buf[CHUNK];
	struct source s = source_of(data, 0);
	char dir[256], id[CACHE_ID_MAX];
	struct cache_blob *b = NULL;
	struct reader r[4];
	pthread_t th[4];
	struct cache *c;
	bool all = true;
	ssize_t n;
	int err = 0;

	new_dir(dir, sizeof(dir));
	cache_id_of_buffer(CACHE_ID_GIT_SHA1, data, size, id);
	c = open_cache(dir, 0, 0);
	if (c)
		b = cache_blob_get(c, id, size, &err);
	if (!tap_ok(b != NULL, "get a blob for fill errors"))
		goto out;

	s.fail = -ECONNRESET;
	n = cache_blob_read(b, buf, 100, 0, fill, &s);
	tap_ok(n == -ECONNRESET && !cache_blob_present(b, 0, 1),
	       "a failed fill's errno is the read's; nothing present");
	s.fail = 0;
	n = cache_blob_read(b, buf, 100, 0, fill, &s);
	tap_ok(n == 100 && !memcmp(buf, data, 100), "the next read fills again and succeeds");

	/* Half a chunk delivered, then a reset: the chunk stays missing. */
	s.fail = -ECONNRESET;
	s.fail_after = CHUNK / 2;
	n = cache_blob_read(b, buf, 100, CHUNK, fill, &s);
	tap_ok(n == -ECONNRESET && !cache_blob_present(b, CHUNK, 1),
	       "a chunk delivered in part is not present");
	s.fail = 0;
	n = cache_blob_read(b, buf, CHUNK, CHUNK, fill, &s);
	tap_ok(n == CHUNK && !memcmp(buf, data + CHUNK, CHUNK), "then filled whole by a retry");

	s = source_of(data, 0);
	n = cache_blob_read(b, buf, 100, 2 * CHUNK, NULL, NULL);
	tap_ok(n == -ENODATA, "no fill (offline) and a missing chunk: -ENODATA");

	/* Four threads wait for one failing fill: all get its errno. */
	s.fail = -ETIMEDOUT;
	s.fail_after = 0;
	s.delay_us = 50000;
	s.calls = 0;
	for (int i = 0; i < 4; i++) {
		r[i] = (struct reader){.b = b, .s = &s, .off = 3 * CHUNK + 10 * (uint64_t)i};
		pthread_create(&th[i], NULL, failing_reader, &r[i]);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		all = all && r[i].rc == -ETIMEDOUT;
	}
	tap_ok(all && s.calls >= 1 && s.calls <= 4,
	       "waiters of a failed fill get its errno (%d fills for 4 readers)", s.calls);
	cache_blob_put(b);
out:
	cache_close(c);
	free(data);
}

/* A fill that returns 0 without delivering anything. */
static int lazy_fill(void *arg, struct cache_blob *b, uint64_t off, uint64_t len)
{
	(void)arg;
	(void)b;
	(void)off;
	(void)len;
	return 0;
}

/* A fill that writes past the blob's end. */
static int overflow_fill(void *arg, struct cache_blob *b, uint64_t off, uint64_t len)
{
	int *rc = arg;
	unsigned char buf[16] = {0};

	(void)off;
	(void)len;
	*rc = cache_blob_write(b, cache_blob_size(b) - 8, buf, sizeof(buf));
	return *rc;
}

static void test_bad_fills(void)
{
	char dir[256], id[CACHE_ID_MAX];
	struct cache_blob *b = NULL;
	unsigned char buf[100];
	struct cache *c;
	int err = 0, rc = 0;
	ssize_t n = 0;

	new_dir(dir, sizeof(dir));
	cache_id_of_buffer(CACHE_ID_SHA256, "bad fills", 9, id);
	c = open_cache(dir, 0, 0);
	if (c)
		b = cache_blob_get(c, id, 3 * CHUNK, &err);
	if (b)
		n = cache_blob_read(b, buf, sizeof(buf), 0, lazy_fill, NULL);
	tap_ok(n == -EIO, "a fill that returns 0 without delivering: -EIO");
	if (b)
		n = cache_blob_read(b, buf, sizeof(buf), 0, overflow_fill, &rc);
	tap_ok(rc == -EINVAL && n == -EINVAL, "writing past the blob's end: -EINVAL");
	cache_blob_put(b);
	cache_close(c);
}

/*
 * Verification.
 */

static void test_verify_mismatch(void)
{
	uint64_t size = 6 * CHUNK + 99;
	unsigned char *data = gen(5, size), *back = NULL, buf[100];
	struct source s = source_of(data, 0);
	char dir[256], id[CACHE_ID_MAX], path[512];
	struct cache_blob *b = NULL;
	struct cache_stats st;
	struct cache *c;
	struct stat fst;
	ssize_t n = 0;
	int err = 0;

	new_dir(dir, sizeof(dir));
	cache_id_of_buffer(CACHE_ID_SHA256, data, size, id);
	snprintf(path, sizeof(path), "%s/blobs/%.2s/%s", dir, id, id);
	c = open_cache(dir, 0, 0);
	if (c)
		b = cache_blob_get(c, id, size, &err);
	if (!tap_ok(b != NULL, "get a blob to corrupt"))
		goto out;
	/* The first chunks arrive fine and are served... */
	n = cache_blob_read(b, buf, sizeof(buf), 0, fill, &s);
	tap_ok(n == 100 && !memcmp(buf, data, 100), "chunk 0 served before completion");
	/* ...the rest has one wrong byte: the read that completes it fails. */
	s.corrupt_at = 4 * CHUNK + 1234;
	back = read_all(b, CHUNK, &s, &err);
	tap_ok(!back && err == -EIO, "the read completing a blob that fails verification: -EIO");
	free(back);
	tap_ok(!cache_blob_present(b, 0, 1) && !cache_blob_present(b, 4 * CHUNK, 1) &&
		   !cache_blob_complete(b),
	       "the blob is discarded: nothing present, not complete");
	tap_ok(!stat(path, &fst) && fst.st_blocks == 0, "its file holds no data any more");
	n = cache_blob_read(b, buf, sizeof(buf), 4 * CHUNK + 1200, NULL, NULL);
	tap_ok(n == -ENODATA, "the bad bytes are not served again (offline read: -ENODATA)");
	s.corrupt_at = -1;
	back = read_all(b, 3 * CHUNK, &s, &err);
	tap_ok(back && !memcmp(back, data, size) && cache_blob_complete(b),
	       "a later read fills it again, verified and complete");
	free(back);
	cache_blob_put(b);
	err = cache_stats(c, &st);
	tap_ok(!err && st.complete == 1 && st.bytes == size,
	       "stats: one complete blob of %llu bytes", (unsigned long long)st.bytes);
out:
	cache_close(c);
	free(data);
}

/*
 * Prefetch, presence, import.
 */

static void test_prefetch(void)
{
	uint64_t size = 8 * CHUNK;
	unsigned char *data = gen(9, size), buf[CHUNK];
	struct source s = source_of(data, 0);
	char dir[256], id[CACHE_ID_MAX];
	struct cache_blob *b = NULL;
	struct cache *c;
	int err = 0, rc = -1;
	ssize_t n = 0;

	new_dir(dir, sizeof(dir));
	cache_id_of_buffer(CACHE_ID_SHA256, data, size, id);
	c = open_cache(dir, 0, 0);
	if (c)
		b = cache_blob_get(c, id, size, &err);
	if (b)
		rc = cache_blob_prefetch(b, 2 * CHUNK + 5, 3 * CHUNK, fill, &s);
	tap_ok(rc == 0 && s.calls == 1 && cache_blob_present(b, 2 * CHUNK, 4 * CHUNK) &&
		   !cache_blob_present(b, CHUNK, 1) && !cache_blob_present(b, 6 * CHUNK, 1),
	       "prefetch fills chunks 2-5 in one fill, nothing else");
	if (b)
		n = cache_blob_read(b, buf, CHUNK, 3 * CHUNK, NULL, NULL);
	tap_ok(n == CHUNK && !memcmp(buf, data + 3 * CHUNK, CHUNK),
	       "prefetched chunks are read without a fill");
	tap_ok(b && cache_blob_present(b, 0, 0) && cache_blob_present(b, size, 10),
	       "empty ranges and ranges past the end count as present");
	cache_blob_put(b);
	cache_close(c);
	free(data);
}

static void test_import(void)
{
	uint64_t size = 5 * CHUNK + 3;
	unsigned char *data = gen(21, size), *back = NULL;
	char dir[256], id[CACHE_ID_MAX], wrong[CACHE_ID_MAX], file[512];
	struct cache_blob *b = NULL;
	struct cache *c;
	int fd, rc, err = 0;

	new_dir(dir, sizeof(dir));
	cache_id_of_buffer(CACHE_ID_SHA256, data, size, id);
	cache_id_of_buffer(CACHE_ID_SHA256, "something else", 14, wrong);
	snprintf(file, sizeof(file), "%s/staged", top);
	fd = open(file, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd >= 0 && write(fd, data, size) != (ssize_t)size) {
		close(fd);
		fd = -1;
	}
	c = open_cache(dir, 0, 0);
	if (!tap_ok(c && fd >= 0, "a staged file to import"))
		goto out;
	rc = cache_blob_import(c, wrong, fd);
	b = cache_blob_get(c, wrong, size, &err);
	tap_ok(rc == -EIO && b && !cache_blob_present(b, 0, 1) && !cache_blob_complete(b),
	       "import under the wrong id: -EIO, nothing kept");
	cache_blob_put(b);
	rc = cache_blob_import(c, id, fd);
	b = cache_blob_get(c, id, size, &err);
	if (b)
		back = read_all(b, CHUNK, NULL, &err);
	tap_ok(rc == 0 && b && cache_blob_complete(b) && back && !memcmp(back, data, size),
	       "import under its id: complete, read without fill");
	free(back);
	cache_blob_put(b);
	tap_ok(cache_blob_import(c, id, fd) == 0, "importing a complete blob again is a no-op");
	tap_ok(cache_blob_import(c, "../../etc/passwd", fd) == -EINVAL, "import with a bad id");
out:
	if (fd >= 0)
		close(fd);
	cache_close(c);
	free(data);
}

/*
 * Rot: bytes changed in a blob file behind the cache's back are caught by
 * the chunk CRCs on the first read after reopening, and fetched again.
 */

/* Flips byte @off of blob @id's file under @dir.  Returns 0 or -1. */
static int flip_byte(const char *dir, const char *id, uint64_t off)
{
	char path[512];
	unsigned char x;
	int fd, rc = -1;

	snprintf(path, sizeof(path), "%s/blobs/%.2s/%s", dir, id, id);
	fd = open(path, O_RDWR);
	if (fd < 0)
		return -1;
	if (pread(fd, &x, 1, (off_t)off) == 1) {
		x ^= 0x01;
		if (pwrite(fd, &x, 1, (off_t)off) == 1)
			rc = 0;
	}
	close(fd);
	return rc;
}

static void test_rot(void)
{
	uint64_t size = 6 * CHUNK + 100;
	unsigned char *data = gen(31, size), *back = NULL;
	char dir[256], id[CACHE_ID_MAX], file[512];
	struct source s = source_of(data, 0), s2 = source_of(data, 0);
	struct cache_blob *b = NULL;
	struct cache *c;
	int err = 0, calls, fd;

	new_dir(dir, sizeof(dir));
	cache_id_of_buffer(CACHE_ID_SHA256, data, size, id);
	c = open_cache(dir, 0, 0);
	b = c ? cache_blob_get(c, id, size, &err) : NULL;
	if (b)
		back = read_all(b, 10000, &s, &err);
	tap_ok(back && !memcmp(back, data, size) && cache_blob_complete(b),
	       "rot: a blob filled and verified");
	free(back);
	back = NULL;
	cache_blob_put(b);
	cache_close(c);

	tap_ok(flip_byte(dir, id, 3 * CHUNK + 17) == 0,
	       "rot: a bit flipped in chunk 3 of its file");
	c = open_cache(dir, 0, 0);
	b = c ? cache_blob_get(c, id, size, &err) : NULL;
	if (b)
		back = read_all(b, 10000, &s2, &err);
	tap_ok(back && !memcmp(back, data, size), "rot: the right bytes are read after reopening");
	tap_ok(s2.calls == 1 && s2.chunk_calls[3] == 1 && s2.last_off == 3 * CHUNK &&
		   s2.last_len == CHUNK,
	       "rot: one fill, of chunk 3 alone (%d fills, last %llu+%llu)", s2.calls,
	       (unsigned long long)s2.last_off, (unsigned long long)s2.last_len);
	tap_ok(b && cache_blob_complete(b), "rot: verified again");
	free(back);
	back = NULL;
	calls = s2.calls;
	if (b)
		back = read_all(b, CHUNK, &s2, &err);
	tap_ok(back && !memcmp(back, data, size) && s2.calls == calls,
	       "rot: a second read fetches nothing");
	free(back);
	back = NULL;
	cache_blob_put(b);
	cache_close(c);

	/* The file was mended, and the row still has its CRCs. */
	snprintf(file, sizeof(file), "%s/blobs/%.2s/%s", dir, id, id);
	back = malloc(size);
	fd = open(file, O_RDONLY);
	tap_ok(fd >= 0 && back && pread(fd, back, size, 0) == (ssize_t)size &&
		   !memcmp(back, data, size),
	       "rot: the blob file holds the right bytes again");
	if (fd >= 0)
		close(fd);
	free(back);
	back = NULL;
	c = open_cache(dir, 0, 0);
	b = c ? cache_blob_get(c, id, size, &err) : NULL;
	if (b)
		back = read_all(b, CHUNK, NULL, &err);
	tap_ok(back && !memcmp(back, data, size) && cache_blob_complete(b),
	       "rot: reopened again, read without fill");
	free(back);
	back = NULL;
	cache_blob_put(b);

	/* A row without CRCs (as schema version 4 left it): served unchecked,
	 * without a fill, and not given CRCs from a file that may be rotten. */
	if (!system("command -v sqlite3 >/dev/null 2>&1")) {
		char cmd[700];

		cache_close(c);
		snprintf(cmd, sizeof(cmd), "sqlite3 '%s/hubfs.db' 'UPDATE blobs SET crcs = NULL'",
			 dir);
		tap_ok(system(cmd) == 0, "rot: the row's CRCs removed with the sqlite3 shell");
		c = open_cache(dir, 0, 0);
		b = c ? cache_blob_get(c, id, size, &err) : NULL;
		if (b)
			back = read_all(b, CHUNK, NULL, &err);
		tap_ok(back && !memcmp(back, data, size) && cache_blob_complete(b),
		       "rot: a blob without CRCs reads without fill");
		free(back);
		back = NULL;
		cache_blob_put(b);
	}

	/* Imported blobs have CRCs too. */
	snprintf(file, sizeof(file), "%s/staged-rot", top);
	fd = open(file, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd >= 0 && write(fd, data, size) != (ssize_t)size) {
		close(fd);
		fd = -1;
	}
	data[0] ^= 1; /* another blob: same bytes but the first */
	if (fd >= 0 && pwrite(fd, data, 1, 0) != 1) {
		close(fd);
		fd = -1;
	}
	cache_id_of_buffer(CACHE_ID_SHA256, data, size, id);
	tap_ok(c && fd >= 0 && cache_blob_import(c, id, fd) == 0, "rot: a blob imported");
	if (fd >= 0)
		close(fd);
	cache_close(c);
	flip_byte(dir, id, 5 * CHUNK + 1);
	s2 = source_of(data, 0);
	c = open_cache(dir, 0, 0);
	b = c ? cache_blob_get(c, id, size, &err) : NULL;
	if (b)
		back = read_all(b, 3 * CHUNK, &s2, &err);
	tap_ok(back && !memcmp(back, data, size) && s2.calls == 1 && s2.chunk_calls[5] == 1,
	       "rot: a rotten chunk of an imported blob is fetched again (%d fills)", s2.calls);
	free(back);
	cache_blob_put(b);
	cache_close(c);
	free(data);
}

/*
 * Benchmark (HUBFS_CACHE_BENCH=1).
 */

static int bench_fill(void *arg, struct cache_blob *b, uint64_t off, uint64_t len)
{
	unsigned char *buf = arg;

	for (uint64_t p = 0; p < len; p += MiB) {
		uint64_t n = len - p < MiB ? len - p : MiB;

		for (uint64_t i = 0; i < n; i += 4096)
			memcpy(buf + i, &(uint64_t){off + p + i}, sizeof(uint64_t));
		int err = cache_blob_write(b, off + p, buf, n);

		if (err)
			return err;
	}
	return 0;
}

static void bench(void)
{
	const uint64_t size = 1 * GiB;
	unsigned char *buf = calloc(1, MiB), *content = calloc(1, MiB);
	struct cache_config cfg = {.lock = CACHE_LOCK_SHARED};
	char dir[256], id[CACHE_ID_MAX];
	struct cache_hasher *h;
	struct cache_blob *b = NULL;
	struct cache *c = NULL;
	double t0, t1;
	int err = 0;

	/* The id of the content bench_fill makes. */
	h = cache_hasher_new(CACHE_ID_SHA256, size, &err);
	for (uint64_t off = 0; h && off < size; off += MiB) {
		for (uint64_t i = 0; i < MiB; i += 4096)
			memcpy(content + i, &(uint64_t){off + i}, sizeof(uint64_t));
		cache_hasher_update(h, content, MiB);
	}
	if (h)
		cache_hasher_final(h, id);
	cache_hasher_free(h);
	new_dir(dir, sizeof(dir));
	cfg.dir = dir;
	c = cache_open(&cfg, &err);
	if (c)
		b = cache_blob_get(c, id, size, &err);
	if (!tap_ok(b && buf, "bench: a 1 GiB blob"))
		goto out;
	t0 = now_s();
	for (uint64_t off = 0; off < size && !err; off += 64 * MiB)
		err = cache_blob_prefetch(b, off, 64 * MiB, bench_fill, content);
	t1 = now_s();
	tap_ok(!err && cache_blob_complete(b), "bench: filled and verified");
	tap_diag("fill 1 GiB (pwrite, fdatasync every 32 MiB, sha256 verify): %.0f MB/s",
		 (double)size / 1e6 / (t1 - t0));
	for (size_t rsize = 128 * KiB; rsize <= MiB; rsize *= 8) {
		for (int run = 0; run < 3; run++) {
			t0 = now_s();
			for (uint64_t off = 0; off < size; off += rsize)
				if (cache_blob_read(b, buf, rsize, off, NULL, NULL) !=
				    (ssize_t)rsize)
					err = -EIO;
			t1 = now_s();
			tap_diag("read present 1 GiB, %zu KiB reads, run %d: %.0f MB/s",
				 rsize / 1024, run, (double)size / 1e6 / (t1 - t0));
		}
	}
	tap_ok(!err, "bench: reads succeeded");
	cache_blob_put(b);
out:
	cache_close(c);
	free(buf);
	free(content);
}

/*
 * Content around the page cache.
 */

/* Pages of [@off, @off + @len) of the file at @path in the page cache
 * (@off page-aligned), or -1. */
static long resident_pages(const char *path, uint64_t off, uint64_t len)
{
	long page = sysconf(_SC_PAGESIZE), n = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	unsigned char *vec;
	void *m;

	if (fd < 0 || fstat(fd, &st) || st.st_size == 0) {
		if (fd >= 0)
			close(fd);
		return fd < 0 ? -1 : 0;
	}
	m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	if (m == MAP_FAILED)
		return -1;
	vec = malloc((size_t)(st.st_size + page - 1) / (size_t)page);
	if (!vec || mincore(m, (size_t)st.st_size, vec)) {
		n = -1;
	} else {
		for (uint64_t i = off / (uint64_t)page;
		     i < (off + len + (uint64_t)page - 1) / (uint64_t)page &&
		     i < (uint64_t)(st.st_size + page - 1) / (uint64_t)page;
		     i++)
			n += vec[i] & 1;
	}
	free(vec);
	munmap(m, (size_t)st.st_size);
	return n;
}

/* Writes @len bytes of @data at @off from a page-aligned copy (as fetch.c
 * gathers them), or from one a byte off alignment. */
static int write_copy(struct cache_blob *b, const unsigned char *data, uint64_t off, uint64_t len,
		      bool aligned)
{
	unsigned char *buf = aligned_alloc(4096, (len + 4096) & ~4095ull);
	int err;

	if (!buf)
		return -ENOMEM;
	memcpy(buf + !aligned, data + off, len);
	err = cache_blob_write(b, off, buf + !aligned, len);
	free(buf);
	return err;
}

static int aligned_fill(void *arg, struct cache_blob *b, uint64_t off, uint64_t len)
{
	return write_copy(b, arg, off, len, true);
}

/* Blob content written from aligned buffers goes around the page cache
 * (O_DIRECT): a cold read must not leave a second copy of what the mount's
 * page cache holds.  Bytes written either way read back equal, whatever the
 * reader's alignment; on a file system without O_DIRECT (tmpfs) the same
 * bytes go through the page cache. */
static void direct_case(const char *base, const char *what, enum cache_io io)
{
	const uint64_t size = 16 * CHUNK + 5000;
	unsigned char *data = gen(91, size), *out = aligned_alloc(4096, 2 * CHUNK);
	char dir[512], id[CACHE_ID_MAX], path[700];
	struct cache_blob *b = NULL;
	struct cache *c = NULL;
	bool same = true;
	long pages;
	int err = 0;

	snprintf(dir, sizeof(dir), "%s/direct%u", base, dir_serial++);
	cache_id_of_buffer(CACHE_ID_SHA256, data, size, id);
	snprintf(path, sizeof(path), "%s/blobs/%.2s/%s", dir, id, id);
	struct cache_config cfg = {
	    .dir = dir, .chunk_size = CHUNK, .lock = CACHE_LOCK_SHARED, .io = io,
	};
	unsigned long fs_type = 0;

	c = data && out ? cache_open(&cfg, &err) : NULL;
	b = c ? cache_blob_get(c, id, size, &err) : NULL;
	/* Chunk 1 written from an unaligned buffer, chunk 2 in two pieces
	 * (the second at an unaligned offset), the rest as fetch.c does. */
	if (b)
		err = write_copy(b, data, CHUNK, CHUNK, false);
	if (b && !err)
		err = write_copy(b, data, 2 * CHUNK, 1000, true);
	if (b && !err)
		err = write_copy(b, data, 2 * CHUNK + 1000, CHUNK - 1000, true);
	/* Aligned reads of 2 chunks, then every byte again through a buffer
	 * one byte off alignment, in reads of 3 pages. */
	for (uint64_t off = 0; b && !err && off < size; off += 2 * CHUNK) {
		ssize_t n = cache_blob_read(b, out, 2 * CHUNK, off, aligned_fill, data);
		size_t want = size - off < 2 * CHUNK ? (size_t)(size - off) : 2 * CHUNK;

		if (n < 0)
			err = (int)n;
		same = same && n == (ssize_t)want && !memcmp(out, data + off, want);
	}
	tap_ok(b && !err && same, "%s: aligned reads return the bytes written, aligned or not (%s)",
	       what, strerror(-err));
	tap_ok(b && cache_blob_complete(b), "%s: the blob is complete and verified", what);
	pages = resident_pages(path, 0, CHUNK);
	pages += pages < 0 ? 0 : resident_pages(path, 3 * CHUNK, 13 * CHUNK);
	if (c && cache_direct_io(c, &fs_type)) {
		/* Chunks 1 and 2 and the tail went through the page cache;
		 * chunks 0 and 3-15 were written and read around it. */
		tap_ok(pages == 0, "%s: none of the chunks written aligned is in the page cache "
		       "(%ld pages)", what, pages);
	} else if (io == CACHE_IO_BUFFERED) {
		tap_ok(pages == 14 * CHUNK / 4096, "%s: all of them are (%ld pages)", what, pages);
	} else {
		tap_skip("%s: the cache's file system (type %#lx) gets no O_DIRECT", what, fs_type);
	}
	for (uint64_t off = 0; b && !err && off < size; off += 3 * 4096) {
		ssize_t n = cache_blob_read(b, out + 1, 3 * 4096, off, NULL, NULL);
		size_t want = size - off < 3 * 4096 ? (size_t)(size - off) : 3 * 4096;

		same = same && n == (ssize_t)want && !memcmp(out + 1, data + off, want);
	}
	tap_ok(b && same, "%s: unaligned reads of the same bytes are equal too", what);
	cache_blob_put(b);
	b = c ? cache_blob_get(c, id, size, &err) : NULL;
	out[0] = 0;
	tap_ok(b && cache_blob_read(b, out, 4096, 15 * CHUNK, NULL, NULL) == 4096 &&
	       !memcmp(out, data + 15 * CHUNK, 4096), "%s: read again after the handle was reopened",
	       what);
	cache_blob_put(b);
	cache_close(c);
	free(out);
	free(data);
}

/* read_bytes of /proc/self/io: what this process read from storage (the
 * page cache hits not counted), or -1. */
static long long storage_read_bytes(void)
{
	char line[128];
	long long n = -1;
	FILE *f = fopen("/proc/self/io", "r");

	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "read_bytes: %lld", &n) == 1)
			break;
	if (f)
		fclose(f);
	return n;
}

/* Aligned pieces delivered last to first: no writer can carry the hash. */
static int reverse_fill(void *arg, struct cache_blob *b, uint64_t off, uint64_t len)
{
	for (uint64_t end = off + len; end > off;) {
		uint64_t s = end - off > CHUNK ? end - CHUNK : off;
		int err = write_copy(b, arg, s, end - s, true);

		if (err)
			return err;
		end = s;
	}
	return 0;
}

/* The running hash goes on from the bytes written (in order) or served
 * (cache_blob_read_done): verifying a blob read in order does not read its
 * file a second time, only its last chunk (which the verdict's read takes
 * from the file).  Counted by the storage reads of this process, which
 * O_DIRECT makes visible. */
static void test_hash_from_memory(void)
{
	const uint64_t size = 40 * CHUNK + 4096;
	unsigned char *data = gen(92, size), *out = aligned_alloc(4096, 4 * CHUNK);

	for (int how = 0; how < 2; how++) {
		char dir[512], id[CACHE_ID_MAX];
		struct cache_config cfg = {
		    .dir = dir, .chunk_size = CHUNK, .lock = CACHE_LOCK_SHARED,
		};
		struct cache_blob *b = NULL;
		struct cache *c;
		long long before, after;
		bool same = true;
		uint64_t served = 0;
		int err = 0;

		new_dir(dir, sizeof(dir));
		cache_id_of_buffer(CACHE_ID_SHA256, data, size, id);
		c = data && out ? cache_open(&cfg, &err) : NULL;
		if (c && !cache_direct_io(c, NULL)) {
			tap_skip("hash from memory: no O_DIRECT here, storage reads are not counted");
			cache_close(c);
			continue;
		}
		b = c ? cache_blob_get(c, id, size, &err) : NULL;
		before = storage_read_bytes();
		for (uint64_t off = 0; b && !err && off < size; off += 4 * CHUNK) {
			ssize_t n = cache_blob_read(b, out, 4 * CHUNK, off, how ? reverse_fill : aligned_fill,
						    data);

			if (n < 0) {
				err = (int)n;
				break;
			}
			same = same && !memcmp(out, data + off, (size_t)n);
			served += (uint64_t)n;
			cache_blob_read_done(b, out, (size_t)n, off);
		}
		after = storage_read_bytes();
		tap_ok(b && !err && same && served == size && cache_blob_complete(b),
		       "hash from memory (%s): read in order, right bytes, verified",
		       how ? "filled backwards" : "filled in order");
		/* Without it: the served bytes, then all of them again to hash. */
		tap_ok(before >= 0 && after - before <= (long long)(size + CHUNK),
		       "hash from memory (%s): %lld bytes read from storage for %llu served (at most one "
		       "chunk more)", how ? "filled backwards" : "filled in order", after - before,
		       (unsigned long long)size);
		cache_blob_put(b);
		cache_close(c);
	}
	free(out);
	free(data);
}

static void test_direct(void)
{
	char shm[] = "/dev/shm/hubfs-test-cache-blob-XXXXXX";
	struct statfs sf;

	direct_case(top, "on the test directory's file system", CACHE_IO_AUTO);
	direct_case(top, "--cache-io=buffered", CACHE_IO_BUFFERED);
	if (statfs("/dev/shm", &sf) == 0 && mkdtemp(shm)) {
		direct_case(shm, "on tmpfs", CACHE_IO_AUTO);
		tap_rm_rf(shm);
	} else {
		tap_skip("no /dev/shm: the tmpfs case");
	}
}

int main(void)
{
	if (!mkdtemp(top)) {
		perror("mkdtemp");
		return 1;
	}
	test_roundtrip();
	test_sparse();
	test_single_flight();
	test_fill_errors();
	test_bad_fills();
	test_verify_mismatch();
	test_prefetch();
	test_import();
	test_rot();
	test_direct();
	test_hash_from_memory();
	if (getenv("HUBFS_CACHE_BENCH"))
		bench();
	tap_rm_rf(top);
	return tap_done();
}
