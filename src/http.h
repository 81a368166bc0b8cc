/*
 * The HTTP layer: the only part of hubfs that includes curl.h.
 *
 * A client talks to one endpoint (the Hub's origin).  It keeps a pool of easy
 * handles, each with its own live connections, and a share handle for DNS and
 * TLS sessions.  The token goes only to the endpoint's origin: redirects are
 * followed here, hop by hop, and a hop to another origin (a CDN) is made
 * without it.  Every transfer has a connect timeout and a stall timeout; API
 * calls also have a total timeout.  Nothing here logs a token or an
 * Authorization header; URLs are logged without their query string.
 *
 * Thread safety: a client may be used by any number of threads at once.
 */
#ifndef HUBFS_HTTP_H
#define HUBFS_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Initialises libcurl.  Call once, before any thread starts.
 * Returns 0 or -EIO. */
int http_global_init(void);

/* Releases what http_global_init() set up.  Call after every thread ended. */
void http_global_release(void);

/* Returns libcurl's version string (static, borrowed). */
const char *http_lib_version(void);

/* Percent-encodes @in[0..@len) with no safe characters: every byte except
 * A-Z a-z 0-9 - . _ ~ becomes %XX, so "refs/pr/3" gives "refs%2Fpr%2F3".
 * Returns a string the caller frees with free(), or NULL when out of memory. */
char *http_escape(const char *in, size_t len);

/* Percent-encodes a path inside a repo segment by segment, keeping '/':
 * "a b/c#1" gives "a%20b/c%231".  Caller frees; NULL when out of memory. */
char *http_escape_path(const char *path);

/* Decodes %XX sequences of the NUL-terminated @in ('+' stays '+').
 * Returns a string the caller frees with free(), or NULL when out of memory or
 * when the decoded text would contain a NUL byte (sets *@err to -ENOMEM or
 * -EINVAL; @err may be NULL). */
char *http_unescape(const char *in, int *err);

struct http_client_config {
	const char *endpoint;   /* "https://huggingface.co"; a trailing '/' is ignored */
	const char *token;      /* access token, or NULL: copied */
	const char *user_agent; /* NULL for "hubfs/VERSION" */
	long connect_timeout;   /* seconds; 0 for 10 */
	long stall_timeout;     /* the deadline window of a transfer, seconds; 0 for 30: the
				 * connection and the answer's first byte within it, then
				 * 1 KiB/s (or what is left) over every window, or -ETIMEDOUT */
	long api_timeout;       /* seconds for a whole API call; 0 for 60 */
	int max_retries;        /* retries of retryable failures; -1 for 5 */
	double backoff_unit;    /* seconds of the first backoff; 0 for 1 */
};

struct http_client;

/* Creates a client.  Returns NULL with *@err = -EINVAL (bad endpoint) or
 * -ENOMEM.  Free with http_client_free(). */
struct http_client *http_client_new(const struct http_client_config *cfg, int *err);

/* Frees @c and its handles; NULL is a no-op.  No request may be running. */
void http_client_free(struct http_client *c);

/* The endpoint without a trailing '/' (borrowed). */
const char *http_client_endpoint(const struct http_client *c);

/* Retries of retryable failures the client was configured with. */
int http_client_max_retries(const struct http_client *c);

/* True if a token was configured. */
bool http_client_has_token(const struct http_client *c);

/* Receives body bytes of a 2xx answer.  Returns 0, or -errno to abort the
 * transfer (http_perform() then returns that value). */
typedef int (*http_sink_fn)(void *arg, const void *data, size_t len);

/* Polled during transfers and backoff sleeps; true aborts with -EINTR. */
typedef bool (*http_cancel_fn)(void *arg);

struct http_response {
	long status;
	char *body;               /* buffered body, NUL-terminated (also for errors, up to 64 KiB) */
	size_t body_len;
	char *url;                /* the URL of the last hop */
	char *location;           /* absolute target of an unfollowed redirect */
	char *etag;               /* normalised: no W/, no quotes */
	char *etag_raw;           /* as sent (S3 part ETags must be echoed verbatim) */
	char *linked_etag;        /* X-Linked-Etag, normalised */
	char *repo_commit;        /* X-Repo-Commit */
	char *error_code;         /* X-Error-Code */
	char *error_message;      /* X-Error-Message */
	char *link_next;          /* absolute URL of Link rel="next" */
	int64_t linked_size;      /* X-Linked-Size, -1 when absent */
	int64_t content_length;   /* -1 when unknown */
	int64_t total_count;      /* X-Total-Count, -1 when absent */
	bool has_content_range;
	uint64_t range_start, range_end, range_total;
	long retry_after;         /* seconds asked by RateLimit t= or Retry-After, -1 when none */
	bool auth_sent;           /* Authorization went with the last hop */
	double wait_s;            /* last hop: request sent to first byte of the answer */
	double body_s;            /* last hop: first byte to the end of the body */
};

