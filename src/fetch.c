/*
 * Fetching blob content.  See fetch.h.
 *
 * Locking: f->lock protects the read-ahead queue, the stop flag and the CDN
 * URL table.  It is never held across a request or a cache call.  A source's
 * reference count is atomic; its fields never change after creation.
 *
 * A fill writes bytes into the cache only after it checked the answer's
 * status and Content-Range against the range it asked for; a server that
 * ignores Range (200 with the whole file) is followed by skipping to the
 * wanted offset.  Bytes past the wanted range are refused.
 *
 * A fill first asks the blob sources for a checked local copy; only what it
 * could not read from there goes over HTTP.
 */
#include "config.h"

#include "fetch.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

/* CDN URLs kept at most; beyond, the table starts over. */
#define FETCH_CDN_MAX 4096
/* Redirect hops followed on the endpoint's origin. */
#define FETCH_HOPS_MAX 5
/* Read-ahead threads, thus range requests in flight at most. */
#define FETCH_THREADS 8
/* "The sink has what it wanted": stops a 200 answer early. */
#define FETCH_DONE 1

struct fetch_cdn {
	char id[CACHE_ID_MAX];
	char *url;
	struct fetch_cdn *next;
};

struct fetch_job {
	struct cache_blob *blob;
	struct fetch_source *src;
	uint64_t off, len;
	struct fetch_job *next;
};

struct fetch {
	struct http_client *http;
	struct cache *cache;
	struct blobsrc *blobsrc;
	bool offline;
	uint64_t piece;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct fetch_job *head, *tail; /* protected by lock */
	bool stop;                     /* protected by lock */
	struct fetch_cdn *cdn;         /* protected by lock */
	size_t n_cdn;                  /* protected by lock */
	pthread_t *threads;
	int n_threads;
	/* The link as range answers see it, moving averages (protected by lock):
	 * the wait from request to first byte, and one answer's bytes/s. */
	double wait_s, rate;
	bool measured;
};

struct fetch_source {
	struct fetch *f;
	char *url;
	char id[CACHE_ID_MAX];
	char folder[BLOBSRC_FOLDER_MAX]; /* the repo in a huggingface_hub cache; "": unknown */
	uint64_t size;
	int refs; /* atomic */
};

struct fetch_source *fetch_source_new(struct fetch *f, const struct hub_repo *repo,
				      const char *resolve_url, const char *blob_id,
				      uint64_t size)
{
	struct fetch_source *s = calloc(1, sizeof(*s));

	if (!s)
		return NULL;
	s->url = strdup(resolve_url);
	if (!s->url || strlen(blob_id) >= sizeof(s->id)) {
		free(s->url);
		free(s);
		return NULL;
	}
	strcpy(s->id, blob_id);
	if (!repo || blobsrc_folder(repo, s->folder))
		s->folder[0] = '\0';
	s->f = f;
	s->size = size;
	s->refs = 1;
	return s;
}

void fetch_source_ref(struct fetch_source *s)
{
	__atomic_add_fetch(&s->refs, 1, __ATOMIC_RELAXED);
}

void fetch_source_unref(struct fetch_source *s)
{
	if (!s || __atomic_sub_fetch(&s->refs, 1, __ATOMIC_ACQ_REL) > 0)
		return;
	free(s->url);
	free(s);
}

/* The CDN URL known for blob @id (caller frees), or NULL. */
static char *fetch_cdn_get(struct fetch *f, const char *id)
{
	char *url = NULL;

	pthread_mutex_lock(&f->lock);
	for (struct fetch_cdn *c = f->cdn; c; c = c->next) {
		if (!strcmp(c->id, id)) {
			url = strdup(c->url);
			break;
		}
	}
	pthread_mutex_unlock(&f->lock);
	return url;
}

static void fetch_cdn_clear_locked(struct fetch *f)
{
	while (f->cdn) {
		struct fetch_cdn *c = f->cdn;

		f->cdn = c->next;
		free(c->url);
		free(c);
	}
	f->n_cdn = 0;
}

