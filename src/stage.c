/*
 * The staging overlay.  See stage.h; the commit worker is commit.c.
 *
 * The overlay is a list of entries, one per (repo, branch, path) that has a
 * journal row or an open writer; it is small (the changes not yet
 * committed) and scanned linearly.  Each branch with changes has a queue
 * record: when it is due (the quiet period after its last change), how
 * often its commit failed in a row, and the counters stage_sync() waits on.
 * Every change is journaled, with the head it was based on, before the call
 * that made it returns; the worker commits what the journal holds.
 *
 * Renames: a file renamed within a branch is journaled as two rows, the
 * new path first (a RENAME row for an LFS file of the tree: moved by
 * reference, no upload; an ADD of a copy of its content otherwise), then a
 * DELETE_FILE of the old path.  The branch is held meanwhile (the worker does
 * not start its commit), so both land in ONE commit; a crash between the two
 * leaves a copy, never a loss.  A RENAME row's move covers the deletion of
 * its old path: that DELETE_FILE is not sent on its own.
 *
 * Directories: mkdir makes an overlay entry that is a directory in memory
 * only (no row: the Hub has no empty folders).  rmdir of a folder of the
 * tree journals a DELETE_FOLDER row; the DELETE_FILE rows of files under it
 * that precede it are then not sent (the folder would be gone before its
 * deletion).
 *
 * Locking: s->lock protects the entries, the branch records and the worker's
 * state; a writer's lock protects its file.  Lock order: a writer's lock,
 * then s->lock.  Neither is held across network I/O; a writer's lock is held
 * across local file I/O of that writer only.
 */
#include "config.h"

#include "stage_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"


int64_t stage_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void stage_deadline(struct timespec *ts, int64_t ms_from_now)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
	ts->tv_sec += ms_from_now / 1000;
	ts->tv_nsec += (ms_from_now % 1000) * 1000000;
	if (ts->tv_nsec >= 1000000000) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000;
	}
}

void stage_repo_key(const struct hub_repo *repo, char key[STAGE_REPO_KEY_MAX])
{
	const char *t = repo->type == HUB_REPO_DATASET ? "dataset"
			: repo->type == HUB_REPO_SPACE ? "space"
						       : "model";

	snprintf(key, STAGE_REPO_KEY_MAX, "%s/%s/%s", t, repo->ns, repo->name);
}

/* Parses a repo key into @repo, whose strings point into @buf. */
int stage_repo_parse(const char *key, char *buf, size_t size, struct hub_repo *repo)
{
	char *ns, *name;

	if (snprintf(buf, size, "%s", key) >= (int)size)
		return -EINVAL;
	ns = strchr(buf, '/');
	if (!ns)
		return -EINVAL;
	*ns++ = '\0';
	name = strchr(ns, '/');
	if (!name)
		return -EINVAL;
	*name++ = '\0';
	if (!strcmp(buf, "model"))
		repo->type = HUB_REPO_MODEL;
	else if (!strcmp(buf, "dataset"))
		repo->type = HUB_REPO_DATASET;
	else if (!strcmp(buf, "space"))
		repo->type = HUB_REPO_SPACE;
	else
		return -EINVAL;
	repo->ns = ns;
	repo->name = name;
	return hub_name_valid(ns) && hub_name_valid(name) ? 0 : -EINVAL;
}

const char *const STAGE_LOCAL_DEFAULT[] = {
    ".*.sw?",	 /* vim swap files: .f.swp, .f.swo, ... */
    ".*.sw??",	 /* and .f.swpx */
    "4913",	 /* vim's test of a directory before :w */
    "*~",	 /* vim, emacs and nano backups */
    ".#*",	 /* emacs lock files */
    "#*#",	 /* emacs autosaves */
    ".nfs*",	 /* NFS silly renames */
    ".~lock.*#", /* LibreOffice locks */
    "*.kate-swp", /* Kate swap files */
    ".goutputstream-*", /* GNOME (gedit) atomic saves */
    "tmp????????", /* Python's tempfile names (mkstemp, NamedTemporaryFile) */
    "*.tmp",
    NULL,
};

bool stage_local_only(struct stage *s, const char *path)
{
	const char *name = strrchr(path, '/');

	name = name ? name + 1 : path;
	for (size_t i = 0; STAGE_LOCAL_DEFAULT[i]; i++)
		if (!fnmatch(STAGE_LOCAL_DEFAULT[i], name, 0))
			return true;
	for (size_t i = 0; i < s->nlocal; i++)
		if (!fnmatch(s->local[i], name, 0))
			return true;
	return false;
}

/* Row @id of @path was just journaled: a scratch file's row is LOCAL at
 * once, so that hubfs status and umount never count it as to commit. */
static void stage_journaled(struct stage *s, const char *path, int64_t id)
{
	struct cache_stage_update u = {.set = CACHE_STAGE_SET_STATE, .state = CACHE_STAGE_LOCAL};

	if (stage_local_only(s, path) && cache_stage_update(s->cache, &id, 1, &u, NULL))
		log_msg(LOG_WARNING, "cannot mark '%s' local-only in the journal", path);
}

/* ---- the overlay (s->lock held) ---- */

struct stage_entry *stage_find(struct stage *s, const char *repo, const char *branch,
				      const char *path)
{
	for (struct stage_entry *e = s->entries; e; e = e->next)
		if (!strcmp(e->path, path) && !strcmp(e->branch, branch) && !strcmp(e->repo, repo))
			return e;
	return NULL;
}

static void stage_entry_free(struct stage_entry *e)
{
	free(e->repo);
	free(e->branch);
	free(e->path);
	free(e->from);
	free(e->moved_to);
	free(e);
}

