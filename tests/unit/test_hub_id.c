/* Unit tests: Hub repo ids, revisions, paths and their encoding. */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "hub_id.h"
#include "tap.h"

struct name_case {
	const char *name;
	bool valid;
};

static const struct name_case name_cases[] = {
	{ "gpt2", true },
	{ "bert-base-uncased", true },
	{ "EsperBERTo-small", true },
	{ "tiny_model.v2", true },
	{ "a", true },
	{ "_x_", true },
	{ "9", true },
	{ "", false },
	{ "-start", false },
	{ "end-", false },
	{ ".hidden", false },
	{ "end.", false },
	{ "double--dash", false },
	{ "double..dot", false },
	{ "repo.git", false },
	{ "has space", false },
	{ "has/slash", false },
	{ "at@sign", false },
	{ "caf\xc3\xa9", false },
	{ "percent%2F", false },
	{ "..", false },
	{ ".", false },
	/* 96 characters: the longest name */
	{ "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
	  true },
	/* 97 characters */
	{ "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
	  false },
};

struct rev_case {
	const char *rev;
	bool valid;
};

static const struct rev_case rev_cases[] = {
	{ "main", true },
	{ "v1.0", true },
	{ "refs/pr/3", true },
	{ "refs/convert/parquet", true },
	{ "feature/x", true },
	{ "4c77982", true },
	{ "4c779822c5ac4f1c7e48f2f5f6a5e4d3c2b1a0ff", true },
	{ "r\xc3\xa9sum\xc3\xa9", true },
	{ "", false },
	{ "@", false },
	{ "a..b", false },
	{ "a@{1}", false },
	{ "/lead", false },
	{ "trail/", false },
	{ "trail.", false },
	{ "a//b", false },
	{ ".hidden", false },
	{ "a/.hidden", false },
	{ "x.lock", false },
	{ "x.lock/y", false },
	{ "with space", false },
	{ "tilde~1", false },
	{ "caret^", false },
	{ "colon:x", false },
	{ "q?", false },
	{ "star*", false },
	{ "br[", false },
	{ "back\\slash", false },
	{ "tab\tx", false },
	{ "del\x7f", false },
};

struct path_case {
	const char *path;
	bool valid;
};

static const struct path_case path_cases[] = {
	{ "", true },
	{ "config.json", true },
	{ "docs/read me.md", true },
	{ "docs/caf\xc3\xa9 \xe2\x98\x95.txt", true },
	{ "a/b/c/d.bin", true },
	{ ".gitattributes", true },
	{ "a%2Fb", true },
	{ "/abs", false },
	{ "trail/", false },
	{ "a//b", false },
	{ ".", false },
	{ "..", false },
	{ "a/../b", false },
	{ "a/./b", false },
	{ ".git", false },
	{ "sub/.git/config", false },
	{ "new\nline", false },
};

static void test_names(void)
{
	for (size_t i = 0; i < sizeof(name_cases) / sizeof(name_cases[0]); i++)
		tap_ok(hub_name_valid(name_cases[i].name) == name_cases[i].valid,
		       "name '%.20s%s' is %s", name_cases[i].name,
		       strlen(name_cases[i].name) > 20 ? "..." : "",
		       name_cases[i].valid ? "valid" : "refused");
}

static void test_repo_ids(void)
{
	tap_ok(hub_repo_id_valid("julien-c/EsperBERTo-small"), "repo id julien-c/EsperBERTo-small");
	tap_ok(hub_repo_id_valid("acme-research/tiny-model"), "repo id acme-research/tiny-model");
	tap_ok(!hub_repo_id_valid("gpt2"), "repo id without namespace refused");
	tap_ok(!hub_repo_id_valid("a/b/c"), "repo id with two slashes refused");
	tap_ok(!hub_repo_id_valid("/name"), "repo id with empty namespace refused");
	tap_ok(!hub_repo_id_valid("ns/"), "repo id with empty name refused");
	tap_ok(!hub_repo_id_valid("ns/bad--name"), "repo id with -- refused");
}

static void test_commit_ids(void)
{
	tap_ok(hub_commit_id_valid("4c779822c5ac4f1c7e48f2f5f6a5e4d3c2b1a0ff", false), "full commit id");
	tap_ok(hub_commit_id_valid("4C779822C5AC4F1C7E48F2F5F6A5E4D3C2B1A0FF", false),
	       "full commit id, upper case");
	tap_ok(!hub_commit_id_valid("4c77982", false), "short id refused when a full one is needed");
	tap_ok(hub_commit_id_valid("4c77982", true), "7-digit short id");
	tap_ok(!hub_commit_id_valid("4c7798", true), "6-digit short id refused");
	tap_ok(!hub_commit_id_valid("4c779822c5ac4f1c7e48f2f5f6a5e4d3c2b1a0ff0", true),
	       "41 digits refused");
	tap_ok(!hub_commit_id_valid("4c7798g", true), "non-hex refused");
	tap_ok(!hub_commit_id_valid("main", true), "branch name is no commit id");
}

