/*
 * HTTP layer.  See http.h.
 *
 * Handles: a client keeps idle easy handles on a stack (protected by
 * pool_lock); a request takes one, resets its options (which keeps its live
 * connections) and gives it back.  The share handle holds DNS and TLS session
 * caches; libcurl calls share_lock()/share_unlock() around them.  No lock of
 * this file is held during a transfer.
 *
 * Redirects are never followed by libcurl: this file follows them hop by hop,
 * so that it decides per hop whether the token goes along (only to the
 * endpoint's origin) and so that callers can keep the target of an
 * unfollowed redirect (a signed CDN URL) for later requests.
 *
 * Answer headers are read with curl_easy_header() after the transfer; libcurl
 * bounds their size.  Buffered bodies are bounded by max_body.
 */
#include "config.h"

#include "http.h"

#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

#define HTTP_POOL_MAX 32
#define HTTP_MAX_HOPS 5
#define HTTP_ERROR_BODY_MAX (64 * 1024)
#define HTTP_DEFAULT_BODY_MAX (16 * 1024 * 1024)
/* URLs remembered as late (see http_late_check). */
#define HTTP_LATE_MAX 32

struct http_late {
	char *url;
	struct timespec at;
};

struct http_origin {
	char *scheme;
	char *host;
	long port;
};

struct http_client {
	char *endpoint;
	char *auth_header; /* "Authorization: Bearer ..." or NULL; never logged */
	char *user_agent;
	long connect_timeout, stall_timeout, api_timeout;
	int max_retries;
	double backoff_unit;
	struct http_origin origin;
	CURLSH *share;
	pthread_mutex_t share_locks[CURL_LOCK_DATA_LAST];
	pthread_mutex_t pool_lock;
	CURL *pool[HTTP_POOL_MAX]; /* protected by pool_lock */
	int pool_len;              /* protected by pool_lock */
	pthread_mutex_t late_lock; /* never held with pool_lock */
	struct http_late late[HTTP_LATE_MAX]; /* protected by late_lock */
	int late_next;             /* protected by late_lock */
};

int http_global_init(void)
{
	CURLcode rc = curl_global_init(CURL_GLOBAL_DEFAULT);

	if (rc != CURLE_OK) {
		log_msg(LOG_ERR, "cannot initialise libcurl: %s", curl_easy_strerror(rc));
		return -EIO;
	}
	return 0;
}

void http_global_release(void)
{
	curl_global_cleanup();
}

const char *http_lib_version(void)
{
	return curl_version();
}

/* Copies a curl-allocated string into a malloc'd one, so callers use free(). */
static char *http_dup_curl(char *s, size_t len)
{
	char *out;

	if (!s)
		return NULL;
	out = malloc(len + 1);
	if (out) {
		memcpy(out, s, len);
		out[len] = '\0';
	}
	curl_free(s);
	return out;
}

char *http_escape(const char *in, size_t len)
{
	char *s;

	if (len > INT_MAX)
		return NULL;
	s = curl_easy_escape(NULL, in, (int)len);
	return http_dup_curl(s, s ? strlen(s) : 0);
}

char *http_escape_path(const char *path)
{
	size_t cap = 3 * strlen(path) + 1, len = 0;
	char *out = malloc(cap);
	const char *p = path;

	if (!out)
		return NULL;
	for (;;) {
		size_t n = strcspn(p, "/");
		char *seg = http_escape(p, n);

		if (!seg) {
			free(out);
			return NULL;
		}
		memcpy(out + len, seg, strlen(seg));
		len += strlen(seg);
		free(seg);
		p += n;
		if (*p != '/')
			break;
		out[len++] = '/';
		p++;
	}
	out[len] = '\0';
	return out;
}

char *http_unescape(const char *in, int *err)
{
	int outlen = 0;
	size_t inlen = strlen(in);
	char *s;

	if (err)
		*err = 0;
	if (inlen > INT_MAX) {
		if (err)
			*err = -EINVAL;
		return NULL;
	}
	s = curl_easy_unescape(NULL, in, (int)inlen, &outlen);
	if (!s) {
		if (err)
			*err = -ENOMEM;
		return NULL;
	}
	if (memchr(s, '\0', (size_t)outlen)) {
		curl_free(s);
		if (err)
			*err = -EINVAL;
		return NULL;
	}
	s = http_dup_curl(s, (size_t)outlen);
	if (!s && err)
		*err = -ENOMEM;
	return s;
}

