/*
 * What decides a commit: its parent, which journaled rows go into it, which
 * are a conflict, and its title.  Used by the commit worker (commit.c) only.
 *
 * The rule (the design essay is in commit_plan.c):
 * - A commit's parent is the branch's head as the Hub has it now (the one
 *   meta knows; a 412 answer makes the worker look again).
 * - Every row is checked against that parent with its own base (the head it
 *   was based on): a row whose path (or a moved file's source) changed
 *   between its base and the parent is a conflict, whatever the other rows.
 * - A row that would change nothing (a deletion of what is not there, a file
 *   rewritten with the bytes it has, a deletion inside a deleted folder) is
 *   not sent; it is forgotten with the commit.
 *
 * Thread safety: these functions touch only what they are given, and meta
 * (which is thread safe).  They may wait for the network (tree listings).
 */
#ifndef HUBFS_COMMIT_PLAN_H
#define HUBFS_COMMIT_PLAN_H

#include <stdbool.h>
#include <stddef.h>

#include "cache.h"
#include "hub_api.h"
#include "meta.h"

/* What the plan decides for one row. */
enum commit_fate {
	COMMIT_SEND,	 /* goes into the commit */
	COMMIT_SKIP,	 /* nothing to send: forgotten when the commit is made */
	COMMIT_CONFLICT, /* its path changed on the Hub since its base */
	COMMIT_LATER,	 /* not in this commit: stays pending (narrowed out, or
			    it goes with a row that is not sent) */
};

/* A row of the commit being planned.  Filled by the worker; the plan sets
 * fate (LATER for the ops that are out). */
struct commit_op {
	struct cache_stage_change *row; /* borrowed */
	int fd;				/* ADD: its staged file, else -1 */
	char git_id[CACHE_ID_MAX];	/* ADD of a file small enough: its git blob id */
	bool lfs;			/* preupload's decision */
	bool out;			/* not in this commit: set aside (a conflict,
					   refused), or left for the next one */
	enum commit_fate fate;
	struct hub_op *line;		/* SEND: its line of the commit */
};

/* A commit hubfs made, and its parent. */
struct commit_own {
	char commit[41];
	char parent[41];
};

/* Decides the fate of @ops[0..@n) for a commit on @parent (40 hex digits)
 * of @repo.  @own[0..@nown) are commits this mount made on the branch: a
 * row based on the parent of one of them is based on it (what it changed is
 * ours, not a conflict), and so on along the chain.  Returns 0, or the
 * -errno of a lookup that failed (the Hub unreachable: nothing decided). */
int commit_plan(struct meta *meta, const struct hub_repo *repo, const char *parent,
		struct commit_op *ops, size_t n, const struct commit_own *own, size_t nown);

/* Whether the tree of @commit has what every op of fate SEND of @ops does
 * already (each added or moved path with its content, each deleted path
 * gone): a commit whose answer was lost.  Errors count as no. */
bool commit_landed(struct meta *meta, const struct hub_repo *repo, const char *commit,
		   const struct commit_op *ops, size_t n);

/* The title of a commit on @parent of the SEND ops of @ops into @buf:
 * "Add P", "Update P", "Delete P", "Rename Q to P" (an LFS file moved by
 * reference, or a regular file whose bytes moved), else "Update N files",
 * each followed by " with hubfs". */
void commit_title(struct meta *meta, const struct hub_repo *repo, const char *parent,
		  const struct commit_op *ops, size_t n, char *buf, size_t size);

#endif
