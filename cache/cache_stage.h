/*
 * The write journal: the staged changes of writable branches, kept in the
 * cache directory until the Hub has them.  The durability backbone of writes:
 * what a function here returned 0 for survives a crash of the process.
 *
 * Two stores, typed by hubfs structs (only cache_index.c sees SQLite):
 * - staged files, DIR/stage/<name> (mode 0700, files 0600): the new content
 *   of files being written.  The library chooses every name (16 random hex
 *   digits + ".data", see cache_stage_name_valid()); a name from elsewhere is
 *   checked before it becomes a path.
 * - journal rows in the index, one per change of a repo and branch: an add
 *   (the content is a staged file), a deleted file, a deleted folder, or a
 *   rename (an LFS file moved by reference: no staged file).  At most one row
 *   per (repo, branch, path); the ids grow and are never reused, so an id
 *   held by a commit in flight never names a newer change.
 *
 * The life of a change: cache_stage_file_create(), writes to the fd,
 * cache_stage_add() (or cache_stage_replace() when the path has a row
 * already) before the fd is closed; the commit worker lists the rows of a
 * branch, moves them through the states, and calls cache_stage_committed()
 * when the Hub has the commit, which forgets them and hands back their staged
 * files (to become cache blobs, or to be removed).  After a crash the next
 * mount lists the branches with rows and resumes them.
 *
 * Staged files in use: a staged file is flock(2)ed (shared) through every fd
 * that cache_stage_file_create() and cache_stage_file_open() return, as long
 * as that fd is open.  cache_stage_orphans() never moves a locked file, so
 * another mount sharing the cache, or this one, may hold a staged file that
 * has no row yet.  Keep the fd of a new staged file open until its row is
 * added.
 *
 * Lost and found: a staged file that holds bytes and that no row names (the
 * row was lost: an index truncated, its WAL lost after a crash) is never
 * removed.  cache_stage_orphans() moves it to DIR/lost+found (mode 0700,
 * made on demand), where the user finds it (cache_stage_lost(), `hubfs
 * status`), copies what they need and deletes it.  The library never
 * deletes anything there.
 *
 * Durability:
 * - A crash of the process (SIGKILL, abort, the OOM killer): every row change
 *   that returned 0 is committed to the WAL and survives, and so do the bytes
 *   written to a staged file (they are in the kernel's page cache).
 * - A power failure or a kernel crash: journal writes are synced
 *   (synchronous=FULL: the WAL is fsync'ed at every commit of a journal
 *   write), so a row that was added survives.  So do the bytes it points
 *   at: cache_stage_add() and cache_stage_replace() fdatasync an ADD's
 *   staged file before they write its row, and its name is durable since
 *   cache_stage_file_create() (which syncs DIR/stage).  A row never points
 *   at bytes that are not on disk; bytes written to a staged file after its
 *   row (the daemon never does: a journaled file does not change) are not
 *   covered.  fsync(2) of a hubfs file commits to the Hub, which is what
 *   makes data safe as POSIX defines it.
 *   Cost, measured on ext4 (virtio disk): an add 0.35-0.55 ms synced against
 *   0.05-0.07 ms with synchronous=NORMAL; the add of an ADD row of a 4 KiB
 *   staged file just written, median of 200, 1.1-1.2 ms with its fdatasync
 *   against 0.6 ms without (test_cache_stage prints it); a staged file
 *   create 0.7 ms with its directory fsync.  Paid once per file closed, not
 *   per write.
 * - Upload progress (cache_stage_set_sent()) is the exception: it is written
 *   with synchronous=NORMAL, not synced.  It survives a crash of the process;
 *   a power failure may lose the last values (the next journal write syncs
 *   them along).  It only informs `hubfs status`, and a new upload attempt
 *   starts it from 0 anyway, so it is not worth an fsync a second per file.
 * - A row lost while its staged file survives (an index truncated, a WAL
 *   lost after a crash): the bytes are kept, see Lost and found above.
 *
 * Repo keys and branches are opaque text, 1 to CACHE_STAGE_REPO_MAX and
 * CACHE_STAGE_BRANCH_MAX bytes, no control characters.  Paths are repo paths
 * as in cache_meta.h ("" is refused).  Commit ids are "" or 40 lowercase hex
 * digits, sha256 "" or 64.  Every function checks what it is given and
 * answers -EINVAL.
 *
 * Thread safety: every function may be called from any thread.  Writes are
 * serialised by the index; reads never wait for a write in progress.
 */
