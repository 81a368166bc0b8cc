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

#include "commit_plan.h"
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

/* The commit message set for @rkey @branch (user.hub.message), else
 * --commit-message, into @buf.  Returns whether there was one. */
static bool stage_message(struct stage *s, const char *rkey, const char *branch, char *buf,
			  size_t size, char **description)
{
	const char *m = s->message;

	*description = NULL;
	pthread_mutex_lock(&s->lock);
	for (struct stage_branch *b = s->branches; b; b = b->next) {
		if (strcmp(b->branch, branch) || strcmp(b->repo, rkey))
			continue;
		if (b->message)
			m = b->message;
		/* hubfs commit's, while it waits */
		if (b->msg_req) {
			if (b->req_message)
				m = b->req_message;
			if (b->req_description)
				*description = strdup(b->req_description);
		}
	}
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

/* One pass of the worker over a branch: the rows it lists, and what it
 * decided of them. */
struct commit_pass {
	struct stage *s;
	const char *rkey, *branch;
	struct hub_repo repo;
	char buf[STAGE_REPO_KEY_MAX];
	struct cache_stage_change *rows;
	size_t nrows;
	struct commit_op *ops; /* the rows to commit, in journal order */
	struct stage_progress *progress;
	struct hub_op *hops;
	size_t n;
	char parent[41];
	bool narrowed;	/* rows were left for the next pass */
	bool changed;	/* a row was replaced while the pass read it */
	int aside;	/* 0, or how rows of the branch are set aside: -ESTALE (a
			   conflict), -EINVAL (refused) */
	char err[CACHE_STAGE_ERROR_MAX];
};

/* Sets row @id aside in @state (CONFLICT or REFUSED) with @why; the
 * overlay's entry keeps @rc for stage_sync_path(). */
static void pass_set_aside(struct commit_pass *p, struct commit_op *op,
			   enum cache_stage_state state, const char *why, int rc)
{
	struct stage *s = p->s;

	stage_mark(s, &op->row->id, 1, state, why, false);
	op->out = true;
	/* the branch's answer: -EINVAL for a refused card (as fsync of it
	 * says), else -ESTALE: set aside, not retried */
	p->aside = rc == -EINVAL || p->aside == -EINVAL ? -EINVAL : -ESTALE;
	pthread_mutex_lock(&s->lock);
	for (struct stage_entry *e = s->entries; e; e = e->next) {
		if (e->row == op->row->id) {
			e->aside_row = e->row;
			e->aside_err = rc;
			break;
		}
	}
	pthread_mutex_unlock(&s->lock);
}

/* Lists the rows of the branch that are to be committed now.  A row of a
 * local-only path is marked LOCAL (and stays out); a LOCAL row whose path is
 * no longer local-only (--local-only changed) is committed again. */
static int pass_load(struct commit_pass *p)
{
	struct stage *s = p->s;
	int rc = cache_stage_list(s->cache, p->rkey, p->branch, &p->rows, &p->nrows);
	size_t m = p->nrows ? p->nrows : 1;

	if (rc)
		return rc;
	p->ops = calloc(m, sizeof(*p->ops));
	p->hops = calloc(m, sizeof(*p->hops));
	p->progress = calloc(m, sizeof(*p->progress));
	if (!p->ops || !p->hops || !p->progress)
		return -ENOMEM;
	for (size_t i = 0; i < p->nrows; i++) {
		struct cache_stage_change *r = &p->rows[i];
		bool local;

		if (r->kind != CACHE_STAGE_ADD && r->kind != CACHE_STAGE_DELETE_FILE &&
		    r->kind != CACHE_STAGE_RENAME && r->kind != CACHE_STAGE_DELETE_FOLDER)
			continue; /* not written by this version */
		if (r->state == CACHE_STAGE_CONFLICT || r->state == CACHE_STAGE_REFUSED) {
			bool card = r->state == CACHE_STAGE_REFUSED && strstr(r->error, "card");

			p->aside = card || p->aside == -EINVAL ? -EINVAL : -ESTALE;
			continue;
		}
		local = r->kind != CACHE_STAGE_DELETE_FILE && r->kind != CACHE_STAGE_DELETE_FOLDER &&
			stage_local_only(s, r->path);
		if (local) {
			if (r->state != CACHE_STAGE_LOCAL)
				stage_mark(s, &r->id, 1, CACHE_STAGE_LOCAL, NULL, false);
			continue;
		}
		p->ops[p->n].row = r;
		p->ops[p->n].fd = -1;
		p->n++;
	}
	return 0;
}

/* Opens and hashes the staged files of the ADD rows.  A row whose staged file
 * is gone or cut short is set aside (REFUSED): the rest of the branch
 * commits without it.  Returns 0, -EAGAIN (a row was replaced meanwhile),
 * or -errno. */
static int pass_open(struct commit_pass *p)
{
	struct stage *s = p->s;

	for (size_t i = 0; i < p->n; i++) {
		struct commit_op *op = &p->ops[i];
		struct cache_stage_change *r = op->row, now;
		int64_t size;
		int rc;

		if (r->kind != CACHE_STAGE_ADD)
			continue;
		op->fd = cache_stage_file_open(s->cache, r->staged, false);
		if (op->fd == -ENOENT) {
			op->fd = -1;
			/* replaced meanwhile (its file went with its row), or lost */
			rc = cache_stage_get(s->cache, r->id, &now);
			if (rc == -ENOENT) {
				p->changed = true;
				return -EAGAIN;
			}
			if (rc)
				return rc;
			cache_stage_change_release(&now);
			snprintf(p->err, sizeof(p->err),
				 "lost: the staged file of '%s' is missing from the cache; "
				 "to forget the change: setfattr -n user.hub.resolve -v theirs FILE",
				 r->path);
			log_msg(LOG_ERR, "'%s@%s': %s; the other changes are committed", p->rkey,
				p->branch, p->err);
			pass_set_aside(p, op, CACHE_STAGE_REFUSED, p->err, -EIO);
			continue;
		}
		if (op->fd < 0) {
			rc = op->fd;
			op->fd = -1;
			return rc;
		}
		size = stage_fd_size(op->fd);
		if (size < 0 || (uint64_t)size != r->size) {
			snprintf(p->err, sizeof(p->err),
				 "lost: the staged file of '%s' has %lld bytes, the journal says %llu; "
				 "to forget the change: setfattr -n user.hub.resolve -v theirs FILE",
				 r->path, (long long)size, (unsigned long long)r->size);
			log_msg(LOG_ERR, "'%s@%s': %s; the other changes are committed", p->rkey,
				p->branch, p->err);
			pass_set_aside(p, op, CACHE_STAGE_REFUSED, p->err, -EIO);
			continue;
		}
		rc = stage_hash(op->fd, r->size, r->sha256, op->git_id);
		if (rc)
			return rc;
		cache_stage_set_content(s->cache, r->id, r->size, r->sha256);
	}
	return 0;
}

/* The ids of the ops of fate @a or @b into @ids; returns how many. */
static size_t pass_ids(const struct commit_pass *p, enum commit_fate a, enum commit_fate b,
		       int64_t *ids)
{
	size_t k = 0;

	for (size_t i = 0; i < p->n; i++)
		if (!p->ops[i].out && (p->ops[i].fate == a || p->ops[i].fate == b))
			ids[k++] = p->ops[i].row->id;
	return k;
}

/* The hub_op lines of the SEND ops into p->hops; returns how many. */
static size_t pass_lines(struct commit_pass *p)
{
	size_t nh = 0;

	for (size_t i = 0; i < p->n; i++) {
		struct commit_op *op = &p->ops[i];
		struct cache_stage_change *r = op->row;
		struct hub_op *h = &p->hops[nh];

		if (op->fate != COMMIT_SEND)
			continue;
		memset(h, 0, sizeof(*h));
		h->path = r->path;
		h->fd = op->fd;
		if (r->kind == CACHE_STAGE_DELETE_FILE)
			h->kind = HUB_OP_DELETE_FILE;
		else if (r->kind == CACHE_STAGE_DELETE_FOLDER)
			h->kind = HUB_OP_DELETE_FOLDER;
		else
			h->kind = HUB_OP_ADD;
		h->size = r->size;
		h->lfs = op->lfs;
		if (r->kind == CACHE_STAGE_RENAME) {
			h->old_path = r->old_path; /* by reference: nothing to upload */
			h->lfs = true;
		}
		memcpy(h->sha256, r->sha256, sizeof(h->sha256));
		if (h->kind == HUB_OP_ADD && !h->old_path) {
			p->progress[i] = (struct stage_progress){.s = p->s, .row = r->id,
								 .size = r->size};
			h->progress = stage_progress;
			h->progress_arg = &p->progress[i];
		}
		op->line = h;
		nh++;
	}
	return nh;
}

/* A README.md at the root is the repo's card: its metadata is checked with
 * the Hub's validator before the commit, as the official clients do.  An
 * invalid card is set aside (REFUSED, -EINVAL, the Hub's reason logged);
 * the rest commits.  Returns 0 or -errno. */
static int pass_check_card(struct commit_pass *p, struct commit_op *op)
{
	const struct cache_stage_change *r = op->row;
	char *buf, *reason = NULL;
	ssize_t got;
	int rc;

	if (r->kind != CACHE_STAGE_ADD || strcmp(r->path, "README.md") || op->fd < 0 ||
	    r->size > HUB_REGULAR_MAX)
		return 0;
	buf = malloc(r->size + 1);
	if (!buf)
		return -ENOMEM;
	got = pread(op->fd, buf, r->size, 0);
	if (got < 0 || (uint64_t)got != r->size) {
		free(buf);
		return got < 0 ? -errno : -EIO;
	}
	buf[got] = '\0';
	rc = hub_validate_yaml(p->s->http, p->repo.type, buf, &reason);
	free(buf);
	if (rc == -EINVAL) {
		snprintf(p->err, sizeof(p->err), "invalid card metadata in README.md: %s",
			 reason && *reason ? reason : "refused by the Hub");
		log_msg(LOG_ERR, "'%s@%s': %s; the change stays staged, not committed", p->rkey,
			p->branch, p->err);
		pass_set_aside(p, op, CACHE_STAGE_REFUSED, p->err, -EINVAL);
		rc = 0;
	}
	free(reason);
	return rc;
}

/* Validates the card, asks preupload and uploads the LFS objects of the
 * SEND ops not uploaded yet.  Returns 0, -EAGAIN (a card was set aside:
 * plan again), or -errno. */
static int pass_upload(struct commit_pass *p, bool *uploaded)
{
	size_t nh;
	bool content = false, aside = false;
	int rc;

	for (size_t i = 0; i < p->n; i++) {
		if (p->ops[i].fate != COMMIT_SEND || uploaded[i])
			continue;
		rc = pass_check_card(p, &p->ops[i]);
		if (rc)
			return rc;
		aside |= p->ops[i].out;
	}
	if (aside)
		return -EAGAIN;
	nh = pass_lines(p);
	for (size_t i = 0; i < p->n; i++) {
		struct hub_op *h = p->ops[i].line;

		if (p->ops[i].fate == COMMIT_SEND && !uploaded[i] && h->kind == HUB_OP_ADD &&
		    !h->old_path)
			content = true;
	}
	if (!content)
		return 0;
	/* preupload asks of every file line: the decisions are the same */
	rc = hub_preupload(p->s->http, &p->repo, p->branch, p->hops, nh);
	for (size_t i = 0; !rc && i < p->n; i++) {
		struct hub_op *h = p->ops[i].line;

		if (p->ops[i].fate != COMMIT_SEND || uploaded[i])
			continue;
		if (h->kind == HUB_OP_ADD && h->lfs && !h->old_path)
			rc = hub_lfs_upload(p->s->http, &p->repo, p->branch, h);
		if (!rc) {
			p->ops[i].lfs = h->lfs;
			uploaded[i] = true;
		}
	}
	return rc;
}

/* Whether an op sent in the commit of @ops changes @path. */
static bool commit_touches(const struct commit_op *ops, size_t n, const char *path)
{
	for (size_t i = 0; i < n; i++) {
		const struct cache_stage_change *r = ops[i].row;

		if (ops[i].out || ops[i].fate != COMMIT_SEND)
			continue;
		if (!strcmp(r->path, path) || (r->old_path && !strcmp(r->old_path, path)))
			return true;
		if (r->kind == CACHE_STAGE_DELETE_FOLDER && !strncmp(path, r->path, strlen(r->path)) &&
		    path[strlen(r->path)] == '/')
			return true;
	}
	return false;
}

/* After commit @commit on @parent: the overlay forgets the committed rows
 * @ids, and every row and writer of the branch that was based on @parent,
 * or that touches a path the commit changed, is based on @commit now (what
 * the commit made is what they derive from): hubfs never conflicts with its
 * own commits.  Without @linear (a commit found on the Hub, which others may
 * have committed on top of) only the rows of its paths are. */
static void pass_forget(struct commit_pass *p, const int64_t *ids, size_t n, const char *commit,
			bool linear)
{
	struct stage *s = p->s;
	const char *repo = p->rkey, *branch = p->branch;
	struct cache_stage_change *rows = NULL;
	size_t nrows = 0, k = 0;
	int64_t *rebase = NULL;

	pthread_mutex_lock(&s->lock);
	for (struct stage_entry *e = s->entries; e; e = e->next) {
		bool touched;

		if (strcmp(e->branch, branch) || strcmp(e->repo, repo))
			continue;
		touched = commit_touches(p->ops, p->n, e->path);
		if (e->wr && (touched || (linear && !strcmp(e->wr->base, p->parent))))
			snprintf(e->wr->base, sizeof(e->wr->base), "%s", commit);
		if (e->row && (touched || (linear && !strcmp(e->base, p->parent))))
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
				 * file until they are a cache blob; a writer
				 * opened meanwhile derives from this commit */
				e->importing = e->staged[0] && e->size > 0 && !e->deleted;
				snprintf(e->base, sizeof(e->base), "%s", commit);
				stage_entry_forget_row(s, e, e->importing);
				break;
			}
		}
	}
	pthread_mutex_unlock(&s->lock);

	/* the journal's rows of the paths it changed (written again meanwhile) */
	if (cache_stage_list(s->cache, repo, branch, &rows, &nrows))
		return;
	rebase = calloc(nrows ? nrows : 1, sizeof(*rebase));
	for (size_t i = 0; rebase && i < nrows; i++)
		if (strcmp(rows[i].base_commit, commit) &&
		    rows[i].state != CACHE_STAGE_CONFLICT &&
		    commit_touches(p->ops, p->n, rows[i].path))
			rebase[k++] = rows[i].id;
	if (k) {
		struct cache_stage_update u = {.set = CACHE_STAGE_SET_BASE, .base_commit = commit};

		if (cache_stage_update(s->cache, rebase, k, &u, NULL))
			log_msg(LOG_WARNING, "'%s@%s': cannot rebase %zu staged changes on %s",
				repo, branch, k, commit);
	}
	free(rebase);
	cache_stage_changes_free(rows, nrows);
}