/* Records (@url) or forgets (NULL) the CDN URL of blob @id. */
static void fetch_cdn_set(struct fetch *f, const char *id, const char *url)
{
	struct fetch_cdn **pc, *c, *add = NULL;

	if (url) {
		add = calloc(1, sizeof(*add));
		if (!add || !(add->url = strdup(url))) {
			free(add);
			return;
		}
		snprintf(add->id, sizeof(add->id), "%s", id);
	}
	pthread_mutex_lock(&f->lock);
	for (pc = &f->cdn; (c = *pc); pc = &c->next) {
		if (!strcmp(c->id, id)) {
			*pc = c->next;
			free(c->url);
			free(c);
			f->n_cdn--;
			break;
		}
	}
	if (add) {
		if (f->n_cdn >= FETCH_CDN_MAX)
			fetch_cdn_clear_locked(f);
		add->next = f->cdn;
		f->cdn = add;
		f->n_cdn++;
	}
	pthread_mutex_unlock(&f->lock);
}

/* Bytes of an answer gathered before they go to the cache: whole chunks
 * (the chunk size, at most this) are written at once, page-aligned, so the
 * blob file takes one write per chunk instead of one per piece the network
 * delivers (partial pages cost the page cache a zeroing and a read-modify,
 * and every write takes the file's lock that the other fills contend for). */
#define FETCH_GATHER_MAX (1u << 20)

static pthread_key_t fetch_buf_key;
static pthread_once_t fetch_buf_once = PTHREAD_ONCE_INIT;

static void fetch_buf_key_init(void)
{
	pthread_key_create(&fetch_buf_key, free);
}

/* This thread's gathering buffer (FETCH_GATHER_MAX bytes, page-aligned). */
static unsigned char *fetch_gather_buffer(void)
{
	unsigned char *buf;

	pthread_once(&fetch_buf_once, fetch_buf_key_init);
	buf = pthread_getspecific(fetch_buf_key);
	if (!buf) {
		buf = aligned_alloc(4096, FETCH_GATHER_MAX);
		if (buf && pthread_setspecific(fetch_buf_key, buf)) {
			free(buf);
			buf = NULL;
		}
	}
	return buf;
}

/* One ranged transfer into the cache. */
struct fetch_sink {
	struct cache_blob *blob;
	uint64_t pos;   /* next offset of the blob to write */
	uint64_t end;   /* end of the wanted range (exclusive) */
	uint64_t skip;  /* bytes of a whole-file answer to drop first */
	uint64_t size;  /* the blob's size */
	unsigned char *buf; /* gathered bytes, for [pos - n, pos); NULL: none */
	size_t n;
	uint64_t unit;  /* write once this many bytes are gathered (a chunk) */
};

/* Writes what @s gathered to the cache.  Returns 0 or -errno; on an error,
 * s->pos goes back to where the bytes written end. */
static int fetch_sink_flush(struct fetch_sink *s)
{
	int rc;

	if (!s->n)
		return 0;
	rc = cache_blob_write(s->blob, s->pos - s->n, s->buf, s->n);
	if (rc)
		s->pos -= s->n;
	s->n = 0;
	return rc;
}

/* Delivers @len bytes at s->pos: gathered up to the end of their chunk. */
static int fetch_sink_put(struct fetch_sink *s, const char *p, size_t len)
{
	int rc;

	if (!s->buf) {
		rc = cache_blob_write(s->blob, s->pos, p, len);
		if (!rc)
			s->pos += len;
		return rc;
	}
	while (len) {
		/* gathered bytes always start a chunk, or where the fill started */
		uint64_t room = s->unit - (s->pos % s->unit);
		size_t k = len < room ? len : (size_t)room;

		memcpy(s->buf + s->n, p, k);
		s->n += k;
		s->pos += k;
		p += k;
		len -= k;
		if (s->pos % s->unit == 0 || s->pos == s->end) {
			rc = fetch_sink_flush(s);
			if (rc)
				return rc;
		}
	}
	return 0;
}

static int fetch_on_headers(void *arg, const struct http_response *resp)
{
	struct fetch_sink *s = arg;

	if (resp->status == 206) {
		if (!resp->has_content_range || resp->range_start != s->pos ||
		    resp->range_end >= s->end || resp->range_total != s->size) {
			log_msg(LOG_WARNING,
				"blob '%s': the server answered another range than %llu-%llu",
				cache_blob_id(s->blob), (unsigned long long)s->pos,
				(unsigned long long)s->end - 1);
			return -EIO;
		}
		return 0;
	}
	if (resp->status == 200) {
		/* The Range was ignored: the body is the whole file. */
		if (resp->content_length >= 0 && (uint64_t)resp->content_length != s->size) {
			log_msg(LOG_WARNING, "blob '%s': the server sent %lld bytes, not %llu",
				cache_blob_id(s->blob), (long long)resp->content_length,
				(unsigned long long)s->size);
			return -EIO;
		}
		s->skip = s->pos;
		return 0;
	}
	return -EIO;
}

