/*
 * Blob handles: a blob's sparse file, which of its chunks are present, the
 * single flight of fills, verification, discard, and the persistence of
 * presence.  See cache.h for the contract.
 *
 * Invariants:
 * - A bit of `present` is set only once every byte of its chunk was written
 *   (pwrite returned) to the current file, in the current generation.  Bits
 *   are cleared only by a discard, with the io lock write-held, so a reader
 *   that saw its bits with io read-held preads the bytes they describe.
 *   Present chunks are never written again.
 * - The row's presence is a subset of what was written before the last
 *   fdatasync of the file: a flush snapshots the bitmap, syncs, and only then
 *   writes the snapshot to the index.
 * - A row only describes the file at DIR/blobs/xx/<id>: when there is no
 *   file, the row is deleted before one is created; a file of the wrong size
 *   is unlinked; a discard unlinks the file before it makes a new one; an
 *   eviction unlinks the file before it deletes the row.  After a crash at
 *   any point, no row claims chunks of a file that does not hold them.  A
 *   handle checks, after reading its row, that its file is still the one at
 *   the path (another process may have replaced it).
 * - One flush or discard at a time per blob (the `persisting` flag, waited
 *   for on `cond`), holding no lock while it syncs or writes the index.
 * - Each present chunk has its CRC32C in `crcs` (computed from the bytes
 *   written, before its present bit is set), persisted in the same
 *   snapshot as `present`, so the row's CRCs cover the row's presence.  A
 *   chunk is checked against its CRC the first time a read of this handle
 *   serves it from the file (the `checked` bitmap, set for chunks this
 *   handle wrote); a mismatch drops the chunk (its present bit cleared with
 *   io write-held, the blob no longer verified), and the read fills it again.
 *   Rows without CRCs (made before schema version 6) are not checked until
 *   the blob is discarded or evicted: their CRCs are not computed from the
 *   file, which may already be rotten.
 * - Each chunk marked in `filling` belongs to one struct cache_fill of
 *   `fills`, where waiters find the result of its fill.
 * - A running hash follows the leading present chunks (advanced by the
 *   cache's worker); the read whose fill lands the last chunk waits for the
 *   verdict, and so does any read of the blob until it is given.
 *
 * Lock order (cache_internal.h explains each): c->table_lock, then b->io,
 * then b->lock, then the index's locks.  No lock is held while a fill runs,
 * during an fdatasync or an index call.  The read hot path takes io for
 * reading and reads the bitmap with atomic loads: no mutex.
 *
 * Content goes around the page cache where it can (blob_pwrite and
 * blob_pread, on the file systems enum cache_io names): the mount's own
 * page cache already holds what readers read, and filling a second copy
 * doubles the memory a cold read takes and costs more CPU than the rest of
 * it (new pages: 1.5-2.9 CPU-s per GiB on a VM, against 0.1 s with
 * O_DIRECT).  Unaligned bytes (a blob's tail, a piece of a cut transfer)
 * go through the page cache; the kernel keeps both views coherent (an
 * O_DIRECT read writes dirty pages back first, an O_DIRECT write drops the
 * pages it covers).  RWF_NOWAIT cannot tell first whether the page cache
 * holds a range: on a miss it starts read-ahead, filling the cache anyway.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <syslog.h>
#include <unistd.h>

#include "cache.h"
#include "cache_crc.h"
#include "cache_index.h"
#include "cache_internal.h"

/* Runs of missing chunks one thread claims at a time. */
#define BLOB_RUNS 16
/* Times a range is filled again after a discard took it away. */
#define BLOB_RETRIES 4
/* Last use is persisted before the last put only when older than this (ms). */
#define BLOB_USED_GRANULARITY 10000
/* Buffers of import copies, and each thread's for reading chunks back. */
#define BLOB_IO_BUFFER (1u << 20)
/* Their alignment.  The kernel copies file pages into a page-aligned buffer
 * several times faster than into malloc's large buffers, which start 16
 * bytes into a page (pread from the page cache, 2 cores of an AMD EPYC:
 * ~9 GB/s aligned, ~1.6 GB/s at offset 16). */
#define BLOB_IO_ALIGN 4096
/* The stack buffer a chunk is read back with (for its CRC or the hash), when
 * the thread's buffer of BLOB_IO_BUFFER bytes cannot be had.  Reading a chunk
 * from a cold disk in pieces of 64 KiB is about half as fast as in 1 MiB. */
#define BLOB_CRC_BUFFER (64u << 10)
/* The cache's worker hashes from the file only the chunks this far behind
 * the furthest read: nearer ones are hashed from the memory of the reads
 * (or writes) that carry the running hash, so they are not read twice. */
#define BLOB_HASH_LAG (64u << 20)
/* How far behind a warm read its pages of the blob file are dropped. */
#define BLOB_DROP_BEHIND (8u << 20)
/* Chunks of one write whose CRCs live on the stack (more: on the heap). */
#define BLOB_CRC_STACK 32

/*
 * Bitmaps.  `present` is written under b->lock and read with atomic loads
 * anywhere; `filling` only under b->lock.
 */

static bool bit_test(const uint64_t *w, uint64_t i)
{
	return (__atomic_load_n(&w[i >> 6], __ATOMIC_ACQUIRE) >> (i & 63)) & 1;
}

static void bit_set(uint64_t *w, uint64_t i)
{
	__atomic_fetch_or(&w[i >> 6], 1ull << (i & 63), __ATOMIC_RELEASE);
}

static bool fill_test(const uint64_t *w, uint64_t i)
{
	return (w[i >> 6] >> (i & 63)) & 1;
}

static void fill_set(uint64_t *w, uint64_t i, bool on)
{
	if (on)
		w[i >> 6] |= 1ull << (i & 63);
	else
		w[i >> 6] &= ~(1ull << (i & 63));
}

static void bit_clear(uint64_t *w, uint64_t i)
{
	__atomic_fetch_and(&w[i >> 6], ~(1ull << (i & 63)), __ATOMIC_RELEASE);
}

/* True if bits [first, last] of @w are all set. */
static bool range_test(const uint64_t *w, uint64_t first, uint64_t last)
{
	for (uint64_t i = first; i <= last;) {
		uint64_t top = (i | 63) < last ? (i | 63) : last;
		uint64_t mask = (~0ull << (i & 63)) & (~0ull >> (63 - (top & 63)));

		if ((__atomic_load_n(&w[i >> 6], __ATOMIC_ACQUIRE) & mask) != mask)
			return false;
		i = top + 1;
	}
	return true;
}

/* True if chunks [first, last] are all present. */
static bool range_present(const struct cache_blob *b, uint64_t first, uint64_t last)
{
	return range_test(b->present, first, last);
}

static uint64_t chunk_start(const struct cache_blob *b, uint64_t i)
{
	return i << b->c->chunk_shift;
}

static uint64_t chunk_end(const struct cache_blob *b, uint64_t i)
{
	uint64_t end = (i + 1) << b->c->chunk_shift;

	return end < b->size ? end : b->size;
}

/* All chunks present but not verified yet. */
static bool blob_needs_verify(const struct cache_blob *b)
{
	return __atomic_load_n(&b->npresent, __ATOMIC_ACQUIRE) == b->nchunks &&
	       !__atomic_load_n(&b->verified, __ATOMIC_ACQUIRE);
}

static void blob_touch(struct cache_blob *b)
{
	__atomic_store_n(&b->last_used, cache_now_ms(), __ATOMIC_RELAXED);
}

/*
 * Plain I/O.
 */

static int pwrite_full(int fd, const unsigned char *p, uint64_t len, uint64_t off)
{
	while (len) {
		size_t n = len < (1u << 30) ? (size_t)len : (1u << 30);
		ssize_t w = pwrite(fd, p, n, (off_t)off);

		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -errno;
		if (w == 0)
			return -EIO;
		p += w;
		off += (uint64_t)w;
		len -= (uint64_t)w;
	}
	return 0;
}

