/*
 * Hub API calls.  See hub_api.h.
 *
 * Every call builds its URL from validated parts, fetches JSON through the
 * HTTP layer (retrying what is retryable), and copies what it needs out of
 * the parsed document into hubfs structs, checking each field.  Pages of a
 * listing are followed through their Link rel="next" URL, which the HTTP
 * layer only sends the token along with when it points at the endpoint.
 */
#include "config.h"

#include "hub_api.h"

#include <cjson/cJSON.h>
#include <openssl/evp.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

/* Most pages followed in one listing. */
#define HUB_PAGES_MAX 10000
/* Largest JSON answer accepted. */
#define HUB_JSON_MAX (64 * 1024 * 1024)

int64_t hub_parse_time(const char *s)
{
	struct tm tm;
	const char *end;

	if (!s)
		return -1;
	memset(&tm, 0, sizeof(tm));
	end = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
	if (!end)
		return -1;
	return (int64_t)timegm(&tm);
}

/*
 * cJSON turns the escape \u0000 into a NUL byte and every string it hands
 * out ends there: "main\u0000x" would read as "main".  Rewrites each such
 * escape, in place, to \u0001, a control character that every name check
 * of this file refuses, so that a string with a NUL is refused whole instead
 * of being cut.  An escaped backslash ("\\u0000") is left alone.
 */
static void hub_json_unnul(char *body, size_t len)
{
	for (size_t i = 0; i + 6 <= len; i++) {
		size_t run = 0;

		if (body[i] != '\\')
			continue;
		while (i + run < len && body[i + run] == '\\')
			run++;
		i += run - 1; /* the last backslash of the run */
		if (run % 2 == 1 && i + 6 <= len && !memcmp(body + i + 1, "u0000", 5))
			body[i + 5] = '1';
	}
}

/* Fetches @url and parses its JSON body into *@json (caller frees with
 * cJSON_Delete).  On success, @resp is released unless @keep is set. */
static int hub_get_json(struct http_client *http, const char *url, cJSON **json,
			struct http_response *resp, bool keep)
{
	struct http_request req = {
		.url = url,
		.accept = "application/json",
		.api = true,
		.max_body = HUB_JSON_MAX,
	};
	int rc;

	*json = NULL;
	rc = http_perform_retry(http, &req, resp);
	if (rc)
		goto fail;
	rc = http_status_errno(resp);
	if (rc)
		goto fail;
	if (resp->body)
		hub_json_unnul(resp->body, resp->body_len);
	*json = cJSON_ParseWithLength(resp->body ? resp->body : "", resp->body_len);
	if (!*json) {
		log_msg(LOG_WARNING, "'%.*s': the answer is not JSON", (int)strcspn(url, "?"), url);
		rc = -EIO;
		goto fail;
	}
	if (!keep)
		http_response_release(resp);
	return 0;
fail:
	http_response_release(resp);
	return rc;
}

static const char *hub_json_string(const cJSON *obj, const char *key)
{
	const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);

	return cJSON_IsString(item) ? item->valuestring : NULL;
}

static bool hub_is_commit(const char *s)
{
	if (!s || !hub_commit_id_valid(s, false))
		return false;
	for (; *s; s++)
		if (*s >= 'A' && *s <= 'F')
			return false;
	return true;
}

static int hub_malformed(const char *what)
{
	log_msg(LOG_WARNING, "malformed answer from the Hub: %s", what);
	return -EIO;
}

/* Receives the JSON array of one page; returns 0 or -errno to stop. */
typedef int (*hub_page_fn)(void *arg, const cJSON *array);

/* Fetches @url (taken over) and the pages after it (Link rel="next"),
 * handing each page's array to @fn.  @what names the listing in errors. */
static int hub_each_page(struct http_client *http, char *url, const char *what, hub_page_fn fn,
			 void *arg)
{
	int rc = url ? 0 : -ENOMEM, pages = 0;

	while (url && !rc) {
		struct http_response resp;
		cJSON *json;

		rc = hub_get_json(http, url, &json, &resp, true);
		free(url);
		url = NULL;
		if (rc)
			break;
		rc = cJSON_IsArray(json) ? fn(arg, json) : hub_malformed(what);
		if (!rc && resp.link_next) {
			if (++pages >= HUB_PAGES_MAX)
				rc = hub_malformed("too many pages");
			else if (!(url = strdup(resp.link_next)))
				rc = -ENOMEM;
		}
		cJSON_Delete(json);
		http_response_release(&resp);
	}
	free(url);
	return rc;
}

int hub_whoami(struct http_client *http, struct hub_whoami *out)
{
	struct http_response resp;
	const cJSON *orgs, *org;
	const char *name;
	cJSON *json;
	int rc;

	memset(out, 0, sizeof(*out));
	rc = hub_get_json(http, "/api/whoami-v2", &json, &resp, false);
	if (rc)
		return rc;
	name = hub_json_string(json, "name");
	if (!name || !hub_name_valid(name)) {
		rc = hub_malformed("whoami: no valid name");
		goto out;
	}
	out->name = strdup(name);
	orgs = cJSON_GetObjectItemCaseSensitive(json, "orgs");
	if (cJSON_IsArray(orgs) && cJSON_GetArraySize(orgs) > 0) {
		out->orgs = calloc((size_t)cJSON_GetArraySize(orgs), sizeof(char *));
		if (!out->orgs) {
			rc = -ENOMEM;
			goto out;
		}
		cJSON_ArrayForEach(org, orgs)
		{
			const char *o = hub_json_string(org, "name");

			if (o && hub_name_valid(o) && (out->orgs[out->n_orgs] = strdup(o)))
				out->n_orgs++;
		}
	}
	rc = out->name ? 0 : -ENOMEM;
out:
	cJSON_Delete(json);
	if (rc)
		hub_whoami_release(out);
	return rc;
}

void hub_whoami_release(struct hub_whoami *w)
{
	free(w->name);
	for (size_t i = 0; i < w->n_orgs; i++)
		free(w->orgs[i]);
	free(w->orgs);
	memset(w, 0, sizeof(*w));
}

int hub_ping(struct http_client *http)
{
	struct http_request req = { .url = "/api/whoami-v2", .api = true, .max_body = 1 << 20 };
	struct http_response resp;
	int rc = http_perform_retry(http, &req, &resp);

	http_response_release(&resp);
	return rc;
}

int hub_namespace_exists(struct http_client *http, const char *ns)
{
	/* Organisations first: most namespaces read from (and not the token's
	 * own, known from whoami) are organisations. */
	static const char *const kinds[] = { "organizations", "users" };
	int rc = -ENOENT;

	if (!hub_name_valid(ns))
		return -ENOENT;
	for (size_t i = 0; i < 2; i++) {
		struct http_request req = { .method = "GET", .api = true, .max_body = 1 << 20 };
		struct http_response resp;
		char url[256];

		snprintf(url, sizeof(url), "/api/%s/%s/overview", kinds[i], ns);
		req.url = url;
		rc = http_perform_retry(http, &req, &resp);
		if (!rc)
			rc = http_status_errno(&resp);
		http_response_release(&resp);
		if (rc != -ENOENT)
			return rc;
	}
	return rc;
}