static int fetch_sink_write(void *arg, const void *data, size_t len)
{
	struct fetch_sink *s = arg;
	const char *p = data;
	int rc;

	if (s->skip) {
		size_t n = len < s->skip ? len : (size_t)s->skip;

		s->skip -= n;
		p += n;
		len -= n;
	}
	if (len == 0)
		return 0;
	if (len > s->end - s->pos) {
		/* A whole-file answer: keep what was wanted, stop there. */
		if (s->end - s->pos == 0)
			return FETCH_DONE;
		rc = fetch_sink_put(s, p, (size_t)(s->end - s->pos));
		return rc ? rc : FETCH_DONE;
	}
	return fetch_sink_put(s, p, len);
}

/* Whether a CDN answer means its signed URL is no longer good. */
static bool fetch_cdn_refused(long status)
{
	return status == 400 || status == 401 || status == 403 || status == 404 || status == 410;
}

/* Bodies shorter than this say little of the link's rate. */
#define FETCH_MEASURE_MIN (256u << 10)

/* Folds one range answer of @bytes into the link's averages. */
static void fetch_measure(struct fetch *f, const struct http_response *resp, uint64_t bytes)
{
	double rate = resp->body_s > 0 ? (double)bytes / resp->body_s : 0;

	pthread_mutex_lock(&f->lock);
	if (!f->measured) {
		f->wait_s = resp->wait_s;
		f->measured = true;
	} else {
		f->wait_s += (resp->wait_s - f->wait_s) / 4;
	}
	if (bytes >= FETCH_MEASURE_MIN && rate > 0)
		f->rate = f->rate > 0 ? f->rate + (rate - f->rate) / 4 : rate;
	pthread_mutex_unlock(&f->lock);
}

void fetch_link(struct fetch *f, double *wait_s, double *rate)
{
	pthread_mutex_lock(&f->lock);
	*wait_s = f->measured ? f->wait_s : 0;
	*rate = f->rate;
	pthread_mutex_unlock(&f->lock);
}

/* Reads what @s still wants from a huggingface_hub cache's checked copy.
 * Returns 0 when it delivered all of it, -ENOENT when no cache holds a good
 * copy, -EIO when the copy could not be read to the end (the rest is the
 * Hub's), or the errno of the cache's write, -EINTR, -ENOMEM. */
static int fetch_fill_local(struct fetch *f, struct fetch_source *src, struct fetch_call *call,
			    struct fetch_sink *s)
{
	unsigned char *buf = s->buf, *own = NULL;
	int fd, rc = 0;

	fd = blobsrc_open(f->blobsrc, src->folder[0] ? src->folder : NULL, src->id, src->size,
			  call->cancel, call->cancel_arg);
	if (fd < 0)
		return fd;
	if (!buf && !(buf = own = malloc(FETCH_GATHER_MAX))) {
		close(fd);
		return -ENOMEM;
	}
	while (s->pos < s->end) {
		size_t want = s->end - s->pos < FETCH_GATHER_MAX ? (size_t)(s->end - s->pos) :
								    FETCH_GATHER_MAX;
		ssize_t n = pread(fd, buf, want, (off_t)s->pos);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			log_msg(LOG_WARNING,
				"blob '%s': cannot read its huggingface_hub copy at %llu: %s;"
				" reading from the Hub",
				src->id, (unsigned long long)s->pos,
				n < 0 ? strerror(errno) : "the file shrank");
			rc = -EIO;
			break;
		}
		rc = cache_blob_write(s->blob, s->pos, buf, (size_t)n);
		if (rc)
			break;
		s->pos += (uint64_t)n;
	}
	free(own);
	close(fd);
	return rc;
}

