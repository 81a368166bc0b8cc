/*
 * Settings from the environment.  See options.h.
 *
 * Token discovery follows huggingface_hub: HF_TOKEN, then the token file
 * HF_TOKEN_PATH, whose default is $HF_HOME/token, where HF_HOME defaults to
 * $XDG_CACHE_HOME/huggingface, then ~/.cache/huggingface.  Its cache
 * directory likewise (huggingface_hub's constants.py): HF_HUB_CACHE, whose
 * default is HUGGINGFACE_HUB_CACHE, whose default is $HF_HOME/hub.
 */
#include "config.h"

#include "options.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

/* Longest token file read. */
#define OPTIONS_TOKEN_MAX 4096

int options_parse_size(const char *s, uint64_t *out)
{
	static const char units[] = "KMGT";
	char *end;
	double v;
	const char *u;
	int shift = 0;

	if (!s || !*s || isspace((unsigned char)*s) || *s == '-')
		return -EINVAL;
	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || !(v >= 0 && v < 1.8e19))
		return -EINVAL;
	if (*end) {
		u = strchr(units, toupper((unsigned char)*end));
		if (!u)
			return -EINVAL;
		shift = 10 * (int)(u - units + 1);
		end++;
		if (!strcasecmp(end, "iB"))
			end += 2;
		else if (!strcasecmp(end, "B"))
			end++;
		if (*end)
			return -EINVAL;
	} else if (v != (double)(uint64_t)v) {
		return -EINVAL; /* a fraction of a byte */
	}
	v *= (double)(1ULL << shift);
	if (v >= 18446744073709551615.0)
		return -EINVAL;
	*out = (uint64_t)v;
	return 0;
}

bool options_truthy(const char *s)
{
	return s && (!strcasecmp(s, "1") || !strcasecmp(s, "on") || !strcasecmp(s, "yes") ||
		     !strcasecmp(s, "true"));
}

char *options_endpoint(const char *given)
{
	const char *e = given && *given ? given : getenv("HF_ENDPOINT");
	char *out;
	size_t len;

	if (!e || !*e)
		e = "https://huggingface.co";
	out = strdup(e);
	if (!out)
		return NULL;
	len = strlen(out);
	while (len > 0 && out[len - 1] == '/')
		out[--len] = '\0';
	return out;
}

static const char *options_home(void)
{
	const char *home = getenv("HOME");
	struct passwd *pw;

	if (home && *home)
		return home;
	pw = getpwuid(getuid());
	return pw ? pw->pw_dir : NULL;
}

/* Trims whitespace around @s in place; returns @s. */
static char *options_trim(char *s)
{
	size_t len = strlen(s), start = 0;

	while (len > 0 && isspace((unsigned char)s[len - 1]))
		s[--len] = '\0';
	while (isspace((unsigned char)s[start]))
		start++;
	memmove(s, s + start, len - start + 1);
	return s;
}

/* Reads a token file.  Returns 0 (*out may be NULL if empty), -errno. */
static int options_token_read(const char *path, char **out)
{
	char buf[OPTIONS_TOKEN_MAX + 1];
	ssize_t n;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	*out = NULL;
	if (fd < 0)
		return -errno;
	n = read(fd, buf, OPTIONS_TOKEN_MAX);
	close(fd);
	if (n < 0)
		return -errno;
	buf[n] = '\0';
	/* Remove every CR and LF, then trim, as huggingface_hub does. */
	for (char *r = buf, *w = buf;; r++) {
		if (*r != '\r' && *r != '\n')
			*w++ = *r;
		if (!*r)
			break;
	}
	options_trim(buf);
	n = (ssize_t)strlen(buf);
	if (n > 0)
		*out = strdup(buf);
	explicit_bzero(buf, sizeof(buf));
	return n > 0 && !*out ? -ENOMEM : 0;
}