static int hub_names_add(struct hub_names *names, const char *name, size_t *cap)
{
	if (names->n == *cap) {
		size_t ncap = *cap ? 2 * *cap : 64;
		char **n = realloc(names->names, ncap * sizeof(char *));

		if (!n)
			return -ENOMEM;
		names->names = n;
		*cap = ncap;
	}
	names->names[names->n] = strdup(name);
	if (!names->names[names->n])
		return -ENOMEM;
	names->n++;
	return 0;
}

void hub_names_release(struct hub_names *names)
{
	for (size_t i = 0; i < names->n; i++)
		free(names->names[i]);
	free(names->names);
	memset(names, 0, sizeof(*names));
}

struct hub_repos_page {
	struct hub_names *out;
	const char *ns;
	size_t cap;
};

static int hub_repos_page(void *arg, const cJSON *array)
{
	struct hub_repos_page *p = arg;
	size_t nslen = strlen(p->ns);
	const cJSON *item;
	int rc = 0;

	cJSON_ArrayForEach(item, array)
	{
		const char *id = hub_json_string(item, "id");

		/* "NS/NAME", from this namespace only */
		if (!id || strncasecmp(id, p->ns, nslen) || id[nslen] != '/' ||
		    !hub_name_valid(id + nslen + 1))
			continue;
		if (p->out->n >= HUB_LIST_MAX)
			return hub_malformed("too many repos");
		rc = hub_names_add(p->out, id + nslen + 1, &p->cap);
		if (rc)
			break;
	}
	return rc;
}

int hub_list_repos(struct http_client *http, enum hub_repo_type type, const char *ns,
		   struct hub_names *out)
{
	struct hub_repos_page page = { .out = out, .ns = ns };
	char *url = NULL;
	int rc;

	memset(out, 0, sizeof(*out));
	if (!hub_name_valid(ns))
		return -ENOENT;
	if (asprintf(&url, "/api/%s?author=%s&limit=1000", hub_repo_type_api(type), ns) < 0)
		url = NULL;
	rc = hub_each_page(http, url, "repo listing is not an array", hub_repos_page, &page);
	if (rc)
		hub_names_release(out);
	return rc;
}

/* "/api/models/NS/NAME", into @buf. */
static int hub_repo_api(const struct hub_repo *repo, char *buf, size_t size)
{
	if (!hub_name_valid(repo->ns) || !hub_name_valid(repo->name))
		return -ENOENT;
	snprintf(buf, size, "/api/%s/%s/%s", hub_repo_type_api(repo->type), repo->ns, repo->name);
	return 0;
}

/* "/api/models/NS/NAME/VERB/REV" with REV %-encoded, into *@url (caller
 * frees).  Returns 0, -ENOENT for an invalid repo or revision, -ENOMEM. */
static int hub_repo_rev_url(const struct hub_repo *repo, const char *verb, const char *rev,
			    char **url)
{
	char base[256], *enc;
	int rc = hub_repo_api(repo, base, sizeof(base));

	*url = NULL;
	if (rc)
		return rc;
	if (!hub_revision_valid(rev))
		return -ENOENT;
	enc = hub_revision_encode(rev);
	if (!enc || asprintf(url, "%s/%s/%s", base, verb, enc) < 0)
		*url = NULL;
	free(enc);
	return *url ? 0 : -ENOMEM;
}

void hub_refs_release(struct hub_refs *refs)
{
	for (size_t i = 0; i < refs->n; i++)
		free(refs->refs[i].name);
	free(refs->refs);
	memset(refs, 0, sizeof(*refs));
}

int hub_list_refs(struct http_client *http, const struct hub_repo *repo, struct hub_refs *out)
{
	static const struct {
		const char *key;
		enum hub_ref_kind kind;
	} groups[] = {
		{ "branches", HUB_REF_BRANCH },
		{ "tags", HUB_REF_TAG },
		{ "pullRequests", HUB_REF_PR },
		{ "converts", HUB_REF_CONVERT },
	};
	struct http_response resp;
	char base[256], url[300];
	size_t cap = 0;
	cJSON *json;
	int rc;

	memset(out, 0, sizeof(*out));
	rc = hub_repo_api(repo, base, sizeof(base));
	if (rc)
		return rc;
	snprintf(url, sizeof(url), "%s/refs?include_prs=1", base);
	rc = hub_get_json(http, url, &json, &resp, false);
	if (rc)
		return rc;
	for (size_t g = 0; g < sizeof(groups) / sizeof(groups[0]) && !rc; g++) {
		const cJSON *list = cJSON_GetObjectItemCaseSensitive(json, groups[g].key), *item;

		cJSON_ArrayForEach(item, list)
		{
			const char *name = hub_json_string(item, "name");
			const char *ref = hub_json_string(item, "ref");
			const char *target = hub_json_string(item, "targetCommit");
			struct hub_ref *r;

			if (groups[g].kind == HUB_REF_PR || groups[g].kind == HUB_REF_CONVERT)
				name = ref; /* "refs/pr/N": the name clients use */
			if (!name || !hub_revision_valid(name) || !hub_is_commit(target))
				continue;
			if (out->n >= HUB_LIST_MAX) {
				rc = hub_malformed("too many refs");
				break;
			}
			if (out->n == cap) {
				size_t ncap = cap ? 2 * cap : 16;
				struct hub_ref *n = realloc(out->refs, ncap * sizeof(*n));

				if (!n) {
					rc = -ENOMEM;
					break;
				}
				out->refs = n;
				cap = ncap;
			}
			r = &out->refs[out->n];
			r->kind = groups[g].kind;
			r->name = strdup(name);
			if (!r->name) {
				rc = -ENOMEM;
				break;
			}
			memcpy(r->commit, target, HUB_COMMIT_LEN + 1);
			out->n++;
		}
	}
	cJSON_Delete(json);
	if (rc)
		hub_refs_release(out);
	return rc;
}

int hub_resolve(struct http_client *http, const struct hub_repo *repo, const char *rev,
		struct hub_revision *out)
{
	struct http_response resp;
	char *url = NULL, *full = NULL;
	const char *sha;
	const cJSON *priv;
	cJSON *json;
	int rc;

	memset(out, 0, sizeof(*out));
	rc = hub_repo_rev_url(repo, "revision", rev, &url);
	if (rc)
		return rc;
	if (asprintf(&full, "%s?expand=sha&expand=lastModified&expand=private", url) < 0)
		full = NULL;
	free(url);
	if (!full)
		return -ENOMEM;
	rc = hub_get_json(http, full, &json, &resp, false);
	free(full);
	if (rc)
		return rc;
	sha = hub_json_string(json, "sha");
	if (!hub_is_commit(sha)) {
		rc = hub_malformed("revision info without a valid sha");
	} else {
		memcpy(out->commit, sha, HUB_COMMIT_LEN + 1);
		out->mtime = hub_parse_time(hub_json_string(json, "lastModified"));
		if (out->mtime < 0)
			out->mtime = 0;
		priv = cJSON_GetObjectItemCaseSensitive(json, "private");
		out->private = cJSON_IsTrue(priv);
	}
	cJSON_Delete(json);
	return rc;
}

