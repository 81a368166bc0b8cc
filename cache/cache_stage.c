/*
 * The write journal: staged files in DIR/stage and their rows in the index.
 * See cache_stage.h for the contract.  This file checks what comes in and
 * what the index gives back (a staged name read from a row becomes a path),
 * and owns the files; the rows are cache_index.c's.
 *
 * Staged files and orphans.  Every fd this file hands out holds a shared
 * flock(2) on its staged file; the orphan walk moves a file to
 * DIR/lost+found only while it holds an exclusive one, after checking that
 * no row names it.  A creator takes its lock after the O_EXCL create, so the
 * walk may take a file between the two: the creator then finds that its
 * name in DIR/stage no longer names that file once it holds the lock, and
 * makes another.  So a staged file in use is never moved, whichever process
 * (of those sharing the cache) uses it.  An orphan holds bytes whose row
 * was lost (an index truncated, a WAL lost in a crash): the walk never
 * deletes those bytes, it moves them where the user sees them (`hubfs
 * status`) under a name that sorts by their mtime, never over a file there.
 * An empty orphan (such as the file of a creator that lost the race) holds
 * nothing to keep: it is removed.
 *
 * Thread safety: no state of its own but the directory fd, constant; the
 * index serialises its writes.
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "cache_index.h"
#include "cache_internal.h"
#include "cache_stage.h"

/* Names tried by cache_stage_file_create() before giving up. */
#define STAGE_CREATE_TRIES 16
/* The random part of a staged file's name, in hex digits, and its suffix. */
#define STAGE_NAME_HEX 16
#define STAGE_NAME_SUFFIX ".data"
/* Where orphans go, in DIR, and the names tried there for one of them. */
#define STAGE_LOST_DIR "lost+found"
#define STAGE_LOST_TRIES 100

void cache_stage_change_release(struct cache_stage_change *ch)
{
	if (!ch)
		return;
	free(ch->repo);
	free(ch->branch);
	free(ch->path);
	free(ch->old_path);
	free(ch->error);
	memset(ch, 0, sizeof(*ch));
}

void cache_stage_changes_free(struct cache_stage_change *v, size_t n)
{
	if (!v)
		return;
	for (size_t i = 0; i < n; i++)
		cache_stage_change_release(&v[i]);
	free(v);
}

void cache_stage_branches_free(struct cache_stage_branch *v, size_t n)
{
	if (!v)
		return;
	for (size_t i = 0; i < n; i++) {
		free(v[i].repo);
		free(v[i].branch);
		free(v[i].error);
	}
	free(v);
}

/*
 * Checks.
 */

bool cache_stage_name_valid(const char *name)
{
	size_t len = name ? strnlen(name, CACHE_STAGE_NAME_SIZE) : CACHE_STAGE_NAME_SIZE;

	if (len != CACHE_STAGE_NAME_SIZE - 1 || strcmp(name + STAGE_NAME_HEX, STAGE_NAME_SUFFIX))
		return false;
	for (size_t i = 0; i < STAGE_NAME_HEX; i++)
		if (!((name[i] >= '0' && name[i] <= '9') || (name[i] >= 'a' && name[i] <= 'f')))
			return false;
	return true;
}

/* 1 to @max bytes, no control character. */
static bool text_valid(const char *s, size_t max)
{
	size_t len = s ? strnlen(s, max + 1) : 0;

	if (len < 1 || len > max)
		return false;
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
			return false;
	return true;
}

static bool branch_valid(const char *repo, const char *branch)
{
	return text_valid(repo, CACHE_STAGE_REPO_MAX) && text_valid(branch, CACHE_STAGE_BRANCH_MAX);
}

/* A commit id: "" or 40 hex digits. */
static bool commit_valid(const char *id)
{
	return id && cache_hex_valid(id, 41, 40);
}

/* The fields of @ch that cache_stage_add() reads, as the journal keeps them:
 * a change from the caller, or a row read back. */
