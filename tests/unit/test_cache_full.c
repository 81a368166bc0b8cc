/* Unit tests: a cache on a full disk (cache/cache.c, cache/cache_blob.c).
 * The cache sits on a small tmpfs (needs root; skipped otherwise): a read
 * that cannot fit fails with -ENOSPC at once, eviction of unpinned blobs
 * lets the next read succeed, the index counts exactly what the files hold
 * even after writes that failed halfway, and an open recounts files that
 * hold bytes no row counts.  Also times the recount of 1,000 blobs on the
 * ordinary temporary directory. */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "cache.h"
#include "tap.h"

#define KiB 1024ull
#define MiB (1024 * KiB)
#define CHUNK (64 * KiB)
#define FS_SIZE "8m"

static char top[] = "/tmp/hubfs-test-cache-full-XXXXXX";
static char disk[600];
static bool mounted;

static unsigned char gen_byte(unsigned seed, uint64_t off)
{
	uint64_t x = (off + 1) * 0x9e3779b97f4a7c15ull + seed * 0xff51afd7ed558ccdull;

	x ^= x >> 29;
	x *= 0xbf58476d1ce4e5b9ull;
	return (unsigned char)(x >> 32);
}

static void gen_id(unsigned seed, uint64_t size, char id[CACHE_ID_MAX])
{
	unsigned char *p = malloc(size ? size : 1);

	for (uint64_t i = 0; p && i < size; i++)
		p[i] = gen_byte(seed, i);
	cache_id_of_buffer(CACHE_ID_SHA256, p, size, id);
	free(p);
}

/* Delivers content @seed in pieces of 48 KiB, so that writes straddle
 * chunks and a full disk stops one halfway. */
static int fill(void *arg, struct cache_blob *b, uint64_t off, uint64_t len)
{
	unsigned seed = *(const unsigned *)arg;
	static unsigned char buf[48 * KiB];
	int err = 0;

	for (uint64_t p = 0; p < len && !err; p += sizeof(buf)) {
		uint64_t k = len - p < sizeof(buf) ? len - p : sizeof(buf);

		for (uint64_t i = 0; i < k; i++)
			buf[i] = gen_byte(seed, off + p + i);
		err = cache_blob_write(b, off + p, buf, k);
	}
	return err;
}

