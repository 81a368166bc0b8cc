/*
 * The inode table of the mount.
 *
 * A node is one name the kernel looked up: its full path from the mount root
 * (parsed with fs_path_parse()), and for files and directories inside a
 * revision the tree entry it was found as.  A file node's content never
 * changes: when a branch moves and a file's content changes, the next lookup
 * of its name makes a new node (new inode number), so the kernel may keep
 * each node's pages cached for as long as it likes.  The exception is a
 * file of a branch view whose staged content (stage.h) was opened through a
 * node ("live"): that content changes under the node, as a local file's
 * does, and later lookups of the path find the same node while the overlay
 * has the file.
 *
 * A node's inode number (FUSE's node id) names its content for the kernel's
 * page cache; the number stat(2) shows (st_ino) names the file: a node made
 * for a name whose node it replaces (new content at the path) shows the old
 * node's number, and so does a node made for the name a file was renamed to
 * by this mount (the table keeps the number for that path until it is
 * unlinked or renamed away), so that a file keeps its st_ino when it
 * changes or is renamed.
 *
 * Nodes are counted the kernel's way (nlookup: lookups minus forgets) plus
 * internal references (open files, requests in progress).  A node is freed
 * when both reach zero.  The root (FUSE_ROOT_ID) is never freed.
 *
 * Thread safety: every function may be called from any thread; the table has
 * one mutex, never held across anything but its own bookkeeping.
 */
#ifndef HUBFS_FS_INODE_H
#define HUBFS_FS_INODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cache_meta.h"
#include "fs_path.h"

struct fs_node {
	uint64_t ino;
	uint64_t st_ino;          /* what stat shows: see above */
	uint64_t parent;
	char *name;               /* in the parent ("" for the root) */
	char *fullpath;           /* from the mount root, no leading '/' */
	struct fs_path p;         /* parsed fullpath; p.path points into fullpath */
	/* Files and directories in a tree (p.kind == FS_PATH_ENTRY): */
	bool is_dir;
	uint64_t size;
	char oid[41];
	char sha256[65];
	char commit[41];          /* the commit the entry was found in */
	int64_t mtime;            /* the revision's date; atomic */
	bool stale;               /* atomic: this mount committed a change of the
				     path, so the content may differ now */
	bool writable;            /* its mode shows write permission (set when the
				     node is made: fs_ops.c, fs_child()) */
	bool live;                /* atomic: a writer or the overlay's content was
				     opened through it, so its content is the
				     path's staged one, which changes (fs_ops.c) */
	bool unlinked;            /* atomic: unlinked, removed or renamed over by
				     this mount (fs_inode_unhash(), fs_inode_rename()) */
	/* The rest is the table's. */
	char *renamed_to;         /* protected by the table's lock: the full path
				     this mount renamed the node's file to, or NULL */
	uint64_t nlookup;         /* protected by the table's lock */
	uint64_t refs;            /* protected by the table's lock */
	bool hashed;              /* protected by the table's lock: findable by name */
	struct fs_node *next_ino; /* protected by the table's lock */
	struct fs_node *next_name;/* protected by the table's lock */
};

struct fs_inodes;

/* Creates the table with its root node.  NULL when out of memory. */
struct fs_inodes *fs_inodes_new(void);
/* Frees the table and every node.  No other call may run. */
void fs_inodes_free(struct fs_inodes *t);

/* The node of @ino with a reference taken (release with fs_inode_put()), or
 * NULL when the kernel uses an inode number that does not exist. */
struct fs_node *fs_inode_get(struct fs_inodes *t, uint64_t ino);
void fs_inode_put(struct fs_inodes *t, struct fs_node *n);

/* Looks up the child @name of @parent, as @proto describes it (filled by the
 * caller: fullpath, p, entry fields; the table takes ownership of its
 * strings, also on failure).  If a hashed child of that name exists and is
 * the same (same kind, and for entries the same content ids), it is returned
 * with its mtime updated (read it with __atomic_load_n); otherwise @proto
 * becomes a new node replacing the old one in the name index, with its
 * st_ino (or the one fs_inode_rename() kept for its path) when both are
 * files or both directories.  In both cases nlookup is incremented and a
 * reference taken.
 * Returns NULL when out of memory. */
struct fs_node *fs_inode_link(struct fs_inodes *t, struct fs_node *parent, const char *name,
			      struct fs_node *proto);

/* The kernel forgot @nlookup lookups of @ino. */
void fs_inode_forget(struct fs_inodes *t, uint64_t ino, uint64_t nlookup);

/* Lookups of @name in @parent (full path @fullpath) find no node any more:
 * the file there was unlinked or removed, so the next file of that name is
 * another one.  The node stays for who holds it, marked unlinked. */
void fs_inode_unhash(struct fs_inodes *t, uint64_t parent, const char *name, const char *fullpath);

/* After this mount renamed @name of @parent (full path @from) to @newname of
 * @newparent (@to): the nodes of both names are unhashed, the one at @to
 * marked unlinked (it was replaced), and the source's st_ino is kept for
 * @to, and for the paths under it when a directory moved, so that the nodes
 * made for them show it.  Returns 0 or -ENOMEM (the file then shows a new
 * number). */
int fs_inode_rename(struct fs_inodes *t, uint64_t parent, const char *name, uint64_t newparent,
		    const char *newname, const char *from, const char *to);

/* The full path this mount last renamed the file of node @ino to (the
 * caller frees it), or NULL. */
char *fs_inode_renamed_to(struct fs_inodes *t, uint64_t ino);

/* The inode number of the node that lookups of @name in @parent find, or 0
 * when there is none. */
uint64_t fs_inode_find(struct fs_inodes *t, uint64_t parent, const char *name);

/* Calls @match(@arg, node) for every node, with the table's lock held
 * (@match must only read the node), and collects the inode numbers of the
 * nodes it returns true for into *@inos (the caller frees it with free()),
 * their number into *@n.  Returns 0 or -ENOMEM. */
int fs_inodes_collect(struct fs_inodes *t, bool (*match)(void *arg, const struct fs_node *n),
		      void *arg, uint64_t **inos, size_t *n);

/* Number of nodes in the table (for tests and statistics). */
uint64_t fs_inodes_count(struct fs_inodes *t);

#endif
