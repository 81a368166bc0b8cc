/*
 * hubfs mount and hubfs umount.
 *
 * mount checks everything it can before mounting (options, mountpoint,
 * endpoint, token, cache) and prints the cause of any failure.  Without -f it
 * forks first: the child does the work and tells the parent, through a pipe,
 * once the filesystem is mounted; the parent then exits 0, or 1 if the child
 * failed (the child has printed why).  The child opens the cache and starts
 * its threads after the fork, since neither SQLite connections nor threads
 * survive one.
 */
#include "config.h"

#include "cmd.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <spawn.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "blobsrc.h"
#include "fs_ops.h"
#include "http.h"
#include "log.h"
#include "options.h"

extern char **environ;

struct mount_opts {
	int foreground;
	int debug;
	int offline;
	int help;
	int public_only;
	int public_repos;
	char *endpoint;
	char *token_file;
	char *cache_dir;
	char *cache_size;
	char *cache_io;
	char *ttl;
	char *timeout;
	char *commit_delay;
	char *commit_message;
	char **local_only; /* --local-only GLOB, repeatable */
	size_t nlocal_only;
	char **hf_cache; /* --hf-cache DIR, repeatable */
	size_t nhf_cache;
	int no_hf_cache;
	char *mountpoint;
	int allow_other;	 /* -o allow_other or allow_root */
	int default_permissions; /* -o default_permissions */
};

enum { MOUNT_KEY_LOCAL_ONLY = 1, MOUNT_KEY_HF_CACHE };

#define MOUNT_OPT(t, f) { t, offsetof(struct mount_opts, f), 1 }

static const struct fuse_opt mount_spec[] = {
	MOUNT_OPT("-f", foreground),
	MOUNT_OPT("--foreground", foreground),
	MOUNT_OPT("-d", debug),
	MOUNT_OPT("--debug", debug),
	MOUNT_OPT("--offline", offline),
	MOUNT_OPT("--public-repos", public_repos),
	MOUNT_OPT("--no-hf-cache", no_hf_cache),
	MOUNT_OPT("-h", help),
	MOUNT_OPT("--help", help),
	MOUNT_OPT("--endpoint %s", endpoint),
	MOUNT_OPT("--endpoint=%s", endpoint),
	MOUNT_OPT("--token-file %s", token_file),
	MOUNT_OPT("--token-file=%s", token_file),
	MOUNT_OPT("--cache-dir %s", cache_dir),
	MOUNT_OPT("--cache-dir=%s", cache_dir),
	MOUNT_OPT("--cache-size %s", cache_size),
	MOUNT_OPT("--cache-size=%s", cache_size),
	MOUNT_OPT("--cache-io %s", cache_io),
	MOUNT_OPT("--cache-io=%s", cache_io),
	MOUNT_OPT("--ttl %s", ttl),
	MOUNT_OPT("--ttl=%s", ttl),
	MOUNT_OPT("--timeout %s", timeout),
	MOUNT_OPT("--timeout=%s", timeout),
	MOUNT_OPT("--commit-delay %s", commit_delay),
	MOUNT_OPT("--commit-delay=%s", commit_delay),
	MOUNT_OPT("--commit-message %s", commit_message),
	MOUNT_OPT("--commit-message=%s", commit_message),
	FUSE_OPT_KEY("--local-only ", MOUNT_KEY_LOCAL_ONLY),
	FUSE_OPT_KEY("--local-only=", MOUNT_KEY_LOCAL_ONLY),
	FUSE_OPT_KEY("--hf-cache ", MOUNT_KEY_HF_CACHE),
	FUSE_OPT_KEY("--hf-cache=", MOUNT_KEY_HF_CACHE),
	/* The same as -o keys, for mount(8) and fstab (see hubfs(1)). */
	MOUNT_OPT("offline", offline),
	MOUNT_OPT("public_repos", public_repos),
	MOUNT_OPT("endpoint=%s", endpoint),
	MOUNT_OPT("token_file=%s", token_file),
	MOUNT_OPT("cache_dir=%s", cache_dir),
	MOUNT_OPT("cache_size=%s", cache_size),
	MOUNT_OPT("cache_io=%s", cache_io),
	MOUNT_OPT("ttl=%s", ttl),
	MOUNT_OPT("timeout=%s", timeout),
	MOUNT_OPT("commit_delay=%s", commit_delay),
	MOUNT_OPT("commit_message=%s", commit_message),
	FUSE_OPT_KEY("local_only=", MOUNT_KEY_LOCAL_ONLY),
	MOUNT_OPT("no_hf_cache", no_hf_cache),
	FUSE_OPT_KEY("hf_cache=", MOUNT_KEY_HF_CACHE),
	FUSE_OPT_END,
};

