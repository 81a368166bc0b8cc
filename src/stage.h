/*
 * Writes: the staging overlay of writable branch views, and the commit
 * worker that turns staged changes into commits on the Hub.
 *
 * The journal (cache_stage.h) is the truth; this module keeps an in-memory
 * overlay of it keyed by (repo, branch, path) so that lookups, listings and
 * reads of a branch view see the changes before they are committed (read
 * your writes).  The overlay is filled from the journal when the stage is
 * created (resume after a crash) and updated on every change.
 *
 * A repo is named by its key "TYPE/NS/NAME" (TYPE "model", "dataset",
 * "space"): stage_repo_key() builds it.
 *
 * Files being written: every write handle of one path shares a writer, whose
 * content is a staged file.  A journaled staged file never changes: when a
 * writer's file was journaled (at a release or an fsync) and is written
 * again, the writer first copies it to a fresh staged file.  So the commit
 * worker uploads exactly what was journaled.
 *
 * Thread safety: every function may be called from any thread.  Only
 * stage_sync() and stage_drain() wait for the network; the rest never do.
 */
#ifndef HUBFS_STAGE_H
#define HUBFS_STAGE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "cache.h"
#include "http.h"
#include "hub_api.h"
#include "meta.h"

/* Room for a repo key and its NUL. */
#define STAGE_REPO_KEY_MAX (8 + 2 * HUB_NAME_MAX + 3)

struct stage_config {
	struct cache *cache;	  /* borrowed */
	struct http_client *http; /* borrowed */
	struct meta *meta;	  /* borrowed */
	int delay;		  /* seconds of quiet before a branch is committed */
	/* Called by the commit worker after each commit, with no lock held:
	 * the paths of @repo (a repo key) @branch whose content it changed
	 * (added, replaced, deleted, moved from or to; a deleted folder's
	 * path stands for everything under it), borrowed for the call.  May
	 * be NULL. */
	void (*committed)(void *arg, const char *repo, const char *branch,
			  const char *const *paths, size_t n);
	void *committed_arg;
	const char *message; /* every commit's message (--commit-message), or NULL;
				copied */
	/* Globs (fnmatch(3), matched against a file's name) of files that are
	 * staged but never committed, on top of STAGE_LOCAL_DEFAULT
	 * (--local-only); copied.  May be NULL. */
	const char *const *local_only;
	size_t nlocal_only;
};

struct stage;
struct stage_writer;

/* Loads the overlay from the journal, moves orphan staged files to lost+found,
 * starts the commit worker and queues every branch that has rows.  Returns NULL
 * with *@err (-ENOMEM, -errno). */
struct stage *stage_new(const struct stage_config *cfg, int *err);

/* Stops the worker (a commit in flight is finished first) and frees @s.
 * Every writer must have been closed.  NULL is a no-op. */
void stage_free(struct stage *s);

/* Commits every branch with pending changes now and waits for them, at
 * most @timeout seconds in all; logs what is left.  Branches whose last
 * commit failed (a conflict, no rights) are not tried again, only logged. */
void stage_drain(struct stage *s, int timeout);

/* Writes "TYPE/NS/NAME" of @repo to @key. */
void stage_repo_key(const struct hub_repo *repo, char key[STAGE_REPO_KEY_MAX]);

/* What the overlay says of a path. */
enum stage_what {
	STAGE_NONE,    /* nothing: ask the tree */
	STAGE_FILE,    /* a staged file: size and version are set */
	STAGE_DELETED, /* deleted: ENOENT, whatever the tree says */
	STAGE_DIR,     /* a directory holding staged files */
};

struct stage_stat {
	enum stage_what what;
	uint64_t size;
	char version[41]; /* changes whenever the content may have changed */
	/* A STAGE_FILE moved by reference (an LFS file renamed, not written
	 * since): its content is that of @from ("" otherwise) in the tree of
	 * commit @base, whose sha256 is @sha256. */
	char from[HUB_PATH_MAX + 1];
	char sha256[65];
	char base[41];
	/* A STAGE_FILE whose content is committed (the tree of the branch's
	 * head has it): read from the staged file until it is a cache blob. */
	bool committed;
	/* A STAGE_DELETED path renamed away: where it went ("" otherwise). */
	char moved_to[HUB_PATH_MAX + 1];
};

/* What the overlay says of @path ("" never is staged) of @repo @branch. */
void stage_stat(struct stage *s, const char *repo, const char *branch, const char *path,
		struct stage_stat *out);