int fetch_fill(void *arg, struct cache_blob *b, uint64_t off, uint64_t len)
{
	struct fetch_call *call = arg;
	struct fetch_source *src = call->src;
	struct fetch *f = src->f;
	struct fetch_sink sink = { .blob = b, .pos = off, .end = off + len, .size = src->size,
				   .unit = cache_chunk_size(f->cache) };
	int attempt = 0, max_retries = http_client_max_retries(f->http);
	bool re_resolved = false;
	int rc = 0;

	if (sink.unit <= FETCH_GATHER_MAX)
		sink.buf = fetch_gather_buffer();
	if (f->blobsrc) {
		rc = fetch_fill_local(f, src, call, &sink);
		if (rc == 0)
			return 0;
		if (rc != -ENOENT && rc != -EIO)
			return rc;
		rc = 0; /* the Hub has it */
	}
	if (f->offline)
		return -ENODATA;
	while (sink.pos < sink.end) {
		struct http_response resp;
		uint64_t before = sink.pos;
		char *url = fetch_cdn_get(f, src->id);
		bool via_cdn = url != NULL;
		int hops = 0;

		if (!url && !(url = strdup(src->url)))
			return -ENOMEM;
		for (;;) {
			struct http_request req = {
				.url = url,
				.has_range = true,
				.range_start = sink.pos,
				.range_end = sink.end - 1,
				.sink = fetch_sink_write,
				.sink_arg = &sink,
				.on_headers = fetch_on_headers,
				.cancel = call->cancel,
				.cancel_arg = call->cancel_arg,
			};

			sink.skip = 0;
			rc = http_perform(f->http, &req, &resp);
			if (rc || resp.status < 300 || resp.status >= 400 || !resp.location ||
			    ++hops > FETCH_HOPS_MAX)
				break;
			free(url);
			url = resp.location;
			resp.location = NULL;
			if (!http_same_origin(f->http, url)) {
				/* The CDN: reuse this URL for later ranges. */
				fetch_cdn_set(f, src->id, url);
				via_cdn = true;
			}
			http_response_release(&resp);
		}
		free(url);
		if (rc == FETCH_DONE)
			rc = 0;
		if (sink.n) {
			/* what a cut transfer gathered is good: keep it */
			int wrc = fetch_sink_flush(&sink);

			if (wrc) {
				http_response_release(&resp);
				return wrc;
			}
		}
		if (sink.pos > before)
			attempt = 0; /* progress: the retry budget starts over */
		if (rc == 0 && resp.status == 206)
			fetch_measure(f, &resp, sink.pos - before);
		if (rc == 0 && (resp.status == 200 || resp.status == 206)) {
			if (sink.pos < sink.end && sink.pos == before) {
				/* an empty answer */
				http_response_release(&resp);
				rc = -EIO;
				break;
			}
			http_response_release(&resp);
			continue;
		}
		if (rc == 0 && via_cdn && fetch_cdn_refused(resp.status) && !re_resolved) {
			/* The signed URL expired or was refused: ask the Hub again. */
			log_msg(LOG_INFO, "blob '%s': the CDN refused its URL (%ld), resolving again",
				src->id, resp.status);
			fetch_cdn_set(f, src->id, NULL);
			re_resolved = true;
			http_response_release(&resp);
			continue;
		}
		/* A full cache disk is not the network's fault: trying again
		 * would only wait on the back-off while the disk stays full.
		 * The cache evicted what it could; the next read may succeed. */
		if (rc == -EINTR || rc == -ENOSPC || rc == -EDQUOT || !http_retryable(rc, &resp) ||
		    attempt >= max_retries) {
			if (rc == 0) {
				rc = http_status_errno(&resp);
				/* The tree says the file exists: any refusal now is an I/O error,
				 * except a lost right to read it. */
				if (rc != -EACCES)
					rc = -EIO;
			} else if (rc != -EINTR && rc != -ENOMEM && rc != -ENOSPC &&
				   rc != -EDQUOT) {
				log_msg(LOG_WARNING, "blob '%s': cannot fetch bytes %llu-%llu: %s", src->id,
					(unsigned long long)sink.pos, (unsigned long long)sink.end - 1,
					strerror(-rc));
				rc = -EIO;
			}
			http_response_release(&resp);
			break;
		}
		rc = http_backoff(f->http, attempt++, rc ? NULL : &resp, call->cancel, call->cancel_arg);
		http_response_release(&resp);
		if (rc)
			break;
	}
	return sink.pos >= sink.end ? 0 : (rc ? rc : -EIO);
}

cache_fill_fn fetch_filler(const struct fetch *f)
{
	return f->offline && !f->blobsrc ? NULL : fetch_fill;
}