static const char mount_usage[] =
	"usage: hubfs mount [-f] [-d] [-o FUSE_OPTIONS] [--endpoint URL] [--token-file FILE]\n"
	"                   [--cache-dir DIR] [--cache-size SIZE] [--cache-io MODE]\n"
	"                   [--ttl SECONDS] [--timeout SECONDS] [--commit-delay SECONDS]\n"
	"                   [--commit-message TEXT] [--local-only GLOB] [--public-repos]\n"
	"                   [--hf-cache DIR] [--no-hf-cache] [--offline] MOUNTPOINT\n"
	"\n"
	"  -f, --foreground      stay in the foreground\n"
	"  -d, --debug           log every request (implies -f)\n"
	"  -o OPTIONS            FUSE mount options (e.g. allow_other, which implies\n"
	"                        default_permissions)\n"
	"  --endpoint URL        the Hub (default $HF_ENDPOINT or https://huggingface.co)\n"
	"  --token-file FILE     read the token from FILE\n"
	"  --cache-dir DIR       the cache (default $XDG_CACHE_HOME/hubfs or ~/.cache/hubfs)\n"
	"  --cache-size SIZE     cache limit, K/M/G/T suffixes (default 10G)\n"
	"  --cache-io MODE       auto (default: O_DIRECT on ext4, xfs, btrfs, f2fs),\n"
	"                        direct or buffered: how blob files are written and read\n"
	"  --ttl SECONDS         how long a branch head, a listing or a missing name is\n"
	"                        trusted before it is asked again (default 10)\n"
	"  --timeout SECONDS     a transfer that stalls this long fails with EIO (default 30)\n"
	"  --commit-delay SECONDS\n"
	"                        quiet period after a change before the changes of a\n"
	"                        branch are committed as one commit (default 2)\n"
	"  --commit-message TEXT the message of every commit (default: \"Add FILE with\n"
	"                        hubfs\", \"Update FILE ...\", \"Delete FILE ...\", \"Rename A\n"
	"                        to B ...\", \"Update N files with hubfs\")\n"
	"  --local-only GLOB     files whose name matches GLOB stay in the mount and are\n"
	"                        never committed, on top of editor scratch (vim swap,\n"
	"                        *~, emacs locks...: see man hubfs); repeatable\n"
	"  --public-repos        repos made with mkdir are public (default private)\n"
	"  --hf-cache DIR        read the files that the huggingface_hub cache DIR holds\n"
	"                        from there, never writing to it; repeatable (default\n"
	"                        $HF_HUB_CACHE or ~/.cache/huggingface/hub, if it exists)\n"
	"  --no-hf-cache         do not read the default huggingface_hub cache\n"
	"  --offline             never contact the Hub; serve what is cached\n";

static int mount_opt_proc(void *data, const char *arg, int key, struct fuse_args *outargs)
{
	struct mount_opts *o = data;

	(void)outargs;
	if (key == FUSE_OPT_KEY_NONOPT) {
		if (o->mountpoint) {
			log_msg(LOG_ERR, "more than one mountpoint: '%s' and '%s'", o->mountpoint, arg);
			return -1;
		}
		o->mountpoint = strdup(arg);
		return o->mountpoint ? 0 : -1;
	}
	if (key == MOUNT_KEY_LOCAL_ONLY) {
		const char *glob = arg + strlen(arg[0] == '-' ? "--local-only" : "local_only");
		char **v;

		glob += *glob == '=' || *glob == ' ';
		if (!*glob || strchr(glob, '/')) {
			log_msg(LOG_ERR, "--local-only: a file name pattern, please (no '/'): '%s'",
				glob);
			return -1;
		}
		v = realloc(o->local_only, (o->nlocal_only + 1) * sizeof(*v));
		if (!v)
			return -1;
		o->local_only = v;
		if (!(v[o->nlocal_only] = strdup(glob)))
			return -1;
		o->nlocal_only++;
		return 0;
	}
	if (key == MOUNT_KEY_HF_CACHE) {
		const char *dir = arg + strlen(arg[0] == '-' ? "--hf-cache" : "hf_cache");
		char **v;

		dir += *dir == '=' || *dir == ' ';
		if (!*dir) {
			log_msg(LOG_ERR, "--hf-cache: a directory, please");
			return -1;
		}
		v = realloc(o->hf_cache, (o->nhf_cache + 1) * sizeof(*v));
		if (!v)
			return -1;
		o->hf_cache = v;
		if (!(v[o->nhf_cache] = strdup(dir)))
			return -1;
		o->nhf_cache++;
		return 0;
	}
	if (key == FUSE_OPT_KEY_OPT && arg[0] == '-' && arg[1] == '-') {
		log_msg(LOG_ERR, "unknown option '%s' (see 'hubfs mount --help')", arg);
		return -1;
	}
	if (key == FUSE_OPT_KEY_OPT && (!strcmp(arg, "allow_other") || !strcmp(arg, "allow_root")))
		o->allow_other = 1;
	if (key == FUSE_OPT_KEY_OPT && !strcmp(arg, "default_permissions"))
		o->default_permissions = 1;
	return 1; /* -o options go to libfuse */
}

