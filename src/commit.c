/*
 * The commit worker.  See stage.h (its public calls: stage_sync(),
 * stage_drain(), stage_resolve(), messages) and stage_internal.h.
 *
 * One worker thread commits one branch at a time: it lists the branch's rows
 * from the journal, hashes their staged files, asks preupload, uploads the
 * LFS objects, and makes one commit whose parent is the head the changes were
 * based on.  If the branch moved meanwhile (412), it compares the paths it
 * commits at the old and the new head: when none changed it commits again on
 * top of the new head, otherwise the rows become CONFLICT and stay staged:
 * hubfs never overwrites someone else's change.
 *
 * Locking: s->lock is taken only to read or update the overlay and the
 * branch records, never across network I/O.
 */
#include "config.h"

#include "stage_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

/* Failed commits of a branch are retried this many times, with backoff. */
#define STAGE_RETRIES 6
#define STAGE_BACKOFF_MAX_MS 60000
/* Commits on top of a moved branch, at most. */
#define STAGE_REBASES 3
/* The longest stage_sync() waits. */
#define STAGE_SYNC_TIMEOUT_S 900

/* ---- commits ---- */

/* The upload progress of a row, recorded in the journal for hubfs status:
 * the first bytes and the end at once, the rest at most once a second (a
 * journal write each, not synced). */
#define STAGE_PROGRESS_MS 1000

struct stage_progress {
	struct stage *s;
	int64_t row;
	uint64_t size;
	uint64_t last;	 /* the bytes recorded last */
	int64_t last_ms; /* when (monotonic ms), 0 for never */
};

/* The rows of a commit and what goes with them. */
struct stage_op {
	struct cache_stage_change *row;
	int fd;
	char git_id[CACHE_ID_MAX];
	bool skip; /* a deletion of what does not exist: nothing to send */
	bool lfs;  /* preupload's decision */
	struct stage_progress progress; /* of its upload */
};

/* hub_op.progress: called by hub_lfs_upload() in the worker, no lock held. */
static void stage_progress(void *arg, uint64_t sent)
{
	struct stage_progress *p = arg;
	int64_t now = stage_now_ms();

	if (sent == p->last)
		return;
	if (sent < p->size && p->last_ms && now - p->last_ms < STAGE_PROGRESS_MS)
		return;
	p->last = sent;
	p->last_ms = now;
	/* -ENOENT: the row was replaced meanwhile; nothing to record */
	cache_stage_set_sent(p->s->cache, p->row, sent);
}

/* Hashes @fd (@size bytes) into its sha256 and git blob id. */
static int stage_hash(int fd, uint64_t size, char sha256[65], char git_id[CACHE_ID_MAX])
{
	struct cache_hasher *h1 = NULL, *h2 = NULL;
	/* a file too big for a regular commit goes through LFS: its git id
	 * is never needed (it saves a second hash of gigabytes) */
	bool regular = size <= HUB_REGULAR_MAX;
	char *buf = malloc(STAGE_COPY_BUF);
	uint64_t off = 0;
	int rc = 0;

	git_id[0] = '\0';
	if (!buf)
		return -ENOMEM;
	h1 = cache_hasher_new(CACHE_ID_SHA256, size, &rc);
	if (h1 && regular)
		h2 = cache_hasher_new(CACHE_ID_GIT_SHA1, size, &rc);
	if (!h1 || (regular && !h2))
		goto out;
	while (off < size && !rc) {
		size_t want = size - off < STAGE_COPY_BUF ? (size_t)(size - off) : STAGE_COPY_BUF;
		ssize_t n = pread(fd, buf, want, (off_t)off);

		if (n <= 0) {
			rc = n < 0 ? -errno : -EIO;
			break;
		}
		rc = cache_hasher_update(h1, buf, (size_t)n);
		if (!rc && h2)
			rc = cache_hasher_update(h2, buf, (size_t)n);
		off += (uint64_t)n;
	}
	if (!rc) {
		char hex[CACHE_ID_MAX];

		rc = cache_hasher_final(h1, hex);
		memcpy(sha256, hex, 65);
		if (!rc && h2)
			rc = cache_hasher_final(h2, git_id);
	}
out:
	cache_hasher_free(h1);
	cache_hasher_free(h2);
	free(buf);
	return rc;
}

