/*
 * Local blob sources.  See blobsrc.h.
 *
 * One entry per blob id asked for: where a copy was found (or when none
 * was), and what is known of the file there: checked good, checked bad, or
 * being checked.  What a check found holds for one file identity (device,
 * inode, size, mtime, ctime): huggingface_hub replaces a blob by renaming a
 * new file over it, a new inode, and an edit in place changes the times, so
 * either makes the next open check again.
 *
 * Locking: bs->lock protects the entry list and every entry's fields; it is
 * never held across I/O.  An entry being checked (BLOBSRC_CHECKING) is
 * never freed, so the checking thread keeps its pointer; waiters sleep on
 * bs->cond and look their entry up again when they wake.
 */
#include "config.h"

#include "blobsrc.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cache_hash.h"
#include "cache_meta.h"
#include "log.h"

/* Entries kept at most; beyond, those not being checked are dropped. */
#define BLOBSRC_ENTRIES_MAX 4096
/* Other repo folders of a directory probed per lookup, at most: a stat each,
 * which a shared file system answers over the network. */
#define BLOBSRC_OTHERS_MAX 256
/* Bytes hashed per read while checking a file. */
#define BLOBSRC_PIECE (1u << 20)

enum blobsrc_state {
	BLOBSRC_UNKNOWN,  /* not checked (or the file changed since) */
	BLOBSRC_CHECKING, /* a thread is hashing it */
	BLOBSRC_GOOD,
	BLOBSRC_BAD,
};

/* What identifies one version of a file. */
struct blobsrc_ident {
	dev_t dev;
	ino_t ino;
	off_t size;
	struct timespec mtime, ctime;
};

struct blobsrc_entry {
	char id[CACHE_ID_MAX];
	uint64_t size; /* asked for with the id (a wrong size is another entry) */
	char *path;    /* where a copy was found; NULL: none (or not looked) */
	time_t missed; /* when a lookup found none; 0: never */
	enum blobsrc_state state;
	struct blobsrc_ident ident; /* the file GOOD/BAD/CHECKING is about */
	struct blobsrc_ident bad;   /* the last file found bad, skipped by lookups */
	bool has_bad;
	bool size_logged; /* a copy of the wrong size was reported */
	struct blobsrc_entry *next;
};

struct blobsrc {
	struct cache *cache; /* borrowed; NULL: nothing kept across mounts */
	char **dirs;
	size_t n_dirs;
	pthread_mutex_t lock;
	pthread_cond_t cond;	       /* a check ended */
	struct blobsrc_entry *entries; /* protected by lock */
	size_t n_entries;	       /* protected by lock */
};

int blobsrc_folder(const struct hub_repo *repo, char out[BLOBSRC_FOLDER_MAX])
{
	int n = snprintf(out, BLOBSRC_FOLDER_MAX, "%s--%s--%s", hub_repo_type_api(repo->type),
			 repo->ns, repo->name);

	return n < 0 || (size_t)n >= BLOBSRC_FOLDER_MAX ? -ENAMETOOLONG : 0;
}

struct blobsrc *blobsrc_new(const char *const *dirs, size_t n, struct cache *cache, int *err)
{
	struct blobsrc *bs = calloc(1, sizeof(*bs));

	if (!bs || (n && !(bs->dirs = calloc(n, sizeof(*bs->dirs))))) {
		free(bs);
		*err = -ENOMEM;
		return NULL;
	}
	bs->cache = cache;
	pthread_mutex_init(&bs->lock, NULL);
	pthread_cond_init(&bs->cond, NULL);
	for (size_t i = 0; i < n; i++) {
		/* absolute: the daemon leaves its working directory */
		char *real = realpath(dirs[i], NULL);
		const char *why = NULL;
		struct stat st;

		if (!real && errno == ENOMEM)
			goto nomem;
		if (!real || stat(real, &st) < 0)
			why = strerror(errno);
		else if (!S_ISDIR(st.st_mode))
			why = "not a directory";
		else if (access(real, R_OK | X_OK) < 0)
			why = strerror(errno);
		if (why) {
			log_msg(LOG_WARNING, "huggingface_hub cache '%s': %s; not used", dirs[i],
				why);
			free(real);
			continue;
		}
		bs->dirs[bs->n_dirs++] = real;
		log_msg(LOG_INFO, "blobs of the huggingface_hub cache '%s' are read from there",
			real);
	}
	return bs;
nomem:
	blobsrc_free(bs);
	*err = -ENOMEM;
	return NULL;
}