static void mount_opts_release(struct mount_opts *o)
{
	free(o->endpoint);
	free(o->token_file);
	free(o->cache_dir);
	free(o->cache_size);
	free(o->cache_io);
	free(o->ttl);
	free(o->timeout);
	free(o->commit_delay);
	free(o->commit_message);
	for (size_t i = 0; i < o->nlocal_only; i++)
		free(o->local_only[i]);
	free(o->local_only);
	for (size_t i = 0; i < o->nhf_cache; i++)
		free(o->hf_cache[i]);
	free(o->hf_cache);
	free(o->mountpoint);
}

/* Checks that @path is an empty directory we may mount on. */
static int mount_check_point(const char *path)
{
	struct stat st;
	struct dirent *de;
	DIR *d;

	if (stat(path, &st) < 0) {
		log_msg(LOG_ERR, "mountpoint '%s': %s", path, strerror(errno));
		return -1;
	}
	if (!S_ISDIR(st.st_mode)) {
		log_msg(LOG_ERR, "mountpoint '%s' is not a directory", path);
		return -1;
	}
	d = opendir(path);
	if (!d) {
		log_msg(LOG_ERR, "mountpoint '%s': %s", path, strerror(errno));
		return -1;
	}
	while ((de = readdir(d))) {
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) {
			closedir(d);
			log_msg(LOG_ERR, "mountpoint '%s' is not empty", path);
			return -1;
		}
	}
	closedir(d);
	return 0;
}

static int mount_parse_seconds(const char *what, const char *s, int def, int *out)
{
	char *end;
	long v;

	if (!s) {
		*out = def;
		return 0;
	}
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < 0 || v > 86400 * 365) {
		log_msg(LOG_ERR, "%s '%s' is not a number of seconds", what, s);
		return -1;
	}
	*out = (int)v;
	return 0;
}

/* libfuse's messages go through our log. */
static void mount_fuse_log(enum fuse_log_level level, const char *fmt, va_list ap)
{
	log_vmsg((int)level, fmt, ap);
}

static void mount_cache_log(int level, const char *fmt, va_list ap)
{
	log_vmsg(level, fmt, ap);
}

/*
 * Raises the read-ahead of the mount's backing device to FS_MAX_READ, so the
 * kernel sends 1 MiB reads (MEASUREMENTS.md: max_read alone is not enough).
 * The device is found in /proc/self/mountinfo, not with stat(2), which would
 * ask this very filesystem before it serves requests.  Needs root; without it
 * the default (128 KiB) stays.
 */
static void mount_raise_readahead(const char *mountpoint)
{
	char line[8192], want[PATH_MAX], path[128];
	FILE *f = fopen("/proc/self/mountinfo", "re");
	unsigned int major = 0, minor = 0;
	bool found = false;
	int fd;

	if (!f || !realpath(mountpoint, want)) {
		if (f)
			fclose(f);
		return;
	}
	while (fgets(line, sizeof(line), f)) {
		char mnt[PATH_MAX];

		/* id parent major:minor root mountpoint ... */
		if (sscanf(line, "%*u %*u %u:%u %*s %4095s", &major, &minor, mnt) == 3 &&
		    !strcmp(mnt, want))
			found = true; /* the last match is the newest mount */
	}
	fclose(f);
	if (!found)
		return;
	snprintf(path, sizeof(path), "/sys/class/bdi/%u:%u/read_ahead_kb", major, minor);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write(fd, "1024", 4) != 4)
		log_msg(LOG_INFO, "cannot raise the read-ahead of '%s' (%s): reads stay at 128 KiB",
			mountpoint, strerror(errno));
	if (fd >= 0)
		close(fd);
}

/* How long an unmount waits for pending commits. */
#define MOUNT_DRAIN_SECONDS 30

/* The state of a mount, built by mount_prepare() and freed by mount_release(). */
struct mount {
	struct http_client *http;
	struct cache *cache;
	struct blobsrc *blobsrc;
	struct fs fs;
	struct fuse_session *se;
	bool mounted;
};

static void mount_release(struct mount *m)
{
	if (m->se) {
		if (m->mounted)
			fuse_session_unmount(m->se);
		fuse_remove_signal_handlers(m->se);
		fs_set_session(&m->fs, NULL);
		fuse_session_destroy(m->se);
	}
	/* open files are journaled as they are closed, then pending commits go */
	fs_handles_release(&m->fs);
	stage_drain(m->fs.stage, MOUNT_DRAIN_SECONDS);
	stage_free(m->fs.stage);
	fetch_free(m->fs.fetch);
	blobsrc_free(m->blobsrc);
	meta_free(m->fs.meta);
	fs_inodes_free(m->fs.inodes);
	free(m->fs.me);
	hub_names_release(&m->fs.orgs);
	cache_close(m->cache);
	http_client_free(m->http);
}

