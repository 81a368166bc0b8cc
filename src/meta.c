/*
 * Metadata with a TTL over the cache index.  See meta.h for the rules.
 *
 * Facts are kept in the cache's key/value store under keys such as
 * "rev:model/alice/tiny@main", with the time they were fetched; trees are kept
 * per commit in the cache's tree tables under "model/alice/tiny@<commit>".
 * Values are small text records (names cannot hold spaces or newlines, so
 * these separate fields safely).
 *
 * Single flight: a fact being fetched has an entry in m->flights (protected
 * by m->lock); others asking for it wait on m->cond and then read the cache.
 * m->lock is never held across a request or a cache call.
 */
#include "config.h"

#include "meta.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"

struct meta_flight {
	char *key;
	struct meta_flight *next;
};

struct meta {
	char *scope;                 /* "ENDPOINT|IDENTITY": what facts depend on */
	char *tree_scope;            /* "ENDPOINT": what trees depend on */
	struct http_client *http;
	struct cache *cache;
	int ttl;
	bool offline_mode;           /* --offline */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct meta_flight *flights; /* protected by lock */
	bool offline;                /* protected by lock: the Hub was unreachable */
	int64_t offline_since;       /* protected by lock: when that was found */
};

#define META_KEY_MAX 1024

struct meta *meta_new(const struct meta_config *cfg, int *err)
{
	struct meta *m = calloc(1, sizeof(*m));

	if (!m) {
		*err = -ENOMEM;
		return NULL;
	}
	if (asprintf(&m->scope, "%s|%s", cfg->endpoint, cfg->identity) < 0)
		m->scope = NULL;
	m->tree_scope = strdup(cfg->endpoint);
	if (!m->scope || !m->tree_scope) {
		free(m->scope);
		free(m->tree_scope);
		free(m);
		*err = -ENOMEM;
		return NULL;
	}
	m->http = cfg->http;
	m->cache = cfg->cache;
	m->ttl = cfg->ttl;
	m->offline_mode = cfg->offline;
	m->offline = cfg->offline;
	pthread_mutex_init(&m->lock, NULL);
	pthread_cond_init(&m->cond, NULL);
	return m;
}

void meta_free(struct meta *m)
{
	if (!m)
		return;
	pthread_mutex_destroy(&m->lock);
	pthread_cond_destroy(&m->cond);
	free(m->scope);
	free(m->tree_scope);
	free(m);
}

bool meta_offline(struct meta *m)
{
	bool off;

	pthread_mutex_lock(&m->lock);
	off = m->offline;
	pthread_mutex_unlock(&m->lock);
	return off;
}

static int64_t meta_now(void)
{
	return (int64_t)time(NULL);
}

/* Whether an error means the Hub could not be reached at all. */
static bool meta_unreachable(int rc)
{
	return rc == -ECONNREFUSED || rc == -EHOSTUNREACH || rc == -ETIMEDOUT ||
	       rc == -ECONNRESET || rc == -ENETUNREACH;
}

static void meta_note_reachability(struct meta *m, int rc)
{
	bool unreachable = meta_unreachable(rc), changed;

	if (m->offline_mode)
		return;
	pthread_mutex_lock(&m->lock);
	changed = m->offline != unreachable;
	m->offline = unreachable;
	if (unreachable)
		m->offline_since = meta_now();
	pthread_mutex_unlock(&m->lock);
	if (changed)
		log_msg(unreachable ? LOG_WARNING : LOG_NOTICE,
			unreachable ? "offline: the Hub cannot be reached (%s); serving what is cached"
				    : "online: the Hub answers again%s",
			unreachable ? strerror(-rc) : "");
}

/* While the Hub is found unreachable, stale facts are served without asking
 * it again, for a TTL; then one request probes it. */
static bool meta_skip_network(struct meta *m)
{
	bool skip;

	pthread_mutex_lock(&m->lock);
	skip = m->offline && meta_now() - m->offline_since < m->ttl;
	pthread_mutex_unlock(&m->lock);
	return skip;
}

/* Single flight.  Returns true if the caller must fetch @key (and then call
 * meta_flight_end()), false if another thread just fetched it. */