/* Calls @fn(@arg, name, is_dir) for each name directly in @dir that the
 * overlay adds (staged files and the directories holding them), and returns
 * 0, or the first non-zero return of @fn.  Names are borrowed for the call.
 * @fn must not call into the stage. */
int stage_list_dir(struct stage *s, const char *repo, const char *branch, const char *dir,
		   int (*fn)(void *arg, const char *name, bool is_dir), void *arg);

/* An fd (read-only, the caller closes it) on the staged content of @path,
 * or -ENOENT when the overlay has no file there, or -errno. */
int stage_open_read(struct stage *s, const char *repo, const char *branch, const char *path);

/* Copies the current content of a file into @fd (a new staged file); used
 * when an existing file of the tree is opened for writing without O_TRUNC.
 * Returns 0 or -errno. */
typedef int (*stage_fill_fn)(void *arg, int fd);

/* Opens the writer of @path (taking a reference), creating it when the path
 * has none: its content is then empty with @trunc, else the staged content
 * of the path if the overlay has a file there, else what @fill writes
 * (@fill NULL: empty; a new file).  @base is the branch head the caller saw
 * (40 hex digits).  A new empty file (@trunc) counts as a change.
 * Returns the writer, or NULL with *@err. */
struct stage_writer *stage_writer_open(struct stage *s, const char *repo, const char *branch,
				       const char *path, const char *base, bool trunc,
				       stage_fill_fn fill, void *arg, int *err);

/* pread/pwrite on the writer's content.  @append writes at the end. */
ssize_t stage_writer_read(struct stage_writer *w, void *buf, size_t size, uint64_t off);
ssize_t stage_writer_write(struct stage_writer *w, const void *buf, size_t size, uint64_t off,
			   bool append);

/* The size of the content now (also of a writer whose path was unlinked). */
uint64_t stage_writer_size(struct stage_writer *w);

/* Sets the size of the content.  Returns 0 or -errno. */
int stage_writer_truncate(struct stage_writer *w, uint64_t size);

/* Reserves bytes @off to @off + @len of the content (posix_fallocate()):
 * the content grows to @off + @len when it is shorter, with zeros.  Returns
 * 0 or -errno (-ENOSPC ...). */
int stage_writer_allocate(struct stage_writer *w, uint64_t off, uint64_t len);

/* Journals the writer's content if it changed since it was last journaled,
 * and queues its branch.  Returns 0 or -errno (-ENOSPC ...). */
int stage_writer_flush(struct stage_writer *w);

/* stage_writer_flush(), then drops the reference.  Returns the flush's
 * result. */
int stage_writer_close(struct stage_writer *w);

/* Journals the deletion of @path (a file of the view), based on @base, and
 * queues the branch.  Returns 0 or -errno. */
int stage_unlink(struct stage *s, const char *repo, const char *branch, const char *path,
		 const char *base);

/* Forgets the staged file @path of the view, which never was on the Hub
 * (the tree has a file where the view has a directory above it: there is
 * nothing to delete, and a deletion could not be committed): its journal row
 * and staged content go, an open writer lives on detached, as after an
 * unlink, and the path shows nothing.  Returns 0 or -errno. */
int stage_drop(struct stage *s, const char *repo, const char *branch, const char *path);

/* Journals the rename of file @from to @to (paths of the view of @repo
 * @branch; a file at @to is replaced), based on @base, as ONE change of the
 * branch (see stage.c).  The source is what the overlay has at @from, else
 * the tree's file: with @sha256 (64 hex digits, @size bytes) an LFS file,
 * moved by reference; otherwise its content is what @fill writes (@fill NULL:
 * empty).  An open writer of @from is journaled first and then names @to:
 * what is written through it later goes to @to, as POSIX has it.  An open
 * writer of the replaced @to lives on detached, as after an unlink.  A file
 * moved back where it came from before the move was committed undoes the
 * move.  Returns 0, -ENOENT (@from is deleted), -EXDEV (a move back that
 * cannot be undone: the caller copies), -EAGAIN (the source changed
 * meanwhile: try again), or -errno. */
int stage_rename(struct stage *s, const char *repo, const char *branch, const char *from,
		 const char *to, const char *base, const char *sha256, uint64_t size,
		 stage_fill_fn fill, void *arg);

/* Holds @repo @branch: the worker starts no commit of it until as many
 * stage_unhold() calls, so that changes journaled meanwhile land in ONE
 * commit (a directory rename).  Returns 0 or -ENOMEM. */
int stage_hold(struct stage *s, const char *repo, const char *branch);
void stage_unhold(struct stage *s, const char *repo, const char *branch);

