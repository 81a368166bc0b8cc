/* Unit tests: huggingface_hub caches as blob sources (src/blobsrc.c), on real files in a temp dir.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "blobsrc.h"
#include "cache.h"
#include "cache_hash.h"
#include "tap.h"

#define BIG (3u << 20)

static char root[256];

static void mkdirs(const char *rel)
{
	char path[1024], *p;

	snprintf(path, sizeof(path), "%s/%s", root, rel);
	for (p = path + strlen(root) + 1; (p = strchr(p, '/')); p++) {
		*p = '\0';
		mkdir(path, 0755);
		*p = '/';
	}
	mkdir(path, 0755);
}

static void put(const char *rel, const void *data, size_t len)
{
	char path[1024];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", root, rel);
	f = fopen(path, "wb");
	if (f) {
		if (len)
			fwrite(data, 1, len, f);
		fclose(f);
	}
}

/* The whole content behind @fd equals @data? */
static bool fd_holds(int fd, const void *data, size_t len)
{
	char *buf = malloc(len + 1);
	ssize_t n = buf ? pread(fd, buf, len + 1, 0) : -1;
	bool ok = n == (ssize_t)len && !memcmp(buf, data, len);

	free(buf);
	return ok;
}

static bool cancel_always(void *arg)
{
	(void)arg;
	return true;
}

struct racer {
	struct blobsrc *bs;
	const char *id;
	int rc;
};

static void *race(void *arg)
{
	struct racer *r = arg;

	r->rc = blobsrc_open(r->bs, "models--alice--m", r->id, BIG, NULL, NULL);
	if (r->rc >= 0) {
		close(r->rc);
		r->rc = 0;
	}
	return NULL;
}

static void test_folder(void)
{
	char out[BLOBSRC_FOLDER_MAX];
	struct hub_repo m = {HUB_REPO_MODEL, "alice", "tiny-model"};
	struct hub_repo d = {HUB_REPO_DATASET, "org", "data.set"};
	struct hub_repo s = {HUB_REPO_SPACE, "bob", "demo_space"};

	tap_ok(!blobsrc_folder(&m, out) && !strcmp(out, "models--alice--tiny-model"),
	       "model folder");
	tap_ok(!blobsrc_folder(&d, out) && !strcmp(out, "datasets--org--data.set"),
	       "dataset folder");
	tap_ok(!blobsrc_folder(&s, out) && !strcmp(out, "spaces--bob--demo_space"), "space folder");
}

