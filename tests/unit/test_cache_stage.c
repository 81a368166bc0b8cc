/* Unit tests: the write journal of the cache (cache/cache_stage.c and the
 * SQLite index): staged files, journal rows and their round trips, upload
 * progress, a SIGKILL right after the adds return, orphans and lost+found,
 * clear, the upgrade of a version 1 and of a version 2 index, and names and
 * changes that must be refused. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cache.h"
#include "tap.h"

static char top[] = "/tmp/hubfs-test-cache-stage-XXXXXX";
/* The schema version of the index (cache_index.h's CACHE_INDEX_VERSION). */
enum { INDEX_VERSION = 6 };
static unsigned dir_serial;

static const char REPO[] = "model/alice/tiny";
static const char BASE[] = "4c7798263c7f0c4d1fd2ed8a5bba2fe1e0b25c6a";
static const char HEAD[] = "0123456789abcdef0123456789abcdef01234567";
static const char OTHER[] = "ffffffffffffffffffffffffffffffffffffffff";

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void new_dir(char *dir, size_t size)
{
	snprintf(dir, size, "%s/c%u", top, dir_serial++);
}

static struct cache *open_cache(const char *dir)
{
	struct cache_config cfg = {.dir = dir, .lock = CACHE_LOCK_SHARED};
	int err = 0;
	struct cache *c = cache_open(&cfg, &err);

	if (!c)
		tap_diag("cannot open cache \"%s\": %s", dir, strerror(-err));
	return c;
}

static mode_t mode_of(const char *path)
{
	struct stat st;

	return lstat(path, &st) ? (mode_t)-1 : st.st_mode & 07777;
}

/* @len deterministic bytes of stream @seed. */
static void fill(unsigned seed, unsigned char *buf, size_t len)
{
	uint32_t x = seed * 2654435761u + 1;

	for (size_t i = 0; i < len; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		buf[i] = (unsigned char)x;
	}
}

/* A new staged file holding @len bytes of stream @seed; its name into
 * @name, the sha256 into @sha (65 bytes).  Returns the fd, still open. */
static int stage_bytes(struct cache *c, unsigned seed, size_t len, char *name, char *sha)
{
	unsigned char *buf = malloc(len ? len : 1);
	char id[CACHE_ID_MAX];
	int fd = -1;

	if (!buf)
		return -ENOMEM;
	fill(seed, buf, len);
	if (cache_id_of_buffer(CACHE_ID_SHA256, buf, len, id))
		goto free_buf;
	memcpy(sha, id, 65);
	fd = cache_stage_file_create(c, name);
	if (fd >= 0 && write(fd, buf, len) != (ssize_t)len) {
		close(fd);
		fd = -EIO;
	}
free_buf:
	free(buf);
	return fd;
}

/* The sha256 of staged file @name, read through cache_stage_file_open(). */
static int staged_sha(struct cache *c, const char *name, char *sha)
{
	unsigned char buf[65536];
	struct cache_hasher *h;
	struct stat st;
	int err = 0;
	int fd = cache_stage_file_open(c, name, false);
	ssize_t n;

	if (fd < 0)
		return fd;
	if (fstat(fd, &st)) {
		close(fd);
		return -errno;
	}
	h = cache_hasher_new(CACHE_ID_SHA256, (uint64_t)st.st_size, &err);
	while (h && !err && (n = read(fd, buf, sizeof(buf))) > 0)
		err = cache_hasher_update(h, buf, (size_t)n);
	if (h && !err)
		err = cache_hasher_final(h, sha);
	cache_hasher_free(h);
	close(fd);
	return h ? err : -ENOMEM;
}

static struct cache_stage_change change(enum cache_stage_kind kind, const char *path,
					const char *staged)
{
	struct cache_stage_change ch = {
	    .repo = (char *)REPO,
	    .branch = (char *)"main",
	    .kind = kind,
	    .path = (char *)path,
	};

	if (staged)
		snprintf(ch.staged, sizeof(ch.staged), "%s", staged);
	memcpy(ch.base_commit, BASE, sizeof(BASE));
	return ch;
}

/*
 * Staged files.
 */

static void test_files(const char *dir)
{
	static const char *const bad[] = {
	    "../hubfs.db",
	    "0123456789abcdef",
	    "0123456789abcdef.dat",
	    "0123456789ABCDEF.data",
	    "0123456789abcde.data",
	    "0123456789abcdefg.data",
	    "/0123456789abcdef.data",
	    "0123456789abcdef.data/",
	    "",
	    "lock",
	};
	char name[CACHE_STAGE_NAME_SIZE], name2[CACHE_STAGE_NAME_SIZE], path[600], buf[16];
	struct cache *c = open_cache(dir);
	bool all = true;
	int fd, fd2;

	if (!c)
		return;
	snprintf(path, sizeof(path), "%s/stage", dir);
	tap_ok(mode_of(path) == 0700, "DIR/stage is 0700");
	fd = cache_stage_file_create(c, name);
	fd2 = cache_stage_file_create(c, name2);
	tap_ok(fd >= 0 && fd2 >= 0 && cache_stage_name_valid(name) && strcmp(name, name2),
	       "two staged files, two names: %s %s", name, name2);
	snprintf(path, sizeof(path), "%s/stage/%s", dir, name);
	tap_ok(mode_of(path) == 0600, "a staged file is 0600");
	tap_ok(write(fd, "hello", 5) == 5 && close(fd) == 0, "write and close it");
	fd = cache_stage_file_open(c, name, false);
	tap_ok(fd >= 0 && read(fd, buf, sizeof(buf)) == 5 && !memcmp(buf, "hello", 5),
	       "open it by name: the same bytes");
	tap_ok(write(fd, "x", 1) < 0, "read-only when asked so");
	close(fd);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int rc = cache_stage_file_open(c, bad[i], true);

		all = all && rc == -EINVAL && !cache_stage_name_valid(bad[i]) &&
		      cache_stage_file_remove(c, bad[i]) == -EINVAL;
		if (rc >= 0)
			close(rc);
	}
	tap_ok(all && cache_stage_file_open(c, NULL, false) == -EINVAL,
	       "%zu bad names refused: -EINVAL", sizeof(bad) / sizeof(bad[0]));
	tap_ok(cache_stage_file_remove(c, name) == 0 &&
		   cache_stage_file_open(c, name, false) == -ENOENT &&
		   cache_stage_file_remove(c, name) == -ENOENT,
	       "removed: open and remove answer -ENOENT");
	/* A symlink at a valid name is not followed. */
	snprintf(path, sizeof(path), "%s/stage/00000000000000aa.data", dir);
	tap_ok(!symlink("../hubfs.db", path) &&
		   cache_stage_file_open(c, "00000000000000aa.data", true) == -ELOOP,
	       "a symlink at a staged name: -ELOOP");
	unlink(path);
	close(fd2);
	cache_stage_file_remove(c, name2);
	cache_close(c);
}

/*
 * Journal rows.
 */