static void fetch_job_free(struct fetch_job *j)
{
	cache_blob_put(j->blob);
	fetch_source_unref(j->src);
	free(j);
}

static void *fetch_worker(void *arg)
{
	struct fetch *f = arg;

	for (;;) {
		struct fetch_job *j;
		struct fetch_call call;
		int rc;

		pthread_mutex_lock(&f->lock);
		while (!f->stop && !f->head)
			pthread_cond_wait(&f->cond, &f->lock);
		if (f->stop) {
			pthread_mutex_unlock(&f->lock);
			return NULL;
		}
		j = f->head;
		f->head = j->next;
		if (!f->head)
			f->tail = NULL;
		pthread_mutex_unlock(&f->lock);

		call = (struct fetch_call){ .src = j->src };
		rc = cache_blob_prefetch(j->blob, j->off, j->len, fetch_fill, &call);
		if (rc && rc != -EINTR)
			log_msg(LOG_DEBUG, "read-ahead of '%s' at %llu: %s", j->src->id,
				(unsigned long long)j->off, strerror(-rc));
		fetch_job_free(j);
	}
}

void fetch_readahead(struct fetch *f, struct cache_blob *b, struct fetch_source *src,
		     uint64_t off, uint64_t len, uint64_t piece)
{
	uint64_t chunk = cache_chunk_size(f->cache), size = cache_blob_size(b);
	uint64_t end = off + len;

	if (end > size)
		end = size;
	off -= off % chunk;
	while (off < end) {
		uint64_t n = piece ? piece : f->piece;
		struct fetch_job *j;
		int err;

		if (n > end - off)
			n = end - off;
		if (cache_blob_present(b, off, n)) {
			off += n;
			continue;
		}
		j = calloc(1, sizeof(*j));
		if (!j)
			return;
		j->blob = cache_blob_get(f->cache, cache_blob_id(b), size, &err);
		if (!j->blob) {
			free(j);
			return;
		}
		fetch_source_ref(src);
		j->src = src;
		j->off = off;
		j->len = n;
		pthread_mutex_lock(&f->lock);
		if (f->stop) {
			pthread_mutex_unlock(&f->lock);
			fetch_job_free(j);
			return;
		}
		if (f->tail)
			f->tail->next = j;
		else
			f->head = j;
		f->tail = j;
		pthread_cond_signal(&f->cond);
		pthread_mutex_unlock(&f->lock);
		off += n;
	}
}

struct fetch *fetch_new(const struct fetch_config *cfg, int *err)
{
	struct fetch *f = calloc(1, sizeof(*f));
	uint64_t chunk;

	if (!f) {
		*err = -ENOMEM;
		return NULL;
	}
	f->http = cfg->http;
	f->cache = cfg->cache;
	f->blobsrc = cfg->blobsrc;
	f->offline = cfg->offline;
	chunk = cache_chunk_size(cfg->cache);
	f->piece = cfg->piece ? cfg->piece : 8u << 20;
	if (f->piece < chunk)
		f->piece = chunk;
	f->piece -= f->piece % chunk;
	pthread_mutex_init(&f->lock, NULL);
	pthread_cond_init(&f->cond, NULL);
	f->n_threads = cfg->threads > 0 ? cfg->threads : FETCH_THREADS;
	f->threads = calloc((size_t)f->n_threads, sizeof(pthread_t));
	if (!f->threads) {
		*err = -ENOMEM;
		goto fail;
	}
	for (int i = 0; i < f->n_threads; i++) {
		int rc = pthread_create(&f->threads[i], NULL, fetch_worker, f);

		if (rc) {
			*err = -rc;
			f->n_threads = i;
			goto fail;
		}
	}
	return f;
fail:
	fetch_free(f);
	return NULL;
}

void fetch_free(struct fetch *f)
{
	if (!f)
		return;
	pthread_mutex_lock(&f->lock);
	f->stop = true;
	pthread_cond_broadcast(&f->cond);
	pthread_mutex_unlock(&f->lock);
	for (int i = 0; i < f->n_threads; i++)
		pthread_join(f->threads[i], NULL);
	while (f->head) {
		struct fetch_job *j = f->head;

		f->head = j->next;
		fetch_job_free(j);
	}
	fetch_cdn_clear_locked(f);
	free(f->threads);
	pthread_mutex_destroy(&f->lock);
	pthread_cond_destroy(&f->cond);
	free(f);
}
