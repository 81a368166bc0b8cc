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
 * A pass runs when the cache is over its limit, when its filesystem has less
 * free space than a floor, and at once (no back-off) when a write to a blob
 * or the index failed with ENOSPC; a full disk never makes a reader wait for
 * more than the pass it triggers.  Files must never hold bytes the index does
 * not count (else eviction could not free them): see "Recounting".
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
#include <sys/vfs.h>
#include <sys/statvfs.h>
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
/* How long a reader whose write found the disk full waits at most for an
 * eviction pass that runs already (ms). */
#define CACHE_RECLAIM_WAIT 200

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
	/* A mount that finds nobody else using the cache holds it exclusively
	 * until cache_open() recounted it (cache_recount()), then shares it. */
	if (lock == CACHE_LOCK_SHARED && !flock(c->lock_fd, LOCK_EX | LOCK_NB)) {
		c->alone = true;
		return 0;
	}
	if (flock(c->lock_fd, (lock == CACHE_LOCK_SHARED ? LOCK_SH : LOCK_EX) | LOCK_NB))
		return errno == EWOULDBLOCK ? -EBUSY : -errno;
	c->alone = lock == CACHE_LOCK_EXCLUSIVE;
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

/* File systems on a local disk, where O_DIRECT moves the bytes between the
 * disk and our buffers (ext4, xfs, btrfs, f2fs).  Elsewhere it is slower
 * (NFS asks the server every time) or changes nothing (tmpfs). */
static bool cache_fs_local_disk(unsigned long type)
{
	switch (type) {
	case 0xEF53:	 /* ext2/3/4 */
	case 0x58465342: /* xfs */
	case 0x9123683E: /* btrfs */
	case 0xF2F52010: /* f2fs */
		return true;
	default:
		return false;
	}
}

bool cache_direct_io(const struct cache *c, unsigned long *fs_type)
{
	if (fs_type)
		*fs_type = c->fs_type;
	return c->direct;
}

struct cache *cache_open(const struct cache_config *cfg, int *errp)
{
	uint32_t chunk = cfg->chunk_size ? cfg->chunk_size : CACHE_CHUNK_DEFAULT;
	struct cache *c;
	int err;

