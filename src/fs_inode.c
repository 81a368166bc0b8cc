/*
 * The inode table.  See fs_inode.h.
 *
 * Two hash tables of chained nodes: by inode number, and by (parent, name)
 * for the nodes that lookups may still return ("hashed").  Both grow by
 * doubling.  Inode numbers are never reused during a mount, so a number
 * stat shows is never another file's.  A third, fixed-size table keeps the
 * st_ino of the paths this mount renamed files to ("kept"): it outlives the
 * nodes, which the kernel may forget right after the rename.  It holds one
 * record per renamed path still there (unlinks and renames drop them).
 */
#include "config.h"

#include "fs_inode.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FS_ROOT_INO 1
#define FS_KEPT_BUCKETS 1024

/* The st_ino of a path a file or directory was renamed to. */
struct fs_kept {
	char *fullpath;
	uint64_t st_ino;
	bool is_dir;
	struct fs_kept *next;
};

struct fs_inodes {
	struct fs_kept *kept[FS_KEPT_BUCKETS]; /* protected by lock */
	pthread_mutex_t lock;
	struct fs_node **by_ino;  /* protected by lock */
	struct fs_node **by_name; /* protected by lock */
	size_t buckets;           /* protected by lock */
	uint64_t count;           /* protected by lock */
	uint64_t next_ino;        /* protected by lock */
};

static uint64_t fs_hash_name(uint64_t parent, const char *name)
{
	uint64_t h = 1469598103934665603ULL ^ parent;

	for (; *name; name++) {
		h ^= (unsigned char)*name;
		h *= 1099511628211ULL;
	}
	return h;
}

static size_t fs_bucket_ino(const struct fs_inodes *t, uint64_t ino)
{
	return (size_t)((ino * 11400714819323198485ULL) >> 20) & (t->buckets - 1);
}

static void fs_node_free(struct fs_node *n)
{
	free(n->renamed_to);
	free(n->name);
	free(n->fullpath);
	free(n);
}

static void fs_insert_locked(struct fs_inodes *t, struct fs_node *n)
{
	size_t b = fs_bucket_ino(t, n->ino);

	n->next_ino = t->by_ino[b];
	t->by_ino[b] = n;
	if (n->hashed) {
		b = fs_hash_name(n->parent, n->name) & (t->buckets - 1);
		n->next_name = t->by_name[b];
		t->by_name[b] = n;
	}
	t->count++;
}

/* Doubles the tables when they hold more nodes than buckets. */
static void fs_grow_locked(struct fs_inodes *t)
{
	struct fs_node **old = t->by_ino, **ino2, **name2;
	size_t n = t->buckets;

	if (t->count < n)
		return;
	ino2 = calloc(2 * n, sizeof(*ino2));
	name2 = calloc(2 * n, sizeof(*name2));
	if (!ino2 || !name2) {
		free(ino2);
		free(name2);
		return; /* longer chains, still correct */
	}
	free(t->by_name);
	t->by_ino = ino2;
	t->by_name = name2;
	t->buckets = 2 * n;
	t->count = 0;
	for (size_t i = 0; i < n; i++) {
		struct fs_node *node = old[i], *next;

		for (; node; node = next) {
			next = node->next_ino;
			fs_insert_locked(t, node);
		}
	}
	free(old);
}

struct fs_inodes *fs_inodes_new(void)
{
	struct fs_inodes *t = calloc(1, sizeof(*t));
	struct fs_node *root;

	if (!t)
		return NULL;
	t->buckets = 1024;
	t->by_ino = calloc(t->buckets, sizeof(*t->by_ino));
	t->by_name = calloc(t->buckets, sizeof(*t->by_name));
	root = calloc(1, sizeof(*root));
	if (!t->by_ino || !t->by_name || !root)
		goto fail;
	root->name = strdup("");
	root->fullpath = strdup("");
	if (!root->name || !root->fullpath)
		goto fail;
	fs_path_parse("", &root->p);
	root->ino = root->st_ino = FS_ROOT_INO;
	root->is_dir = true;
	root->nlookup = 1;
	t->next_ino = FS_ROOT_INO + 1;
	pthread_mutex_init(&t->lock, NULL);
	fs_insert_locked(t, root);
	return t;
fail:
	if (root)
		fs_node_free(root);
	free(t->by_ino);
	free(t->by_name);
	free(t);
	return NULL;
}

void fs_inodes_free(struct fs_inodes *t)
{
	if (!t)
		return;
	for (size_t i = 0; i < t->buckets; i++) {
		struct fs_node *n = t->by_ino[i], *next;

		for (; n; n = next) {
			next = n->next_ino;
			fs_node_free(n);
		}
	}
	for (size_t i = 0; i < FS_KEPT_BUCKETS; i++) {
		struct fs_kept *k = t->kept[i], *next;

		for (; k; k = next) {
			next = k->next;
			free(k->fullpath);
			free(k);
		}
	}
	free(t->by_ino);
	free(t->by_name);
	pthread_mutex_destroy(&t->lock);
	free(t);
}