/* Whether @path is the same at commits @a and @b. */
static int stage_path_same(struct stage *s, const struct hub_repo *repo, const char *a,
			   const char *b, const char *path, bool *same)
{
	struct cache_entry ea, eb;
	int ra = meta_lookup(s->meta, repo, a, path, &ea);
	int rb = meta_lookup(s->meta, repo, b, path, &eb);

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

static void stage_mark(struct stage *s, const int64_t *ids, size_t n, enum cache_stage_state state,
		       const char *error, bool attempt)
{
	struct cache_stage_update u = {0};

	u.set = CACHE_STAGE_SET_STATE | (error ? CACHE_STAGE_SET_ERROR : 0) |
		(attempt ? CACHE_STAGE_ADD_ATTEMPT : 0);
	u.state = state;
	u.error = error;
	if (cache_stage_update(s->cache, ids, n, &u, NULL))
		log_msg(LOG_WARNING, "cannot record the state of a commit in the journal");
}

/* The overlay forgets the committed rows @ids; writers of the branch that
 * were based on @parent are based on @commit now (as the journal's rows). */
static void stage_forget_rows(struct stage *s, const char *repo, const char *branch,
			      const int64_t *ids, size_t n, const char *parent, const char *commit)
{
	pthread_mutex_lock(&s->lock);
	for (struct stage_entry *e = s->entries; e; e = e->next) {
		if (strcmp(e->branch, branch) || strcmp(e->repo, repo))
			continue;
		if (e->wr && !strcmp(e->wr->base, parent))
			snprintf(e->wr->base, sizeof(e->wr->base), "%s", commit);
		if (e->row && !strcmp(e->base, parent))
			snprintf(e->base, sizeof(e->base), "%s", commit);
	}
	for (struct stage_entry *e = s->entries, *next; e; e = next) {
		next = e->next;
		if (e->gone && !strcmp(e->branch, branch) && !strcmp(e->repo, repo)) {
			/* the commit moved its files: the tree has it no more */
			e->gone = false;
			e->deleted = false;
			free(e->moved_to);
			e->moved_to = NULL;
			e->version = ++s->versions;
			stage_entry_gc(s, e);
		}
	}
	for (size_t i = 0; i < n; i++) {
		for (struct stage_entry *e = s->entries; e; e = e->next) {
			if (e->row == ids[i]) {
				/* the committed bytes are read from the staged
				 * file until they are a cache blob */
				e->importing = e->staged[0] && e->size > 0 && !e->deleted;
				stage_entry_forget_row(s, e, e->importing);
				break;
			}
		}
	}
	pthread_mutex_unlock(&s->lock);
}

/* Whether a RENAME row among @ops moves @path away. */
static bool stage_moved_away(const struct stage_op *ops, size_t n, const char *path)
{
	for (size_t i = 0; i < n; i++)
		if (ops[i].row->kind == CACHE_STAGE_RENAME && ops[i].row->old_path &&
		    !strcmp(ops[i].row->old_path, path))
			return true;
	return false;
}

/* Whether a later DELETE_FOLDER row among @ops covers the DELETE_FILE row
 * @ops[@i]: the Hub has no empty folders, so the folder deletion alone is
 * sent (deleting its files first would leave no folder to delete). */
static bool stage_in_folder(const struct stage_op *ops, size_t n, size_t i)
{
	const char *path = ops[i].row->path;

	for (size_t j = i + 1; j < n; j++) {
		const struct cache_stage_change *r = ops[j].row;
		size_t len = strlen(r->path);

		if (r->kind == CACHE_STAGE_DELETE_FOLDER && !strncmp(path, r->path, len) &&
		    path[len] == '/')
			return true;
	}
	return false;
}

/* Tells the stage's user which paths of @rkey @branch the commit of @ops
 * changed. */
static void stage_tell_committed(struct stage *s, const char *rkey, const char *branch,
				 const struct stage_op *ops, size_t n)
{
	const char **paths;
	size_t np = 0;

	if (!s->committed || n == 0)
		return;
	paths = calloc(2 * n, sizeof(*paths));
	if (!paths)
		return; /* the kernel's caches expire with the TTL */
	for (size_t i = 0; i < n; i++) {
		paths[np++] = ops[i].row->path;
		if (ops[i].row->old_path)
			paths[np++] = ops[i].row->old_path;
	}
	s->committed(s->committed_arg, rkey, branch, paths, np);
	free(paths);
}

/* The commit message set for @rkey @branch (user.hub.message), else
 * --commit-message, into @buf.  Returns whether there was one. */
static bool stage_message(struct stage *s, const char *rkey, const char *branch, char *buf,
			  size_t size)
{
	const char *m = s->message;

	pthread_mutex_lock(&s->lock);
	for (struct stage_branch *b = s->branches; b; b = b->next)
		if (b->message && !strcmp(b->branch, branch) && !strcmp(b->repo, rkey))
			m = b->message;
	if (m)
		snprintf(buf, size, "%s", m);
	pthread_mutex_unlock(&s->lock);
	return m != NULL;
}

bool stage_message_valid(const char *m)
{
	size_t len = strlen(m);

	if (len == 0 || len > STAGE_MESSAGE_MAX)
		return false;
	for (; *m; m++)
		if ((unsigned char)*m < 0x20 || *m == 0x7f)
			return false;
	return true;
}

int stage_set_message(struct stage *s, const char *repo, const char *branch, const char *message)
{
	struct stage_branch *b;
	char *copy = NULL;

	if (message && !(copy = strdup(message)))
		return -ENOMEM;
	pthread_mutex_lock(&s->lock);
	b = stage_branch_get(s, repo, branch);
	if (b) {
		free(b->message);
		b->message = copy;
		copy = NULL;
	}
	pthread_mutex_unlock(&s->lock);
	free(copy);
	return b ? 0 : -ENOMEM;
}

char *stage_get_message(struct stage *s, const char *repo, const char *branch)
{
	char *m = NULL;

	pthread_mutex_lock(&s->lock);
	for (struct stage_branch *b = s->branches; b; b = b->next)
		if (b->message && !strcmp(b->branch, branch) && !strcmp(b->repo, repo))
			m = strdup(b->message);
	pthread_mutex_unlock(&s->lock);
	return m;
}

/* A README.md at the root is the repo's card: its metadata is checked with
 * the Hub's validator before the commit, as the official clients do.
 * Returns 0, -EINVAL (invalid: @err says why, logged), or -errno. */
static int stage_check_card(struct stage *s, const struct hub_repo *repo, const char *rkey,
			    const char *branch, const struct stage_op *ops, size_t n, char *err,
			    size_t errsize)
{
	for (size_t i = 0; i < n; i++) {
		const struct cache_stage_change *r = ops[i].row;
		char *buf, *reason = NULL;
		ssize_t got;
		int rc;

		if (r->kind != CACHE_STAGE_ADD || strcmp(r->path, "README.md") || ops[i].fd < 0 ||
		    r->size > HUB_REGULAR_MAX)
			continue;
		buf = malloc(r->size + 1);
		if (!buf)
			return -ENOMEM;
		got = pread(ops[i].fd, buf, r->size, 0);
		if (got < 0 || (uint64_t)got != r->size) {
			free(buf);
			return got < 0 ? -errno : -EIO;
		}
		buf[got] = '\0';
		rc = hub_validate_yaml(s->http, repo->type, buf, &reason);
		free(buf);
		if (rc == -EINVAL) {
			snprintf(err, errsize, "invalid card metadata in README.md: %s",
				 reason && *reason ? reason : "refused by the Hub");
			log_msg(LOG_ERR, "'%s@%s': %s; the changes stay staged, not committed",
				rkey, branch, err);
		}
		free(reason);
		if (rc)
			return rc;
	}
	return 0;
}

/* Whether the tree of @commit has every change of @ops already: each added
 * or moved path with the content it is to get, each deleted path gone.
 * Errors count as no. */
static bool stage_landed(struct stage *s, const struct hub_repo *repo, const char *commit,
			 const struct stage_op *ops, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		const struct cache_stage_change *r = ops[i].row;
		struct cache_entry e;
		bool ok;
		int rc = meta_lookup(s->meta, repo, commit, r->path, &e);

		if (r->kind == CACHE_STAGE_DELETE_FILE || r->kind == CACHE_STAGE_DELETE_FOLDER) {
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
			rc = meta_lookup(s->meta, repo, commit, r->old_path, &e);
			if (!rc)
				cache_entry_release(&e);
			if (rc != -ENOENT)
				return false;
		}
	}
	return true;
}