/* Tells the stage's user which paths the commit changed. */
static void pass_tell(struct commit_pass *p)
{
	struct stage *s = p->s;
	const char **paths;
	size_t np = 0;

	if (!s->committed || p->n == 0)
		return;
	paths = calloc(2 * p->n, sizeof(*paths));
	if (!paths)
		return; /* the kernel's caches expire with the TTL */
	for (size_t i = 0; i < p->n; i++) {
		if (p->ops[i].out || p->ops[i].fate != COMMIT_SEND)
			continue;
		paths[np++] = p->ops[i].row->path;
		if (p->ops[i].row->old_path)
			paths[np++] = p->ops[i].row->old_path;
	}
	if (np)
		s->committed(s->committed_arg, p->rkey, p->branch, paths, np);
	free(paths);
}

/* The commit is @commit (made now, or found on the Hub with @made false):
 * the journal and the overlay forget its rows and those it made needless,
 * and its staged files are to become cache blobs (*@import). */
static int pass_done(struct commit_pass *p, const char *commit, bool made,
		     struct stage_import **import)
{
	struct stage *s = p->s;
	char(*staged)[CACHE_STAGE_NAME_SIZE] = NULL;
	struct stage_import *im = NULL;
	size_t nstaged = 0, nsent, nids;
	int64_t *ids = calloc(p->n ? p->n : 1, sizeof(*ids));
	int rc;