struct stage_entry *stage_entry_new(struct stage *s, const char *repo, const char *branch,
					   const char *path)
{
	struct stage_entry *e = calloc(1, sizeof(*e));

	if (!e)
		return NULL;
	e->repo = strdup(repo);
	e->branch = strdup(branch);
	e->path = strdup(path);
	if (!e->repo || !e->branch || !e->path) {
		stage_entry_free(e);
		return NULL;
	}
	e->next = s->entries;
	s->entries = e;
	return e;
}

/* Frees @e if nothing keeps it: no row, no writer. */
void stage_entry_gc(struct stage *s, struct stage_entry *e)
{
	struct stage_entry **pe;

	if (e->row || e->wr || e->localdir || e->gone || e->importing)
		return;
	for (pe = &s->entries; *pe; pe = &(*pe)->next) {
		if (*pe == e) {
			*pe = e->next;
			break;
		}
	}
	stage_entry_free(e);
}

/* The overlay forgets @e's journal row (committed or dropped): the tree
 * shows through again, or with @keep_staged the staged file (committed,
 * until it is a cache blob).  s->lock held; @e may be freed. */
void stage_entry_forget_row(struct stage *s, struct stage_entry *e, bool keep_staged)
{
	e->row = 0;
	if (!keep_staged)
		e->staged[0] = '\0';
	e->deleted = false;
	free(e->from);
	e->from = NULL;
	free(e->moved_to);
	e->moved_to = NULL;
	e->version = ++s->versions;
	stage_entry_gc(s, e);
}

struct stage_branch *stage_branch_get(struct stage *s, const char *repo, const char *branch)
{
	struct stage_branch *b;

	for (b = s->branches; b; b = b->next)
		if (!strcmp(b->branch, branch) && !strcmp(b->repo, repo))
			return b;
	b = calloc(1, sizeof(*b));
	if (!b)
		return NULL;
	b->repo = strdup(repo);
	b->branch = strdup(branch);
	if (!b->repo || !b->branch) {
		free(b->repo);
		free(b->branch);
		free(b);
		return NULL;
	}
	b->next = s->branches;
	s->branches = b;
	return b;
}

/* Queues @repo @branch for a commit after the quiet period. */
void stage_queue(struct stage *s, const char *repo, const char *branch)
{
	struct stage_branch *b = stage_branch_get(s, repo, branch);
	int64_t now, due;

	if (!b) {
		log_msg(LOG_ERR, "out of memory: '%s@%s' is committed at the next mount", repo,
			branch);
		return;
	}
	now = stage_now_ms();
	if (!b->first)
		b->first = now;
	due = now + s->delay_ms;
	/* a busy writer still gets a commit now and then */
	if (due > b->first + STAGE_BATCH_FACTOR * (int64_t)s->delay_ms)
		due = b->first + STAGE_BATCH_FACTOR * (int64_t)s->delay_ms;
	if (b->due != 1) /* 1: a commit asked for now (stage_sync) */
		b->due = due;
	b->failures = 0;
	pthread_cond_signal(&s->wake);
}

static bool stage_entry_is_file(const struct stage_entry *e)
{
	if (e->wr && !e->wr->unlinked)
		return true;
	return !e->deleted && (e->staged[0] || e->from);
}

void stage_stat(struct stage *s, const char *repo, const char *branch, const char *path,
		struct stage_stat *out)
{
	struct stage_entry *e;
	size_t plen = strlen(path);

	memset(out, 0, sizeof(*out));
	pthread_mutex_lock(&s->lock);
	e = stage_find(s, repo, branch, path);
	if (e && e->localdir && !stage_entry_is_file(e)) {
		out->what = STAGE_DIR;
	} else if (e && stage_entry_is_file(e)) {
		out->what = STAGE_FILE;
		out->size = e->wr && !e->wr->unlinked
				? __atomic_load_n(&e->wr->size, __ATOMIC_RELAXED)
				: e->size;
		snprintf(out->version, sizeof(out->version), "staged:%llu",
			 (unsigned long long)e->version);
		out->committed = e->importing && !e->row && !(e->wr && !e->wr->unlinked);
		if (!(e->wr && !e->wr->unlinked) && !e->staged[0] && e->from) {
			snprintf(out->from, sizeof(out->from), "%s", e->from);
			memcpy(out->sha256, e->sha256, sizeof(out->sha256));
			memcpy(out->base, e->base, sizeof(out->base));
		}
	} else if (e && e->deleted) {
		out->what = STAGE_DELETED;
		if (e->moved_to)
			snprintf(out->moved_to, sizeof(out->moved_to), "%s", e->moved_to);
	} else {
		for (e = s->entries; e; e = e->next) {
			if (!strcmp(e->branch, branch) && !strcmp(e->repo, repo) &&
			    !strncmp(e->path, path, plen) && e->path[plen] == '/' &&
			    (stage_entry_is_file(e) || e->localdir)) {
				out->what = STAGE_DIR;
				break;
			}
		}
	}
	pthread_mutex_unlock(&s->lock);
}

struct stage_name {
	char *name;
	bool is_dir;
};