/* The staged files of a commit, to become cache blobs once the commit's
 * waiters have their answer (copying a big file into the cache takes
 * seconds that fsync need not wait for).  Meanwhile the overlay reads them
 * (entries `importing`). */
struct stage_import {
	char *repo, *branch;
	struct {
		char id[CACHE_ID_MAX];
		int fd;
	} *blobs;
	size_t nblobs;
	char (*staged)[CACHE_STAGE_NAME_SIZE]; /* to remove afterwards */
	size_t nstaged;
};

static void stage_import_free(struct stage_import *im)
{
	if (!im)
		return;
	for (size_t i = 0; i < im->nblobs; i++)
		if (im->blobs[i].fd >= 0)
			close(im->blobs[i].fd);
	free(im->blobs);
	free(im->staged);
	free(im->repo);
	free(im->branch);
	free(im);
}

/* The overlay stops reading the committed staged files of @repo @branch:
 * those named in @names[0..@n), or every one with @names NULL. */
static void stage_forget_imports(struct stage *s, const char *repo, const char *branch,
				 char (*names)[CACHE_STAGE_NAME_SIZE], size_t n)
{
	pthread_mutex_lock(&s->lock);
	for (struct stage_entry *e = s->entries, *next; e; e = next) {
		bool named = !names;

		next = e->next;
		if (!e->importing || strcmp(e->branch, branch) || strcmp(e->repo, repo))
			continue;
		for (size_t i = 0; !named && i < n; i++)
			named = !strcmp(e->staged, names[i]);
		if (named) {
			e->importing = false;
			e->staged[0] = '\0';
			e->version = ++s->versions;
			stage_entry_gc(s, e);
		}
	}
	pthread_mutex_unlock(&s->lock);
}