static void http_origin_release(struct http_origin *o)
{
	free(o->scheme);
	free(o->host);
	memset(o, 0, sizeof(*o));
}

/* Parses the scheme, host and port of @url.  Returns 0 or -EINVAL/-ENOMEM. */
static int http_origin_parse(const char *url, struct http_origin *o)
{
	CURLU *u = curl_url();
	char *scheme = NULL, *host = NULL, *port = NULL;
	int rc = -EINVAL;

	memset(o, 0, sizeof(*o));
	if (!u)
		return -ENOMEM;
	if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
	    curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
	    curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
	    curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) != CURLUE_OK)
		goto out;
	if (strcasecmp(scheme, "http") != 0 && strcasecmp(scheme, "https") != 0)
		goto out;
	o->scheme = strdup(scheme);
	o->host = strdup(host);
	o->port = strtol(port, NULL, 10);
	rc = o->scheme && o->host ? 0 : -ENOMEM;
	for (char *h = o->host; h && *h; h++)
		if (*h >= 'A' && *h <= 'Z')
			*h = (char)(*h - 'A' + 'a');
	if (rc)
		http_origin_release(o);
out:
	curl_free(scheme);
	curl_free(host);
	curl_free(port);
	curl_url_cleanup(u);
	return rc;
}

bool http_same_origin(const struct http_client *c, const char *url)
{
	struct http_origin o;
	bool same;

	if (http_origin_parse(url, &o) != 0)
		return false;
	same = !strcasecmp(o.scheme, c->origin.scheme) && !strcmp(o.host, c->origin.host) &&
	       o.port == c->origin.port;
	http_origin_release(&o);
	return same;
}

static void http_share_lock(CURL *h, curl_lock_data data, curl_lock_access access, void *arg)
{
	struct http_client *c = arg;

	(void)h;
	(void)access;
	if (data >= 0 && data < CURL_LOCK_DATA_LAST)
		pthread_mutex_lock(&c->share_locks[data]);
}

static void http_share_unlock(CURL *h, curl_lock_data data, void *arg)
{
	struct http_client *c = arg;

	(void)h;
	if (data >= 0 && data < CURL_LOCK_DATA_LAST)
		pthread_mutex_unlock(&c->share_locks[data]);
}

struct http_client *http_client_new(const struct http_client_config *cfg, int *err)
{
	struct http_client *c = calloc(1, sizeof(*c));
	size_t len;
	int rc;