/* Whether directory @dir is @mountpoint or below it: the mount reading
 * itself would wait on itself.  (The mountpoint is empty when this runs, so
 * such a directory cannot exist yet; a huggingface_hub cache set to the
 * mount's own view stays unused even if it did.) */
static bool mount_is_inside(const char *dir, const char *mountpoint)
{
	char *d = realpath(dir, NULL), *m = realpath(mountpoint, NULL);
	size_t len = m ? strlen(m) : 0;
	bool inside = d && m && !strncmp(d, m, len) && (d[len] == '/' || d[len] == '\0');

	free(d);
	free(m);
	return inside;
}

/* The huggingface_hub caches read as blob sources: the --hf-cache
 * directories, else the default one when it is a directory (and not
 * --no-hf-cache), none inside the mountpoint.  *@out stays NULL when there
 * are none.  Returns 0, or -1 when out of memory. */
static int mount_blob_sources(const struct mount_opts *o, struct cache *cache,
			      struct blobsrc **out)
{
	const char **dirs = NULL;
	size_t n = 0;
	char *def = NULL;
	struct stat st;
	int rc = 0;

	*out = NULL;
	if (o->nhf_cache == 0 && !o->no_hf_cache) {
		def = options_hf_cache_dir();
		if (!def || stat(def, &st) < 0 || !S_ISDIR(st.st_mode)) {
			if (def)
				log_msg(LOG_DEBUG, "no huggingface_hub cache at '%s'", def);
			free(def);
			return 0;
		}
	}
	dirs = calloc(o->nhf_cache + 1, sizeof(*dirs));
	if (!dirs) {
		free(def);
		return -1;
	}
	for (size_t i = 0; i <= o->nhf_cache; i++) {
		const char *d = i < o->nhf_cache ? o->hf_cache[i] : def;

		if (!d)
			continue;
		if (mount_is_inside(d, o->mountpoint)) {
			log_msg(LOG_WARNING,
				"huggingface_hub cache '%s' is inside the mountpoint; not used", d);
			continue;
		}
		dirs[n++] = d;
	}
	if (n > 0 && !(*out = blobsrc_new(dirs, n, cache, &rc)))
		log_msg(LOG_ERR, "cannot set up the huggingface_hub caches: %s", strerror(-rc));
	free(dirs);
	free(def);
	return rc ? -1 : 0;
}