/* Reads exactly @len bytes: the range is inside the file (sized at creation). */
static ssize_t pread_full(int fd, unsigned char *p, size_t len, uint64_t off)
{
	size_t done = 0;

	while (done < len) {
		ssize_t r = pread(fd, p + done, len - done, (off_t)(off + done));

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			return -EIO; /* truncated behind our back */
		done += (size_t)r;
	}
	return (ssize_t)done;
}

/* Whether [@off, @off + @len) at @p can go through O_DIRECT. */
static bool direct_aligned(const void *p, uint64_t off, uint64_t len)
{
	return (((uintptr_t)p | off | len) & (BLOB_IO_ALIGN - 1)) == 0;
}

/* The blob file @fd at the blob's path opened again with O_DIRECT, or -1
 * (no O_DIRECT there, or the path is no longer @fd's file). */
static int blob_open_direct(struct cache_blob *b, int fd)
{
	struct stat a, d;
	int dfd;

	if (!b->c->direct)
		return -1;
	dfd = openat(b->subdir_fd, b->id, O_RDWR | O_DIRECT | O_NOFOLLOW | O_CLOEXEC);
	if (dfd < 0)
		return -1;
	if (fstat(fd, &a) || fstat(dfd, &d) || a.st_ino != d.st_ino || a.st_dev != d.st_dev) {
		close(dfd);
		return -1;
	}
	return dfd;
}

/* Writes content: the aligned part with O_DIRECT, the rest (a blob's tail,
 * an unaligned buffer) through the page cache.  Called with io read-held. */
static int blob_pwrite(struct cache_blob *b, const unsigned char *p, uint64_t len, uint64_t off)
{
	uint64_t head = len & ~(uint64_t)(BLOB_IO_ALIGN - 1);

	if (b->dfd >= 0 && head && direct_aligned(p, off, head)) {
		int err = pwrite_full(b->dfd, p, head, off);

		/* EINVAL: the device wants another alignment; write it below */
		if (err != -EINVAL) {
			if (err || head == len)
				return err;
			p += head;
			off += head;
			len -= head;
		}
	}
	return pwrite_full(b->fd, p, len, off);
}

/* Reads exactly @len bytes of content: through the page cache when the blob
 * was complete when the handle was opened (a warm read), else the aligned
 * part with O_DIRECT when @p and @off are aligned (the bytes this handle
 * wrote are not in the page cache) and the rest through the page cache.
 * Called with io read-held. */
static ssize_t blob_pread(struct cache_blob *b, unsigned char *p, size_t len, uint64_t off)
{
	size_t done = 0;

	if (b->dfd >= 0 && __atomic_load_n(&b->warm, __ATOMIC_ACQUIRE)) {
		/* A warm read: through the page cache, for the kernel's
		 * read-ahead of the file (an O_DIRECT read waits for the disk
		 * once per request), then the pages read are dropped, so that
		 * the next read-ahead reuses them and the blob is not held in
		 * memory twice.  From BLOB_DROP_BEHIND before the read: a large
		 * folio is dropped only once the range covers all of it. */
		ssize_t r = pread_full(b->fd, p, len, off);
		uint64_t s = off > BLOB_DROP_BEHIND ? off - BLOB_DROP_BEHIND : 0;

		if (r >= 0)
			posix_fadvise(b->fd, (off_t)s, (off_t)(off + len - s), POSIX_FADV_DONTNEED);
		return r;
	}
	if (b->dfd >= 0 && len >= BLOB_IO_ALIGN && direct_aligned(p, off, 0)) {
		size_t n = len & ~(size_t)(BLOB_IO_ALIGN - 1);
		ssize_t r = pread_full(b->dfd, p, n, off);

		if (r >= 0)
			done = n;
		else if (r != -EINVAL)
			return r;
	}
	if (done < len) {
		ssize_t r = pread_full(b->fd, p + done, len - done, off + done);

		if (r < 0)
			return r;
	}
	return (ssize_t)len;
}

/*
 * Presence in memory.  Called with b->lock held.
 */

static struct cache_partial *partial_find(struct cache_blob *b, uint64_t chunk)
{
	for (size_t i = 0; i < b->npartials; i++)
		if (b->partials[i].chunk == chunk)
			return &b->partials[i];
	return NULL;
}

static void partial_drop(struct cache_blob *b, struct cache_partial *p)
{
	free(p->ranges);
	*p = b->partials[--b->npartials];
}

static void partials_clear(struct cache_blob *b)
{
	for (size_t i = 0; i < b->npartials; i++)
		free(b->partials[i].ranges);
	b->npartials = 0;
}

/* Adds [s, e) to what was written of chunk @chunk, which spans [cs, ce).
 * Returns 1 when the chunk is now complete (its record is dropped), 0 when
 * not yet, -ENOMEM. */
static int partial_add(struct cache_blob *b, uint64_t chunk, uint64_t s, uint64_t e, uint64_t cs,
		       uint64_t ce)
{
	struct cache_partial *p = partial_find(b, chunk);
	size_t i = 0, j;

	if (!p) {
		if (b->npartials == b->partials_cap) {
			size_t cap = b->partials_cap ? 2 * b->partials_cap : 8;
			struct cache_partial *np = realloc(b->partials, cap * sizeof(*np));

			if (!np)
				return -ENOMEM;
			b->partials = np;
			b->partials_cap = cap;
		}
		p = &b->partials[b->npartials++];
		memset(p, 0, sizeof(*p));
		p->chunk = chunk;
	}
	if (p->n == p->cap) {
		size_t cap = p->cap ? 2 * p->cap : 4;
		struct cache_range *nr = realloc(p->ranges, cap * sizeof(*nr));

		if (!nr) {
			if (!p->n)
				partial_drop(b, p);
			return -ENOMEM;
		}
		p->ranges = nr;
		p->cap = cap;
	}
	/* Merge [s, e) with the ranges it overlaps or touches. */
	while (i < p->n && p->ranges[i].end < s)
		i++;
	for (j = i; j < p->n && p->ranges[j].start <= e; j++) {
		if (p->ranges[j].start < s)
			s = p->ranges[j].start;
		if (p->ranges[j].end > e)
			e = p->ranges[j].end;
	}
	if (i == j) {
		memmove(&p->ranges[i + 1], &p->ranges[i], (p->n - i) * sizeof(*p->ranges));
		p->n++;
	} else {
		memmove(&p->ranges[i + 1], &p->ranges[j], (p->n - j) * sizeof(*p->ranges));
		p->n -= j - i - 1;
	}
	p->ranges[i].start = s;
	p->ranges[i].end = e;
	if (p->n == 1 && p->ranges[0].start == cs && p->ranges[0].end == ce) {
		partial_drop(b, p);
		return 1;
	}
	return 0;
}

/* Chunk @i, whose bytes have CRC32C @crc, is now all written. */
static void mark_present(struct cache_blob *b, uint64_t i, uint32_t crc)
{
	uint64_t len = chunk_end(b, i) - chunk_start(b, i);
	struct cache_partial *p = partial_find(b, i);

	if (p)
		partial_drop(b, p);
	__atomic_store_n(&b->crcs[i], crc, __ATOMIC_RELAXED);
	bit_set(b->checked, i); /* just written: nothing to check */
	bit_set(b->present, i); /* publishes the CRC */
	__atomic_add_fetch(&b->npresent, 1, __ATOMIC_RELEASE);
	b->present_bytes += len;
	b->dirty += len;
	__atomic_add_fetch(&b->c->used, (int64_t)len, __ATOMIC_RELAXED);
}

/* Forgets everything present: the file is about to be replaced. */
static void presence_clear(struct cache_blob *b)
{
	for (size_t i = 0; i < b->nwords; i++) {
		__atomic_store_n(&b->present[i], 0, __ATOMIC_RELEASE);
		__atomic_store_n(&b->checked[i], 0, __ATOMIC_RELEASE);
	}
	b->crcs_legacy = false;
	__atomic_store_n(&b->npresent, 0, __ATOMIC_RELEASE);
	__atomic_store_n(&b->verified, false, __ATOMIC_RELEASE);
	__atomic_store_n(&b->warm, false, __ATOMIC_RELEASE);
	__atomic_sub_fetch(&b->c->used, (int64_t)b->present_bytes, __ATOMIC_RELAXED);
	b->present_bytes = 0;
	b->dirty = 0;
	partials_clear(b);
}

