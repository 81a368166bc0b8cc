/*
 * hubfs log PATH: the commits of a repo, a revision, or a file or folder in
 * one, newest first, one per line, as the Hub lists them.
 *
 * Where PATH is comes from the mount (cmd_where.h); the commits come from
 * the Hub the mount talks to, asked by this process: the daemon has no
 * channel to stream a history through, and the token never leaves it.  So
 * the token is the caller's own, found as hubfs mount finds one
 * (--token-file, HF_TOKEN, HF_TOKEN_PATH, $HF_HOME/token,
 * ~/.cache/huggingface/token), and it is sent only when the mount belongs
 * to the caller: another user's mount names the endpoint, and a token is
 * never sent where someone else chose.
 *
 * A repo or revision is listed page after page (GET .../commits/REV, 100
 * per page), each line written as soon as its page arrives; into a pipe,
 * the next page is asked for only once the reader took the last one, so
 * that "hubfs log X | head" costs one or two pages whatever the history's
 * length; a reader that goes away (EPIPE, POLLERR) ends the listing
 * quietly.  The Hub's listing has no path filter: for a
 * file or folder, the history is walked through the commit that last
 * changed the path (paths-info with expand gives its lastCommit), then the
 * commit before that one (the second entry of the listing at it), and so
 * on, two requests per line, until the path does not exist any more.
 */
#include "config.h"

#include "cmd.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cmd_where.h"
#include "hub_api.h"
#include "log.h"
#include "options.h"

static const char log_usage[] =
    "usage: hubfs log [--json] [-n N] [--token-file FILE] PATH\n"
    "\n"
    "The commits of PATH, newest first, one per line: short id, date (UTC),\n"
    "author and title.  PATH is a repository's directory (its main branch), a\n"
    "revision (a branch, tag, pull request or pinned view), or a file or folder\n"
    "in one (the commits that changed it) in a hubfs mount.\n"
    "\n"
    "  --json             one JSON object per line: id, date, authors, title, message\n"
    "  -n N               at most N commits\n"
    "  --token-file FILE  the token to ask the Hub with (else as hubfs mount finds one)\n";

/* Commits asked for per page. */
#define LOG_PAGE 100

struct log_state {
	struct http_client *http;
	struct hub_repo repo;
	bool json;
	unsigned long max; /* 0: no limit */
	unsigned long shown;
	bool gone; /* the reader went away */
	int err;   /* a write failure other than EPIPE */
	/* the walk of a path's history: the commit after the one shown */
	bool walk_first;
	char next[HUB_COMMIT_LEN + 1];
};

/* Writes @s with its control characters as '?' (a title could hold a
 * terminal's escape sequences). */
static void log_text(const char *s)
{
	for (; *s; s++)
		putchar((unsigned char)*s < 0x20 || *s == 0x7f ? '?' : *s);
}

/* Prints @c; returns 0, or 1 to stop (enough shown, the reader is gone). */
static int log_print(struct log_state *st, const struct hub_commit_info *c)
{
	if (st->json) {
		char *line = hub_commit_json(c);

		if (!line)
			return -ENOMEM;
		fputs(line, stdout);
		putchar('\n');
		free(line);
	} else {
		char when[32] = "-";
		time_t t = (time_t)c->time;
		struct tm tm;

		if (c->time >= 0 && gmtime_r(&t, &tm))
			strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
		printf("%.7s %s ", c->id, when);
		if (!c->nauthors)
			putchar('-');
		for (size_t i = 0; i < c->nauthors; i++) {
			if (i)
				putchar(',');
			log_text(c->authors[i]);
		}
		putchar(' ');
		log_text(c->title);
		putchar('\n');
	}
	/* line buffered: a failed write shows at once */
	if (fflush(stdout) || ferror(stdout)) {
		if (errno == EPIPE)
			st->gone = true;
		else
			st->err = -errno;
		return 1;
	}
	st->shown++;
	return st->max && st->shown >= st->max ? 1 : 0;
}

/* Before the next page: when stdout is a pipe, waits until the reader has
 * taken what was written, or went away (POLLERR), so that a reader that
 * stops (head) costs at most the page after the one it read.  Returns 0,
 * or 1 when the reader is gone. */
static int log_page_wait(struct log_state *st)
{
	struct stat sb;

	if (fstat(STDOUT_FILENO, &sb) || !S_ISFIFO(sb.st_mode))
		return 0;
	/* no event asked: POLLERR (no reader left) comes anyway; the checks
	 * of what is unread back off from 1 to 32 ms */
	for (int ms = 1;; ms = ms < 32 ? 2 * ms : ms) {
		struct pollfd pfd = {.fd = STDOUT_FILENO, .events = 0};
		int unread = 0;

		if (ioctl(STDOUT_FILENO, FIONREAD, &unread) || unread <= 0)
			return 0;
		if (poll(&pfd, 1, ms) < 0 && errno != EINTR)
			return 0;
		if (pfd.revents & (POLLERR | POLLHUP)) {
			st->gone = true;
			return 1;
		}
	}
}

static int log_commit(void *arg, const struct hub_commit_info *c)
{
	return c ? log_print(arg, c) : log_page_wait(arg);
}

/* The listing at the last commit that changed the path: prints that
 * commit, keeps the one after it, stops. */