	if (!c) {
		*err = -ENOMEM;
		return NULL;
	}
	for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
		pthread_mutex_init(&c->share_locks[i], NULL);
	pthread_mutex_init(&c->pool_lock, NULL);
	pthread_mutex_init(&c->late_lock, NULL);
	c->endpoint = strdup(cfg->endpoint ? cfg->endpoint : "");
	if (!c->endpoint) {
		*err = -ENOMEM;
		goto fail;
	}
	len = strlen(c->endpoint);
	while (len > 0 && c->endpoint[len - 1] == '/')
		c->endpoint[--len] = '\0';
	rc = http_origin_parse(c->endpoint, &c->origin);
	if (rc) {
		*err = rc;
		goto fail;
	}
	if (cfg->token && *cfg->token) {
		if (asprintf(&c->auth_header, "Authorization: Bearer %s", cfg->token) < 0) {
			c->auth_header = NULL;
			*err = -ENOMEM;
			goto fail;
		}
	}
	if (cfg->user_agent)
		c->user_agent = strdup(cfg->user_agent);
	else if (asprintf(&c->user_agent, "hubfs/%s; %s", PACKAGE_VERSION, curl_version()) < 0)
		c->user_agent = NULL;
	if (!c->user_agent) {
		*err = -ENOMEM;
		goto fail;
	}
	c->connect_timeout = cfg->connect_timeout > 0 ? cfg->connect_timeout : 10;
	c->stall_timeout = cfg->stall_timeout > 0 ? cfg->stall_timeout : 30;
	c->api_timeout = cfg->api_timeout > 0 ? cfg->api_timeout : 60;
	c->max_retries = cfg->max_retries >= 0 ? cfg->max_retries : 5;
	c->backoff_unit = cfg->backoff_unit > 0 ? cfg->backoff_unit : 1.0;
	c->share = curl_share_init();
	if (!c->share) {
		*err = -ENOMEM;
		goto fail;
	}
	curl_share_setopt(c->share, CURLSHOPT_LOCKFUNC, http_share_lock);
	curl_share_setopt(c->share, CURLSHOPT_UNLOCKFUNC, http_share_unlock);
	curl_share_setopt(c->share, CURLSHOPT_USERDATA, c);
	curl_share_setopt(c->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
	curl_share_setopt(c->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
	return c;

fail:
	http_client_free(c);
	return NULL;
}

void http_client_free(struct http_client *c)
{
	if (!c)
		return;
	for (int i = 0; i < c->pool_len; i++)
		curl_easy_cleanup(c->pool[i]);
	if (c->share)
		curl_share_cleanup(c->share);
	if (c->auth_header) {
		explicit_bzero(c->auth_header, strlen(c->auth_header));
		free(c->auth_header);
	}
	free(c->user_agent);
	free(c->endpoint);
	http_origin_release(&c->origin);
	for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
		pthread_mutex_destroy(&c->share_locks[i]);
	pthread_mutex_destroy(&c->pool_lock);
	for (int i = 0; i < HTTP_LATE_MAX; i++)
		free(c->late[i].url);
	pthread_mutex_destroy(&c->late_lock);
	free(c);
}

const char *http_client_endpoint(const struct http_client *c)
{
	return c->endpoint;
}

int http_client_max_retries(const struct http_client *c)
{
	return c->max_retries;
}

bool http_client_has_token(const struct http_client *c)
{
	return c->auth_header != NULL;
}

static CURL *http_handle_get(struct http_client *c)
{
	CURL *h = NULL;

	pthread_mutex_lock(&c->pool_lock);
	if (c->pool_len > 0)
		h = c->pool[--c->pool_len];
	pthread_mutex_unlock(&c->pool_lock);
	if (h)
		curl_easy_reset(h);
	else
		h = curl_easy_init();
	return h;
}

static void http_handle_put(struct http_client *c, CURL *h)
{
	pthread_mutex_lock(&c->pool_lock);
	if (c->pool_len < HTTP_POOL_MAX) {
		c->pool[c->pool_len++] = h;
		h = NULL;
	}
	pthread_mutex_unlock(&c->pool_lock);
	if (h)
		curl_easy_cleanup(h);
}

/* The state of one transfer, seen by libcurl's callbacks. */
struct http_xfer {
	CURL *h;
	const struct http_request *req;
	struct http_response *resp;
	size_t limit;   /* of the buffered body */
	size_t cap;     /* allocated for resp->body */
	int abort_rc;   /* why a callback stopped the transfer */
	int use_sink;   /* -1 unknown, 0 buffer, 1 sink: decided at the first byte */
	uint64_t sent;  /* bytes of a file body read so far */
	bool headers_done; /* resp's header fields are filled */
	long timeout;   /* the client's stall_timeout, seconds */
	struct timespec window; /* when the current deadline window began */
	uint64_t window_moved;  /* bytes moved when it began */
	uint64_t window_need;   /* bytes it must move before its end */
};

/* The floor rate of a transfer, bytes per second (see http_deadline). */
#define HTTP_FLOOR_RATE 1024

static void http_response_headers(CURL *h, struct http_response *r);

static int http_buffer(struct http_xfer *x, const char *data, size_t len, size_t limit)
{
	struct http_response *r = x->resp;

	if (r->body_len + len > limit) {
		/* An error body is only informative: keep its start. */
		if (r->status >= 300) {
			len = limit > r->body_len ? limit - r->body_len : 0;
		} else {
			x->abort_rc = -EMSGSIZE;
			return -1;
		}
	}
	if (r->body_len + len + 1 > x->cap) {
		size_t cap = x->cap ? x->cap : 4096;
		char *b;

		while (cap < r->body_len + len + 1)
			cap *= 2;
		b = realloc(r->body, cap);
		if (!b) {
			x->abort_rc = -ENOMEM;
			return -1;
		}
		r->body = b;
		x->cap = cap;
	}
	memcpy(r->body + r->body_len, data, len);
	r->body_len += len;
	r->body[r->body_len] = '\0';
	return 0;
}

static size_t http_write_cb(char *data, size_t size, size_t nmemb, void *arg)
{
	struct http_xfer *x = arg;
	size_t len = size * nmemb;

	if (x->use_sink < 0) {
		long status = 0;

		curl_easy_getinfo(x->h, CURLINFO_RESPONSE_CODE, &status);
		x->resp->status = status;
		x->use_sink = x->req->sink && status >= 200 && status < 300;
		if (x->use_sink && x->req->on_headers) {
			int rc;

			http_response_headers(x->h, x->resp);
			x->headers_done = true;
			rc = x->req->on_headers(x->req->sink_arg, x->resp);
			if (rc) {
				x->abort_rc = rc;
				return CURL_WRITEFUNC_ERROR;
			}
		}
	}
	if (x->use_sink) {
		int rc = x->req->sink(x->req->sink_arg, data, len);

		if (rc) {
			x->abort_rc = rc;
			return CURL_WRITEFUNC_ERROR;
		}
		return len;
	}
	if (http_buffer(x, data, len, x->resp->status >= 300 ? HTTP_ERROR_BODY_MAX : x->limit))
		return CURL_WRITEFUNC_ERROR;
	return len;
}

/* Reads the next piece of a file body. */
static size_t http_read_cb(char *buf, size_t size, size_t nmemb, void *arg)
{
	struct http_xfer *x = arg;
	uint64_t left = x->req->body_fd_len - x->sent;
	size_t want = size * nmemb;
	ssize_t n;

	if (want > left)
		want = (size_t)left;
	if (want == 0)
		return 0;
	n = pread(x->req->body_fd, buf, want, (off_t)(x->req->body_fd_off + x->sent));
	if (n <= 0) {
		x->abort_rc = n < 0 ? -errno : -EIO; /* a file shorter than announced */
		return CURL_READFUNC_ABORT;
	}
	x->sent += (uint64_t)n;
	return (size_t)n;
}

static double http_since(const struct timespec *t)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - t->tv_sec) + (double)(now.tv_nsec - t->tv_nsec) / 1e9;
}