static int mount_run(struct mount_opts *o, struct fuse_args *args, int notify_fd)
{
	struct http_client_config hc = { 0 };
	struct cache_config cc = { 0 };
	struct meta_config mc = { 0 };
	struct fetch_config fc = { 0 };
	struct stage_config sc = { 0 };
	struct mount m;
	struct hub_whoami who;
	const char *token_source = NULL;
	char *endpoint = NULL, *token = NULL, *cache_dir = NULL;
	char identity[CACHE_ID_MAX];
	uint64_t cache_size = 10ULL << 30;
	int ttl, timeout, commit_delay, rc, status = 1;
	bool offline;

	memset(&m, 0, sizeof(m));
	memset(&who, 0, sizeof(who));
	if (mount_parse_seconds("--ttl", o->ttl, 10, &ttl) ||
	    mount_parse_seconds("--timeout", o->timeout, 30, &timeout) ||
	    mount_parse_seconds("--commit-delay", o->commit_delay, 2, &commit_delay))
		return 1;
	if (o->commit_message && !stage_message_valid(o->commit_message)) {
		log_msg(LOG_ERR, "--commit-message: 1 to %d bytes of text on one line, please",
			STAGE_MESSAGE_MAX);
		return 1;
	}
	if (o->cache_size && (options_parse_size(o->cache_size, &cache_size) || cache_size == 0)) {
		log_msg(LOG_ERR, "--cache-size '%s' is not a size (examples: 500M, 10G)", o->cache_size);
		return 1;
	}
	if (o->cache_io && strcmp(o->cache_io, "auto")) {
		if (!strcmp(o->cache_io, "direct")) {
			cc.io = CACHE_IO_DIRECT;
		} else if (!strcmp(o->cache_io, "buffered")) {
			cc.io = CACHE_IO_BUFFERED;
		} else {
			log_msg(LOG_ERR, "--cache-io '%s': auto, direct or buffered, please",
				o->cache_io);
			return 1;
		}
	}
	offline = o->offline || options_truthy(getenv("HF_HUB_OFFLINE"));
	endpoint = options_endpoint(o->endpoint);
	cache_dir = options_cache_dir(o->cache_dir);
	if (!endpoint || !cache_dir) {
		log_msg(LOG_ERR, "no cache directory: set --cache-dir or HOME");
		goto out;
	}
	rc = options_token(o->token_file, &token, &token_source);
	options_token_env_scrub();
	if (rc) {
		log_msg(LOG_ERR, "cannot read the token file '%s': %s", o->token_file, strerror(-rc));
		goto out;
	}
	/* Cached facts are kept per token: a short fingerprint names it. */
	strcpy(identity, "anonymous");
	if (token && cache_id_of_buffer(CACHE_ID_SHA256, token, strlen(token), identity) == 0)
		identity[16] = '\0';

	if (http_global_init())
		goto out;
	hc.endpoint = endpoint;
	hc.token = token;
	hc.stall_timeout = timeout;
	hc.max_retries = -1;
	m.http = http_client_new(&hc, &rc);
	options_token_free(token);
	token = NULL;
	if (!m.http) {
		log_msg(LOG_ERR, "endpoint '%s' is not an http or https URL", endpoint);
		goto out_global;
	}

	cc.dir = cache_dir;
	cc.limit = cache_size;
	cc.lock = CACHE_LOCK_SHARED;
	cc.log = mount_cache_log;
	m.cache = cache_open(&cc, &rc);
	if (!m.cache) {
		log_msg(LOG_ERR, "cannot open the cache '%s': %s", cache_dir,
			rc == -EPROTO ? "written by a newer hubfs" : strerror(-rc));
		goto out_mount;
	}
	{
		unsigned long fs_type;
		bool direct = cache_direct_io(m.cache, &fs_type);

		log_msg(LOG_INFO, "cache '%s' (file system type %#lx): blob content %s", cache_dir,
			fs_type, direct ? "with O_DIRECT" : "through the page cache");
	}
	mc.endpoint = endpoint;
	mc.identity = identity;
	mc.http = m.http;
	mc.cache = m.cache;
	mc.ttl = ttl;
	mc.offline = offline;
	m.fs.meta = meta_new(&mc, &rc);
	if (!m.fs.meta)
		goto out_mount;

	/* Is the Hub there, and does it take the token? */
	if (http_client_has_token(m.http)) {
		rc = meta_whoami(m.fs.meta, &who);
		if (rc == -EACCES) {
			log_msg(LOG_ERR, "the token from %s was refused by '%s'", token_source, endpoint);
			goto out_mount;
		}
		if (rc) {
			log_msg(LOG_ERR, "cannot reach '%s' and nothing is cached: %s", endpoint,
				strerror(-rc));
			goto out_mount;
		}
		m.fs.me = who.name;
		m.fs.orgs.names = who.orgs;
		m.fs.orgs.n = who.n_orgs;
	} else if (!offline) {
		struct cache_stats st;

		rc = hub_ping(m.http);
		if (rc) {
			if (cache_stats(m.cache, &st) || st.blobs == 0) {
				log_msg(LOG_ERR, "cannot reach '%s' and nothing is cached: %s", endpoint,
					strerror(-rc));
				goto out_mount;
			}
			log_msg(LOG_WARNING, "offline: cannot reach '%s' (%s); serving what is cached",
				endpoint, strerror(-rc));
		}
	}
	if (meta_offline(m.fs.meta) && !offline)
		log_msg(LOG_WARNING, "offline: cannot reach '%s'; serving what is cached", endpoint);

	if (mount_blob_sources(o, m.cache, &m.blobsrc))
		goto out_mount;
	fc.http = m.http;
	fc.cache = m.cache;
	fc.blobsrc = m.blobsrc;
	fc.offline = offline;
	m.fs.fetch = fetch_new(&fc, &rc);
	m.fs.inodes = fs_inodes_new();
	if (!m.fs.fetch || !m.fs.inodes || fs_handles_init(&m.fs))
		goto out_mount;
	m.fs.cache = m.cache;
	m.fs.cache_dir = realpath(cache_dir, NULL); /* NULL: the xattr is absent */
	m.fs.token_file = o->token_file ? realpath(o->token_file, NULL) : NULL;
	m.fs.http = m.http;
	m.fs.ttl = ttl;
	m.fs.offline = offline;
	m.fs.public_repos = o->public_repos != 0;
	m.fs.uid = getuid();
	m.fs.gid = getgid();
	m.fs.mount_time = (int64_t)time(NULL);
	if (!offline) {
		sc.cache = m.cache;
		sc.http = m.http;
		sc.meta = m.fs.meta;
		sc.delay = commit_delay;
		sc.message = o->commit_message;
		sc.local_only = (const char *const *)o->local_only;
		sc.nlocal_only = o->nlocal_only;
		sc.committed = fs_committed;
		sc.committed_arg = &m.fs;
		m.fs.stage = stage_new(&sc, &rc);
		if (!m.fs.stage) {
			log_msg(LOG_ERR, "cannot resume the staged changes in '%s': %s", cache_dir,
				strerror(-rc));
			goto out_mount;
		}
	}

	m.se = fuse_session_new(args, &fs_ops, sizeof(fs_ops), &m.fs);
	fs_set_session(&m.fs, m.se);
	if (!m.se)
		goto out_mount;
	if (fuse_set_signal_handlers(m.se))
		goto out_mount;
	if (fuse_session_mount(m.se, o->mountpoint)) {
		log_msg(LOG_ERR, "cannot mount on '%s'", o->mountpoint);
		goto out_mount;
	}
	m.mounted = true;
	mount_raise_readahead(o->mountpoint);
	log_msg(LOG_NOTICE, "'%s' mounted on '%s'%s", endpoint, o->mountpoint,
		offline ? " (offline)" : "");

	if (notify_fd >= 0) {
		int null = open("/dev/null", O_RDWR | O_CLOEXEC);

		if (write(notify_fd, "OK", 2) != 2)
			log_msg(LOG_WARNING, "cannot tell the parent process that the mount is ready");
		close(notify_fd);
		log_use_syslog(true, "hubfs");
		if (null >= 0) {
			dup2(null, STDIN_FILENO);
			dup2(null, STDOUT_FILENO);
			dup2(null, STDERR_FILENO);
			close(null);
		}
		if (chdir("/") < 0)
			log_msg(LOG_DEBUG, "chdir /: %s", strerror(errno));
	}
	{
		struct fuse_loop_config *lc = fuse_loop_cfg_create();

		if (lc) {
			fuse_loop_cfg_set_max_threads(lc, 64);
			fuse_loop_cfg_set_idle_threads(lc, 10);
		}
		rc = fuse_session_loop_mt(m.se, lc);
		fuse_loop_cfg_destroy(lc);
	}
	status = rc == 0 ? 0 : 1;

out_mount:
	mount_release(&m);
	free(m.fs.cache_dir);
	free(m.fs.token_file);
out_global:
	http_global_release();
out:
	options_token_free(token);
	free(endpoint);
	free(cache_dir);
	return status;
}

