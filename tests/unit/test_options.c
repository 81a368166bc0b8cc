/* Unit tests: sizes, booleans, endpoint, token discovery, cache dir, huggingface_hub's
 * cache dir (src/options.c). */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "options.h"
#include "tap.h"

struct size_case {
	const char *in;
	int rc;
	uint64_t out;
};

static const struct size_case size_cases[] = {
	{ "0", 0, 0 },
	{ "4096", 0, 4096 },
	{ "1K", 0, 1024 },
	{ "512M", 0, 512ULL << 20 },
	{ "10G", 0, 10ULL << 30 },
	{ "10g", 0, 10ULL << 30 },
	{ "1.5T", 0, 3ULL << 39 },
	{ "2GiB", 0, 2ULL << 30 },
	{ "2GB", 0, 2ULL << 30 },
	{ "", -EINVAL, 0 },
	{ "G", -EINVAL, 0 },
	{ "-1G", -EINVAL, 0 },
	{ "1.5", -EINVAL, 0 },
	{ "10X", -EINVAL, 0 },
	{ "10Gx", -EINVAL, 0 },
	{ " 10G", -EINVAL, 0 },
	{ "99999999999T", -EINVAL, 0 },
	{ "nan", -EINVAL, 0 },
	{ "inf", -EINVAL, 0 },
};

static void test_sizes(void)
{
	for (size_t i = 0; i < sizeof(size_cases) / sizeof(size_cases[0]); i++) {
		uint64_t v = 0;
		int rc = options_parse_size(size_cases[i].in, &v);

		tap_ok(rc == size_cases[i].rc && (rc || v == size_cases[i].out), "size '%s' -> %d %llu",
		       size_cases[i].in, size_cases[i].rc, (unsigned long long)size_cases[i].out);
	}
}

static void test_truthy(void)
{
	static const char *const yes[] = { "1", "ON", "yes", "True" };
	static const char *const no[] = { "0", "off", "no", "", "2", "y" };

	for (size_t i = 0; i < 4; i++)
		tap_ok(options_truthy(yes[i]), "'%s' is true", yes[i]);
	for (size_t i = 0; i < 6; i++)
		tap_ok(!options_truthy(no[i]), "'%s' is false", no[i]);
	tap_ok(!options_truthy(NULL), "NULL is false");
}

static void test_endpoint(void)
{
	char *e;

	unsetenv("HF_ENDPOINT");
	e = options_endpoint(NULL);
	tap_ok(e && !strcmp(e, "https://huggingface.co"), "default endpoint");
	free(e);
	setenv("HF_ENDPOINT", "http://127.0.0.1:8080/", 1);
	e = options_endpoint(NULL);
	tap_ok(e && !strcmp(e, "http://127.0.0.1:8080"), "HF_ENDPOINT, trailing '/' removed");
	free(e);
	e = options_endpoint("https://hub.example//");
	tap_ok(e && !strcmp(e, "https://hub.example"), "an endpoint given wins over HF_ENDPOINT");
	free(e);
	unsetenv("HF_ENDPOINT");
}

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	if (f) {
		fputs(text, f);
		fclose(f);
	}
}

static void test_token(const char *dir)
{
	char path[512], home[512], given[512];
	const char *src = NULL;
	char *tok = NULL;
	int rc;

	snprintf(home, sizeof(home), "%s/home", dir);
	snprintf(path, sizeof(path), "%s/home/.cache", dir);
	mkdir(home, 0700);
	mkdir(path, 0700);
	snprintf(path, sizeof(path), "%s/home/.cache/huggingface", dir);
	mkdir(path, 0700);
	setenv("HOME", home, 1);
	unsetenv("HF_TOKEN");
	unsetenv("HUGGING_FACE_HUB_TOKEN");
	unsetenv("HF_TOKEN_PATH");
	unsetenv("HF_HOME");
	unsetenv("XDG_CACHE_HOME");

	rc = options_token(NULL, &tok, &src);
	tap_ok(rc == 0 && !tok && !src, "no token anywhere: none, no error");

	snprintf(path, sizeof(path), "%s/home/.cache/huggingface/token", dir);
	write_file(path, "hf_default\r\n");
	rc = options_token(NULL, &tok, &src);
	tap_ok(rc == 0 && tok && !strcmp(tok, "hf_default") && src && !strcmp(src, "~/.cache/huggingface/token"),
	       "~/.cache/huggingface/token, CR LF removed");
	options_token_free(tok);

	snprintf(path, sizeof(path), "%s/hfhome", dir);
	mkdir(path, 0700);
	setenv("HF_HOME", path, 1);
	snprintf(path, sizeof(path), "%s/hfhome/token", dir);
	write_file(path, "  hf_home_token \n");
	rc = options_token(NULL, &tok, &src);
	tap_ok(rc == 0 && tok && !strcmp(tok, "hf_home_token"), "$HF_HOME/token wins, trimmed");
	options_token_free(tok);

	snprintf(path, sizeof(path), "%s/explicit-path", dir);
	write_file(path, "hf_path_token");
	setenv("HF_TOKEN_PATH", path, 1);
	rc = options_token(NULL, &tok, &src);
	tap_ok(rc == 0 && tok && !strcmp(tok, "hf_path_token") && !strcmp(src, "HF_TOKEN_PATH"),
	       "HF_TOKEN_PATH wins over HF_HOME");
	options_token_free(tok);

	setenv("HF_TOKEN", "hf_env_token", 1);
	rc = options_token(NULL, &tok, &src);
	tap_ok(rc == 0 && tok && !strcmp(tok, "hf_env_token") && !strcmp(src, "HF_TOKEN"),
	       "HF_TOKEN wins over files");
	options_token_free(tok);

	snprintf(given, sizeof(given), "%s/given", dir);
	write_file(given, "hf_given\n");
	rc = options_token(given, &tok, &src);
	tap_ok(rc == 0 && tok && !strcmp(tok, "hf_given") && !strcmp(src, "--token-file"),
	       "--token-file wins over HF_TOKEN");
	options_token_free(tok);

	snprintf(given, sizeof(given), "%s/missing", dir);
	rc = options_token(given, &tok, &src);
	tap_ok(rc == -ENOENT && !tok, "a missing --token-file is an error");

	setenv("HF_TOKEN", "   ", 1);
	unsetenv("HF_TOKEN_PATH");
	unsetenv("HF_HOME");
	snprintf(path, sizeof(path), "%s/home/.cache/huggingface/token", dir);
	write_file(path, "\n\n");
	rc = options_token(NULL, &tok, &src);
	tap_ok(rc == 0 && !tok, "blank HF_TOKEN and an empty file: no token");
	unsetenv("HF_TOKEN");
}