static bool change_valid(const struct cache_stage_change *ch)
{
	bool add = ch->kind == CACHE_STAGE_ADD, rename = ch->kind == CACHE_STAGE_RENAME;

	if (!branch_valid(ch->repo, ch->branch) || (unsigned)ch->kind > CACHE_STAGE_RENAME ||
	    !cache_path_valid(ch->path, false) || ch->size > INT64_MAX ||
	    !cache_hex_valid(ch->sha256, sizeof(ch->sha256), 64) ||
	    !cache_hex_valid(ch->base_commit, sizeof(ch->base_commit), 40))
		return false;
	if (rename ? !cache_path_valid(ch->old_path, false) || !strcmp(ch->old_path, ch->path)
		   : ch->old_path != NULL)
		return false;
	if (add ? !cache_stage_name_valid(ch->staged)
		: strnlen(ch->staged, sizeof(ch->staged)) != 0)
		return false;
	return true;
}

/* A row read back: what cache_stage_add() accepts, and the journal's own
 * fields. */
static int row_check(struct cache *c, const struct cache_stage_change *row)
{
	if (change_valid(row) && (unsigned)row->state < CACHE_STAGE_STATES && row->error &&
	    cache_hex_valid(row->commit_id, sizeof(row->commit_id), 40))
		return 0;
	cache_log(c, LOG_ERR, "journal row %lld is not valid: ignoring the journal of \"%s\"",
		  (long long)row->id, row->repo ? row->repo : "?");
	return -EIO;
}

/*
 * Staged files.
 */

/* Takes the shared lock of staged file @name open as @fd: 0, or -ENOENT when
 * an orphan walk removed it or moved it to lost+found before the lock was
 * ours (@name in DIR/stage is gone or names another file). */
static int stage_fd_lock(struct cache *c, int fd, const char *name)
{
	struct stat st, at;

	if (flock(fd, LOCK_SH))
		return -errno;
	if (fstat(fd, &st))
		return -errno;
	if (!S_ISREG(st.st_mode))
		return -EINVAL;
	if (!st.st_nlink)
		return -ENOENT;
	if (fstatat(c->stage_fd, name, &at, AT_SYMLINK_NOFOLLOW))
		return errno == ENOENT ? -ENOENT : -errno;
	return at.st_dev == st.st_dev && at.st_ino == st.st_ino ? 0 : -ENOENT;
}

int cache_stage_file_create(struct cache *c, char name[CACHE_STAGE_NAME_SIZE])
{
	static const char hex[] = "0123456789abcdef";
	int err = -EEXIST;

	name[0] = '\0';
	for (int i = 0; i < STAGE_CREATE_TRIES; i++) {
		unsigned char rnd[STAGE_NAME_HEX / 2];
		char try[CACHE_STAGE_NAME_SIZE];
		int fd;

		if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
			return errno ? -errno : -EIO;
		for (size_t k = 0; k < sizeof(rnd); k++) {
			try[2 * k] = hex[rnd[k] >> 4];
			try[2 * k + 1] = hex[rnd[k] & 15];
		}
		memcpy(try + STAGE_NAME_HEX, STAGE_NAME_SUFFIX, sizeof(STAGE_NAME_SUFFIX));
		fd = openat(c->stage_fd, try, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
			    0600);
		if (fd < 0) {
			err = -errno;
			if (err == -EEXIST)
				continue;
			return err;
		}
		err = stage_fd_lock(c, fd, try);
		if (err == -ENOENT) {
			close(fd); /* an orphan walk took it: another name */
			continue;
		}
		/* The name survives a power loss once the directory is synced. */
		if (!err && fsync(c->stage_fd))
			err = -errno;
		if (err) {
			unlinkat(c->stage_fd, try, 0);
			close(fd);
			return err;
		}
		memcpy(name, try, CACHE_STAGE_NAME_SIZE);
		return fd;
	}
	return err;
}