/* Takes over the presence of a row just read (or made) by blob_attach(). */
static void presence_load(struct cache_blob *b, const struct cache_index_blob *row)
{
	const unsigned char *bytes = row->present;
	const unsigned char *crcs = row->crcs;
	bool usable =
	    row->present_len == (b->nchunks + 7) / 8 && row->chunk_size == b->c->chunk_size;
	bool has_crcs = row->crcs_len == b->nchunks * 4 && row->chunk_size == b->c->chunk_size;

	uint64_t n = 0;

	for (uint64_t i = 0; i < b->nchunks; i++) {
		if (!row->complete && !(usable && (bytes[i >> 3] >> (i & 7)) & 1))
			continue;
		if (has_crcs)
			__atomic_store_n(&b->crcs[i],
					 (uint32_t)crcs[4 * i] | (uint32_t)crcs[4 * i + 1] << 8 |
					     (uint32_t)crcs[4 * i + 2] << 16 |
					     (uint32_t)crcs[4 * i + 3] << 24,
					 __ATOMIC_RELAXED);
		else
			bit_set(b->checked, i); /* nothing to check it against */
		bit_set(b->present, i);
		n++;
		b->present_bytes += chunk_end(b, i) - chunk_start(b, i);
	}
	__atomic_store_n(&b->npresent, n, __ATOMIC_RELEASE);
	__atomic_store_n(&b->verified, row->complete, __ATOMIC_RELEASE);
	__atomic_store_n(&b->warm, row->complete, __ATOMIC_RELEASE);
	b->crcs_legacy = n > 0 && !has_crcs;
	if (b->crcs_legacy)
		cache_log(b->c, LOG_DEBUG,
			  "blob \"%s\" has no chunk CRCs: its chunks are not checked", b->id);
	/* Those bytes were counted in c->used at cache_open() (or just now). */
	b->row = row->row;
	b->orphan = false;
	b->persisted_chunks = b->npresent;
	b->persisted_bytes = b->present_bytes;
	b->persisted_complete = row->complete;
	b->persisted_used = row->last_used;
}

/*
 * Files.
 */