/* Turns the files of @im into cache blobs, then lets the overlay forget
 * them and removes them.  Frees @im.  No lock held. */
static void stage_import_run(struct stage *s, struct stage_import *im)
{
	for (size_t i = 0; i < im->nblobs; i++)
		if (cache_blob_import(s->cache, im->blobs[i].id, im->blobs[i].fd))
			log_msg(LOG_INFO, "a committed file of '%s@%s' is not kept in the cache",
				im->repo, im->branch);
	stage_forget_imports(s, im->repo, im->branch, im->staged, im->nstaged);
	for (size_t i = 0; i < im->nstaged; i++)
		cache_stage_file_remove(s->cache, im->staged[i]);
	stage_import_free(im);
}

/* Commits the pending rows of @rkey @branch.  Returns 0, -EAGAIN (the rows
 * changed meanwhile: try again), -ESTALE (a conflict: rows kept, marked), or
 * the commit's -errno (rows marked FAILED).  After a commit, *@import is
 * what stage_import_run() is to make cache blobs of (NULL otherwise). */
static int stage_commit_branch(struct stage *s, const char *rkey, const char *branch,
			       struct stage_import **import)
{
	struct cache_stage_change *rows = NULL;
	struct stage_op *ops = NULL;
	struct hub_op *hops = NULL;
	int64_t *ids = NULL;
	size_t nrows = 0, n = 0, nh, nstaged = 0;
	char(*staged)[CACHE_STAGE_NAME_SIZE] = NULL;
	char buf[STAGE_REPO_KEY_MAX], parent[41], base0[41], commit[HUB_COMMIT_LEN + 1],
	    summary[512];
	char err[CACHE_STAGE_ERROR_MAX];
	struct stage_import *im = NULL;
	bool conflicts = false, uploaded = false;
	struct hub_repo repo;
	struct hub_revision head;
	int rc;

	*import = NULL;
	rc = stage_repo_parse(rkey, buf, sizeof(buf), &repo);
	if (rc) {
		log_msg(LOG_ERR, "journal: '%s' is not a repo: its changes are kept", rkey);
		return -EIO;
	}
	rc = cache_stage_list(s->cache, rkey, branch, &rows, &nrows);
	if (rc)
		return rc;
	ops = calloc(nrows ? nrows : 1, sizeof(*ops));
	hops = calloc(nrows ? nrows : 1, sizeof(*hops));
	ids = calloc(nrows ? nrows : 1, sizeof(*ids));
	if (!ops || !hops || !ids) {
		rc = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < nrows; i++) {
		struct cache_stage_change *r = &rows[i];

		if (r->state == CACHE_STAGE_CONFLICT) {
			conflicts = true;
			continue;
		}
		if (r->kind != CACHE_STAGE_ADD && r->kind != CACHE_STAGE_DELETE_FILE &&
		    r->kind != CACHE_STAGE_RENAME && r->kind != CACHE_STAGE_DELETE_FOLDER)
			continue; /* not written by this version */
		ops[n].row = r;
		ops[n].fd = -1;
		ids[n] = r->id;
		n++;
	}
	if (n == 0) {
		rc = conflicts ? -ESTALE : 0;
		goto out;
	}
	snprintf(parent, sizeof(parent), "%s", ops[0].row->base_commit);
	if (!hub_commit_id_valid(parent, false)) {
		rc = meta_revision(s->meta, &repo, branch, &head);
		if (rc)
			goto failed;
		memcpy(parent, head.commit, sizeof(parent));
	}
	for (size_t i = 0; i < n; i++) {
		struct cache_stage_change *r = ops[i].row;
		int64_t size;

		if (r->kind != CACHE_STAGE_ADD)
			continue;
		ops[i].fd = cache_stage_file_open(s->cache, r->staged, false);
		if (ops[i].fd < 0) {
			rc = ops[i].fd == -ENOENT ? -EAGAIN : ops[i].fd;
			ops[i].fd = -1;
			goto out;
		}
		size = stage_fd_size(ops[i].fd);
		if (size < 0 || (uint64_t)size != r->size) {
			log_msg(
			    LOG_ERR, "staged '%s' of '%s@%s' has %lld bytes, the journal says %llu",
			    r->path, rkey, branch, (long long)size, (unsigned long long)r->size);
			rc = -EIO;
			goto failed;
		}
		rc = stage_hash(ops[i].fd, r->size, r->sha256, ops[i].git_id);
		if (rc)
			goto failed;
		cache_stage_set_content(s->cache, r->id, r->size, r->sha256);
	}
	stage_mark(s, ids, n, CACHE_STAGE_UPLOADING, NULL, true);
	memcpy(base0, parent, sizeof(base0));

