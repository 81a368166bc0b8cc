/*
 * The blob cache: content-addressed blobs kept as sparse files, the chunks
 * that are present indexed in SQLite.  A library that knows nothing of FUSE
 * or HTTP: data comes in through a fill callback supplied by the caller.
 *
 * Layout of the cache directory DIR (mode 0700, files 0600):
 *   DIR/lock            flock(2)ed shared by a mount, exclusively by clear
 *   DIR/hubfs.db        the SQLite index (WAL mode), see cache_index.h
 *   DIR/blobs/xx/<id>   one sparse file per blob, xx = the id's first two
 *                       hex digits; <id> is validated by cache_id_valid()
 *   DIR/stage/<name>    staged content of files being written, journaled
 *                       in the index (cache_stage.h); never cleared
 *   DIR/lost+found/     staged files whose journal row was lost, made on
 *                       demand (cache_stage_orphans()); never cleared
 *
 * A blob is named by its id (cache_hash.h) and shared by every revision and
 * repo that contains it.  It is read in chunks of a fixed size (a power of
 * two, 1 MiB by default); the last chunk ends at the blob's size.
 *
 * Guarantees:
 * - A chunk is served only after all its bytes were written to the blob file
 *   (cache_blob_write()).  Its presence is persisted in the index only after
 *   an fdatasync(2) of the file, in batches, so a crash never turns a hole
 *   into zeros served as data; presence that was never persisted is refetched.
 * - However many threads want the same missing chunk, it is filled once.
 * - A blob that becomes complete is verified against its id before it is
 *   marked complete (hashed as it arrives, so that this costs little when it
 *   was filled in order); on a mismatch it is discarded and the read that
 *   completed it fails with -EIO.  Bytes that failed verification are never
 *   served again.
 * - Each chunk has a CRC32C (cache_crc.h) of the bytes written, persisted
 *   with its presence.  The first read of a chunk through a handle checks
 *   the file against it; a chunk whose bytes changed on disk since (rot) is
 *   dropped and filled again by that read, which returns the right bytes.
 *   Chunks of rows made before the index had CRCs (schema version 4) are
 *   not checked.
 * - Blobs that no handle uses are evicted, least recently used first, when
 *   the cache holds more than its limit, when the free space of its file
 *   system is below a floor (cache_space_floor()), and at once when a write
 *   to a blob file or the index fails with ENOSPC or EDQUOT.  A blob with a
 *   handle is pinned.
 * - The index counts the bytes of the chunks it recorded, and the blob files
 *   hold no more: a failed write deallocates what it wrote of incomplete
 *   chunks, a blob whose presence cannot be recorded is removed at its last
 *   put, and an open that finds the cache unused recounts (cache.c).
 * - Nothing makes the library write outside DIR: ids are validated, every
 *   file is opened relative to DIR with O_NOFOLLOW.
 *
 * Several processes may use one DIR at once (two mounts, a mount and the
 * `hubfs cache` command): each keeps its own handles; a blob evicted by one
 * process while another reads it stays readable there until its last handle
 * is put (the file is unlinked, its inode lives on), and what that process
 * fills afterwards is not recorded.
 *
 * Thread safety: every function may be called from any thread, concurrently,
 * unless its comment says otherwise.  A cache runs one thread of its own,
 * started when blobs are first filled, that hashes and persists in the
 * background.  Neither it nor the SQLite connections survive fork(): open
 * the cache in the process that uses it.
 */
#ifndef HUBFS_CACHE_H
#define HUBFS_CACHE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "cache_hash.h"
#include "cache_meta.h"	 /* the metadata stores share the cache handle */
#include "cache_stage.h" /* and so does the write journal */

/* Chunk sizes accepted by cache_open(); powers of two. */
#define CACHE_CHUNK_DEFAULT (1u << 20)
#define CACHE_CHUNK_MIN (1u << 12)
#define CACHE_CHUNK_MAX (1u << 26)

/* New data after which presence is persisted (fdatasync, then the index). */
#define CACHE_SYNC_DEFAULT (32ull << 20)

/* Largest number of chunks of one blob (bounds the presence bitmap). */
#define CACHE_CHUNKS_MAX (1ull << 30)

/* The lock a cache handle takes on DIR/lock. */
enum cache_lock {
	CACHE_LOCK_NONE,      /* tools that read stats or prune: no lock */
	CACHE_LOCK_SHARED,    /* a mount: any number may share the cache */
	CACHE_LOCK_EXCLUSIVE, /* clear: fails with -EBUSY while anyone holds it */
};

/* Diagnostics: syslog(3) levels, printf-style format.  log_vmsg() of the
 * daemon has this signature.  Called from any thread, with no cache lock
 * held. */
typedef void (*cache_log_fn)(int level, const char *fmt, va_list ap);