	if (!ids)
		return -ENOMEM;
	nsent = pass_ids(p, COMMIT_SEND, COMMIT_SEND, ids);
	nids = pass_ids(p, COMMIT_SEND, COMMIT_SKIP, ids);
	if (nids == 0) {
		free(ids);
		return 0;
	}
	/* rows based on the parent are based on the commit now, when it is
	 * the commit's parent for sure */
	rc = cache_stage_committed(s->cache, p->rkey, p->branch, ids, nids,
				   made ? p->parent : commit, commit, &staged, &nstaged);
	if (rc) {
		log_msg(LOG_ERR, "'%s@%s' is committed (%s) but the journal cannot forget it: %s",
			p->rkey, p->branch, commit, strerror(-rc));
		free(ids);
		return rc;
	}
	im = calloc(1, sizeof(*im));
	if (im) {
		im->repo = strdup(p->rkey);
		im->branch = strdup(p->branch);
		im->blobs = calloc(p->n ? p->n : 1, sizeof(*im->blobs));
	}
	if (!im || !im->repo || !im->branch || !im->blobs) {
		/* no memory: no blobs, the staged files go now */
		stage_import_free(im);
		im = NULL;
		for (size_t i = 0; i < nstaged; i++)
			cache_stage_file_remove(s->cache, staged[i]);
		free(staged);
	} else {
		for (size_t i = 0; i < p->n; i++) {
			struct commit_op *op = &p->ops[i];
			struct cache_stage_change *r = op->row;

			if (op->out || op->fate != COMMIT_SEND || r->kind != CACHE_STAGE_ADD ||
			    r->size == 0 || (!op->lfs && !op->git_id[0]))
				continue;
			snprintf(im->blobs[im->nblobs].id, CACHE_ID_MAX, "%s",
				 op->lfs ? r->sha256 : op->git_id);
			im->blobs[im->nblobs++].fd = op->fd;
			op->fd = -1; /* the import closes it */
		}
		im->staged = staged;
		im->nstaged = nstaged;
	}
	if (made) {
		struct stage_branch *b;

		pthread_mutex_lock(&s->lock);
		b = stage_branch_get(s, p->rkey, p->branch);
		if (b) {
			struct commit_own *o = &b->own[b->nown++ % STAGE_OWN_MAX];

			memcpy(o->commit, commit, sizeof(o->commit));
			memcpy(o->parent, p->parent, sizeof(o->parent));
		}
		pthread_mutex_unlock(&s->lock);
	}
	meta_forget_revision(s->meta, &p->repo, p->branch);
	pass_forget(p, ids, nids, commit, made || !strcmp(commit, p->parent));
	if (!im) /* nothing stays to be read from the staged files */
		stage_forget_imports(s, p->rkey, p->branch, NULL, 0);
	*import = im;
	if (nsent)
		pass_tell(p);
	if (made)
		log_msg(LOG_NOTICE, "'%s@%s': committed as %s (%zu change%s sent, %zu needless)",
			p->rkey, p->branch, commit, nsent, nsent == 1 ? "" : "s", nids - nsent);
	else
		log_msg(LOG_INFO, "'%s@%s': %zu change%s needed no commit (at %s)", p->rkey,
			p->branch, nids, nids == 1 ? "" : "s", commit);
	free(ids);
	return 0;
}