/* Starts a deadline window: within x->timeout seconds, the transfer must
 * move the lesser of the floor rate's worth of bytes and what is left of it
 * (the rest of the body sent, then the first byte of the answer, then the
 * rest of the answer's body when its length is known). */
static void http_window_start(struct http_xfer *x, uint64_t moved, curl_off_t dltotal,
			      curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow)
{
	uint64_t need = (uint64_t)HTTP_FLOOR_RATE * (uint64_t)x->timeout;
	uint64_t left;
	long status = 0;

	curl_easy_getinfo(x->h, CURLINFO_RESPONSE_CODE, &status);
	if (!status)
		left = (ultotal > ulnow ? (uint64_t)(ultotal - ulnow) : 0) + 1;
	else if (dltotal > 0)
		left = dltotal > dlnow ? (uint64_t)(dltotal - dlnow) : 1;
	else
		left = need;
	clock_gettime(CLOCK_MONOTONIC, &x->window);
	x->window_moved = moved;
	x->window_need = left < need ? left : need;
}

/*
 * The deadline of a transfer: from its start, the connection and the first
 * byte of the answer (after the request body, if any) within x->timeout
 * seconds; after that, at least HTTP_FLOOR_RATE bytes per second over every
 * window of x->timeout seconds (less when less is left).  A window that is
 * met starts the next one at once.  Returns true when the transfer is late.
 */
static bool http_deadline(struct http_xfer *x, curl_off_t dltotal, curl_off_t dlnow,
			  curl_off_t ultotal, curl_off_t ulnow)
{
	long status = 0;
	uint64_t moved;

	curl_easy_getinfo(x->h, CURLINFO_RESPONSE_CODE, &status);
	moved = (uint64_t)(dlnow > 0 ? dlnow : 0) + (uint64_t)(ulnow > 0 ? ulnow : 0) +
		(status ? 1 : 0);
	if (moved - x->window_moved >= x->window_need) {
		http_window_start(x, moved, dltotal, dlnow, ultotal, ulnow);
		return false;
	}
	return http_since(&x->window) >= (double)x->timeout;
}

/* libcurl's progress tick: asks the request's cancel function, checks the
 * transfer's deadline, and reports
 * the bytes of the body sent so far to its progress function. */
static int http_progress_cb(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
			    curl_off_t ulnow)
{
	struct http_xfer *x = arg;

	if (x->req->cancel && x->req->cancel(x->req->cancel_arg)) {
		x->abort_rc = -EINTR;
		return 1;
	}
	if (http_deadline(x, dltotal, dlnow, ultotal, ulnow)) {
		x->abort_rc = -ETIMEDOUT;
		return 1;
	}
	if (x->req->progress && ulnow >= 0)
		x->req->progress(x->req->progress_arg, (uint64_t)ulnow);
	return 0;
}

static char *http_header_dup(CURL *h, const char *name)
{
	struct curl_header *hdr;

	if (curl_easy_header(h, name, 0, CURLH_HEADER, -1, &hdr) != CURLHE_OK)
		return NULL;
	return strdup(hdr->value);
}

