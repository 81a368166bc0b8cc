/*
 * The cache: its directory, its lock, its index, the table of open blobs,
 * eviction, statistics and clearing.  See cache.h for the contract and
 * cache_blob.c for the blobs themselves.
 *
 * The blob table maps an id to its one handle.  A handle stays in the table
 * while it has references; its last put persists it while still in the table
 * (a get meanwhile takes it again instead of opening a second handle on the
 * same file), then removes it.  Being in the table is being pinned.
 *
 * Eviction takes candidates from the index in LRU order, skips the ids in the
 * table, and names the id it evicts in `evicting`, so that a get of that id
 * waits until its file and row are gone.  It unlinks the file before it
 * deletes the row (see cache_blob.c for why).  One eviction pass at a time.
 *
 * A worker thread, started on first need, advances the running hashes of
 * blobs being filled, persists presence batches (an fdatasync, then the
 * index) and runs the evictions they trigger, so that a reader filling a
 * blob neither hashes nor waits for the disk.  A blob waiting for it is
 * queued with a reference, so it stays pinned and in the table meanwhile.
 *
 * Lock order (cache_internal.h explains each): table_lock, then a blob's io,
 * then its lock, then the index's locks; work_lock is a leaf.  table_lock is
 * held for table operations only, never across I/O or an index call.
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "cache.h"
#include "cache_index.h"
#include "cache_internal.h"

/* Candidates read from the index per step of an eviction pass. */
#define CACHE_EVICT_BATCH 64
/* After a pass that could not reach the limit (everything left is pinned),
 * passes triggered by new data wait this long (ms). */
#define CACHE_EVICT_BACKOFF 1000

void cache_log(struct cache *c, int level, const char *fmt, ...)
{
	va_list ap;

	if (!c->log)
		return;
	va_start(ap, fmt);
	c->log(level, fmt, ap);
	va_end(ap);
}

int64_t cache_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint32_t cache_chunk_size(const struct cache *c)
{
	return c->chunk_size;
}

/* mkdir -p with mode 0700 for what it creates. */
static int mkdir_parents(const char *dir)
{
	char *p = strdup(dir);
	int err = 0;

	if (!p)
		return -ENOMEM;
	for (char *s = p + 1; *s && !err; s++) {
		if (*s != '/')
			continue;
		*s = '\0';
		if (mkdir(p, 0700) && errno != EEXIST)
			err = -errno;
		*s = '/';
	}
	if (!err && mkdir(p, 0700) && errno != EEXIST)
		err = -errno;
	free(p);
	return err;
}

/* Creates or checks DIR and opens it into c->dirfd. */
static int cache_dir_open(struct cache *c, const char *dir)
{
	struct stat st;
	int err = mkdir_parents(dir);

	if (err) {
		cache_log(c, LOG_ERR, "cannot create cache directory \"%s\": %s", dir,
			  strerror(-err));
		return err;
	}
	c->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (c->dirfd >= 0) {
		c->dir = realpath(dir, NULL);
		if (!c->dir) {
			err = -errno;
			cache_log(c, LOG_ERR, "cannot resolve cache directory \"%s\": %s", dir,
				  strerror(-err));
			return err;
		}
	}
	if (c->dirfd < 0 || fstat(c->dirfd, &st)) {
		err = -errno;
		cache_log(c, LOG_ERR, "cannot open cache directory \"%s\": %s", dir,
			  strerror(-err));
		return err;
	}
	if (st.st_uid != geteuid()) {
		cache_log(c, LOG_ERR, "cache directory \"%s\" belongs to another user", dir);
		return -EACCES;
	}
	if ((st.st_mode & 077) && fchmod(c->dirfd, 0700)) {
		err = -errno;
		cache_log(c, LOG_ERR, "cannot make cache directory \"%s\" private: %s", dir,
			  strerror(-err));
		return err;
	}
	return 0;
}

