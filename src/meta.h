/*
 * Metadata: what exists on the Hub, answered from the cache index when it can
 * be, from the Hub when it must be.
 *
 * Consistency rules (the ones man/hubfs.1 promises):
 * - a commit's tree never changes: each directory of it is listed once, ever,
 *   and kept in the cache index;
 * - a full commit id resolves to itself after one check, forever; a short id
 *   resolves once, forever;
 * - branches, tags, refs, repo lists and namespaces are re-checked at most
 *   every ttl seconds; a negative answer is kept for ttl seconds too;
 * - when the Hub cannot be reached (or the mount is offline), what was seen
 *   before is served whatever its age; what was never seen fails with -EIO,
 *   or -ENOENT where the cache knows it does not exist.
 * Concurrent requests for the same fact are merged: one asks, the others wait
 * for its answer (single flight).
 *
 * Thread safety: every function may be called from any thread.
 */
#ifndef HUBFS_META_H
#define HUBFS_META_H

#include <stdbool.h>
#include <stdint.h>

#include "cache.h"
#include "hub_api.h"

struct meta_config {
	/* Facts are kept per endpoint and identity (a fingerprint of the token,
	 * never the token): another token may see other repos. */
	const char *endpoint;
	const char *identity;
	struct http_client *http; /* borrowed */
	struct cache *cache;      /* borrowed */
	int ttl;                  /* seconds */
	bool offline;             /* never ask the Hub */
};

struct meta;

/* Returns a new meta, or NULL with *@err = -ENOMEM. */
struct meta *meta_new(const struct meta_config *cfg, int *err);
void meta_free(struct meta *m);

/* True once the Hub was found unreachable (or the mount is offline). */
bool meta_offline(struct meta *m);

/* The token's user and organisations, asked once (hub_whoami()), kept in the
 * cache for offline mounts.  -ENOENT without a token, -EACCES for a bad one.
 * Release with hub_whoami_release(). */
int meta_whoami(struct meta *m, struct hub_whoami *out);

/* Whether @ns is a user or an organisation.  A namespace found is remembered
 * so that the root lists it. */
int meta_namespace(struct meta *m, const char *ns);

/* The namespaces to list at the root besides the token's: those looked up
 * before.  Release with hub_names_release(). */
int meta_seen_namespaces(struct meta *m, struct hub_names *out);

/* Repos of @type in @ns.  Release with hub_names_release(). */
int meta_repos(struct meta *m, enum hub_repo_type type, const char *ns, struct hub_names *out);

/* Branches, tags and special refs of @repo; -ENOENT if the repo does not
 * exist or is hidden.  Release with hub_refs_release(). */
int meta_refs(struct meta *m, const struct hub_repo *repo, struct hub_refs *out);

/* Resolves @rev of @repo to a commit and its date. */
int meta_revision(struct meta *m, const struct hub_repo *repo, const char *rev,
		  struct hub_revision *out);

/* Forgets what is known of branch @rev of @repo (its head, the repo's refs),
 * so that the next meta_revision() asks the Hub: called after a commit to
 * it, so that the branch view shows the new commit at once. */
void meta_forget_revision(struct meta *m, const struct hub_repo *repo, const char *rev);

/* Forgets what is known of @repo (its refs, the head of its main branch)
 * and of the repo list of its namespace: called after the repo was created,
 * so that it shows at once. */
void meta_forget_repo(struct meta *m, const struct hub_repo *repo);

/* The entry at @path in the tree of @commit ("" is the root, a directory).
 * -ENOENT when it does not exist, -ENOTDIR when a parent is a file.
 * @out->path is set to NULL (the caller knows the path). */
int meta_lookup(struct meta *m, const struct hub_repo *repo, const char *commit, const char *path,
		struct cache_entry *out);

/* Calls @fn for each entry of directory @dir of @commit's tree. */
int meta_list(struct meta *m, const struct hub_repo *repo, const char *commit, const char *dir,
	      cache_tree_fn fn, void *arg);

/* meta_list() of a directory listed before only: -ENODATA (and no request)
 * when the cache index does not have its listing. */
int meta_list_cached(struct meta *m, const struct hub_repo *repo, const char *commit,
		     const char *dir, cache_tree_fn fn, void *arg);

#endif
