/*
 * Open file and directory handles, by number.
 *
 * The kernel may send RELEASE for a handle while a READ of it is still being
 * answered (the reader was killed: the kernel stops waiting and closes the
 * file).  So the number the kernel holds (fi->fh) is not a pointer but a key:
 * a request looks its handle up and holds a reference while it works; a
 * release removes the key and drops the table's reference; the object is
 * freed by whoever drops the last one.  A request for a released handle
 * finds nothing (EBADF), never freed memory.
 *
 * Thread safety: every function may be called from any thread.
 */
#ifndef HUBFS_FS_HANDLE_H
#define HUBFS_FS_HANDLE_H

#include <stdint.h>

struct fs_handles;

/* Frees an object once nothing refers to it. */
typedef void (*fs_handle_free_fn)(void *ctx, void *obj);

/* A table whose objects are freed with @free_fn(@ctx, obj).  NULL when out of
 * memory. */
struct fs_handles *fs_handles_new(fs_handle_free_fn free_fn, void *ctx);

/* Frees the table and every object still in it.  No other call may run. */
void fs_handles_free(struct fs_handles *t);

/* Adds @obj; returns its key (never 0), or 0 when out of memory. */
uint64_t fs_handle_add(struct fs_handles *t, void *obj);

/* The object of @key with a reference taken, or NULL if released. */
void *fs_handle_get(struct fs_handles *t, uint64_t key);

/* Drops a reference taken by fs_handle_get(). */
void fs_handle_put(struct fs_handles *t, uint64_t key, void *obj);

/* Removes @key (later gets find nothing) and drops the table's reference. */
void fs_handle_release(struct fs_handles *t, uint64_t key);

#endif