static bool meta_flight_begin(struct meta *m, const char *key)
{
	struct meta_flight *f;
	bool waited = false;

	pthread_mutex_lock(&m->lock);
	for (;;) {
		for (f = m->flights; f; f = f->next)
			if (!strcmp(f->key, key))
				break;
		if (!f)
			break;
		waited = true;
		pthread_cond_wait(&m->cond, &m->lock);
	}
	if (!waited) {
		f = malloc(sizeof(*f));
		if (f && (f->key = strdup(key))) {
			f->next = m->flights;
			m->flights = f;
		} else {
			free(f);
		}
	}
	pthread_mutex_unlock(&m->lock);
	return !waited;
}

static void meta_flight_end(struct meta *m, const char *key)
{
	struct meta_flight **pf, *f;

	pthread_mutex_lock(&m->lock);
	for (pf = &m->flights; (f = *pf); pf = &f->next) {
		if (!strcmp(f->key, key)) {
			*pf = f->next;
			free(f->key);
			free(f);
			break;
		}
	}
	pthread_cond_broadcast(&m->cond);
	pthread_mutex_unlock(&m->lock);
}

/* A cached fact: its value (NUL-terminated, caller frees) and whether it is
 * fresh.  Returns 0, -ENOENT when absent. */
/* How long a positive fact stays fresh (negative ones: always the TTL). */
enum meta_life {
	META_TTL,     /* --ttl */
	META_LONG,    /* an hour: facts that almost never change (a namespace exists) */
	META_FOREVER, /* immutable facts (a commit id's commit) */
};

#define META_LONG_SECONDS 3600

static int meta_get(struct meta *m, const char *key, char **val, bool *fresh, enum meta_life life)
{
	char full[2 * META_KEY_MAX];
	void *v = NULL;
	size_t len = 0;
	int64_t at = 0;
	char *s;
	int rc;

	snprintf(full, sizeof(full), "%s %s", m->scope, key);
	rc = cache_kv_get(m->cache, full, &v, &len, &at);
	if (rc)
		return rc;
	s = realloc(v, len + 1);
	if (!s) {
		free(v);
		return -ENOMEM;
	}
	s[len] = '\0';
	*val = s;
	if (!strcmp(s, "-") || life == META_TTL)
		*fresh = meta_now() - at < m->ttl;
	else
		*fresh = life == META_FOREVER || meta_now() - at < META_LONG_SECONDS;
	return 0;
}

static int meta_put(struct meta *m, const char *key, const char *val)
{
	char full[2 * META_KEY_MAX];
	int rc;

	snprintf(full, sizeof(full), "%s %s", m->scope, key);
	rc = cache_kv_put(m->cache, full, val, strlen(val), meta_now());
	if (rc)
		log_msg(LOG_WARNING, "cannot record '%s' in the cache index: %s", key, strerror(-rc));
	return rc;
}

/*
 * The common shape of every cached fact: fresh → use it; else fetch (single
 * flight) → store; fetch failed because the Hub is unreachable → use the stale
 * value.  A negative answer is stored as the value "-".
 * @fetch writes the value to *@out (malloc'd) and returns 0 or -errno.
 */
typedef int (*meta_fetch_fn)(struct meta *m, const void *arg, char **out);

static int meta_fact(struct meta *m, const char *key, enum meta_life life, meta_fetch_fn fetch,
		     const void *arg, char **val)
{
	char *cached = NULL;
	bool fresh = false, mine;
	int rc;

	*val = NULL;
	for (int round = 0; round < 2; round++) {
		rc = meta_get(m, key, &cached, &fresh, life);
		if (rc == 0 && (fresh || m->offline_mode || meta_skip_network(m)))
			goto cached;
		if (rc && rc != -ENOENT)
			return rc;
		if (m->offline_mode) {
			log_msg(LOG_INFO, "offline: '%s' was never fetched", key);
			return -EIO;
		}
		if (round == 0) {
			mine = meta_flight_begin(m, key);
			if (!mine) {
				free(cached);
				cached = NULL;
				continue; /* another thread fetched it: read the cache again */
			}
			break;
		}
	}
	rc = fetch(m, arg, val);
	meta_note_reachability(m, rc);
	if (rc == 0) {
		meta_put(m, key, *val);
	} else if (rc == -ENOENT) {
		meta_put(m, key, "-");
	} else if ((meta_unreachable(rc) || rc == -EIO) && cached) {
		meta_flight_end(m, key);
		goto cached;
	}
	meta_flight_end(m, key);
	free(cached);
	if (rc == 0 && !strcmp(*val, "-")) {
		free(*val);
		*val = NULL;
		return -ENOENT;
	}
	if (rc && meta_unreachable(rc))
		rc = -EIO;
	return rc;
cached:
	if (!strcmp(cached, "-")) {
		free(cached);
		return -ENOENT;
	}
	*val = cached;
	return 0;
}

