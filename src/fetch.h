/*
 * Fetching blob content from the Hub into the cache: the cache's fill
 * callback, and read-ahead.
 *
 * A fill asks for a byte range of a file with an HTTP Range request on its
 * resolve URL.  LFS files answer with a redirect to a CDN; the redirect's
 * target is kept per blob and reused for later ranges (without the token,
 * which never leaves the endpoint's origin) until the CDN refuses it, when
 * the resolve URL is asked again.  Transport errors, 408, 429 and 5xx are
 * retried with backoff; a transfer cut in the middle resumes where it
 * stopped.  Any answer that does not fit the range asked for fails with -EIO:
 * wrong bytes are never written to the cache.
 *
 * A blob that a huggingface_hub cache holds (blobsrc.h) is read from there
 * instead, once its copy there checked good; a bad or missing copy means the
 * Hub, as if there were none.
 *
 * Read-ahead runs on a small pool of threads: a sequential reader's window
 * is fetched ahead in pieces, by parallel range requests.
 *
 * Thread safety: every function may be called from any thread.
 */
#ifndef HUBFS_FETCH_H
#define HUBFS_FETCH_H

#include <stdbool.h>
#include <stdint.h>

#include "blobsrc.h"
#include "cache.h"
#include "http.h"
#include "hub_api.h"

struct fetch_config {
	struct http_client *http; /* borrowed */
	struct cache *cache;      /* borrowed */
	struct blobsrc *blobsrc;  /* borrowed; NULL: the Hub only */
	bool offline;             /* never ask the Hub: blob sources only */
	int threads;              /* read-ahead threads; 0 for 8 */
	uint64_t piece;           /* bytes per read-ahead request; 0 for 8 MiB */
};

struct fetch;

/* Starts the read-ahead threads.  Returns NULL with *@err on failure.
 * Free with fetch_free(), which stops them (queued read-ahead is dropped). */
struct fetch *fetch_new(const struct fetch_config *cfg, int *err);
void fetch_free(struct fetch *f);

/* Where one blob's bytes come from.  Reference-counted. */
struct fetch_source;

/* A source for the file at @resolve_url (absolute, pinned to a commit) of
 * @repo (only read during the call; NULL: unknown) whose content is blob
 * @blob_id of @size bytes.  Returns NULL when out of memory. */
struct fetch_source *fetch_source_new(struct fetch *f, const struct hub_repo *repo,
				      const char *resolve_url, const char *blob_id,
				      uint64_t size);
void fetch_source_ref(struct fetch_source *s);
/* Drops a reference; NULL is a no-op. */
void fetch_source_unref(struct fetch_source *s);

/* The argument of fetch_fill(): a source, and how to tell that the caller
 * gave up (an interrupted read), or NULL. */
struct fetch_call {
	struct fetch_source *src;
	bool (*cancel)(void *arg);
	void *cancel_arg;
};

/* The cache's fill callback (cache_fill_fn); @arg is a struct fetch_call.
 * Offline, what the blob sources do not hold fails with -ENODATA. */
int fetch_fill(void *arg, struct cache_blob *b, uint64_t off, uint64_t len);

/* The fill callback to give the cache: fetch_fill, or NULL when @f is
 * offline without blob sources (nothing can be filled). */
cache_fill_fn fetch_filler(const struct fetch *f);

/* The link as range answers measured it (moving averages): *@wait_s, the
 * seconds from a request to its first byte, and *@rate, one answer's
 * bytes per second; 0 while unknown. */
void fetch_link(struct fetch *f, double *wait_s, double *rate);

/* Queues read-ahead of [@off, @off+@len) of @b from @src, one range request
 * per @piece bytes (a multiple of the chunk size; 0 for the configured
 * piece), skipping pieces already present.  Takes its own references.
 * Returns at once. */
void fetch_readahead(struct fetch *f, struct cache_blob *b, struct fetch_source *src,
		     uint64_t off, uint64_t len, uint64_t piece);

#endif
