/*
 * The commands of the hubfs program.  Each takes the arguments after the
 * command's name (argv[0] is the command) and returns the exit status.
 */
#ifndef HUBFS_CMD_H
#define HUBFS_CMD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

struct cache;

/* hubfs mount [options] MOUNTPOINT: returns once mounted (or in the
 * foreground, once unmounted). */
int cmd_mount(int argc, char *argv[]);

/* hubfs umount MOUNTPOINT: unmounts, waits for the daemon to commit what
 * is pending and exit, and says what stays staged.  Returns 0, 3 when
 * unmounted but changes stay staged, 1 when the unmount failed, 2 for a
 * usage error. */
int cmd_umount(int argc, char *argv[]);

/* hubfs status [MOUNTPOINT] [--cache-dir DIR] */
int cmd_status(int argc, char *argv[]);

/* hubfs log [--json] [-n N] [--token-file FILE] PATH (cmd_log.c) */
int cmd_log(int argc, char *argv[]);

/* hubfs commit [-m MESSAGE] [--description TEXT] PATH (cmd_commit.c):
 * 0 once committed or when nothing was pending, 1 when not committed, 2
 * for a usage error. */
int cmd_commit(int argc, char *argv[]);

/* hubfs cache stats|prune|clear [--cache-dir DIR] [--cache-size SIZE] */
int cmd_cache(int argc, char *argv[]);

/*
 * Shared by status and umount (cmd_status.c).
 */

/* What the daemon of a hubfs mount tells of itself through the xattrs of
 * the mount's root. */
struct cmd_mount_info {
	char *cache_dir; /* user.hubfs.cache_dir, an absolute path; owned */
	long pid;	 /* user.hubfs.pid, or 0 when it is absent */
};

/* Reads the xattrs user.hubfs.cache_dir and user.hubfs.pid of
 * @mountpoint's root into *@info (release it with
 * cmd_mount_info_release()).  Returns 0; -ENODATA when @mountpoint is not
 * the root of a hubfs mount; -EPROTO when it is one whose daemon does not
 * tell (an older hubfs); -ENOTCONN when it is a FUSE mount whose daemon is
 * gone; -EIO for a value that is not a path or a pid; or another -errno of
 * getxattr(2) (-ENOENT ...). */
int cmd_mount_info_read(const char *mountpoint, struct cmd_mount_info *info);

/* Frees what @info holds.  NULL is a no-op. */
void cmd_mount_info_release(struct cmd_mount_info *info);

/* Opens the cache @dir of a mount without a lock, to read its journal
 * while the daemon may still use it.  Creates nothing: a directory without
 * an index is -ENOENT.  Returns the cache (close it with cache_close()) or
 * NULL with *@err set; logs why. */
struct cache *cmd_cache_open_existing(const char *dir, int *err);

/* The type of a hubfs mount in /proc/self/mountinfo. */
#define CMD_FSTYPE "fuse.hubfs"

/* One mount of /proc/self/mountinfo; the strings point into the line read. */
struct cmd_mountinfo {
	char *point;	       /* the mount point, its octal escapes decoded */
	const char *fstype;    /* "fuse.hubfs" ... */
	const char *super_opts; /* "rw,user_id=0,..." or NULL */
};

/* Reads the next mount of @f (/proc/self/mountinfo) into @m; *@line and
 * *@cap are getline(3)'s buffer, which @m points into until the next call.
 * Returns false at the end. */
bool cmd_mountinfo_next(FILE *f, char **line, size_t *cap, struct cmd_mountinfo *m);

/* The value of xattr @name of @path, NUL-terminated, into @buf of @size
 * bytes.  Returns its length or -errno (-ENODATA when absent, -EIO when it
 * is too long or holds a NUL). */
ssize_t cmd_xattr(const char *path, const char *name, char *buf, size_t size);

/* Room for cmd_size_text(): "1023.9 KiB". */
#define CMD_SIZE_TEXT 24

/* @bytes for people, in @buf: "0 B", "512 B", "1.5 KiB", "12.0 MiB",
 * "2.3 GiB" (powers of 1024).  Returns @buf. */
const char *cmd_size_text(uint64_t bytes, char buf[CMD_SIZE_TEXT]);

/* The journal's repo key @key ("TYPE/NS/NAME") as the mount shows the repo:
 * "NS/NAME" for a model, "datasets/NS/NAME", "spaces/NS/NAME"; any other
 * key as it is.  Written to @buf of @size bytes; returns @buf. */
const char *cmd_repo_text(const char *key, char *buf, size_t size);

#endif