	for (int round = 0;; round++) {
		nh = 0;
		for (size_t i = 0; i < n; i++) {
			struct cache_stage_change *r = ops[i].row;
			struct hub_op *h = &hops[nh];
			struct cache_entry e;

			ops[i].skip = false;
			if (r->kind == CACHE_STAGE_DELETE_FILE &&
			    (stage_moved_away(ops, n, r->path) || stage_in_folder(ops, n, i))) {
				ops[i].skip = true; /* a RENAME moves it, a folder deletion covers it */
				continue;
			}
			if (r->kind == CACHE_STAGE_DELETE_FILE || r->kind == CACHE_STAGE_DELETE_FOLDER) {
				/* a file that never reached the Hub has nothing to delete */
				rc = meta_lookup(s->meta, &repo, parent, r->path, &e);
				if (rc == -ENOENT) {
					ops[i].skip = true;
					continue;
				}
				if (rc)
					goto failed;
				cache_entry_release(&e);
			}
			memset(h, 0, sizeof(*h));
			h->path = r->path;
			h->fd = ops[i].fd;
			if (r->kind == CACHE_STAGE_DELETE_FILE)
				h->kind = HUB_OP_DELETE_FILE;
			else if (r->kind == CACHE_STAGE_DELETE_FOLDER)
				h->kind = HUB_OP_DELETE_FOLDER;
			else
				h->kind = HUB_OP_ADD;
			h->size = r->size;
			h->lfs = ops[i].lfs;
			if (r->kind == CACHE_STAGE_RENAME) {
				h->old_path = r->old_path; /* by reference: nothing to upload */
				h->lfs = true;
			}
			memcpy(h->sha256, r->sha256, sizeof(h->sha256));
			if (h->kind == HUB_OP_ADD && !h->old_path) {
				ops[i].progress = (struct stage_progress){
				    .s = s, .row = r->id, .size = r->size};
				h->progress = stage_progress;
				h->progress_arg = &ops[i].progress;
			}
			nh++;
		}
		if (nh == 0) {
			memcpy(commit, parent, sizeof(commit)); /* nothing to send */
			rc = 0;
			break;
		}
		if (!uploaded) {
			bool content = false;

			rc = stage_check_card(s, &repo, rkey, branch, ops, n, err, sizeof(err));
			if (rc == -EINVAL) {
				stage_mark(s, ids, n, CACHE_STAGE_FAILED, err, false);
				goto out;
			}
			if (rc)
				goto failed;

			for (size_t i = 0; i < nh; i++)
				if (hops[i].kind == HUB_OP_ADD && !hops[i].old_path)
					content = true;
			rc = content ? hub_preupload(s->http, &repo, branch, hops, nh) : 0;
			if (rc)
				goto failed;
			for (size_t i = 0; i < nh; i++) {
				if (hops[i].kind == HUB_OP_ADD && hops[i].lfs && !hops[i].old_path) {
					rc = hub_lfs_upload(s->http, &repo, branch, &hops[i]);
					if (rc)
						goto failed;
				}
			}
			/* the decisions hold for the next rounds: same files */
			for (size_t i = 0, j = 0; i < n; i++)
				if (!ops[i].skip)
					ops[i].lfs = hops[j++].lfs;
			uploaded = true;
		}
		stage_mark(s, ids, n, CACHE_STAGE_COMMITTING, NULL, false);
		if (stage_message(s, rkey, branch, summary, sizeof(summary)))
			; /* the one set for the branch, or --commit-message */
		else if (nh == 1 && hops[0].old_path)
			snprintf(summary, sizeof(summary), "Rename %s to %s with hubfs",
				 hops[0].old_path, hops[0].path);
		else if (nh == 1)
			snprintf(summary, sizeof(summary), "%s %s with hubfs",
				 hops[0].kind == HUB_OP_ADD ? "Upload" : "Delete", hops[0].path);
		else
			snprintf(summary, sizeof(summary), "Update %zu files with hubfs", nh);
		rc = hub_commit(s->http, &repo, branch, summary, parent, hops, nh, commit);
		if (rc != -ESTALE)
			break;
		/* the branch moved: go on only if none of our paths changed */
		meta_forget_revision(s->meta, &repo, branch);
		rc = meta_revision(s->meta, &repo, branch, &head);
		if (rc)
			goto failed;
		if (stage_landed(s, &repo, head.commit, ops, n)) {
			/* an earlier attempt made the commit but its answer was
			 * lost (a reset, a crash): do not make it twice */
			log_msg(LOG_NOTICE,
				"'%s@%s': the Hub has these changes already (at %s): not sent again",
				rkey, branch, head.commit);
			memcpy(commit, head.commit, sizeof(head.commit));
			rc = 0;
			break;
		}
		for (size_t i = 0; i < n; i++) {
			bool same = false;

			rc =
			    stage_path_same(s, &repo, parent, head.commit, ops[i].row->path, &same);
			if (!rc && same && ops[i].row->old_path)
				rc = stage_path_same(s, &repo, parent, head.commit,
						     ops[i].row->old_path, &same);
			if (rc)
				goto failed;
			if (!same) {
				snprintf(err, sizeof(err),
					 "conflict: '%s' changed on the Hub (now at %s) since %s; "
					 "to keep ours: setfattr -n user.hub.resolve -v ours FILE, "
					 "to drop ours: -v theirs",
					 ops[i].row->path, head.commit, parent);
				log_msg(LOG_ERR, "'%s@%s': %s; the change is kept, not committed",
					rkey, branch, err);
				stage_mark(s, ids, n, CACHE_STAGE_CONFLICT, err, false);
				rc = -ESTALE;
				goto out;
			}
		}
		if (round + 1 >= STAGE_REBASES) {
			rc = -EIO;
			goto failed;
		}
		log_msg(LOG_INFO, "'%s@%s' moved to %s; committing on top of it", rkey, branch,
			head.commit);
		memcpy(parent, head.commit, sizeof(parent));
	}
	if (rc)
		goto failed;
	rc =
	    cache_stage_committed(s->cache, rkey, branch, ids, n, base0, commit, &staged, &nstaged);
	if (rc) {
		log_msg(LOG_ERR, "'%s@%s' is committed (%s) but the journal cannot forget it: %s",
			rkey, branch, commit, strerror(-rc));
		goto out;
	}
	im = calloc(1, sizeof(*im));
	if (im) {
		im->repo = strdup(rkey);
		im->branch = strdup(branch);
		im->blobs = calloc(n, sizeof(*im->blobs));
	}
	if (!im || !im->repo || !im->branch || !im->blobs) {
		/* no memory: no blobs, the staged files go now */
		stage_import_free(im);
		im = NULL;
		for (size_t i = 0; i < nstaged; i++)
			cache_stage_file_remove(s->cache, staged[i]);
		free(staged);
	} else {
		for (size_t i = 0; i < n; i++) {
			struct cache_stage_change *r = ops[i].row;

			if (r->kind != CACHE_STAGE_ADD || r->size == 0 ||
			    (!ops[i].lfs && !ops[i].git_id[0]))
				continue;
			snprintf(im->blobs[im->nblobs].id, CACHE_ID_MAX, "%s",
				 ops[i].lfs ? r->sha256 : ops[i].git_id);
			im->blobs[im->nblobs++].fd = ops[i].fd;
			ops[i].fd = -1; /* the import closes it */
		}
		im->staged = staged;
		im->nstaged = nstaged;
	}
	meta_forget_revision(s->meta, &repo, branch);
	stage_forget_rows(s, rkey, branch, ids, n, base0, commit);
	if (!im) /* nothing stays to be read from the staged files */
		stage_forget_imports(s, rkey, branch, NULL, 0);
	*import = im;
	stage_tell_committed(s, rkey, branch, ops, n);
	log_msg(LOG_NOTICE, "'%s@%s': %zu change%s committed as %s", rkey, branch, n,
		n == 1 ? "" : "s", commit);
	rc = 0;
	goto out;
failed:
	snprintf(err, sizeof(err), "commit failed: %s", strerror(-rc));
	log_msg(LOG_WARNING, "'%s@%s': %s; the changes stay staged", rkey, branch, err);
	stage_mark(s, ids, n, CACHE_STAGE_FAILED, err, false);
out:
	for (size_t i = 0; ops && i < n; i++)
		if (ops[i].fd >= 0)
			close(ops[i].fd);
	free(ops);
	free(hops);
	free(ids);
	cache_stage_changes_free(rows, nrows);
	return rc;
}