#ifndef HUBFS_CACHE_STAGE_H
#define HUBFS_CACHE_STAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct cache;

/* Bounds of what the journal accepts. */
#define CACHE_STAGE_REPO_MAX 512
#define CACHE_STAGE_BRANCH_MAX 256
#define CACHE_STAGE_ERROR_MAX 4096 /* longer error texts are cut */
/* A staged file's name: 16 hex digits, ".data", the NUL. */
#define CACHE_STAGE_NAME_SIZE 22
/* Room for the name cache_stage_orphans() gives a file in lost+found:
 * "YYYYmmddTHHMMSSZ-" (its mtime, UTC), its staged name, maybe "-N" before
 * ".data", the NUL. */
#define CACHE_STAGE_LOST_NAME_SIZE 64

enum cache_stage_kind {
	CACHE_STAGE_ADD,	   /* path gets the content of staged */
	CACHE_STAGE_DELETE_FILE,   /* path is deleted */
	CACHE_STAGE_DELETE_FOLDER, /* path and everything under it is deleted */
	CACHE_STAGE_RENAME,	   /* old_path moves to path by reference (an LFS
				      file, sha256 and size set): no staged file */
};

enum cache_stage_state {
	CACHE_STAGE_PENDING,	/* waits for the commit worker */
	CACHE_STAGE_UPLOADING,	/* its content is being uploaded */
	CACHE_STAGE_COMMITTING, /* part of a commit request sent to the Hub */
	CACHE_STAGE_CONFLICT,	/* the path changed remotely: kept, not retried */
	CACHE_STAGE_FAILED,	/* the last attempt failed: error says why */
	CACHE_STAGE_REFUSED,	/* set aside, not retried until the path changes again:
				   the Hub refused it, or its staged file is gone
				   (error says why) */
	CACHE_STAGE_LOCAL,	/* a scratch file: kept, never committed */
};
#define CACHE_STAGE_STATES 7

/* One journal row.  Strings are owned by the struct when it was filled by
 * this library (release with cache_stage_change_release()); when the caller
 * fills one to add it, they are borrowed for the call. */
struct cache_stage_change {
	int64_t id; /* set by the journal */
	char *repo;
	char *branch;
	enum cache_stage_kind kind;
	char *path;
	char *old_path;			    /* RENAME: the source; NULL otherwise */
	char staged[CACHE_STAGE_NAME_SIZE]; /* ADD: the staged file; "" otherwise */
	uint64_t size;			    /* bytes of the content (ADD, RENAME) */
	char sha256[65];		    /* of the content, or "" until known */
	char base_commit[41];		    /* the branch head the change was based on */
	enum cache_stage_state state;	    /* set by the journal: PENDING when added */
	char *error;			    /* "" when none; set by the journal */
	uint32_t attempts;		    /* set by the journal */
	int64_t created_at, updated_at;	    /* ms since the epoch; set by the journal */
	char commit_id[41];		    /* "" until cache_stage_update() records one */
	uint64_t sent; /* set by the journal: ADD, bytes of the content sent to the
			  Hub in the current upload attempt (cache_stage_set_sent());
			  0 when added or replaced, and at each new attempt */
};

/* Frees the strings of @ch and clears it.  NULL is a no-op. */
void cache_stage_change_release(struct cache_stage_change *ch);

/* Releases @n changes and frees the array @v.  NULL is a no-op. */
void cache_stage_changes_free(struct cache_stage_change *v, size_t n);

/*
 * Staged files.
 */

/* True if @name is a name this library gives staged files. */
bool cache_stage_name_valid(const char *name);

/* Creates a new, empty staged file with a fresh name, written into @name.
 * Returns its fd (>= 0, open read-write, close-on-exec, locked shared as
 * said above; the caller closes it), or -errno (-ENOSPC ...). */
int cache_stage_file_create(struct cache *c, char name[CACHE_STAGE_NAME_SIZE]);

/* Opens staged file @name, read-write with @write, read-only otherwise.
 * Returns its fd (locked shared; the caller closes it), -EINVAL for a name
 * that is not a staged file's, -ENOENT, or -errno. */
int cache_stage_file_open(struct cache *c, const char *name, bool write);

/* Removes staged file @name.  Returns 0, -EINVAL, -ENOENT or -errno.  An fd
 * open on it keeps working. */
int cache_stage_file_remove(struct cache *c, const char *name);

/* Called by cache_stage_orphans() for each orphan with its name (borrowed)
 * and size.  A non-zero return stops the walk and is returned. */