static struct fs_kept **fs_kept_locked(struct fs_inodes *t, const char *fullpath)
{
	struct fs_kept **pk = &t->kept[fs_hash_name(0, fullpath) & (FS_KEPT_BUCKETS - 1)];

	while (*pk && strcmp((*pk)->fullpath, fullpath))
		pk = &(*pk)->next;
	return pk;
}

static void fs_kept_drop_locked(struct fs_inodes *t, const char *fullpath)
{
	struct fs_kept **pk = fs_kept_locked(t, fullpath), *k = *pk;

	if (k) {
		*pk = k->next;
		free(k->fullpath);
		free(k);
	}
}

/* Keeps @st_ino for @fullpath (taking ownership of it).  Returns 0 or
 * -ENOMEM (then @fullpath is freed). */
static int fs_kept_add_locked(struct fs_inodes *t, char *fullpath, uint64_t st_ino, bool is_dir)
{
	struct fs_kept **pk = fs_kept_locked(t, fullpath), *k = *pk;

	if (!k) {
		k = calloc(1, sizeof(*k));
		if (!k) {
			free(fullpath);
			return -ENOMEM;
		}
		*pk = k;
	} else {
		free(k->fullpath);
	}
	k->fullpath = fullpath;
	k->st_ino = st_ino;
	k->is_dir = is_dir;
	return 0;
}

/* Whether @path is @dir or under it. */
static bool fs_path_under(const char *path, const char *dir)
{
	size_t len = strlen(dir);

	return !strncmp(path, dir, len) && (path[len] == '\0' || path[len] == '/');
}

static struct fs_node *fs_find_ino_locked(struct fs_inodes *t, uint64_t ino)
{
	struct fs_node *n = t->by_ino[fs_bucket_ino(t, ino)];

	while (n && n->ino != ino)
		n = n->next_ino;
	return n;
}

static void fs_unhash_locked(struct fs_inodes *t, struct fs_node *n)
{
	struct fs_node **pn;

	if (!n->hashed)
		return;
	pn = &t->by_name[fs_hash_name(n->parent, n->name) & (t->buckets - 1)];
	while (*pn && *pn != n)
		pn = &(*pn)->next_name;
	if (*pn)
		*pn = n->next_name;
	n->hashed = false;
}

/* Frees @n if nothing refers to it any more. */
static void fs_maybe_free_locked(struct fs_inodes *t, struct fs_node *n)
{
	struct fs_node **pn;

	if (n->nlookup || n->refs || n->ino == FS_ROOT_INO)
		return;
	fs_unhash_locked(t, n);
	pn = &t->by_ino[fs_bucket_ino(t, n->ino)];
	while (*pn && *pn != n)
		pn = &(*pn)->next_ino;
	if (*pn)
		*pn = n->next_ino;
	t->count--;
	fs_node_free(n);
}

struct fs_node *fs_inode_get(struct fs_inodes *t, uint64_t ino)
{
	struct fs_node *n;

	pthread_mutex_lock(&t->lock);
	n = fs_find_ino_locked(t, ino);
	if (n)
		n->refs++;
	pthread_mutex_unlock(&t->lock);
	return n;
}

void fs_inode_put(struct fs_inodes *t, struct fs_node *n)
{
	if (!n)
		return;
	pthread_mutex_lock(&t->lock);
	n->refs--;
	fs_maybe_free_locked(t, n);
	pthread_mutex_unlock(&t->lock);
}

static bool fs_same(const struct fs_node *a, const struct fs_node *b)
{
	if (a->p.kind != b->p.kind)
		return false;
	/* a ref of .hf-cache that moved is a new file (its content) */
	if (a->p.kind == FS_PATH_HFC_REF || a->p.kind == FS_PATH_HFC_NOEXIST ||
	    a->p.kind == FS_PATH_HFC_TREES)
		return a->is_dir == b->is_dir && !strcmp(a->commit, b->commit);
	if (a->p.kind != FS_PATH_ENTRY)
		return true;
	/* The staged content of a path changes under its node (@a is live, or
	 * was made for staged content): a new node for each staged version
	 * would split the kernel's pages of one file in two. */
	if (!a->is_dir && !b->is_dir && !strncmp(b->oid, "staged:", 7) &&
	    (!strncmp(a->oid, "staged:", 7) || __atomic_load_n(&a->live, __ATOMIC_ACQUIRE)) &&
	    !strcmp(a->fullpath, b->fullpath))
		return true;
	/* Same content; the date may differ (a branch moved, the file did not). */
	return a->is_dir == b->is_dir && a->size == b->size && !strcmp(a->oid, b->oid) &&
	       !strcmp(a->sha256, b->sha256);
}