int main(void)
{
	static const char small[] = "{\"architectures\": [\"Tiny\"]}\n";
	char small_id[CACHE_ID_MAX], big_id[CACHE_ID_MAX], other_id[CACHE_ID_MAX], rel[512];
	char missing[300], hubdir[300];
	const char *dirs[2];
	unsigned char *big = malloc(BIG), *other = malloc(BIG);
	struct blobsrc *bs;
	struct stat before, after;
	pthread_t th[8];
	struct racer r[8];
	bool all_ok = true;
	int fd, err = 0;

	snprintf(root, sizeof(root), "/tmp/hubfs-test-blobsrc-XXXXXX");
	if (!big || !other || !mkdtemp(root))
		return 99;
	for (size_t i = 0; i < BIG; i++) {
		big[i] = (unsigned char)(i * 7 + (i >> 12));
		other[i] = (unsigned char)(i * 13 + 1);
	}
	cache_id_of_buffer(CACHE_ID_GIT_SHA1, small, strlen(small), small_id);
	cache_id_of_buffer(CACHE_ID_SHA256, big, BIG, big_id);
	cache_id_of_buffer(CACHE_ID_SHA256, other, BIG, other_id);
	test_folder();

	mkdirs("hub/models--alice--m/blobs");
	mkdirs("hub/models--alice--m/snapshots/0123");
	mkdirs("hub/datasets--bob--d/blobs");
	mkdirs("hub/.locks/models--alice--m");
	snprintf(rel, sizeof(rel), "hub/models--alice--m/blobs/%s", small_id);
	put(rel, small, strlen(small));
	snprintf(rel, sizeof(rel), "hub/models--alice--m/blobs/%s", big_id);
	put(rel, big, BIG);
	/* only in another repo's folder */
	snprintf(rel, sizeof(rel), "hub/datasets--bob--d/blobs/%s", other_id);
	put(rel, other, BIG);

	snprintf(missing, sizeof(missing), "%s/no-such-dir", root);
	snprintf(hubdir, sizeof(hubdir), "%s/hub", root);
	dirs[0] = missing;
	dirs[1] = hubdir;
	bs = blobsrc_new(dirs, 2, NULL, &err);
	tap_ok(bs != NULL, "a missing directory among them is not an error");
	if (!bs)
		return tap_done();

	snprintf(rel, sizeof(rel), "%s/hub/models--alice--m/blobs/%s", root, big_id);
	stat(rel, &before);
	fd = blobsrc_open(bs, "models--alice--m", big_id, BIG, cancel_always, NULL);
	tap_ok(fd == -EINTR, "a check that is cancelled: -EINTR (%d)", fd);
	fd = blobsrc_open(bs, "models--alice--m", big_id, BIG, NULL, NULL);
	tap_ok(fd >= 0 && fd_holds(fd, big, BIG), "an LFS blob (sha256) of the repo's folder");
	if (fd >= 0)
		close(fd);
	fd = blobsrc_open(bs, "models--alice--m", big_id, BIG, cancel_always, NULL);
	tap_ok(fd >= 0, "checked once: opened again without a second check");
	if (fd >= 0) {
		tap_ok(fcntl(fd, F_GETFL) >= 0 && (fcntl(fd, F_GETFL) & O_ACCMODE) == O_RDONLY,
		       "opened read-only");
		close(fd);
	}
	stat(rel, &after);
	tap_ok(before.st_mtim.tv_sec == after.st_mtim.tv_sec &&
		   before.st_mtim.tv_nsec == after.st_mtim.tv_nsec &&
		   before.st_ctim.tv_nsec == after.st_ctim.tv_nsec,
	       "the blob file's times did not change");

	fd = blobsrc_open(bs, "models--alice--m", small_id, strlen(small), NULL, NULL);
	tap_ok(fd >= 0 && fd_holds(fd, small, strlen(small)), "a regular file by its git blob id");
	if (fd >= 0)
		close(fd);
	fd = blobsrc_open(bs, "models--alice--m", small_id, strlen(small) + 1, NULL, NULL);
	tap_ok(fd == -ENOENT, "asked with another size: -ENOENT");

	fd = blobsrc_open(bs, "models--alice--m", other_id, BIG, NULL, NULL);
	tap_ok(fd >= 0 && fd_holds(fd, other, BIG), "found in another repo's blobs/");
	if (fd >= 0)
		close(fd);
	fd = blobsrc_open(bs, NULL, small_id, strlen(small), NULL, NULL);
	tap_ok(fd >= 0, "found without a folder");
	if (fd >= 0)
		close(fd);

	/* a corrupt copy (same size), then the same file repaired */
	{
		char id[CACHE_ID_MAX];
		unsigned char *bad = malloc(BIG);

		if (!bad)
			return 99;

		big[0] ^= 0x55; /* a new blob: big with its first byte changed */
		cache_id_of_buffer(CACHE_ID_SHA256, big, BIG, id);
		memcpy(bad, big, BIG);
		bad[BIG / 2] ^= 0x80;
		snprintf(rel, sizeof(rel), "hub/models--alice--m/blobs/%s", id);
		put(rel, bad, BIG);
		fd = blobsrc_open(bs, "models--alice--m", id, BIG, NULL, NULL);
		tap_ok(fd == -ENOENT, "a copy with a flipped bit: -ENOENT");
		fd = blobsrc_open(bs, "models--alice--m", id, BIG, NULL, NULL);
		tap_ok(fd == -ENOENT, "asked again: still -ENOENT (not checked again)");
		sleep(1); /* a new mtime even on coarse clocks */
		put(rel, big, BIG);
		/* the miss is remembered for BLOBSRC_MISS_TTL seconds: a new set sees it at once */
		blobsrc_free(bs);
		bs = blobsrc_new(dirs + 1, 1, NULL, &err);
		fd = bs ? blobsrc_open(bs, "models--alice--m", id, BIG, NULL, NULL) : -1;
		tap_ok(fd >= 0 && fd_holds(fd, big, BIG), "the file repaired: used");
		if (fd >= 0)
			close(fd);
		/* truncated: the wrong size */
		snprintf(rel, sizeof(rel), "%s/hub/models--alice--m/blobs/%s", root, id);
		if (truncate(rel, BIG - 1) != 0)
			tap_diag("cannot truncate %s", rel);
		fd = bs ? blobsrc_open(bs, "models--alice--m", id, BIG, NULL, NULL) : -1;
		tap_ok(fd == -ENOENT, "the same file truncated since: -ENOENT");
		free(bad);
	}

	/* a FIFO and a directory named like blobs */
	{
		char id[CACHE_ID_MAX];

		cache_id_of_buffer(CACHE_ID_GIT_SHA1, "x", 1, id);
		snprintf(rel, sizeof(rel), "%s/hub/models--alice--m/blobs/%s", root, id);
		mkfifo(rel, 0644);
		fd = bs ? blobsrc_open(bs, "models--alice--m", id, 1, NULL, NULL) : -1;
		tap_ok(fd == -ENOENT, "a FIFO is not a blob");
		cache_id_of_buffer(CACHE_ID_GIT_SHA1, "y", 1, id);
		snprintf(rel, sizeof(rel), "hub/models--alice--m/blobs/%s", id);
		mkdirs(rel);
		fd = bs ? blobsrc_open(bs, "models--alice--m", id, 1, NULL, NULL) : -1;
		tap_ok(fd == -ENOENT, "a directory is not a blob");
	}

	/* many threads, one new blob: all get it */
	for (size_t i = 0; i < BIG; i++)
		big[i] = (unsigned char)(i * 31 + 5);
	cache_id_of_buffer(CACHE_ID_SHA256, big, BIG, big_id);
	snprintf(rel, sizeof(rel), "hub/models--alice--m/blobs/%s", big_id);
	put(rel, big, BIG);
	for (int i = 0; i < 8; i++) {
		r[i] = (struct racer){bs, big_id, -1};
		pthread_create(&th[i], NULL, race, &r[i]);
	}
	for (int i = 0; i < 8; i++) {
		pthread_join(th[i], NULL);
		all_ok = all_ok && r[i].rc == 0;
	}
	tap_ok(all_ok, "8 threads open one unchecked blob: all succeed");

	fd = bs ? blobsrc_open(bs, "models--alice--m", "0000000000000000000000000000000000000000",
			       1, NULL, NULL)
		: -1;
	tap_ok(fd == -ENOENT, "an id nobody holds: -ENOENT");
	blobsrc_free(bs);
	blobsrc_free(NULL);
	tap_ok(true, "blobsrc_free(NULL) is a no-op");

	/* a check kept in the hubfs cache's index: a later set does not hash again */
	{
		struct cache_config cfg = {.lock = CACHE_LOCK_SHARED};
		char cdir[300], id[CACHE_ID_MAX];
		struct cache *c;

		snprintf(cdir, sizeof(cdir), "%s/hubfs-cache", root);
		cfg.dir = cdir;
		c = cache_open(&cfg, &err);
		for (size_t i = 0; i < BIG; i++)
			big[i] = (unsigned char)(i * 17 + 3);
		cache_id_of_buffer(CACHE_ID_SHA256, big, BIG, id);
		snprintf(rel, sizeof(rel), "hub/models--alice--m/blobs/%s", id);
		put(rel, big, BIG);
		/* younger than BLOBSRC_RACY: checked, but not kept */
		bs = blobsrc_new(dirs + 1, 1, c, &err);
		fd = bs ? blobsrc_open(bs, "models--alice--m", id, BIG, NULL, NULL) : -1;
		tap_ok(fd >= 0, "checked with an index");
		if (fd >= 0)
			close(fd);
		blobsrc_free(bs);
		bs = blobsrc_new(dirs + 1, 1, c, &err);
		fd = bs ? blobsrc_open(bs, "models--alice--m", id, BIG, cancel_always, NULL) : -1;
		tap_ok(fd == -EINTR, "a file changed within %d s of its check is checked again",
		       BLOBSRC_RACY);
		sleep(BLOBSRC_RACY + 1);
		fd = bs ? blobsrc_open(bs, "models--alice--m", id, BIG, NULL, NULL) : -1;
		if (fd >= 0)
			close(fd);
		blobsrc_free(bs);
		bs = blobsrc_new(dirs + 1, 1, c, &err);
		fd = bs ? blobsrc_open(bs, "models--alice--m", id, BIG, cancel_always, NULL) : -1;
		tap_ok(fd >= 0 && fd_holds(fd, big, BIG),
		       "an older file checked before: not hashed again");
		if (fd >= 0)
			close(fd);
		blobsrc_free(bs);
		/* the same path, another file: checked again, and found bad */
		sleep(1);
		big[5] ^= 1;
		put(rel, big, BIG);
		bs = blobsrc_new(dirs + 1, 1, c, &err);
		fd = bs ? blobsrc_open(bs, "models--alice--m", id, BIG, NULL, NULL) : -1;
		tap_ok(fd == -ENOENT, "a file changed since its check: checked again, bad");
		blobsrc_free(bs);
		cache_close(c);
	}

	bs = blobsrc_new(NULL, 0, NULL, &err);
	fd = bs ? blobsrc_open(bs, "models--alice--m", small_id, strlen(small), NULL, NULL) : 0;
	tap_ok(bs && fd == -ENOENT, "no directories: -ENOENT");
	blobsrc_free(bs);

	tap_rm_rf(root);
	free(big);
	free(other);
	return tap_done();
}