/* How blob content is written and read (see cache_blob.c). */
enum cache_io {
	CACHE_IO_AUTO,	   /* O_DIRECT on local disk file systems (ext4, xfs,
			      btrfs, f2fs), the page cache elsewhere (NFS,
			      tmpfs, FUSE...), where O_DIRECT is slow or void */
	CACHE_IO_DIRECT,   /* O_DIRECT wherever the file system accepts it */
	CACHE_IO_BUFFERED, /* always the page cache */
};

struct cache_config {
	const char *dir;     /* the cache directory; created (with parents) 0700 */
	uint64_t limit;	     /* bytes the blobs may occupy; 0: no limit */
	uint32_t chunk_size; /* power of two in [CACHE_CHUNK_MIN, CACHE_CHUNK_MAX];
				0: CACHE_CHUNK_DEFAULT */
	uint64_t sync_bytes; /* persist presence after this much new data of a
				blob; 0: CACHE_SYNC_DEFAULT */
	enum cache_lock lock;
	enum cache_io io;
	cache_log_fn log; /* NULL: silent */
};

struct cache;
struct cache_blob;

/* Opens (creating it if needed) the cache described by @cfg, which is only
 * read during the call.  Returns a handle the caller releases with
 * cache_close(), or NULL with *@err (@err may be NULL) set to:
 *   -EINVAL   bad configuration (no dir, chunk size not a power of two ...)
 *   -EBUSY    the lock asked for is held by someone else
 *   -EACCES   DIR belongs to another user
 *   -EPROTO   the index was written by a newer hubfs (schema version)
 *   -ENOMEM, -EIO, or the errno of a failed system call. */
struct cache *cache_open(const struct cache_config *cfg, int *err);

/* Flushes presence and counters, releases the lock and frees @c.  Every blob
 * handle must have been put (a handle still open is flushed and freed, and
 * must not be used again).  NULL is a no-op.  Not concurrent with any other
 * call on @c. */
void cache_close(struct cache *c);

/* Whether @c writes and reads blob content with O_DIRECT (see enum
 * cache_io), and the type of its file system in *@fs_type (may be NULL). */
bool cache_direct_io(const struct cache *c, unsigned long *fs_type);

/* The chunk size of @c. */
uint32_t cache_chunk_size(const struct cache *c);

/*
 * Blobs.
 */

/* Returns the in-memory handle of blob @id, of @size bytes, creating its
 * file and index row when needed.  There is one handle per id; each call
 * takes a reference that pins the blob (it is never evicted while pinned)
 * and is released with cache_blob_put().  Returns NULL with *@err (may be
 * NULL) set to -EINVAL when @id is not a valid id (cache_id_valid()) or
 * @size contradicts a complete blob of that id (or an open handle),
 * -EFBIG when @size needs more than CACHE_CHUNKS_MAX chunks, -ELOOP when a
 * symlink sits where the blob file should be, -ENOMEM, -EIO, or the errno of
 * a failed system call. */
struct cache_blob *cache_blob_get(struct cache *c, const char *id, uint64_t size, int *err);

/* Persists the presence of @b now (fdatasync of its file, then the index),
 * verifying it first if it became complete.  Presence is otherwise persisted
 * in batches by a background thread of the cache, and by the last put.
 * Returns 0 or -errno. */
int cache_blob_sync(struct cache_blob *b);

/* Releases a reference taken by cache_blob_get().  The last one persists the
 * blob's presence (and verifies it first if it became complete) and unpins
 * it; it may then evict other blobs to honour the limit.  NULL is a no-op.
 * The handle must not be used after its last put. */
void cache_blob_put(struct cache_blob *b);

/* The blob's id (borrowed, lives as long as the handle), size, and whether it
 * is complete and verified. */
const char *cache_blob_id(const struct cache_blob *b);
uint64_t cache_blob_size(const struct cache_blob *b);
bool cache_blob_complete(const struct cache_blob *b);

/* Asked to make [@off, @off+@len) of @b present.  @off is chunk-aligned; the
 * end is chunk-aligned or the blob's size.  It delivers the bytes with
 * cache_blob_write() as they arrive, in pieces of any size and in any order,
 * and returns 0 once it delivered them all, or a negative errno.  It runs
 * with no cache lock held, in the thread that called cache_blob_read(),
 * cache_blob_prefetch() or cache_blob_import(); it must not call those on
 * @b itself. */
typedef int (*cache_fill_fn)(void *arg, struct cache_blob *b, uint64_t off, uint64_t len);

/* Writes @len bytes of the blob's content at @off.  Bytes of chunks already
 * present are skipped (present chunks never change); a chunk becomes present
 * when all its bytes were written, by one call or several.  Meant for fill
 * callbacks, but any thread holding a reference may call it.  Returns 0,
 * -EINVAL when the range is beyond the blob's size, or the errno of a failed
 * pwrite.  On -ENOSPC or -EDQUOT it first evicts unpinned blobs and tries
 * once more; it never waits for space.  What a failed call wrote of chunks
 * that are not present is deallocated (those bytes must be written again).
 * Bytes written while the blob is being discarded are dropped. */