struct fs_node *fs_inode_link(struct fs_inodes *t, struct fs_node *parent, const char *name,
			      struct fs_node *proto)
{
	struct fs_node *n, *found = NULL;
	size_t b;

	proto->name = strdup(name);
	if (!proto->name) {
		free(proto->fullpath);
		proto->fullpath = NULL;
		return NULL;
	}
	proto->parent = parent->ino;
	pthread_mutex_lock(&t->lock);
	b = fs_hash_name(parent->ino, name) & (t->buckets - 1);
	for (n = t->by_name[b]; n; n = n->next_name) {
		if (n->parent == parent->ino && !strcmp(n->name, name)) {
			found = n;
			break;
		}
	}
	if (found && fs_same(found, proto)) {
		__atomic_store_n(&found->mtime, proto->mtime, __ATOMIC_RELAXED);
		found->nlookup++;
		found->refs++;
		pthread_mutex_unlock(&t->lock);
		free(proto->name);
		free(proto->fullpath);
		proto->name = proto->fullpath = NULL;
		return found;
	}
	n = malloc(sizeof(*n));
	if (!n) {
		pthread_mutex_unlock(&t->lock);
		free(proto->name);
		free(proto->fullpath);
		proto->name = proto->fullpath = NULL;
		return NULL;
	}
	*n = *proto;
	/* p.path points into fullpath, which moved with the struct copy only
	 * as a pointer: it is still valid. */
	n->ino = t->next_ino++;
	n->st_ino = n->ino;
	if (n->p.kind == FS_PATH_ENTRY) {
		/* the same file, changed or renamed here, keeps its number */
		struct fs_kept *k = *fs_kept_locked(t, n->fullpath);

		if (found && found->p.kind == FS_PATH_ENTRY && found->is_dir == n->is_dir)
			n->st_ino = found->st_ino;
		else if (k && k->is_dir == n->is_dir)
			n->st_ino = k->st_ino;
	}
	if (found) {
		/* The name now means something else: the old node stays for
		 * whoever still holds it, but lookups find the new one. */
		fs_unhash_locked(t, found);
		fs_maybe_free_locked(t, found);
	}
	n->nlookup = 1;
	n->refs = 1;
	n->hashed = true;
	fs_grow_locked(t);
	fs_insert_locked(t, n);
	pthread_mutex_unlock(&t->lock);
	proto->name = proto->fullpath = NULL;
	return n;
}

void fs_inode_forget(struct fs_inodes *t, uint64_t ino, uint64_t nlookup)
{
	struct fs_node *n;

	pthread_mutex_lock(&t->lock);
	n = fs_find_ino_locked(t, ino);
	if (n && n->ino != FS_ROOT_INO) {
		n->nlookup = nlookup > n->nlookup ? 0 : n->nlookup - nlookup;
		fs_maybe_free_locked(t, n);
	}
	pthread_mutex_unlock(&t->lock);
}

static struct fs_node *fs_find_name_locked(struct fs_inodes *t, uint64_t parent, const char *name)
{
	struct fs_node *n = t->by_name[fs_hash_name(parent, name) & (t->buckets - 1)];

	while (n && !(n->parent == parent && !strcmp(n->name, name)))
		n = n->next_name;
	return n;
}

/* Unhashes @n, the file at a name that is gone or another one now. */
static void fs_unlinked_locked(struct fs_inodes *t, struct fs_node *n)
{
	__atomic_store_n(&n->unlinked, true, __ATOMIC_RELEASE);
	fs_unhash_locked(t, n);
	fs_maybe_free_locked(t, n);
}

char *fs_inode_renamed_to(struct fs_inodes *t, uint64_t ino)
{
	struct fs_node *n;
	char *path = NULL;

	pthread_mutex_lock(&t->lock);
	n = fs_find_ino_locked(t, ino);
	if (n && n->renamed_to)
		path = strdup(n->renamed_to);
	pthread_mutex_unlock(&t->lock);
	return path;
}

void fs_inode_unhash(struct fs_inodes *t, uint64_t parent, const char *name, const char *fullpath)
{
	struct fs_node *n;

	pthread_mutex_lock(&t->lock);
	n = fs_find_name_locked(t, parent, name);
	if (n)
		fs_unlinked_locked(t, n);
	fs_kept_drop_locked(t, fullpath);
	pthread_mutex_unlock(&t->lock);
}