typedef int (*cache_stage_orphan_fn)(void *arg, const char *name, uint64_t size);

/* Finds the staged files that no journal row references and nobody holds
 * open (no lock): the orphans.  Without @move, calls @fn for each (@fn may
 * be NULL) with its staged name, and changes nothing.  With @move, takes
 * care of each first and calls @fn only for those it moved:
 * - one that holds bytes is moved (renamed, same inode) to DIR/lost+found,
 *   never over a file there: its name becomes "YYYYmmddTHHMMSSZ-" (its
 *   mtime, UTC: names sort by it) followed by its staged name, with "-N"
 *   before ".data" when that name is taken.  Both directories are synced
 *   before @fn gets the new name, and a warning is logged naming its path in
 *   lost+found and its size.  A file that cannot be moved stays in DIR/stage
 *   (an error is logged and returned): it is never removed.
 * - an empty one (nothing to keep: the file of a creator that lost a race
 *   with the walk) is removed.
 * Files whose names this library would not give are left alone.  Meant for
 * mount time, but safe at any time.  Returns 0, @fn's value, or -errno
 * (the walk stops at the first). */
int cache_stage_orphans(struct cache *c, bool move, cache_stage_orphan_fn fn, void *arg);

/* Called by cache_stage_lost() for each file with its name (borrowed), size
 * and mtime (ms since the epoch).  A non-zero return stops the listing and
 * is returned. */
typedef int (*cache_stage_lost_fn)(void *arg, const char *name, uint64_t size, int64_t mtime);

/* Lists the regular files of DIR/lost+found (those cache_stage_orphans()
 * moved there, and whatever else the user left) in name order, calling @fn
 * for each.  Reads only: needs no lock, creates nothing (no lost+found is no
 * file).  Returns 0, @fn's value, -EACCES when lost+found belongs to another
 * user, -ENOMEM or -errno. */
int cache_stage_lost(struct cache *c, cache_stage_lost_fn fn, void *arg);

/*
 * Journal rows.
 */

/* Journals change @ch (its repo, branch, kind, path, old_path, staged, size,
 * sha256 and base_commit; the rest is ignored) as PENDING, with no error, no
 * attempt, its times now.  An ADD names a staged file that exists; the
 * other kinds name none.  Durable when it returns: the bytes of an ADD's
 * staged file are fdatasync'ed before the row is written (see Durability).
 * Its id goes to *@id (@id may be NULL).  Returns 0, -EINVAL, -EEXIST when
 * the path has a row already (see cache_stage_replace()) or the staged file
 * is referenced by another row, -ENOENT when the staged file does not
 * exist, -EIO or -ENOSPC when its bytes cannot be synced (then no row is
 * written), or -errno. */
int cache_stage_add(struct cache *c, const struct cache_stage_change *ch, int64_t *id);

/* Like cache_stage_add(), but first forgets the row that the path has (any
 * kind, any state: a file written again before its commit; the newest change
 * wins), in the same transaction.  The new row gets a new id, so a commit in
 * flight with the old id does not forget it.  The forgotten row goes to
 * *@old (release it with cache_stage_change_release(); old->id is 0 when the
 * path had none): the caller removes its staged file when no upload uses it,
 * and journals what the old row did that the new one does not (the delete
 * of a RENAME's old_path).  Returns the errors of cache_stage_add(). */
int cache_stage_replace(struct cache *c, const struct cache_stage_change *ch, int64_t *id,
			struct cache_stage_change *old);

/* The row @id into *@out (release it with cache_stage_change_release()).
 * Returns 0, -ENOENT, -EIO (a row this library would not write), or -errno. */
int cache_stage_get(struct cache *c, int64_t id, struct cache_stage_change *out);

/* The rows of @repo and @branch in id order (the order of the changes) into
 * *@changes, their number into *@n; the caller frees them with
 * cache_stage_changes_free().  Returns 0 (with *@n 0 when none), -EINVAL,
 * -EIO (a row this library would not write), or -errno. */
int cache_stage_list(struct cache *c, const char *repo, const char *branch,
		     struct cache_stage_change **changes, size_t *n);

/* A repo and branch that has rows, with its sums. */
struct cache_stage_branch {
	char *repo;
	char *branch;
	uint64_t changes;		       /* rows */
	uint64_t bytes;			       /* sum of the sizes of its ADD rows */
	uint64_t sent;			       /* sum of the sent of its ADD rows (<= bytes) */
	uint64_t by_state[CACHE_STAGE_STATES]; /* rows per enum cache_stage_state */
	char *error;			       /* the error of its most recently updated row
						  that has one, or "" */
};