char *hub_resolve_url(struct http_client *http, const struct hub_repo *repo, const char *commit,
		      const char *path)
{
	char *enc = http_escape_path(path), *url = NULL;

	if (!enc)
		return NULL;
	if (asprintf(&url, "%s/%s%s/%s/resolve/%s/%s", http_client_endpoint(http),
		     hub_repo_type_prefix(repo->type), repo->ns, repo->name, commit, enc) < 0)
		url = NULL;
	free(enc);
	return url;
}

/* The git blob id and the sha256 of the empty file: the only ids of size 0. */
#define HUB_EMPTY_BLOB "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
#define HUB_EMPTY_SHA256 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
/* Largest file size believed: doubles hold every integer up to here, and the
 * cache indexes far more (CACHE_CHUNKS_MAX chunks). */
#define HUB_SIZE_MAX 9007199254740992.0 /* 2^53 */

/* Logs why the tree entry @path is refused (control characters shown as
 * '?', the path cut at 200 bytes) and returns @rc. */
static int hub_entry_refuse(const char *path, const char *why, int rc)
{
	char shown[201];
	size_t i;

	for (i = 0; path[i] && i < sizeof(shown) - 1; i++)
		shown[i] = (unsigned char)path[i] < 0x20 || path[i] == 0x7f ? '?' : path[i];
	shown[i] = '\0';
	log_msg(LOG_WARNING, "tree entry '%s%s' refused: %s", shown, path[i] ? "..." : "", why);
	return rc;
}

/* Reads a JSON file size into *@out: a number that is an integer in
 * [0, 2^53]; false for anything else (missing, a string, 1.5, -1, 1e300). */
static bool hub_json_size(const cJSON *item, uint64_t *out)
{
	double v;

	if (!cJSON_IsNumber(item))
		return false;
	v = item->valuedouble;
	if (!(v >= 0 && v <= HUB_SIZE_MAX) || v != (double)(uint64_t)v)
		return false;
	*out = (uint64_t)v;
	return true;
}

/*
 * Checks one tree entry of a listing of @dir and fills @e.  Returns 0, 1 for
 * an entry to skip (an unknown kind, or a name that is refused: the rest of
 * the listing stays usable), or -EIO for an answer that cannot be trusted
 * (no oid, or a size that cannot be its oid's: serving it would give wrong
 * bytes, such as an empty file for a non-empty blob).
 */
static int hub_tree_entry(const cJSON *item, const char *dir, struct hub_entry *e)
{
	const char *type = hub_json_string(item, "type");
	const char *path = hub_json_string(item, "path");
	const char *oid = hub_json_string(item, "oid");
	const cJSON *size = cJSON_GetObjectItemCaseSensitive(item, "size");
	const cJSON *lfs = cJSON_GetObjectItemCaseSensitive(item, "lfs");
	size_t dlen = strlen(dir);
	const char *name;
	bool empty;

	memset(e, 0, sizeof(*e));
	if (!type || !path || !oid)
		return hub_malformed("tree entry without type, path or oid");
	if (dlen && (strncmp(path, dir, dlen) || path[dlen] != '/'))
		return hub_entry_refuse(path, "not in the listed directory", 1);
	name = dlen ? path + dlen + 1 : path;
	if (!*name || strchr(name, '/') || !hub_repo_path_valid(name))
		return hub_entry_refuse(path, "an invalid name", 1);
	if (!hub_is_commit(oid))
		return hub_entry_refuse(path, "an invalid oid", -EIO);
	e->name = name;
	memcpy(e->oid, oid, HUB_COMMIT_LEN + 1);
	if (!strcmp(type, "directory")) {
		e->is_dir = true;
		return 0;
	}
	if (strcmp(type, "file"))
		return 1; /* unknown kinds are skipped */
	if (!hub_json_size(size, &e->size))
		return hub_entry_refuse(path, "its size is not an integer in [0, 2^53]", -EIO);
	empty = !strcmp(oid, HUB_EMPTY_BLOB);
	if (cJSON_IsObject(lfs)) {
		const char *sha = hub_json_string(lfs, "oid");
		const cJSON *lsize = cJSON_GetObjectItemCaseSensitive(lfs, "size");

		if (!sha || strlen(sha) != 64 || strspn(sha, "0123456789abcdef") != 64)
			return hub_entry_refuse(path, "an invalid LFS oid", -EIO);
		memcpy(e->sha256, sha, 65);
		if (!hub_json_size(lsize, &e->size))
			return hub_entry_refuse(path, "its LFS size is not an integer in [0, 2^53]",
						-EIO);
		/* the git oid is the pointer file's: the LFS object decides */
		empty = !strcmp(sha, HUB_EMPTY_SHA256);
	} else if (!cJSON_IsNull(lfs) && lfs) {
		return hub_entry_refuse(path, "its lfs field is not an object", -EIO);
	}
	if (empty != (e->size == 0))
		return hub_entry_refuse(path, empty ? "the empty blob with a size that is not 0"
						    : "size 0 for a blob that is not empty",
					-EIO);
	return 0;
}

struct hub_tree_page {
	const char *dir;
	size_t total;
	hub_entries_fn fn;
	void *arg;
};

static int hub_tree_page(void *arg, const cJSON *array)
{
	struct hub_tree_page *p = arg;
	struct hub_entry *entries = calloc((size_t)cJSON_GetArraySize(array) + 1, sizeof(*entries));
	const cJSON *item;
	size_t n = 0;
	int rc = 0;

	if (!entries)
		return -ENOMEM;
	cJSON_ArrayForEach(item, array)
	{
		const char *path = hub_json_string(item, "path");
		const char *type = hub_json_string(item, "type");

		/* Listing a file answers with the file itself. */
		if (path && type && *p->dir && !strcmp(path, p->dir) && !strcmp(type, "file")) {
			rc = -ENOTDIR;
			break;
		}
		rc = hub_tree_entry(item, p->dir, &entries[n]);
		if (rc < 0)
			break;
		if (rc == 0)
			n++;
		rc = 0;
	}
	p->total += n;
	if (!rc && p->total > HUB_LIST_MAX)
		rc = hub_malformed("too many entries in one directory");
	/* the entries borrow their names from the page */
	if (!rc && n)
		rc = p->fn(p->arg, entries, n);
	free(entries);
	return rc;
}

int hub_list_tree(struct http_client *http, const struct hub_repo *repo, const char *commit,
		  const char *dir, hub_entries_fn fn, void *arg)
{
	struct hub_tree_page page = { .dir = dir, .fn = fn, .arg = arg };
	char base[256];
	char *url = NULL, *enc;
	int rc;

	rc = hub_repo_api(repo, base, sizeof(base));
	if (rc)
		return rc;
	if (!hub_is_commit(commit) || !hub_repo_path_valid(dir))
		return -ENOENT;
	enc = http_escape_path(dir);
	if (!enc)
		return -ENOMEM;
	if (asprintf(&url, "%s/tree/%s%s%s", base, commit, *dir ? "/" : "", enc) < 0)
		url = NULL;
	free(enc);
	return hub_each_page(http, url, "tree listing is not an array", hub_tree_page, &page);
}

/* ---- commits ---- */

/* Base64 of @len bytes (caller frees). */
static char *hub_base64(const unsigned char *data, size_t len)
{
	char *out = malloc(4 * ((len + 2) / 3) + 1);

	if (out)
		EVP_EncodeBlock((unsigned char *)out, data, (int)len);
	return out;
}

