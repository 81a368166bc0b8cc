/*
 * Hub identifiers: repo types, repo ids, revisions and paths inside a repo.
 *
 * Everything a user types or a server sends is checked here before it is put
 * into a URL, a cache key or a file name.  The rules follow the Hub's:
 * huggingface_hub's repo-id validator and git's check-ref-format for branch
 * and tag names.  All functions are pure and thread-safe.
 */
#ifndef HUBFS_HUB_ID_H
#define HUBFS_HUB_ID_H

#include <stdbool.h>
#include <stddef.h>

enum hub_repo_type {
	HUB_REPO_MODEL,
	HUB_REPO_DATASET,
	HUB_REPO_SPACE,
};

/* Longest namespace or repo name accepted (the Hub's limit for names). */
#define HUB_NAME_MAX 96
/* Longest revision accepted, after %-decoding. */
#define HUB_REV_MAX 255
/* Longest path inside a repo, and longest component of it. */
#define HUB_PATH_MAX 4096
#define HUB_PATH_COMPONENT_MAX 255
/* Shortest commit id prefix accepted as a revision. */
#define HUB_COMMIT_SHORT_MIN 7
#define HUB_COMMIT_LEN 40

/* "models", "datasets", "spaces": the segment in /api/<x>/... URLs. */
const char *hub_repo_type_api(enum hub_repo_type type);

/* "", "datasets/", "spaces/": the prefix of resolve, raw and .git URLs. */
const char *hub_repo_type_prefix(enum hub_repo_type type);

/* True if @name is a valid namespace (user, organisation) or repo name:
 * 1 to HUB_NAME_MAX characters of A-Z a-z 0-9 _ - ., starting and ending with
 * a letter, digit or '_', without "--" or "..", not ending in ".git". */
bool hub_name_valid(const char *name);

/* True if @id is "namespace/name" with both parts valid. */
bool hub_repo_id_valid(const char *id);

/* True if @s is a commit id: 40 hex digits, or with @allow_short a prefix of
 * HUB_COMMIT_SHORT_MIN to 40 hex digits.  Either case is accepted. */
bool hub_commit_id_valid(const char *s, bool allow_short);

/* True if @rev (already %-decoded) can name a revision: a branch, tag or ref
 * that git's check-ref-format accepts (no control characters, space, ~ ^ : ? *
 * [ \, no "..", "@{", "//", no component starting with '.' or ending in
 * ".lock", not starting or ending with '/', not ending with '.', not "@"),
 * at most HUB_REV_MAX bytes.  Commit ids pass this test too. */
bool hub_revision_valid(const char *rev);

/* True if @path is a valid path of a file or directory inside a repo:
 * '/'-separated components, none empty, ".", ".." or ".git", none longer than
 * HUB_PATH_COMPONENT_MAX, no control characters, at most HUB_PATH_MAX bytes,
 * no leading or trailing '/'.  The empty string is the repo root: valid. */
bool hub_repo_path_valid(const char *path);

/* Percent-encodes @rev for use as ONE URL path segment ("refs/pr/3" gives
 * "refs%2Fpr%2F3").  Returns a string the caller frees, or NULL (no memory). */
char *hub_revision_encode(const char *rev);

/* Decodes a revision written %-encoded by a user ("refs%2Fpr%2F3").
 * Returns a string the caller frees, or NULL with *@err set: -ENOENT when the
 * result is not a valid revision, -ENAMETOOLONG when too long, -ENOMEM. */
char *hub_revision_decode(const char *segment, int *err);

#endif