/* Strips W/ and quotes from an ETag value, in place. */
static void http_etag_normalise(char *etag)
{
	char *p = etag;
	size_t len;

	if (!etag)
		return;
	if (!strncmp(p, "W/", 2))
		p += 2;
	len = strlen(p);
	if (len >= 2 && p[0] == '"' && p[len - 1] == '"') {
		p++;
		len -= 2;
	}
	memmove(etag, p, len);
	etag[len] = '\0';
}

/* Finds the URL of rel="next" in a Link header value. */
static char *http_link_next(const char *link)
{
	const char *p = link;

	while (p && *p) {
		const char *lt = strchr(p, '<'), *gt, *end;

		if (!lt)
			break;
		gt = strchr(lt, '>');
		if (!gt)
			break;
		end = strchr(gt, ',');
		if (!end)
			end = gt + strlen(gt);
		/* rel="next" or rel=next between '>' and the next link */
		for (const char *q = gt; q + 8 <= end; q++) {
			if (!strncasecmp(q, "rel=\"next\"", 10) || !strncasecmp(q, "rel=next", 8))
				return strndup(lt + 1, (size_t)(gt - lt - 1));
		}
		p = end;
	}
	return NULL;
}

/* Seconds to wait from RateLimit ("api";r=0;t=55) or Retry-After, or -1. */
static long http_retry_after(CURL *h)
{
	struct curl_header *hdr;

	if (curl_easy_header(h, "RateLimit", 0, CURLH_HEADER, -1, &hdr) == CURLHE_OK) {
		const char *r = strstr(hdr->value, ";r="), *t = strstr(hdr->value, ";t=");

		if (r && t && strtol(r + 3, NULL, 10) == 0) {
			long v = strtol(t + 3, NULL, 10);

			if (v >= 0)
				return v;
		}
	}
	if (curl_easy_header(h, "Retry-After", 0, CURLH_HEADER, -1, &hdr) == CURLHE_OK) {
		char *end;
		long v = strtol(hdr->value, &end, 10);

		if (end != hdr->value && v >= 0)
			return v;
	}
	return -1;
}