int stage_list_dir(struct stage *s, const char *repo, const char *branch, const char *dir,
		   int (*fn)(void *arg, const char *name, bool is_dir), void *arg)
{
	struct stage_name *v = NULL;
	size_t n = 0, cap = 0, dlen = strlen(dir);
	int rc = 0;

	pthread_mutex_lock(&s->lock);
	for (struct stage_entry *e = s->entries; e && !rc; e = e->next) {
		const char *rest, *slash;
		size_t len;
		bool dup = false;

		if (strcmp(e->branch, branch) || strcmp(e->repo, repo) ||
		    (!stage_entry_is_file(e) && !e->localdir))
			continue;
		if (dlen) {
			if (strncmp(e->path, dir, dlen) || e->path[dlen] != '/')
				continue;
			rest = e->path + dlen + 1;
		} else {
			rest = e->path;
		}
		slash = strchr(rest, '/');
		len = slash ? (size_t)(slash - rest) : strlen(rest);
		for (size_t i = 0; i < n && !dup; i++)
			dup = strlen(v[i].name) == len && !strncmp(v[i].name, rest, len);
		if (dup)
			continue;
		if (n == cap) {
			size_t ncap = cap ? 2 * cap : 16;
			struct stage_name *nv = realloc(v, ncap * sizeof(*nv));

			if (!nv) {
				rc = -ENOMEM;
				break;
			}
			v = nv;
			cap = ncap;
		}
		v[n].name = strndup(rest, len);
		v[n].is_dir = slash != NULL || !stage_entry_is_file(e);
		if (!v[n].name)
			rc = -ENOMEM;
		else
			n++;
	}
	pthread_mutex_unlock(&s->lock);
	for (size_t i = 0; i < n; i++) {
		if (!rc)
			rc = fn(arg, v[i].name, v[i].is_dir);
		free(v[i].name);
	}
	free(v);
	return rc;
}

/* ---- writers ---- */

/* Copies @size bytes of @from to @to. */
static int stage_copy_fd(int from, int to, uint64_t size)
{
	char *buf = malloc(STAGE_COPY_BUF);
	uint64_t off = 0;
	int rc = 0;

	if (!buf)
		return -ENOMEM;
	while (off < size) {
		size_t want = size - off < STAGE_COPY_BUF ? (size_t)(size - off) : STAGE_COPY_BUF;
		ssize_t n = pread(from, buf, want, (off_t)off);

		if (n <= 0) {
			rc = n < 0 ? -errno : -EIO;
			break;
		}
		for (ssize_t done = 0; done < n;) {
			ssize_t m = pwrite(to, buf + done, (size_t)(n - done), (off_t)(off + done));

			if (m < 0) {
				rc = -errno;
				goto out;
			}
			done += m;
		}
		off += (uint64_t)n;
	}
out:
	free(buf);
	return rc;
}

int64_t stage_fd_size(int fd)
{
	struct stat st;

	if (fstat(fd, &st) < 0)
		return -errno;
	return st.st_size;
}

static void stage_writer_free(struct stage_writer *w)
{
	if (w->fd >= 0)
		close(w->fd);
	pthread_mutex_destroy(&w->lock);
	free(w->repo);
	free(w->branch);
	free(w->path);
	free(w);
}

/* Drops a reference (s->lock not held). */
static void stage_writer_put(struct stage_writer *w)
{
	struct stage *s = w->s;
	struct stage_entry *e;
	bool last;

	pthread_mutex_lock(&s->lock);
	last = --w->refs == 0;
	if (last) {
		e = stage_find(s, w->repo, w->branch, w->path);
		if (e && e->wr == w) {
			e->wr = NULL;
			stage_entry_gc(s, e);
		}
	}
	pthread_mutex_unlock(&s->lock);
	if (last) {
		/* a staged file never journaled is an orphan now */
		pthread_mutex_lock(&w->lock);
		if (!w->frozen && w->staged[0])
			cache_stage_file_remove(s->cache, w->staged);
		pthread_mutex_unlock(&w->lock);
		stage_writer_free(w);
	}
}

/* Makes the writer's file one that may be written: a journaled one is copied
 * to a new staged file first.  w->lock held. */
static int stage_writer_thaw(struct stage_writer *w)
{
	char name[CACHE_STAGE_NAME_SIZE];
	int fd, rc;

	if (!w->frozen)
		return 0;
	fd = cache_stage_file_create(w->s->cache, name);
	if (fd < 0)
		return fd;
	rc = stage_copy_fd(w->fd, fd, w->size);
	if (rc) {
		close(fd);
		cache_stage_file_remove(w->s->cache, name);
		return rc;
	}
	close(w->fd);
	w->fd = fd;
	memcpy(w->staged, name, sizeof(name));
	w->frozen = false;
	return 0;
}

struct stage_writer *stage_writer_open(struct stage *s, const char *repo, const char *branch,
				       const char *path, const char *base, bool trunc,
				       stage_fill_fn fill, void *arg, int *err)
{
	struct stage_writer *w = NULL, *other;
	struct stage_entry *e;
	char src[CACHE_STAGE_NAME_SIZE] = "";
	int rc, srcfd = -1;
	int64_t size;

	pthread_mutex_lock(&s->lock);
	e = stage_find(s, repo, branch, path);
	if (e && e->wr && !e->wr->unlinked) {
		other = e->wr;
		other->refs++;
		pthread_mutex_unlock(&s->lock);
		if (trunc) {
			rc = stage_writer_truncate(other, 0);
			if (rc) {
				stage_writer_put(other);
				*err = rc;
				return NULL;
			}
		}
		return other;
	}
	if (e && !e->deleted && e->staged[0])
		memcpy(src, e->staged, sizeof(src));
	pthread_mutex_unlock(&s->lock);

	w = calloc(1, sizeof(*w));
	if (!w) {
		*err = -ENOMEM;
		return NULL;
	}
	w->s = s;
	w->fd = -1;
	pthread_mutex_init(&w->lock, NULL);
	w->repo = strdup(repo);
	w->branch = strdup(branch);
	w->path = strdup(path);
	snprintf(w->base, sizeof(w->base), "%s", base);
	if (!w->repo || !w->branch || !w->path) {
		rc = -ENOMEM;
		goto fail;
	}
	w->fd = cache_stage_file_create(s->cache, w->staged);
	if (w->fd < 0) {
		rc = w->fd;
		goto fail;
	}
	if (!trunc && src[0]) {
		srcfd = cache_stage_file_open(s->cache, src, false);
		if (srcfd < 0) {
			rc = srcfd == -ENOENT ? -EAGAIN : srcfd; /* replaced meanwhile */
			goto fail;
		}
		size = stage_fd_size(srcfd);
		rc = size < 0 ? (int)size : stage_copy_fd(srcfd, w->fd, (uint64_t)size);
		close(srcfd);
		if (rc)
			goto fail;
	} else if (!trunc && fill) {
		rc = fill(arg, w->fd);
		if (rc)
			goto fail;
	}
	size = stage_fd_size(w->fd);
	if (size < 0) {
		rc = (int)size;
		goto fail;
	}
	w->size = (uint64_t)size;
	w->dirty = trunc || (!src[0] && !fill);
	w->refs = 1;

	pthread_mutex_lock(&s->lock);
	e = stage_find(s, repo, branch, path);
	if (e && e->wr && !e->wr->unlinked) {
		/* another open won the race: share its writer */
		other = e->wr;
		other->refs++;
		pthread_mutex_unlock(&s->lock);
		cache_stage_file_remove(s->cache, w->staged);
		stage_writer_free(w);
		if (trunc && (rc = stage_writer_truncate(other, 0))) {
			stage_writer_put(other);
			*err = rc;
			return NULL;
		}
		return other;
	}
	if (!e)
		e = stage_entry_new(s, repo, branch, path);
	if (!e) {
		pthread_mutex_unlock(&s->lock);
		rc = -ENOMEM;
		goto fail;
	}
	if (e->row || e->importing)
		memcpy(w->base, e->base, sizeof(w->base)); /* the content derives from it */
	e->wr = w;
	e->version = ++s->versions;
	pthread_mutex_unlock(&s->lock);
	return w;
fail:
	if (w->fd >= 0)
		cache_stage_file_remove(s->cache, w->staged);
	stage_writer_free(w);
	*err = rc;
	return NULL;
}