int cache_stage_file_open(struct cache *c, const char *name, bool write)
{
	int fd, err;

	if (!cache_stage_name_valid(name))
		return -EINVAL;
	fd = openat(c->stage_fd, name, (write ? O_RDWR : O_RDONLY) | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	err = stage_fd_lock(c, fd, name);
	if (err) {
		close(fd);
		return err;
	}
	return fd;
}

int cache_stage_file_remove(struct cache *c, const char *name)
{
	if (!cache_stage_name_valid(name))
		return -EINVAL;
	return unlinkat(c->stage_fd, name, 0) ? -errno : 0;
}

/* Opens DIR/lost+found, created (mode 0700, and DIR synced) with @create.
 * Returns its fd, -ENOENT when it does not exist, -EACCES when it belongs to
 * another user, or -errno. */
static int lost_dir_open(struct cache *c, bool create)
{
	struct stat st;
	int err, fd;

	if (create) {
		if (!mkdirat(c->dirfd, STAGE_LOST_DIR, 0700)) {
			if (fsync(c->dirfd))
				return -errno;
		} else if (errno != EEXIST) {
			return -errno;
		}
	}
	fd = openat(c->dirfd, STAGE_LOST_DIR, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st)) {
		err = -errno;
		goto close_fd;
	}
	if (st.st_uid != geteuid()) {
		err = -EACCES;
		goto close_fd;
	}
	/* staged data is never in a directory others can enter */
	if (create && (st.st_mode & 077) && fchmod(fd, 0700)) {
		err = -errno;
		goto close_fd;
	}
	return fd;
close_fd:
	close(fd);
	return err;
}

/* The name in lost+found of staged file @name last written at @mtime: the
 * mtime (UTC) first, so that names sort by it, then @name, with "-@n"
 * before its suffix when @n > 0. */
static void lost_name(char out[CACHE_STAGE_LOST_NAME_SIZE], const char *name, time_t mtime,
		      unsigned n)
{
	char when[17] = "00000000T000000Z";
	struct tm tm;

	if (gmtime_r(&mtime, &tm) && tm.tm_year >= 1000 - 1900 && tm.tm_year <= 9999 - 1900 &&
	    !strftime(when, sizeof(when), "%Y%m%dT%H%M%SZ", &tm))
		strcpy(when, "00000000T000000Z");
	/* a year of 4 digits: 16 characters; @name is a staged name */
	if (n)
		snprintf(out, CACHE_STAGE_LOST_NAME_SIZE, "%.16s-%.*s-%u%s", when, STAGE_NAME_HEX,
			 name, n, STAGE_NAME_SUFFIX);
	else
		snprintf(out, CACHE_STAGE_LOST_NAME_SIZE, "%.16s-%.*s", when,
			 CACHE_STAGE_NAME_SIZE - 1, name);
}

/* Moves staged file @name to the directory @lost_fd under a name of
 * lost_name() that no file there has, written into @out; then syncs both
 * directories.  Returns 0, -EEXIST when every name tried is taken, or
 * -errno (then @name is still in DIR/stage). */
static int lost_move(struct cache *c, int lost_fd, const char *name, time_t mtime,
		     char out[CACHE_STAGE_LOST_NAME_SIZE])
{
	int err = -EEXIST;

	for (unsigned n = 0; n < STAGE_LOST_TRIES && err == -EEXIST; n++) {
		lost_name(out, name, mtime, n);
		err = renameat2(c->stage_fd, name, lost_fd, out, RENAME_NOREPLACE) ? -errno : 0;
		if (err != -EINVAL && err != -ENOSYS && err != -EOPNOTSUPP)
			continue;
		/* No RENAME_NOREPLACE on this filesystem: a link never replaces
		 * a file either. */
		err = linkat(c->stage_fd, name, lost_fd, out, 0) ? -errno : 0;
		if (!err && unlinkat(c->stage_fd, name, 0)) {
			err = -errno;
			unlinkat(lost_fd, out, 0); /* still in DIR/stage */
		}
	}
	if (err)
		return err;
	/* the new name first: after a power failure the file is in one of
	 * the two directories, or in both */
	if (fsync(lost_fd) || fsync(c->stage_fd))
		return -errno;
	return 0;
}

/* Checks whether @name is an orphan (*@orphan, its size into *@size), and
 * with @move takes care of it: a file with bytes goes to lost+found (its
 * name there into @moved; *@lost_fd is opened on first need), an empty one
 * is removed (*@orphan false then: nothing to report). */
