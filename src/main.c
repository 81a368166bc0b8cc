/*
 * hubfs: the command line.
 *
 * Dispatches "hubfs COMMAND [ARGS]" to the command's entry point (cmd.h).
 */
#include "config.h"

#define FUSE_USE_VERSION 314
#include <fuse.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache_hash.h"
#include "cmd.h"
#include "http.h"
#include "log.h"

static const char hubfs_usage[] =
	"usage: hubfs COMMAND [OPTIONS] [ARGS]\n"
	"\n"
	"The Hugging Face Hub as a filesystem.\n"
	"\n"
	"commands:\n"
	"  mount MOUNTPOINT      mount the Hub on MOUNTPOINT\n"
	"  umount MOUNTPOINT     unmount, waiting for pending commits\n"
	"  status [MOUNTPOINT]   changes not yet on the Hub, upload progress, errors\n"
	"  log PATH              the commits of a repo, revision, file or folder\n"
	"  commit PATH [-m MESSAGE]\n"
	"                        commit the pending changes of PATH's branch now\n"
	"  cache stats|prune|clear\n"
	"                        show, trim or empty the blob cache\n"
	"\n"
	"'hubfs COMMAND --help' shows a command's options.  'hubfs SOURCE MOUNTPOINT\n"
	"[-o OPTIONS]' (SOURCE a URL, or 'hubfs' for the default Hub) is 'hubfs mount',\n"
	"as mount -t fuse.hubfs and fstab run it.\n"
	"\n"
	"options:\n"
	"  -h, --help            show this help and exit\n"
	"  -V, --version         show the version and the libraries' and exit\n"
	"\n"
	"environment:\n"
	"  HF_ENDPOINT           the Hub to use (default https://huggingface.co)\n"
	"  HF_TOKEN              access token (else HF_TOKEN_PATH, $HF_HOME/token,\n"
	"                        ~/.cache/huggingface/token)\n"
	"\n"
	"See hubfs(1) for the layout of the mount and its semantics.\n";

static void hubfs_print_version(void)
{
	printf("hubfs %s\n", PACKAGE_VERSION);
	printf("libfuse %s\n", fuse_pkgversion());
	printf("%s\n", http_lib_version());
	printf("%s\n", cache_hash_lib_version());
}


/* True if @s names what to mount, as mount(8) passes it: "hubfs" (the
 * default endpoint) or an http(s) URL. */
static bool main_is_source(const char *s)
{
	return !strcmp(s, "hubfs") || !strncmp(s, "http://", 7) || !strncmp(s, "https://", 8);
}

/* "hubfs SOURCE MOUNTPOINT [ARGS]" as "hubfs mount MOUNTPOINT
 * [--endpoint SOURCE] [ARGS]". */
static int main_mount_source(int argc, char *argv[])
{
	char **v = calloc((size_t)argc + 2, sizeof(*v));
	int n = 0, rc;

	if (!v) {
		log_msg(LOG_ERR, "out of memory");
		return 1;
	}
	v[n++] = (char *)"mount";
	if (strcmp(argv[1], "hubfs")) {
		v[n++] = (char *)"--endpoint";
		v[n++] = argv[1];
	}
	for (int i = 2; i < argc; i++)
		v[n++] = argv[i];
	v[n] = NULL;
	rc = cmd_mount(n, v);
	free(v);
	return rc;
}

int main(int argc, char *argv[])
{
	const char *cmd;

	if (argc < 2) {
		fputs(hubfs_usage, stderr);
		return 2;
	}
	cmd = argv[1];
	if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
		fputs(hubfs_usage, stdout);
		return 0;
	}
	if (!strcmp(cmd, "-V") || !strcmp(cmd, "--version") || !strcmp(cmd, "version")) {
		hubfs_print_version();
		return 0;
	}
	if (!strcmp(cmd, "mount"))
		return cmd_mount(argc - 1, argv + 1);
	if (!strcmp(cmd, "umount") || !strcmp(cmd, "unmount"))
		return cmd_umount(argc - 1, argv + 1);
	if (!strcmp(cmd, "cache"))
		return cmd_cache(argc - 1, argv + 1);
	if (!strcmp(cmd, "status"))
		return cmd_status(argc - 1, argv + 1);
	if (!strcmp(cmd, "log"))
		return cmd_log(argc - 1, argv + 1);
	if (!strcmp(cmd, "commit"))
		return cmd_commit(argc - 1, argv + 1);
	/* mount(8) and fstab: "mount -t fuse.hubfs SOURCE MOUNTPOINT -o OPTS"
	 * runs "hubfs SOURCE MOUNTPOINT -o OPTS" (mount.fuse3). */
	if (argc >= 3 && main_is_source(cmd))
		return main_mount_source(argc, argv);
	log_msg(LOG_ERR, "unknown command '%s' (see 'hubfs --help')", cmd);
	return 2;
}
