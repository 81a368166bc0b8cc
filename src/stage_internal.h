/*
 * What the staging overlay (stage.c) and the commit worker (commit.c) share:
 * the state of a struct stage and the overlay's helpers.  Nothing outside
 * these two files includes it.
 *
 * The contract between the two halves is the journal (cache_stage.h): the
 * overlay journals every change before the operation that made it returns,
 * with the head it was based on; the worker commits journaled rows only,
 * and tells the overlay (under s->lock) which rows the Hub has now.
 *
 * Locking: s->lock protects the entries, the branch records and the worker's
 * state; a writer's lock protects its file.  Lock order: a writer's lock,
 * then s->lock.  Neither is held across network I/O.
 */
#ifndef HUBFS_STAGE_INTERNAL_H
#define HUBFS_STAGE_INTERNAL_H

#include <pthread.h>
#include <time.h>

#include "commit_plan.h"
#include "stage.h"

/* A branch that keeps changing is committed at most this many quiet
 * periods after its first change. */
#define STAGE_BATCH_FACTOR 5
/* How many of a branch's own last commits are remembered (commit_plan()). */
#define STAGE_OWN_MAX 64
/* The buffer of file copies and hashing. */
#define STAGE_COPY_BUF (1u << 20)

struct stage_entry {
	char *repo, *branch, *path;
	bool deleted;			    /* a DELETE_FILE row */
	char *from;			    /* a RENAME row's old path, or NULL */
	bool localdir;			    /* made by mkdir: a directory, kept in memory only */
	bool gone;			    /* a directory renamed away: deleted (no row) until
					       the branch's next commit */
	bool importing;			    /* committed (no row): staged is read until it is
					       a cache blob */
	char *moved_to;			    /* deleted by a rename to this path, or NULL */
	char sha256[65];		    /* a RENAME row's content */
	char staged[CACHE_STAGE_NAME_SIZE]; /* an ADD row's staged file, or "" */
	uint64_t size;			    /* of staged */
	int64_t row;			    /* the journal row, 0 for none */
	char base[41];			    /* the head the change is based on (of the
					       commit that has it, while importing) */
	int64_t aside_row;		    /* == row: the worker set the row aside */
	int aside_err;			    /* then why: -ESTALE, -EINVAL, -EIO */
	uint64_t version;
	struct stage_writer *wr; /* the open writer, or NULL */
	struct stage_entry *next;
};

struct stage_writer {
	struct stage *s;
	char *repo, *branch, *path;
	char base[41]; /* protected by s->lock */
	pthread_mutex_t lock;
	int fd;				    /* protected by lock */
	char staged[CACHE_STAGE_NAME_SIZE]; /* protected by lock */
	bool frozen;			    /* protected by lock: staged is journaled */
	bool dirty;			    /* protected by lock: changed since journaled */
	uint64_t size;			    /* written under lock, read atomically */
	bool unlinked;			    /* protected by s->lock */
	unsigned refs;			    /* protected by s->lock */
};

struct stage_branch {
	char *repo, *branch;
	int64_t due;	   /* ms (monotonic) when to commit; 0: not queued */
	int64_t first;	   /* ms of the first change queued since the last commit began */
	unsigned failures; /* failed commits in a row */
	unsigned changed;  /* passes in a row that found a row replaced */
	struct commit_own own[STAGE_OWN_MAX]; /* the last commits made on it (a ring) */
	unsigned nown;			      /* commits made, of which own holds the last */
	bool busy;	   /* the worker commits it now */
	unsigned holds;	   /* a rename journals its rows: do not start a commit */
	uint64_t req;	   /* commit requests (stage_sync) */
	uint64_t done;	   /* requests answered by a finished commit */
	int rc;		   /* the result of the last commit */
	char *message;	   /* the commit message set for it (user.hub.message), or NULL */
	/* hubfs commit: the title (NULL: the usual) and description of the
	 * commits made while request msg_req (0: none) waits */
	char *req_message, *req_description;
	uint64_t msg_req;
	/* the answer to the last hubfs commit that was answered */
	bool asked, asked_made;
	char asked_commit[41];
	struct stage_branch *next;
};

struct stage {
	struct cache *cache;
	struct http_client *http;
	struct meta *meta;
	int delay_ms;
	void (*committed)(void *arg, const char *repo, const char *branch,
			  const char *const *paths, size_t n);
	void *committed_arg;
	char *message; /* --commit-message, or NULL */
	char **local;  /* the local-only globs (stage_local_only()) */
	size_t nlocal;
	pthread_mutex_t lock;
	pthread_cond_t wake;	       /* the worker waits on it */
	pthread_cond_t done;	       /* stage_sync() and stage_drain() wait on it */
	struct stage_entry *entries;   /* protected by lock */
	struct stage_branch *branches; /* protected by lock */
	uint64_t versions;	       /* protected by lock */
	bool stop;		       /* protected by lock */
	bool started;
	pthread_t worker;
};

/* Milliseconds of CLOCK_MONOTONIC. */
int64_t stage_now_ms(void);
/* @ts: @ms_from_now on CLOCK_MONOTONIC, for pthread_cond_timedwait(). */
void stage_deadline(struct timespec *ts, int64_t ms_from_now);
/* Parses a repo key into @repo, whose strings point into @buf.  Returns 0 or
 * -EINVAL. */
int stage_repo_parse(const char *key, char *buf, size_t size, struct hub_repo *repo);

/* The overlay; s->lock held for each. */
struct stage_entry *stage_find(struct stage *s, const char *repo, const char *branch,
			       const char *path);
/* A new entry, first in the list, or NULL (no memory). */
struct stage_entry *stage_entry_new(struct stage *s, const char *repo, const char *branch,
				    const char *path);
/* Frees @e if nothing keeps it: no row, no writer, no local directory. */
void stage_entry_gc(struct stage *s, struct stage_entry *e);
/* The overlay forgets @e's journal row (committed or dropped): the tree
 * shows through again, or with @keep_staged the staged file (committed,
 * until it is a cache blob).  @e may be freed. */
void stage_entry_forget_row(struct stage *s, struct stage_entry *e, bool keep_staged);
/* The record of @repo @branch, made when missing; NULL: no memory. */
struct stage_branch *stage_branch_get(struct stage *s, const char *repo, const char *branch);
/* Queues @repo @branch for a commit after the quiet period. */
void stage_queue(struct stage *s, const char *repo, const char *branch);

/* The size of @fd, or -errno. */
int64_t stage_fd_size(int fd);

/* In commit.c: the worker thread's body, and the loading of the journal
 * into the overlay at start (queues every branch that has rows). */
void *stage_worker(void *arg);
int stage_resume(struct stage *s);

#endif