static int orphan_check(struct cache *c, const char *name, bool move, int *lost_fd, bool *orphan,
			uint64_t *size, char moved[CACHE_STAGE_LOST_NAME_SIZE])
{
	bool referenced = true;
	struct stat st;
	int err = 0;
	int fd = openat(c->stage_fd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);

	*orphan = false;
	if (fd < 0)
		return errno == ENOENT || errno == ELOOP ? 0 : -errno;
	if (flock(fd, LOCK_EX | LOCK_NB)) {
		err = errno == EWOULDBLOCK ? 0 : -errno; /* in use */
		goto close_fd;
	}
	if (fstat(fd, &st)) {
		err = -errno;
		goto close_fd;
	}
	if (!S_ISREG(st.st_mode) || !st.st_nlink)
		goto close_fd;
	err = cache_index_stage_referenced(c->idx, name, &referenced);
	if (err || referenced)
		goto close_fd;
	*size = (uint64_t)st.st_size;
	if (!move) {
		*orphan = true;
		goto close_fd;
	}
	if (!st.st_size) {
		if (unlinkat(c->stage_fd, name, 0) && errno != ENOENT)
			err = -errno;
		else
			cache_log(c, LOG_INFO,
				  "removed empty staged file \"%s\" that no change uses", name);
		goto close_fd;
	}
	if (*lost_fd < 0) {
		err = lost_dir_open(c, true);
		if (err < 0)
			goto log_err;
		*lost_fd = err;
	}
	err = lost_move(c, *lost_fd, name, st.st_mtim.tv_sec, moved);
	if (err)
		goto log_err;
	*orphan = true;
	cache_log(c, LOG_WARNING,
		  "staged file \"%s/%s/%s\" (%llu bytes) has no journal row: kept there, "
		  "not committed",
		  c->dir, STAGE_LOST_DIR, moved, (unsigned long long)st.st_size);
	goto close_fd;
log_err:
	cache_log(c, LOG_ERR,
		  "cannot move staged file \"%s/stage/%s\" that has no journal row to "
		  "\"%s/%s\": %s; left where it is",
		  c->dir, name, c->dir, STAGE_LOST_DIR, strerror(-err));
close_fd:
	close(fd); /* releases the lock */
	return err;
}