static void http_response_headers(CURL *h, struct http_response *r)
{
	struct curl_header *hdr;
	curl_off_t cl = -1;
	char *link;

	r->etag = http_header_dup(h, "ETag");
	r->etag_raw = r->etag ? strdup(r->etag) : NULL;
	http_etag_normalise(r->etag);
	r->linked_etag = http_header_dup(h, "X-Linked-Etag");
	http_etag_normalise(r->linked_etag);
	r->repo_commit = http_header_dup(h, "X-Repo-Commit");
	r->error_code = http_header_dup(h, "X-Error-Code");
	r->error_message = http_header_dup(h, "X-Error-Message");
	if (curl_easy_header(h, "X-Linked-Size", 0, CURLH_HEADER, -1, &hdr) == CURLHE_OK)
		r->linked_size = strtoll(hdr->value, NULL, 10);
	if (curl_easy_header(h, "X-Total-Count", 0, CURLH_HEADER, -1, &hdr) == CURLHE_OK)
		r->total_count = strtoll(hdr->value, NULL, 10);
	if (curl_easy_header(h, "Content-Range", 0, CURLH_HEADER, -1, &hdr) == CURLHE_OK) {
		uint64_t a, b, t;

		if (sscanf(hdr->value, "bytes %" SCNu64 "-%" SCNu64 "/%" SCNu64, &a, &b, &t) == 3 &&
		    a <= b && b < t) {
			r->has_content_range = true;
			r->range_start = a;
			r->range_end = b;
			r->range_total = t;
		}
	}
	curl_easy_getinfo(h, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
	r->content_length = cl;
	link = http_header_dup(h, "Link");
	if (link) {
		r->link_next = http_link_next(link);
		free(link);
	}
	r->retry_after = http_retry_after(h);
}

static int http_curl_errno(CURLcode rc)
{
	switch (rc) {
	case CURLE_OPERATION_TIMEDOUT:
		return -ETIMEDOUT;
	case CURLE_COULDNT_CONNECT:
		return -ECONNREFUSED;
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_COULDNT_RESOLVE_PROXY:
		return -EHOSTUNREACH;
	case CURLE_RECV_ERROR:
	case CURLE_SEND_ERROR:
	case CURLE_GOT_NOTHING:
	case CURLE_PARTIAL_FILE:
	case CURLE_HTTP2:
	case CURLE_HTTP2_STREAM:
		return -ECONNRESET;
	case CURLE_OUT_OF_MEMORY:
		return -ENOMEM;
	default:
		return -EIO;
	}
}

/* Logs @url without its query string, which may hold a signature. */
static void http_log_url(int level, const char *what, const char *method, const char *url, long status)
{
	size_t n = strcspn(url, "?");

	if (log_enabled(level))
		log_msg(level, "%s %s %.*s%s -> %ld", what, method, (int)n, url, url[n] ? "?…" : "",
			status);
}

/* One hop: one request to @url, no redirect following. */
/*
 * A URL whose transfer missed its deadline fails at once for the next
 * stall_timeout seconds: the kernel asks again for a range whose read ahead
 * failed, and each ask would otherwise cost another full deadline.  Other
 * URLs (other files) are not affected.
 */
static bool http_late_check(struct http_client *c, const char *url)
{
	bool late = false;

	pthread_mutex_lock(&c->late_lock);
	for (int i = 0; i < HTTP_LATE_MAX && !late; i++)
		late = c->late[i].url && !strcmp(c->late[i].url, url) &&
		       http_since(&c->late[i].at) < (double)c->stall_timeout;
	pthread_mutex_unlock(&c->late_lock);
	return late;
}

static void http_late_add(struct http_client *c, const char *url)
{
	char *dup = strdup(url);
	char *old;

	if (!dup)
		return;
	pthread_mutex_lock(&c->late_lock);
	old = c->late[c->late_next].url;
	c->late[c->late_next].url = dup;
	clock_gettime(CLOCK_MONOTONIC, &c->late[c->late_next].at);
	c->late_next = (c->late_next + 1) % HTTP_LATE_MAX;
	pthread_mutex_unlock(&c->late_lock);
	free(old);
}

static int http_hop(struct http_client *c, CURL *h, const struct http_request *req, const char *method,
		    const char *url, bool with_body, struct http_response *resp)
{
	struct http_xfer x = { .h = h, .req = req, .resp = resp, .use_sink = -1 };
	struct curl_slist *headers = NULL, *tmp;
	char range[64], accept[256], ctype[256];
	char *redirect = NULL;
	CURLcode cc;
	int rc = 0;

	x.limit = req->max_body ? req->max_body : HTTP_DEFAULT_BODY_MAX;
	if (http_late_check(c, url)) {
		log_msg(LOG_WARNING, "%s %.*s: missed its deadline less than %ld s ago, failing at once",
			method, (int)strcspn(url, "?"), url, c->stall_timeout);
		return -ETIMEDOUT;
	}
	x.timeout = c->stall_timeout;
	clock_gettime(CLOCK_MONOTONIC, &x.window);
	x.window_need = 1; /* the connection, then a first byte either way */
	resp->auth_sent = c->auth_header && http_same_origin(c, url);
	if (resp->auth_sent && (tmp = curl_slist_append(headers, c->auth_header)))
		headers = tmp;
	if (req->accept) {
		snprintf(accept, sizeof(accept), "Accept: %s", req->accept);
		if ((tmp = curl_slist_append(headers, accept)))
			headers = tmp;
	}
	if (with_body && req->content_type) {
		snprintf(ctype, sizeof(ctype), "Content-Type: %s", req->content_type);
		if ((tmp = curl_slist_append(headers, ctype)))
			headers = tmp;
	}
	/* libcurl adds "Expect: 100-continue" to large bodies; the Hub does not need it. */
	if ((tmp = curl_slist_append(headers, "Expect:")))
		headers = tmp;

	curl_easy_setopt(h, CURLOPT_URL, url);
	curl_easy_setopt(h, CURLOPT_SHARE, c->share);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(h, CURLOPT_USERAGENT, c->user_agent);
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT,
			 c->connect_timeout < c->stall_timeout ? c->connect_timeout : c->stall_timeout);
	curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
	curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, c->stall_timeout);
	curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
	if (req->api)
		curl_easy_setopt(h, CURLOPT_TIMEOUT, c->api_timeout);
	if (req->has_range) {
		snprintf(range, sizeof(range), "%" PRIu64 "-%" PRIu64, req->range_start, req->range_end);
		curl_easy_setopt(h, CURLOPT_RANGE, range);
	} else if (req->api) {
		/* Compressed JSON; content is always fetched as is. */
		curl_easy_setopt(h, CURLOPT_ACCEPT_ENCODING, "");
	}
	if (!strcmp(method, "HEAD")) {
		curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
	} else if (with_body && req->has_body_fd) {
		curl_easy_setopt(h, CURLOPT_READFUNCTION, http_read_cb);
		curl_easy_setopt(h, CURLOPT_READDATA, &x);
		if (!strcmp(method, "PUT")) {
			curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
			curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, (curl_off_t)req->body_fd_len);
		} else {
			curl_easy_setopt(h, CURLOPT_POST, 1L);
			curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_fd_len);
			if (strcmp(method, "POST"))
				curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
		}
	} else if (with_body) {
		curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
		curl_easy_setopt(h, CURLOPT_POSTFIELDS, req->body ? req->body : "");
		if (strcmp(method, "POST"))
			curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
	} else if (strcmp(method, "GET")) {
		curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
	}
	/* Bulk content arrives in large pieces: fewer, larger cache writes. */
	if (req->sink)
		curl_easy_setopt(h, CURLOPT_BUFFERSIZE, 512L * 1024);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, http_write_cb);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, &x);
	curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
	curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, http_progress_cb);
	curl_easy_setopt(h, CURLOPT_XFERINFODATA, &x);

	cc = curl_easy_perform(h);
	curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &resp->status);
	{
		curl_off_t pre = 0, start = 0, total = 0;

		curl_easy_getinfo(h, CURLINFO_PRETRANSFER_TIME_T, &pre);
		curl_easy_getinfo(h, CURLINFO_STARTTRANSFER_TIME_T, &start);
		curl_easy_getinfo(h, CURLINFO_TOTAL_TIME_T, &total);
		resp->wait_s = start > pre ? (double)(start - pre) / 1e6 : 0;
		resp->body_s = total > start ? (double)(total - start) / 1e6 : 0;
	}
	if (cc != CURLE_OK) {
		rc = x.abort_rc ? x.abort_rc : http_curl_errno(cc);
		if (rc == -ETIMEDOUT)
			http_late_add(c, url);
		if (x.abort_rc == -ETIMEDOUT)
			log_msg(LOG_WARNING, "%s %.*s: less than %" PRIu64 " bytes in %ld s, giving up",
				method, (int)strcspn(url, "?"), url, x.window_need, x.timeout);
		else if (rc == -ETIMEDOUT) /* libcurl's own limits, which may fire first */
			log_msg(LOG_WARNING, "%s %.*s: %s, giving up", method,
				(int)strcspn(url, "?"), url, curl_easy_strerror(cc));
		else if (rc != -EINTR)
			log_msg(LOG_INFO, "%s %.*s: %s", method, (int)strcspn(url, "?"), url,
				curl_easy_strerror(cc));
		goto out;
	}
	if (!x.headers_done)
		http_response_headers(h, resp);
	free(resp->url);
	resp->url = strdup(url);
	free(resp->location);
	resp->location = NULL;
	if (resp->status >= 300 && resp->status < 400 &&
	    curl_easy_getinfo(h, CURLINFO_REDIRECT_URL, &redirect) == CURLE_OK && redirect)
		resp->location = strdup(redirect);
	http_log_url(LOG_DEBUG, "http", method, url, resp->status);