int options_token(const char *token_file, char **out, const char **source)
{
	const char *env, *home, *src = NULL;
	char path[4096];
	int rc;

	*out = NULL;
	if (token_file) {
		rc = options_token_read(token_file, out);
		src = "--token-file";
		goto done;
	}
	env = getenv("HF_TOKEN");
	if (!env || !*env)
		env = getenv("HUGGING_FACE_HUB_TOKEN");
	if (env && *env) {
		char *t = strdup(env);

		if (!t)
			return -ENOMEM;
		options_trim(t);
		if (*t) {
			*out = t;
			src = "HF_TOKEN";
			rc = 0;
			goto done;
		}
		free(t);
	}
	env = getenv("HF_TOKEN_PATH");
	if (env && *env) {
		snprintf(path, sizeof(path), "%s", env);
		src = "HF_TOKEN_PATH";
	} else if ((env = getenv("HF_HOME")) && *env) {
		snprintf(path, sizeof(path), "%s/token", env);
		src = "$HF_HOME/token";
	} else if ((env = getenv("XDG_CACHE_HOME")) && *env) {
		snprintf(path, sizeof(path), "%s/huggingface/token", env);
		src = "$XDG_CACHE_HOME/huggingface/token";
	} else if ((home = options_home())) {
		snprintf(path, sizeof(path), "%s/.cache/huggingface/token", home);
		src = "~/.cache/huggingface/token";
	} else {
		return 0;
	}
	rc = options_token_read(path, out);
	/* A missing default token file means: no token. */
	if (rc == -ENOENT || rc == -ENOTDIR)
		rc = 0;
done:
	if (source)
		*source = *out ? src : NULL;
	return rc;
}

void options_token_env_scrub(void)
{
	static const char *const names[] = { "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN" };

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		char *v = getenv(names[i]);

		/* The value's bytes, where /proc/PID/environ reads them too. */
		if (v)
			explicit_bzero(v, strlen(v));
		unsetenv(names[i]);
	}
}

void options_token_free(char *token)
{
	if (!token)
		return;
	explicit_bzero(token, strlen(token));
	free(token);
}

char *options_cache_dir(const char *given)
{
	const char *xdg = getenv("XDG_CACHE_HOME"), *home;
	char *out = NULL;

	if (given && *given)
		return strdup(given);
	if (xdg && *xdg) {
		if (asprintf(&out, "%s/hubfs", xdg) < 0)
			return NULL;
		return out;
	}
	home = options_home();
	if (!home)
		return NULL;
	if (asprintf(&out, "%s/.cache/hubfs", home) < 0)
		return NULL;
	return out;
}

/* @path with a leading "~" or "~/" made the home directory.  Caller frees. */
static char *options_expand_home(const char *path)
{
	const char *home;
	char *out;

	if (path[0] != '~' || (path[1] && path[1] != '/'))
		return strdup(path);
	home = options_home();
	if (!home || asprintf(&out, "%s%s", home, path + 1) < 0)
		return NULL;
	return out;
}

char *options_hf_cache_dir(void)
{
	const char *env, *home;
	char *out = NULL, *base;

	if ((env = getenv("HF_HUB_CACHE")) && *env)
		return options_expand_home(env);
	if ((env = getenv("HUGGINGFACE_HUB_CACHE")) && *env)
		return options_expand_home(env);
	if ((env = getenv("HF_HOME")) && *env) {
		base = options_expand_home(env);
		if (!base || asprintf(&out, "%s/hub", base) < 0)
			out = NULL;
		free(base);
		return out;
	}
	if ((env = getenv("XDG_CACHE_HOME")) && *env) {
		base = options_expand_home(env);
		if (!base || asprintf(&out, "%s/huggingface/hub", base) < 0)
			out = NULL;
		free(base);
		return out;
	}
	home = options_home();
	if (!home || asprintf(&out, "%s/.cache/huggingface/hub", home) < 0)
		return NULL;
	return out;
}