ssize_t stage_writer_read(struct stage_writer *w, void *buf, size_t size, uint64_t off)
{
	ssize_t n;

	pthread_mutex_lock(&w->lock);
	n = pread(w->fd, buf, size, (off_t)off);
	if (n < 0)
		n = -errno;
	pthread_mutex_unlock(&w->lock);
	return n;
}

ssize_t stage_writer_write(struct stage_writer *w, const void *buf, size_t size, uint64_t off,
			   bool append)
{
	ssize_t n;
	int rc;

	pthread_mutex_lock(&w->lock);
	rc = stage_writer_thaw(w);
	if (rc) {
		pthread_mutex_unlock(&w->lock);
		return rc;
	}
	if (append)
		off = w->size;
	n = pwrite(w->fd, buf, size, (off_t)off);
	if (n < 0) {
		n = -errno;
	} else {
		w->dirty = true;
		if (off + (uint64_t)n > w->size)
			__atomic_store_n(&w->size, off + (uint64_t)n, __ATOMIC_RELAXED);
	}
	pthread_mutex_unlock(&w->lock);
	return n;
}

uint64_t stage_writer_size(struct stage_writer *w)
{
	return __atomic_load_n(&w->size, __ATOMIC_RELAXED);
}

int stage_writer_truncate(struct stage_writer *w, uint64_t size)
{
	int rc;

	pthread_mutex_lock(&w->lock);
	rc = stage_writer_thaw(w);
	if (!rc && ftruncate(w->fd, (off_t)size) < 0)
		rc = -errno;
	if (!rc) {
		w->dirty = true;
		__atomic_store_n(&w->size, size, __ATOMIC_RELAXED);
	}
	pthread_mutex_unlock(&w->lock);
	return rc;
}

int stage_writer_allocate(struct stage_writer *w, uint64_t off, uint64_t len)
{
	int rc;

	pthread_mutex_lock(&w->lock);
	rc = stage_writer_thaw(w);
	if (!rc)
		rc = -posix_fallocate(w->fd, (off_t)off, (off_t)len);
	if (!rc && off + len > w->size) {
		w->dirty = true;
		__atomic_store_n(&w->size, off + len, __ATOMIC_RELAXED);
	}
	pthread_mutex_unlock(&w->lock);
	return rc;
}

int stage_writer_flush(struct stage_writer *w)
{
	struct stage *s = w->s;
	struct cache_stage_change ch, old;
	struct stage_entry *e;
	bool unlinked, rebased;
	int64_t id = 0;
	int rc;

	memset(&ch, 0, sizeof(ch));
	memset(&old, 0, sizeof(old));
	pthread_mutex_lock(&w->lock);
	pthread_mutex_lock(&s->lock);
	unlinked = w->unlinked;
	memcpy(ch.base_commit, w->base, sizeof(ch.base_commit));
	pthread_mutex_unlock(&s->lock);
	if (!w->dirty || unlinked) {
		pthread_mutex_unlock(&w->lock);
		return 0;
	}
	ch.repo = w->repo;
	ch.branch = w->branch;
	ch.kind = CACHE_STAGE_ADD;
	ch.path = w->path;
	memcpy(ch.staged, w->staged, sizeof(ch.staged));
	ch.size = w->size;
	rc = cache_stage_replace(s->cache, &ch, &id, &old);
	if (rc) {
		pthread_mutex_unlock(&w->lock);
		log_msg(LOG_ERR, "cannot journal '%s' of '%s@%s': %s", w->path, w->repo, w->branch,
			strerror(-rc));
		return rc;
	}
	stage_journaled(s, w->path, id);
	w->frozen = true;
	w->dirty = false;
	pthread_mutex_lock(&s->lock);
	e = stage_find(s, w->repo, w->branch, w->path);
	if (!e)
		e = stage_entry_new(s, w->repo, w->branch, w->path);
	if (e) {
		e->deleted = false;
		free(e->from);
		e->from = NULL;
		free(e->moved_to);
		e->moved_to = NULL;
		memcpy(e->staged, w->staged, sizeof(e->staged));
		e->size = w->size;
		e->row = id;
		memcpy(e->base, w->base, sizeof(e->base));
		e->version = ++s->versions;
	}
	/* a commit of this path (or of the writer's base) landed while the
	 * row was written: the row derives from that commit */
	rebased = strcmp(w->base, ch.base_commit) != 0;
	if (rebased)
		memcpy(ch.base_commit, w->base, sizeof(ch.base_commit));
	stage_queue(s, w->repo, w->branch);
	pthread_mutex_unlock(&s->lock);
	pthread_mutex_unlock(&w->lock);
	if (rebased) {
		struct cache_stage_update u = {.set = CACHE_STAGE_SET_BASE,
					       .base_commit = ch.base_commit};

		if (cache_stage_update(s->cache, &id, 1, &u, NULL))
			log_msg(LOG_WARNING, "cannot rebase '%s' of '%s@%s' on %s", w->path,
				w->repo, w->branch, ch.base_commit);
	}
	if (old.id && old.staged[0] && strcmp(old.staged, ch.staged))
		cache_stage_file_remove(s->cache, old.staged);
	cache_stage_change_release(&old);
	return 0;
}