out:
	curl_slist_free_all(headers);
	return rc;
}

static void http_response_init(struct http_response *r)
{
	memset(r, 0, sizeof(*r));
	r->linked_size = -1;
	r->content_length = -1;
	r->total_count = -1;
	r->retry_after = -1;
}

void http_response_release(struct http_response *r)
{
	free(r->body);
	free(r->url);
	free(r->location);
	free(r->etag);
	free(r->etag_raw);
	free(r->linked_etag);
	free(r->repo_commit);
	free(r->error_code);
	free(r->error_message);
	free(r->link_next);
	http_response_init(r);
}

int http_perform(struct http_client *c, const struct http_request *req, struct http_response *resp)
{
	const char *method = req->method ? req->method : "GET";
	bool with_body = req->body != NULL || req->has_body_fd || !strcmp(method, "POST") ||
			 !strcmp(method, "PUT");
	char *url = NULL;
	CURL *h;
	int rc;

	http_response_init(resp);
	if (req->url[0] == '/') {
		if (asprintf(&url, "%s%s", c->endpoint, req->url) < 0)
			return -ENOMEM;
	} else {
		url = strdup(req->url);
		if (!url)
			return -ENOMEM;
	}
	h = http_handle_get(c);
	if (!h) {
		free(url);
		return -ENOMEM;
	}
	for (int hop = 0;; hop++) {
		char *next;

		rc = http_hop(c, h, req, method, url, with_body, resp);
		if (rc || !req->follow || !resp->location || hop == HTTP_MAX_HOPS)
			break;
		/* 301, 302 and 303 turn a POST into a GET; 307 and 308 keep it. */
		if (resp->status != 307 && resp->status != 308 && strcmp(method, "HEAD")) {
			method = "GET";
			with_body = false;
		}
		next = resp->location;
		resp->location = NULL;
		free(url);
		url = next;
		http_response_release(resp);
		curl_easy_reset(h);
	}
	free(url);
	http_handle_put(c, h);
	return rc;
}