/* Leaves the second half of the SEND ops out of this commit: the Hub refused
 * a commit of them all, and one of them is why.  Halving finds it in a few
 * commits, and the others land meanwhile. */
static void pass_narrow(struct commit_pass *p, size_t nsend, int64_t *ids)
{
	size_t k = 0, nids = 0;

	for (size_t i = 0; i < p->n; i++) {
		if (p->ops[i].out || p->ops[i].fate != COMMIT_SEND)
			continue;
		if (k++ >= nsend / 2) {
			p->ops[i].out = true;
			ids[nids++] = p->ops[i].row->id;
		}
	}
	stage_mark(p->s, ids, nids, CACHE_STAGE_PENDING, NULL, false);
	p->narrowed = true;
}

/* Commits the pending rows of @rkey @branch (see commit_plan.h for what
 * decides the parent and the rows).  Returns 0; -EINPROGRESS (some rows
 * committed, others left for a pass right after: the Hub refused a commit
 * of them together); -EAGAIN (the rows changed meanwhile: try again);
 * -ESTALE or -EINVAL (rows of the branch are set aside as a conflict or
 * refused; the rest is committed); or the commit's -errno (rows marked
 * FAILED, retried with backoff).  After a commit, *@import is what
 * stage_import_run() is to make cache blobs of (NULL otherwise). */