static int cache_lock_take(struct cache *c, enum cache_lock lock)
{
	if (lock == CACHE_LOCK_NONE)
		return 0;
	c->lock_fd = openat(c->dirfd, "lock", O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (c->lock_fd < 0)
		return -errno;
	if (flock(c->lock_fd, (lock == CACHE_LOCK_SHARED ? LOCK_SH : LOCK_EX) | LOCK_NB))
		return errno == EWOULDBLOCK ? -EBUSY : -errno;
	return 0;
}

/* Creates or checks DIR/stage, private to the user, and opens it into
 * c->stage_fd.  Staged data is never in a directory others can enter. */
static int cache_stage_dir_open(struct cache *c)
{
	struct stat st;

	if (mkdirat(c->dirfd, "stage", 0700) && errno != EEXIST)
		return -errno;
	c->stage_fd = openat(c->dirfd, "stage", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (c->stage_fd < 0 || fstat(c->stage_fd, &st))
		return -errno;
	if (st.st_uid != geteuid())
		return -EACCES;
	if ((st.st_mode & 077) && fchmod(c->stage_fd, 0700))
		return -errno;
	return 0;
}

/* Opens the index DIR/hubfs.db, created 0600 first so that SQLite (and its
 * -wal and -shm files, which take the same mode) never makes it wider. */
static int cache_index_attach(struct cache *c)
{
	struct cache_index_totals t;
	char *path;
	int err = 0;
	int fd = openat(c->dirfd, "hubfs.db", O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);

	if (fd < 0 || fchmod(fd, 0600)) {
		err = -errno;
		if (fd >= 0)
			close(fd);
		return err;
	}
	close(fd);
	path = malloc(strlen(c->dir) + sizeof("/hubfs.db"));
	if (!path)
		return -ENOMEM;
	strcpy(path, c->dir);
	strcat(path, "/hubfs.db");
	c->idx = cache_index_open(path, c->log, &err);
	free(path);
	if (!c->idx)
		return err;
	err = cache_index_totals(c->idx, &t);
	c->used = (int64_t)t.bytes;
	return err;
}

struct cache *cache_open(const struct cache_config *cfg, int *errp)
{
	uint32_t chunk = cfg->chunk_size ? cfg->chunk_size : CACHE_CHUNK_DEFAULT;
	struct cache *c;
	int err;

	if (!cfg->dir || !cfg->dir[0] || chunk < CACHE_CHUNK_MIN || chunk > CACHE_CHUNK_MAX ||
	    (chunk & (chunk - 1)) || cfg->lock > CACHE_LOCK_EXCLUSIVE) {
		err = -EINVAL;
		goto fail;
	}
	c = calloc(1, sizeof(*c));
	if (!c) {
		err = -ENOMEM;
		goto fail;
	}
	c->dirfd = c->blobs_fd = c->stage_fd = c->lock_fd = -1;
	c->chunk_size = chunk;
	c->chunk_shift = (unsigned)__builtin_ctz(chunk);
	c->limit = cfg->limit;
	c->sync_bytes = cfg->sync_bytes ? cfg->sync_bytes : CACHE_SYNC_DEFAULT;
	c->log = cfg->log;
	pthread_mutex_init(&c->table_lock, NULL);
	pthread_cond_init(&c->table_cond, NULL);
	pthread_mutex_init(&c->work_lock, NULL);
	pthread_cond_init(&c->work_cond, NULL);
	pthread_cond_init(&c->work_idle, NULL);

	err = cache_dir_open(c, cfg->dir);
	if (err)
		goto close_c;
	err = cache_lock_take(c, cfg->lock);
	if (err)
		goto close_c;
	if (mkdirat(c->dirfd, "blobs", 0700) && errno != EEXIST) {
		err = -errno;
		goto close_c;
	}
	c->blobs_fd = openat(c->dirfd, "blobs", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (c->blobs_fd < 0) {
		err = -errno;
		goto close_c;
	}
	err = cache_stage_dir_open(c);
	if (err)
		goto close_c;
	err = cache_index_attach(c);
	if (err)
		goto close_c;
	return c;

close_c:
	cache_close(c);
fail:
	if (errp)
		*errp = err;
	return NULL;
}

void cache_close(struct cache *c)
{
	bool started;

	if (!c)
		return;
	/* The worker drains its queue, putting its references, and ends. */
	pthread_mutex_lock(&c->work_lock);
	c->worker_stop = true;
	started = c->worker_started;
	pthread_cond_signal(&c->work_cond);
	pthread_mutex_unlock(&c->work_lock);
	if (started)
		pthread_join(c->worker, NULL);
	for (size_t i = 0; i < CACHE_TABLE_SIZE; i++) {
		while (c->table[i]) {
			struct cache_blob *b = c->table[i];

			c->table[i] = b->next;
			cache_blob_flush(b, true);
			cache_blob_free(b);
		}
	}
	if (c->idx)
		cache_index_counters_add(c->idx, c->hits, c->misses);
	cache_index_close(c->idx);
	if (c->blobs_fd >= 0)
		close(c->blobs_fd);
	if (c->stage_fd >= 0)
		close(c->stage_fd);
	if (c->lock_fd >= 0)
		close(c->lock_fd); /* releases the flock */
	if (c->dirfd >= 0)
		close(c->dirfd);
	free(c->dir);
	pthread_cond_destroy(&c->work_idle);
	pthread_cond_destroy(&c->work_cond);
	pthread_mutex_destroy(&c->work_lock);
	pthread_cond_destroy(&c->table_cond);
	pthread_mutex_destroy(&c->table_lock);
	free(c);
}

/*
 * The worker.
 */

static void *cache_worker(void *arg)
{
	struct cache *c = arg;

	pthread_mutex_lock(&c->work_lock);
	for (;;) {
		struct cache_blob *b = c->work_head;

		if (!b) {
			pthread_cond_broadcast(&c->work_idle);
			if (c->worker_stop)
				break;
			pthread_cond_wait(&c->work_cond, &c->work_lock);
			continue;
		}
		c->work_head = b->work_next;
		if (!c->work_head)
			c->work_tail = NULL;
		b->queued = false;
		c->worker_busy = true;
		pthread_mutex_unlock(&c->work_lock);
		/* Triggers the eviction it makes necessary, here too. */
		cache_blob_work(b);
		cache_blob_put(b);
		pthread_mutex_lock(&c->work_lock);
		c->worker_busy = false;
	}
	pthread_mutex_unlock(&c->work_lock);
	return NULL;
}

void cache_work_later(struct cache_blob *b)
{
	enum { QUEUED, ALREADY_QUEUED, NO_WORKER } how = NO_WORKER;
	struct cache *c = b->c;

	pthread_mutex_lock(&c->table_lock);
	b->refs++; /* the queue's */
	pthread_mutex_unlock(&c->table_lock);
	pthread_mutex_lock(&c->work_lock);
	if (!c->worker_started && !c->worker_stop)
		c->worker_started = !pthread_create(&c->worker, NULL, cache_worker, c);
	if (b->queued) {
		how = ALREADY_QUEUED;
	} else if (c->worker_started && !c->worker_stop) {
		how = QUEUED;
		b->queued = true;
		b->work_next = NULL;
		if (c->work_tail)
			c->work_tail->work_next = b;
		else
			c->work_head = b;
		c->work_tail = b;
		pthread_cond_signal(&c->work_cond);
	}
	pthread_mutex_unlock(&c->work_lock);
	if (how == QUEUED)
		return;
	if (how == NO_WORKER)
		cache_blob_work(b);
	cache_blob_put(b);
}

/*
 * The table of open blobs.  Called with table_lock held.
 */

static unsigned hex_value(char x)
{
	return x <= '9' ? (unsigned)(x - '0') : (unsigned)(x - 'a' + 10);
}

static struct cache_blob **table_bucket(struct cache *c, const char *id)
{
	/* Ids are hashes: their digits are uniform. */
	return &c->table[(hex_value(id[2]) << 4 | hex_value(id[3])) % CACHE_TABLE_SIZE];
}

static struct cache_blob *table_find(struct cache *c, const char *id)
{
	for (struct cache_blob *b = *table_bucket(c, id); b; b = b->next)
		if (!strcmp(b->id, id))
			return b;
	return NULL;
}

static void table_remove(struct cache *c, struct cache_blob *b)
{
	for (struct cache_blob **pp = table_bucket(c, b->id); *pp; pp = &(*pp)->next) {
		if (*pp == b) {
			*pp = b->next;
			c->nopen--;
			return;
		}
	}
}

struct cache_blob *cache_blob_get(struct cache *c, const char *id, uint64_t size, int *errp)
{
	enum cache_id_kind kind;
	struct cache_blob *b;
	int err = 0;

	if (!id || !cache_id_valid(id, &kind)) {
		err = -EINVAL;
		goto fail;
	}
	pthread_mutex_lock(&c->table_lock);
	while (!strcmp(c->evicting, id))
		pthread_cond_wait(&c->table_cond, &c->table_lock);
	b = table_find(c, id);
	if (b) {
		b->refs++;
		pthread_mutex_unlock(&c->table_lock);
		pthread_mutex_lock(&b->lock);
		while (b->state == CACHE_BLOB_OPENING)
			pthread_cond_wait(&b->cond, &b->lock);
		if (b->state == CACHE_BLOB_FAILED)
			err = b->err;
		pthread_mutex_unlock(&b->lock);
		if (!err && b->size != size)
			err = -EINVAL;
		if (err) {
			cache_blob_put(b);
			goto fail;
		}
		__atomic_store_n(&b->last_used, cache_now_ms(), __ATOMIC_RELAXED);
		return b;
	}
	b = cache_blob_alloc(c, id, kind, size, &err);
	if (!b) {
		pthread_mutex_unlock(&c->table_lock);
		goto fail;
	}
	b->next = *table_bucket(c, id);
	*table_bucket(c, id) = b;
	c->nopen++;
	pthread_mutex_unlock(&c->table_lock);

	/* Opening does I/O: others wait for it on the blob, not the table. */
	err = cache_blob_open(b);
	pthread_mutex_lock(&b->lock);
	b->state = err ? CACHE_BLOB_FAILED : CACHE_BLOB_READY;
	b->err = err;
	pthread_cond_broadcast(&b->cond);
	pthread_mutex_unlock(&b->lock);
	if (err) {
		cache_blob_put(b);
		goto fail;
	}
	return b;

fail:
	if (errp)
		*errp = err;
	return NULL;
}

void cache_blob_put(struct cache_blob *b)
{
	struct cache *c;
	int err;

	if (!b)
		return;
	c = b->c;
	pthread_mutex_lock(&c->table_lock);
	if (b->refs > 1) {
		b->refs--;
		pthread_mutex_unlock(&c->table_lock);
		return;
	}
	pthread_mutex_unlock(&c->table_lock);
	/* The last reference: persist while still in the table.  Another
	 * thread may take the handle again meanwhile; then its put is last. */
	for (;;) {
		err = cache_blob_flush(b, true);
		pthread_mutex_lock(&c->table_lock);
		if (b->refs > 1) {
			b->refs--;
			pthread_mutex_unlock(&c->table_lock);
			return;
		}
		if (!err && cache_blob_dirty(b)) {
			pthread_mutex_unlock(&c->table_lock);
			continue;
		}
		table_remove(c, b);
		pthread_cond_broadcast(&c->table_cond);
		pthread_mutex_unlock(&c->table_lock);
		break;
	}
	cache_blob_free(b);
	/* What can be evicted changed: no back-off. */
	__atomic_store_n(&c->evict_retry, 0, __ATOMIC_RELAXED);
	cache_evict_if_needed(c);
}

/*
 * Eviction.
 */

/* Marks @id as being removed, unless it is open.  Returns false if open. */
static bool evict_begin(struct cache *c, const char *id)
{
	bool open;

	pthread_mutex_lock(&c->table_lock);
	open = table_find(c, id) != NULL;
	if (!open)
		strcpy(c->evicting, id);
	pthread_mutex_unlock(&c->table_lock);
	return !open;
}

static void evict_end(struct cache *c)
{
	pthread_mutex_lock(&c->table_lock);
	c->evicting[0] = '\0';
	pthread_cond_broadcast(&c->table_cond);
	pthread_mutex_unlock(&c->table_lock);
}

/* Removes blob @id: its file first, then its row. */
static int evict_one(struct cache *c, const char *id, uint64_t *bytes)
{
	int dfd = cache_subdir_open(c, id, false);
	int err = 0;

	*bytes = 0;
	if (dfd >= 0) {
		if (unlinkat(dfd, id, 0) && errno != ENOENT)
			err = -errno;
		close(dfd);
	} else if (dfd != -ENOENT) {
		err = dfd;
	}
	if (!err)
		err = cache_index_blob_delete(c->idx, id, bytes);
	if (err)
		cache_log(c, LOG_ERR, "cannot evict blob \"%s\": %s", id, strerror(-err));
	else
		cache_log(c, LOG_DEBUG, "evicted blob \"%s\"", id);
	return err;
}

/* One eviction pass, unless one runs already.  Returns 0 or -errno. */
static int cache_evict(struct cache *c)
{
	struct cache_index_lru batch[CACHE_EVICT_BATCH];
	int64_t after_used = INT64_MIN, after_row = 0, pending = 0, total;
	struct cache_index_totals t;
	int err;

	pthread_mutex_lock(&c->table_lock);
	if (c->pruning) {
		pthread_mutex_unlock(&c->table_lock);
		return 0;
	}
	c->pruning = true;
	/* What open handles hold that their rows do not say yet. */
	for (size_t i = 0; i < CACHE_TABLE_SIZE; i++) {
		for (struct cache_blob *b = c->table[i]; b; b = b->next) {
			int64_t chunks, bytes, complete;

			cache_blob_unpersisted(b, &chunks, &bytes, &complete);
			pending += bytes;
		}
	}
	pthread_mutex_unlock(&c->table_lock);

	err = cache_index_totals(c->idx, &t);
	if (err)
		goto stop_pruning;
	total = (int64_t)t.bytes + pending;
	while (c->limit && total > (int64_t)c->limit) {
		size_t n;

		err = cache_index_blob_lru(c->idx, after_used, after_row, batch, CACHE_EVICT_BATCH,
					   &n);
		if (err || !n)
			break;
		for (size_t i = 0; i < n && total > (int64_t)c->limit; i++) {
			uint64_t bytes;

			after_used = batch[i].last_used;
			after_row = batch[i].row;
			if (!cache_id_valid(batch[i].id, NULL) || !evict_begin(c, batch[i].id))
				continue;
			err = evict_one(c, batch[i].id, &bytes);
			evict_end(c);
			if (err)
				goto stop_pruning;
			total -= (int64_t)bytes;
		}
	}
	__atomic_store_n(&c->used, total, __ATOMIC_RELAXED);
	if (c->limit && total > (int64_t)c->limit)
		__atomic_store_n(&c->evict_retry, cache_now_ms() + CACHE_EVICT_BACKOFF,
				 __ATOMIC_RELAXED);
stop_pruning:
	pthread_mutex_lock(&c->table_lock);
	c->pruning = false;
	pthread_mutex_unlock(&c->table_lock);
	return err;
}

void cache_evict_if_needed(struct cache *c)
{
	if (!c->limit || __atomic_load_n(&c->used, __ATOMIC_RELAXED) <= (int64_t)c->limit)
		return;
	if (cache_now_ms() < __atomic_load_n(&c->evict_retry, __ATOMIC_RELAXED))
		return;
	cache_evict(c);
}

/* Calls @fn on every file of DIR/blobs/xx/ named like a blob of that xx. */
static int blobs_walk(struct cache *c, int (*fn)(struct cache *c, int dfd, const char *id))
{
	int err = 0;

	for (unsigned i = 0; i < 256 && !err; i++) {
		char name[3];
		struct dirent *de;
		DIR *d;
		int dfd;

		snprintf(name, sizeof(name), "%02x", i);
		dfd = openat(c->blobs_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (dfd < 0)
			continue;
		d = fdopendir(dfd);
		if (!d) {
			err = -errno;
			close(dfd);
			break;
		}
		while (!err && (de = readdir(d)))
			if (cache_id_valid(de->d_name, NULL) && !strncmp(de->d_name, name, 2))
				err = fn(c, dirfd(d), de->d_name);
		closedir(d);
		unlinkat(c->blobs_fd, name, AT_REMOVEDIR); /* when empty */
	}
	return err;
}

/* Removes a blob file that has no row and no handle. */
static int gc_one(struct cache *c, int dfd, const char *id)
{
	bool exists = true;
	int err;

	if (!evict_begin(c, id))
		return 0;
	err = cache_index_blob_exists(c->idx, id, &exists);
	if (!err && !exists && unlinkat(dfd, id, 0) && errno != ENOENT)
		err = -errno;
	evict_end(c);
	if (!err && !exists)
		cache_log(c, LOG_INFO, "removed blob file \"%s\" unknown to the index", id);
	return err;
}

int cache_prune(struct cache *c)
{
	int err;

	/* Queued work holds references: let it end and unpin its blobs. */
	pthread_mutex_lock(&c->work_lock);
	while (c->worker_started && !c->worker_stop && (c->work_head || c->worker_busy))
		pthread_cond_wait(&c->work_idle, &c->work_lock);
	pthread_mutex_unlock(&c->work_lock);
	err = cache_evict(c);

	if (err)
		return err;
	pthread_mutex_lock(&c->table_lock);
	if (c->pruning) {
		pthread_mutex_unlock(&c->table_lock);
		return 0;
	}
	c->pruning = true;
	pthread_mutex_unlock(&c->table_lock);
	err = blobs_walk(c, gc_one);
	pthread_mutex_lock(&c->table_lock);
	c->pruning = false;
	pthread_mutex_unlock(&c->table_lock);
	return err;
}

/*
 * Statistics and clearing.
 */

int cache_stats(struct cache *c, struct cache_stats *st)
{
	int64_t chunks = 0, bytes = 0, complete = 0;
	struct cache_index_totals t;
	int err = cache_index_totals(c->idx, &t);

	memset(st, 0, sizeof(*st));
	if (err)
		return err;
	pthread_mutex_lock(&c->table_lock);
	for (size_t i = 0; i < CACHE_TABLE_SIZE; i++) {
		for (struct cache_blob *b = c->table[i]; b; b = b->next) {
			int64_t ch, by, co;

			cache_blob_unpersisted(b, &ch, &by, &co);
			chunks += ch;
			bytes += by;
			complete += co;
		}
	}
	st->open = c->nopen;
	pthread_mutex_unlock(&c->table_lock);
	st->blobs = t.blobs;
	st->complete = (uint64_t)((int64_t)t.complete + complete);
	st->chunks = (uint64_t)((int64_t)t.chunks + chunks);
	st->bytes = (uint64_t)((int64_t)t.bytes + bytes);
	st->limit = c->limit;
	st->hits = t.hits + __atomic_load_n(&c->hits, __ATOMIC_RELAXED);
	st->misses = t.misses + __atomic_load_n(&c->misses, __ATOMIC_RELAXED);
	return 0;
}

double cache_stats_hit_ratio(const struct cache_stats *st)
{
	uint64_t all = st->hits + st->misses;

	return all ? (double)st->hits / (double)all : 0.0;
}

static int clear_one(struct cache *c, int dfd, const char *id)
{
	(void)c;
	return unlinkat(dfd, id, 0) && errno != ENOENT ? -errno : 0;
}

int cache_clear(const char *dir, cache_log_fn log)
{
	struct cache_config cfg = {.dir = dir, .lock = CACHE_LOCK_EXCLUSIVE, .log = log};
	int err = 0;
	struct cache *c = cache_open(&cfg, &err);

	if (!c)
		return err;
	/* The rows first: a file without a row is harmless, a row without
	 * its file is reset when the file is made again.  The journal and
	 * DIR/stage are not the cache's to clear: they hold changes that are
	 * not on the Hub yet. */
	err = cache_index_clear(c->idx);
	if (!err)
		err = blobs_walk(c, clear_one);
	c->hits = c->misses = 0;
	cache_close(c);
	return err;
}