/* After every file under directory @from was renamed (stage_rename()) to
 * the same place under @to: the directories made by mkdir under @from move
 * too, and @from shows as deleted (STAGE_DELETED, moved_to @to) until the
 * branch's next commit, which removes it from the tree.  Returns 0 or
 * -ENOMEM. */
int stage_dir_moved(struct stage *s, const char *repo, const char *branch, const char *from,
		    const char *to);

/* Makes directory @path of the view: it exists in memory only (nothing to
 * commit: the Hub has no empty folders) until a file lands in it.  Returns 0
 * or -ENOMEM. */
int stage_mkdir(struct stage *s, const char *repo, const char *branch, const char *path);

/* Removes directory @path of the view, which the caller found empty.  With
 * @in_tree (the tree of @base has it) journals the deletion of the folder
 * and queues the branch; otherwise forgets the directory stage_mkdir() made.
 * Returns 0 or -errno. */
int stage_rmdir(struct stage *s, const char *repo, const char *branch, const char *path,
		const char *base, bool in_tree);

/* The names of editor and tool scratch files, kept in the mount and never
 * committed (vim's swap files and its write test, backups, emacs locks and
 * autosaves, NFS silly renames, LibreOffice and Kate locks, Python tempfile
 * names, *.tmp).  NULL-terminated. */
extern const char *const STAGE_LOCAL_DEFAULT[];

/* Whether @path (a path in a branch) is local-only: its file name matches a
 * glob of STAGE_LOCAL_DEFAULT or of the config's local_only. */
bool stage_local_only(struct stage *s, const char *path);

/* The longest commit message (a one-line summary), in bytes. */
#define STAGE_MESSAGE_MAX 400

/* Whether @m can be a commit message: 1 to STAGE_MESSAGE_MAX bytes, no
 * control characters (one line). */
bool stage_message_valid(const char *m);

/* Sets (@message NULL: clears) the message of the next commits of @repo
 * @branch, kept in memory (user.hub.message).  Returns 0 or -ENOMEM. */
int stage_set_message(struct stage *s, const char *repo, const char *branch, const char *message);

/* The message set for @repo @branch (the caller frees it), or NULL. */
char *stage_get_message(struct stage *s, const char *repo, const char *branch);

/* Resolves the staged changes of @path (NULL: every path) of @repo @branch:
 * with @ours, those in conflict are based on @head (the branch's head now,
 * 40 hex digits) and committed on top of it, overwriting the Hub's change,
 * as the user chose; otherwise every staged change of the path is dropped
 * (the Hub's version shows again; a dropped move brings its source back).
 * Returns 0, -ENODATA (nothing to resolve), -EBUSY (a commit of the branch
 * is under way: try again), or -errno. */
int stage_resolve(struct stage *s, const char *repo, const char *branch, const char *path,
		  bool ours, const char *head);

/* Commits the pending changes of @repo @branch now and waits until the
 * commit is on the Hub.  Returns 0 (also when nothing was pending), or
 * -EACCES (no write rights), -EINVAL (the Hub's validator refused the
 * README.md card), -EIO (a conflict, or the Hub refused), -ENOSPC,
 * -ETIMEDOUT ...; the changes then stay staged. */
int stage_sync(struct stage *s, const char *repo, const char *branch);

/* stage_sync() for the fsync of one file: commits the branch's pending
 * changes now and answers for @path: 0 once its change is on the Hub (or it
 * had none, or it is local-only), -EIO when it is a conflict, refused or
 * lost, -EINVAL (its README.md card refused), or the commit's error.  Other
 * paths of the branch set aside do not make it fail. */
int stage_sync_path(struct stage *s, const char *repo, const char *branch, const char *path);

/* stage_sync() for hubfs commit: commits the pending changes of @repo
 * @branch now, with @message as title (NULL: the usual titles) and
 * @description (NULL: none), and waits.  Returns as stage_sync(); on 0,
 * *@made says whether a commit was made (false: nothing was pending, or
 * nothing that would change the branch) and @commit is its id (the last
 * one when the Hub refused a change and the rest went in parts). */
int stage_commit_now(struct stage *s, const char *repo, const char *branch, const char *message,
		     const char *description, bool *made, char commit[HUB_COMMIT_LEN + 1]);

/* The answer of the last stage_commit_now() of @repo @branch that returned
 * 0: *@made and @commit as it set them.  Returns 0, or -ENODATA when there
 * was none. */
int stage_commit_asked(struct stage *s, const char *repo, const char *branch, bool *made,
		       char commit[HUB_COMMIT_LEN + 1]);

#endif