int stage_writer_close(struct stage_writer *w)
{
	int rc = stage_writer_flush(w);

	stage_writer_put(w);
	return rc;
}

/* After the deletion of @path (row @id, based on @base) was journaled: the
 * overlay shows it deleted, its branch is queued, and the staged file of the
 * row it replaced (@old, released here) is removed. */
static void stage_deleted(struct stage *s, const char *repo, const char *branch, const char *path,
			  int64_t id, const char *base, struct cache_stage_change *old)
{
	struct stage_entry *e;

	pthread_mutex_lock(&s->lock);
	e = stage_find(s, repo, branch, path);
	if (!e)
		e = stage_entry_new(s, repo, branch, path);
	if (e) {
		e->wr = NULL; /* an open writer lives on unlinked, as an open file does */
		e->localdir = false;
		e->deleted = true;
		free(e->from);
		e->from = NULL;
		free(e->moved_to);
		e->moved_to = NULL;
		e->staged[0] = '\0';
		e->size = 0;
		e->row = id;
		memcpy(e->base, base, sizeof(e->base));
		e->version = ++s->versions;
	}
	stage_queue(s, repo, branch);
	pthread_mutex_unlock(&s->lock);
	if (old->id && old->staged[0])
		cache_stage_file_remove(s->cache, old->staged);
	cache_stage_change_release(old);
}

/* Journals the deletion of @path (@kind: DELETE_FILE or DELETE_FOLDER),
 * based on @base, and shows it in the overlay (stage_deleted()). */
static int stage_journal_deletion(struct stage *s, const char *repo, const char *branch,
				  const char *path, enum cache_stage_kind kind, const char *base)
{
	struct cache_stage_change ch, old;
	int64_t id = 0;
	int rc;

	memset(&ch, 0, sizeof(ch));
	memset(&old, 0, sizeof(old));
	ch.repo = (char *)repo;
	ch.branch = (char *)branch;
	ch.kind = kind;
	ch.path = (char *)path;
	snprintf(ch.base_commit, sizeof(ch.base_commit), "%s", base);
	rc = cache_stage_replace(s->cache, &ch, &id, &old);
	if (rc) {
		log_msg(LOG_ERR, "cannot journal the deletion of %s '%s' of '%s@%s': %s",
			kind == CACHE_STAGE_DELETE_FOLDER ? "folder" : "file", path, repo, branch,
			strerror(-rc));
		return rc;
	}
	stage_deleted(s, repo, branch, path, id, ch.base_commit, &old);
	return 0;
}

int stage_unlink(struct stage *s, const char *repo, const char *branch, const char *path,
		 const char *base)
{
	struct stage_entry *e;
	char rbase[41];

	snprintf(rbase, sizeof(rbase), "%s", base);
	pthread_mutex_lock(&s->lock);
	e = stage_find(s, repo, branch, path);
	if (e && e->row)
		memcpy(rbase, e->base, sizeof(rbase));
	if (e && e->wr)
		e->wr->unlinked = true;
	pthread_mutex_unlock(&s->lock);
	return stage_journal_deletion(s, repo, branch, path, CACHE_STAGE_DELETE_FILE, rbase);
}

int stage_drop(struct stage *s, const char *repo, const char *branch, const char *path)
{
	char(*staged)[CACHE_STAGE_NAME_SIZE] = NULL;
	struct stage_entry *e;
	size_t nstaged = 0;
	int64_t id = 0;
	int rc;

	pthread_mutex_lock(&s->lock);
	e = stage_find(s, repo, branch, path);
	if (e && e->wr) {
		e->wr->unlinked = true; /* an open writer lives on, as an open file does */
		e->wr = NULL;
	}
	if (e)
		id = e->row;
	if (e && !id) {
		e->version = ++s->versions;
		stage_entry_gc(s, e);
	}
	pthread_mutex_unlock(&s->lock);
	if (!id)
		return 0;
	rc = cache_stage_forget(s->cache, repo, branch, &id, 1, &staged, &nstaged);
	if (rc) {
		log_msg(LOG_ERR, "cannot forget '%s' of '%s@%s': %s", path, repo, branch,
			strerror(-rc));
		return rc;
	}
	for (size_t i = 0; i < nstaged; i++)
		cache_stage_file_remove(s->cache, staged[i]);
	free(staged);
	pthread_mutex_lock(&s->lock);
	e = stage_find(s, repo, branch, path);
	if (e && e->row == id)
		stage_entry_forget_row(s, e, false);
	pthread_mutex_unlock(&s->lock);
	return 0;
}