static int log_walk_commit(void *arg, const struct hub_commit_info *c)
{
	struct log_state *st = arg;
	int rc;

	if (!c)
		return 0; /* the end of the page */
	if (st->walk_first) {
		st->walk_first = false;
		rc = log_print(st, c);
		return rc ? rc : 0;
	}
	memcpy(st->next, c->id, sizeof(st->next));
	return 1;
}

/* The history of @path from @rev: two requests per commit shown.  Returns
 * 0, 1 when it said why it showed nothing, or -errno. */
static int log_walk(struct log_state *st, const char *rev, const char *path)
{
	char at[HUB_REV_MAX + 1], last[HUB_COMMIT_LEN + 1];
	int rc;

	snprintf(at, sizeof(at), "%s", rev);
	for (unsigned long n = 0;; n++) {
		rc = hub_last_commit(st->http, &st->repo, at, path, last);
		if (rc == -ENOENT && n > 0)
			return 0; /* the path did not exist before */
		if (rc == -ENOENT) {
			log_msg(LOG_ERR, "no commit on the Hub has '%s' (not committed yet?)",
				path);
			return 1; /* said */
		}
		if (rc)
			return rc;
		st->walk_first = true;
		st->next[0] = '\0';
		rc = hub_list_commits(st->http, &st->repo, last, 2, log_walk_commit, st);
		if (rc || st->gone || st->err || (st->max && st->shown >= st->max) || !st->next[0])
			return rc;
		memcpy(at, st->next, sizeof(st->next));
	}
}

int cmd_log(int argc, char *argv[])
{
	struct http_client_config hc = {0};
	struct log_state st = {0};
	struct cmd_where w;
	const char *path = NULL, *token_file = NULL, *rev;
	char *token = NULL, *end;
	int rc;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			fputs(log_usage, stdout);
			return 0;
		} else if (!strcmp(argv[i], "--json")) {
			st.json = true;
		} else if (!strcmp(argv[i], "-n") && i + 1 < argc) {
			errno = 0;
			st.max = strtoul(argv[++i], &end, 10);
			if (errno || end == argv[i] || *end || st.max == 0) {
				log_msg(LOG_ERR, "-n wants a number of commits, not '%s'", argv[i]);
				return 2;
			}
		} else if (!strcmp(argv[i], "--token-file") && i + 1 < argc) {
			token_file = argv[++i];
		} else if (!strncmp(argv[i], "--token-file=", 13)) {
			token_file = argv[i] + 13;
		} else if (argv[i][0] == '-' || path) {
			fputs(log_usage, stderr);
			return 2;
		} else {
			path = argv[i];
		}
	}
	if (!path) {
		fputs(log_usage, stderr);
		return 2;
	}
	if (cmd_where_read(path, &w))
		return 1;
	cmd_where_repo(&w, &st.repo);
	/* The caller's own mount: the token it was given by file, if it was. */
	if (!token_file && w.own)
		token_file = w.token_file;
	if (w.own || token_file) {
		rc = options_token(token_file, &token, NULL);
		if (rc) {
			log_msg(LOG_ERR, "cannot read the token file '%s': %s", token_file,
				strerror(-rc));
			cmd_where_release(&w);
			return 1;
		}
	} else {
		log_msg(LOG_NOTICE, "'%s' is another user's mount: asking %s without a token",
			w.mountpoint, w.endpoint);
	}
	/* a reader that goes away is EPIPE, not a signal; lines go out whole */
	signal(SIGPIPE, SIG_IGN);
	setvbuf(stdout, NULL, _IOLBF, 0);
	rc = http_global_init();
	if (rc) {
		options_token_free(token);
		cmd_where_release(&w);
		return 1;
	}
	hc.endpoint = w.endpoint;
	hc.token = token;
	hc.max_retries = -1;
	st.http = http_client_new(&hc, &rc);
	options_token_free(token);
	if (!st.http) {
		log_msg(LOG_ERR, "the mount's endpoint '%s' is not an http or https URL",
			w.endpoint);
		rc = 1;
		goto out;
	}
	/* a view by commit id lists from its full id; a repo from main */
	rev = !w.rev[0]						? "main"
	      : hub_commit_id_valid(w.rev, true) && w.commit[0] ? w.commit
								: w.rev;
	if (w.path[0])
		rc = log_walk(&st, rev, w.path);
	else
		rc = hub_list_commits(st.http, &st.repo, rev,
				      st.max && st.max < LOG_PAGE ? (unsigned)st.max : LOG_PAGE,
				      log_commit, &st);
	if (rc > 0)
		; /* said already */
	else if (st.err)
		log_msg(LOG_ERR, "cannot write the log: %s", strerror(-st.err));
	else if (rc && rc != -ENOENT)
		log_msg(LOG_ERR, "cannot list the commits of '%s': %s", path,
			rc == -EACCES ? "the Hub refused the token (401, 403)" : strerror(-rc));
	else if (rc)
		log_msg(LOG_ERR,
			"cannot list the commits of '%s': no such repository or "
			"revision on the Hub (or the token may not see it)",
			path);
	rc = rc || st.err ? 1 : 0;
out:
	http_client_free(st.http);
	http_global_release();
	cmd_where_release(&w);
	return rc;
}