bool http_retryable(int rc, const struct http_response *resp)
{
	/* A stalled transfer is not tried again: the caller would wait for
	 * another full timeout, and the user asked for at most one. */
	if (rc == -EINTR || rc == -ENOMEM || rc == -EMSGSIZE || rc == -ETIMEDOUT)
		return false;
	if (rc)
		return true;
	switch (resp->status) {
	case 408:
	case 429:
	case 500:
	case 502:
	case 503:
	case 504:
		return true;
	default:
		return false;
	}
}

static __thread unsigned int http_seed;

int http_backoff(struct http_client *c, int attempt, const struct http_response *resp,
		 http_cancel_fn cancel, void *cancel_arg)
{
	double delay;
	struct timespec slice = { 0, 50 * 1000 * 1000 };
	struct timespec now, until;

	if (resp && resp->retry_after >= 0) {
		delay = (double)resp->retry_after + 1.0;
	} else {
		if (!http_seed)
			http_seed = (unsigned int)time(NULL) ^ (unsigned int)(uintptr_t)&delay;
		delay = c->backoff_unit * (double)(1 << (attempt < 3 ? attempt : 3));
		/* jitter: between half and all of the delay */
		delay *= 0.5 + 0.5 * ((double)rand_r(&http_seed) / RAND_MAX);
	}
	if (delay > 120)
		delay = 120;
	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_sec += (time_t)delay;
	until.tv_nsec += (long)((delay - (double)(long)delay) * 1e9);
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	for (;;) {
		if (cancel && cancel(cancel_arg))
			return -EINTR;
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (now.tv_sec > until.tv_sec ||
		    (now.tv_sec == until.tv_sec && now.tv_nsec >= until.tv_nsec))
			return 0;
		nanosleep(&slice, NULL);
	}
}

int http_perform_retry(struct http_client *c, const struct http_request *req,
		       struct http_response *resp)
{
	int rc;

	for (int attempt = 0;; attempt++) {
		rc = http_perform(c, req, resp);
		if (!http_retryable(rc, resp) || attempt >= c->max_retries)
			return rc;
		/* Nobody listens: one more try, not a minute of backoff. */
		if ((rc == -ECONNREFUSED || rc == -EHOSTUNREACH) && attempt >= 1)
			return rc;
		if (rc)
			log_msg(LOG_INFO, "retrying %s %.*s after: %s", req->method ? req->method : "GET",
				(int)strcspn(req->url, "?"), req->url, strerror(-rc));
		else
			log_msg(LOG_INFO, "retrying %s %.*s after status %ld",
				req->method ? req->method : "GET", (int)strcspn(req->url, "?"), req->url,
				resp->status);
		rc = http_backoff(c, attempt, rc ? NULL : resp, req->cancel, req->cancel_arg);
		if (rc)
			return rc;
		http_response_release(resp);
	}
}

int http_status_errno(const struct http_response *r)
{
	const char *code = r->error_code ? r->error_code : "";
	int err;

	if (r->status >= 200 && r->status < 300)
		return 0;
	if (!strcmp(code, "RepoNotFound") || !strcmp(code, "RevisionNotFound") ||
	    !strcmp(code, "EntryNotFound") || r->status == 404)
		err = ENOENT;
	else if (!strcmp(code, "GatedRepo") || r->status == 401 || r->status == 403)
		err = EACCES;
	else if (r->status == 429)
		err = EAGAIN;
	else if (r->status == 416)
		err = ERANGE;
	else
		err = EIO;
	if (err != ENOENT || log_enabled(LOG_DEBUG))
		log_msg(err == ENOENT ? LOG_DEBUG : LOG_NOTICE, "%.*s: status %ld%s%s%s%s",
			r->url ? (int)strcspn(r->url, "?") : 0, r->url ? r->url : "", r->status,
			*code ? " " : "", code, r->error_message ? ": " : "",
			r->error_message ? r->error_message : "");
	return -err;
}
