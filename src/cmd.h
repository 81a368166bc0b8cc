/*
 * The commands of the hubfs program.  Each takes the arguments after the
 * command's name (argv[0] is the command) and returns the exit status.
 */
#ifndef HUBFS_CMD_H
#define HUBFS_CMD_H

/* hubfs mount [options] MOUNTPOINT: returns once mounted (or in the
 * foreground, once unmounted). */
int cmd_mount(int argc, char *argv[]);

/* hubfs umount MOUNTPOINT */
int cmd_umount(int argc, char *argv[]);

/* hubfs status [MOUNTPOINT] [--cache-dir DIR] */
int cmd_status(int argc, char *argv[]);

/* hubfs cache stats|prune|clear [--cache-dir DIR] [--cache-size SIZE] */
int cmd_cache(int argc, char *argv[]);

#endif
