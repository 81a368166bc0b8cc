/*
 * The staging overlay and the commit worker.  See stage.h.
 *
 * The overlay is a list of entries, one per (repo, branch, path) that has a
 * journal row or an open writer; it is small (the changes not yet
 * committed) and scanned linearly.  Each branch with changes has a queue
 * record: when it is due (the quiet period after its last change), how
 * often its commit failed in a row, and the counters stage_sync() waits on.
 *
 * One worker thread commits one branch at a time: it lists the branch's rows
 * from the journal, hashes their staged files, asks preupload, uploads the
 * LFS objects, and makes one commit whose parent is the head the changes were
 * based on.  If the branch moved meanwhile (412), it compares the paths it
 * commits at the old and the new head: when none changed it commits again on
 * top of the new head, otherwise the rows become CONFLICT and stay staged:
 * hubfs never overwrites someone else's change.
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

#include "stage.h"

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
/* A branch that keeps changing is committed at most this many quiet
 * periods after its first change. */
#define STAGE_BATCH_FACTOR 5
/* Commits on top of a moved branch, at most. */
#define STAGE_REBASES 3
/* The longest stage_sync() waits. */
#define STAGE_SYNC_TIMEOUT_S 900
#define STAGE_COPY_BUF (1u << 20)

struct stage_entry {
	char *repo, *branch, *path;
	bool deleted;			    /* a DELETE_FILE row */
	char *from;			    /* a RENAME row's old path, or NULL */
	bool localdir;			    /* made by mkdir: a directory, kept in memory only */
	bool gone;			    /* a directory renamed away: deleted (no row) until
					       the branch's next commit */
	bool importing;			    /* committed (no row): staged is read until it is
					       a cache blob */
	char *moved_to;			    /* deleted by a rename to this path, or NULL */
	char sha256[65];		    /* a RENAME row's content */
	char staged[CACHE_STAGE_NAME_SIZE]; /* an ADD row's staged file, or "" */
	uint64_t size;			    /* of staged */
	int64_t row;			    /* the journal row, 0 for none */
	char base[41];			    /* the head the change is based on */
	uint64_t version;
	struct stage_writer *wr; /* the open writer, or NULL */
	struct stage_entry *next;
};

struct stage_writer {
	struct stage *s;
	char *repo, *branch, *path;
	char base[41]; /* protected by s->lock */
	pthread_mutex_t lock;
	int fd;				    /* protected by lock */
	char staged[CACHE_STAGE_NAME_SIZE]; /* protected by lock */
	bool frozen;			    /* protected by lock: staged is journaled */
	bool dirty;			    /* protected by lock: changed since journaled */
	uint64_t size;			    /* written under lock, read atomically */
	bool unlinked;			    /* protected by s->lock */
	unsigned refs;			    /* protected by s->lock */
};

struct stage_branch {
	char *repo, *branch;
	int64_t due;	   /* ms (monotonic) when to commit; 0: not queued */
	int64_t first;	   /* ms of the first change queued since the last commit began */
	unsigned failures; /* failed commits in a row */
	bool busy;	   /* the worker commits it now */
	unsigned holds;	   /* a rename journals its rows: do not start a commit */
	uint64_t req;	   /* commit requests (stage_sync) */
	uint64_t done;	   /* requests answered by a finished commit */
	int rc;		   /* the result of the last commit */
	char *message;	   /* the commit message set for it (user.hub.message), or NULL */
	struct stage_branch *next;
};

struct stage {
	struct cache *cache;
	struct http_client *http;
	struct meta *meta;
	int delay_ms;
	void (*committed)(void *arg, const char *repo, const char *branch,
			  const char *const *paths, size_t n);
	void *committed_arg;
	char *message; /* --commit-message, or NULL */
	pthread_mutex_t lock;
	pthread_cond_t wake;	       /* the worker waits on it */
	pthread_cond_t done;	       /* stage_sync() and stage_drain() wait on it */
	struct stage_entry *entries;   /* protected by lock */
	struct stage_branch *branches; /* protected by lock */
	uint64_t versions;	       /* protected by lock */
	bool stop;		       /* protected by lock */
	bool started;
	pthread_t worker;
};

static int64_t stage_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void stage_deadline(struct timespec *ts, int64_t ms_from_now)
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
static int stage_repo_parse(const char *key, char *buf, size_t size, struct hub_repo *repo)
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

/* ---- the overlay (s->lock held) ---- */

static struct stage_entry *stage_find(struct stage *s, const char *repo, const char *branch,
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

static struct stage_entry *stage_entry_new(struct stage *s, const char *repo, const char *branch,
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
static void stage_entry_gc(struct stage *s, struct stage_entry *e)
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
static void stage_entry_forget_row(struct stage *s, struct stage_entry *e, bool keep_staged)
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

static struct stage_branch *stage_branch_get(struct stage *s, const char *repo, const char *branch)
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
static void stage_queue(struct stage *s, const char *repo, const char *branch)
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

static int64_t stage_fd_size(int fd)
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
	if (e->row)
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
	bool unlinked;
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
		memcpy(e->base, ch.base_commit, sizeof(e->base));
		e->version = ++s->versions;
	}
	stage_queue(s, w->repo, w->branch);
	pthread_mutex_unlock(&s->lock);
	pthread_mutex_unlock(&w->lock);
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

static void *stage_worker(void *arg)
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
static int stage_resume(struct stage *s)
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
		free(b);
	}
	free(s->message);
	pthread_cond_destroy(&s->wake);
	pthread_cond_destroy(&s->done);
	pthread_mutex_destroy(&s->lock);
	free(s);
}