/* Every repo and branch that has rows (for resuming at mount and for
 * `hubfs status`), ordered by repo then branch, into *@branches, their number
 * into *@n; the caller frees them with cache_stage_branches_free().
 * Returns 0 or -errno. */
int cache_stage_branches(struct cache *c, struct cache_stage_branch **branches, size_t *n);

/* Frees what cache_stage_branches() returned.  NULL is a no-op. */
void cache_stage_branches_free(struct cache_stage_branch *v, size_t n);

/* The rows of @repo and @branch that are to reach the Hub (every state but
 * LOCAL) into *@changes, the sum of the sizes of their ADD rows into *@bytes (either may be NULL).  Returns 0 or -errno. */
int cache_stage_count(struct cache *c, const char *repo, const char *branch, uint64_t *changes,
		      uint64_t *bytes);

/* What cache_stage_update() changes: the fields named in @set. */
enum {
	CACHE_STAGE_SET_STATE = 1 << 0,
	CACHE_STAGE_SET_ERROR = 1 << 1, /* NULL or "" clears it */
	CACHE_STAGE_SET_ATTEMPTS = 1 << 2,
	CACHE_STAGE_ADD_ATTEMPT = 1 << 3, /* attempts + 1, and sent back to 0: a new
					     attempt uploads from the start */
	CACHE_STAGE_SET_COMMIT = 1 << 4,  /* commit_id: "" or 40 hex */
	CACHE_STAGE_SET_BASE = 1 << 5,	  /* base_commit: 40 hex */
};

struct cache_stage_update {
	unsigned set;
	enum cache_stage_state state;
	const char *error; /* borrowed */
	uint32_t attempts;
	const char *commit_id;	 /* borrowed */
	const char *base_commit; /* borrowed */
};

/* Applies @u to the rows @ids[0..@n) in one durable transaction, and sets
 * their updated_at.  Ids that have no row (replaced or committed meanwhile)
 * are skipped; their number is @n minus *@updated (@updated may be NULL).
 * Returns 0, -EINVAL or -errno (then nothing changed). */
int cache_stage_update(struct cache *c, const int64_t *ids, size_t n,
		       const struct cache_stage_update *u, size_t *updated);

/* Records the content of row @id once it is known: its @size and @sha256
 * (64 lowercase hex digits).  Returns 0, -EINVAL, -ENOENT or -errno. */
int cache_stage_set_content(struct cache *c, int64_t id, uint64_t size, const char *sha256);

/* Records the upload progress of row @id: @sent bytes of its content have
 * gone to the Hub in the current attempt (kept at most the row's size).
 * Meant to be called about once a second per uploading file, from the
 * uploading thread: one small write transaction (about 0.05 ms), not synced
 * (see Durability), and updated_at is left alone (it orders the errors).
 * Returns 0, -EINVAL (@sent over INT64_MAX), -ENOENT when @id has no ADD
 * row (replaced or committed meanwhile: nothing to record), or -errno. */
int cache_stage_set_sent(struct cache *c, int64_t id, uint64_t sent);

/* The changes @ids[0..@n) of @repo and @branch are in commit @commit_id,
 * made on top of @parent: in one durable transaction, forgets their rows,
 * and rebases the other rows of the branch that were based on @parent onto
 * @commit_id (what they saw is what the commit made, so the commit's own
 * paths are not a conflict for them).  The staged files of the forgotten
 * rows go to *@staged (an array of *@nstaged names; the caller frees it with
 * free(), and turns the files into cache blobs or removes them).  Ids that
 * have no row, or a row of another branch, are skipped.  Returns 0, -EINVAL
 * or -errno (then nothing changed and *@staged is NULL). */
int cache_stage_committed(struct cache *c, const char *repo, const char *branch, const int64_t *ids,
			  size_t n, const char *parent, const char *commit_id,
			  char (**staged)[CACHE_STAGE_NAME_SIZE], size_t *nstaged);

/* Forgets the rows @ids[0..@n) of @repo and @branch without a commit (a
 * change undone, or dropped by the user), in one durable transaction.
 * Their staged files go to *@staged as with cache_stage_committed(); the
 * caller removes them.  Returns 0, -EINVAL or -errno. */
int cache_stage_forget(struct cache *c, const char *repo, const char *branch, const int64_t *ids,
		       size_t n, char (**staged)[CACHE_STAGE_NAME_SIZE], size_t *nstaged);

#endif