static void test_bad_changes(struct cache *c, const char *staged)
{
	char long_repo[CACHE_STAGE_REPO_MAX + 2];
	struct cache_stage_change ch;
	int64_t id;
	int n = 0, refused = 0;

	memset(long_repo, 'r', sizeof(long_repo) - 1);
	long_repo[sizeof(long_repo) - 1] = '\0';
#define REFUSE(setup)                                                                              \
	do {                                                                                       \
		ch = change(CACHE_STAGE_ADD, "ok.bin", staged);                                    \
		setup;                                                                             \
		n++;                                                                               \
		refused += cache_stage_add(c, &ch, &id) == -EINVAL;                                \
	} while (0)
	REFUSE(ch.path = (char *)"../etc/passwd");
	REFUSE(ch.path = (char *)"a//b");
	REFUSE(ch.path = (char *)"a/./b");
	REFUSE(ch.path = (char *)"dir/");
	REFUSE(ch.path = (char *)"");
	REFUSE(ch.path = NULL);
	REFUSE(ch.path = (char *)"a\nb");
	REFUSE(ch.repo = (char *)"");
	REFUSE(ch.repo = long_repo);
	REFUSE(ch.branch = (char *)"ma\tin");
	REFUSE(ch.branch = NULL);
	REFUSE(ch.kind = (enum cache_stage_kind)9);
	REFUSE(ch.staged[0] = '\0');
	REFUSE(strcpy(ch.staged, "../hubfs.db"));
	REFUSE(ch.kind = CACHE_STAGE_DELETE_FILE);		   /* with a staged file */
	REFUSE(ch.kind = CACHE_STAGE_RENAME; ch.staged[0] = '\0'); /* no old_path */
	REFUSE(ch.kind = CACHE_STAGE_RENAME; ch.staged[0] = '\0'; ch.old_path = ch.path);
	REFUSE(ch.old_path = (char *)"x"); /* an add has none */
	REFUSE(strcpy(ch.sha256, "abc"));
	REFUSE(strcpy(ch.base_commit, "4C7798263C7F0C4D1FD2ED8A5BBA2FE1E0B25C6A"));
	REFUSE(ch.size = UINT64_MAX);
#undef REFUSE
	tap_ok(refused == n, "%d bad changes refused: -EINVAL (%d)", n, refused);
	tap_ok(cache_stage_add(c, NULL, &id) == -EINVAL, "no change: -EINVAL");
	ch = change(CACHE_STAGE_ADD, "ok.bin", "0123456789abcdef.data");
	tap_ok(cache_stage_add(c, &ch, &id) == -ENOENT,
	       "a staged file that does not exist: -ENOENT");
}