int cmd_mount(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct mount_opts o;
	char *point = NULL;
	int pipefd[2], status;
	pid_t pid;
	char buf[4];

	memset(&o, 0, sizeof(o));
	if (fuse_opt_parse(&args, &o, mount_spec, mount_opt_proc) == -1) {
		status = 2;
		goto out;
	}
	if (o.help) {
		fputs(mount_usage, stdout);
		status = 0;
		goto out;
	}
	if (!o.mountpoint) {
		fputs(mount_usage, stderr);
		status = 2;
		goto out;
	}
	if (o.debug) {
		o.foreground = 1;
		log_set_level(LOG_DEBUG);
		fuse_opt_add_arg(&args, "-d");
	}
	/* Other users get what the mode bits say (files 0644, directories
	 * 0755, owned by the mounting user): the kernel checks them.  Without
	 * it, any user could change the branches of the mounting user's token. */
	if (o.allow_other && !o.default_permissions)
		fuse_opt_add_arg(&args, "-odefault_permissions");
	fuse_set_log_func(mount_fuse_log);
	point = realpath(o.mountpoint, NULL);
	if (!point || mount_check_point(point)) {
		if (!point)
			log_msg(LOG_ERR, "mountpoint '%s': %s", o.mountpoint, strerror(errno));
		status = 1;
		goto out;
	}
	free(o.mountpoint);
	o.mountpoint = point;
	{
		char opts[128];

		snprintf(opts, sizeof(opts), "-ofsname=hubfs,subtype=hubfs,max_read=%u",
			 FS_MAX_READ);
		fuse_opt_add_arg(&args, opts);
	}
	if (o.foreground) {
		status = mount_run(&o, &args, -1);
		goto out;
	}
	if (pipe2(pipefd, O_CLOEXEC) < 0) {
		log_msg(LOG_ERR, "pipe: %s", strerror(errno));
		status = 1;
		goto out;
	}
	pid = fork();
	if (pid < 0) {
		log_msg(LOG_ERR, "fork: %s", strerror(errno));
		status = 1;
		goto out;
	}
	if (pid == 0) {
		close(pipefd[0]);
		setsid();
		_exit(mount_run(&o, &args, pipefd[1]));
	}
	close(pipefd[1]);
	status = 1;
	if (read(pipefd[0], buf, 2) == 2 && !memcmp(buf, "OK", 2))
		status = 0;
	else
		waitpid(pid, NULL, 0);
	close(pipefd[0]);
out:
	mount_opts_release(&o);
	fuse_opt_free_args(&args);
	return status;
}

/*
 * hubfs umount: unmounts with fusermount3, then waits for the daemon, which
 * commits what is pending before it exits (stage_drain(), at most
 * MOUNT_DRAIN_SECONDS), and says what stays staged.
 *
 * The daemon is found through the xattrs of the mount's root (cmd.h): its
 * pid, and its cache, whose journal tells what is left (read without a
 * lock while the daemon still writes it, as hubfs status does).  Without
 * them (an older daemon, a dead mount) it only unmounts.  The pid is
 * checked against its start time, so a process that takes the pid later is
 * not waited for; a zombie (a foreground daemon not yet reaped) has exited.
 *
 * Progress: on a terminal, one line rewritten about once a second; to a
 * file or pipe, one line when the wait begins and one at its end, so logs
 * and tests are not flooded.
 */

