/* Unit tests: blob ids (cache/cache_hash.c), checked against git and sha256sum. */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cache_hash.h"
#include "tap.h"

struct vector {
	const char *data;
	enum cache_id_kind kind;
	const char *id; /* from `git hash-object` and `sha256sum` */
};

static const struct vector vectors[] = {
	{ "", CACHE_ID_GIT_SHA1, "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391" },
	{ "hello\n", CACHE_ID_GIT_SHA1, "ce013625030ba8dba906f756967f9e9ca394464a" },
	{ "", CACHE_ID_SHA256, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" },
	{ "hello\n", CACHE_ID_SHA256, "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03" },
};

static void test_vectors(void)
{
	char hex[CACHE_ID_MAX];

	for (size_t i = 0; i < sizeof(vectors) / sizeof(vectors[0]); i++) {
		int rc = cache_id_of_buffer(vectors[i].kind, vectors[i].data, strlen(vectors[i].data), hex);

		tap_ok(rc == 0 && !strcmp(hex, vectors[i].id), "%s of \"%s\" is %.12s...",
		       vectors[i].kind == CACHE_ID_SHA256 ? "sha256" : "git blob id",
		       vectors[i].data[0] ? "hello\\n" : "", vectors[i].id);
	}
}

/* Feeding a big buffer in odd-sized pieces gives the one-shot id. */
static void test_incremental(void)
{
	size_t size = 3 * 1024 * 1024 + 7;
	unsigned char *buf = malloc(size);
	char whole[CACHE_ID_MAX], parts[CACHE_ID_MAX];
	struct cache_hasher *h;
	int err = 0;
	size_t off = 0, step = 1;

	if (!tap_ok(buf != NULL, "allocate a test buffer"))
		return;
	for (size_t i = 0; i < size; i++)
		buf[i] = (unsigned char)(i * 2654435761u >> 13);
	for (int k = 0; k < 2; k++) {
		enum cache_id_kind kind = k ? CACHE_ID_SHA256 : CACHE_ID_GIT_SHA1;

		cache_id_of_buffer(kind, buf, size, whole);
		h = cache_hasher_new(kind, size, &err);
		for (off = 0, step = 1; h && off < size; off += step, step = step * 3 + 1) {
			if (step > size - off)
				step = size - off;
			err = cache_hasher_update(h, buf + off, step);
			if (err)
				break;
		}
		err = h && !err ? cache_hasher_final(h, parts) : -1;
		tap_ok(err == 0 && !strcmp(whole, parts), "incremental %s equals one-shot",
		       k ? "sha256" : "git blob id");
		cache_hasher_free(h);
	}
	free(buf);
}

static void test_size_checks(void)
{
	char hex[CACHE_ID_MAX];
	int err = 0;
	struct cache_hasher *h = cache_hasher_new(CACHE_ID_GIT_SHA1, 4, &err);

	tap_ok(h && cache_hasher_update(h, "abc", 3) == 0, "feed 3 of 4 bytes");
	tap_ok(h && cache_hasher_final(h, hex) == -EIO, "final with bytes missing fails with EIO");
	cache_hasher_free(h);
	h = cache_hasher_new(CACHE_ID_SHA256, 2, &err);
	tap_ok(h && cache_hasher_update(h, "abc", 3) == -EOVERFLOW, "feeding more than announced fails");
	cache_hasher_free(h);
	cache_hasher_free(NULL);
}

static void test_id_valid(void)
{
	enum cache_id_kind kind;

	tap_ok(cache_id_valid("ce013625030ba8dba906f756967f9e9ca394464a", &kind) &&
		       kind == CACHE_ID_GIT_SHA1,
	       "40 hex digits are a git blob id");
	tap_ok(cache_id_valid("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", &kind) &&
		       kind == CACHE_ID_SHA256,
	       "64 hex digits are a sha256");
	tap_ok(!cache_id_valid("CE013625030BA8DBA906F756967F9E9CA394464A", NULL), "upper case refused");
	tap_ok(!cache_id_valid("ce013625030ba8dba906f756967f9e9ca394464", NULL), "39 digits refused");
	tap_ok(!cache_id_valid("../../../../etc/passwd0000000000000000000", NULL), "a path is no id");
	tap_ok(!cache_id_valid("", NULL), "empty refused");
}

int main(void)
{
	test_vectors();
	test_incremental();
	test_size_checks();
	test_id_valid();
	return tap_done();
}