static const char *meta_type_name(enum hub_repo_type type)
{
	switch (type) {
	case HUB_REPO_DATASET:
		return "dataset";
	case HUB_REPO_SPACE:
		return "space";
	case HUB_REPO_MODEL:
		break;
	}
	return "model";
}

/* ---- whoami ---- */

static int meta_fetch_whoami(struct meta *m, const void *arg, char **out)
{
	struct hub_whoami w;
	size_t len = 0;
	char *s;
	int rc;

	(void)arg;
	rc = hub_whoami(m->http, &w);
	if (rc)
		return rc == -ENOENT ? -EACCES : rc;
	len = strlen(w.name) + 2;
	for (size_t i = 0; i < w.n_orgs; i++)
		len += strlen(w.orgs[i]) + 1;
	s = malloc(len);
	if (!s) {
		hub_whoami_release(&w);
		return -ENOMEM;
	}
	strcpy(s, w.name);
	for (size_t i = 0; i < w.n_orgs; i++) {
		strcat(s, " ");
		strcat(s, w.orgs[i]);
	}
	hub_whoami_release(&w);
	*out = s;
	return 0;
}

/* Splits "a b c" into names. */
static int meta_split(const char *val, const char *sep, struct hub_names *out)
{
	char *copy = strdup(val), *save = NULL, *tok;
	size_t cap = 0;

	memset(out, 0, sizeof(*out));
	if (!copy)
		return -ENOMEM;
	for (tok = strtok_r(copy, sep, &save); tok; tok = strtok_r(NULL, sep, &save)) {
		if (out->n == cap) {
			size_t ncap = cap ? 2 * cap : 16;
			char **n = realloc(out->names, ncap * sizeof(char *));

			if (!n)
				goto nomem;
			out->names = n;
			cap = ncap;
		}
		if (!(out->names[out->n] = strdup(tok)))
			goto nomem;
		out->n++;
	}
	free(copy);
	return 0;
nomem:
	free(copy);
	hub_names_release(out);
	return -ENOMEM;
}

int meta_whoami(struct meta *m, struct hub_whoami *out)
{
	struct hub_names names;
	char *val;
	int rc;

	memset(out, 0, sizeof(*out));
	if (!http_client_has_token(m->http))
		return -ENOENT;
	/* Asked again after a TTL: a mount checks that its token still works. */
	rc = meta_fact(m, "whoami", META_TTL, meta_fetch_whoami, NULL, &val);
	if (rc)
		return rc == -ENOENT ? -EACCES : rc;
	rc = meta_split(val, " ", &names);
	free(val);
	if (rc)
		return rc;
	if (names.n == 0) {
		hub_names_release(&names);
		return -EIO;
	}
	out->name = names.names[0];
	out->orgs = names.names;
	out->n_orgs = names.n - 1;
	memmove(out->orgs, out->orgs + 1, out->n_orgs * sizeof(char *));
	return 0;
}

/* ---- namespaces and repos ---- */

static int meta_fetch_namespace(struct meta *m, const void *arg, char **out)
{
	int rc = hub_namespace_exists(m->http, arg);

	if (rc)
		return rc;
	*out = strdup("1");
	return *out ? 0 : -ENOMEM;
}

static void meta_remember_namespace(struct meta *m, const char *ns)
{
	char *val = NULL, *line, *nval;
	bool fresh;

	pthread_mutex_lock(&m->lock);
	if (meta_get(m, "seen-namespaces", &val, &fresh, META_FOREVER) == 0) {
		for (line = val; line && *line;) {
			size_t n = strcspn(line, "\n");

			if (n == strlen(ns) && !strncmp(line, ns, n))
				goto out;
			line += n;
			line += *line == '\n';
		}
	}
	if (asprintf(&nval, "%s%s\n", val ? val : "", ns) >= 0) {
		meta_put(m, "seen-namespaces", nval);
		free(nval);
	}
out:
	pthread_mutex_unlock(&m->lock);
	free(val);
}