int stage_hold(struct stage *s, const char *repo, const char *branch)
{
	struct stage_branch *b;

	pthread_mutex_lock(&s->lock);
	b = stage_branch_get(s, repo, branch);
	if (b)
		b->holds++;
	pthread_mutex_unlock(&s->lock);
	return b ? 0 : -ENOMEM;
}

void stage_unhold(struct stage *s, const char *repo, const char *branch)
{
	struct stage_branch *b;

	pthread_mutex_lock(&s->lock);
	for (b = s->branches; b; b = b->next) {
		if (!strcmp(b->branch, branch) && !strcmp(b->repo, repo)) {
			if (b->holds && --b->holds == 0)
				pthread_cond_signal(&s->wake);
			break;
		}
	}
	pthread_mutex_unlock(&s->lock);
}

/* After @w's path was renamed to @to: the open file is named @to now, so
 * what is written through it later goes there (POSIX: an open file follows
 * its renames).  No lock held. */
static void stage_writer_move(struct stage_writer *w, const char *to)
{
	struct stage *s = w->s;
	struct stage_entry *e;
	char *path = strdup(to);

	if (!path) {
		log_msg(LOG_ERR, "out of memory: later writes to '%s' of '%s@%s' are lost", to,
			w->repo, w->branch);
		return;
	}
	pthread_mutex_lock(&w->lock);
	pthread_mutex_lock(&s->lock);
	e = stage_find(s, w->repo, w->branch, to);
	if (!e)
		e = stage_entry_new(s, w->repo, w->branch, to);
	if (e && !e->wr) {
		free(w->path);
		w->path = path;
		path = NULL;
		w->unlinked = false;
		memcpy(w->base, e->base, sizeof(w->base));
		e->wr = w;
		e->version = ++s->versions;
	}
	pthread_mutex_unlock(&s->lock);
	pthread_mutex_unlock(&w->lock);
	free(path);
}

/* The file at @from, moved there from @to (a RENAME row) and not committed
 * since, goes back: the move is undone.  @to's deletion is forgotten (the
 * tree's file shows again) and @from gets a deletion (the commit skips it
 * when the tree has no @from).  Returns 0, -EXDEV when @to's row is not the
 * deletion of that move (the caller copies), or -errno. */
static int stage_unmove(struct stage *s, const char *repo, const char *branch, const char *from,
			const char *to, const char *base)
{
	char(*staged)[CACHE_STAGE_NAME_SIZE] = NULL;
	struct stage_entry *e;
	int64_t tid = 0;
	size_t nstaged = 0;
	int rc;

	pthread_mutex_lock(&s->lock);
	e = stage_find(s, repo, branch, to);
	if (e && e->deleted && e->row && e->moved_to && !strcmp(e->moved_to, from) && !e->wr)
		tid = e->row;
	/* the worker is committing the move: forgetting its rows now would
	 * lose the file (the Hub gets the move, the view forgets both paths) */
	for (struct stage_branch *b = s->branches; b && tid; b = b->next)
		if (b->busy && !strcmp(b->branch, branch) && !strcmp(b->repo, repo))
			tid = 0;
	pthread_mutex_unlock(&s->lock);
	if (!tid)
		return -EXDEV;
	rc = stage_journal_deletion(s, repo, branch, from, CACHE_STAGE_DELETE_FILE, base);
	if (rc)
		return rc;
	/* the kernel may still name @to by @from's inode */
	pthread_mutex_lock(&s->lock);
	e = stage_find(s, repo, branch, from);
	if (e && e->deleted) {
		free(e->moved_to);
		e->moved_to = strdup(to);
	}
	pthread_mutex_unlock(&s->lock);
	rc = cache_stage_forget(s->cache, repo, branch, &tid, 1, &staged, &nstaged);
	if (rc) {
		/* the deletion of @to stays: the file is gone, not lost (the
		 * Hub keeps it in the history) */
		log_msg(LOG_ERR, "cannot undo the deletion of '%s' of '%s@%s': %s", to, repo,
			branch, strerror(-rc));
		return rc;
	}
	for (size_t i = 0; i < nstaged; i++)
		cache_stage_file_remove(s->cache, staged[i]);
	free(staged);
	pthread_mutex_lock(&s->lock);
	e = stage_find(s, repo, branch, to);
	if (e && e->row == tid)
		stage_entry_forget_row(s, e, false);
	pthread_mutex_unlock(&s->lock);
	return 0;
}