/* Reads @len bytes at @off of @fd into a new buffer (caller frees). */
static unsigned char *hub_read_fd(int fd, uint64_t off, size_t len, int *err)
{
	unsigned char *buf = malloc(len ? len : 1);
	size_t got = 0;

	if (!buf) {
		*err = -ENOMEM;
		return NULL;
	}
	while (got < len) {
		ssize_t n = pread(fd, buf + got, len - got, (off_t)(off + got));

		if (n <= 0) {
			*err = n < 0 ? -errno : -EIO;
			free(buf);
			return NULL;
		}
		got += (size_t)n;
	}
	return buf;
}

/* POSTs the JSON @body to @url; the answer's JSON goes to *@out (caller
 * deletes; may be NULL to ignore it).  @retry for idempotent requests. */
static int hub_post_json(struct http_client *http, const char *url, const char *ctype,
			 const cJSON *body, bool retry, cJSON **out, struct http_response *resp)
{
	char *text = cJSON_PrintUnformatted(body);
	struct http_request req = {
		.method = "POST",
		.url = url,
		.accept = ctype,
		.content_type = ctype,
		.api = true,
		.max_body = HUB_JSON_MAX,
	};
	int rc;

	if (out)
		*out = NULL;
	if (!text)
		return -ENOMEM;
	req.body = text;
	req.body_len = strlen(text);
	rc = retry ? http_perform_retry(http, &req, resp) : http_perform(http, &req, resp);
	free(text);
	if (rc)
		return rc;
	if (out && resp->status >= 200 && resp->status < 300) {
		*out = cJSON_ParseWithLength(resp->body ? resp->body : "", resp->body_len);
		if (!*out)
			return hub_malformed("an upload answer is not JSON");
	}
	return 0;
}

#define HUB_PREUPLOAD_BATCH 100
#define HUB_SAMPLE 512

int hub_preupload(struct http_client *http, const struct hub_repo *repo, const char *rev,
		  struct hub_op *ops, size_t n)
{
	char *url = NULL;
	size_t i = 0;
	int rc;

	rc = hub_repo_rev_url(repo, "preupload", rev, &url);
	if (rc)
		return rc;
	while (!rc && i < n) {
		cJSON *body = cJSON_CreateObject(), *files = cJSON_AddArrayToObject(body, "files");
		struct http_response resp;
		const cJSON *answer_files, *f;
		cJSON *answer = NULL;
		size_t first = i;

		if (!body || !files) {
			cJSON_Delete(body);
			rc = -ENOMEM;
			break;
		}
		for (; i < n && cJSON_GetArraySize(files) < HUB_PREUPLOAD_BATCH; i++) {
			struct hub_op *op = &ops[i];
			size_t slen = op->size < HUB_SAMPLE ? (size_t)op->size : HUB_SAMPLE;
			unsigned char *sample;
			cJSON *file;
			char *b64;

			if (op->kind != HUB_OP_ADD || op->old_path)
				continue;
			op->lfs = op->size > HUB_REGULAR_MAX;
			sample = hub_read_fd(op->fd, 0, slen, &rc);
			if (!sample)
				break;
			b64 = hub_base64(sample, slen);
			free(sample);
			file = cJSON_CreateObject();
			if (!b64 || !file || !cJSON_AddStringToObject(file, "path", op->path) ||
			    !cJSON_AddNumberToObject(file, "size", (double)op->size) ||
			    !cJSON_AddStringToObject(file, "sample", b64)) {
				free(b64);
				cJSON_Delete(file);
				rc = -ENOMEM;
				break;
			}
			free(b64);
			cJSON_AddItemToArray(files, file);
		}
		if (!rc && cJSON_GetArraySize(files) > 0) {
			rc = hub_post_json(http, url, "application/json", body, true, &answer, &resp);
			if (!rc)
				rc = http_status_errno(&resp);
			http_response_release(&resp);
		}
		cJSON_Delete(body);
		answer_files = cJSON_GetObjectItemCaseSensitive(answer, "files");
		cJSON_ArrayForEach(f, answer_files)
		{
			const char *path = hub_json_string(f, "path");
			const char *mode = hub_json_string(f, "uploadMode");

			for (size_t k = first; path && mode && k < i; k++)
				if (ops[k].kind == HUB_OP_ADD && !ops[k].old_path &&
				    !strcmp(ops[k].path, path))
					ops[k].lfs = (!strcmp(mode, "lfs") && ops[k].size > 0) ||
						     ops[k].size > HUB_REGULAR_MAX;
		}
		cJSON_Delete(answer);
	}
	free(url);
	return rc;
}

/* Parts of a multipart upload in flight at once. */
#define HUB_PARTS_PARALLEL 4

/* The progress of one LFS upload, summed over its parts, as op->progress
 * sees it: the bytes of the parts done plus those of the parts in flight,
 * never going back (a retried part starts again from 0).  Parts go up in
 * parallel: the calls are serialised by lock. */
struct hub_progress {
	const struct hub_op *op;
	pthread_mutex_t lock;
	uint64_t done;				 /* protected by lock: bytes of the parts uploaded */
	uint64_t inflight[HUB_PARTS_PARALLEL]; /* protected by lock: per uploader */
	uint64_t last;				 /* protected by lock: the last value reported */
};

/* One uploader's view of the progress. */
struct hub_part_prog {
	struct hub_progress *p;
	unsigned slot;
};

/* Reports done + in flight.  p->lock held. */
static void hub_progress_report_locked(struct hub_progress *p)
{
	uint64_t sent = p->done;

	if (!p->op->progress)
		return;
	for (unsigned i = 0; i < HUB_PARTS_PARALLEL; i++)
		sent += p->inflight[i];
	if (sent > p->op->size)
		sent = p->op->size;
	if (sent < p->last)
		sent = p->last;
	p->last = sent;
	p->op->progress(p->op->progress_arg, sent);
}

static void hub_progress_report(struct hub_progress *p, uint64_t done)
{
	pthread_mutex_lock(&p->lock);
	p->done = done;
	hub_progress_report_locked(p);
	pthread_mutex_unlock(&p->lock);
}

/* The HTTP layer's progress of a part in flight. */
static void hub_part_progress(void *arg, uint64_t sent)
{
	struct hub_part_prog *pp = arg;

	pthread_mutex_lock(&pp->p->lock);
	pp->p->inflight[pp->slot] = sent;
	hub_progress_report_locked(pp->p);
	pthread_mutex_unlock(&pp->p->lock);
}

/* PUTs [@off, @off+@len) of @fd to @url, reporting to @prog; the answer's
 * raw ETag goes to *@etag when asked (caller frees). */
