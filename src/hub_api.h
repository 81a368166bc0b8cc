/*
 * Typed calls of the Hub's HTTP API: JSON in, hubfs structs out.
 *
 * The only part of hubfs that includes cJSON.h.  Every answer is untrusted:
 * names and paths are checked with the rules of hub_id.h, lengths and counts
 * are bounded, and a malformed answer gives -EIO with a log line.
 * Functions return 0 or a negative errno (see http_status_errno() for the
 * mapping of the Hub's errors).  All are thread-safe.
 */
#ifndef HUBFS_HUB_API_H
#define HUBFS_HUB_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "http.h"
#include "hub_id.h"

/* Most entries accepted in one directory listing, and repos in a namespace. */
#define HUB_LIST_MAX 1000000

struct hub_repo {
	enum hub_repo_type type;
	const char *ns;   /* borrowed */
	const char *name; /* borrowed */
};

struct hub_whoami {
	char *name;     /* the token's user */
	char **orgs;    /* its organisations */
	size_t n_orgs;
};

/* GET /api/whoami-v2.  -EACCES for a bad token.  Release with
 * hub_whoami_release(). */
int hub_whoami(struct http_client *http, struct hub_whoami *out);
void hub_whoami_release(struct hub_whoami *w);

/* Whether the Hub answers at all (any HTTP status): 0, or the transport
 * error.  Logs nothing. */
int hub_ping(struct http_client *http);

/* Whether @ns is a user or an organisation: 0, -ENOENT, or another error. */
int hub_namespace_exists(struct http_client *http, const char *ns);

struct hub_names {
	char **names;
	size_t n;
};

/* The names (without namespace) of the repos of @type in @ns that the token
 * can see, all pages.  Release with hub_names_release(). */
int hub_list_repos(struct http_client *http, enum hub_repo_type type, const char *ns,
		   struct hub_names *out);
void hub_names_release(struct hub_names *names);

enum hub_ref_kind {
	HUB_REF_BRANCH,
	HUB_REF_TAG,
	HUB_REF_PR,      /* name "refs/pr/N" */
	HUB_REF_CONVERT, /* name "refs/convert/NAME" */
};

struct hub_ref {
	enum hub_ref_kind kind;
	char *name;
	char commit[HUB_COMMIT_LEN + 1];
};

struct hub_refs {
	struct hub_ref *refs;
	size_t n;
};

/* GET .../refs?include_prs=1.  Release with hub_refs_release(). */
int hub_list_refs(struct http_client *http, const struct hub_repo *repo, struct hub_refs *out);
void hub_refs_release(struct hub_refs *refs);

struct hub_revision {
	char commit[HUB_COMMIT_LEN + 1]; /* full commit id */
	int64_t mtime;                   /* lastModified, seconds since the epoch */
	bool private;
};

/* GET .../revision/REV: resolves a branch, tag, ref or (short) commit id.
 * -ENOENT when the repo or the revision does not exist (or is hidden). */
int hub_resolve(struct http_client *http, const struct hub_repo *repo, const char *rev,
		struct hub_revision *out);

struct hub_entry {
	const char *name;  /* last component, borrowed from the page */
	bool is_dir;
	uint64_t size;     /* the LFS object's size for LFS files */
	char oid[HUB_COMMIT_LEN + 1];  /* git object id */
	char sha256[65];   /* LFS oid, or "" */
};

/* Receives one page of a listing; returns 0 or -errno to stop. */
typedef int (*hub_entries_fn)(void *arg, const struct hub_entry *entries, size_t n);

/* GET .../tree/COMMIT/DIR, every page, non-recursive.  @dir is "" for the
 * root.  Each page's entries are checked before @fn sees them: an entry that
 * is not a direct child of @dir or whose name is invalid (a NUL, "", ".",
 * "..", ".git", a control character) is skipped with a log line; an entry
 * without a valid oid, or whose size cannot be its blob's (not an integer in
 * [0, 2^53], 0 for a blob that is not the empty one or the reverse; for an
 * LFS file the LFS oid and size decide) fails the listing with -EIO and a
 * log line naming it.  -ENOENT if @dir does not exist, -ENOTDIR if it is a
 * file. */