static int stage_commit_branch(struct stage *s, const char *rkey, const char *branch,
			       struct stage_import **import)
{
	struct commit_pass pass = {.s = s, .rkey = rkey, .branch = branch}, *p = &pass;
	char commit[HUB_COMMIT_LEN + 1], summary[512], why[1024], *description = NULL;
	struct commit_own own[STAGE_OWN_MAX];
	struct stage_branch *b;
	size_t nown;
	struct hub_revision head;
	bool *uploaded = NULL, made = false;
	int64_t *ids = NULL;
	int rc, rounds = 0;

	*import = NULL;
	if (stage_repo_parse(rkey, p->buf, sizeof(p->buf), &p->repo)) {
		log_msg(LOG_ERR, "journal: '%s' is not a repo: its changes are kept", rkey);
		return -EIO;
	}
	rc = pass_load(p);
	if (!rc && p->n == 0)
		rc = p->aside; /* nothing to commit; some rows may be set aside */
	if (rc || p->n == 0)
		goto out;
	uploaded = calloc(p->n, sizeof(*uploaded));
	ids = calloc(p->n, sizeof(*ids));
	if (!uploaded || !ids) {
		rc = -ENOMEM;
		goto out;
	}
	rc = pass_open(p);
	if (rc)
		goto out_failed;
	/* the parent: the head as meta knows it; looked up again when a row
	 * was based on another (it may be newer than what meta holds) */
	rc = meta_revision(s->meta, &p->repo, branch, &head);
	for (size_t i = 0; !rc && i < p->n; i++) {
		if (!p->ops[i].out && hub_commit_id_valid(p->ops[i].row->base_commit, false) &&
		    strcmp(p->ops[i].row->base_commit, head.commit)) {
			meta_forget_revision(s->meta, &p->repo, branch);
			rc = meta_revision(s->meta, &p->repo, branch, &head);
			break;
		}
	}
	if (rc)
		goto out_failed;
	memcpy(p->parent, head.commit, sizeof(p->parent));
	stage_mark(s, ids, pass_ids(p, COMMIT_SEND, COMMIT_SEND, ids), CACHE_STAGE_UPLOADING,
		   NULL, true);