static void test_cache_dir(const char *dir)
{
	char *d;
	char want[512];

	setenv("XDG_CACHE_HOME", "/xdg", 1);
	d = options_cache_dir(NULL);
	tap_ok(d && !strcmp(d, "/xdg/hubfs"), "cache dir under XDG_CACHE_HOME");
	free(d);
	unsetenv("XDG_CACHE_HOME");
	d = options_cache_dir(NULL);
	snprintf(want, sizeof(want), "%s/home/.cache/hubfs", dir);
	tap_ok(d && !strcmp(d, want), "cache dir under ~/.cache");
	free(d);
	d = options_cache_dir("/given");
	tap_ok(d && !strcmp(d, "/given"), "cache dir given");
	free(d);
}

/* The order huggingface_hub's constants.py gives: HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE,
 * HF_HOME/hub, XDG_CACHE_HOME/huggingface/hub, ~/.cache/huggingface/hub. */
static void test_hf_cache_dir(const char *dir)
{
	char want[512];
	char *d;

	unsetenv("HF_HUB_CACHE");
	unsetenv("HUGGINGFACE_HUB_CACHE");
	unsetenv("HF_HOME");
	unsetenv("XDG_CACHE_HOME");
	d = options_hf_cache_dir();
	snprintf(want, sizeof(want), "%s/home/.cache/huggingface/hub", dir);
	tap_ok(d && !strcmp(d, want), "hf cache: ~/.cache/huggingface/hub by default (%s)", d);
	free(d);

	setenv("XDG_CACHE_HOME", "/xdg", 1);
	d = options_hf_cache_dir();
	tap_ok(d && !strcmp(d, "/xdg/huggingface/hub"), "hf cache: XDG_CACHE_HOME/huggingface/hub");
	free(d);

	setenv("HF_HOME", "/hfhome", 1);
	d = options_hf_cache_dir();
	tap_ok(d && !strcmp(d, "/hfhome/hub"), "hf cache: HF_HOME/hub wins over XDG_CACHE_HOME");
	free(d);

	setenv("HF_HOME", "~/hf", 1);
	d = options_hf_cache_dir();
	snprintf(want, sizeof(want), "%s/home/hf/hub", dir);
	tap_ok(d && !strcmp(d, want), "hf cache: a '~/' in HF_HOME is the home (%s)", d);
	free(d);

	setenv("HUGGINGFACE_HUB_CACHE", "/legacy", 1);
	d = options_hf_cache_dir();
	tap_ok(d && !strcmp(d, "/legacy"), "hf cache: HUGGINGFACE_HUB_CACHE wins over HF_HOME");
	free(d);

	setenv("HF_HUB_CACHE", "/hubcache", 1);
	d = options_hf_cache_dir();
	tap_ok(d && !strcmp(d, "/hubcache"), "hf cache: HF_HUB_CACHE wins over everything");
	free(d);

	setenv("HF_HUB_CACHE", "~", 1);
	d = options_hf_cache_dir();
	snprintf(want, sizeof(want), "%s/home", dir);
	tap_ok(d && !strcmp(d, want), "hf cache: HF_HUB_CACHE '~' is the home");
	free(d);

	setenv("HF_HUB_CACHE", "~other/x", 1);
	d = options_hf_cache_dir();
	tap_ok(d && !strcmp(d, "~other/x"), "hf cache: '~other' is left as it is");
	free(d);

	setenv("HF_HUB_CACHE", "", 1);
	setenv("HUGGINGFACE_HUB_CACHE", "", 1);
	d = options_hf_cache_dir();
	snprintf(want, sizeof(want), "%s/home/hf/hub", dir);
	tap_ok(d && !strcmp(d, want), "hf cache: empty variables count as unset");
	free(d);

	unsetenv("HF_HUB_CACHE");
	unsetenv("HUGGINGFACE_HUB_CACHE");
	unsetenv("HF_HOME");
	unsetenv("XDG_CACHE_HOME");
}

int main(void)
{
	char dir[] = "/tmp/hubfs-test-options-XXXXXX";
	char cmd[600];

	if (!mkdtemp(dir))
		return 99;
	test_sizes();
	test_truthy();
	test_endpoint();
	test_token(dir);
	test_cache_dir(dir);
	test_hf_cache_dir(dir);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		tap_diag("could not remove %s", dir);
	return tap_done();
}