static int hub_put_part(struct http_client *http, const char *url, int fd, uint64_t off,
			uint64_t len, char **etag, struct hub_part_prog *pp)
{
	struct http_request req = {
		.method = "PUT",
		.url = url,
		.has_body_fd = true,
		.body_fd = fd,
		.body_fd_off = off,
		.body_fd_len = len,
		.max_body = 1 << 20,
		.progress = pp->p->op->progress ? hub_part_progress : NULL,
		.progress_arg = pp,
	};
	struct http_response resp;
	int rc = http_perform_retry(http, &req, &resp);

	if (!rc)
		rc = http_status_errno(&resp);
	pthread_mutex_lock(&pp->p->lock);
	pp->p->inflight[pp->slot] = 0;
	if (!rc)
		pp->p->done += len;
	hub_progress_report_locked(pp->p);
	pthread_mutex_unlock(&pp->p->lock);
	if (!rc && etag) {
		*etag = resp.etag_raw ? strdup(resp.etag_raw) : NULL;
		if (!*etag)
			rc = hub_malformed("an uploaded part has no ETag");
	}
	http_response_release(&resp);
	return rc;
}

/* The parts of a multipart upload, sent by HUB_PARTS_PARALLEL uploaders
 * (the caller's thread and helpers), each taking the next part. */
struct hub_parts {
	struct http_client *http;
	const struct hub_op *op;
	struct hub_progress *prog;
	uint64_t chunk, nparts;
	const char **urls; /* borrowed from the batch answer */
	char **etags;	   /* filled by the uploaders */
	pthread_mutex_t lock;
	uint64_t next; /* protected by lock: the next part to send (0-based) */
	int rc;	       /* protected by lock: the first error */
	unsigned slots;	/* protected by lock: uploader slots handed out */
};

static void *hub_parts_run(void *arg)
{
	struct hub_parts *up = arg;
	struct hub_part_prog pp = { .p = up->prog };
	uint64_t i;
	int rc;

	pthread_mutex_lock(&up->lock);
	pp.slot = up->slots++;
	for (;;) {
		if (up->rc || up->next >= up->nparts)
			break;
		i = up->next++;
		pthread_mutex_unlock(&up->lock);
		rc = hub_put_part(up->http, up->urls[i], up->op->fd, i * up->chunk,
				  (i + 1) * up->chunk > up->op->size ? up->op->size - i * up->chunk
								     : up->chunk,
				  &up->etags[i], &pp);
		pthread_mutex_lock(&up->lock);
		if (rc && !up->rc)
			up->rc = rc;
	}
	pthread_mutex_unlock(&up->lock);
	return NULL;
}

/* Sends every part; returns 0 or the first error. */
static int hub_parts_upload(struct hub_parts *up)
{
	pthread_t t[HUB_PARTS_PARALLEL - 1];
	unsigned n = 0;

	for (; n < HUB_PARTS_PARALLEL - 1 && n + 1 < up->nparts; n++)
		if (pthread_create(&t[n], NULL, hub_parts_run, up))
			break; /* fewer uploaders, not fewer parts */
	hub_parts_run(up);
	for (unsigned i = 0; i < n; i++)
		pthread_join(t[i], NULL);
	return up->rc;
}

static int hub_multipart(struct http_client *http, const struct hub_op *op, const cJSON *upload,
			 struct hub_progress *prog)
{
	const cJSON *header = cJSON_GetObjectItemCaseSensitive(upload, "header"), *h;
	const char *done_url = hub_json_string(upload, "href");
	const char *chunk_s = hub_json_string(header, "chunk_size");
	uint64_t chunk = chunk_s ? strtoull(chunk_s, NULL, 10) : 0, nparts;
	struct hub_parts up = { 0 };
	cJSON *body = NULL, *parts;
	struct http_response resp;
	int rc = 0;

	if (!chunk || !done_url)
		return hub_malformed("a multipart upload without chunk_size or href");
	nparts = (op->size + chunk - 1) / chunk;
	{
		uint64_t found = 0;

		cJSON_ArrayForEach(h, header)
			if (h->string && strspn(h->string, "0123456789") == strlen(h->string))
				found++;
		if (found != nparts)
			return hub_malformed("a multipart upload with the wrong number of parts");
	}
	body = cJSON_CreateObject();
	parts = body ? cJSON_AddArrayToObject(body, "parts") : NULL;
	if (!parts || !cJSON_AddStringToObject(body, "oid", op->sha256)) {
		cJSON_Delete(body);
		return -ENOMEM;
	}
	up.http = http;
	up.op = op;
	up.prog = prog;
	up.chunk = chunk;
	up.nparts = nparts;
	up.urls = calloc(nparts, sizeof(*up.urls));
	up.etags = calloc(nparts, sizeof(*up.etags));
	pthread_mutex_init(&up.lock, NULL);
	if (!up.urls || !up.etags)
		rc = -ENOMEM;
	for (uint64_t i = 1; !rc && i <= nparts; i++) {
		cJSON_ArrayForEach(h, header)
			if (h->string && strspn(h->string, "0123456789") == strlen(h->string) &&
			    strtoull(h->string, NULL, 10) == i && cJSON_IsString(h))
				up.urls[i - 1] = h->valuestring;
		if (!up.urls[i - 1])
			rc = hub_malformed("a multipart upload misses a part URL");
	}
	if (!rc)
		rc = hub_parts_upload(&up);
	for (uint64_t i = 0; !rc && i < nparts; i++) {
		cJSON *part = cJSON_CreateObject();

		if (!part || !cJSON_AddNumberToObject(part, "partNumber", (double)(i + 1)) ||
		    !cJSON_AddStringToObject(part, "etag", up.etags[i])) {
			cJSON_Delete(part);
			rc = -ENOMEM;
		} else {
			cJSON_AddItemToArray(parts, part);
		}
	}
	for (uint64_t i = 0; up.etags && i < nparts; i++)
		free(up.etags[i]);
	free(up.etags);
	free(up.urls);
	pthread_mutex_destroy(&up.lock);
	if (!rc) {
		rc = hub_post_json(http, done_url, "application/vnd.git-lfs+json", body, true, NULL, &resp);
		if (!rc)
			rc = http_status_errno(&resp);
		http_response_release(&resp);
	}
	cJSON_Delete(body);
	return rc;
}

/* Whether the LFS batch API (@url, request @body) says the Hub stores the
 * object: an answer without an upload action. */
static bool hub_lfs_stored(struct http_client *http, const char *url, const cJSON *body)
{
	struct http_response resp;
	cJSON *answer = NULL;
	const cJSON *o;
	bool stored = false;
	int rc = hub_post_json(http, url, "application/vnd.git-lfs+json", body, true, &answer, &resp);

	if (!rc)
		rc = http_status_errno(&resp);
	http_response_release(&resp);
	o = rc ? NULL : cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(answer, "objects"), 0);
	if (o && !cJSON_GetObjectItemCaseSensitive(o, "error"))
		stored = !cJSON_GetObjectItemCaseSensitive(
		    cJSON_GetObjectItemCaseSensitive(o, "actions"), "upload");
	cJSON_Delete(answer);
	return stored;
}