int cache_blob_write(struct cache_blob *b, uint64_t off, const void *data, size_t len);

/* Reads up to @size bytes at @off into @buf.  Chunks of the range that are
 * missing are filled first by calling @fill(@arg, ...) for the chunks nobody
 * else is filling, and by waiting for the others.  When the range is present
 * this is one pread(2) and no lock but a read lock of the blob; the first
 * read of a chunk through this handle also checks its CRC (from the bytes
 * read when they cover the chunk, else by reading the chunk), and fills the
 * chunk again through @fill when the file's bytes do not match.
 * Returns the number of bytes read (short only at the end of the blob, 0 at
 * or past it), or:
 *   the fill's negative errno: the fill failed.  Threads that were waiting
 *             for the chunks of that fill get the same errno (they do not
 *             retry); the next read tries again.
 *   -EIO      the fill returned 0 without delivering its range, or the blob
 *             became complete and failed verification: it was discarded, a
 *             later read fills it again; or a chunk kept failing its CRC
 *             after being filled again
 *   -ENODATA  a chunk is missing and @fill is NULL (offline)
 *   or the errno of a failed pread/pwrite/fdatasync. */
ssize_t cache_blob_read(struct cache_blob *b, void *buf, size_t size, uint64_t off,
			cache_fill_fn fill, void *arg);

/* Offers @n bytes at @off that cache_blob_read() returned, and that the
 * caller served (they stay unchanged during the call), to @b's running
 * hash: a sequential reader's bytes need not be read from the file again to
 * verify the blob.  Costs nothing once @b is verified. */
void cache_blob_read_done(struct cache_blob *b, const void *buf, size_t n, uint64_t off);

/* Makes [@off, @off+@len) present like cache_blob_read() without copying
 * out: for read-ahead threads.  Chunks that other threads are filling are
 * left to them (this does not wait for them).  Returns 0 or the errors of
 * cache_blob_read(). */
int cache_blob_prefetch(struct cache_blob *b, uint64_t off, uint64_t len, cache_fill_fn fill,
			void *arg);

/* True if every chunk of [@off, @off+@len) (clipped to the blob) is present.
 * Never fills, never blocks. */
bool cache_blob_present(const struct cache_blob *b, uint64_t off, uint64_t len);

/* Adopts the content of @fd (a regular file open for reading; its size is
 * the blob's size; read with pread, so its offset does not matter) as blob
 * @id: the missing chunks are copied in, the blob is verified and marked
 * complete.  Returns 0, -EIO when the content does not match @id (nothing of
 * it is kept), or the errors of cache_blob_get() and cache_blob_read(). */
int cache_blob_import(struct cache *c, const char *id, int fd);

/*
 * Size, eviction, statistics.
 */

struct cache_stats {
	uint64_t blobs;	     /* blobs in the index */
	uint64_t complete;   /* of which complete and verified */
	uint64_t chunks;     /* chunks present */
	uint64_t bytes;	     /* bytes present: what the blobs occupy on disk */
	uint64_t limit;	     /* the configured limit, 0 for none */
	uint64_t open;	     /* blobs pinned by handles of this process */
	uint64_t hit_bytes;  /* bytes read (cache_blob_read()) that the cache held, since
				it was created or cleared */
	uint64_t miss_bytes; /* bytes read that had to be filled (fetched) first */
};

/* Fills @st.  Counts include what this process has not persisted yet.
 * Returns 0 or -errno. */
int cache_stats(struct cache *c, struct cache_stats *st);

/* The free space (bytes) below which a cache on a filesystem of @fs_bytes
 * evicts even when under its limit: 2% of it, at least 4 chunks, at most
 * 1 GiB. */
uint64_t cache_space_floor(uint64_t fs_bytes, uint32_t chunk_size);

/* The byte hit ratio: hit_bytes / (hit_bytes + miss_bytes), 0 when nothing
 * was read. */
double cache_stats_hit_ratio(const struct cache_stats *st);

/* Waits for the background work queued so far (which pins its blobs), then
 * evicts unpinned blobs, least recently used first, until the blobs occupy
 * at most the limit (nothing to do without a limit), and removes blob files
 * that the index does not know.  Returns 0 or -errno.  Eviction also runs by
 * itself after a blob's last put or a presence batch when the cache is over
 * its limit.  Not to be called from a fill callback. */
int cache_prune(struct cache *c);

/* Empties the cache in @dir: every blob and the metadata (cache_meta.h).
 * The write journal and the staged files (cache_stage.h) are kept: they are
 * changes the Hub does not have yet.  Takes DIR/lock exclusively without
 * waiting: returns -EBUSY while a mount (or any cache handle with a lock)
 * uses the cache.  Returns 0 or the errors of cache_open(). */
int cache_clear(const char *dir, cache_log_fn log);

#endif