int cache_stage_orphans(struct cache *c, bool move, cache_stage_orphan_fn fn, void *arg)
{
	struct dirent *de;
	int err = 0, lost_fd = -1;
	int dfd = openat(c->stage_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d;

	if (dfd < 0)
		return -errno;
	d = fdopendir(dfd);
	if (!d) {
		err = -errno;
		close(dfd);
		return err;
	}
	while (!err && (de = readdir(d))) {
		char moved[CACHE_STAGE_LOST_NAME_SIZE];
		uint64_t size = 0;
		bool orphan;

		if (!cache_stage_name_valid(de->d_name))
			continue; /* not ours: left alone */
		err = orphan_check(c, de->d_name, move, &lost_fd, &orphan, &size, moved);
		if (err || !orphan)
			continue;
		if (fn)
			err = fn(arg, move ? moved : de->d_name, size);
	}
	closedir(d);
	if (lost_fd >= 0)
		close(lost_fd);
	return err;
}

/* A file of lost+found, for cache_stage_lost(). */
struct lost_file {
	char *name;
	uint64_t size;
	int64_t mtime; /* ms since the epoch */
};

static int lost_file_cmp(const void *a, const void *b)
{
	return strcmp(((const struct lost_file *)a)->name, ((const struct lost_file *)b)->name);
}

int cache_stage_lost(struct cache *c, cache_stage_lost_fn fn, void *arg)
{
	struct lost_file *v = NULL;
	size_t n = 0, cap = 0;
	struct dirent *de;
	int err = 0;
	int fd = lost_dir_open(c, false);
	DIR *d;

	if (fd == -ENOENT)
		return 0; /* nothing was ever lost */
	if (fd < 0)
		return fd;
	d = fdopendir(fd);
	if (!d) {
		err = -errno;
		close(fd);
		return err;
	}
	while (!err && (de = readdir(d))) {
		struct stat st;

		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (fstatat(fd, de->d_name, &st, AT_SYMLINK_NOFOLLOW)) {
			if (errno != ENOENT) /* deleted meanwhile */
				err = -errno;
			continue;
		}
		if (!S_ISREG(st.st_mode))
			continue;
		if (n == cap) {
			size_t ncap = cap ? 2 * cap : 16;
			struct lost_file *nv = realloc(v, ncap * sizeof(*v));

			if (!nv) {
				err = -ENOMEM;
				break;
			}
			v = nv;
			cap = ncap;
		}
		v[n].name = strdup(de->d_name);
		if (!v[n].name) {
			err = -ENOMEM;
			break;
		}
		v[n].size = (uint64_t)st.st_size;
		v[n].mtime = (int64_t)st.st_mtim.tv_sec * 1000 + st.st_mtim.tv_nsec / 1000000;
		n++;
	}
	closedir(d);
	if (!err && n)
		qsort(v, n, sizeof(*v), lost_file_cmp);
	for (size_t i = 0; !err && i < n; i++)
		err = fn ? fn(arg, v[i].name, v[i].size, v[i].mtime) : 0;
	for (size_t i = 0; i < n; i++)
		free(v[i].name);
	free(v);
	return err;
}

/*
 * Journal rows.
 */

/* Checks @ch for cache_stage_add(), and makes the bytes of its staged file
 * durable: a row never points at bytes that a power failure may lose. */
static int add_prepare(struct cache *c, const struct cache_stage_change *ch)
{
	struct stat st;
	int err = 0;
	int fd;

	if (!ch || !change_valid(ch))
		return -EINVAL;
	if (ch->kind != CACHE_STAGE_ADD)
		return 0;
	fd = openat(c->stage_fd, ch->staged, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		return errno == ELOOP ? -EINVAL : -errno;
	if (fstat(fd, &st))
		err = -errno;
	else if (!S_ISREG(st.st_mode))
		err = -EINVAL;
	else if (fdatasync(fd))
		err = -errno;
	close(fd);
	return err;
}

int cache_stage_add(struct cache *c, const struct cache_stage_change *ch, int64_t *id)
{
	int err = add_prepare(c, ch);

	if (err)
		return err;
	return cache_index_stage_add(c->idx, ch, cache_now_ms(), id, NULL);
}

int cache_stage_replace(struct cache *c, const struct cache_stage_change *ch, int64_t *id,
			struct cache_stage_change *old)
{
	int err;

	if (!old)
		return -EINVAL;
	memset(old, 0, sizeof(*old));
	err = add_prepare(c, ch);
	if (err)
		return err;
	/* The old row is forgotten whatever it holds: not checked. */
	return cache_index_stage_add(c->idx, ch, cache_now_ms(), id, old);
}

int cache_stage_get(struct cache *c, int64_t id, struct cache_stage_change *out)
{
	int err;

	if (!out)
		return -EINVAL;
	err = cache_index_stage_get(c->idx, id, out);
	if (!err)
		err = row_check(c, out);
	if (err)
		cache_stage_change_release(out);
	return err;
}

int cache_stage_list(struct cache *c, const char *repo, const char *branch,
		     struct cache_stage_change **changes, size_t *n)
{
	int err;

	if (!changes || !n)
		return -EINVAL;
	*changes = NULL;
	*n = 0;
	if (!branch_valid(repo, branch))
		return -EINVAL;
	err = cache_index_stage_list(c->idx, repo, branch, changes, n);
	for (size_t i = 0; !err && i < *n; i++)
		err = row_check(c, &(*changes)[i]);
	if (err) {
		cache_stage_changes_free(*changes, *n);
		*changes = NULL;
		*n = 0;
	}
	return err;
}

int cache_stage_branches(struct cache *c, struct cache_stage_branch **branches, size_t *n)
{
	if (!branches || !n)
		return -EINVAL;
	return cache_index_stage_branches(c->idx, branches, n);
}

int cache_stage_count(struct cache *c, const char *repo, const char *branch, uint64_t *changes,
		      uint64_t *bytes)
{
	uint64_t nc = 0, nb = 0;
	int err;

	if (!branch_valid(repo, branch))
		return -EINVAL;
	err = cache_index_stage_count(c->idx, repo, branch, &nc, &nb);
	if (changes)
		*changes = nc;
	if (bytes)
		*bytes = nb;
	return err;
}

/* A copy of @error cut to CACHE_STAGE_ERROR_MAX bytes, on a UTF-8 character
 * boundary.  The caller frees it. */
static char *error_cut(const char *error)
{
	size_t len = error ? strnlen(error, CACHE_STAGE_ERROR_MAX + 1) : 0;
	char *copy;

	if (len > CACHE_STAGE_ERROR_MAX) {
		len = CACHE_STAGE_ERROR_MAX;
		while (len > 0 && ((unsigned char)error[len] & 0xc0) == 0x80)
			len--; /* error[len] continues a character: cut before it */
	}
	copy = malloc(len + 1);
	if (!copy)
		return NULL;
	if (len)
		memcpy(copy, error, len);
	copy[len] = '\0';
	return copy;
}

int cache_stage_update(struct cache *c, const int64_t *ids, size_t n,
		       const struct cache_stage_update *u, size_t *updated)
{
	const unsigned known = CACHE_STAGE_SET_STATE | CACHE_STAGE_SET_ERROR |
			       CACHE_STAGE_SET_ATTEMPTS | CACHE_STAGE_ADD_ATTEMPT |
			       CACHE_STAGE_SET_COMMIT | CACHE_STAGE_SET_BASE;
	struct cache_stage_update cut;
	size_t count = 0;
	char *error;
	int err;

	if (updated)
		*updated = 0;
	if (!u || (n && !ids) || (u->set & ~known) ||
	    ((u->set & CACHE_STAGE_SET_ATTEMPTS) && (u->set & CACHE_STAGE_ADD_ATTEMPT)) ||
	    ((u->set & CACHE_STAGE_SET_STATE) && (unsigned)u->state >= CACHE_STAGE_STATES) ||
	    ((u->set & CACHE_STAGE_SET_COMMIT) && !commit_valid(u->commit_id)) ||
	    ((u->set & CACHE_STAGE_SET_BASE) &&
	     (!commit_valid(u->base_commit) || !u->base_commit[0])))
		return -EINVAL;
	if (!n)
		return 0;
	error = error_cut(u->set & CACHE_STAGE_SET_ERROR ? u->error : NULL);
	if (!error)
		return -ENOMEM;
	cut = *u;
	cut.state = u->set & CACHE_STAGE_SET_STATE ? u->state : CACHE_STAGE_PENDING;
	cut.error = error;
	err = cache_index_stage_update(c->idx, ids, n, &cut, cache_now_ms(), &count);
	free(error);
	if (!err && updated)
		*updated = count;
	return err;
}

int cache_stage_set_content(struct cache *c, int64_t id, uint64_t size, const char *sha256)
{
	if (!sha256 || !cache_hex_valid(sha256, 65, 64) || !sha256[0] || size > INT64_MAX)
		return -EINVAL;
	return cache_index_stage_set_content(c->idx, id, size, sha256, cache_now_ms());
}

int cache_stage_set_sent(struct cache *c, int64_t id, uint64_t sent)
{
	if (sent > INT64_MAX)
		return -EINVAL;
	return cache_index_stage_set_sent(c->idx, id, sent);
}

int cache_stage_committed(struct cache *c, const char *repo, const char *branch, const int64_t *ids,
			  size_t n, const char *parent, const char *commit_id,
			  char (**staged)[CACHE_STAGE_NAME_SIZE], size_t *nstaged)
{
	size_t count = 0;
	int err;

	if (!staged || !nstaged)
		return -EINVAL;
	*staged = NULL;
	*nstaged = 0;
	if (!branch_valid(repo, branch) || (n && !ids) || !commit_valid(parent) ||
	    !commit_valid(commit_id))
		return -EINVAL;
	err = cache_index_stage_committed(c->idx, repo, branch, ids, n, parent, commit_id,
					  cache_now_ms(), staged, &count);
	if (err)
		return err;
	/* Names read from rows become paths: only ours go out (the rows are
	 * gone; a file left behind is an orphan). */
	for (size_t i = 0; i < count; i++) {
		if (cache_stage_name_valid((*staged)[i]))
			memmove((*staged)[(*nstaged)++], (*staged)[i], CACHE_STAGE_NAME_SIZE);
		else
			cache_log(c, LOG_ERR, "journal named a staged file \"%.*s\" badly",
				  CACHE_STAGE_NAME_SIZE - 1, (*staged)[i]);
	}
	return 0;
}

int cache_stage_forget(struct cache *c, const char *repo, const char *branch, const int64_t *ids,
		       size_t n, char (**staged)[CACHE_STAGE_NAME_SIZE], size_t *nstaged)
{
	/* a commit that rebases nothing */
	return cache_stage_committed(c, repo, branch, ids, n, "", "", staged, nstaged);
}