	if (!cfg->dir || !cfg->dir[0] || chunk < CACHE_CHUNK_MIN || chunk > CACHE_CHUNK_MAX ||
	    (chunk & (chunk - 1)) || cfg->lock > CACHE_LOCK_EXCLUSIVE ||
	    cfg->io > CACHE_IO_BUFFERED) {
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
	{
		struct statfs sf;

		c->fs_type = fstatfs(c->dirfd, &sf) ? 0 : (unsigned long)sf.f_type;
		c->direct = cfg->io == CACHE_IO_DIRECT ||
			    (cfg->io == CACHE_IO_AUTO && cache_fs_local_disk(c->fs_type));
	}
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
	if (c->alone && cfg->lock != CACHE_LOCK_NONE) {
		err = cache_recount(c);
		if (err)
			goto close_c;
	}
	if (c->alone && cfg->lock == CACHE_LOCK_SHARED) {
		/* Blocks only while a `cache clear` that slipped in runs. */
		if (flock(c->lock_fd, LOCK_SH)) {
			err = -errno;
			goto close_c;
		}
		c->alone = false;
	}
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
		cache_index_counters_add(c->idx, c->hit_bytes, c->miss_bytes);
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
	if ((err == -ENOSPC || err == -EDQUOT) && cache_space_reclaim(c, 0)) {
		/* The index could not grow on a full disk: room was made. */
		if (b->subdir_fd >= 0)
			close(b->subdir_fd);
		b->subdir_fd = -1;
		err = cache_blob_open(b);
	}
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

static int evict_one(struct cache *c, const char *id, uint64_t *bytes, uint64_t *disk);
static void evict_end(struct cache *c);

void cache_blob_put(struct cache_blob *b)
{
	char id[CACHE_ID_MAX];
	bool lost = false;
	struct cache *c;
	int err;

	if (!b)
		return;
	c = b->c;
	strcpy(id, b->id);
	pthread_mutex_lock(&c->table_lock);
	if (b->refs > 1) {
		b->refs--;
		pthread_mutex_unlock(&c->table_lock);
		return;
	}
	pthread_mutex_unlock(&c->table_lock);
	/* The last reference: persist while still in the table.  Another
	 * thread may take the handle again meanwhile; then its put is last. */
	for (int full = 0;;) {
		err = cache_blob_flush(b, true);
		/* A full disk: the flush made room, once more. */
		if ((err == -ENOSPC || err == -EDQUOT) && !full++)
			continue;
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
		lost = (err == -ENOSPC || err == -EDQUOT) && cache_blob_dirty(b);
		/* A get of the id waits while its file and row go. */
		while (lost && c->evicting[0])
			pthread_cond_wait(&c->table_cond, &c->table_lock);
		if (lost)
			strcpy(c->evicting, b->id);
		table_remove(c, b);
		pthread_cond_broadcast(&c->table_cond);
		pthread_mutex_unlock(&c->table_lock);
		break;
	}
	cache_blob_free(b);
	if (lost) {
		uint64_t bytes;

		/* Its presence could not be recorded: the file holds bytes that
		 * no row counts, which nothing could evict.  It goes. */
		cache_log(c, LOG_WARNING, "cannot record blob \"%s\" on a full disk: %s; removed",
			  id, strerror(-err));
		evict_one(c, id, &bytes, NULL);
		evict_end(c);
	}
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

/* Removes blob @id: its file first, then its row.  The bytes its row
 * counted go to *@bytes, what its file occupied to *@disk (may be NULL). */
static int evict_one(struct cache *c, const char *id, uint64_t *bytes, uint64_t *disk)
{
	int dfd = cache_subdir_open(c, id, false);
	struct stat st;
	int err = 0;

	*bytes = 0;
	if (disk)
		*disk = 0;
	if (dfd >= 0) {
		if (disk && !fstatat(dfd, id, &st, AT_SYMLINK_NOFOLLOW))
			*disk = (uint64_t)st.st_blocks * 512;
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

/*
 * The free-space floor.  A cache under its limit on a disk that is full
 * (other files, or a limit larger than the disk) still evicts: it keeps 2%
 * of its filesystem free, at least CACHE_FLOOR_CHUNKS chunks and at most
 * CACHE_FLOOR_MAX bytes, as statvfs(2) reports them for unprivileged users
 * (f_bavail).  Only blobs are evicted for it: a disk filled by other files
 * may empty the cache, never more.
 */
#define CACHE_FLOOR_CHUNKS 4
#define CACHE_FLOOR_MAX (1ull << 30)

uint64_t cache_space_floor(uint64_t fs_bytes, uint32_t chunk_size)
{
	uint64_t floor = fs_bytes / 50;

	if (floor < (uint64_t)CACHE_FLOOR_CHUNKS * chunk_size)
		floor = (uint64_t)CACHE_FLOOR_CHUNKS * chunk_size;
	return floor < CACHE_FLOOR_MAX ? floor : CACHE_FLOOR_MAX;
}

/* True if the cache's filesystem has less than the floor free. */
static bool space_low(struct cache *c)
{
	struct statvfs sv;

	if (fstatvfs(c->blobs_fd, &sv))
		return false;
	return (uint64_t)sv.f_bavail * sv.f_frsize <
	       cache_space_floor((uint64_t)sv.f_blocks * sv.f_frsize, c->chunk_size);
}

/* One eviction pass, unless one runs already: evicts unpinned blobs, least
 * recently used first, while the cache is over its limit, the disk below
 * the floor, or less than @want bytes were freed.  The bytes freed go to
 * *@freed (may be NULL).  Returns 0 or -errno. */
static int cache_evict(struct cache *c, uint64_t want, uint64_t *freed)
{
	struct cache_index_lru batch[CACHE_EVICT_BATCH];
	int64_t after_used = INT64_MIN, after_row = 0, pending = 0, total;
	struct cache_index_totals t;
	uint64_t gone = 0;
	bool low;
	int err;

	if (freed)
		*freed = 0;
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
	low = space_low(c);
	while ((c->limit && total > (int64_t)c->limit) || low || gone < want) {
		size_t n;

		err = cache_index_blob_lru(c->idx, after_used, after_row, batch, CACHE_EVICT_BATCH,
					   &n);
		if (err || !n)
			break;
		for (size_t i = 0;
		     i < n && ((c->limit && total > (int64_t)c->limit) || low || gone < want);
		     i++) {
			uint64_t bytes, disk;

			after_used = batch[i].last_used;
			after_row = batch[i].row;
			if (!cache_id_valid(batch[i].id, NULL) || !evict_begin(c, batch[i].id))
				continue;
			err = evict_one(c, batch[i].id, &bytes, &disk);
			evict_end(c);
			if (err)
				goto stop_pruning;
			total -= (int64_t)bytes;
			/* A file may hold more than its row counted (its presence
			 * could not be persisted): what the disk got back counts. */
			gone += disk > bytes ? disk : bytes;
			if (low)
				low = space_low(c);
		}
	}
	__atomic_store_n(&c->used, total, __ATOMIC_RELAXED);
	if ((c->limit && total > (int64_t)c->limit) || low)
		__atomic_store_n(&c->evict_retry, cache_now_ms() + CACHE_EVICT_BACKOFF,
				 __ATOMIC_RELAXED);
	if (gone)
		cache_log(c, LOG_INFO, "evicted %llu bytes%s", (unsigned long long)gone,
			  want ? " to make room on a full disk" : "");
stop_pruning:
	if (freed)
		*freed = gone;
	pthread_mutex_lock(&c->table_lock);
	c->pruning = false;
	pthread_cond_broadcast(&c->table_cond);
	pthread_mutex_unlock(&c->table_lock);
	return err;
}

void cache_evict_if_needed(struct cache *c)
{
	if (cache_now_ms() < __atomic_load_n(&c->evict_retry, __ATOMIC_RELAXED))
		return;
	if ((!c->limit || __atomic_load_n(&c->used, __ATOMIC_RELAXED) <= (int64_t)c->limit) &&
	    !space_low(c))
		return;
	cache_evict(c, 0, NULL);
}

/* Bytes free on the cache's filesystem for unprivileged users, 0 if unknown. */
static uint64_t space_free(struct cache *c)
{
	struct statvfs sv;

	return fstatvfs(c->blobs_fd, &sv) ? 0 : (uint64_t)sv.f_bavail * sv.f_frsize;
}

bool cache_space_reclaim(struct cache *c, uint64_t want)
{
	struct timespec until;
	uint64_t freed = 0;

	if (!want)
		want = c->chunk_size;
	/* No back-off.  A pass already running (another reader's, or one that
	 * a flush started) is given at most CACHE_RECLAIM_WAIT to end, so that
	 * what it frees is seen; then this one runs. */
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_nsec += CACHE_RECLAIM_WAIT * 1000000L;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&c->table_lock);
	while (c->pruning && !pthread_cond_timedwait(&c->table_cond, &c->table_lock, &until))
		;
	pthread_mutex_unlock(&c->table_lock);
	cache_evict(c, want, &freed);
	return freed > 0 || space_free(c) >= want;
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

/*
 * Recounting.  The index counts the bytes of the chunks each row says are
 * present; the files must not hold more, or eviction could never free what
 * they hold beyond.  A write that fails halfway punches out what it wrote
 * (cache_blob_write()), but a crash, or a presence that could not be
 * persisted (a full disk), leaves bytes in files that no row counts.  A
 * cache opened by its only user recounts: a row without a file goes, a file
 * holding more than its row counts loses the chunks the row does not have
 * (a hole punched; the file and row go where that is not possible), and a
 * file without a row goes.  1,000 blobs take a few milliseconds (one stat
 * each).
 */

/* Slack for allocation rounding and the file system's own blocks. */
#define CACHE_RECOUNT_SLACK (64u << 10)

int cache_punch(int fd, uint64_t off, uint64_t len)
{
	if (!len)
		return 0;
	if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len))
		return -errno;
	return 0;
}

/* Whether chunk @i is set in a row's bitmap (NULL: none is). */
static bool bitmap_has(const void *bitmap, uint64_t i)
{
	const unsigned char *p = bitmap;

	return p && (p[i >> 3] >> (i & 7)) & 1;
}

/* Punches the chunks that the row of @e does not have out of the file @fd.
 * Returns 0 or -errno (-ENOTSUP: the row cannot tell, or no punching). */
static int recount_punch(struct cache *c, const struct cache_index_lru *e, int fd)
{
	struct cache_index_blob row;
	uint64_t nchunks;
	int err = cache_index_blob_load(c->idx, e->id, &row);

	if (err)
		return err;
	nchunks = row.size ? ((row.size - 1) >> c->chunk_shift) + 1 : 0;
	if (row.complete || row.chunk_size != c->chunk_size ||
	    (row.present && row.present_len != (nchunks + 7) / 8)) {
		err = -ENOTSUP;
		goto free_row;
	}
	for (uint64_t i = 0; i < nchunks && !err; i++) {
		uint64_t j = i;

		if (bitmap_has(row.present, i))
			continue;
		while (j + 1 < nchunks && !bitmap_has(row.present, j + 1))
			j++;
		err = cache_punch(fd, i << c->chunk_shift,
				  ((j + 1) << c->chunk_shift) - (i << c->chunk_shift));
		i = j;
	}
free_row:
	free(row.present);
	free(row.crcs);
	return err;
}

/* Brings the row @e and its file into agreement; adds the bytes that were
 * not counted to *@stray. */
static int recount_one(struct cache *c, const struct cache_index_lru *e, uint64_t *stray)
{
	int dfd = cache_subdir_open(c, e->id, false);
	uint64_t disk, bytes;
	struct stat st;
	int fd, err = 0;

	if (dfd < 0 && dfd != -ENOENT)
		return dfd;
	fd = dfd < 0 ? -1 : openat(dfd, e->id, O_RDWR | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st) || !S_ISREG(st.st_mode)) {
		/* No file: the row counts bytes nobody holds.  (Not a regular
		 * file: blob_attach() refuses it, it stays counted as 0.) */
		if (fd < 0 && e->bytes)
			err = cache_index_blob_delete(c->idx, e->id, &bytes);
		goto close_fd;
	}
	disk = (uint64_t)st.st_blocks * 512;
	if (disk <= e->bytes + CACHE_RECOUNT_SLACK)
		goto close_fd;
	*stray += disk - e->bytes;
	if (!recount_punch(c, e, fd) && !fstat(fd, &st) &&
	    (uint64_t)st.st_blocks * 512 <= e->bytes + CACHE_RECOUNT_SLACK)
		goto close_fd;
	/* The file first, then the row (see cache_blob.c). */
	if (unlinkat(dfd, e->id, 0) && errno != ENOENT)
		err = -errno;
	if (!err)
		err = cache_index_blob_delete(c->idx, e->id, &bytes);
close_fd:
	if (fd >= 0)
		close(fd);
	if (dfd >= 0)
		close(dfd);
	return err;
}

int cache_recount(struct cache *c)
{
	struct cache_index_lru batch[CACHE_EVICT_BATCH];
	int64_t after_used = INT64_MIN, after_row = 0;
	struct cache_index_totals t;
	uint64_t stray = 0, before = (uint64_t)c->used;
	size_t n;
	int err;

	do {
		err = cache_index_blob_lru(c->idx, after_used, after_row, batch, CACHE_EVICT_BATCH,
					   &n);
		for (size_t i = 0; i < n && !err; i++) {
			after_used = batch[i].last_used;
			after_row = batch[i].row;
			if (cache_id_valid(batch[i].id, NULL))
				err = recount_one(c, &batch[i], &stray);
		}
	} while (!err && n);
	if (!err)
		err = blobs_walk(c, gc_one);
	if (!err)
		err = cache_index_totals(c->idx, &t);
	if (err) {
		cache_log(c, LOG_ERR, "cannot recount the cache \"%s\": %s", c->dir,
			  strerror(-err));
		return err;
	}
	c->used = (int64_t)t.bytes;
	if (stray || t.bytes != before)
		cache_log(c, LOG_NOTICE,
			  "recounted the cache \"%s\": %llu bytes in files that the index did not "
			  "count, %llu bytes counted before, %llu now",
			  c->dir, (unsigned long long)stray, (unsigned long long)before,
			  (unsigned long long)t.bytes);
	return 0;
}

int cache_prune(struct cache *c)
{
	int err;

	/* Queued work holds references: let it end and unpin its blobs. */
	pthread_mutex_lock(&c->work_lock);
	while (c->worker_started && !c->worker_stop && (c->work_head || c->worker_busy))
		pthread_cond_wait(&c->work_idle, &c->work_lock);
	pthread_mutex_unlock(&c->work_lock);
	err = cache_evict(c, 0, NULL);

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
	pthread_cond_broadcast(&c->table_cond);
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
	st->hit_bytes = t.hit_bytes + __atomic_load_n(&c->hit_bytes, __ATOMIC_RELAXED);
	st->miss_bytes = t.miss_bytes + __atomic_load_n(&c->miss_bytes, __ATOMIC_RELAXED);
	return 0;
}

double cache_stats_hit_ratio(const struct cache_stats *st)
{
	uint64_t all = st->hit_bytes + st->miss_bytes;

	return all ? (double)st->hit_bytes / (double)all : 0.0;
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
	c->hit_bytes = c->miss_bytes = 0;
	cache_close(c);
	return err;
}