static const char umount_usage[] =
	"usage: hubfs umount MOUNTPOINT\n"
	"\n"
	"Unmounts, then waits (at most 60 s) while the daemon commits the pending\n"
	"changes, and says what stays staged.  Exit status: 0 when nothing is\n"
	"left, 3 when unmounted but changes stay staged (the next mount on the same\n"
	"cache commits them), 1 when the unmount failed, 2 for a usage error.\n";

/* How long umount waits for the daemon: its drain and the commit in flight. */
#define UMOUNT_WAIT_SECONDS (2 * MOUNT_DRAIN_SECONDS)
/* The exit status when the unmount worked but changes stay staged. */
#define UMOUNT_STAGED 3
/* How often the daemon is looked for, and the journal read (progress). */
#define UMOUNT_POLL_MS 100
#define UMOUNT_PROGRESS_MS 1000

static int64_t umount_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The state and start time (clock ticks after boot) of process @pid from
 * /proc: 0, or -errno (-ENOENT when there is no such process). */
static int umount_proc_stat(long pid, char *state, unsigned long long *start)
{
	char path[64], buf[1024], *p;
	ssize_t len;
	int fd;

	snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	len = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (len <= 0)
		return len < 0 ? -errno : -ENOENT;
	buf[len] = '\0';
	/* PID (COMM) STATE ... with the start time the 22nd field; COMM may
	 * hold anything, so fields are counted from its last ')'. */
	p = strrchr(buf, ')');
	if (!p || sscanf(p + 1,
			 " %c %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s "
			 "%*s %*s %llu",
			 state, start) != 2)
		return -EIO;
	return 0;
}

/* The daemon being waited for. */
struct umount_daemon {
	long pid;
	bool proc;		  /* /proc tells its start time */
	unsigned long long start; /* ticks after boot, when proc */
};

/* Whether the daemon still runs: not when the pid is gone, a zombie, or
 * another process's. */
static bool umount_running(const struct umount_daemon *d)
{
	unsigned long long start;
	char state;

	if (!d->proc)
		return kill((pid_t)d->pid, 0) == 0 || errno == EPERM;
	if (umount_proc_stat(d->pid, &state, &start))
		return false;
	return state != 'Z' && state != 'X' && start == d->start;
}

/* The journal's sums over every branch. */
struct umount_left {
	uint64_t changes, bytes, sent;
};

static int umount_sum(struct cache *c, struct umount_left *left)
{
	struct cache_stage_branch *b = NULL;
	size_t n = 0;
	int rc = cache_stage_branches(c, &b, &n);

	memset(left, 0, sizeof(*left));
	for (size_t i = 0; !rc && i < n; i++) {
		left->changes += b[i].changes;
		left->bytes += b[i].bytes;
		left->sent += b[i].sent;
	}
	cache_stage_branches_free(b, n);
	return rc;
}

/* "3 changes to commit, 12.0 MiB of 64.0 MiB uploaded" into @buf. */
static void umount_progress_text(const struct umount_left *left, char *buf, size_t size)
{
	char sent[CMD_SIZE_TEXT], total[CMD_SIZE_TEXT];
	int len = snprintf(buf, size, "%llu change%s to commit", (unsigned long long)left->changes,
			   left->changes == 1 ? "" : "s");

	if (left->bytes && len > 0 && (size_t)len < size)
		snprintf(buf + len, size - (size_t)len, ", %s of %s uploaded",
			 cmd_size_text(left->sent, sent), cmd_size_text(left->bytes, total));
}

/* Waits until the daemon exits or UMOUNT_WAIT_SECONDS pass, showing the
 * progress of the journal of @c (may be NULL).  Returns whether the daemon
 * still runs. */
static bool umount_wait(const struct umount_daemon *d, struct cache *c)
{
	int64_t deadline = umount_now_ms() + UMOUNT_WAIT_SECONDS * 1000, next = 0;
	struct timespec poll = { 0, UMOUNT_POLL_MS * 1000000L };
	bool tty = isatty(STDERR_FILENO), shown = false, running;
	struct umount_left left;
	char text[160];

	while ((running = umount_running(d)) && umount_now_ms() < deadline) {
		if (c && umount_now_ms() >= next) {
			next = umount_now_ms() + UMOUNT_PROGRESS_MS;
			if (!umount_sum(c, &left) && left.changes) {
				umount_progress_text(&left, text, sizeof(text));
				if (tty)
					fprintf(stderr, "\rhubfs: %s\033[K", text);
				else if (!shown)
					fprintf(stderr,
						"hubfs: waiting at most %d s for the daemon: %s\n",
						UMOUNT_WAIT_SECONDS, text);
				shown = true;
			}
		}
		nanosleep(&poll, NULL);
	}
	if (tty && shown)
		fputs("\r\033[K", stderr);
	return running;
}

