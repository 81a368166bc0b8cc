/*
 * Handles by number.  See fs_handle.h.
 *
 * A chained hash table under one mutex; each entry counts its references
 * (the table's own, plus one per request at work).  An entry that was
 * released stays allocated, out of the table, until its last reference goes.
 */
#include "config.h"

#include "fs_handle.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

#define FS_HANDLE_BUCKETS 1024

struct fs_handle {
	uint64_t key;
	void *obj;
	unsigned refs;          /* protected by the table's lock */
	struct fs_handle *next; /* protected by the table's lock */
};

struct fs_handles {
	pthread_mutex_t lock;
	struct fs_handle *buckets[FS_HANDLE_BUCKETS]; /* protected by lock */
	struct fs_handle *released;                   /* protected by lock: in use, out of the table */
	uint64_t next_key;                            /* protected by lock */
	fs_handle_free_fn free_fn;
	void *ctx;
};

struct fs_handles *fs_handles_new(fs_handle_free_fn free_fn, void *ctx)
{
	struct fs_handles *t = calloc(1, sizeof(*t));

	if (!t)
		return NULL;
	pthread_mutex_init(&t->lock, NULL);
	t->next_key = 1;
	t->free_fn = free_fn;
	t->ctx = ctx;
	return t;
}

static void fs_handle_free_list(struct fs_handles *t, struct fs_handle *h)
{
	while (h) {
		struct fs_handle *next = h->next;

		t->free_fn(t->ctx, h->obj);
		free(h);
		h = next;
	}
}

void fs_handles_free(struct fs_handles *t)
{
	if (!t)
		return;
	for (size_t i = 0; i < FS_HANDLE_BUCKETS; i++)
		fs_handle_free_list(t, t->buckets[i]);
	fs_handle_free_list(t, t->released);
	pthread_mutex_destroy(&t->lock);
	free(t);
}

uint64_t fs_handle_add(struct fs_handles *t, void *obj)
{
	struct fs_handle *h = malloc(sizeof(*h));
	size_t b;

	if (!h)
		return 0;
	h->obj = obj;
	h->refs = 1;
	pthread_mutex_lock(&t->lock);
	h->key = t->next_key++;
	b = h->key % FS_HANDLE_BUCKETS;
	h->next = t->buckets[b];
	t->buckets[b] = h;
	pthread_mutex_unlock(&t->lock);
	return h->key;
}

void *fs_handle_get(struct fs_handles *t, uint64_t key)
{
	struct fs_handle *h;
	void *obj = NULL;

	pthread_mutex_lock(&t->lock);
	for (h = t->buckets[key % FS_HANDLE_BUCKETS]; h; h = h->next) {
		if (h->key == key) {
			h->refs++;
			obj = h->obj;
			break;
		}
	}
	pthread_mutex_unlock(&t->lock);
	return obj;
}

/* Drops one reference of the entry of @key, in the table or released;
 * unlinks it when it was the last.  Returns the entry to free, or NULL. */
static struct fs_handle *fs_handle_unref_locked(struct fs_handles *t, uint64_t key, bool remove)
{
	struct fs_handle **lists[2] = { &t->buckets[key % FS_HANDLE_BUCKETS], &t->released };

	for (int l = 0; l < 2; l++) {
		for (struct fs_handle **ph = lists[l], *h; (h = *ph); ph = &h->next) {
			if (h->key != key)
				continue;
			if (remove && l == 1)
				return NULL; /* released twice: the kernel would not */
			h->refs--;
			if (h->refs == 0) {
				*ph = h->next;
				return h;
			}
			if (remove) {
				*ph = h->next;
				h->next = t->released;
				t->released = h;
			}
			return NULL;
		}
	}
	return NULL;
}

void fs_handle_put(struct fs_handles *t, uint64_t key, void *obj)
{
	struct fs_handle *h;

	(void)obj;
	pthread_mutex_lock(&t->lock);
	h = fs_handle_unref_locked(t, key, false);
	pthread_mutex_unlock(&t->lock);
	if (h) {
		t->free_fn(t->ctx, h->obj);
		free(h);
	}
}

void fs_handle_release(struct fs_handles *t, uint64_t key)
{
	struct fs_handle *h;

	pthread_mutex_lock(&t->lock);
	h = fs_handle_unref_locked(t, key, true);
	pthread_mutex_unlock(&t->lock);
	if (h) {
		t->free_fn(t->ctx, h->obj);
		free(h);
	}
}
