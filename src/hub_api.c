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
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

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
	static const char *const kinds[] = { "users", "organizations" };
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
	char base[256];
	char *enc, *url = NULL;
	const char *sha;
	const cJSON *priv;
	cJSON *json;
	int rc;

	memset(out, 0, sizeof(*out));
	rc = hub_repo_api(repo, base, sizeof(base));
	if (rc)
		return rc;
	if (!hub_revision_valid(rev))
		return -ENOENT;
	enc = hub_revision_encode(rev);
	if (!enc)
		return -ENOMEM;
	if (asprintf(&url, "%s/revision/%s?expand=sha&expand=lastModified&expand=private", base, enc) < 0)
		url = NULL;
	free(enc);
	if (!url)
		return -ENOMEM;
	rc = hub_get_json(http, url, &json, &resp, false);
	free(url);
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

/* Checks one tree entry of a listing of @dir and fills @e. */
static int hub_tree_entry(const cJSON *item, const char *dir, struct hub_entry *e)
{
	const char *type = hub_json_string(item, "type");
	const char *path = hub_json_string(item, "path");
	const char *oid = hub_json_string(item, "oid");
	const cJSON *size = cJSON_GetObjectItemCaseSensitive(item, "size");
	const cJSON *lfs = cJSON_GetObjectItemCaseSensitive(item, "lfs");
	size_t dlen = strlen(dir);
	const char *name;

	memset(e, 0, sizeof(*e));
	if (!type || !path || !oid)
		return hub_malformed("tree entry without type, path or oid");
	if (dlen && (strncmp(path, dir, dlen) || path[dlen] != '/'))
		return hub_malformed("tree entry outside the listed directory");
	name = dlen ? path + dlen + 1 : path;
	if (!*name || strchr(name, '/') || !hub_repo_path_valid(name))
		return hub_malformed("tree entry with an invalid name");
	if (!hub_is_commit(oid))
		return hub_malformed("tree entry with an invalid oid");
	e->name = name;
	memcpy(e->oid, oid, HUB_COMMIT_LEN + 1);
	if (!strcmp(type, "directory")) {
		e->is_dir = true;
		return 0;
	}
	if (strcmp(type, "file"))
		return 1; /* unknown kinds are skipped */
	if (cJSON_IsNumber(size) && size->valuedouble >= 0 && size->valuedouble < 9.0e18)
		e->size = (uint64_t)size->valuedouble;
	if (cJSON_IsObject(lfs)) {
		const char *sha = hub_json_string(lfs, "oid");
		const cJSON *lsize = cJSON_GetObjectItemCaseSensitive(lfs, "size");

		if (!sha || strlen(sha) != 64 || strspn(sha, "0123456789abcdef") != 64)
			return hub_malformed("tree entry with an invalid LFS oid");
		memcpy(e->sha256, sha, 65);
		if (cJSON_IsNumber(lsize) && lsize->valuedouble >= 0 && lsize->valuedouble < 9.0e18)
			e->size = (uint64_t)lsize->valuedouble;
	}
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