int hub_list_tree(struct http_client *http, const struct hub_repo *repo, const char *commit,
		  const char *dir, hub_entries_fn fn, void *arg);

/* The resolve URL of @path at @commit (caller frees), or NULL. */
char *hub_resolve_url(struct http_client *http, const struct hub_repo *repo, const char *commit,
		      const char *path);

/*
 * Commits (the upload flow of the official clients): hub_preupload() says
 * which files go through LFS, hub_lfs_upload() sends an LFS object (basic or
 * multipart PUT; nothing when the Hub has it already), hub_commit() makes one
 * commit of every change.
 */

enum hub_op_kind {
	HUB_OP_ADD,           /* a file's new content, or a rename (old_path) */
	HUB_OP_DELETE_FILE,
	HUB_OP_DELETE_FOLDER,
};

struct hub_op {
	enum hub_op_kind kind;
	const char *path;     /* borrowed */
	/* HUB_OP_ADD: */
	const char *old_path; /* an LFS file moved by reference (no content needed), or NULL */
	int fd;               /* the content, read with pread (borrowed) */
	uint64_t size;
	char sha256[65];      /* of the content, computed by the caller */
	bool lfs;             /* set by hub_preupload() */
	/* Optional (NULL: none): hub_lfs_upload() reports the bytes of this
	 * object sent so far, over all its parts; never less than the last
	 * report, at most size.  Called often (at every progress tick of the
	 * transfers, also about once a second while nothing moves), from the
	 * threads that send the parts (up to 4 at once for a multipart upload),
	 * one call at a time: it must not call hub_lfs_upload().  The transfers
	 * wait for it, so it must be cheap (throttle any I/O, such as a
	 * journal write, to about once a second).  When the upload succeeds,
	 * the last call says size, also when the Hub had the object already. */
	void (*progress)(void *arg, uint64_t sent);
	void *progress_arg;   /* passed to progress, borrowed */
};

/* Largest regular (non-LFS) file the Hub accepts in a commit. */
#define HUB_REGULAR_MAX (10u << 20)

/* Asks the Hub which of the HUB_OP_ADD @ops (without old_path) are LFS,
 * setting op->lfs.  Empty files are always regular, files over
 * HUB_REGULAR_MAX always LFS.  Returns 0 or -errno. */
int hub_preupload(struct http_client *http, const struct hub_repo *repo, const char *rev,
		  struct hub_op *ops, size_t n);

/* Uploads the content of @op (an LFS file) unless the Hub has it, reporting
 * its progress to op->progress.  The parts of a multipart upload go up to
 * four at a time, each read from op->fd as it is sent (memory stays
 * bounded).  Returns 0, -EACCES, -EIO, or another
 * -errno. */
int hub_lfs_upload(struct http_client *http, const struct hub_repo *repo, const char *rev,
		   const struct hub_op *op);

/* Commits @ops to branch @rev with @summary, based on @parent (a commit id,
 * or NULL).  Regular files are sent inline, LFS files by their sha256 (they
 * must have been uploaded).  Writes the new commit's id to @commit.
 * Returns 0; -ESTALE when the branch moved since @parent (412); -EACCES
 * when the token may not write; -ENOENT (no such repo or branch); -EINVAL
 * when the Hub refused what the commit does (400, 422, or 404 EntryNotFound:
 * a path to delete or move is not there), logged, with the status and the
 * Hub's reason in @why (@why_size bytes; @why may be NULL); -EIO. */
int hub_commit(struct http_client *http, const struct hub_repo *repo, const char *rev,
	       const char *summary, const char *parent, const struct hub_op *ops, size_t n,
	       char commit[HUB_COMMIT_LEN + 1], char *why, size_t why_size);

/* hub_commit() with a @description (the commit's message below its title;
 * NULL or "" for none). */