int hub_lfs_upload(struct http_client *http, const struct hub_repo *repo, const char *rev,
		   const struct hub_op *op)
{
	cJSON *body, *objects, *obj, *transfers, *ref, *answer = NULL;
	const cJSON *o, *actions, *upload, *verify, *err;
	struct hub_progress prog = { .op = op, .lock = PTHREAD_MUTEX_INITIALIZER };
	struct hub_part_prog pp = { .p = &prog };
	struct http_response resp;
	char *url = NULL;
	int rc;

	if (!hub_name_valid(repo->ns) || !hub_name_valid(repo->name))
		return -ENOENT;
	if (asprintf(&url, "%s/%s%s/%s.git/info/lfs/objects/batch", http_client_endpoint(http),
		     hub_repo_type_prefix(repo->type), repo->ns, repo->name) < 0)
		return -ENOMEM;
	body = cJSON_CreateObject();
	transfers = cJSON_AddArrayToObject(body, "transfers");
	objects = cJSON_AddArrayToObject(body, "objects");
	ref = cJSON_AddObjectToObject(body, "ref");
	obj = cJSON_CreateObject();
	if (!body || !transfers || !objects || !ref || !obj ||
	    !cJSON_AddStringToObject(body, "operation", "upload") ||
	    !cJSON_AddStringToObject(body, "hash_algo", "sha256") ||
	    !cJSON_AddStringToObject(ref, "name", rev) ||
	    !cJSON_AddStringToObject(obj, "oid", op->sha256) ||
	    !cJSON_AddNumberToObject(obj, "size", (double)op->size)) {
		cJSON_Delete(obj);
		rc = -ENOMEM;
		goto out;
	}
	cJSON_AddItemToArray(transfers, cJSON_CreateString("basic"));
	cJSON_AddItemToArray(transfers, cJSON_CreateString("multipart"));
	cJSON_AddItemToArray(objects, obj);
	rc = hub_post_json(http, url, "application/vnd.git-lfs+json", body, true, &answer, &resp);
	if (!rc)
		rc = http_status_errno(&resp);
	http_response_release(&resp);
	if (rc)
		goto out;
	o = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(answer, "objects"), 0);
	err = cJSON_GetObjectItemCaseSensitive(o, "error");
	if (!o || err) {
		log_msg(LOG_WARNING, "LFS upload of '%s' refused: %s", op->path,
			err ? hub_json_string(err, "message") ? hub_json_string(err, "message") : "error"
			    : "no answer for the object");
		rc = -EIO;
		goto out;
	}
	actions = cJSON_GetObjectItemCaseSensitive(o, "actions");
	upload = cJSON_GetObjectItemCaseSensitive(actions, "upload");
	if (!upload)
		goto done; /* the Hub has it already */
	if (cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(upload, "header"),
					     "chunk_size")) {
		rc = hub_multipart(http, op, upload, &prog);
		if (rc && rc != -ENOMEM && hub_lfs_stored(http, url, body)) {
			/* the answer to the completion was lost (libcurl sends a
			 * POST again on a fresh connection, and the Hub knows the
			 * upload no more): the Hub has the object */
			log_msg(LOG_INFO, "LFS object of '%s' is stored after all", op->path);
			rc = 0;
		}
	} else if (hub_json_string(upload, "href")) {
		rc = hub_put_part(http, hub_json_string(upload, "href"), op->fd, 0, op->size, NULL,
				  &pp);
	} else {
		rc = hub_malformed("an LFS upload action without href");
	}
	verify = cJSON_GetObjectItemCaseSensitive(actions, "verify");
	if (!rc && hub_json_string(verify, "href")) {
		cJSON *v = cJSON_CreateObject();

		if (!v || !cJSON_AddStringToObject(v, "oid", op->sha256) ||
		    !cJSON_AddNumberToObject(v, "size", (double)op->size)) {
			rc = -ENOMEM;
		} else {
			rc = hub_post_json(http, hub_json_string(verify, "href"),
					   "application/vnd.git-lfs+json", v, true, NULL, &resp);
			if (!rc)
				rc = http_status_errno(&resp);
			http_response_release(&resp);
		}
		cJSON_Delete(v);
	}
done:
	if (!rc)
		hub_progress_report(&prog, op->size);
out:
	cJSON_Delete(answer);
	cJSON_Delete(body);
	free(url);
	return rc;
}

/* Appends one NDJSON line {"key": KEY, "value": VALUE} (VALUE taken over). */
static int hub_ndjson_line(char **buf, size_t *len, const char *key, cJSON *value)
{
	cJSON *line = cJSON_CreateObject();
	char *text, *nbuf;
	size_t tlen;

	if (!line || !value) {
		cJSON_Delete(line);
		cJSON_Delete(value);
		return -ENOMEM;
	}
	cJSON_AddStringToObject(line, "key", key);
	cJSON_AddItemToObject(line, "value", value);
	text = cJSON_PrintUnformatted(line);
	cJSON_Delete(line);
	if (!text)
		return -ENOMEM;
	tlen = strlen(text);
	nbuf = realloc(*buf, *len + tlen + 2);
	if (!nbuf) {
		free(text);
		return -ENOMEM;
	}
	memcpy(nbuf + *len, text, tlen);
	*len += tlen;
	nbuf[(*len)++] = '\n';
	nbuf[*len] = '\0';
	*buf = nbuf;
	free(text);
	return 0;
}

static int hub_commit_op_line(char **buf, size_t *len, const struct hub_op *op)
{
	cJSON *v = cJSON_CreateObject();
	unsigned char *data;
	char *b64;
	int rc = 0;

	if (!v || !cJSON_AddStringToObject(v, "path", op->path)) {
		cJSON_Delete(v);
		return -ENOMEM;
	}
	switch (op->kind) {
	case HUB_OP_DELETE_FILE:
		return hub_ndjson_line(buf, len, "deletedFile", v);
	case HUB_OP_DELETE_FOLDER:
		return hub_ndjson_line(buf, len, "deletedFolder", v);
	case HUB_OP_ADD:
		break;
	}
	if (op->lfs || op->old_path) {
		if (!cJSON_AddStringToObject(v, "algo", "sha256") ||
		    !cJSON_AddStringToObject(v, "oid", op->sha256) ||
		    !cJSON_AddNumberToObject(v, "size", (double)op->size) ||
		    (op->old_path && !cJSON_AddStringToObject(v, "oldPath", op->old_path))) {
			cJSON_Delete(v);
			return -ENOMEM;
		}
		return hub_ndjson_line(buf, len, "lfsFile", v);
	}
	data = hub_read_fd(op->fd, 0, (size_t)op->size, &rc);
	b64 = data ? hub_base64(data, (size_t)op->size) : NULL;
	free(data);
	if (!b64 || !cJSON_AddStringToObject(v, "content", b64) ||
	    !cJSON_AddStringToObject(v, "encoding", "base64")) {
		free(b64);
		cJSON_Delete(v);
		return rc ? rc : -ENOMEM;
	}
	free(b64);
	return hub_ndjson_line(buf, len, "file", v);
}

int hub_commit(struct http_client *http, const struct hub_repo *repo, const char *rev,
	       const char *summary, const char *parent, const struct hub_op *ops, size_t n,
	       char commit[HUB_COMMIT_LEN + 1], char *why, size_t why_size)
{
	return hub_commit_described(http, repo, rev, summary, NULL, parent, ops, n, commit, why,
				    why_size);
}