int stage_rename(struct stage *s, const char *repo, const char *branch, const char *from,
		 const char *to, const char *base, const char *sha256, uint64_t size,
		 stage_fill_fn fill, void *arg)
{
	struct cache_stage_change ch, old;
	struct stage_entry *e;
	struct stage_writer *w = NULL;
	struct stage_branch *b;
	char src[CACHE_STAGE_NAME_SIZE] = "", name[CACHE_STAGE_NAME_SIZE] = "";
	char *moved = NULL, msha[65] = "", rbase[41];
	uint64_t msize = 0;
	int64_t id = 0, sz;
	int fd = -1, srcfd, rc = 0;

	memset(&ch, 0, sizeof(ch));
	memset(&old, 0, sizeof(old));
	snprintf(rbase, sizeof(rbase), "%s", base);
	pthread_mutex_lock(&s->lock);
	b = stage_branch_get(s, repo, branch);
	if (!b) {
		pthread_mutex_unlock(&s->lock);
		return -ENOMEM;
	}
	b->holds++;
	e = stage_find(s, repo, branch, from);
	if (e && e->wr && !e->wr->unlinked) {
		w = e->wr;
		w->refs++;
	}
	pthread_mutex_unlock(&s->lock);
	if (w) {
		rc = stage_writer_flush(w); /* what was written is what moves */
		if (rc)
			goto out;
	}

	/* the source: staged content, a file moved before, or the tree's */
	pthread_mutex_lock(&s->lock);
	e = stage_find(s, repo, branch, from);
	if (e && e->deleted) {
		rc = -ENOENT;
	} else if (e && e->staged[0]) {
		memcpy(src, e->staged, sizeof(src));
		if (e->row)
			memcpy(rbase, e->base, sizeof(rbase));
	} else if (e && e->from) {
		moved = strdup(e->from);
		rc = moved ? 0 : -ENOMEM;
		memcpy(msha, e->sha256, sizeof(msha));
		msize = e->size;
		memcpy(rbase, e->base, sizeof(rbase));
	}
	pthread_mutex_unlock(&s->lock);
	if (rc)
		goto out;
	if (moved && !strcmp(moved, to)) {
		rc = stage_unmove(s, repo, branch, from, to, rbase);
		if (!rc && w)
			stage_writer_move(w, to);
		goto out;
	}

	ch.repo = (char *)repo;
	ch.branch = (char *)branch;
	ch.path = (char *)to;
	memcpy(ch.base_commit, rbase, sizeof(ch.base_commit));
	if (moved || (!src[0] && sha256 && sha256[0])) {
		ch.kind = CACHE_STAGE_RENAME;
		ch.old_path = moved ? moved : (char *)from;
		snprintf(ch.sha256, sizeof(ch.sha256), "%s", moved ? msha : sha256);
		ch.size = moved ? msize : size;
	} else {
		ch.kind = CACHE_STAGE_ADD;
		fd = cache_stage_file_create(s->cache, name);
		if (fd < 0) {
			rc = fd;
			goto out;
		}
		if (src[0]) {
			srcfd = cache_stage_file_open(s->cache, src, false);
			if (srcfd < 0) {
				rc = srcfd == -ENOENT ? -EAGAIN : srcfd; /* replaced meanwhile */
			} else {
				sz = stage_fd_size(srcfd);
				rc = sz < 0 ? (int)sz : stage_copy_fd(srcfd, fd, (uint64_t)sz);
				close(srcfd);
			}
		} else if (fill) {
			rc = fill(arg, fd);
		}
		sz = rc ? 0 : stage_fd_size(fd);
		if (sz < 0)
			rc = (int)sz;
		if (rc)
			goto out;
		ch.size = (uint64_t)sz;
		memcpy(ch.staged, name, sizeof(ch.staged));
	}

	pthread_mutex_lock(&s->lock);
	e = stage_find(s, repo, branch, to);
	if (e && e->wr)
		e->wr->unlinked = true; /* replaced: an open writer lives on detached */
	pthread_mutex_unlock(&s->lock);
	rc = cache_stage_replace(s->cache, &ch, &id, &old);
	if (rc) {
		log_msg(LOG_ERR, "cannot journal the rename of '%s' to '%s' of '%s@%s': %s", from,
			to, repo, branch, strerror(-rc));
		goto out;
	}
	stage_journaled(s, to, id);
	pthread_mutex_lock(&s->lock);
	e = stage_find(s, repo, branch, to);
	if (!e)
		e = stage_entry_new(s, repo, branch, to);
	if (e) {
		e->wr = NULL;
		e->deleted = false;
		free(e->from);
		e->from = NULL;
		free(e->moved_to);
		e->moved_to = NULL;
		if (ch.kind == CACHE_STAGE_RENAME) {
			e->from = strdup(ch.old_path);
			if (!e->from)
				log_msg(LOG_ERR, "out of memory: '%s' shows after its commit", to);
		}
		memcpy(e->sha256, ch.sha256, sizeof(e->sha256));
		memcpy(e->staged, ch.staged, sizeof(e->staged));
		e->size = ch.size;
		e->row = id;
		memcpy(e->base, ch.base_commit, sizeof(e->base));
		e->version = ++s->versions;
	}
	stage_queue(s, repo, branch);
	pthread_mutex_unlock(&s->lock);
	if (fd >= 0) {
		close(fd); /* its row holds it now */
		fd = -1;
	}
	if (old.id && old.staged[0] && strcmp(old.staged, ch.staged))
		cache_stage_file_remove(s->cache, old.staged);
	cache_stage_change_release(&old);

	rc = stage_unlink(s, repo, branch, from, rbase);
	if (rc) {
		log_msg(LOG_ERR, "'%s' of '%s@%s' is copied to '%s', not moved", from, repo,
			branch, to);
		goto out;
	}
	/* the kernel may still name the new path by the old path's inode */
	pthread_mutex_lock(&s->lock);
	e = stage_find(s, repo, branch, from);
	if (e && e->deleted) {
		free(e->moved_to);
		e->moved_to = strdup(to);
	}
	pthread_mutex_unlock(&s->lock);
	if (w)
		stage_writer_move(w, to);
out:
	if (fd >= 0) {
		close(fd);
		cache_stage_file_remove(s->cache, name);
	}
	free(moved);
	if (w)
		stage_writer_put(w);
	stage_unhold(s, repo, branch);
	return rc;
}

int stage_mkdir(struct stage *s, const char *repo, const char *branch, const char *path)
{
	struct stage_entry *e;
	int rc = 0;

	pthread_mutex_lock(&s->lock);
	e = stage_find(s, repo, branch, path);
	if (!e)
		e = stage_entry_new(s, repo, branch, path);
	if (!e) {
		rc = -ENOMEM;
	} else {
		e->localdir = true;
		if (e->gone) {
			e->gone = false;
			e->deleted = false;
			free(e->moved_to);
			e->moved_to = NULL;
		}
		e->version = ++s->versions;
	}
	pthread_mutex_unlock(&s->lock);
	return rc;
}