	for (;;) {
		size_t nsend = 0;

		pthread_mutex_lock(&s->lock);
		b = stage_branch_get(s, rkey, branch);
		nown = b ? (b->nown < STAGE_OWN_MAX ? b->nown : STAGE_OWN_MAX) : 0;
		if (nown)
			memcpy(own, b->own, nown * sizeof(*own));
		pthread_mutex_unlock(&s->lock);
		rc = commit_plan(s->meta, &p->repo, p->parent, p->ops, p->n, own, nown);
		if (rc)
			goto out_failed;
		for (size_t i = 0; i < p->n; i++) {
			struct commit_op *op = &p->ops[i];

			if (op->out)
				continue;
			if (op->fate == COMMIT_CONFLICT) {
				snprintf(p->err, sizeof(p->err),
					 "conflict: '%s' changed on the Hub (now at %s) since %s; "
					 "to keep ours: setfattr -n user.hub.resolve -v ours FILE, "
					 "to drop ours: -v theirs",
					 op->row->path, p->parent, op->row->base_commit);
				log_msg(LOG_ERR, "'%s@%s': %s; the change is kept, not committed",
					rkey, branch, p->err);
				pass_set_aside(p, op, CACHE_STAGE_CONFLICT, p->err, -ESTALE);
			} else if (op->fate == COMMIT_SEND) {
				nsend++;
			}
		}
		if (nsend == 0) {
			memcpy(commit, p->parent, sizeof(commit)); /* nothing to send */
			break;
		}
		rc = pass_upload(p, uploaded);
		if (rc == -EAGAIN)
			continue; /* a card was set aside: plan again */
		if (rc)
			goto out_failed;
		stage_mark(s, ids, pass_ids(p, COMMIT_SEND, COMMIT_SEND, ids),
			   CACHE_STAGE_COMMITTING, NULL, false);
		if (!stage_message(s, rkey, branch, summary, sizeof(summary), &description))
			commit_title(s->meta, &p->repo, p->parent, p->ops, p->n, summary,
				     sizeof(summary));
		why[0] = '\0';
		rc = hub_commit_described(s->http, &p->repo, branch, summary, description,
					  p->parent, p->hops, pass_lines(p), commit, why,
					  sizeof(why));
		free(description);
		description = NULL;
		if (rc == 0) {
			made = true;
			break;
		}
		if (rc == -EINVAL) {
			/* the Hub refused what the commit does */
			if (nsend > 1) {
				log_msg(LOG_WARNING,
					"'%s@%s': the Hub refused a commit of %zu changes (%s): "
					"committing them in parts",
					rkey, branch, nsend, why);
				pass_narrow(p, nsend, ids);
				continue;
			}
			for (size_t i = 0; i < p->n; i++) {
				if (p->ops[i].out || p->ops[i].fate != COMMIT_SEND)
					continue;
				snprintf(p->err, sizeof(p->err), "refused by the Hub: %s",
					 why[0] ? why : "400");
				log_msg(LOG_ERR, "'%s@%s': '%s' %s; set aside, not retried", rkey,
					branch, p->ops[i].row->path, p->err);
				pass_set_aside(p, &p->ops[i], CACHE_STAGE_REFUSED, p->err,
					       -EINVAL);
			}
			continue;
		}
		if (rc != -ESTALE)
			goto out_failed;
		/* the branch moved: plan again on its new head */
		meta_forget_revision(s->meta, &p->repo, branch);
		rc = meta_revision(s->meta, &p->repo, branch, &head);
		if (rc)
			goto out_failed;
		if (commit_landed(s->meta, &p->repo, head.commit, p->ops, p->n)) {
			/* an earlier attempt made the commit but its answer was
			 * lost (a reset, a crash): do not make it twice */
			log_msg(LOG_NOTICE,
				"'%s@%s': the Hub has these changes already (at %s): not sent again",
				rkey, branch, head.commit);
			memcpy(commit, head.commit, sizeof(head.commit));
			break;
		}
		if (++rounds >= STAGE_REBASES) {
			rc = -EIO;
			goto out_failed;
		}
		log_msg(LOG_INFO, "'%s@%s' moved to %s; committing on top of it", rkey, branch,
			head.commit);
		memcpy(p->parent, head.commit, sizeof(p->parent));
	}
	rc = pass_done(p, commit, made, import);
	if (!rc)
		rc = p->narrowed ? -EINPROGRESS : p->aside;
	goto out;
out_failed:
	if (p->changed)
		goto out; /* -EAGAIN: the worker looks again soon */
	snprintf(p->err, sizeof(p->err), "commit failed: %s", strerror(-rc));
	log_msg(LOG_WARNING, "'%s@%s': %s; the changes stay staged", rkey, branch, p->err);
	if (ids)
		stage_mark(s, ids, pass_ids(p, COMMIT_SEND, COMMIT_LATER, ids), CACHE_STAGE_FAILED,
			   p->err, false);
out:
	for (size_t i = 0; p->ops && i < p->n; i++)
		if (p->ops[i].fd >= 0)
			close(p->ops[i].fd);
	free(p->ops);
	free(p->hops);
	free(p->progress);
	free(uploaded);
	free(ids);
	cache_stage_changes_free(p->rows, p->nrows);
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
			/* a row was replaced meanwhile: look again soon, a
			 * little later each time */
			unsigned k = b->changed < 6 ? b->changed : 6;