static void blobsrc_entry_free(struct blobsrc_entry *e)
{
	free(e->path);
	free(e);
}

void blobsrc_free(struct blobsrc *bs)
{
	if (!bs)
		return;
	while (bs->entries) {
		struct blobsrc_entry *e = bs->entries;

		bs->entries = e->next;
		blobsrc_entry_free(e);
	}
	for (size_t i = 0; i < bs->n_dirs; i++)
		free(bs->dirs[i]);
	free(bs->dirs);
	pthread_mutex_destroy(&bs->lock);
	pthread_cond_destroy(&bs->cond);
	free(bs);
}

static struct blobsrc_entry *blobsrc_find_locked(struct blobsrc *bs, const char *id, uint64_t size)
{
	for (struct blobsrc_entry *e = bs->entries; e; e = e->next)
		if (e->size == size && !strcmp(e->id, id))
			return e;
	return NULL;
}

/* The entry of @id and @size, made if needed; NULL when out of memory. */
static struct blobsrc_entry *blobsrc_entry_locked(struct blobsrc *bs, const char *id, uint64_t size)
{
	struct blobsrc_entry *e = blobsrc_find_locked(bs, id, size), **pe;

	if (e)
		return e;
	if (bs->n_entries >= BLOBSRC_ENTRIES_MAX) {
		for (pe = &bs->entries; (e = *pe);) {
			if (e->state == BLOBSRC_CHECKING) {
				pe = &e->next;
				continue;
			}
			*pe = e->next;
			blobsrc_entry_free(e);
			bs->n_entries--;
		}
	}
	e = calloc(1, sizeof(*e));
	if (!e)
		return NULL;
	snprintf(e->id, sizeof(e->id), "%s", id);
	e->size = size;
	e->next = bs->entries;
	bs->entries = e;
	bs->n_entries++;
	return e;
}

static void blobsrc_ident_of(const struct stat *st, struct blobsrc_ident *out)
{
	memset(out, 0, sizeof(*out));
	out->dev = st->st_dev;
	out->ino = st->st_ino;
	out->size = st->st_size;
	out->mtime = st->st_mtim;
	out->ctime = st->st_ctim;
}

static bool blobsrc_ident_eq(const struct blobsrc_ident *a, const struct blobsrc_ident *b)
{
	return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
	       a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec &&
	       a->ctime.tv_sec == b->ctime.tv_sec && a->ctime.tv_nsec == b->ctime.tv_nsec;
}

/* What a lookup learns of one candidate path. */
enum blobsrc_seen {
	BLOBSRC_SEEN_NONE, /* nothing usable there */
	BLOBSRC_SEEN_SIZE, /* a regular file of another size */
	BLOBSRC_SEEN_OK,   /* a regular file of the right size, not known bad */
};

static enum blobsrc_seen blobsrc_candidate(int dirfd, const char *rel, uint64_t size,
					   const struct blobsrc_ident *bad)
{
	struct blobsrc_ident ident;
	struct stat st;

	if (fstatat(dirfd, rel, &st, 0) < 0 || !S_ISREG(st.st_mode))
		return BLOBSRC_SEEN_NONE;
	if ((uint64_t)st.st_size != size)
		return BLOBSRC_SEEN_SIZE;
	blobsrc_ident_of(&st, &ident);
	if (bad && blobsrc_ident_eq(&ident, bad))
		return BLOBSRC_SEEN_NONE;
	return BLOBSRC_SEEN_OK;
}

/* Finds a copy of @id: in @folder of each directory, then in every other
 * repo folder.  Returns the path (caller frees) or NULL; *@wrong_size gets
 * the first path holding a file of another size (caller frees), if any. */