int stage_dir_moved(struct stage *s, const char *repo, const char *branch, const char *from,
		    const char *to)
{
	size_t flen = strlen(from);
	struct stage_entry *e;
	char *path;
	int rc = 0;

	pthread_mutex_lock(&s->lock);
	/* directories made by mkdir move along */
	for (e = s->entries; e && !rc; e = e->next) {
		if (!e->localdir || strcmp(e->branch, branch) || strcmp(e->repo, repo) ||
		    strncmp(e->path, from, flen) || (e->path[flen] != '/' && e->path[flen]))
			continue;
		if (asprintf(&path, "%s%s", to, e->path + flen) < 0) {
			rc = -ENOMEM;
			break;
		}
		e->localdir = false; /* e stays in the list: gc'ed below */
		e->version = ++s->versions;
		if (!stage_find(s, repo, branch, path)) {
			struct stage_entry *m = stage_entry_new(s, repo, branch, path);

			if (m) {
				m->localdir = true;
				m->version = ++s->versions;
			} else {
				rc = -ENOMEM;
			}
		} else {
			stage_find(s, repo, branch, path)->localdir = true;
		}
		free(path);
	}
	e = stage_find(s, repo, branch, from);
	if (!e)
		e = stage_entry_new(s, repo, branch, from);
	if (e && !e->row && !e->wr) {
		e->gone = true;
		e->deleted = true;
		free(e->moved_to);
		e->moved_to = strdup(to);
		e->version = ++s->versions;
	} else if (!e) {
		rc = -ENOMEM;
	}
	/* free the entries of the directories that moved */
	for (struct stage_entry *x = s->entries, *next; x; x = next) {
		next = x->next;
		stage_entry_gc(s, x);
	}
	pthread_mutex_unlock(&s->lock);
	return rc;
}

int stage_rmdir(struct stage *s, const char *repo, const char *branch, const char *path,
		const char *base, bool in_tree)
{
	struct stage_entry *e;

	if (!in_tree) {
		pthread_mutex_lock(&s->lock);
		e = stage_find(s, repo, branch, path);
		if (e) {
			e->localdir = false;
			e->version = ++s->versions;
			stage_entry_gc(s, e);
		}
		pthread_mutex_unlock(&s->lock);
		return 0;
	}
	return stage_journal_deletion(s, repo, branch, path, CACHE_STAGE_DELETE_FOLDER, base);
}

int stage_open_read(struct stage *s, const char *repo, const char *branch, const char *path)
{
	struct stage_entry *e;
	struct stage_writer *w = NULL;
	char name[CACHE_STAGE_NAME_SIZE] = "";
	int fd;

	pthread_mutex_lock(&s->lock);
	e = stage_find(s, repo, branch, path);
	if (e && e->wr && !e->wr->unlinked) {
		w = e->wr;
		w->refs++;
	} else if (e && !e->deleted && e->staged[0]) {
		memcpy(name, e->staged, sizeof(name));
	}
	pthread_mutex_unlock(&s->lock);
	if (w) {
		pthread_mutex_lock(&w->lock);
		fd = fcntl(w->fd, F_DUPFD_CLOEXEC, 0);
		if (fd < 0)
			fd = -errno;
		pthread_mutex_unlock(&w->lock);
		stage_writer_put(w);
		return fd;
	}
	if (!name[0])
		return -ENOENT;
	return cache_stage_file_open(s->cache, name, false);
}

struct stage *stage_new(const struct stage_config *cfg, int *err)
{
	struct stage *s = calloc(1, sizeof(*s));
	pthread_condattr_t ca;
	int rc;

	if (!s) {
		*err = -ENOMEM;
		return NULL;
	}
	s->cache = cfg->cache;
	s->http = cfg->http;
	s->meta = cfg->meta;
	s->delay_ms = cfg->delay * 1000;
	s->committed = cfg->committed;
	s->committed_arg = cfg->committed_arg;
	if (cfg->message && !(s->message = strdup(cfg->message))) {
		free(s);
		*err = -ENOMEM;
		return NULL;
	}
	s->local = calloc(cfg->nlocal_only ? cfg->nlocal_only : 1, sizeof(*s->local));
	for (size_t i = 0; s->local && i < cfg->nlocal_only; i++)
		if ((s->local[i] = strdup(cfg->local_only[i])))
			s->nlocal++;
	if (!s->local || s->nlocal != cfg->nlocal_only) {
		for (size_t i = 0; i < s->nlocal; i++)
			free(s->local[i]);
		free(s->local);
		free(s->message);
		free(s);
		*err = -ENOMEM;
		return NULL;
	}
	pthread_mutex_init(&s->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&s->wake, &ca);
	pthread_cond_init(&s->done, &ca);
	pthread_condattr_destroy(&ca);
	rc = stage_resume(s);
	if (!rc) {
		rc = -pthread_create(&s->worker, NULL, stage_worker, s);
		s->started = rc == 0;
	}
	if (rc) {
		stage_free(s);
		*err = rc;
		return NULL;
	}
	return s;
}

void stage_free(struct stage *s)
{
	if (!s)
		return;
	if (s->started) {
		pthread_mutex_lock(&s->lock);
		s->stop = true;
		pthread_cond_broadcast(&s->wake);
		pthread_cond_broadcast(&s->done);
		pthread_mutex_unlock(&s->lock);
		pthread_join(s->worker, NULL);
	}
	while (s->entries) {
		struct stage_entry *e = s->entries;

		s->entries = e->next;
		stage_entry_free(e);
	}
	while (s->branches) {
		struct stage_branch *b = s->branches;

		s->branches = b->next;
		free(b->repo);
		free(b->branch);
		free(b->message);
		free(b->req_message);
		free(b->req_description);
		free(b);
	}
	free(s->message);
	for (size_t i = 0; i < s->nlocal; i++)
		free(s->local[i]);
	free(s->local);
	pthread_cond_destroy(&s->wake);
	pthread_cond_destroy(&s->done);
	pthread_mutex_destroy(&s->lock);
	free(s);
}
