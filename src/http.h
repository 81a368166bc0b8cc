/*
 * The HTTP layer: the only part of hubfs that includes curl.h.
 *
 * For now it holds library set-up and URL escaping; the handle pool, retries,
 * redirects and range requests join it with the read path.
 */
#ifndef HUBFS_HTTP_H
#define HUBFS_HTTP_H

#include <stddef.h>

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

/* Decodes %XX sequences of the NUL-terminated @in ('+' stays '+').
 * Returns a string the caller frees with free(), or NULL when out of memory or
 * when the decoded text would contain a NUL byte (sets *@err to -ENOMEM or
 * -EINVAL; @err may be NULL). */
char *http_unescape(const char *in, int *err);

#endif