struct http_request {
	const char *method;        /* NULL for "GET" */
	const char *url;           /* absolute, or a path from the endpoint ("/api/...") */
	const char *accept;        /* Accept header or NULL */
	const char *content_type;  /* of @body, or NULL */
	const void *body;          /* request body, borrowed */
	size_t body_len;
	/* Or a body read from a file: @body_fd_len bytes at @body_fd_off of
	 * @body_fd (read with pread; the descriptor is borrowed). */
	int body_fd;               /* -1 or 0 when unused: see has_body_fd */
	bool has_body_fd;
	uint64_t body_fd_off, body_fd_len;
	bool has_range;            /* send Range: bytes=range_start-range_end (inclusive) */
	uint64_t range_start, range_end;
	bool follow;               /* follow redirects (at most 5 hops) */
	bool api;                  /* apply the client's total API timeout */
	size_t max_body;           /* limit of a buffered body; 0 for 16 MiB */
	http_sink_fn sink;         /* with a sink, a 2xx body goes there, not to resp->body */
	void *sink_arg;
	/* Called with the answer's status and headers before the first byte of
	 * its body reaches the sink (only when there is a sink and a 2xx body);
	 * a non-zero return aborts the transfer with that value. */
	int (*on_headers)(void *arg, const struct http_response *resp);
	http_cancel_fn cancel;
	void *cancel_arg;
	/* Or NULL.  Called with the bytes of the request body sent so far in
	 * this hop (each hop and each attempt of http_perform_retry() starts
	 * again from 0), at libcurl's progress ticks: often while bytes move,
	 * and about once a second when they do not.  Called by the thread in
	 * http_perform(), with no lock of this layer held; the transfer waits
	 * for it, so it must return quickly. */
	void (*progress)(void *arg, uint64_t sent);
	void *progress_arg;
};


/* Makes one request (following redirects if asked), without retries.
 * Returns 0 when an answer arrived, whatever its status (see resp->status);
 * -ETIMEDOUT, -ECONNREFUSED, -ECONNRESET, -EHOSTUNREACH, -EIO for transport
 * failures; -EINTR when cancelled; -EMSGSIZE when a buffered body exceeds
 * max_body; or the sink's error.  @resp is always initialised and must be
 * released with http_response_release(). */
int http_perform(struct http_client *c, const struct http_request *req, struct http_response *resp);

/* Like http_perform(), with retries and backoff for what is retryable (see
 * http_retryable()).  Use for requests whose repetition is harmless and whose
 * body is buffered (no sink).  Returns as http_perform(); after the last
 * attempt @resp holds the last answer. */
int http_perform_retry(struct http_client *c, const struct http_request *req,
		       struct http_response *resp);

/* True if the outcome (@rc from http_perform(), and @resp when rc == 0) is
 * worth a retry: a transport failure other than a timeout, or status 408,
 * 429, 500, 502, 503, 504. */
bool http_retryable(int rc, const struct http_response *resp);

/* Sleeps before retry number @attempt (0-based): the answer's retry_after plus
 * one second if given, else an exponential backoff with jitter (1, 2, 4, 8, 8 s
 * times the client's unit).  Returns 0, or -EINTR when @cancel says so. */
int http_backoff(struct http_client *c, int attempt, const struct http_response *resp,
		 http_cancel_fn cancel, void *cancel_arg);

/* Maps a finished answer to an errno, logging the detail: 0 for 2xx; ENOENT
 * for 404 and the Hub's RepoNotFound, RevisionNotFound, EntryNotFound (also on
 * 401 when the Hub hides a repo); EACCES for 401, 403 and GatedRepo; EAGAIN
 * for 429; ERANGE for 416; EIO otherwise.  Returns the negative errno. */
int http_status_errno(const struct http_response *resp);

/* Frees what @resp holds and clears it. */
void http_response_release(struct http_response *resp);

/* True if @url has the same scheme, host and port as the endpoint. */
bool http_same_origin(const struct http_client *c, const char *url);

#endif