int hub_commit_described(struct http_client *http, const struct hub_repo *repo, const char *rev,
			 const char *summary, const char *description, const char *parent,
			 const struct hub_op *ops, size_t n, char commit[HUB_COMMIT_LEN + 1],
			 char *why, size_t why_size)
{
	struct http_request req = {
		.method = "POST",
		.content_type = "application/x-ndjson",
		.accept = "application/json",
		.api = true,
		.max_body = HUB_JSON_MAX,
	};
	struct http_response resp;
	char *url = NULL, *body = NULL;
	cJSON *header, *answer;
	const char *oid;
	size_t len = 0;
	int rc;

	rc = hub_repo_rev_url(repo, "commit", rev, &url);
	if (rc)
		return rc;
	header = cJSON_CreateObject();
	if (!header || !cJSON_AddStringToObject(header, "summary", summary) ||
	    !cJSON_AddStringToObject(header, "description", description ? description : "") ||
	    (parent && !cJSON_AddStringToObject(header, "parentCommit", parent))) {
		cJSON_Delete(header);
		rc = -ENOMEM;
		goto out;
	}
	rc = hub_ndjson_line(&body, &len, "header", header);
	for (size_t i = 0; !rc && i < n; i++)
		rc = hub_commit_op_line(&body, &len, &ops[i]);
	if (rc)
		goto out;
	req.url = url;
	req.body = body;
	req.body_len = len;
	/* Not retried: a lost answer and a second POST would commit twice. */
	rc = http_perform(http, &req, &resp);
	if (rc)
		goto out;
	if (resp.status == 412) {
		rc = -ESTALE;
	} else if (resp.status == 400 || resp.status == 422 ||
		   (resp.status == 404 && resp.error_code &&
		    !strcmp(resp.error_code, "EntryNotFound"))) {
		/* the Hub refused what the commit does (a path that is not
		 * there, bad content), not who sends it or where */
		const char *reason;

		answer = cJSON_ParseWithLength(resp.body ? resp.body : "", resp.body_len);
		reason = hub_json_string(answer, "error") ? hub_json_string(answer, "error")
			 : resp.error_message			 ? resp.error_message
								 : "refused";
		log_msg(LOG_WARNING, "the Hub refused a commit to '%s/%s': %ld %s", repo->ns,
			repo->name, resp.status, reason);
		if (why && why_size)
			snprintf(why, why_size, "%ld %s%s%s", resp.status,
				 resp.error_code ? resp.error_code : "", resp.error_code ? ": " : "",
				 reason);
		cJSON_Delete(answer);
		rc = -EINVAL;
	} else {
		rc = http_status_errno(&resp);
	}
	if (!rc) {
		answer = cJSON_ParseWithLength(resp.body ? resp.body : "", resp.body_len);
		oid = hub_json_string(answer, "commitOid");
		if (hub_is_commit(oid))
			memcpy(commit, oid, HUB_COMMIT_LEN + 1);
		else
			rc = hub_malformed("a commit answer without commitOid");
		cJSON_Delete(answer);
	}
	http_response_release(&resp);
out:
	free(body);
	free(url);
	return rc;
}

/* ---- repos ---- */

static const char *hub_type_word(enum hub_repo_type type)
{
	return type == HUB_REPO_DATASET ? "dataset" : type == HUB_REPO_SPACE ? "space" : "model";
}

/* Sends @body (taken over) as JSON with @method to @url; maps the answer.
 * A 409 gives -EEXIST, a 400 or 422 -EINVAL (its reason logged). */
static int hub_send_json(struct http_client *http, const char *method, const char *url, cJSON *body)
{
	char *text = body ? cJSON_PrintUnformatted(body) : NULL;
	struct http_request req = {
		.method = method,
		.url = url,
		.accept = "application/json",
		.content_type = "application/json",
		.api = true,
		.max_body = 1 << 20,
	};
	struct http_response resp;
	int rc;

	cJSON_Delete(body);
	if (!text)
		return -ENOMEM;
	req.body = text;
	req.body_len = strlen(text);
	rc = http_perform(http, &req, &resp);
	free(text);
	if (rc)
		return rc;
	if (resp.status == 409) {
		rc = -EEXIST;
	} else if (resp.status == 400 || resp.status == 422) {
		cJSON *answer = cJSON_ParseWithLength(resp.body ? resp.body : "", resp.body_len);

		log_msg(LOG_WARNING, "the Hub refused %s %s: %s", method, url,
			hub_json_string(answer, "error") ? hub_json_string(answer, "error") : "400");
		cJSON_Delete(answer);
		rc = -EINVAL;
	} else {
		rc = http_status_errno(&resp);
	}
	http_response_release(&resp);
	return rc;
}

int hub_create_repo(struct http_client *http, const struct hub_repo *repo, bool private)
{
	cJSON *body;

	if (!hub_name_valid(repo->ns) || !hub_name_valid(repo->name))
		return -EINVAL;
	body = cJSON_CreateObject();
	if (!body || !cJSON_AddStringToObject(body, "name", repo->name) ||
	    !cJSON_AddStringToObject(body, "organization", repo->ns) ||
	    !cJSON_AddStringToObject(body, "type", hub_type_word(repo->type)) ||
	    !cJSON_AddStringToObject(body, "visibility", private ? "private" : "public") ||
	    /* the Hub wants a Space's SDK: a static Space runs on no hardware */
	    (repo->type == HUB_REPO_SPACE && !cJSON_AddStringToObject(body, "sdk", "static"))) {
		cJSON_Delete(body);
		return -ENOMEM;
	}
	return hub_send_json(http, "POST", "/api/repos/create", body);
}

int hub_set_private(struct http_client *http, const struct hub_repo *repo, bool private)
{
	char base[256], url[300];
	cJSON *body;
	int rc = hub_repo_api(repo, base, sizeof(base));

	if (rc)
		return rc;
	snprintf(url, sizeof(url), "%s/settings", base);
	body = cJSON_CreateObject();
	if (!body || !cJSON_AddStringToObject(body, "visibility", private ? "private" : "public")) {
		cJSON_Delete(body);
		return -ENOMEM;
	}
	return hub_send_json(http, "PUT", url, body);
}

int hub_validate_yaml(struct http_client *http, enum hub_repo_type type, const char *content,
		      char **reason)
{
	cJSON *body = cJSON_CreateObject(), *answer = NULL;
	struct http_response resp;
	const cJSON *errors;
	int rc;

	if (reason)
		*reason = NULL;
	if (!body || !cJSON_AddStringToObject(body, "content", content) ||
	    !cJSON_AddStringToObject(body, "repoType", hub_type_word(type))) {
		cJSON_Delete(body);
		return -ENOMEM;
	}
	rc = hub_post_json(http, "/api/validate-yaml", "application/json", body, true, NULL, &resp);
	cJSON_Delete(body);
	if (rc)
		goto out;
	if (resp.status == 400 || resp.status == 422) {
		answer = cJSON_ParseWithLength(resp.body ? resp.body : "", resp.body_len);
		errors = cJSON_GetObjectItemCaseSensitive(answer, "errors");
		if (reason) {
			const char *msg = hub_json_string(cJSON_GetArrayItem(errors, 0), "message");

			*reason = strdup(msg ? msg : "invalid card metadata");
		}
		rc = -EINVAL;
	} else {
		rc = http_status_errno(&resp);
	}
out:
	cJSON_Delete(answer);
	http_response_release(&resp);
	return rc;
}