/* ---- the worker ---- */

static int64_t stage_backoff_ms(unsigned failures)
{
	int64_t ms = 2000ll << (failures < 10 ? failures - 1 : 9);

	return ms > STAGE_BACKOFF_MAX_MS ? STAGE_BACKOFF_MAX_MS : ms;
}

void *stage_worker(void *arg)
{
	struct stage *s = arg;

	pthread_mutex_lock(&s->lock);
	while (!s->stop) {
		struct stage_branch *b, *next = NULL;
		int64_t now = stage_now_ms();
		struct stage_import *import = NULL;
		uint64_t req;
		int rc;

		for (b = s->branches; b; b = b->next)
			if (b->due && !b->busy && !b->holds && (!next || b->due < next->due))
				next = b;
		if (!next || next->due > now) {
			struct timespec ts;

			if (next) {
				stage_deadline(&ts, next->due - now);
				pthread_cond_timedwait(&s->wake, &s->lock, &ts);
			} else {
				pthread_cond_wait(&s->wake, &s->lock);
			}
			continue;
		}
		b = next;
		b->busy = true;
		b->due = 0;
		b->first = 0;
		req = b->req;
		pthread_mutex_unlock(&s->lock);
		rc = stage_commit_branch(s, b->repo, b->branch, &import);
		pthread_mutex_lock(&s->lock);
		b->busy = false;
		if (rc == -EAGAIN) {
			b->due = stage_now_ms() + 100; /* a row was replaced meanwhile */
			continue;
		}
		b->done = req;
		b->rc = rc;
		if (rc && rc != -ESTALE && rc != -EINVAL) { /* a conflict, a refused card: kept */
			b->failures++;
			if (b->failures < STAGE_RETRIES && !b->due)
				b->due = stage_now_ms() + stage_backoff_ms(b->failures);
			else if (!b->due)
				log_msg(LOG_ERR,
					"'%s@%s': giving up after %u failed commits; the changes"
					" stay staged until the next change, fsync or mount",
					b->repo, b->branch, b->failures);
		} else {
			b->failures = 0;
		}
		pthread_cond_broadcast(&s->done);
		if (import) {
			/* the waiters have their answer: now the cache copies */
			pthread_mutex_unlock(&s->lock);
			stage_import_run(s, import);
			pthread_mutex_lock(&s->lock);
		}
	}
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

int stage_resolve(struct stage *s, const char *repo, const char *branch, const char *path,
		  bool ours, const char *head)
{
	char(*staged)[CACHE_STAGE_NAME_SIZE] = NULL;
	struct cache_stage_change *rows = NULL;
	struct cache_stage_update u = {0};
	struct stage_branch *b;
	size_t nrows = 0, n = 0, nstaged = 0;
	int64_t *ids = NULL;
	bool busy;
	int rc;

	pthread_mutex_lock(&s->lock);
	b = stage_branch_get(s, repo, branch);
	busy = b && (b->busy || b->holds);
	pthread_mutex_unlock(&s->lock);
	if (!b)
		return -ENOMEM;
	if (busy)
		return -EBUSY; /* a commit of it is under way */
	rc = cache_stage_list(s->cache, repo, branch, &rows, &nrows);
	if (rc)
		return rc;
	ids = calloc(2 * nrows + 1, sizeof(*ids));
	if (!ids) {
		rc = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < nrows; i++) {
		const struct cache_stage_change *r = &rows[i];

		if (path && strcmp(r->path, path))
			continue;
		if (ours && r->state != CACHE_STAGE_CONFLICT)
			continue;
		ids[n++] = r->id;
		/* dropping a move drops the deletion of its source too */
		for (size_t j = 0; !ours && r->kind == CACHE_STAGE_RENAME && j < nrows; j++)
			if (rows[j].kind == CACHE_STAGE_DELETE_FILE && r->old_path &&
			    !strcmp(rows[j].path, r->old_path))
				ids[n++] = rows[j].id;
	}
	if (n == 0) {
		rc = -ENODATA;
		goto out;
	}
	if (ours) {
		/* our content goes on top of the Hub's head, as the user chose */
		u.set = CACHE_STAGE_SET_STATE | CACHE_STAGE_SET_ERROR | CACHE_STAGE_SET_BASE;
		u.state = CACHE_STAGE_PENDING;
		u.error = NULL;
		u.base_commit = head;
		rc = cache_stage_update(s->cache, ids, n, &u, NULL);
		if (rc)
			goto out;
		pthread_mutex_lock(&s->lock);
		for (struct stage_entry *e = s->entries; e; e = e->next) {
			for (size_t i = 0; i < n; i++) {
				if (e->row == ids[i]) {
					snprintf(e->base, sizeof(e->base), "%s", head);
					if (e->wr)
						snprintf(e->wr->base, sizeof(e->wr->base), "%s", head);
				}
			}
		}
		stage_queue(s, repo, branch);
		pthread_mutex_unlock(&s->lock);
		log_msg(LOG_NOTICE, "'%s@%s': %zu change%s in conflict go on top of %s", repo, branch,
			n, n == 1 ? "" : "s", head);
		goto out;
	}
	rc = cache_stage_forget(s->cache, repo, branch, ids, n, &staged, &nstaged);
	if (rc)
		goto out;
	pthread_mutex_lock(&s->lock);
	for (struct stage_entry *e = s->entries, *next; e; e = next) {
		next = e->next;
		for (size_t i = 0; i < n; i++) {
			if (e->row != ids[i])
				continue;
			stage_entry_forget_row(s, e, false);
			break;
		}
	}
	pthread_mutex_unlock(&s->lock);
	for (size_t i = 0; i < nstaged; i++)
		cache_stage_file_remove(s->cache, staged[i]);
	free(staged);
	log_msg(LOG_NOTICE, "'%s@%s': %zu staged change%s dropped: the Hub's version stands", repo,
		branch, n, n == 1 ? "" : "s");
out:
	free(ids);
	cache_stage_changes_free(rows, nrows);
	return rc;
}

int stage_sync(struct stage *s, const char *repo, const char *branch)
{
	struct stage_branch *b;
	struct timespec ts;
	uint64_t my;
	int rc = 0;

	stage_deadline(&ts, (int64_t)STAGE_SYNC_TIMEOUT_S * 1000);
	pthread_mutex_lock(&s->lock);
	b = stage_branch_get(s, repo, branch);
	if (!b) {
		pthread_mutex_unlock(&s->lock);
		return -ENOMEM;
	}
	my = ++b->req;
	b->due = 1; /* now, before any other */
	pthread_cond_signal(&s->wake);
	while (b->done < my && !rc && !s->stop)
		rc = pthread_cond_timedwait(&s->done, &s->lock, &ts);
	if (b->done >= my)
		rc = b->rc;
	else
		rc = -ETIMEDOUT;
	pthread_mutex_unlock(&s->lock);
	switch (rc) {
	case 0:
	case -EACCES:
	case -ENOSPC:
	case -EDQUOT:
	case -EINVAL:
	case -ENOMEM:
	case -ETIMEDOUT:
		return rc;
	default:
		return -EIO;
	}
}

void stage_drain(struct stage *s, int timeout)
{
	struct stage_branch *b;
	struct timespec ts;
	bool waiting;

	if (!s)
		return;
	stage_deadline(&ts, (int64_t)timeout * 1000);
	pthread_mutex_lock(&s->lock);
	for (b = s->branches; b; b = b->next) {
		if (b->due && b->failures == 0) {
			b->req++;
			b->due = 1;
		}
	}
	pthread_cond_signal(&s->wake);
	for (;;) {
		waiting = false;
		for (b = s->branches; b; b = b->next)
			if (b->busy || (b->done < b->req && b->failures == 0))
				waiting = true;
		if (!waiting)
			break;
		log_msg(LOG_NOTICE, "waiting for pending commits");
		if (pthread_cond_timedwait(&s->done, &s->lock, &ts))
			break;
	}
	for (b = s->branches; b; b = b->next) {
		uint64_t changes = 0, bytes = 0;

		if (cache_stage_count(s->cache, b->repo, b->branch, &changes, &bytes) || !changes)
			continue;
		log_msg(LOG_WARNING,
			"'%s@%s': %llu change%s (%llu bytes) not committed%s; kept in"
			" the cache for the next mount",
			b->repo, b->branch, (unsigned long long)changes, changes == 1 ? "" : "s",
			(unsigned long long)bytes, b->rc == -ESTALE ? " (conflict)" : "");
	}
	pthread_mutex_unlock(&s->lock);
}

/* Loads the journal into the overlay and queues its branches. */
int stage_resume(struct stage *s)
{
	struct cache_stage_branch *br = NULL;
	size_t nbr = 0;
	int rc;

	rc = cache_stage_orphans(s->cache, true, NULL, NULL);
	if (rc)
		log_msg(LOG_WARNING, "cannot remove orphan staged files: %s", strerror(-rc));
	rc = cache_stage_branches(s->cache, &br, &nbr);
	if (rc)
		return rc;
	for (size_t i = 0; i < nbr && !rc; i++) {
		struct cache_stage_change *rows = NULL;
		size_t n = 0;

		rc = cache_stage_list(s->cache, br[i].repo, br[i].branch, &rows, &n);
		if (rc)
			break;
		pthread_mutex_lock(&s->lock);
		for (size_t j = 0; j < n && !rc; j++) {
			struct cache_stage_change *r = &rows[j];
			struct stage_entry *e;

			if (r->kind != CACHE_STAGE_ADD && r->kind != CACHE_STAGE_DELETE_FILE &&
			    r->kind != CACHE_STAGE_RENAME && r->kind != CACHE_STAGE_DELETE_FOLDER)
				continue;
			e = stage_entry_new(s, r->repo, r->branch, r->path);
			if (!e) {
				rc = -ENOMEM;
				break;
			}
			if (r->kind == CACHE_STAGE_RENAME) {
				e->from = strdup(r->old_path);
				if (!e->from)
					rc = -ENOMEM;
				memcpy(e->sha256, r->sha256, sizeof(e->sha256));
			}
			e->deleted = r->kind == CACHE_STAGE_DELETE_FILE ||
				     r->kind == CACHE_STAGE_DELETE_FOLDER;
			memcpy(e->staged, r->staged, sizeof(e->staged));
			e->size = r->size;
			e->row = r->id;
			memcpy(e->base, r->base_commit, sizeof(e->base));
			e->version = ++s->versions;
		}
		if (!rc)
			stage_queue(s, br[i].repo, br[i].branch);
		pthread_mutex_unlock(&s->lock);
		if (!rc)
			log_msg(LOG_NOTICE, "'%s@%s': %llu staged change%s resumed", br[i].repo,
				br[i].branch, (unsigned long long)br[i].changes,
				br[i].changes == 1 ? "" : "s");
		cache_stage_changes_free(rows, n);
	}
	cache_stage_branches_free(br, nbr);
	return rc;
}