int meta_namespace(struct meta *m, const char *ns)
{
	char key[META_KEY_MAX], *val;
	int rc;

	if (!hub_name_valid(ns))
		return -ENOENT;
	snprintf(key, sizeof(key), "ns:%s", ns);
	rc = meta_fact(m, key, META_LONG, meta_fetch_namespace, ns, &val);
	if (rc)
		return rc;
	free(val);
	meta_remember_namespace(m, ns);
	return 0;
}

int meta_seen_namespaces(struct meta *m, struct hub_names *out)
{
	char *val = NULL;
	bool fresh;
	int rc;

	memset(out, 0, sizeof(*out));
	rc = meta_get(m, "seen-namespaces", &val, &fresh, META_FOREVER);
	if (rc == -ENOENT)
		return 0;
	if (rc)
		return rc;
	rc = meta_split(val, "\n", out);
	free(val);
	return rc;
}

struct meta_repos_arg {
	enum hub_repo_type type;
	const char *ns;
};

static int meta_join(const struct hub_names *names, char **out)
{
	size_t len = 1;
	char *s;

	for (size_t i = 0; i < names->n; i++)
		len += strlen(names->names[i]) + 1;
	s = malloc(len);
	if (!s)
		return -ENOMEM;
	*s = '\0';
	for (size_t i = 0, off = 0; i < names->n; i++) {
		size_t n = strlen(names->names[i]);

		memcpy(s + off, names->names[i], n);
		off += n;
		s[off++] = '\n';
		s[off] = '\0';
	}
	*out = s;
	return 0;
}

static int meta_fetch_repos(struct meta *m, const void *arg, char **out)
{
	const struct meta_repos_arg *a = arg;
	struct hub_names names;
	int rc = hub_list_repos(m->http, a->type, a->ns, &names);

	if (rc)
		return rc;
	rc = meta_join(&names, out);
	hub_names_release(&names);
	/* An empty list must not read as a negative answer. */
	if (!rc && !**out) {
		free(*out);
		*out = strdup("\n");
		rc = *out ? 0 : -ENOMEM;
	}
	return rc;
}

int meta_repos(struct meta *m, enum hub_repo_type type, const char *ns, struct hub_names *out)
{
	struct meta_repos_arg a = { type, ns };
	char key[META_KEY_MAX], *val;
	int rc;

	memset(out, 0, sizeof(*out));
	rc = meta_namespace(m, ns);
	if (rc)
		return rc;
	snprintf(key, sizeof(key), "repos:%s/%s", meta_type_name(type), ns);
	rc = meta_fact(m, key, META_TTL, meta_fetch_repos, &a, &val);
	if (rc)
		return rc;
	rc = meta_split(val, "\n", out);
	free(val);
	return rc;
}

/* ---- refs and revisions ---- */

static int meta_fetch_refs(struct meta *m, const void *arg, char **out)
{
	struct hub_refs refs;
	size_t len = 2;
	char *s;
	int rc = hub_list_refs(m->http, arg, &refs);

	if (rc)
		return rc;
	for (size_t i = 0; i < refs.n; i++)
		len += strlen(refs.refs[i].name) + HUB_COMMIT_LEN + 5;
	s = malloc(len);
	if (!s) {
		hub_refs_release(&refs);
		return -ENOMEM;
	}
	strcpy(s, "\n");
	for (size_t i = 0, off = 1; i < refs.n; i++)
		off += (size_t)sprintf(s + off, "%d %s %s\n", (int)refs.refs[i].kind,
				       refs.refs[i].commit, refs.refs[i].name);
	hub_refs_release(&refs);
	*out = s;
	return 0;
}

