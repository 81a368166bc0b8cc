/*
 * Blob ids: hashing with OpenSSL's EVP interface.  See cache_hash.h.
 *
 * A hasher belongs to one thread at a time; different hashers are
 * independent.
 */
#include "config.h"

#include "cache_hash.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

struct cache_hasher {
	EVP_MD_CTX *ctx;
	uint64_t size;   /* bytes announced */
	uint64_t fed;    /* bytes fed so far */
};

bool cache_id_valid(const char *id, enum cache_id_kind *kind)
{
	size_t len = strnlen(id, CACHE_ID_MAX);

	if (len != 40 && len != 64)
		return false;
	for (size_t i = 0; i < len; i++)
		if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f')))
			return false;
	if (kind)
		*kind = len == 40 ? CACHE_ID_GIT_SHA1 : CACHE_ID_SHA256;
	return true;
}

struct cache_hasher *cache_hasher_new(enum cache_id_kind kind, uint64_t size, int *err)
{
	struct cache_hasher *h = calloc(1, sizeof(*h));
	const EVP_MD *md = kind == CACHE_ID_SHA256 ? EVP_sha256() : EVP_sha1();

	if (!h) {
		*err = -ENOMEM;
		return NULL;
	}
	h->size = size;
	h->ctx = EVP_MD_CTX_new();
	if (!h->ctx) {
		*err = -ENOMEM;
		goto free_h;
	}
	if (EVP_DigestInit_ex(h->ctx, md, NULL) != 1)
		goto free_ctx;
	if (kind == CACHE_ID_GIT_SHA1) {
		char header[32];
		int n = snprintf(header, sizeof(header), "blob %" PRIu64, size);

		/* The header's NUL is part of what git hashes. */
		if (EVP_DigestUpdate(h->ctx, header, (size_t)n + 1) != 1)
			goto free_ctx;
	}
	return h;

free_ctx:
	*err = -EIO;
	EVP_MD_CTX_free(h->ctx);
free_h:
	free(h);
	return NULL;
}

int cache_hasher_update(struct cache_hasher *h, const void *buf, size_t len)
{
	if (len > h->size - h->fed)
		return -EOVERFLOW;
	if (EVP_DigestUpdate(h->ctx, buf, len) != 1)
		return -EIO;
	h->fed += len;
	return 0;
}

int cache_hasher_final(struct cache_hasher *h, char hex[CACHE_ID_MAX])
{
	static const char digits[] = "0123456789abcdef";
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int len = 0;

	if (h->fed != h->size)
		return -EIO;
	if (EVP_DigestFinal_ex(h->ctx, md, &len) != 1 || 2 * len >= CACHE_ID_MAX)
		return -EIO;
	for (unsigned int i = 0; i < len; i++) {
		hex[2 * i] = digits[md[i] >> 4];
		hex[2 * i + 1] = digits[md[i] & 0xf];
	}
	hex[2 * len] = '\0';
	return 0;
}

void cache_hasher_free(struct cache_hasher *h)
{
	if (!h)
		return;
	EVP_MD_CTX_free(h->ctx);
	free(h);
}

int cache_id_of_buffer(enum cache_id_kind kind, const void *buf, size_t len,
		       char hex[CACHE_ID_MAX])
{
	int err = 0;
	struct cache_hasher *h = cache_hasher_new(kind, len, &err);

	if (!h)
		return err;
	err = cache_hasher_update(h, buf, len);
	if (!err)
		err = cache_hasher_final(h, hex);
	cache_hasher_free(h);
	return err;
}

const char *cache_hash_lib_version(void)
{
	return OpenSSL_version(OPENSSL_VERSION);
}