static void test_revisions(void)
{
	char longrev[HUB_REV_MAX + 2];

	for (size_t i = 0; i < sizeof(rev_cases) / sizeof(rev_cases[0]); i++)
		tap_ok(hub_revision_valid(rev_cases[i].rev) == rev_cases[i].valid,
		       "revision #%zu is %s", i, rev_cases[i].valid ? "valid" : "refused");
	memset(longrev, 'r', HUB_REV_MAX);
	longrev[HUB_REV_MAX] = '\0';
	tap_ok(hub_revision_valid(longrev), "revision of %d bytes", HUB_REV_MAX);
	longrev[HUB_REV_MAX] = 'r';
	longrev[HUB_REV_MAX + 1] = '\0';
	tap_ok(!hub_revision_valid(longrev), "revision of %d bytes refused", HUB_REV_MAX + 1);
}

static void test_paths(void)
{
	char *longp;

	for (size_t i = 0; i < sizeof(path_cases) / sizeof(path_cases[0]); i++)
		tap_ok(hub_repo_path_valid(path_cases[i].path) == path_cases[i].valid,
		       "repo path #%zu is %s", i, path_cases[i].valid ? "valid" : "refused");
	longp = malloc(HUB_PATH_COMPONENT_MAX + 2);
	if (!longp)
		return;
	memset(longp, 'p', HUB_PATH_COMPONENT_MAX + 1);
	longp[HUB_PATH_COMPONENT_MAX + 1] = '\0';
	tap_ok(!hub_repo_path_valid(longp), "component of %d bytes refused",
	       HUB_PATH_COMPONENT_MAX + 1);
	longp[HUB_PATH_COMPONENT_MAX] = '\0';
	tap_ok(hub_repo_path_valid(longp), "component of %d bytes", HUB_PATH_COMPONENT_MAX);
	free(longp);
}

struct encode_case {
	const char *rev;
	const char *encoded;
};

static const struct encode_case encode_cases[] = {
	{ "main", "main" },
	{ "v1.0", "v1.0" },
	{ "refs/pr/3", "refs%2Fpr%2F3" },
	{ "refs/convert/parquet", "refs%2Fconvert%2Fparquet" },
	{ "feature/a b", "feature%2Fa%20b" },
	{ "r\xc3\xa9v", "r%C3%A9v" },
	{ "tilde_-.~", "tilde_-.~" },
};

static void test_encoding(void)
{
	for (size_t i = 0; i < sizeof(encode_cases) / sizeof(encode_cases[0]); i++) {
		char *enc = hub_revision_encode(encode_cases[i].rev);
		char *dec;
		int err = -1;

		tap_ok(enc && strcmp(enc, encode_cases[i].encoded) == 0, "encode '%s' gives '%s' (got '%s')",
		       encode_cases[i].rev, encode_cases[i].encoded, enc ? enc : "(null)");
		dec = enc ? hub_revision_decode(enc, &err) : NULL;
		if (hub_revision_valid(encode_cases[i].rev))
			tap_ok(dec && err == 0 && strcmp(dec, encode_cases[i].rev) == 0,
			       "decode '%s' round-trips", encode_cases[i].encoded);
		else
			tap_ok(!dec && err == -ENOENT, "decode '%s' refused: not a revision",
			       encode_cases[i].encoded);
		free(enc);
		free(dec);
	}
}

static void test_decoding_errors(void)
{
	int err = 0;
	char *dec;
	char *big;

	dec = hub_revision_decode("a%00b", &err);
	tap_ok(!dec && err == -ENOENT, "decoding a %%00 is refused");
	dec = hub_revision_decode("refs%2F..%2Fx", &err);
	tap_ok(!dec && err == -ENOENT, "decoded '..' is refused");
	dec = hub_revision_decode("%2Fmain", &err);
	tap_ok(!dec && err == -ENOENT, "decoded leading '/' is refused");
	dec = hub_revision_decode("v1%2e0", &err);
	tap_ok(dec && strcmp(dec, "v1.0") == 0, "lower-case hex escapes decode");
	free(dec);
	big = malloc(3 * (HUB_REV_MAX + 1) + 1);
	if (!big)
		return;
	for (int i = 0; i <= HUB_REV_MAX; i++)
		memcpy(big + 3 * i, "%41", 3);
	big[3 * (HUB_REV_MAX + 1)] = '\0';
	dec = hub_revision_decode(big, &err);
	tap_ok(!dec && err == -ENAMETOOLONG, "a revision decoding to %d bytes is too long",
	       HUB_REV_MAX + 1);
	free(big);
}

static void test_types(void)
{
	tap_ok(!strcmp(hub_repo_type_api(HUB_REPO_MODEL), "models") &&
		       !strcmp(hub_repo_type_api(HUB_REPO_DATASET), "datasets") &&
		       !strcmp(hub_repo_type_api(HUB_REPO_SPACE), "spaces"),
	       "API segments of the repo types");
	tap_ok(!strcmp(hub_repo_type_prefix(HUB_REPO_MODEL), "") &&
		       !strcmp(hub_repo_type_prefix(HUB_REPO_DATASET), "datasets/") &&
		       !strcmp(hub_repo_type_prefix(HUB_REPO_SPACE), "spaces/"),
	       "URL prefixes of the repo types");
}

int main(void)
{
	if (http_global_init() < 0)
		return 99;
	test_names();
	test_repo_ids();
	test_commit_ids();
	test_revisions();
	test_paths();
	test_encoding();
	test_decoding_errors();
	test_types();
	http_global_release();
	return tap_done();
}