static ssize_t read_all(struct cache_blob *b, unsigned seed, uint64_t size, bool *same)
{
	unsigned char *buf = malloc(size);
	ssize_t rc = buf ? cache_blob_read(b, buf, size, 0, fill, &seed) : -ENOMEM;

	*same = rc == (ssize_t)size;
	for (uint64_t i = 0; *same && i < size; i++)
		*same = buf[i] == gen_byte(seed, i);
	free(buf);
	return rc;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* What the blob files of @dir occupy (st_blocks). */
static uint64_t du_blobs(const char *dir)
{
	char path[1024];
	uint64_t total = 0;

	for (unsigned i = 0; i < 256; i++) {
		struct dirent *de;
		DIR *d;

		snprintf(path, sizeof(path), "%s/blobs/%02x", dir, i);
		d = opendir(path);
		if (!d)
			continue;
		while ((de = readdir(d))) {
			struct stat st;

			if (de->d_name[0] != '.' && !fstatat(dirfd(d), de->d_name, &st, 0))
				total += (uint64_t)st.st_blocks * 512;
		}
		closedir(d);
	}
	return total;
}

static struct cache *open_at(const char *dir, int *err)
{
	struct cache_config cfg = {
	    .dir = dir, .chunk_size = CHUNK, .lock = CACHE_LOCK_SHARED, .sync_bytes = 256 * KiB};

	return cache_open(&cfg, err);
}

static uint64_t stats_bytes(struct cache *c)
{
	struct cache_stats st;

	return cache_stats(c, &st) ? UINT64_MAX : st.bytes;
}

/* Counted and on disk agree to a page per blob. */
static bool agrees(uint64_t counted, uint64_t on_disk, uint64_t blobs)
{
	uint64_t d = counted > on_disk ? counted - on_disk : on_disk - counted;

	return d <= blobs * 4 * KiB;
}

static void test_floor(void)
{
	tap_ok(cache_space_floor(8 * MiB, CHUNK) == 4 * CHUNK, "the floor: at least 4 chunks");
	tap_ok(cache_space_floor(10000 * MiB, CHUNK) == 200 * MiB, "2%% of the filesystem");
	tap_ok(cache_space_floor(1ull << 42, CHUNK) == 1ull << 30, "at most 1 GiB");
}

static void test_full(void)
{
	char dir[700], ida[CACHE_ID_MAX], idb[CACHE_ID_MAX], idc[CACHE_ID_MAX], idd[CACHE_ID_MAX];
	struct cache_blob *a = NULL, *b = NULL, *c2 = NULL, *d = NULL;
	const uint64_t sa = 2 * MiB + 5, sb = 2 * MiB + 7, sc = 3 * MiB, sd = 16 * MiB;
	struct cache *c;
	double t0, dt;
	bool same;
	ssize_t rc;
	int err = 0;

	snprintf(dir, sizeof(dir), "%s/cache", disk);
	c = open_at(dir, &err);
	if (!tap_ok(c != NULL, "a cache on an %s tmpfs", FS_SIZE))
		return;
	gen_id(1, sa, ida);
	gen_id(2, sb, idb);
	gen_id(3, sc, idc);
	gen_id(4, sd, idd);

	a = cache_blob_get(c, ida, sa, &err);
	rc = a ? read_all(a, 1, sa, &same) : err;
	tap_ok(same && cache_blob_complete(a), "blob a (2 MiB) filled");
	cache_blob_put(a);
	b = cache_blob_get(c, idb, sb, &err);
	rc = b ? read_all(b, 2, sb, &same) : err;
	tap_ok(same && cache_blob_complete(b), "blob b (2 MiB) filled, kept open (pinned)");

	/* 16 MiB cannot fit on 8: fails at once, evicting a (not b). */
	d = cache_blob_get(c, idd, sd, &err);
	t0 = now_s();
	rc = d ? read_all(d, 4, sd, &same) : err;
	dt = now_s() - t0;
	tap_ok(rc == -ENOSPC, "a read of 16 MiB on an 8 MiB disk: -ENOSPC (%zd)", rc);
	tap_ok(dt < 1.0, "promptly (%.3f s)", dt);
	cache_blob_put(d);
	tap_ok(cache_blob_complete(b) && read_all(b, 2, sb, &same) == (ssize_t)sb && same,
	       "the pinned blob b is still there and reads back");
	tap_ok(agrees(stats_bytes(c), du_blobs(dir), 4),
	       "the index counts what the files hold after the failed writes (%llu vs %llu)",
	       (unsigned long long)stats_bytes(c), (unsigned long long)du_blobs(dir));

	/* Now 3 MiB fits once what is unpinned goes. */
	c2 = cache_blob_get(c, idc, sc, &err);
	t0 = now_s();
	rc = c2 ? read_all(c2, 3, sc, &same) : err;
	dt = now_s() - t0;
	tap_ok(rc == (ssize_t)sc && same && cache_blob_complete(c2),
	       "the next read that fits succeeds (%zd, %.3f s)", rc, dt);
	cache_blob_put(c2);
	cache_blob_put(b);
	tap_ok(agrees(stats_bytes(c), du_blobs(dir), 4), "counted %llu, on disk %llu",
	       (unsigned long long)stats_bytes(c), (unsigned long long)du_blobs(dir));
	cache_close(c);

	/* Bytes no row counts (a crash, or presence that could not be
	 * persisted): the next lone open punches them out. */
	{
		char path[1024];
		unsigned char junk[256 * 1024];
		int fd;

		memset(junk, 0x5a, sizeof(junk));
		/* A blob with a row and nothing present; then bytes in its file. */
		c = open_at(dir, &err);
		gen_id(5, 2 * MiB, ida);
		a = c ? cache_blob_get(c, ida, 2 * MiB, &err) : NULL;
		cache_blob_put(a);
		cache_close(c);
		snprintf(path, sizeof(path), "%s/blobs/%.2s/%s", dir, ida, ida);
		fd = open(path, O_WRONLY);
		tap_ok(fd >= 0 && pwrite(fd, junk, sizeof(junk), 0) == (ssize_t)sizeof(junk),
		       "256 KiB written behind the index's back");
		if (fd >= 0)
			close(fd);
	}
	tap_ok(du_blobs(dir) >= 5 * MiB + 256 * KiB, "the files hold %llu bytes",
	       (unsigned long long)du_blobs(dir));
	c = open_at(dir, &err);
	tap_ok(c && agrees(stats_bytes(c), du_blobs(dir), 4),
	       "reopened: recounted, counted %llu, on disk %llu",
	       (unsigned long long)stats_bytes(c), (unsigned long long)du_blobs(dir));
	/* And the disk is usable again after a remount. */
	gen_id(6, 2 * MiB, ida);
	a = c ? cache_blob_get(c, ida, 2 * MiB, &err) : NULL;
	rc = a ? read_all(a, 6, 2 * MiB, &same) : err;
	tap_ok(rc == (ssize_t)(2 * MiB) && same, "after reopening, a new blob fills (%zd)", rc);
	cache_blob_put(a);
	cache_close(c);
}

/* Fills the disk with a file at @path until it is full; returns its fd. */
static int fill_disk(const char *path)
{
	static unsigned char junk[64 * KiB];
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	size_t piece = sizeof(junk);

	memset(junk, 0x77, sizeof(junk));
	while (fd >= 0 && piece >= 4 * KiB) {
		if (write(fd, junk, piece) < 0)
			piece /= 2;
	}
	return fd;
}

/* A write that fails halfway keeps the bytes recorded before it: the chunk
 * completes later with the rest alone, and reads back right. */
static void test_halfway(void)
{
	char dir[700], filler[700], id[CACHE_ID_MAX], path[1024];
	const uint64_t size = 4 * CHUNK;
	unsigned char *all = malloc(size), out[CHUNK];
	struct cache_blob *b = NULL;
	struct cache *c;
	struct stat st;
	int err = 0, fd;
	bool same = true;

	snprintf(dir, sizeof(dir), "%s/halfway", disk);
	snprintf(filler, sizeof(filler), "%s/filler", disk);
	for (uint64_t i = 0; all && i < size; i++)
		all[i] = gen_byte(7, i);
	gen_id(7, size, id);
	c = open_at(dir, &err);
	b = c && all ? cache_blob_get(c, id, size, &err) : NULL;
	if (!tap_ok(b != NULL, "a blob on the tmpfs for a halfway write"))
		goto out;
	tap_ok(cache_blob_write(b, 0, all, 48 * KiB) == 0, "48 KiB of chunk 0 written");
	fd = fill_disk(filler);
	err = cache_blob_write(b, 48 * KiB, all + 48 * KiB, 48 * KiB);
	tap_ok(err == -ENOSPC, "the next 48 KiB (into chunk 1) on a full disk: -ENOSPC (%d)", err);
	snprintf(path, sizeof(path), "%s/blobs/%.2s/%s", dir, id, id);
	if (stat(path, &st))
		memset(&st, 0, sizeof(st));
	tap_ok((uint64_t)st.st_blocks * 512 == 48 * KiB,
	       "the file holds the 48 KiB recorded, nothing of the failed write (%llu)",
	       (unsigned long long)st.st_blocks * 512);
	if (fd >= 0)
		close(fd);
	unlink(filler);
	err = cache_blob_write(b, 48 * KiB, all + 48 * KiB, 16 * KiB);
	tap_ok(!err && cache_blob_present(b, 0, CHUNK),
	       "space is back: the rest of chunk 0 completes it");
	tap_ok(cache_blob_read(b, out, CHUNK, 0, NULL, NULL) == (ssize_t)CHUNK,
	       "chunk 0 reads without a fill");
	for (uint64_t i = 0; i < CHUNK; i++)
		same = same && out[i] == all[i];
	tap_ok(same, "with the bytes written before the failure intact");
out:
	cache_blob_put(b);
	cache_close(c);
	free(all);
}

static void test_recount_cost(void)
{
	char dir[700], id[CACHE_ID_MAX];
	struct cache *c;
	double t0, dt;
	int err = 0, made = 0;

	snprintf(dir, sizeof(dir), "%s/many", top);
	c = open_at(dir, &err);
	for (unsigned i = 0; c && i < 1000; i++) {
		unsigned seed = 100 + i;
		struct cache_blob *b;
		bool same;

		gen_id(seed, 4 * KiB, id);
		b = cache_blob_get(c, id, 4 * KiB, &err);
		made += b && read_all(b, seed, 4 * KiB, &same) == 4 * KiB && same;
		cache_blob_put(b);
	}
	cache_close(c);
	t0 = now_s();
	c = open_at(dir, &err);
	dt = now_s() - t0;
	tap_ok(c && made == 1000 && stats_bytes(c) == 1000 * 4 * KiB,
	       "1,000 blobs recounted at open, all kept (%d made, %llu bytes)", made,
	       c ? (unsigned long long)stats_bytes(c) : 0ull);
	tap_diag("cache_open with the recount of 1,000 blobs: %.1f ms", dt * 1000);
	tap_ok(dt < 2.0, "in %.1f ms", dt * 1000);
	cache_close(c);
}

int main(void)
{
	if (!mkdtemp(top)) {
		perror("mkdtemp");
		return 1;
	}
	test_floor();
	test_recount_cost();
	snprintf(disk, sizeof(disk), "%s/disk", top);
	mkdir(disk, 0700);
	if (geteuid() != 0 || mount("tmpfs", disk, "tmpfs", 0, "size=" FS_SIZE ",mode=0700")) {
		tap_diag("skipping the full-disk tests: cannot mount a tmpfs (%s)",
			 geteuid() ? "not root" : strerror(errno));
	} else {
		mounted = true;
		test_full();
		test_halfway();
		if (umount2(disk, MNT_DETACH))
			tap_diag("cannot unmount %s: %s", disk, strerror(errno));
	}
	tap_rm_rf(top);
	return tap_done();
}
