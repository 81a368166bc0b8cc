/*
 * HTTP layer: libcurl set-up and URL escaping.  See http.h.
 *
 * curl_easy_escape() and curl_easy_unescape() accept a NULL handle since
 * libcurl 7.82, which configure requires; they are thread-safe.
 */
#include "config.h"

#include "http.h"

#include <curl/curl.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

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