int fs_inode_rename(struct fs_inodes *t, uint64_t parent, const char *name, uint64_t newparent,
		    const char *newname, const char *from, const char *to)
{
	size_t flen = strlen(from);
	struct fs_node *src, *dst;
	struct fs_kept *k, **pk, *moved = NULL;
	uint64_t st_ino = 0;
	bool is_dir = false;
	char *path;
	int rc = 0;

	pthread_mutex_lock(&t->lock);
	src = fs_find_name_locked(t, parent, name);
	dst = fs_find_name_locked(t, newparent, newname);
	k = *fs_kept_locked(t, from);
	if (src) {
		st_ino = src->st_ino;
		is_dir = src->is_dir;
	} else if (k) {
		st_ino = k->st_ino;
		is_dir = k->is_dir;
	}
	if (dst && dst != src)
		fs_unlinked_locked(t, dst);
	if (src && src != dst) {
		path = strdup(to);
		if (path) {
			free(src->renamed_to);
			src->renamed_to = path;
		}
		fs_unhash_locked(t, src);
		fs_maybe_free_locked(t, src);
	}
	/* what was kept for the target and under it is gone; what was kept
	 * under the source moves along (the source's own record is @st_ino) */
	for (size_t i = 0; i < FS_KEPT_BUCKETS; i++) {
		for (pk = &t->kept[i]; *pk;) {
			k = *pk;
			if (!fs_path_under(k->fullpath, from) && !fs_path_under(k->fullpath, to)) {
				pk = &k->next;
				continue;
			}
			*pk = k->next;
			path = NULL;
			if (fs_path_under(k->fullpath, from) && k->fullpath[flen] &&
			    asprintf(&path, "%s%s", to, k->fullpath + flen) < 0)
				path = NULL;
			free(k->fullpath);
			k->fullpath = path;
			if (path) {
				k->next = moved;
				moved = k;
			} else {
				free(k);
			}
		}
	}
	while (moved) {
		k = moved;
		moved = k->next;
		pk = fs_kept_locked(t, k->fullpath);
		k->next = *pk;
		*pk = k;
	}
	/* the nodes the kernel knows under a directory moved keep their
	 * numbers too */
	if (src && is_dir) {
		for (size_t i = 0; i < t->buckets && !rc; i++) {
			for (struct fs_node *n = t->by_ino[i]; n && !rc; n = n->next_ino) {
				/* the prefix first: a shorter path ends before [flen] */
				if (n->p.kind != FS_PATH_ENTRY || !n->hashed ||
				    strncmp(n->fullpath, from, flen) || n->fullpath[flen] != '/')
					continue;
				if (asprintf(&path, "%s%s", to, n->fullpath + flen) < 0)
					rc = -ENOMEM;
				else
					rc = fs_kept_add_locked(t, path, n->st_ino, n->is_dir);
			}
		}
	}
	if (!rc && st_ino) {
		path = strdup(to);
		rc = path ? fs_kept_add_locked(t, path, st_ino, is_dir) : -ENOMEM;
	}
	pthread_mutex_unlock(&t->lock);
	return rc;
}

uint64_t fs_inode_find(struct fs_inodes *t, uint64_t parent, const char *name)
{
	uint64_t ino = 0;

	pthread_mutex_lock(&t->lock);
	for (struct fs_node *n = t->by_name[fs_hash_name(parent, name) & (t->buckets - 1)]; n;
	     n = n->next_name) {
		if (n->parent == parent && !strcmp(n->name, name)) {
			ino = n->ino;
			break;
		}
	}
	pthread_mutex_unlock(&t->lock);
	return ino;
}

int fs_inodes_collect(struct fs_inodes *t, bool (*match)(void *arg, const struct fs_node *n),
		      void *arg, uint64_t **inos, size_t *n)
{
	uint64_t *v = NULL;
	size_t cnt = 0, cap = 0;
	int rc = 0;

	pthread_mutex_lock(&t->lock);
	for (size_t i = 0; i < t->buckets && !rc; i++) {
		for (struct fs_node *node = t->by_ino[i]; node; node = node->next_ino) {
			if (!match(arg, node))
				continue;
			if (cnt == cap) {
				size_t ncap = cap ? 2 * cap : 16;
				uint64_t *nv = realloc(v, ncap * sizeof(*nv));

				if (!nv) {
					rc = -ENOMEM;
					break;
				}
				v = nv;
				cap = ncap;
			}
			v[cnt++] = node->ino;
		}
	}
	pthread_mutex_unlock(&t->lock);
	if (rc) {
		free(v);
		v = NULL;
		cnt = 0;
	}
	*inos = v;
	*n = cnt;
	return rc;
}

uint64_t fs_inodes_count(struct fs_inodes *t)
{
	uint64_t c;

	pthread_mutex_lock(&t->lock);
	c = t->count;
	pthread_mutex_unlock(&t->lock);
	return c;
}
