/*
 * What decides a commit.  See commit_plan.h.
 *
 * Why each row carries its own base.  A change is journaled with the head
 * the writer saw when it began (a file opened at P0 and kept open, a
 * deletion made after the branch moved to P1): two rows of one commit may
 * have seen different heads.  Checking the rows against the first row's
 * base, or against any single base, lets a change made on the Hub between
 * another row's base and the parent through unseen, and the commit would
 * replace it.  So every row is checked on its own: between its base and the
 * parent, its path (and a moved file's source) must not have changed on the
 * Hub.  A row that fails is a conflict on its own; the others commit.
 *
 * Why hubfs's own commits do not conflict with later rows: when a commit is
 * made, the worker moves the base of every row and writer of the branch
 * that was based on its parent, or that touches one of its paths, to the new
 * commit (commit.c: what the commit made is what they derive from).  A
 * writer can still start from a head seen just before a commit of its own
 * path landed (it looked at the view, the commit landed, then it opened);
 * so the plan also follows the chain of the mount's own commits from a
 * row's base: a change between them is ours, never a conflict.  A commit by
 * anyone else breaks the chain, and what it changed is checked.
 *
 * What is not sent: a deletion of a path the parent does not have (a file
 * made and removed before any commit, a folder inside a folder deleted in
 * the same commit, a file moved away by a rename of the same commit), and an
 * added file whose bytes are those the parent has (cp or rsync over an
 * unchanged tree): the Hub would make a commit whose tree is its parent's.
 * Such rows are forgotten when the commit is made; when nothing is left, no
 * commit is made at all.
 */
#include "config.h"

#include "commit_plan.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/* meta_lookup(), where a path under a file (ENOTDIR) is not there either:
 * a folder made where a file was deleted. */
static int plan_lookup(struct meta *meta, const struct hub_repo *repo, const char *commit,
		       const char *path, struct cache_entry *e)
{
	int rc = meta_lookup(meta, repo, commit, path, e);

	return rc == -ENOTDIR ? -ENOENT : rc;
}

/* Whether @path is the same in the trees of commits @a and @b. */
static int plan_path_same(struct meta *meta, const struct hub_repo *repo, const char *a,
			  const char *b, const char *path, bool *same)
{
	struct cache_entry ea, eb;
	int ra, rb;

	if (!strcmp(a, b)) {
		*same = true;
		return 0;
	}
	ra = plan_lookup(meta, repo, a, path, &ea);
	rb = plan_lookup(meta, repo, b, path, &eb);
	if ((ra && ra != -ENOENT) || (rb && rb != -ENOENT)) {
		if (!ra)
			cache_entry_release(&ea);
		if (!rb)
			cache_entry_release(&eb);
		return ra && ra != -ENOENT ? ra : rb;
	}
	*same = ra == rb && (ra || (ea.is_dir == eb.is_dir && !strcmp(ea.oid, eb.oid) &&
				    !strcmp(ea.sha256, eb.sha256)));
	if (!ra)
		cache_entry_release(&ea);
	if (!rb)
		cache_entry_release(&eb);
	return 0;
}

static bool plan_is_delete(const struct cache_stage_change *r)
{
	return r->kind == CACHE_STAGE_DELETE_FILE || r->kind == CACHE_STAGE_DELETE_FOLDER;
}

/* Whether @path is @dir or under it. */
static bool plan_under(const char *path, const char *dir)
{
	size_t len = strlen(dir);

	return !strncmp(path, dir, len) && (path[len] == '/' || path[len] == '\0');
}

/* Whether the entry @e holds the bytes of ADD op @op. */
static bool plan_same_bytes(const struct cache_entry *e, const struct commit_op *op)
{
	const struct cache_stage_change *r = op->row;

	if (e->is_dir || e->size != r->size)
		return false;
	if (op->git_id[0] && !strcmp(e->oid, op->git_id))
		return true;
	return r->sha256[0] && e->sha256[0] && !strcmp(e->sha256, r->sha256);
}

/* The fate of one op whose base was checked, given the others. */
static int plan_one(struct meta *meta, const struct hub_repo *repo, const char *parent,
		    struct commit_op *ops, size_t n, size_t i)
{
	struct cache_stage_change *r = ops[i].row;
	struct cache_entry e;
	int rc;

	if (r->kind == CACHE_STAGE_DELETE_FILE) {
		/* a RENAME of this commit moves it: that line deletes it */
		for (size_t j = 0; j < n; j++) {
			const struct cache_stage_change *m = ops[j].row;

			if (m->kind == CACHE_STAGE_RENAME && m->old_path &&
			    !strcmp(m->old_path, r->path)) {
				ops[i].fate = ops[j].fate == COMMIT_SEND ? COMMIT_SKIP
					      : ops[j].fate == COMMIT_CONFLICT ? COMMIT_CONFLICT
										 : COMMIT_LATER;
				return 0;
			}
		}
	}
	if (plan_is_delete(r)) {
		/* a folder deletion of this commit covers it */
		for (size_t j = 0; j < n; j++) {
			const struct cache_stage_change *f = ops[j].row;

			if (j != i && f->kind == CACHE_STAGE_DELETE_FOLDER &&
			    ops[j].fate == COMMIT_SEND && strcmp(f->path, r->path) &&
			    plan_under(r->path, f->path)) {
				ops[i].fate = COMMIT_SKIP;
				return 0;
			}
		}
	}
	rc = plan_lookup(meta, repo, parent, r->path, &e);
	if (rc && rc != -ENOENT)
		return rc;
	if (plan_is_delete(r)) {
		/* nothing there to delete */
		ops[i].fate = rc == -ENOENT ? COMMIT_SKIP : COMMIT_SEND;
	} else if (rc == 0 && r->kind == CACHE_STAGE_ADD && plan_same_bytes(&e, &ops[i])) {
		ops[i].fate = COMMIT_SKIP; /* the same bytes: no change */
	} else {
		ops[i].fate = COMMIT_SEND;
	}
	if (rc == 0)
		cache_entry_release(&e);
	return 0;
}