static void test_rows(const char *dir)
{
	char n1[CACHE_STAGE_NAME_SIZE], n2[CACHE_STAGE_NAME_SIZE], n3[CACHE_STAGE_NAME_SIZE];
	char sha1[65], sha2[65], sha3[65], got[65], big_error[CACHE_STAGE_ERROR_MAX + 100];
	struct cache_stage_change ch, old, *v = NULL, row;
	struct cache_stage_update u = {0};
	struct cache_stage_branch *b = NULL;
	char(*staged)[CACHE_STAGE_NAME_SIZE] = NULL;
	int64_t id[8] = {0}, ids[4];
	uint64_t count = 0, bytes = 0;
	size_t n = 0, nb = 0, updated = 0;
	struct cache *c = open_cache(dir);
	int fd1, fd2, fd3, rc;

	if (!c)
		return;
	fd1 = stage_bytes(c, 1, 1000, n1, sha1);
	fd2 = stage_bytes(c, 2, 70000, n2, sha2);
	ch = change(CACHE_STAGE_ADD, "weights/model.safetensors", n1);
	ch.size = 1000;
	rc = cache_stage_add(c, &ch, &id[0]);
	tap_ok(!rc && id[0] > 0, "add a file: id %lld", (long long)id[0]);
	tap_ok(cache_stage_add(c, &ch, &id[7]) == -EEXIST, "the same path again: -EEXIST");
	ch = change(CACHE_STAGE_ADD, "other.bin", n1);
	tap_ok(cache_stage_add(c, &ch, &id[7]) == -EEXIST, "the same staged file twice: -EEXIST");
	ch = change(CACHE_STAGE_DELETE_FILE, "old.txt", NULL);
	rc = cache_stage_add(c, &ch, &id[1]);
	ch = change(CACHE_STAGE_DELETE_FOLDER, "logs", NULL);
	rc = rc ? rc : cache_stage_add(c, &ch, &id[2]);
	ch = change(CACHE_STAGE_RENAME, "big/new.bin", NULL);
	ch.old_path = (char *)"big/old.bin";
	ch.size = 5ull << 30;
	strcpy(ch.sha256, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
	rc = rc ? rc : cache_stage_add(c, &ch, &id[3]);
	ch = change(CACHE_STAGE_ADD, "README.md", n2);
	ch.branch = (char *)"dev";
	ch.size = 70000;
	memcpy(ch.base_commit, OTHER, sizeof(OTHER));
	rc = rc ? rc : cache_stage_add(c, &ch, &id[4]);
	tap_ok(!rc && id[1] < id[2] && id[2] < id[3] && id[3] < id[4],
	       "a delete, a folder delete, a rename, an add on another branch");
	test_bad_changes(c, n1);

	rc = cache_stage_list(c, REPO, "main", &v, &n);
	tap_ok(!rc && n == 4 && v[0].id == id[0] && v[1].id == id[1] && v[2].id == id[2] &&
		   v[3].id == id[3],
	       "list main: 4 changes in id order");
	tap_ok(!rc && n == 4 && v[0].kind == CACHE_STAGE_ADD && !strcmp(v[0].staged, n1) &&
		   v[0].size == 1000 && v[0].state == CACHE_STAGE_PENDING && !v[0].attempts &&
		   !strcmp(v[0].error, "") && !strcmp(v[0].base_commit, BASE) && !v[0].old_path &&
		   v[0].created_at > 0 && v[0].updated_at == v[0].created_at &&
		   !strcmp(v[0].commit_id, ""),
	       "the add reads back whole");
	tap_ok(!rc && n == 4 && v[3].kind == CACHE_STAGE_RENAME &&
		   !strcmp(v[3].old_path, "big/old.bin") && !strcmp(v[3].path, "big/new.bin") &&
		   v[3].size == 5ull << 30 && !v[3].staged[0] && v[3].sha256[0] == 'a' &&
		   v[1].kind == CACHE_STAGE_DELETE_FILE && v[2].kind == CACHE_STAGE_DELETE_FOLDER,
	       "the rename goes by reference; the deletes have no staged file");
	cache_stage_changes_free(v, n);
	rc = cache_stage_list(c, REPO, "nope", &v, &n);
	tap_ok(!rc && n == 0 && !v, "a branch without changes: none");
	tap_ok(cache_stage_list(c, "", "main", &v, &n) == -EINVAL, "list a bad repo: -EINVAL");

	/* The file written again before its commit. */
	fd3 = stage_bytes(c, 3, 5000, n3, sha3);
	ch = change(CACHE_STAGE_ADD, "weights/model.safetensors", n3);
	ch.size = 5000;
	rc = cache_stage_replace(c, &ch, &id[5], &old);
	tap_ok(!rc && id[5] > id[4] && old.id == id[0] && !strcmp(old.staged, n1),
	       "replace: a new id, the old row handed back with its staged file");
	tap_ok(cache_stage_file_remove(c, old.staged) == 0, "the caller removes the old file");
	cache_stage_change_release(&old);
	ch = change(CACHE_STAGE_ADD, "fresh.txt", n1);
	rc = cache_stage_replace(c, &ch, &id[6], &old);
	tap_ok(rc == -ENOENT, "replace with a removed staged file: -ENOENT");
	ch = change(CACHE_STAGE_DELETE_FILE, "fresh.txt", NULL);
	rc = cache_stage_replace(c, &ch, &id[6], &old);
	tap_ok(!rc && old.id == 0, "replace where the path has no row: an add");
	cache_stage_change_release(&old);
	rc = cache_stage_get(c, id[5], &row);
	tap_ok(!rc && !strcmp(row.staged, n3) && row.size == 5000, "get the new row");
	cache_stage_change_release(&row);
	tap_ok(cache_stage_get(c, id[0], &row) == -ENOENT, "the old id is gone: -ENOENT");

	/* States. */
	ids[0] = id[5];
	ids[1] = id[1];
	ids[2] = id[0]; /* gone: skipped */
	u.set = CACHE_STAGE_SET_STATE | CACHE_STAGE_ADD_ATTEMPT;
	u.state = CACHE_STAGE_UPLOADING;
	rc = cache_stage_update(c, ids, 3, &u, &updated);
	tap_ok(!rc && updated == 2, "uploading: 2 of 3 ids updated");
	memset(big_error, 'e', sizeof(big_error) - 1);
	big_error[sizeof(big_error) - 1] = '\0';
	/* a two-byte character across the cut */
	big_error[CACHE_STAGE_ERROR_MAX - 1] = (char)0xc3;
	big_error[CACHE_STAGE_ERROR_MAX] = (char)0xa9;
	u.set = CACHE_STAGE_SET_STATE | CACHE_STAGE_ADD_ATTEMPT | CACHE_STAGE_SET_ERROR;
	u.state = CACHE_STAGE_FAILED;
	u.error = big_error;
	rc = cache_stage_update(c, ids, 1, &u, &updated);
	rc = rc ? rc : cache_stage_get(c, id[5], &row);
	tap_ok(!rc && row.state == CACHE_STAGE_FAILED && row.attempts == 2 &&
		   strlen(row.error) == CACHE_STAGE_ERROR_MAX - 1 &&
		   row.updated_at >= row.created_at,
	       "failed after 2 attempts; the error cut to %d bytes, on a character",
	       CACHE_STAGE_ERROR_MAX - 1);
	cache_stage_change_release(&row);
	u.set = CACHE_STAGE_SET_ERROR | CACHE_STAGE_SET_ATTEMPTS | CACHE_STAGE_SET_STATE;
	u.state = CACHE_STAGE_CONFLICT;
	u.error = "README.md changed on the Hub";
	u.attempts = 7;
	rc = cache_stage_update(c, &id[4], 1, &u, NULL);
	rc = rc ? rc : cache_stage_get(c, id[4], &row);
	tap_ok(!rc && row.state == CACHE_STAGE_CONFLICT && row.attempts == 7 &&
		   !strcmp(row.error, "README.md changed on the Hub"),
	       "a conflict with its reason");
	cache_stage_change_release(&row);
	u.set = CACHE_STAGE_SET_ATTEMPTS | CACHE_STAGE_ADD_ATTEMPT;
	rc = cache_stage_update(c, ids, 1, &u, NULL);
	u.set = CACHE_STAGE_SET_STATE;
	u.state = (enum cache_stage_state)CACHE_STAGE_STATES;
	rc = rc == -EINVAL ? cache_stage_update(c, ids, 1, &u, NULL) : 0;
	u.set = CACHE_STAGE_SET_COMMIT;
	u.commit_id = "HEAD";
	rc = rc == -EINVAL ? cache_stage_update(c, ids, 1, &u, NULL) : 0;
	u.set = 1u << 9;
	rc = rc == -EINVAL ? cache_stage_update(c, ids, 1, &u, NULL) : 0;
	tap_ok(rc == -EINVAL, "bad updates refused: -EINVAL");
	rc = cache_stage_set_content(c, id[3], 42, sha2);
	rc = rc ? rc : cache_stage_get(c, id[3], &row);
	tap_ok(!rc && row.size == 42 && !strcmp(row.sha256, sha2), "set the content's hash");
	cache_stage_change_release(&row);
	tap_ok(cache_stage_set_content(c, id[0], 1, sha2) == -ENOENT &&
		   cache_stage_set_content(c, id[3], 1, "") == -EINVAL,
	       "set content: a gone id -ENOENT, an empty hash -EINVAL");

	/* Sums. */
	rc = cache_stage_count(c, REPO, "main", &count, &bytes);
	tap_ok(!rc && count == 5 && bytes == 5000, "count main: 5 changes, 5000 bytes to upload");
	rc = cache_stage_branches(c, &b, &nb);
	tap_ok(!rc && nb == 2 && !strcmp(b[0].branch, "dev") && !strcmp(b[1].branch, "main") &&
		   b[0].changes == 1 && b[0].bytes == 70000 &&
		   b[0].by_state[CACHE_STAGE_CONFLICT] == 1 &&
		   !strcmp(b[0].error, "README.md changed on the Hub") &&
		   b[1].by_state[CACHE_STAGE_PENDING] == 3 &&
		   b[1].by_state[CACHE_STAGE_UPLOADING] == 1 &&
		   b[1].by_state[CACHE_STAGE_FAILED] == 1 && b[1].error[0] == 'e',
	       "branches: dev and main with their states and last error");
	cache_stage_branches_free(b, nb);

	/* A commit of the add and the delete of main, on top of BASE. */
	ids[0] = id[5];
	ids[1] = id[1];
	ids[2] = id[4]; /* another branch: skipped */
	ids[3] = 999999;
	rc = cache_stage_committed(c, REPO, "main", ids, 4, BASE, HEAD, &staged, &n);
	tap_ok(!rc && n == 1 && !strcmp(staged[0], n3), "committed: the staged file handed back");
	free(staged);
	rc = cache_stage_list(c, REPO, "main", &v, &n);
	tap_ok(!rc && n == 3 && v[0].id == id[2] && v[1].id == id[3] && v[2].id == id[6],
	       "the committed rows are gone, the others stay");
	tap_ok(!rc && n == 3 && !strcmp(v[0].base_commit, HEAD) && !strcmp(v[2].base_commit, HEAD),
	       "the others were based on the parent: rebased onto the commit");
	cache_stage_changes_free(v, n);
	rc = cache_stage_get(c, id[4], &row);
	tap_ok(!rc && !strcmp(row.base_commit, OTHER), "the other branch is untouched");
	cache_stage_change_release(&row);
	tap_ok(cache_stage_committed(c, REPO, "main", ids, 1, "x", HEAD, &staged, &n) == -EINVAL &&
		   !staged,
	       "a bad parent: -EINVAL");
	tap_ok(staged_sha(c, n3, got) == 0 && !strcmp(got, sha3), "the committed bytes are intact");
	close(fd1);
	close(fd2);
	close(fd3);
	cache_close(c);
}

/*
 * Upload progress: sent per row, summed per branch, reset by a new attempt
 * and by a replace.
 */

static void test_sent(const char *dir)
{
	char n1[CACHE_STAGE_NAME_SIZE], n2[CACHE_STAGE_NAME_SIZE], n3[CACHE_STAGE_NAME_SIZE];
	char sha1[65], sha2[65], sha3[65];
	struct cache_stage_change ch, old, row, *v = NULL;
	struct cache_stage_update u = {0};
	struct cache_stage_branch *b = NULL;
	int64_t id1 = 0, id2 = 0, id3 = 0, idd = 0, at;
	size_t n = 0, nb = 0;
	struct cache *c = open_cache(dir);
	int fd1, fd2, fd3, rc;
	double t0, t1;
	bool ok = true;

	if (!c)
		return;
	fd1 = stage_bytes(c, 21, 3000, n1, sha1);
	fd2 = stage_bytes(c, 22, 5000, n2, sha2);
	fd3 = stage_bytes(c, 23, 100, n3, sha3);
	ch = change(CACHE_STAGE_ADD, "a.bin", n1);
	ch.size = 3000;
	rc = cache_stage_add(c, &ch, &id1);
	ch = change(CACHE_STAGE_ADD, "b.bin", n2);
	ch.size = 5000;
	rc = rc ? rc : cache_stage_add(c, &ch, &id2);
	ch = change(CACHE_STAGE_DELETE_FILE, "gone.txt", NULL);
	rc = rc ? rc : cache_stage_add(c, &ch, &idd);
	rc = rc ? rc : cache_stage_get(c, id1, &row);
	tap_ok(!rc && row.sent == 0, "a new row has sent 0");
	at = row.updated_at;
	cache_stage_change_release(&row);

	usleep(2000); /* so that a changed updated_at would show */
	rc = cache_stage_set_sent(c, id1, 1200);
	rc = rc ? rc : cache_stage_get(c, id1, &row);
	tap_ok(!rc && row.sent == 1200 && row.updated_at == at,
	       "set sent: it reads back, updated_at is left alone");
	cache_stage_change_release(&row);
	rc = cache_stage_set_sent(c, id2, 99999);
	rc = rc ? rc : cache_stage_get(c, id2, &row);
	tap_ok(!rc && row.sent == 5000, "sent is kept at most the row's size");
	cache_stage_change_release(&row);
	tap_ok(cache_stage_set_sent(c, idd, 10) == -ENOENT,
	       "a delete row has no progress: -ENOENT");
	tap_ok(cache_stage_set_sent(c, 999999, 10) == -ENOENT, "a gone id: -ENOENT");
	tap_ok(cache_stage_set_sent(c, id1, (uint64_t)INT64_MAX + 1) == -EINVAL,
	       "sent over INT64_MAX: -EINVAL");

	rc = cache_stage_branches(c, &b, &nb);
	tap_ok(!rc && nb == 1 && b[0].changes == 3 && b[0].bytes == 8000 && b[0].sent == 6200,
	       "the branch sums: 6200 of 8000 bytes sent");
	cache_stage_branches_free(b, nb);

	u.set = CACHE_STAGE_SET_STATE | CACHE_STAGE_SET_ERROR;
	u.state = CACHE_STAGE_FAILED;
	u.error = "commit failed: Connection reset by peer";
	rc = cache_stage_update(c, &id1, 1, &u, NULL);
	rc = rc ? rc : cache_stage_get(c, id1, &row);
	tap_ok(!rc && row.sent == 1200, "a failed attempt keeps what it sent");
	cache_stage_change_release(&row);
	u.set = CACHE_STAGE_SET_STATE | CACHE_STAGE_ADD_ATTEMPT;
	u.state = CACHE_STAGE_UPLOADING;
	rc = cache_stage_update(c, &id1, 1, &u, NULL);
	rc = rc ? rc : cache_stage_get(c, id1, &row);
	tap_ok(!rc && row.sent == 0 && row.attempts == 1, "a new attempt starts from 0");
	cache_stage_change_release(&row);

	ch = change(CACHE_STAGE_ADD, "b.bin", n3);
	ch.size = 100;
	rc = cache_stage_replace(c, &ch, &id3, &old);
	tap_ok(!rc && old.id == id2 && old.sent == 5000,
	       "replace hands back the old row's progress");
	cache_stage_change_release(&old);
	rc = cache_stage_get(c, id3, &row);
	tap_ok(!rc && row.sent == 0, "and the new row starts from 0");
	cache_stage_change_release(&row);
	rc = cache_stage_list(c, REPO, "main", &v, &n);
	tap_ok(!rc && n == 3 && v[0].sent == 0 && v[2].id == id3 && v[2].sent == 0,
	       "list reads sent");
	cache_stage_changes_free(v, n);

	t0 = now_s();
	for (int i = 0; i < 200 && ok; i++)
		ok = !cache_stage_set_sent(c, id3, (uint64_t)i);
	t1 = now_s();
	tap_ok(ok, "200 progress updates");
	tap_diag("set sent: %.3f ms (not synced)", (t1 - t0) * 1e3 / 200);
	close(fd1);
	close(fd2);
	close(fd3);
	cache_close(c);
}

/*
 * Durability: a child adds changes and kills itself with SIGKILL as soon as
 * the last add returns; everything must be there.
 */

enum { KILL_CHANGES = 24 };

static size_t kill_size(unsigned i)
{
	return i == 0 ? 0 : (size_t)(i * 7919u) % (300u << 10);
}

static void kill_child(const char *dir)
{
	struct cache *c = open_cache(dir);
	struct cache_stage_change ch;
	struct cache_stage_update u = {.set = CACHE_STAGE_SET_STATE,
				       .state = CACHE_STAGE_UPLOADING};
	int64_t id = 0;

	if (!c)
		_exit(2);
	for (unsigned i = 0; i < KILL_CHANGES; i++) {
		char name[CACHE_STAGE_NAME_SIZE], path[64];
		int fd;

		snprintf(path, sizeof(path), "dir%u/file%u.bin", i % 3, i);
		ch = change(CACHE_STAGE_ADD, path, NULL);
		ch.size = kill_size(i);
		fd = stage_bytes(c, 100 + i, kill_size(i), name, ch.sha256);
		memcpy(ch.staged, name, sizeof(name));
		if (fd < 0 || cache_stage_add(c, &ch, &id))
			_exit(3);
		/* the fd stays open: the kill closes it */
	}
	if (cache_stage_update(c, &id, 1, &u, NULL))
		_exit(4);
	kill(getpid(), SIGKILL);
	_exit(5);
}

static void test_kill(const char *dir)
{
	struct cache_stage_change *v = NULL;
	struct cache_stage_branch *b = NULL;
	int status = 0, good = 0;
	size_t n = 0, nb = 0;
	struct cache *c;
	pid_t pid;

	fflush(stdout);
	pid = fork();
	if (pid == 0)
		kill_child(dir);
	tap_ok(pid > 0 && waitpid(pid, &status, 0) == pid && WIFSIGNALED(status) &&
		   WTERMSIG(status) == SIGKILL,
	       "the child added %d changes and was killed (SIGKILL)", KILL_CHANGES);
	c = open_cache(dir);
	if (!c)
		return;
	tap_ok(!cache_stage_branches(c, &b, &nb) && nb == 1 && b[0].changes == KILL_CHANGES &&
		   b[0].by_state[CACHE_STAGE_UPLOADING] == 1,
	       "the next open finds the branch and its %d changes", KILL_CHANGES);
	cache_stage_branches_free(b, nb);
	if (!cache_stage_list(c, REPO, "main", &v, &n) && n == KILL_CHANGES) {
		for (unsigned i = 0; i < n; i++) {
			unsigned char *buf = malloc(kill_size(i) + 1);
			char want[CACHE_ID_MAX], got[CACHE_ID_MAX];

			if (!buf)
				break;
			fill(100 + i, buf, kill_size(i));
			cache_id_of_buffer(CACHE_ID_SHA256, buf, kill_size(i), want);
			free(buf);
			good += !staged_sha(c, v[i].staged, got) && !strcmp(got, want) &&
				!strcmp(v[i].sha256, want) && v[i].size == kill_size(i);
		}
	}
	tap_ok(good == KILL_CHANGES, "every staged file has its bytes (sha256): %d of %d", good,
	       KILL_CHANGES);
	tap_ok(!cache_stage_orphans(c, false, NULL, NULL), "the files of the dead child are free");
	cache_stage_changes_free(v, n);
	cache_close(c);
}

/*
 * Orphans.
 */

struct orphans {
	int n;
	char names[8][CACHE_STAGE_LOST_NAME_SIZE]; /* a staged name, or one in lost+found */
	uint64_t sizes[8];
};

static int orphan_seen(void *arg, const char *name, uint64_t size)
{
	struct orphans *o = arg;

	if (o->n < 8) {
		snprintf(o->names[o->n], sizeof(o->names[0]), "%s", name);
		o->sizes[o->n] = size;
	}
	o->n++;
	return 0;
}

/* Whether file @path holds exactly the @len bytes of stream @seed. */
static bool holds(const char *path, unsigned seed, size_t len)
{
	unsigned char *want = malloc(len + 1), *got = malloc(len + 1);
	bool same = false;
	int fd = open(path, O_RDONLY | O_NOFOLLOW);

	if (fd >= 0 && want && got) {
		fill(seed, want, len);
		/* one byte more than expected: a longer file is not the same */
		same = read(fd, got, len + 1) == (ssize_t)len && !memcmp(got, want, len);
	}
	if (fd >= 0)
		close(fd);
	free(want);
	free(got);
	return same;
}

/* Whether @s ends with @end. */
static bool ends_with(const char *s, const char *end)
{
	size_t n = strlen(s), m = strlen(end);

	return n >= m && !strcmp(s + n - m, end);
}

static void test_orphans(const char *dir)
{
	char held[CACHE_STAGE_NAME_SIZE], loose[CACHE_STAGE_NAME_SIZE], kept[CACHE_STAGE_NAME_SIZE];
	char sha[65], path[600], lost[600], tail[CACHE_STAGE_NAME_SIZE + 1];
	struct cache *c = open_cache(dir);
	struct cache_stage_change ch;
	struct orphans o = {0};
	int fd_held, fd_loose, fd_kept, fd, rc;

	if (!c)
		return;
	fd_held = stage_bytes(c, 7, 10, held, sha);
	fd_loose = stage_bytes(c, 8, 123, loose, sha);
	fd_kept = stage_bytes(c, 9, 20, kept, sha);
	ch = change(CACHE_STAGE_ADD, "kept.bin", kept);
	tap_ok(fd_held >= 0 && fd_loose >= 0 && fd_kept >= 0 && !cache_stage_add(c, &ch, NULL),
	       "three staged files, one journaled");
	close(fd_loose);
	close(fd_kept);
	snprintf(path, sizeof(path), "%s/stage/notes.txt", dir);
	fd = open(path, O_CREAT | O_WRONLY, 0600);
	if (fd >= 0)
		close(fd);
	tap_ok(!cache_stage_orphans(c, false, orphan_seen, &o) && o.n == 1 &&
		   !strcmp(o.names[0], loose) && o.sizes[0] == 123,
	       "one orphan: the loose file (the held one is in use)");
	fd = cache_stage_file_open(c, loose, false);
	snprintf(lost, sizeof(lost), "%s/lost+found", dir);
	tap_ok(access(path, F_OK) == 0 && fd >= 0 && access(lost, F_OK) == -1,
	       "listing moves nothing and makes no lost+found");
	if (fd >= 0)
		close(fd);

	o.n = 0;
	snprintf(tail, sizeof(tail), "-%s", loose);
	rc = cache_stage_orphans(c, true, orphan_seen, &o);
	tap_ok(!rc && o.n == 1 && o.sizes[0] == 123 && ends_with(o.names[0], tail) &&
		   strlen(o.names[0]) == 16 + strlen(tail),
	       "moving: the loose file is reported under its name in lost+found (%s)",
	       o.n ? o.names[0] : "none");
	tap_ok(cache_stage_file_open(c, loose, false) == -ENOENT, "it is no longer in DIR/stage");
	tap_ok(mode_of(lost) == 0700, "lost+found was made, mode 0700");
	snprintf(lost, sizeof(lost), "%s/lost+found/%s", dir, o.names[0]);
	tap_ok(holds(lost, 8, 123) && mode_of(lost) == 0600,
	       "it is there with its 123 bytes intact, still 0600");
	fd = cache_stage_file_open(c, kept, false);
	tap_ok(fd >= 0 && access(path, F_OK) == 0, "the journaled file and a foreign file stay");
	if (fd >= 0)
		close(fd);
	fd = cache_stage_file_open(c, held, false);
	tap_ok(fd >= 0, "the file held open (locked) stays in DIR/stage");
	if (fd >= 0)
		close(fd);
	close(fd_held);
	o.n = 0;
	snprintf(tail, sizeof(tail), "-%s", held);
	tap_ok(!cache_stage_orphans(c, true, orphan_seen, &o) && o.n == 1 &&
		   ends_with(o.names[0], tail),
	       "once closed without a row, the held file is an orphan too, moved");
	snprintf(lost, sizeof(lost), "%s/lost+found/%s", dir, o.n ? o.names[0] : "");
	tap_ok(holds(lost, 7, 10), "with its bytes");
	o.n = 0;
	tap_ok(!cache_stage_orphans(c, true, orphan_seen, &o) && o.n == 0,
	       "a walk again finds nothing");
	cache_close(c);
}

struct opener {
	struct cache *c;
	const char *name;
	int fd; /* what cache_stage_file_open() returned */
};

static void *opener_main(void *arg)
{
	struct opener *op = arg;

	op->fd = cache_stage_file_open(op->c, op->name, false);
	return NULL;
}

/* An open that waits for the lock of a file that an orphan walk moves
 * meanwhile gets -ENOENT, not an fd on the file in lost+found (the same
 * check makes a creator that lost the race take another name). */
static void test_lost_race(const char *dir)
{
	char name[CACHE_STAGE_NAME_SIZE], sha[65], from[600], to[600];
	struct cache *c = open_cache(dir);
	struct opener op = {0};
	pthread_t th;
	int fd, walk;

	if (!c)
		return;
	fd = stage_bytes(c, 41, 100, name, sha);
	if (fd >= 0)
		close(fd);
	snprintf(from, sizeof(from), "%s/stage/%s", dir, name);
	snprintf(to, sizeof(to), "%s/moved.data", dir);
	/* what the walk does: the exclusive lock, then the move */
	walk = open(from, O_RDONLY);
	tap_ok(fd >= 0 && walk >= 0 && !flock(walk, LOCK_EX), "a walk holds a staged file");
	op.c = c;
	op.name = name;
	pthread_create(&th, NULL, opener_main, &op);
	usleep(100 * 1000); /* it opens and waits for the lock */
	tap_ok(!rename(from, to), "and moves it");
	close(walk);
	pthread_join(th, NULL);
	tap_ok(op.fd == -ENOENT, "the open that waited gets -ENOENT (%d)", op.fd);
	if (op.fd >= 0)
		close(op.fd);
	cache_close(c);
}

struct lost_seen {
	int n;
	char names[8][CACHE_STAGE_LOST_NAME_SIZE];
	uint64_t sizes[8];
	int64_t mtimes[8];
};

static int lost_seen(void *arg, const char *name, uint64_t size, int64_t mtime)
{
	struct lost_seen *l = arg;

	if (l->n < 8) {
		snprintf(l->names[l->n], sizeof(l->names[0]), "%s", name);
		l->sizes[l->n] = size;
		l->mtimes[l->n] = mtime;
	}
	l->n++;
	return 0;
}

/* Moving into lost+found never overwrites, an empty orphan is removed, and
 * cache_stage_lost() lists what is there. */
static void test_lost(const char *dir)
{
	/* 2023-11-14 22:13:20 UTC */
	const struct timespec when[2] = {{1700000000, 0}, {1700000000, 0}};
	char name[CACHE_STAGE_NAME_SIZE], empty[CACHE_STAGE_NAME_SIZE], sha[65], path[600];
	char want[CACHE_STAGE_LOST_NAME_SIZE];
	static const char precious[] = "not to be overwritten\n";
	struct lost_seen l = {0};
	struct orphans o = {0};
	struct cache *c = open_cache(dir);
	char buf[64];
	int fd, rc;

	if (!c)
		return;
	tap_ok(!cache_stage_lost(c, lost_seen, &l) && l.n == 0, "no lost+found: nothing lost");
	snprintf(path, sizeof(path), "%s/lost+found", dir);
	tap_ok(access(path, F_OK) == -1, "and listing made none");

	fd = stage_bytes(c, 21, 4096, name, sha);
	tap_ok(fd >= 0 && !futimens(fd, when),
	       "a staged file of 4096 bytes last written at 2023-11-14 22:13:20 UTC");
	if (fd >= 0)
		close(fd);
	/* the name it would get, taken by a file of the user's */
	snprintf(want, sizeof(want), "20231114T221320Z-%s", name);
	snprintf(path, sizeof(path), "%s/lost+found", dir);
	mkdir(path, 0755);
	snprintf(path, sizeof(path), "%s/lost+found/%s", dir, want);
	fd = open(path, O_CREAT | O_WRONLY | O_EXCL, 0600);
	tap_ok(fd >= 0 && write(fd, precious, sizeof(precious) - 1) == sizeof(precious) - 1,
	       "lost+found has a file of that name already");
	if (fd >= 0)
		close(fd);
	fd = cache_stage_file_create(c, empty);
	if (fd >= 0)
		close(fd);

	snprintf(want, sizeof(want), "20231114T221320Z-%.16s-1.data", name);
	rc = cache_stage_orphans(c, true, orphan_seen, &o);
	tap_ok(!rc && o.n == 1 && !strcmp(o.names[0], want) && o.sizes[0] == 4096,
	       "the orphan gets another name: %s", o.n ? o.names[0] : "none");
	fd = open(path, O_RDONLY);
	memset(buf, 0, sizeof(buf));
	tap_ok(fd >= 0 && read(fd, buf, sizeof(buf)) == sizeof(precious) - 1 &&
		   !strcmp(buf, precious),
	       "the file that was there is not overwritten");
	if (fd >= 0)
		close(fd);
	snprintf(path, sizeof(path), "%s/lost+found/%s", dir, want);
	tap_ok(holds(path, 21, 4096), "the orphan's bytes are intact");
	snprintf(path, sizeof(path), "%s/lost+found", dir);
	tap_ok(mode_of(path) == 0700, "a lost+found others could enter is made private");
	tap_ok(cache_stage_file_open(c, empty, false) == -ENOENT,
	       "the empty orphan is removed: nothing to keep");

	tap_ok(!cache_stage_lost(c, lost_seen, &l) && l.n == 2, "lost+found lists 2 files");
	/* "...-1.data" before "....data": '-' sorts before '.' */
	snprintf(want, sizeof(want), "20231114T221320Z-%.16s-1.data", name);
	tap_ok(l.n == 2 && !strcmp(l.names[0], want) && l.sizes[0] == 4096 &&
		   l.mtimes[0] == 1700000000000,
	       "in name order: the orphan, with its size and mtime (ms)");
	snprintf(want, sizeof(want), "20231114T221320Z-%s", name);
	tap_ok(l.n == 2 && !strcmp(l.names[1], want) && l.sizes[1] == sizeof(precious) - 1,
	       "then the user's file");
	snprintf(path, sizeof(path), "%s/lost+found/sub", dir);
	mkdir(path, 0700);
	l.n = 0;
	tap_ok(!cache_stage_lost(c, lost_seen, &l) && l.n == 2, "a directory there is not listed");
	cache_close(c);
	c = open_cache(dir);
	l.n = 0;
	tap_ok(c && !cache_stage_lost(c, lost_seen, &l) && l.n == 2, "reopened: still there");
	cache_close(c);
}

/*
 * Clear keeps the journal.
 */

static void test_clear(const char *dir)
{
	char name[CACHE_STAGE_NAME_SIZE], sha[65], got[65];
	struct cache_stage_change ch, *v = NULL;
	struct cache *c = open_cache(dir);
	size_t n = 0;
	int fd;

	if (!c)
		return;
	fd = stage_bytes(c, 11, 4096, name, sha);
	ch = change(CACHE_STAGE_ADD, "keep/me.bin", name);
	tap_ok(fd >= 0 && !cache_stage_add(c, &ch, NULL) && !cache_kv_put(c, "ref/x", "y", 1, 1),
	       "a change and a pair before clear");
	if (fd >= 0)
		close(fd);
	cache_close(c);
	tap_ok(cache_clear(dir, NULL) == 0, "clear");
	c = open_cache(dir);
	if (!c)
		return;
	tap_ok(cache_kv_get(c, "ref/x", (void **)&v, NULL, NULL) == -ENOENT, "the pair is gone");
	v = NULL;
	tap_ok(!cache_stage_list(c, REPO, "main", &v, &n) && n == 1 &&
		   !strcmp(v[0].path, "keep/me.bin"),
	       "the journal is kept");
	tap_ok(!staged_sha(c, name, got) && !strcmp(got, sha), "and so are the staged bytes");
	cache_stage_changes_free(v, n);
	cache_close(c);
}

/*
 * Upgrade: an index of version 1 (before the journal) becomes version 2 and
 * keeps what it had.
 */

static const char schema_v1[] =
    "CREATE TABLE blobs (row INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,"
    " size INTEGER NOT NULL, chunk_size INTEGER NOT NULL, present BLOB,"
    " chunks INTEGER NOT NULL, bytes INTEGER NOT NULL, complete INTEGER NOT NULL,"
    " last_used INTEGER NOT NULL);"
    "CREATE INDEX blobs_lru ON blobs (last_used);"
    "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;"
    "INSERT INTO counters VALUES ('hits', 3), ('misses', 4);"
    "CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB NOT NULL,"
    " fetched_at INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE TABLE trees (tree INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE);"
    "CREATE TABLE tree_dirs (dir INTEGER PRIMARY KEY, tree INTEGER NOT NULL,"
    " path TEXT NOT NULL, complete INTEGER NOT NULL, UNIQUE (tree, path));"
    "CREATE TABLE tree_entries (dir INTEGER NOT NULL, name TEXT NOT NULL,"
    " is_dir INTEGER NOT NULL, size INTEGER NOT NULL, oid TEXT NOT NULL,"
    " sha256 TEXT NOT NULL, PRIMARY KEY (dir, name)) WITHOUT ROWID;"
    "INSERT INTO kv VALUES ('ref/model/alice/tiny/main', CAST('abc' AS BLOB), 17);"
    "PRAGMA journal_mode = WAL; PRAGMA user_version = 1;";

/* Makes DIR/hubfs.db of version 1 with the sqlite3 shell, or (without one)
 * marks a version 2 index as version 1, which tests the upgrade step but not
 * the table it creates.  Returns true with the shell. */
static bool make_v1(const char *dir)
{
	static const unsigned char v1[4] = {0, 0, 0, 1};
	char cmd[700], path[600];
	struct cache *c;
	FILE *p;
	int fd;

	snprintf(path, sizeof(path), "%s/hubfs.db", dir);
	if (mkdir(dir, 0700) == 0 && !system("command -v sqlite3 >/dev/null 2>&1")) {
		snprintf(cmd, sizeof(cmd), "sqlite3 '%s' >/dev/null", path);
		p = popen(cmd, "w");
		if (p && fputs(schema_v1, p) >= 0 && pclose(p) == 0)
			return true;
	}
	tap_diag("no sqlite3 shell: marking a new index as version 1");
	c = open_cache(dir);
	if (c)
		cache_kv_put(c, "ref/model/alice/tiny/main", "abc", 3, 17);
	cache_close(c);
	fd = open(path, O_RDWR);
	if (fd >= 0) {
		if (pwrite(fd, v1, 4, 60) != 4)
			tap_diag("cannot write the version");
		close(fd);
	}
	return false;
}

static void test_upgrade(const char *dir)
{
	char path[600], name[CACHE_STAGE_NAME_SIZE], sha[65];
	unsigned char version[4] = {0};
	struct cache_stage_change ch, *v = NULL;
	struct cache_stage_branch *b = NULL;
	struct cache_stats st;
	size_t n = 0, nb = 0;
	struct cache *c;
	void *val = NULL;
	size_t len = 0;
	int64_t at = 0;
	int fd, sfd;

	make_v1(dir);
	snprintf(path, sizeof(path), "%s/hubfs.db", dir);
	fd = open(path, O_RDONLY);
	tap_ok(fd >= 0 && pread(fd, version, 4, 60) == 4 && version[3] == 1,
	       "an index of version 1");
	c = open_cache(dir);
	tap_ok(c != NULL, "opens");
	if (!c)
		goto close_fd;
	tap_ok(!cache_kv_get(c, "ref/model/alice/tiny/main", &val, &len, &at) && len == 3 &&
		   !memcmp(val, "abc", 3) && at == 17,
	       "its metadata is kept");
	free(val);
	tap_ok(!cache_stats(c, &st), "its statistics read");
	tap_ok(!cache_stage_branches(c, &b, &nb) && nb == 0, "an empty journal");
	sfd = stage_bytes(c, 12, 10, name, sha);
	ch = change(CACHE_STAGE_ADD, "a.txt", name);
	tap_ok(sfd >= 0 && !cache_stage_add(c, &ch, NULL) &&
		   !cache_stage_list(c, REPO, "main", &v, &n) && n == 1,
	       "the journal works");
	if (sfd >= 0)
		close(sfd);
	cache_stage_changes_free(v, n);
	cache_close(c);
	/* at close the WAL is checkpointed into the file */
	tap_ok(pread(fd, version, 4, 60) == 4 && version[3] == INDEX_VERSION,
	       "and is now version %d", INDEX_VERSION);
	c = open_cache(dir);
	tap_ok(c && !cache_stage_list(c, REPO, "main", &v, &n) && n == 1,
	       "and is there after reopening");
	cache_stage_changes_free(v, n);
	cache_close(c);
close_fd:
	if (fd >= 0)
		close(fd);
}

/*
 * Upgrade: an index of version 2 (a journal without upload progress) gets
 * the column and keeps its rows.
 */

static const char schema_v2_stage[] =
    "CREATE TABLE stage (id INTEGER PRIMARY KEY AUTOINCREMENT, repo TEXT NOT NULL,"
    " branch TEXT NOT NULL,"
    " kind TEXT NOT NULL CHECK (kind IN ('add', 'delete-file', 'delete-folder', 'rename')),"
    " path TEXT NOT NULL, old_path TEXT, staged TEXT UNIQUE, size INTEGER NOT NULL,"
    " sha256 TEXT NOT NULL, base_commit TEXT NOT NULL, state TEXT NOT NULL CHECK (state IN"
    "  ('pending', 'uploading', 'committing', 'conflict', 'failed')),"
    " error TEXT NOT NULL, attempts INTEGER NOT NULL, created_at INTEGER NOT NULL,"
    " updated_at INTEGER NOT NULL, commit_id TEXT NOT NULL, UNIQUE (repo, branch, path));"
    "INSERT INTO stage (repo, branch, kind, path, old_path, staged, size, sha256, base_commit,"
    " state, error, attempts, created_at, updated_at, commit_id) VALUES"
    " ('model/alice/tiny', 'main', 'add', 'w.bin', NULL, '%s', 10, '', '', 'failed',"
    " 'commit failed: Permission denied', 1, 5, 6, '');"
    "PRAGMA user_version = 2;";

/* Makes DIR/hubfs.db of version 2 holding a failed ADD row of staged file
 * @name (10 bytes) with the sqlite3 shell, or (without one) journals that
 * row in a new index and marks it version 2, which tests the upgrade step
 * but not the column it adds. */
static void make_v2(const char *dir, char name[CACHE_STAGE_NAME_SIZE])
{
	static const unsigned char v2[4] = {0, 0, 0, 2};
	struct cache_stage_update u = {.set = CACHE_STAGE_SET_STATE | CACHE_STAGE_SET_ERROR |
					      CACHE_STAGE_ADD_ATTEMPT,
				       .state = CACHE_STAGE_FAILED,
				       .error = "commit failed: Permission denied"};
	char cmd[1400], path[600], sha[65], sql[sizeof(schema_v1) + sizeof(schema_v2_stage) + 64];
	struct cache_stage_change ch;
	struct cache *c;
	bool shell;
	int64_t id = 0;
	FILE *p;
	int fd;

	snprintf(path, sizeof(path), "%s/hubfs.db", dir);
	/* the staged file first: a cache made here makes a version 4 index */
	c = open_cache(dir);
	fd = c ? stage_bytes(c, 31, 10, name, sha) : -1;
	if (fd >= 0)
		close(fd);
	shell = !system("command -v sqlite3 >/dev/null 2>&1");
	if (shell) {
		cache_close(c);
		c = NULL;
		unlink(path);
		snprintf(cmd, sizeof(cmd), "rm -f '%s-wal' '%s-shm'", path, path);
		if (system(cmd))
			tap_diag("cannot remove the WAL");
		snprintf(sql, sizeof(sql), "%.*s",
			 (int)(strlen(schema_v1) - strlen("PRAGMA user_version = 1;")), schema_v1);
		snprintf(sql + strlen(sql), sizeof(sql) - strlen(sql), schema_v2_stage, name);
		snprintf(cmd, sizeof(cmd), "sqlite3 '%s' >/dev/null", path);
		p = popen(cmd, "w");
		if (p && fputs(sql, p) >= 0 && pclose(p) == 0)
			return;
		tap_diag("the sqlite3 shell failed: marking a new index as version 2");
		c = open_cache(dir);
	} else {
		tap_diag("no sqlite3 shell: marking a new index as version 2");
	}
	ch = change(CACHE_STAGE_ADD, "w.bin", name);
	ch.size = 10;
	if (!c || cache_stage_add(c, &ch, &id) || cache_stage_update(c, &id, 1, &u, NULL))
		tap_diag("cannot journal the row");
	cache_close(c);
	fd = open(path, O_RDWR);
	if (fd >= 0) {
		if (pwrite(fd, v2, 4, 60) != 4)
			tap_diag("cannot write the version");
		close(fd);
	}
}

static void test_upgrade_v2(const char *dir)
{
	char path[600], name[CACHE_STAGE_NAME_SIZE] = "";
	unsigned char version[4] = {0};
	struct cache_stage_change *v = NULL;
	struct cache_stage_branch *b = NULL;
	size_t n = 0, nb = 0;
	struct cache *c;
	int fd, rc;

	make_v2(dir, name);
	snprintf(path, sizeof(path), "%s/hubfs.db", dir);
	fd = open(path, O_RDONLY);
	tap_ok(fd >= 0 && pread(fd, version, 4, 60) == 4 && version[3] == 2,
	       "an index of version 2");
	c = open_cache(dir);
	tap_ok(c != NULL, "opens");
	if (!c)
		goto close_fd;
	rc = cache_stage_list(c, REPO, "main", &v, &n);
	tap_ok(!rc && n == 1 && !strcmp(v[0].path, "w.bin") && !strcmp(v[0].staged, name) &&
		   v[0].state == CACHE_STAGE_FAILED && v[0].attempts == 1 && v[0].sent == 0 &&
		   !strcmp(v[0].error, "commit failed: Permission denied"),
	       "its row is kept, with sent 0");
	tap_ok(!rc && n == 1 && !cache_stage_set_sent(c, v[0].id, 4), "progress can be set");
	rc = cache_stage_branches(c, &b, &nb);
	tap_ok(!rc && nb == 1 && b[0].bytes == 10 && b[0].sent == 4 &&
		   b[0].by_state[CACHE_STAGE_FAILED] == 1,
	       "and is summed");
	cache_stage_branches_free(b, nb);
	cache_stage_changes_free(v, n);
	cache_close(c);
	tap_ok(pread(fd, version, 4, 60) == 4 && version[3] == INDEX_VERSION,
	       "and is now version %d", INDEX_VERSION);
	c = open_cache(dir);
	tap_ok(c && !cache_stage_list(c, REPO, "main", &v, &n) && n == 1 && v[0].sent == 4,
	       "reopened: the row and its progress are there");
	if (c && n == 1) {
		struct cache_stage_change ch = change(CACHE_STAGE_DELETE_FILE, "x.txt", NULL);
		int64_t id = 0, old = v[0].id;

		tap_ok(!cache_stage_add(c, &ch, &id) && id > old,
		       "a row added after the upgrade gets a new id (%lld > %lld)", (long long)id,
		       (long long)old);
	}
	cache_stage_changes_free(v, n);
	cache_close(c);
close_fd:
	if (fd >= 0)
		close(fd);
}

/*
 * Cost of a durable add, for the record.
 */

static void test_cost(const char *dir)
{
	enum { ADDS = 200 };
	struct cache *c = open_cache(dir);
	struct cache_stage_update u = {.set = CACHE_STAGE_ADD_ATTEMPT};
	struct cache_stage_change ch;
	double t0, t1, t2, t3;
	int64_t id = 0;
	bool ok = true;

	if (!c)
		return;
	t0 = now_s();
	for (int i = 0; i < ADDS && ok; i++) {
		char path[32];

		snprintf(path, sizeof(path), "gone/%d", i);
		ch = change(CACHE_STAGE_DELETE_FILE, path, NULL);
		ok = !cache_stage_add(c, &ch, &id);
	}
	t1 = now_s();
	for (int i = 0; i < ADDS && ok; i++)
		ok = !cache_stage_update(c, &id, 1, &u, NULL);
	t2 = now_s();
	for (int i = 0; i < ADDS && ok; i++) {
		char name[CACHE_STAGE_NAME_SIZE];
		int fd = cache_stage_file_create(c, name);

		ok = fd >= 0 && !close(fd);
	}
	t3 = now_s();
	tap_ok(ok, "%d adds, %d updates, %d staged files", ADDS, ADDS, ADDS);
	tap_diag("journal add: %.3f ms, update: %.3f ms, staged file create: %.3f ms (synced)",
		 (t1 - t0) * 1e3 / ADDS, (t2 - t1) * 1e3 / ADDS, (t3 - t2) * 1e3 / ADDS);
	cache_close(c);
}

static int double_cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

/* What the daemon pays at the release of a written file: the add of an ADD
 * row naming a staged file of 4 KiB just written (its bytes in the page
 * cache), the median of ADDS. */
static void test_cost_file(const char *dir)
{
	enum { ADDS = 200, SIZE = 4096 };
	struct cache *c = open_cache(dir);
	double ms[ADDS];
	bool ok = true;
	int i;

	if (!c)
		return;
	for (i = 0; i < ADDS && ok; i++) {
		char name[CACHE_STAGE_NAME_SIZE], path[32];
		struct cache_stage_change ch;
		double t0;
		int fd;

		snprintf(path, sizeof(path), "files/%d.bin", i);
		ch = change(CACHE_STAGE_ADD, path, NULL);
		ch.size = SIZE;
		fd = stage_bytes(c, 500 + (unsigned)i, SIZE, name, ch.sha256);
		memcpy(ch.staged, name, sizeof(name));
		t0 = now_s();
		ok = fd >= 0 && !cache_stage_add(c, &ch, NULL);
		ms[i] = (now_s() - t0) * 1e3;
		if (fd >= 0)
			close(fd);
	}
	tap_ok(ok, "%d adds of a staged file of %d bytes", ADDS, SIZE);
	if (ok) {
		qsort(ms, ADDS, sizeof(ms[0]), double_cmp);
		tap_diag("add of a 4 KiB staged file: median %.3f ms, 90th percentile %.3f ms",
			 ms[ADDS / 2], ms[ADDS * 9 / 10]);
	}
	cache_close(c);
}

/* A change undone or dropped: its rows go without a commit; a conflicted
 * row can be based on a new head. */
static void test_forget(const char *dir)
{
	char n1[CACHE_STAGE_NAME_SIZE], sha1[65];
	char(*staged)[CACHE_STAGE_NAME_SIZE] = NULL;
	struct cache_stage_change ch, row, *v = NULL;
	struct cache_stage_update u = {0};
	int64_t id1 = 0, id2 = 0, id3 = 0, ids[2];
	size_t n = 0, nv = 0;
	struct cache *c = open_cache(dir);
	int fd1, rc;

	if (!c)
		return;
	fd1 = stage_bytes(c, 31, 1000, n1, sha1);
	ch = change(CACHE_STAGE_ADD, "kept.bin", n1);
	ch.size = 1000;
	rc = cache_stage_add(c, &ch, &id1);
	ch = change(CACHE_STAGE_DELETE_FILE, "old.txt", NULL);
	rc = rc ? rc : cache_stage_add(c, &ch, &id2);
	ch = change(CACHE_STAGE_DELETE_FILE, "other.txt", NULL);
	rc = rc ? rc : cache_stage_add(c, &ch, &id3);
	tap_ok(!rc, "three rows are journaled");

	u.set = CACHE_STAGE_SET_STATE | CACHE_STAGE_SET_BASE | CACHE_STAGE_SET_ERROR;
	u.state = CACHE_STAGE_PENDING;
	u.base_commit = HEAD;
	u.error = NULL;
	rc = cache_stage_update(c, &id3, 1, &u, NULL);
	rc = rc ? rc : cache_stage_get(c, id3, &row);
	tap_ok(!rc && !strcmp(row.base_commit, HEAD) && row.state == CACHE_STAGE_PENDING,
	       "SET_BASE bases a row on another head");
	cache_stage_change_release(&row);
	u.base_commit = "";
	tap_ok(cache_stage_update(c, &id3, 1, &u, NULL) == -EINVAL, "SET_BASE of \"\": -EINVAL");
	u.base_commit = "xyz";
	tap_ok(cache_stage_update(c, &id3, 1, &u, NULL) == -EINVAL, "SET_BASE of a bad id: -EINVAL");

	ids[0] = id1;
	ids[1] = id2;
	rc = cache_stage_forget(c, REPO, "other-branch", ids, 2, &staged, &n);
	tap_ok(!rc && n == 0, "forget skips rows of another branch");
	free(staged);
	staged = NULL;
	rc = cache_stage_forget(c, REPO, "main", ids, 2, &staged, &n);
	tap_ok(!rc && n == 1 && !strcmp(staged[0], n1), "forget hands back the staged file");
	free(staged);
	rc = cache_stage_list(c, REPO, "main", &v, &nv);
	tap_ok(!rc && nv == 1 && v[0].id == id3 && !strcmp(v[0].base_commit, HEAD),
	       "the other row stays, not rebased");
	cache_stage_changes_free(v, nv);
	if (fd1 >= 0)
		close(fd1);
	cache_close(c);
}

/*
 * The states of version 4: refused rows are set aside, local rows never
 * count as changes to commit.
 */
static void test_states(const char *dir)
{
	struct cache_stage_update u = {.set = CACHE_STAGE_SET_STATE | CACHE_STAGE_SET_ERROR};
	struct cache_stage_branch *b = NULL;
	struct cache_stage_change ch, *v = NULL;
	int64_t id1 = 0, id2 = 0, id3 = 0, id4 = 0;
	uint64_t count = 0, bytes = 0;
	size_t nb = 0, nv = 0;
	struct cache *c = open_cache(dir);
	int rc;

	if (!c)
		return;
	ch = change(CACHE_STAGE_DELETE_FILE, "a.txt", NULL);
	rc = cache_stage_add(c, &ch, &id1);
	ch = change(CACHE_STAGE_DELETE_FILE, ".a.txt.swp", NULL);
	rc = rc ? rc : cache_stage_add(c, &ch, &id2);
	ch = change(CACHE_STAGE_DELETE_FOLDER, "gone", NULL);
	rc = rc ? rc : cache_stage_add(c, &ch, &id3);
	tap_ok(!rc, "three rows");
	u.state = CACHE_STAGE_LOCAL;
	rc = cache_stage_update(c, &id2, 1, &u, NULL);
	u.state = CACHE_STAGE_REFUSED;
	u.error = "refused: 404 EntryNotFound";
	rc = rc ? rc : cache_stage_update(c, &id3, 1, &u, NULL);
	tap_ok(!rc, "a row becomes local, another refused");
	rc = cache_stage_count(c, REPO, "main", &count, NULL);
	tap_ok(!rc && count == 2, "a local row is not a change to commit (count %llu)",
	       (unsigned long long)count);
	rc = cache_stage_branches(c, &b, &nb);
	tap_ok(!rc && nb == 1 && b[0].changes == 3 && b[0].by_state[CACHE_STAGE_LOCAL] == 1 &&
		   b[0].by_state[CACHE_STAGE_REFUSED] == 1 && b[0].by_state[CACHE_STAGE_PENDING] == 1 &&
		   !strcmp(b[0].error, "refused: 404 EntryNotFound"),
	       "branches: one pending, one refused with its reason, one local");
	cache_stage_branches_free(b, nb);
	cache_close(c);
	c = open_cache(dir);
	rc = c ? cache_stage_list(c, REPO, "main", &v, &nv) : -EIO;
	tap_ok(!rc && nv == 3 && v[1].state == CACHE_STAGE_LOCAL &&
		   v[2].state == CACHE_STAGE_REFUSED,
	       "reopened: the states are kept");
	cache_stage_changes_free(v, nv);
	ch = change(CACHE_STAGE_DELETE_FILE, "b.txt", NULL);
	tap_ok(c && !cache_stage_add(c, &ch, &id4) && id4 > id3, "ids still grow");
	cache_close(c);
	(void)bytes;
}

int main(void)
{
	char dir[256];

	if (!mkdtemp(top)) {
		perror("mkdtemp");
		return 1;
	}
	new_dir(dir, sizeof(dir));
	test_files(dir);
	new_dir(dir, sizeof(dir));
	test_rows(dir);
	new_dir(dir, sizeof(dir));
	test_kill(dir);
	new_dir(dir, sizeof(dir));
	test_orphans(dir);
	new_dir(dir, sizeof(dir));
	test_lost(dir);
	new_dir(dir, sizeof(dir));
	test_lost_race(dir);
	new_dir(dir, sizeof(dir));
	test_clear(dir);
	new_dir(dir, sizeof(dir));
	test_upgrade(dir);
	new_dir(dir, sizeof(dir));
	test_upgrade_v2(dir);
	new_dir(dir, sizeof(dir));
	test_sent(dir);
	new_dir(dir, sizeof(dir));
	test_forget(dir);
	new_dir(dir, sizeof(dir));
	test_states(dir);
	new_dir(dir, sizeof(dir));
	test_cost(dir);
	new_dir(dir, sizeof(dir));
	test_cost_file(dir);
	nftw(top, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	return tap_done();
}