			b->changed++;
			if (!b->due)
				b->due = stage_now_ms() + (100ll << k);
			continue;
		}
		b->changed = 0;
		if (rc == -EINPROGRESS) {
			/* committed a part, the rest right after: the waiters
			 * are answered when it is all done */
			b->failures = 0;
			b->due = 1;
			pthread_cond_broadcast(&s->done);
			goto imported;
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
imported:
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

/* What a hubfs commit asks (stage_commit_now()) and gets. */
struct stage_request {
	const char *message, *description; /* borrowed */
	bool *made;
	char *commit;
};

/* Waits for a pass of the worker over @repo @branch that began after the
 * call; answers its result, or for @path (non-NULL) that of @path's row.
 * With @q, the commits made meanwhile carry its message and description,
 * and it learns whether one was made, and which. */
static int stage_wait_pass(struct stage *s, const char *repo, const char *branch,
			   const char *path, const struct stage_request *q)
{
	char *message = NULL, *description = NULL;
	struct stage_branch *b;
	struct stage_entry *e;
	struct timespec ts;
	unsigned nown = 0;
	uint64_t my;
	int rc = 0;

	if (q && ((q->message && !(message = strdup(q->message))) ||
		  (q->description && !(description = strdup(q->description))))) {
		free(message);
		return -ENOMEM;
	}
	stage_deadline(&ts, (int64_t)STAGE_SYNC_TIMEOUT_S * 1000);
	pthread_mutex_lock(&s->lock);
	b = stage_branch_get(s, repo, branch);
	if (!b) {
		pthread_mutex_unlock(&s->lock);
		free(message);
		free(description);
		return -ENOMEM;
	}
	my = ++b->req;
	if (q) {
		free(b->req_message);
		free(b->req_description);
		b->req_message = message;
		b->req_description = description;
		b->msg_req = my;
		nown = b->nown;
	}
	b->due = 1; /* now, before any other */
	pthread_cond_signal(&s->wake);
	while (b->done < my && !rc && !s->stop)
		rc = pthread_cond_timedwait(&s->done, &s->lock, &ts);
	if (b->done < my) {
		rc = -ETIMEDOUT;
	} else if (!path) {
		rc = b->rc;
	} else {
		e = stage_find(s, repo, branch, path);
		if (!e || !e->row || stage_local_only(s, path))
			rc = 0; /* on the Hub, or never to be */
		else if (e->aside_row == e->row)
			rc = e->aside_err;
		else /* still pending: the pass failed */
			rc = b->rc == -ESTALE || b->rc == -EINVAL ? -EIO : b->rc;
	}
	if (q) {
		/* the commits made since the request are its own */
		*q->made = b->nown != nown;
		if (*q->made)
			memcpy(q->commit, b->own[(b->nown - 1) % STAGE_OWN_MAX].commit,
			       HUB_COMMIT_LEN + 1);
		if (!rc) {
			b->asked = true;
			b->asked_made = *q->made;
			if (*q->made)
				memcpy(b->asked_commit, q->commit, sizeof(b->asked_commit));
		}
		if (b->msg_req == my) {
			free(b->req_message);
			free(b->req_description);
			b->req_message = b->req_description = NULL;
			b->msg_req = 0;
		}
	}
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

int stage_sync(struct stage *s, const char *repo, const char *branch)
{
	return stage_wait_pass(s, repo, branch, NULL, NULL);
}

int stage_sync_path(struct stage *s, const char *repo, const char *branch, const char *path)
{
	return stage_wait_pass(s, repo, branch, path, NULL);
}

int stage_commit_now(struct stage *s, const char *repo, const char *branch, const char *message,
		     const char *description, bool *made, char commit[HUB_COMMIT_LEN + 1])
{
	struct stage_request q = {
		.message = message, .description = description, .made = made, .commit = commit
	};

	*made = false;
	return stage_wait_pass(s, repo, branch, NULL, &q);
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
		log_msg(LOG_WARNING, "cannot move orphan staged files: %s", strerror(-rc));
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
			if (r->state == CACHE_STAGE_CONFLICT || r->state == CACHE_STAGE_REFUSED) {
				e->aside_row = r->id;
				e->aside_err = r->state == CACHE_STAGE_CONFLICT ? -ESTALE
					       : strstr(r->error, "card")     ? -EINVAL
									      : -EIO;
			}
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


int stage_commit_asked(struct stage *s, const char *repo, const char *branch, bool *made,
		       char commit[HUB_COMMIT_LEN + 1])
{
	int rc = -ENODATA;

	pthread_mutex_lock(&s->lock);
	for (struct stage_branch *b = s->branches; b; b = b->next) {
		if (!b->asked || strcmp(b->branch, branch) || strcmp(b->repo, repo))
			continue;
		*made = b->asked_made;
		if (b->asked_made)
			memcpy(commit, b->asked_commit, HUB_COMMIT_LEN + 1);
		rc = 0;
	}
	pthread_mutex_unlock(&s->lock);
	return rc;
}