int meta_refs(struct meta *m, const struct hub_repo *repo, struct hub_refs *out)
{
	char key[META_KEY_MAX], *val, *line, *save = NULL;
	size_t cap = 0;
	int rc;

	memset(out, 0, sizeof(*out));
	snprintf(key, sizeof(key), "refs:%s/%s/%s", meta_type_name(repo->type), repo->ns, repo->name);
	rc = meta_fact(m, key, META_TTL, meta_fetch_refs, repo, &val);
	if (rc)
		return rc;
	for (line = strtok_r(val, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		int kind;
		char commit[HUB_COMMIT_LEN + 1];
		int n = 0;

		if (sscanf(line, "%d %40s %n", &kind, commit, &n) != 2 || n == 0)
			continue;
		if (out->n == cap) {
			size_t ncap = cap ? 2 * cap : 16;
			struct hub_ref *r = realloc(out->refs, ncap * sizeof(*r));

			if (!r) {
				rc = -ENOMEM;
				break;
			}
			out->refs = r;
			cap = ncap;
		}
		out->refs[out->n].kind = (enum hub_ref_kind)kind;
		memcpy(out->refs[out->n].commit, commit, sizeof(commit));
		out->refs[out->n].name = strdup(line + n);
		if (!out->refs[out->n].name) {
			rc = -ENOMEM;
			break;
		}
		out->n++;
	}
	free(val);
	if (rc)
		hub_refs_release(out);
	return rc;
}

struct meta_rev_arg {
	const struct hub_repo *repo;
	const char *rev;
};

static int meta_fetch_revision(struct meta *m, const void *arg, char **out)
{
	const struct meta_rev_arg *a = arg;
	struct hub_revision r;
	int rc = hub_resolve(m->http, a->repo, a->rev, &r);

	if (rc)
		return rc;
	if (asprintf(out, "%s %lld %d", r.commit, (long long)r.mtime, r.private) < 0)
		return -ENOMEM;
	return 0;
}

int meta_revision(struct meta *m, const struct hub_repo *repo, const char *rev,
		  struct hub_revision *out)
{
	struct meta_rev_arg a = { repo, rev };
	char key[META_KEY_MAX], *val;
	long long mtime;
	int priv, rc;
	/* A commit id names the same commit forever. */
	enum meta_life life = hub_commit_id_valid(rev, true) ? META_FOREVER : META_TTL;

	memset(out, 0, sizeof(*out));
	if (!hub_revision_valid(rev))
		return -ENOENT;
	snprintf(key, sizeof(key), "rev:%s/%s/%s@%s", meta_type_name(repo->type), repo->ns,
		 repo->name, rev);
	rc = meta_fact(m, key, life, meta_fetch_revision, &a, &val);
	if (rc)
		return rc;
	if (sscanf(val, "%40s %lld %d", out->commit, &mtime, &priv) != 3 ||
	    !hub_commit_id_valid(out->commit, false)) {
		free(val);
		return -EIO;
	}
	out->mtime = mtime;
	out->private = priv != 0;
	free(val);
	return 0;
}

void meta_forget_revision(struct meta *m, const struct hub_repo *repo, const char *rev)
{
	char key[META_KEY_MAX], full[2 * META_KEY_MAX];

	snprintf(key, sizeof(key), "rev:%s/%s/%s@%s", meta_type_name(repo->type), repo->ns,
		 repo->name, rev);
	snprintf(full, sizeof(full), "%s %s", m->scope, key);
	cache_kv_delete(m->cache, full);
	snprintf(key, sizeof(key), "refs:%s/%s/%s", meta_type_name(repo->type), repo->ns,
		 repo->name);
	snprintf(full, sizeof(full), "%s %s", m->scope, key);
	cache_kv_delete(m->cache, full);
}

void meta_forget_repo(struct meta *m, const struct hub_repo *repo)
{
	char key[META_KEY_MAX], full[2 * META_KEY_MAX];

	meta_forget_revision(m, repo, "main");
	snprintf(key, sizeof(key), "repos:%s/%s", meta_type_name(repo->type), repo->ns);
	snprintf(full, sizeof(full), "%s %s", m->scope, key);
	cache_kv_delete(m->cache, full);
}

/* ---- trees ---- */

struct meta_tree_acc {
	struct cache_entry *entries;
	size_t n, cap;
	char *names; /* all paths, one allocation per page */
	char **pages;
	size_t n_pages;
	const char *dir;
};

static int meta_tree_page(void *arg, const struct hub_entry *entries, size_t n)
{
	struct meta_tree_acc *acc = arg;
	size_t dlen = strlen(acc->dir);

	for (size_t i = 0; i < n; i++) {
		struct cache_entry *e;
		char *path;

		if (acc->n == acc->cap) {
			size_t ncap = acc->cap ? 2 * acc->cap : 256;
			struct cache_entry *ne = realloc(acc->entries, ncap * sizeof(*ne));

			if (!ne)
				return -ENOMEM;
			acc->entries = ne;
			acc->cap = ncap;
		}
		if (asprintf(&path, "%s%s%s", acc->dir, dlen ? "/" : "", entries[i].name) < 0)
			return -ENOMEM;
		e = &acc->entries[acc->n++];
		memset(e, 0, sizeof(*e));
		e->path = path;
		e->is_dir = entries[i].is_dir;
		e->size = entries[i].size;
		memcpy(e->oid, entries[i].oid, sizeof(e->oid));
		memcpy(e->sha256, entries[i].sha256, sizeof(e->sha256));
	}
	return 0;
}

static void meta_tree_key(struct meta *m, const struct hub_repo *repo, const char *commit, char *key,
			  size_t size)
{
	snprintf(key, size, "%s %s/%s/%s@%s", m->tree_scope, meta_type_name(repo->type), repo->ns,
		 repo->name, commit);
}

/* Lists @dir of the tree from the Hub into the cache index, unless another
 * thread just did. */
static int meta_fetch_dir(struct meta *m, const struct hub_repo *repo, const char *commit,
			  const char *tree_key, const char *dir)
{
	struct meta_tree_acc acc = { .dir = dir };
	char flight[3 * META_KEY_MAX + HUB_PATH_MAX], scope[META_KEY_MAX];
	struct cache_entry e;
	int rc;

	/* A directory whose tree id was listed before, in any commit of any
	 * repo of this endpoint, has that listing: no request. */
	if (*dir && cache_tree_lookup(m->cache, tree_key, dir, &e) == 0) {
		rc = -ENOENT;
		snprintf(scope, sizeof(scope), "%s ", m->tree_scope);
		if (e.is_dir && e.oid[0])
			rc = cache_tree_adopt(m->cache, tree_key, dir, e.oid, scope);
		cache_entry_release(&e);
		if (rc == 0)
			return 0;
	}
	if (m->offline_mode) {
		log_msg(LOG_INFO, "offline: '%s' of '%s' was never listed", dir, tree_key);
		return -EIO;
	}
	snprintf(flight, sizeof(flight), "tree:%s:%s", tree_key, dir);
	if (!meta_flight_begin(m, flight))
		return 0;
	rc = hub_list_tree(m->http, repo, commit, dir, meta_tree_page, &acc);
	meta_note_reachability(m, rc);
	if (rc == 0)
		rc = cache_tree_put(m->cache, tree_key, dir, acc.entries, acc.n, CACHE_TREE_COMPLETE);
	meta_flight_end(m, flight);
	for (size_t i = 0; i < acc.n; i++)
		free(acc.entries[i].path);
	free(acc.entries);
	if (meta_unreachable(rc))
		rc = -EIO;
	return rc;
}

int meta_lookup(struct meta *m, const struct hub_repo *repo, const char *commit, const char *path,
		struct cache_entry *out)
{
	char key[2 * META_KEY_MAX], *parent;
	const char *slash;
	int rc;

	memset(out, 0, sizeof(*out));
	if (!*path) {
		out->is_dir = true;
		return 0;
	}
	if (!hub_repo_path_valid(path))
		return -ENOENT;
	meta_tree_key(m, repo, commit, key, sizeof(key));
	for (int round = 0; round < 2; round++) {
		rc = cache_tree_lookup(m->cache, key, path, out);
		if (rc != -ENODATA)
			break;
		if (round == 1) {
			rc = -EIO;
			break;
		}
		slash = strrchr(path, '/');
		parent = strndup(path, slash ? (size_t)(slash - path) : 0);
		if (!parent)
			return -ENOMEM;
		rc = meta_fetch_dir(m, repo, commit, key, parent);
		free(parent);
		if (rc)
			break;
	}
	if (rc == 0) {
		free(out->path);
		out->path = NULL;
	}
	return rc;
}

int meta_list_cached(struct meta *m, const struct hub_repo *repo, const char *commit,
		     const char *dir, cache_tree_fn fn, void *arg)
{
	char key[2 * META_KEY_MAX];

	meta_tree_key(m, repo, commit, key, sizeof(key));
	return cache_tree_list(m->cache, key, dir, fn, arg);
}

int meta_list(struct meta *m, const struct hub_repo *repo, const char *commit, const char *dir,
	      cache_tree_fn fn, void *arg)
{
	char key[2 * META_KEY_MAX];
	int rc;

	meta_tree_key(m, repo, commit, key, sizeof(key));
	for (int round = 0; round < 2; round++) {
		rc = cache_tree_list(m->cache, key, dir, fn, arg);
		if (rc != -ENODATA)
			return rc;
		if (round == 1)
			return -EIO;
		rc = meta_fetch_dir(m, repo, commit, key, dir);
		if (rc)
			return rc;
	}
	return rc;
}