int hub_commit_described(struct http_client *http, const struct hub_repo *repo, const char *rev,
			 const char *summary, const char *description, const char *parent,
			 const struct hub_op *ops, size_t n, char commit[HUB_COMMIT_LEN + 1],
			 char *why, size_t why_size);

/* Creates @repo, private or public.  Returns 0, -EEXIST (409), -EACCES,
 * -EINVAL (a name the Hub refuses), -EIO. */
int hub_create_repo(struct http_client *http, const struct hub_repo *repo, bool private);

/* Makes @repo private or public (settings API).  0, -EACCES, -ENOENT, -EIO. */
int hub_set_private(struct http_client *http, const struct hub_repo *repo, bool private);

/* Checks a model card (README.md content) with the Hub's YAML validator, as
 * the official clients do before committing one.  Returns 0, or -EINVAL with
 * the Hub's reason in *@reason (caller frees; may be NULL), or -errno. */
int hub_validate_yaml(struct http_client *http, enum hub_repo_type type, const char *content,
		      char **reason);

/* A file of a commit's tree, for hub_tree_cache_json(). */
struct hub_tree_file {
	const char *path;
	uint64_t size;
	const char *oid;    /* git blob id */
	const char *sha256; /* LFS oid, or "" */
};

/* The tree listing of a commit in the JSON that huggingface_hub keeps in its
 * cache as trees/COMMIT.json (format_version 1: "files", by path, each with
 * "size", "blob_id" and for LFS files "lfs_sha256" and "lfs_size"), in the
 * order of @files.  Returns a string the caller frees, or NULL (no memory). */
char *hub_tree_cache_json(const struct hub_tree_file *files, size_t n);

/*
 * History and branches.
 */

/* One commit of a listing; everything borrowed for the callback's call.
 * Texts are "" when the Hub gave none (or one over 64 KiB); they may hold
 * any character but NUL (control characters included: escape them before
 * showing them on a terminal). */
struct hub_commit_info {
	char id[HUB_COMMIT_LEN + 1]; /* full commit id */
	const char *title;
	const char *message;	     /* the description below the title */
	const char *date;	     /* as the Hub wrote it (ISO 8601) */
	int64_t time;		     /* seconds since the epoch, -1 if unreadable */
	const char *const *authors;  /* user names, at most 16 */
	size_t nauthors;
};

/* Receives one commit, or NULL at the end of each page (before the next
 * one is asked for); returns 0 to go on, a positive value to stop
 * (hub_list_commits() then returns 0), or -errno to stop with it. */
typedef int (*hub_commit_fn)(void *arg, const struct hub_commit_info *c);

/* GET .../commits/REV?limit=@limit (0: 100), newest first, page after page
 * (Link rel="next"), handing each commit to @fn as its page arrives: a
 * caller that stops early costs only the pages it read.  -ENOENT for a
 * repo or revision that does not exist (or is hidden). */
int hub_list_commits(struct http_client *http, const struct hub_repo *repo, const char *rev,
		     unsigned limit, hub_commit_fn fn, void *arg);

/* @c as one line of JSON, {"id","date","authors":[...],"title","message"}
 * (caller frees), or NULL (no memory). */
char *hub_commit_json(const struct hub_commit_info *c);

/* The last commit that changed @path (a file or folder) at @commit, from
 * POST .../paths-info/COMMIT with expand (its lastCommit), into @last.
 * -ENOENT when @commit has no @path. */
int hub_last_commit(struct http_client *http, const struct hub_repo *repo, const char *commit,
		    const char *path, char last[HUB_COMMIT_LEN + 1]);

/* POST .../branch/BRANCH: creates @branch at the head of the default
 * branch.  Returns 0, -EEXIST (409), -EACCES (401, 403), -EINVAL (a name
 * the Hub or hub_id.h refuses), -ENOENT, -EIO. */
int hub_create_branch(struct http_client *http, const struct hub_repo *repo, const char *branch);

/* Parses an ISO 8601 UTC time ("2026-06-01T12:34:56.000Z").  Returns the
 * seconds since the epoch, or -1. */
int64_t hub_parse_time(const char *s);

#endif