/* @base, moved along the chain of @own commits made on top of it. */
static const char *plan_own_base(const char *base, const struct commit_own *own, size_t nown)
{
	/* each step moves to a newer commit: at most @nown steps */
	for (size_t step = 0; step < nown; step++) {
		size_t i;

		for (i = 0; i < nown && strcmp(own[i].parent, base); i++)
			;
		if (i == nown)
			break;
		base = own[i].commit;
	}
	return base;
}

int commit_plan(struct meta *meta, const struct hub_repo *repo, const char *parent,
		struct commit_op *ops, size_t n, const struct commit_own *own, size_t nown)
{
	int rc;

	/* first each row against its own base */
	for (size_t i = 0; i < n; i++) {
		const struct cache_stage_change *r = ops[i].row;
		const char *base = hub_commit_id_valid(r->base_commit, false) ? r->base_commit
									       : parent;
		bool same = true;

		base = plan_own_base(base, own, nown);
		ops[i].fate = ops[i].out ? COMMIT_LATER : COMMIT_SEND;
		if (ops[i].out)
			continue;
		rc = plan_path_same(meta, repo, base, parent, r->path, &same);
		if (!rc && same && r->old_path)
			rc = plan_path_same(meta, repo, base, parent, r->old_path, &same);
		if (rc)
			return rc;
		if (!same)
			ops[i].fate = COMMIT_CONFLICT;
	}
	/* then what is left to send.  Folder deletions first: the rows they
	 * cover are decided with them known. */
	for (int pass = 0; pass < 2; pass++) {
		for (size_t i = 0; i < n; i++) {
			bool folder = ops[i].row->kind == CACHE_STAGE_DELETE_FOLDER;

			if (ops[i].fate != COMMIT_SEND || folder != (pass == 0))
				continue;
			rc = plan_one(meta, repo, parent, ops, n, i);
			if (rc)
				return rc;
		}
	}
	return 0;
}

bool commit_landed(struct meta *meta, const struct hub_repo *repo, const char *commit,
		   const struct commit_op *ops, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		const struct cache_stage_change *r = ops[i].row;
		struct cache_entry e;
		bool ok;
		int rc;

		if (ops[i].fate != COMMIT_SEND)
			continue;
		rc = plan_lookup(meta, repo, commit, r->path, &e);
		if (plan_is_delete(r)) {
			if (!rc)
				cache_entry_release(&e);
			if (rc != -ENOENT)
				return false;
			continue;
		}
		if (rc)
			return false;
		ok = !e.is_dir && e.size == r->size &&
		     ((r->sha256[0] && !strcmp(e.sha256, r->sha256)) ||
		      (r->kind == CACHE_STAGE_ADD && ops[i].git_id[0] && !strcmp(e.oid, ops[i].git_id)));
		cache_entry_release(&e);
		if (!ok)
			return false;
		if (r->kind == CACHE_STAGE_RENAME && r->old_path) {
			rc = plan_lookup(meta, repo, commit, r->old_path, &e);
			if (!rc)
				cache_entry_release(&e);
			if (rc != -ENOENT)
				return false;
		}
	}
	return true;
}

void commit_title(struct meta *meta, const struct hub_repo *repo, const char *parent,
		  const struct commit_op *ops, size_t n, char *buf, size_t size)
{
	const struct commit_op *send[2] = {NULL, NULL};
	size_t ns = 0;
	struct cache_entry e;

	for (size_t i = 0; i < n; i++) {
		if (ops[i].fate != COMMIT_SEND)
			continue;
		if (ns < 2)
			send[ns] = &ops[i];
		ns++;
	}
	if (ns == 1 && send[0]->row->kind == CACHE_STAGE_RENAME) {
		snprintf(buf, size, "Rename %s to %s with hubfs", send[0]->row->old_path,
			 send[0]->row->path);
		return;
	}
	if (ns == 1 && plan_is_delete(send[0]->row)) {
		snprintf(buf, size, "Delete %s with hubfs", send[0]->row->path);
		return;
	}
	if (ns == 1) {
		bool exists = !plan_lookup(meta, repo, parent, send[0]->row->path, &e);

		if (exists)
			cache_entry_release(&e);
		snprintf(buf, size, "%s %s with hubfs", exists ? "Update" : "Add",
			 send[0]->row->path);
		return;
	}
	if (ns == 2) {
		/* a regular file moved: its bytes added under the new name, the
		 * old name deleted */
		const struct commit_op *add = send[0]->row->kind == CACHE_STAGE_ADD ? send[0] : send[1];
		const struct commit_op *del = add == send[0] ? send[1] : send[0];

		if (add->row->kind == CACHE_STAGE_ADD && del->row->kind == CACHE_STAGE_DELETE_FILE &&
		    !plan_lookup(meta, repo, parent, del->row->path, &e)) {
			bool moved = plan_same_bytes(&e, add);

			cache_entry_release(&e);
			if (moved) {
				snprintf(buf, size, "Rename %s to %s with hubfs", del->row->path,
					 add->row->path);
				return;
			}
		}
	}
	snprintf(buf, size, "Update %zu files with hubfs", ns);
}