static char *blobsrc_lookup(struct blobsrc *bs, const char *folder, const char *id, uint64_t size,
			    const struct blobsrc_ident *bad, char **wrong_size)
{
	char rel[BLOBSRC_FOLDER_MAX + CACHE_ID_MAX + 16];
	char *path = NULL;

	*wrong_size = NULL;
	for (int pass = 0; pass < 2 && !path; pass++) {
		for (size_t i = 0; i < bs->n_dirs && !path; i++) {
			int dfd = open(bs->dirs[i], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
			DIR *d = NULL;
			struct dirent *de;

			if (dfd < 0)
				continue;
			if (pass == 0) {
				if (!folder) {
					close(dfd);
					continue;
				}
				snprintf(rel, sizeof(rel), "%s/blobs/%s", folder, id);
				switch (blobsrc_candidate(dfd, rel, size, bad)) {
				case BLOBSRC_SEEN_OK:
					if (asprintf(&path, "%s/%s", bs->dirs[i], rel) < 0)
						path = NULL;
					break;
				case BLOBSRC_SEEN_SIZE:
					if (!*wrong_size &&
					    asprintf(wrong_size, "%s/%s", bs->dirs[i], rel) < 0)
						*wrong_size = NULL;
					break;
				case BLOBSRC_SEEN_NONE:
					break;
				}
				close(dfd);
				continue;
			}
			/* the other repos of this directory */
			d = fdopendir(dfd);
			if (!d) {
				close(dfd);
				continue;
			}
			for (int probed = 0;
			     !path && probed < BLOBSRC_OTHERS_MAX && (de = readdir(d));) {
				const char *n = de->d_name;

				if (strncmp(n, "models--", 8) && strncmp(n, "datasets--", 10) &&
				    strncmp(n, "spaces--", 8))
					continue;
				if ((folder && !strcmp(n, folder)) ||
				    strlen(n) >= BLOBSRC_FOLDER_MAX)
					continue;
				probed++;
				snprintf(rel, sizeof(rel), "%s/blobs/%s", n, id);
				if (blobsrc_candidate(dirfd(d), rel, size, bad) ==
					BLOBSRC_SEEN_OK &&
				    asprintf(&path, "%s/%s", bs->dirs[i], rel) < 0)
					path = NULL;
			}
			closedir(d);
		}
	}
	return path;
}

/* Opens @path read-only without touching its access time when the kernel
 * lets us (O_NOATIME needs the file's owner), and never blocking on a FIFO
 * put there.  Returns the descriptor of a regular file, or -errno. */
static int blobsrc_open_file(const char *path, struct stat *st)
{
	int flags = O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY;
	int fd = open(path, flags | O_NOATIME);

	if (fd < 0 && errno == EPERM)
		fd = open(path, flags);
	if (fd < 0)
		return -errno;
	if (fstat(fd, st) < 0 || !S_ISREG(st->st_mode)) {
		close(fd);
		return -ENOENT;
	}
	/* a regular file ignores O_NONBLOCK; clear it anyway */
	(void)fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
	return fd;
}

/* The index key and value that remember a file of blob @id and @size
 * checked good. */
static void blobsrc_memo(const char *id, uint64_t size, const struct blobsrc_ident *ident,
			 char key[CACHE_ID_MAX + 48], char val[160])
{
	snprintf(key, CACHE_ID_MAX + 48, "hf-cache-good/%s/%llu", id, (unsigned long long)size);
	snprintf(val, 160, "%llu %llu %lld %lld.%09ld %lld.%09ld", (unsigned long long)ident->dev,
		 (unsigned long long)ident->ino, (long long)ident->size,
		 (long long)ident->mtime.tv_sec, ident->mtime.tv_nsec,
		 (long long)ident->ctime.tv_sec, ident->ctime.tv_nsec);
}

/* Whether an earlier mount checked this very file good. */
static bool blobsrc_known_good(struct blobsrc *bs, const char *id, uint64_t size,
			       const struct blobsrc_ident *ident)
{
	char key[CACHE_ID_MAX + 48], want[160];
	void *val = NULL;
	size_t len = 0;
	bool good;

	if (!bs->cache)
		return false;
	blobsrc_memo(id, size, ident, key, want);
	if (cache_kv_get(bs->cache, key, &val, &len, NULL))
		return false;
	good = len == strlen(want) && !memcmp(val, want, len);
	free(val);
	return good;
}

/* Remembers that this file checked good, unless its times are so close to
 * the check's start @t0 that a change in the same tick could hide. */
static void blobsrc_remember(struct blobsrc *bs, const char *id, uint64_t size,
			     const struct blobsrc_ident *ident, time_t t0)
{
	char key[CACHE_ID_MAX + 48], val[160];

	if (!bs->cache || ident->mtime.tv_sec > t0 - BLOBSRC_RACY ||
	    ident->ctime.tv_sec > t0 - BLOBSRC_RACY)
		return;
	blobsrc_memo(id, size, ident, key, val);
	if (cache_kv_put(bs->cache, key, val, strlen(val), (int64_t)t0))
		log_msg(LOG_DEBUG, "cannot remember that '%s' checked good", id);
}

/* Hashes all of @fd (@size bytes, at offset 0).  Returns 1 when its content
 * has id @id, 0 when it does not (or reading it failed: logged), -EINTR,
 * -ENOMEM. */
static int blobsrc_check(int fd, const char *path, const char *id, uint64_t size,
			 bool (*cancel)(void *arg), void *cancel_arg)
{
	enum cache_id_kind kind;
	struct cache_hasher *h;
	char got[CACHE_ID_MAX];
	unsigned char *buf;
	uint64_t off = 0;
	int rc = 0;

	if (!cache_id_valid(id, &kind))
		return 0;
	buf = malloc(BLOBSRC_PIECE);
	h = buf ? cache_hasher_new(kind, size, &rc) : NULL;
	if (!h) {
		free(buf);
		return rc == -EIO ? 0 : -ENOMEM;
	}
	(void)posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
	while (off < size) {
		size_t want = size - off < BLOBSRC_PIECE ? (size_t)(size - off) : BLOBSRC_PIECE;
		ssize_t n;

		if (cancel && cancel(cancel_arg)) {
			rc = -EINTR;
			goto out;
		}
		n = pread(fd, buf, want, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			log_msg(LOG_WARNING,
				"huggingface_hub blob '%s': cannot read at %llu: %s; ignored", path,
				(unsigned long long)off, n < 0 ? strerror(errno) : "file shrank");
			rc = 0;
			goto out;
		}
		if (cache_hasher_update(h, buf, (size_t)n)) {
			rc = 0;
			goto out;
		}
		off += (uint64_t)n;
	}
	if (cache_hasher_final(h, got))
		snprintf(got, sizeof(got), "nothing: the hash failed");
	rc = !strcmp(got, id);
	if (!rc)
		log_msg(
		    LOG_WARNING,
		    "huggingface_hub blob '%s' does not match its id (its content hashes to %s);"
		    " ignored, reading from the Hub",
		    path, got);
out:
	cache_hasher_free(h);
	free(buf);
	return rc;
}

int blobsrc_open(struct blobsrc *bs, const char *folder, const char *id, uint64_t size,
		 bool (*cancel)(void *arg), void *cancel_arg)
{
	struct blobsrc_entry *e;
	struct blobsrc_ident ident, bad;
	struct stat st;
	char *path, *wrong;
	bool has_bad;
	int fd, rc;

	if (!bs || bs->n_dirs == 0)
		return -ENOENT;
	pthread_mutex_lock(&bs->lock);
	for (;;) {
		e = blobsrc_entry_locked(bs, id, size);
		if (!e) {
			pthread_mutex_unlock(&bs->lock);
			return -ENOMEM;
		}
		if (e->state != BLOBSRC_CHECKING)
			break;
		pthread_cond_wait(&bs->cond, &bs->lock);
	}
	if (!e->path && e->missed && time(NULL) - e->missed < BLOBSRC_MISS_TTL) {
		pthread_mutex_unlock(&bs->lock);
		return -ENOENT;
	}
	path = e->path ? strdup(e->path) : NULL;
	has_bad = e->has_bad;
	bad = e->bad;
	pthread_mutex_unlock(&bs->lock);

	for (int tries = 0;; tries++) {
		if (!path) {
			path = blobsrc_lookup(bs, folder, id, size, has_bad ? &bad : NULL, &wrong);
			bool tell = false;

			pthread_mutex_lock(&bs->lock);
			e = blobsrc_entry_locked(bs, id, size);
			if (e && wrong && !e->size_logged)
				tell = e->size_logged = true;
			if (e) {
				free(e->path);
				e->path = path ? strdup(path) : NULL;
				e->missed = path ? 0 : time(NULL);
			}
			pthread_mutex_unlock(&bs->lock);
			if (tell)
				log_msg(LOG_WARNING,
					"huggingface_hub blob '%s' is not %llu bytes long; ignored,"
					" reading from the Hub",
					wrong, (unsigned long long)size);
			free(wrong);
			if (!path)
				return -ENOENT;
		}
		fd = blobsrc_open_file(path, &st);
		if (fd >= 0 && (uint64_t)st.st_size == size)
			break;
		if (fd >= 0)
			close(fd);
		/* gone, changed or unreadable since it was found: look again, once */
		log_msg(LOG_DEBUG, "huggingface_hub blob '%s': %s", path,
			fd < 0 ? strerror(-fd) : "its size changed");
		free(path);
		path = NULL;
		pthread_mutex_lock(&bs->lock);
		if ((e = blobsrc_find_locked(bs, id, size)) && e->state != BLOBSRC_CHECKING) {
			free(e->path);
			e->path = NULL;
		}
		pthread_mutex_unlock(&bs->lock);
		if (tries > 0)
			return -ENOENT;
	}

	blobsrc_ident_of(&st, &ident);
	pthread_mutex_lock(&bs->lock);
	for (;;) {
		e = blobsrc_entry_locked(bs, id, size);
		if (!e) {
			rc = -ENOMEM;
			goto unlock;
		}
		if (e->state != BLOBSRC_CHECKING)
			break;
		pthread_cond_wait(&bs->cond, &bs->lock);
	}
	if (blobsrc_ident_eq(&e->ident, &ident) && e->state == BLOBSRC_GOOD) {
		rc = fd;
		goto unlock;
	}
	if (blobsrc_ident_eq(&e->ident, &ident) && e->state == BLOBSRC_BAD) {
		rc = -ENOENT;
		goto unlock;
	}
	e->state = BLOBSRC_CHECKING;
	e->ident = ident;
	pthread_mutex_unlock(&bs->lock);

	if (blobsrc_known_good(bs, id, size, &ident)) {
		rc = 1;
	} else {
		time_t t0 = time(NULL);

		rc = blobsrc_check(fd, path, id, size, cancel, cancel_arg);
		if (rc == 1)
			blobsrc_remember(bs, id, size, &ident, t0);
	}

	pthread_mutex_lock(&bs->lock);
	/* a checking entry is never dropped: e is still ours */
	if (rc == 1) {
		e->state = BLOBSRC_GOOD;
		rc = fd;
	} else if (rc == 0) {
		e->state = BLOBSRC_BAD;
		e->bad = ident;
		e->has_bad = true;
		/* another copy elsewhere is found by the next lookup */
		free(e->path);
		e->path = NULL;
		e->missed = 0;
		rc = -ENOENT;
	} else {
		e->state = BLOBSRC_UNKNOWN;
	}
	pthread_cond_broadcast(&bs->cond);
	pthread_mutex_unlock(&bs->lock);
	if (rc == fd)
		log_msg(LOG_INFO, "huggingface_hub blob '%s' checked: read from there", path);
	goto out;
unlock:
	pthread_mutex_unlock(&bs->lock);
out:
	if (rc != fd)
		close(fd);
	free(path);
	return rc;
}