char *hub_tree_cache_json(const struct hub_tree_file *files, size_t n)
{
	cJSON *root = cJSON_CreateObject(), *all, *file;
	char *text = NULL;

	if (!root || !cJSON_AddNumberToObject(root, "format_version", 1))
		goto out;
	all = cJSON_AddObjectToObject(root, "files");
	if (!all)
		goto out;
	for (size_t i = 0; i < n; i++) {
		const struct hub_tree_file *f = &files[i];

		file = cJSON_AddObjectToObject(all, f->path);
		if (!file || !cJSON_AddNumberToObject(file, "size", (double)f->size) ||
		    !cJSON_AddStringToObject(file, "blob_id", f->oid))
			goto out;
		if (f->sha256[0] && (!cJSON_AddStringToObject(file, "lfs_sha256", f->sha256) ||
				     !cJSON_AddNumberToObject(file, "lfs_size", (double)f->size)))
			goto out;
	}
	text = cJSON_PrintUnformatted(root);
out:
	cJSON_Delete(root);
	return text;
}

/* ---- history and branches ---- */

/* Longest title, message and author name kept from a commit listing. */
#define HUB_COMMIT_TEXT_MAX (64 * 1024)
/* Most authors kept per commit. */
#define HUB_COMMIT_AUTHORS_MAX 16

struct hub_commits_page {
	hub_commit_fn fn;
	void *arg;
	int stop; /* the callback's non-zero answer */
};

/* A string field of a commit, "" when absent or too long to be real. */
static const char *hub_commit_text(const cJSON *obj, const char *key)
{
	const char *v = hub_json_string(obj, key);

	return v && strlen(v) <= HUB_COMMIT_TEXT_MAX ? v : "";
}

static int hub_commits_page(void *arg, const cJSON *array)
{
	struct hub_commits_page *p = arg;
	const cJSON *item;
	int rc;

	cJSON_ArrayForEach(item, array)
	{
		const char *authors[HUB_COMMIT_AUTHORS_MAX], *id = hub_json_string(item, "id");
		const cJSON *list = cJSON_GetObjectItemCaseSensitive(item, "authors"), *a;
		struct hub_commit_info c = { 0 };

		if (!hub_is_commit(id) || strlen(id) != HUB_COMMIT_LEN)
			return hub_malformed("a commit without a valid id");
		memcpy(c.id, id, sizeof(c.id));
		c.title = hub_commit_text(item, "title");
		c.message = hub_commit_text(item, "message");
		c.date = hub_commit_text(item, "date");
		c.time = hub_parse_time(c.date);
		cJSON_ArrayForEach(a, list)
		{
			const char *user = hub_commit_text(a, "user");

			if (*user && c.nauthors < HUB_COMMIT_AUTHORS_MAX)
				authors[c.nauthors++] = user;
		}
		c.authors = authors;
		rc = p->fn(p->arg, &c);
		if (rc) {
			p->stop = rc;
			return rc;
		}
	}
	/* the end of a page: the caller may wait before the next one */
	rc = p->fn(p->arg, NULL);
	if (rc)
		p->stop = rc;
	return rc;
}

int hub_list_commits(struct http_client *http, const struct hub_repo *repo, const char *rev,
		     unsigned limit, hub_commit_fn fn, void *arg)
{
	struct hub_commits_page page = { .fn = fn, .arg = arg };
	char *base = NULL, *url = NULL;
	int rc = hub_repo_rev_url(repo, "commits", rev, &base);

	if (rc)
		return rc;
	if (asprintf(&url, "%s?limit=%u", base, limit ? limit : 100) < 0)
		url = NULL;
	free(base);
	rc = hub_each_page(http, url, "commit listing is not an array", hub_commits_page, &page);
	if (page.stop > 0)
		return 0;
	return rc;
}

char *hub_commit_json(const struct hub_commit_info *c)
{
	cJSON *o = cJSON_CreateObject(), *authors = cJSON_CreateArray();
	char *text = NULL;

	if (!o || !authors)
		goto out;
	for (size_t i = 0; i < c->nauthors; i++) {
		cJSON *a = cJSON_CreateString(c->authors[i]);

		if (!a || !cJSON_AddItemToArray(authors, a)) {
			cJSON_Delete(a);
			goto out;
		}
	}
	if (!cJSON_AddStringToObject(o, "id", c->id) ||
	    !cJSON_AddStringToObject(o, "date", c->date) ||
	    !cJSON_AddItemToObject(o, "authors", authors))
		goto out;
	authors = NULL;
	if (!cJSON_AddStringToObject(o, "title", c->title) ||
	    !cJSON_AddStringToObject(o, "message", c->message))
		goto out;
	text = cJSON_PrintUnformatted(o);
out:
	cJSON_Delete(authors);
	cJSON_Delete(o);
	return text;
}

int hub_last_commit(struct http_client *http, const struct hub_repo *repo, const char *commit,
		    const char *path, char last[HUB_COMMIT_LEN + 1])
{
	struct http_response resp;
	cJSON *body, *paths, *answer = NULL;
	const cJSON *item;
	char *url = NULL;
	int rc;

	memset(&resp, 0, sizeof(resp));
	rc = hub_repo_rev_url(repo, "paths-info", commit, &url);
	if (rc)
		return rc;
	body = cJSON_CreateObject();
	paths = cJSON_AddArrayToObject(body, "paths");
	if (!paths || !cJSON_AddItemToArray(paths, cJSON_CreateString(path)) ||
	    !cJSON_AddBoolToObject(body, "expand", true))
		rc = -ENOMEM;
	if (!rc)
		rc = hub_post_json(http, url, "application/json", body, true, NULL, &resp);
	cJSON_Delete(body);
	free(url);
	if (rc) {
		http_response_release(&resp);
		return rc;
	}
	rc = http_status_errno(&resp);
	if (!rc) {
		answer = cJSON_ParseWithLength(resp.body ? resp.body : "", resp.body_len);
		rc = -ENOENT; /* a path the commit does not have is left out */
		cJSON_ArrayForEach(item, answer)
		{
			const cJSON *lc = cJSON_GetObjectItemCaseSensitive(item, "lastCommit");
			const char *p = hub_json_string(item, "path"), *id = hub_json_string(lc, "id");

			if (!p || strcmp(p, path))
				continue;
			if (!hub_is_commit(id) || strlen(id) != HUB_COMMIT_LEN) {
				rc = hub_malformed("paths-info: no valid lastCommit");
				break;
			}
			memcpy(last, id, HUB_COMMIT_LEN + 1);
			rc = 0;
			break;
		}
		if (!cJSON_IsArray(answer))
			rc = hub_malformed("paths-info is not an array");
		cJSON_Delete(answer);
	}
	http_response_release(&resp);
	return rc;
}

int hub_create_branch(struct http_client *http, const struct hub_repo *repo, const char *branch)
{
	char *url = NULL;
	cJSON *body;
	int rc;

	if (!hub_revision_valid(branch))
		return -EINVAL;
	rc = hub_repo_rev_url(repo, "branch", branch, &url);
	if (rc)
		return rc == -ENOENT ? -EINVAL : rc;
	/* no startingPoint: the Hub starts it at the default branch's head */
	body = cJSON_CreateObject();
	rc = body ? hub_send_json(http, "POST", url, body) : -ENOMEM;
	free(url);
	return rc;
}
