/*
 * The mount's path grammar: what a path under the mount root names.
 *
 *   ""                          FS_PATH_ROOT       the mount root
 *   "me"                        FS_PATH_ME         symlink to the token's user
 *   "datasets", "spaces"        FS_PATH_TYPE       namespaces of that repo type
 *   "NS", "datasets/NS"         FS_PATH_NAMESPACE  repos of NS
 *   "NS/REPO"                   FS_PATH_REPO       its revisions
 *   "NS/REPO/refs[/pr|/convert]" FS_PATH_REFS      groups of special refs
 *   "NS/REPO/REV"               FS_PATH_REVISION   a branch or tag (REV may be
 *                                                  %-encoded: "feature%2Fx")
 *   "NS/REPO/refs/pr/N"         FS_PATH_REVISION   pull request N
 *   "NS/REPO/refs/convert/X"    FS_PATH_REVISION   e.g. refs/convert/parquet
 *   "NS/REPO@REV"               FS_PATH_REVISION   pinned: commit id (full or
 *                                                  short), tag, branch, or a
 *                                                  %-encoded ref
 *   "<any revision>/PATH"       FS_PATH_ENTRY      a file or directory in it
 *
 * huggingface_hub's cache layout (fs_hfcache.h), under ".hf-cache":
 *   ".hf-cache"                 FS_PATH_HFC        its root
 *   ".hf-cache/models--NS--REPO" FS_PATH_HFC_REPO  a repo ("datasets--",
 *                                                  "spaces--" for the others)
 *   "HFCREPO/snapshots"         FS_PATH_HFC_SNAPSHOTS the commits
 *   "HFCREPO/snapshots/COMMIT"  FS_PATH_REVISION   pinned to COMMIT (40
 *                                                  lowercase hex), as REPO@COMMIT
 *   "HFCREPO/snapshots/COMMIT/PATH" FS_PATH_ENTRY  a file or directory in it
 *   "HFCREPO/refs[/NAME]"       FS_PATH_HFC_REF    rev: "" or NAME, a ref
 *                                                  ("main", "refs/pr/1") or a
 *                                                  directory of ref names
 *   "HFCREPO/.no_exist[/COMMIT[/PATH]]" FS_PATH_HFC_NOEXIST  rev: "" or
 *                                                  COMMIT, path: PATH or ""
 *   "HFCREPO/trees[/COMMIT.json]" FS_PATH_HFC_TREES rev: "" or COMMIT
 *
 * Parsing checks every name against the Hub's rules (hub_id.h), so a name that
 * cannot exist on the Hub is refused without asking it.  It says nothing about
 * whether the name exists.
 */
#ifndef HUBFS_FS_PATH_H
#define HUBFS_FS_PATH_H

#include <stdbool.h>

#include "hub_id.h"

enum fs_path_kind {
	FS_PATH_ROOT,
	FS_PATH_ME,
	FS_PATH_TYPE,
	FS_PATH_NAMESPACE,
	FS_PATH_REPO,
	FS_PATH_REFS,
	/* The .hf-cache kinds sit below FS_PATH_REVISION: nothing in them is a
	 * revision view's, so nothing in them is writable. */
	FS_PATH_HFC,
	FS_PATH_HFC_REPO,
	FS_PATH_HFC_SNAPSHOTS,
	FS_PATH_HFC_REF,
	FS_PATH_HFC_NOEXIST,
	FS_PATH_HFC_TREES,
	FS_PATH_REVISION,
	FS_PATH_ENTRY,
};

struct fs_path {
	enum fs_path_kind kind;
	enum hub_repo_type type;      /* from FS_PATH_TYPE on */
	bool pinned;                  /* the revision was written REPO@REV (or
					 is a commit of .hf-cache) */
	char ns[HUB_NAME_MAX + 1];    /* from FS_PATH_NAMESPACE on */
	char repo[HUB_NAME_MAX + 1];  /* from FS_PATH_REPO on */
	/* From FS_PATH_REVISION on: the decoded revision ("main", "refs/pr/1").
	 * For FS_PATH_REFS: the group, "refs", "refs/pr" or "refs/convert". */
	char rev[HUB_REV_MAX + 1];
	/* FS_PATH_ENTRY (and FS_PATH_HFC_NOEXIST): the path inside the
	 * revision's tree, borrowed from the parsed string.  "" otherwise. */
	const char *path;
};

/* The name of the root's symlink to the token's user. */
#define FS_PATH_ME_NAME "me"
/* The name of the root's directory in huggingface_hub's cache layout. */
#define FS_PATH_HFC_NAME ".hf-cache"

/* Parses @path, relative to the mount root (leading '/' ignored), into @out.
 * @out->path borrows from @path, which must outlive @out.
 * Returns 0; -ENOENT when a component is not a valid name for its place (so
 * nothing can exist there); -ENAMETOOLONG when a name or the path is too
 * long; -ENOMEM. */
int fs_path_parse(const char *path, struct fs_path *out);

#endif