/* Says what stays staged in the journal of @c (cache @dir).  Returns
 * UMOUNT_STAGED when something does, 0 otherwise. */
static int umount_report(struct cache *c, const char *dir, bool waited)
{
	char repo[CACHE_STAGE_REPO_MAX + 16], why[CACHE_STAGE_ERROR_MAX + 64];
	struct cache_stage_branch *b = NULL;
	uint64_t conflicts = 0;
	size_t n = 0, nb, staged = 0;
	int rc = cache_stage_branches(c, &b, &n);

	nb = n;
	if (rc) {
		log_msg(LOG_WARNING, "cannot read the write journal of '%s': %s", dir,
			strerror(-rc));
		return 0;
	}
	for (size_t i = 0; i < n; i++) {
		uint64_t failed = b[i].by_state[CACHE_STAGE_FAILED];
		uint64_t refused = b[i].by_state[CACHE_STAGE_REFUSED];
		uint64_t conflict = b[i].by_state[CACHE_STAGE_CONFLICT];
		/* scratch files are never committed: not "still staged" */
		uint64_t changes = b[i].changes - b[i].by_state[CACHE_STAGE_LOCAL];

		if (!changes)
			continue;
		why[0] = '\0';
		if (conflict || failed || refused)
			snprintf(why, sizeof(why), " (%s%s%s%s%s%s%s)", conflict ? "in conflict" : "",
				 conflict && (failed || refused) ? ", " : "", failed ? "failed" : "",
				 failed && refused ? ", " : "", refused ? "refused" : "",
				 b[i].error[0] ? ": " : "", b[i].error);
		log_msg(LOG_WARNING, "%llu change%s of %s@%s %s still staged%s",
			(unsigned long long)changes, changes == 1 ? "" : "s",
			cmd_repo_text(b[i].repo, repo, sizeof(repo)), b[i].branch,
			changes == 1 ? "is" : "are", why);
		conflicts += conflict;
		staged++;
	}
	n = staged;
	if (n)
		log_msg(LOG_WARNING,
			"they stay in the cache '%s': the next mount on it commits them%s "
			"('hubfs status --cache-dir %s' shows them)",
			dir, conflicts ? ", except those in conflict" : "", dir);
	else if (waited)
		fprintf(stderr, "hubfs: every change is on the Hub\n");
	cache_stage_branches_free(b, nb);
	return n ? UMOUNT_STAGED : 0;
}

/* Runs fusermount3 -u @mountpoint: 0, or 1 (fusermount3 said why). */
static int umount_fusermount(const char *mountpoint)
{
	char *v[] = { (char *)"fusermount3", (char *)"-u", (char *)mountpoint, NULL };
	pid_t pid;
	int st, rc;

	rc = posix_spawnp(&pid, v[0], NULL, NULL, v, environ);
	if (rc) {
		log_msg(LOG_ERR, "cannot run 'fusermount3': %s", strerror(rc));
		return 1;
	}
	if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		return 1;
	return 0;
}

int cmd_umount(int argc, char *argv[])
{
	struct cmd_mount_info info = { 0 };
	struct umount_daemon d = { 0 };
	struct umount_left left = { 0 };
	struct cache *c = NULL;
	bool running;
	char state;
	int rc, status;

	if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
		fputs(umount_usage, stdout);
		return 0;
	}
	if (argc != 2 || argv[1][0] == '-') {
		fputs(umount_usage, stderr);
		return 2;
	}
	/* Who serves the mount, before it goes; without the xattrs (an older
	 * daemon, a dead mount, not hubfs) only the unmount is done. */
	if (cmd_mount_info_read(argv[1], &info) == 0 && info.pid) {
		d.pid = info.pid;
		rc = umount_proc_stat(d.pid, &state, &d.start);
		d.proc = rc == 0;
		if (rc == -ENOENT)
			d.pid = 0; /* not in our pid namespace: nothing to wait for */
		c = cmd_cache_open_existing(info.cache_dir, &rc);
		if (c)
			umount_sum(c, &left);
	}
	status = umount_fusermount(argv[1]);
	if (status || !d.pid)
		goto out;
	running = umount_wait(&d, c);
	if (running)
		log_msg(LOG_WARNING,
			"the daemon (pid %ld) still runs after %d s: it goes on committing, "
			"then exits",
			d.pid, UMOUNT_WAIT_SECONDS);
	if (c)
		status = umount_report(c, info.cache_dir, left.changes > 0);
out:
	cache_close(c);
	cmd_mount_info_release(&info);
	return status;
}