int cache_subdir_open(struct cache *c, const char *id, bool create)
{
	char name[3] = {id[0], id[1], '\0'};
	int fd;

	if (create && mkdirat(c->blobs_fd, name, 0700) && errno != EEXIST)
		return -errno;
	fd = openat(c->blobs_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

/* Opens the blob's file, creating it when missing, and its row.  Returns 0
 * with the file in *@fdp and the row in *@row (the caller frees
 * row->present), or -errno. */
static int blob_attach(struct cache_blob *b, int *fdp, struct cache_index_blob *row)
{
	static const int flags = O_RDWR | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC;
	struct cache *c = b->c;
	int err = 0;

	for (int attempt = 0; attempt < 4; attempt++) {
		bool created = false;
		struct stat st, at;
		uint64_t gone;
		int fd = openat(b->subdir_fd, b->id, flags);

		if (fd < 0 && errno == ENOENT) {
			/* No file: delete the row first, so that no crash can
			 * leave an old row describing the file about to be made. */
			err = cache_index_blob_delete(c->idx, b->id, &gone);
			if (err)
				return err;
			__atomic_sub_fetch(&c->used, (int64_t)gone, __ATOMIC_RELAXED);
			fd = openat(b->subdir_fd, b->id, flags | O_CREAT | O_EXCL, 0600);
			if (fd < 0 && errno == EEXIST)
				continue;
			if (fd >= 0 && ftruncate(fd, (off_t)b->size)) {
				err = -errno;
				unlinkat(b->subdir_fd, b->id, 0);
				goto close_fd;
			}
			created = true;
		}
		if (fd < 0)
			return -errno; /* ELOOP: a symlink where the blob should be */
		if (fstat(fd, &st)) {
			err = -errno;
			goto close_fd;
		}
		if (!S_ISREG(st.st_mode)) {
			cache_log(c, LOG_ERR, "blob \"%s\" is not a regular file", b->id);
			err = -EIO;
			goto close_fd;
		}
		if (!created && (uint64_t)st.st_size != b->size) {
			struct cache_index_blob old;
			bool conflict = false;

			/* A verified blob proves its size: the caller is wrong. */
			if (!cache_index_blob_load(c->idx, b->id, &old)) {
				conflict = old.complete && old.size == (uint64_t)st.st_size;
				free(old.present);
				free(old.crcs);
			}
			if (conflict) {
				err = -EINVAL;
				goto close_fd;
			}
			unlinkat(b->subdir_fd, b->id, 0);
			close(fd);
			continue;
		}
		err = cache_index_blob_attach(c->idx, b->id, b->size, c->chunk_size, cache_now_ms(),
					      row);
		if (err) {
			if (created)
				unlinkat(b->subdir_fd, b->id, 0);
			goto close_fd;
		}
		/* The row is ours only if our file is still the one at the path. */
		if (!fstatat(b->subdir_fd, b->id, &at, AT_SYMLINK_NOFOLLOW) &&
		    at.st_ino == st.st_ino && at.st_dev == st.st_dev) {
			*fdp = fd;
			return 0;
		}
		free(row->present);
		free(row->crcs);
		close(fd);
		continue;
	close_fd:
		close(fd);
		return err;
	}
	return -EAGAIN;
}

/*
 * Life cycle.
 */

struct cache_blob *cache_blob_alloc(struct cache *c, const char *id, enum cache_id_kind kind,
				    uint64_t size, int *err)
{
	uint64_t nchunks = size ? ((size - 1) >> c->chunk_shift) + 1 : 0;
	pthread_rwlockattr_t attr;
	struct cache_blob *b;

	if (size > INT64_MAX || nchunks > CACHE_CHUNKS_MAX) {
		*err = -EFBIG;
		return NULL;
	}
	b = calloc(1, sizeof(*b));
	if (!b) {
		*err = -ENOMEM;
		return NULL;
	}
	b->c = c;
	strcpy(b->id, id);
	b->kind = kind;
	b->size = size;
	b->nchunks = nchunks;
	b->nwords = (size_t)((nchunks + 63) / 64);
	b->present = calloc(b->nwords ? b->nwords : 1, sizeof(uint64_t));
	b->filling = calloc(b->nwords ? b->nwords : 1, sizeof(uint64_t));
	b->checked = calloc(b->nwords ? b->nwords : 1, sizeof(uint64_t));
	b->crcs = calloc(nchunks ? (size_t)nchunks : 1, sizeof(uint32_t));
	if (!b->present || !b->filling || !b->checked || !b->crcs) {
		*err = -ENOMEM;
		goto free_b;
	}
	b->fd = -1;
	b->dfd = -1;
	b->subdir_fd = -1;
	b->refs = 1;
	b->state = CACHE_BLOB_OPENING;
	b->last_used = cache_now_ms();
	/* Writers first: a discard must not starve behind a stream of reads.
	 * Nobody takes io twice, so this cannot deadlock. */
	pthread_rwlockattr_init(&attr);
	pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&b->io, &attr);
	pthread_rwlockattr_destroy(&attr);
	pthread_mutex_init(&b->lock, NULL);
	pthread_mutex_init(&b->wlock, NULL);
	pthread_cond_init(&b->cond, NULL);
	return b;

free_b:
	free(b->present);
	free(b->filling);
	free(b->checked);
	free(b->crcs);
	free(b);
	return NULL;
}

int cache_blob_open(struct cache_blob *b)
{
	struct cache_index_blob row;
	int fd, dfd, err;

	b->subdir_fd = cache_subdir_open(b->c, b->id, true);
	if (b->subdir_fd < 0) {
		err = b->subdir_fd;
		b->subdir_fd = -1;
		return err;
	}
	err = blob_attach(b, &fd, &row);
	if (err)
		return err;
	dfd = blob_open_direct(b, fd);
	pthread_rwlock_wrlock(&b->io);
	b->fd = fd;
	b->dfd = dfd;
	pthread_rwlock_unlock(&b->io);
	pthread_mutex_lock(&b->lock);
	presence_load(b, &row);
	pthread_mutex_unlock(&b->lock);
	free(row.present);
	free(row.crcs);
	return 0;
}

void cache_blob_free(struct cache_blob *b)
{
	if (!b)
		return;
	if (b->fd >= 0)
		close(b->fd);
	if (b->dfd >= 0)
		close(b->dfd);
	if (b->subdir_fd >= 0)
		close(b->subdir_fd);
	partials_clear(b);
	free(b->partials);
	cache_hasher_free(b->hasher);
	free(b->present);
	free(b->filling);
	free(b->checked);
	free(b->crcs);
	pthread_cond_destroy(&b->cond);
	pthread_mutex_destroy(&b->lock);
	pthread_mutex_destroy(&b->wlock);
	pthread_rwlock_destroy(&b->io);
	free(b);
}

const char *cache_blob_id(const struct cache_blob *b)
{
	return b->id;
}

uint64_t cache_blob_size(const struct cache_blob *b)
{
	return b->size;
}

bool cache_blob_complete(const struct cache_blob *b)
{
	return __atomic_load_n(&b->verified, __ATOMIC_ACQUIRE);
}

bool cache_blob_present(const struct cache_blob *b, uint64_t off, uint64_t len)
{
	uint64_t end;

	if (len == 0 || off >= b->size)
		return true;
	end = len > b->size - off ? b->size : off + len;
	return range_present(b, off >> b->c->chunk_shift, (end - 1) >> b->c->chunk_shift);
}

/*
 * Discard and persistence.
 */

/* Throws the blob's content away: clears its presence, unlinks its file and
 * makes a new empty one with a fresh row.  With @persisting, the caller holds
 * the persisting flag (it is released here). */
static void blob_discard(struct cache_blob *b, bool persisting)
{
	struct cache_index_blob row;
	int fd = -1, dfd, old, old_direct, err;

	pthread_mutex_lock(&b->lock);
	while (!persisting && b->persisting)
		pthread_cond_wait(&b->cond, &b->lock);
	b->persisting = true;
	pthread_mutex_unlock(&b->lock);

	/* No read is using the old bytes once io is write-held. */
	pthread_rwlock_wrlock(&b->io);
	pthread_mutex_lock(&b->lock);
	b->gen++;
	b->detached = true;
	presence_clear(b);
	if (!b->hashing) { /* else the hashing thread sees the new gen */
		cache_hasher_free(b->hasher);
		b->hasher = NULL;
		b->hashed = 0;
	}
	pthread_mutex_unlock(&b->lock);
	pthread_rwlock_unlock(&b->io);

	/* The bad bytes leave the path first; another process that has the
	 * file open keeps its inode.  blob_attach() then deletes the row and
	 * makes a new file. */
	if (unlinkat(b->subdir_fd, b->id, 0) && errno != ENOENT)
		cache_log(b->c, LOG_ERR, "cannot remove blob \"%s\": %s", b->id, strerror(errno));
	err = blob_attach(b, &fd, &row);
	dfd = err ? -1 : blob_open_direct(b, fd);

	pthread_rwlock_wrlock(&b->io);
	old = b->fd;
	old_direct = b->dfd;
	b->fd = err ? -1 : fd;
	b->dfd = dfd;
	pthread_rwlock_unlock(&b->io);
	if (old >= 0)
		close(old);
	if (old_direct >= 0)
		close(old_direct);

	pthread_mutex_lock(&b->lock);
	if (err) {
		cache_log(b->c, LOG_ERR, "cannot recreate blob \"%s\": %s", b->id, strerror(-err));
		b->broken = true;
		b->err = err;
	} else {
		presence_load(b, &row);
		free(row.present);
		free(row.crcs);
	}
	b->detached = false;
	b->persisting = false;
	pthread_cond_broadcast(&b->cond);
	pthread_mutex_unlock(&b->lock);
}

bool cache_blob_dirty(struct cache_blob *b)
{
	bool dirty;

	pthread_mutex_lock(&b->lock);
	dirty = b->state == CACHE_BLOB_READY && !b->broken && !b->orphan && b->dirty > 0;
	pthread_mutex_unlock(&b->lock);
	return dirty;
}

void cache_blob_unpersisted(struct cache_blob *b, int64_t *chunks, int64_t *bytes,
			    int64_t *complete)
{
	pthread_mutex_lock(&b->lock);
	*chunks = *bytes = *complete = 0;
	if (b->state == CACHE_BLOB_READY && !b->orphan && !b->broken) {
		*chunks = (int64_t)(b->npresent - b->persisted_chunks);
		*bytes = (int64_t)(b->present_bytes - b->persisted_bytes);
		*complete = (int64_t)b->verified - (int64_t)b->persisted_complete;
	}
	pthread_mutex_unlock(&b->lock);
}

static int blob_settle(struct cache_blob *b);

/* Persists what is new; see cache_internal.h.  Returns 0 or -errno. */
static int blob_flush(struct cache_blob *b, bool final)
{
	struct cache *c = b->c;
	struct cache_index_persist p = {0};
	unsigned char *bitmap = NULL, *crcs = NULL;
	uint64_t dirty;
	int64_t used;
	bool sync;
	int err;

	pthread_mutex_lock(&b->lock);
	while (b->persisting)
		pthread_cond_wait(&b->cond, &b->lock);
	if (b->state != CACHE_BLOB_READY || b->broken || b->orphan) {
		pthread_mutex_unlock(&b->lock);
		return 0;
	}
	used = __atomic_load_n(&b->last_used, __ATOMIC_RELAXED);
	sync = b->dirty > 0;
	if (!sync && b->verified == b->persisted_complete &&
	    (used == b->persisted_used ||
	     (!final && used - b->persisted_used < BLOB_USED_GRANULARITY))) {
		pthread_mutex_unlock(&b->lock);
		return 0;
	}
	if (!b->verified) {
		size_t nbytes = (size_t)((b->nchunks + 7) / 8);

		bitmap = calloc(nbytes ? nbytes : 1, 1);
		if (!bitmap) {
			pthread_mutex_unlock(&b->lock);
			return -ENOMEM;
		}
		for (size_t j = 0; j < nbytes; j++)
			bitmap[j] = (unsigned char)(b->present[j / 8] >> (8 * (j % 8)));
		p.present = bitmap;
		p.present_len = nbytes;
	}
	if (!b->crcs_legacy && b->nchunks) {
		/* Taken with the bitmap: the CRCs of every chunk it marks. */
		crcs = malloc((size_t)b->nchunks * 4);
		if (!crcs) {
			pthread_mutex_unlock(&b->lock);
			free(bitmap);
			return -ENOMEM;
		}
		for (uint64_t i = 0; i < b->nchunks; i++) {
			uint32_t v = b->crcs[i];

			crcs[4 * i] = (unsigned char)v;
			crcs[4 * i + 1] = (unsigned char)(v >> 8);
			crcs[4 * i + 2] = (unsigned char)(v >> 16);
			crcs[4 * i + 3] = (unsigned char)(v >> 24);
		}
		p.crcs = crcs;
		p.crcs_len = (size_t)b->nchunks * 4;
	}
	p.row = b->row;
	p.chunks = b->npresent;
	p.bytes = b->present_bytes;
	p.complete = b->verified;
	p.last_used = used;
	dirty = b->dirty;
	b->persisting = true;
	pthread_mutex_unlock(&b->lock);

	/* Everything in the snapshot was written before this sync. */
	if (sync && fdatasync(b->fd)) {
		err = -errno;
		/* After a failed sync the kernel may have dropped the data and a
		 * later sync may succeed: nothing written so far can be trusted. */
		cache_log(c, LOG_ERR, "cannot sync blob \"%s\": %s; discarding it", b->id,
			  strerror(-err));
		free(bitmap);
		free(crcs);
		blob_discard(b, true);
		return err;
	}
	p.hit_bytes = __atomic_exchange_n(&c->hit_bytes, 0, __ATOMIC_RELAXED);
	p.miss_bytes = __atomic_exchange_n(&c->miss_bytes, 0, __ATOMIC_RELAXED);
	err = cache_index_blob_persist(c->idx, &p);
	if (err && err != -ESTALE) {
		__atomic_add_fetch(&c->hit_bytes, p.hit_bytes, __ATOMIC_RELAXED);
		__atomic_add_fetch(&c->miss_bytes, p.miss_bytes, __ATOMIC_RELAXED);
	}
	free(bitmap);
	free(crcs);

	pthread_mutex_lock(&b->lock);
	if (err == -ESTALE) {
		/* Evicted (or replaced) by another process: what we have lives
		 * in an unlinked file; keep serving it, record nothing. */
		cache_log(c, LOG_DEBUG, "blob \"%s\" was removed from the index", b->id);
		b->orphan = true;
	} else if (!err) {
		b->dirty -= dirty;
		b->persisted_chunks = p.chunks;
		b->persisted_bytes = p.bytes;
		b->persisted_complete = p.complete;
		b->persisted_used = used;
	}
	b->persisting = false;
	pthread_cond_broadcast(&b->cond);
	pthread_mutex_unlock(&b->lock);
	if (err == -ESTALE)
		err = 0;
	if (!err)
		cache_evict_if_needed(c);
	else if (err == -ENOSPC || err == -EDQUOT)
		cache_space_reclaim(c, 0); /* the next flush persists it */
	return err;
}

int cache_blob_flush(struct cache_blob *b, bool final)
{
	if (final && blob_needs_verify(b))
		blob_settle(b); /* persists the completion itself */
	return blob_flush(b, final);
}

int cache_blob_sync(struct cache_blob *b)
{
	return cache_blob_flush(b, true);
}

/* Each thread's buffer for reading chunks back, to hash or check them
 * (freed at its exit). */
static pthread_once_t io_buf_once = PTHREAD_ONCE_INIT;
static pthread_key_t io_buf_key;

static void io_buf_key_make(void)
{
	pthread_key_create(&io_buf_key, free);
}

/* The calling thread's buffer of BLOB_IO_BUFFER bytes, or NULL. */
static unsigned char *io_buf(void)
{
	unsigned char *buf;

	pthread_once(&io_buf_once, io_buf_key_make);
	buf = pthread_getspecific(io_buf_key);
	if (!buf) {
		buf = aligned_alloc(BLOB_IO_ALIGN, BLOB_IO_BUFFER);
		if (buf && pthread_setspecific(io_buf_key, buf)) {
			free(buf);
			buf = NULL;
		}
	}
	return buf;
}

/* Reads [@off, @end) of the blob file in pieces and hands each to @eat
 * (which returns 0 or -errno).  Called with io read-held. */
static int file_feed(struct cache_blob *b, uint64_t off, uint64_t end,
		     int (*eat)(void *arg, const unsigned char *p, size_t n), void *arg)
{
	unsigned char stack[BLOB_CRC_BUFFER] __attribute__((aligned(BLOB_IO_ALIGN)));
	unsigned char *buf = io_buf();
	size_t max = buf ? BLOB_IO_BUFFER : sizeof(stack);
	int err = 0;

	if (!buf)
		buf = stack;
	while (!err && off < end) {
		size_t n = end - off < max ? (size_t)(end - off) : max;
		ssize_t r = blob_pread(b, buf, n, off);

		err = r < 0 ? (int)r : eat(arg, buf, n);
		off += n;
	}
	return err;
}

static int crc_eat(void *arg, const unsigned char *p, size_t n)
{
	uint32_t *crc = arg;

	*crc = cache_crc32c(*crc, p, n);
	return 0;
}

static int hash_eat(void *arg, const unsigned char *p, size_t n)
{
	return cache_hasher_update(arg, p, n);
}

/* The CRC32C of chunk @i as the file holds it, in *@crc.  Called with io
 * read-held.  Returns 0 or -errno. */
static int chunk_crc_file(struct cache_blob *b, uint64_t i, uint32_t *crc)
{
	*crc = 0;
	return file_feed(b, chunk_start(b, i), chunk_end(b, i), crc_eat, crc);
}

/*
 * Verification.  A running hash follows the leading chunks that are present:
 * a blob filled in order is hashed as it arrives (from the writer's memory
 * when the hash is at the bytes it wrote, else by the cache's worker or by
 * whoever calls blob_hash() first, from the file), and judged as soon as
 * its last chunk lands.
 */

/* Bytes just written, still in the writer's memory: [off, end) at p. */
struct hash_mem {
	const unsigned char *p;
	uint64_t off, end;
};

/* Whether chunk @i of @b is whole in @m. */
static bool hash_mem_has(const struct cache_blob *b, const struct hash_mem *m, uint64_t i)
{
	return m && m->off <= chunk_start(b, i) && chunk_end(b, i) <= m->end;
}

/* Whether blob_hash() with @m feeds chunk @i: every chunk without @m; with
 * it, never the last chunk, the chunks @m holds, and with @catch_up (a
 * reader's bytes) the chunks up to BLOB_HASH_LAG before them, from the
 * file, so that the running hash catches up with the reader it lost (while
 * another thread was hashing) instead of being left to the worker. */
static bool hash_mem_feeds(const struct cache_blob *b, const struct hash_mem *m, bool catch_up,
			   uint64_t i)
{
	if (!m)
		return true;
	if (i + 1 >= b->nchunks)
		return false;
	if (hash_mem_has(b, m, i))
		return true;
	return catch_up && chunk_end(b, i) <= m->off && m->off - chunk_end(b, i) < BLOB_HASH_LAG &&
	       m->end - m->off >= chunk_end(b, i) - chunk_start(b, i);
}

/* Feeds chunk @i to @h, from @m when it holds the chunk, else from the
 * file, unless the blob was discarded since generation @gen (-ESTALE).  With
 * io read-held, the file cannot be replaced. */
static int hash_chunk(struct cache_blob *b, struct cache_hasher *h, uint64_t i, uint64_t gen,
		      const struct hash_mem *m)
{
	uint64_t off = chunk_start(b, i), end = chunk_end(b, i);
	int err = 0;

	pthread_rwlock_rdlock(&b->io);
	if (b->gen != gen) /* written with io write-held: stable here */
		err = -ESTALE;
	if (!err && hash_mem_has(b, m, i)) {
		err = cache_hasher_update(h, m->p + (off - m->off), (size_t)(end - off));
		off = end;
	}
	if (!err && off < end)
		err = file_feed(b, off, end, hash_eat, h);
	pthread_rwlock_unlock(&b->io);
	return err;
}

/* Advances the running hash over the leading present chunks, one thread at
 * a time (returns 0 at once if another thread is at it).  When it reaches
 * the end, judges the blob: on a match marks it complete and persists that;
 * on a mismatch discards it and returns -EIO.  With @m (bytes just written
 * or served), only what hash_mem_feeds() says is fed, the chunks @m holds
 * from memory, and never the last chunk: the judging is left to the reads
 * (blob_settle), so that a bad blob fails the read that completes it, as
 * without @m.  No chunk from @limit on is fed. */
static int blob_hash(struct cache_blob *b, const struct hash_mem *m, bool catch_up, uint64_t limit)
{
	char hex[CACHE_ID_MAX] = "";
	bool judged = false, match = false;
	struct cache_hasher *h;
	uint64_t gen, i;
	int err = 0;

	pthread_mutex_lock(&b->lock);
	if (b->state != CACHE_BLOB_READY || b->hashing || b->broken || b->detached || b->verified ||
	    b->hashed >= limit || !hash_mem_feeds(b, m, catch_up, b->hashed)) {
		pthread_mutex_unlock(&b->lock);
		return 0;
	}
	if (!b->hasher) {
		b->hasher = cache_hasher_new(b->kind, b->size, &err);
		b->hashed = 0;
	}
	if (!b->hasher) {
		pthread_mutex_unlock(&b->lock);
		return err ? err : -ENOMEM;
	}
	b->hashing = true;
	gen = b->gen;
	h = b->hasher;
	/* Presence is tested with the lock held: a chunk that becomes present
	 * after the last test is followed by its filler's own call. */
	for (i = b->hashed; i < b->nchunks && bit_test(b->present, i); i++) {
		if (i >= limit || !hash_mem_feeds(b, m, catch_up, i))
			break;
		pthread_mutex_unlock(&b->lock);
		err = hash_chunk(b, h, i, gen, m);
		pthread_mutex_lock(&b->lock);
		if (err)
			break;
	}
	if (!err && i == b->nchunks && b->gen == gen) {
		pthread_mutex_unlock(&b->lock);
		err = cache_hasher_final(h, hex);
		match = !err && !strcmp(hex, b->id);
		pthread_mutex_lock(&b->lock);
		judged = !err && b->gen == gen;
	}
	if (err || i == b->nchunks || b->gen != gen) {
		/* Spent, stale, or fed in part: start again next time. */
		cache_hasher_free(h);
		b->hasher = NULL;
		b->hashed = 0;
	} else {
		b->hashed = i;
	}
	if (judged && match)
		__atomic_store_n(&b->verified, true, __ATOMIC_RELEASE);
	if (!judged || match) {
		b->hashing = false;
		pthread_cond_broadcast(&b->cond);
	}
	pthread_mutex_unlock(&b->lock);
	if (err && err != -ESTALE) {
		cache_log(b->c, LOG_ERR, "cannot verify blob \"%s\": %s", b->id, strerror(-err));
		return err;
	}
	if (judged && !match) {
		cache_log(b->c, LOG_ERR,
			  "blob \"%s\" does not match its id (its content hashes to %s); discarded",
			  b->id, hex);
		/* Still `hashing`: waiters for the verdict see the discard. */
		blob_discard(b, false);
		pthread_mutex_lock(&b->lock);
		b->hashing = false;
		pthread_cond_broadcast(&b->cond);
		pthread_mutex_unlock(&b->lock);
		return -EIO;
	}
	if (judged)
		blob_flush(b, false);
	return 0;
}

/* For a blob whose chunks are all present: has it judged, by this thread or
 * by the one hashing it.  Returns 0 (verified, or no longer all present),
 * -EIO when it was discarded meanwhile, or -errno. */
static int blob_settle(struct cache_blob *b)
{
	for (int round = 0; round < BLOB_RETRIES; round++) {
		uint64_t gen;
		bool stale;
		int err = blob_hash(b, NULL, false, UINT64_MAX);

		if (err || !blob_needs_verify(b))
			return err;
		/* Another thread is hashing it: wait for its verdict. */
		pthread_mutex_lock(&b->lock);
		gen = b->gen;
		while (b->hashing)
			pthread_cond_wait(&b->cond, &b->lock);
		stale = b->gen != gen;
		pthread_mutex_unlock(&b->lock);
		if (stale)
			return -EIO;
	}
	return 0;
}

/*
 * Writes, fills, reads.
 */

/* Records that [off, end) was written to the chunks [first, last]; @crcs
 * holds the CRC of each chunk that [off, end) covers whole (index i -
 * first).  Called with io read-held and b->lock held, in the generation the
 * bytes were written in.  A chunk completed by several writes has its CRC
 * read back from the file here: rare (fetch.c writes whole chunks), and a
 * read of bytes just written, from the page cache. */
static int blob_record(struct cache_blob *b, uint64_t off, uint64_t end, uint64_t first,
		       uint64_t last, const uint32_t *crcs)
{
	bool woke = false;
	int err = 0;

	for (uint64_t i = first; i <= last; i++) {
		uint64_t cs = chunk_start(b, i), ce = chunk_end(b, i);
		uint64_t s = off > cs ? off : cs, e = end < ce ? end : ce;
		int done;

		if (bit_test(b->present, i))
			continue;
		done = s == cs && e == ce ? 1 : partial_add(b, i, s, e, cs, ce);
		if (done < 0) {
			err = done;
			break;
		}
		if (done) {
			uint32_t crc = crcs[i - first];

			if (!(s == cs && e == ce)) {
				err = chunk_crc_file(b, i, &crc);
				if (err)
					break;
			}
			mark_present(b, i, crc);
			woke = true;
		}
	}
	if (woke)
		pthread_cond_broadcast(&b->cond);
	return err;
}

/* After a write of [off, end) failed: what it may have written to chunks
 * that are not present, outside the bytes recorded for them, is deallocated
 * (a hole punched), so that the file holds no bytes that no record knows.
 * The fill fails; a later one writes them again. */
static void blob_write_undo(struct cache_blob *b, uint64_t off, uint64_t end, uint64_t first,
			    uint64_t last)
{
	pthread_mutex_lock(&b->lock);
	for (uint64_t i = first; i <= last; i++) {
		uint64_t cs = chunk_start(b, i), ce = chunk_end(b, i);
		uint64_t pos = off > cs ? off : cs, e = end < ce ? end : ce;
		struct cache_partial *p;

		if (bit_test(b->present, i))
			continue;
		p = partial_find(b, i);
		for (size_t k = 0; p && k < p->n && pos < e; k++) {
			if (p->ranges[k].end <= pos)
				continue;
			if (p->ranges[k].start >= e)
				break;
			if (p->ranges[k].start > pos)
				cache_punch(b->fd, pos, p->ranges[k].start - pos);
			pos = p->ranges[k].end;
		}
		if (pos < e)
			cache_punch(b->fd, pos, e - pos);
	}
	pthread_mutex_unlock(&b->lock);
}

static int blob_write(struct cache_blob *b, uint64_t off, const void *data, size_t len);

int cache_blob_write(struct cache_blob *b, uint64_t off, const void *data, size_t len)
{
	int err = blob_write(b, off, data, len);

	/* A full disk: make room (other blobs, never a pinned one), then try
	 * once more; no waiting, the caller fails at once if it is still full. */
	if ((err == -ENOSPC || err == -EDQUOT) && cache_space_reclaim(b->c, len))
		err = blob_write(b, off, data, len);
	return err;
}

static int blob_write(struct cache_blob *b, uint64_t off, const void *data, size_t len)
{
	const unsigned char *p = data;
	uint32_t stack_crcs[BLOB_CRC_STACK], *crcs = stack_crcs;
	uint64_t end, first, last, gen;
	int err = 0;

	if (len == 0)
		return 0;
	if (off > b->size || len > b->size - off)
		return -EINVAL;
	end = off + len;
	first = off >> b->c->chunk_shift;
	last = (end - 1) >> b->c->chunk_shift;

	pthread_rwlock_rdlock(&b->io);
	pthread_mutex_lock(&b->lock);
	if (b->broken)
		err = b->err;
	gen = b->gen;
	if (err || b->detached) {
		/* Being replaced: these bytes belong to the old file. */
		pthread_mutex_unlock(&b->lock);
		goto unlock_io;
	}
	pthread_mutex_unlock(&b->lock);

	/* Write the runs of chunks that are not present. */
	for (uint64_t i = first; i <= last && !err;) {
		uint64_t j = i, s, e;

		if (bit_test(b->present, i)) {
			i++;
			continue;
		}
		while (j < last && !bit_test(b->present, j + 1))
			j++;
		s = off > chunk_start(b, i) ? off : chunk_start(b, i);
		e = end < chunk_end(b, j) ? end : chunk_end(b, j);
		/* One writer at a time: the file system serialises writes to a
		 * file anyway, and a thread waiting here sleeps where one waiting
		 * for the inode's lock spins. */
		pthread_mutex_lock(&b->wlock);
		err = blob_pwrite(b, p + (s - off), e - s, s);
		pthread_mutex_unlock(&b->wlock);
		i = j + 1;
	}
	if (err)
		blob_write_undo(b, off, end, first, last);
	/* The CRCs of the chunks written whole, from the caller's bytes. */
	if (!err && last - first + 1 > BLOB_CRC_STACK) {
		crcs = malloc((size_t)(last - first + 1) * sizeof(*crcs));
		if (!crcs)
			err = -ENOMEM;
	}
	for (uint64_t i = first; i <= last && !err; i++) {
		uint64_t cs = chunk_start(b, i), ce = chunk_end(b, i);

		crcs[i - first] = 0;
		if (off <= cs && ce <= end && !bit_test(b->present, i))
			crcs[i - first] = cache_crc32c(0, p + (cs - off), (size_t)(ce - cs));
	}
	if (!err) {
		pthread_mutex_lock(&b->lock);
		if (b->gen == gen && !b->detached)
			err = blob_record(b, off, end, first, last, crcs);
		pthread_mutex_unlock(&b->lock);
	}
	if (crcs != stack_crcs)
		free(crcs);
unlock_io:
	pthread_rwlock_unlock(&b->io);
	/* Where the running hash is at these bytes, it goes on from memory:
	 * they need not be read back from the file for it. */
	if (!err) {
		struct hash_mem m = { .p = p, .off = off, .end = end };

		blob_hash(b, &m, false, UINT64_MAX);
	}
	return err;
}

static struct cache_fill *fill_find(struct cache_blob *b, uint64_t chunk)
{
	for (struct cache_fill *f = b->fills; f; f = f->next)
		if (f->first <= chunk && chunk <= f->last)
			return f;
	return NULL;
}

static void fill_unlink(struct cache_blob *b, struct cache_fill *f)
{
	for (struct cache_fill **pp = &b->fills; *pp; pp = &(*pp)->next) {
		if (*pp == f) {
			*pp = f->next;
			return;
		}
	}
}

/* Runs the fills of the runs a thread claimed, with b->lock released, then
 * publishes their results.  Called and returns with b->lock held. */
static int blob_fill_runs(struct cache_blob *b, struct cache_fill **runs, size_t n,
			  cache_fill_fn fill, void *arg)
{
	uint64_t gen = b->gen;
	int err = 0;

	for (size_t k = 0; k < n; k++) {
		runs[k]->next = b->fills;
		b->fills = runs[k];
	}
	pthread_mutex_unlock(&b->lock);
	for (size_t k = 0; k < n; k++) {
		uint64_t off = chunk_start(b, runs[k]->first);

		if (!err) {
			err = fill(arg, b, off, chunk_end(b, runs[k]->last) - off);
			if (err > 0)
				err = -EIO;
		}
		runs[k]->err = err;
	}
	pthread_mutex_lock(&b->lock);
	err = 0;
	for (size_t k = 0; k < n; k++) {
		struct cache_fill *f = runs[k];

		for (uint64_t i = f->first; i <= f->last; i++)
			fill_set(b->filling, i, false);
		if (!f->err && !range_present(b, f->first, f->last)) {
			if (b->gen == gen) /* else a discard took them */
				cache_log(b->c, LOG_WARNING,
					  "fill of blob \"%s\" chunks %" PRIu64 "-%" PRIu64
					  " returned without delivering them",
					  b->id, f->first, f->last);
			f->err = -EIO;
		}
		if (f->err && !err)
			err = f->err;
		f->done = true;
		fill_unlink(b, f);
		if (--f->refs == 0)
			free(f);
	}
	pthread_cond_broadcast(&b->cond);
	return err;
}

/* Makes chunks [first, last] present: fills the missing ones nobody fills
 * (one fill per run of them), and with @wait waits for those that others
 * fill, taking their error.  Returns 0 or -errno. */
static int blob_ensure(struct cache_blob *b, uint64_t first, uint64_t last, cache_fill_fn fill,
		       void *arg, bool wait)
{
	struct cache_fill *runs[BLOB_RUNS];
	int retries = 0, err = 0;

	pthread_mutex_lock(&b->lock);
	for (;;) {
		uint64_t waiting = UINT64_MAX;
		struct cache_fill *f;
		size_t n = 0;
		bool missing = false, taken;

		if (b->broken) {
			err = b->err;
			break;
		}
		if (b->detached) {
			pthread_cond_wait(&b->cond, &b->lock);
			continue;
		}
		for (uint64_t i = first; i <= last; i++) {
			if (bit_test(b->present, i))
				continue;
			if (fill_test(b->filling, i)) {
				if (waiting == UINT64_MAX)
					waiting = i;
				continue;
			}
			if (!fill) {
				missing = true;
				break;
			}
			if (!n || runs[n - 1]->last + 1 != i) {
				if (n == BLOB_RUNS)
					break;
				runs[n] = calloc(1, sizeof(*runs[n]));
				if (!runs[n]) {
					err = -ENOMEM;
					break;
				}
				runs[n]->first = i;
				runs[n]->refs = 1;
				n++;
			}
			runs[n - 1]->last = i;
			fill_set(b->filling, i, true);
		}
		if (err || missing) {
			for (size_t k = 0; k < n; k++) {
				for (uint64_t i = runs[k]->first; i <= runs[k]->last; i++)
					fill_set(b->filling, i, false);
				free(runs[k]);
			}
			if (missing)
				err = -ENODATA;
			break;
		}
		if (n) {
			err = blob_fill_runs(b, runs, n, fill, arg);
			if (err)
				break;
			continue; /* then wait for the chunks of others */
		}
		if (waiting == UINT64_MAX || !wait)
			break;
		f = fill_find(b, waiting);
		if (!f) { /* cannot happen: every filling chunk has its fill */
			pthread_cond_wait(&b->cond, &b->lock);
			continue;
		}
		f->refs++;
		while (!bit_test(b->present, waiting) && !f->done)
			pthread_cond_wait(&b->cond, &b->lock);
		taken = !bit_test(b->present, waiting);
		if (taken)
			err = f->err;
		if (--f->refs == 0)
			free(f);
		if (err)
			break;
		/* Filled, then discarded before we saw it: fill it again. */
		if (taken && ++retries > BLOB_RETRIES) {
			err = -EIO;
			break;
		}
	}
	pthread_mutex_unlock(&b->lock);
	return err;
}

/* The chunks the worker may hash: those BLOB_HASH_LAG behind the furthest
 * read.  Before any read, none: the fill that completes a blob nobody read
 * (a prefetched small file) hashes it when it settles. */
static uint64_t blob_hash_limit(struct cache_blob *b)
{
	uint64_t end = __atomic_load_n(&b->read_end, __ATOMIC_RELAXED);

	return end > BLOB_HASH_LAG ? (end - BLOB_HASH_LAG) >> b->c->chunk_shift : 0;
}

/* What is due for @b in the background: advancing its running hash,
 * persisting its presence. */

static bool blob_work_due(struct cache_blob *b)
{
	bool due;

	pthread_mutex_lock(&b->lock);
	due = b->state == CACHE_BLOB_READY && !b->broken &&
	      (b->dirty >= b->c->sync_bytes ||
	       (!b->verified && !b->hashing && b->hashed < blob_hash_limit(b) &&
		bit_test(b->present, b->hashed)));
	pthread_mutex_unlock(&b->lock);
	return due;
}

void cache_blob_work(struct cache_blob *b)
{
	bool sync;

	blob_hash(b, NULL, false, blob_hash_limit(b)); /* a verdict's error is the settling reader's to report */
	pthread_mutex_lock(&b->lock);
	sync = b->dirty >= b->c->sync_bytes;
	pthread_mutex_unlock(&b->lock);
	if (sync)
		blob_flush(b, false);
}

/* After chunks were filled: a blob that became complete is judged now (the
 * read fails if it is discarded); hashing and syncing that can wait go to
 * the cache's worker, so that fills never wait for them. */
static int blob_after_fill(struct cache_blob *b)
{
	if (blob_needs_verify(b))
		return blob_settle(b);
	if (blob_work_due(b))
		cache_work_later(b);
	return 0;
}

/* Checks the chunks of [first, last] that were not checked yet against
 * their CRCs, marking those that match; @buf holds the bytes [off, end) just
 * read from the file, which spare a read of the chunks they cover whole (a
 * reader of 1 MiB requests at 1 MiB offsets pays only the CRC).  Called
 * with io read-held, all the chunks present.  Returns 0, 1 with the first
 * chunk that does not match in *@bad, or -errno. */
static int blob_check(struct cache_blob *b, uint64_t first, uint64_t last, const unsigned char *buf,
		      uint64_t off, uint64_t end, uint64_t *bad)
{
	for (uint64_t i = first; i <= last; i++) {
		uint64_t cs = chunk_start(b, i), ce = chunk_end(b, i);
		uint32_t crc;
		int err = 0;

		if (bit_test(b->checked, i))
			continue;
		if (off <= cs && ce <= end)
			crc = cache_crc32c(0, buf + (cs - off), (size_t)(ce - cs));
		else
			err = chunk_crc_file(b, i, &crc);
		if (err)
			return err;
		if (crc != __atomic_load_n(&b->crcs[i], __ATOMIC_RELAXED)) {
			*bad = i;
			return 1;
		}
		bit_set(b->checked, i);
	}
	return 0;
}

/* Drops chunk @i, whose bytes in the file do not match their CRC, unless a
 * discard came first (generation @gen): as a discard does for the whole
 * blob, its present bit is cleared with io write-held, so that no read is
 * using its bytes; the blob is no longer verified (it is hashed again once
 * the chunk is back).  The row keeps claiming the chunk until the next
 * flush: harmless, as the chunk's CRC comes with it. */
static void blob_drop_chunk(struct cache_blob *b, uint64_t i, uint64_t gen)
{
	uint64_t len = chunk_end(b, i) - chunk_start(b, i);
	bool dropped = false;

	pthread_rwlock_wrlock(&b->io);
	pthread_mutex_lock(&b->lock);
	if (b->gen == gen && !b->detached && bit_test(b->present, i)) {
		bit_clear(b->present, i);
		__atomic_sub_fetch(&b->npresent, 1, __ATOMIC_RELEASE);
		b->present_bytes -= len;
		__atomic_sub_fetch(&b->c->used, (int64_t)len, __ATOMIC_RELAXED);
		__atomic_store_n(&b->verified, false, __ATOMIC_RELEASE);
		if (!b->hashing && b->hashed > i) {
			/* A hash in progress that fed the rotten bytes finds a
			 * mismatch and discards the blob: slower, still right. */
			cache_hasher_free(b->hasher);
			b->hasher = NULL;
			b->hashed = 0;
		}
		dropped = true;
	}
	pthread_mutex_unlock(&b->lock);
	pthread_rwlock_unlock(&b->io);
	if (dropped)
		cache_log(b->c, LOG_WARNING,
			  "blob \"%s\" chunk %" PRIu64
			  " does not match its crc32c; fetching it again",
			  b->id, i);
}

ssize_t cache_blob_read(struct cache_blob *b, void *buf, size_t size, uint64_t off,
			cache_fill_fn fill, void *arg)
{
	uint64_t first, last;
	int err;

	if (off >= b->size || size == 0) {
		/* An empty blob is complete once opened: verify it here. */
		return blob_needs_verify(b) ? blob_settle(b) : 0;
	}
	if (size > b->size - off)
		size = (size_t)(b->size - off);
	if (size > SSIZE_MAX)
		size = SSIZE_MAX;
	first = off >> b->c->chunk_shift;
	last = (off + size - 1) >> b->c->chunk_shift;
	blob_touch(b);
	for (uint64_t e = __atomic_load_n(&b->read_end, __ATOMIC_RELAXED); e < off + size;)
		if (__atomic_compare_exchange_n(&b->read_end, &e, off + size, true, __ATOMIC_RELAXED,
						__ATOMIC_RELAXED))
			break;
	for (int attempt = 0;; attempt++) {
		pthread_rwlock_rdlock(&b->io);
		/* The hot path.  Once a blob's last chunk lands, reads wait
		 * for its verdict (the slow path) before serving it again. */
		if (range_present(b, first, last) && (attempt > 0 || !blob_needs_verify(b))) {
			ssize_t n = blob_pread(b, buf, size, off);

			/* One bit per chunk once checked; the first read of a
			 * chunk since the handle was opened checks it. */
			if (n >= 0 && !range_test(b->checked, first, last)) {
				uint64_t bad = 0, gen = b->gen;
				int rc = blob_check(b, first, last, buf, off, off + size, &bad);

				if (rc < 0)
					n = rc;
				if (rc > 0) {
					pthread_rwlock_unlock(&b->io);
					blob_drop_chunk(b, bad, gen);
					if (attempt > BLOB_RETRIES)
						return -EIO;
					continue;
				}
			}
			pthread_rwlock_unlock(&b->io);
			if (attempt == 0)
				__atomic_add_fetch(&b->c->hit_bytes, size, __ATOMIC_RELAXED);
			return n;
		}
		pthread_rwlock_unlock(&b->io);
		if (attempt == 0) {
			uint64_t hit = 0;

			/* The bytes of the read in chunks already present. */
			for (uint64_t i = first; i <= last; i++) {
				uint64_t s = chunk_start(b, i), e = chunk_end(b, i);

				if (!bit_test(b->present, i))
					continue;
				s = s > off ? s : off;
				e = e < off + size ? e : off + size;
				hit += e - s;
			}
			__atomic_add_fetch(&b->c->hit_bytes, hit, __ATOMIC_RELAXED);
			__atomic_add_fetch(&b->c->miss_bytes, size - hit, __ATOMIC_RELAXED);
		} else if (attempt > BLOB_RETRIES) {
			return -EIO;
		}
		err = blob_ensure(b, first, last, fill, arg, true);
		if (!err)
			err = blob_after_fill(b);
		if (err)
			return err;
	}
}

void cache_blob_read_done(struct cache_blob *b, const void *buf, size_t n, uint64_t off)
{
	struct hash_mem m = { .p = buf, .off = off, .end = off + n };

	if (n && off < b->size && n <= b->size - off &&
	    !__atomic_load_n(&b->verified, __ATOMIC_ACQUIRE))
		blob_hash(b, &m, true, UINT64_MAX);
}

int cache_blob_prefetch(struct cache_blob *b, uint64_t off, uint64_t len, cache_fill_fn fill,
			void *arg)
{
	uint64_t end;
	int err;

	if (len == 0 || off >= b->size)
		return 0;
	end = len > b->size - off ? b->size : off + len;
	blob_touch(b);
	err = blob_ensure(b, off >> b->c->chunk_shift, (end - 1) >> b->c->chunk_shift, fill, arg,
			  false);
	return err ? err : blob_after_fill(b);
}

/*
 * Import.
 */

static int import_fill(void *arg, struct cache_blob *b, uint64_t off, uint64_t len)
{
	int fd = *(const int *)arg;
	unsigned char *buf = aligned_alloc(BLOB_IO_ALIGN, BLOB_IO_BUFFER);
	int err = 0;

	if (!buf)
		return -ENOMEM;
	while (!err && len) {
		size_t n = len < BLOB_IO_BUFFER ? (size_t)len : BLOB_IO_BUFFER;
		ssize_t r = pread(fd, buf, n, (off_t)off);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			err = r < 0 ? -errno : -EIO; /* the file shrank */
			break;
		}
		err = cache_blob_write(b, off, buf, (size_t)r);
		off += (uint64_t)r;
		len -= (uint64_t)r;
	}
	free(buf);
	return err;
}

int cache_blob_import(struct cache *c, const char *id, int fd)
{
	struct cache_blob *b;
	struct stat st;
	int err = 0;

	if (fstat(fd, &st))
		return -errno;
	if (!S_ISREG(st.st_mode))
		return -EINVAL;
	b = cache_blob_get(c, id, (uint64_t)st.st_size, &err);
	if (!b)
		return err;
	if (b->nchunks)
		err = blob_ensure(b, 0, b->nchunks - 1, import_fill, &fd, true);
	if (!err)
		err = blob_settle(b);
	if (!err && !cache_blob_complete(b))
		err = -EIO;
	cache_blob_put(b);
	return err;
}
