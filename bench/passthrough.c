/*
 * A minimal FUSE passthrough of ONE file, the reference for hubfs's warm and
 * hot reads in bench/read_bench.py (built there into a temp dir, not by make).
 *
 *     passthrough SOURCE_FILE MOUNTPOINT [FUSE options]
 *
 * The mount's root holds one read-only file, "file", with SOURCE_FILE's size.
 * Reads are a pread(2) into a page-aligned buffer and one fuse_reply_buf, the
 * way hubfs answers from its blob cache.  The connection settings are hubfs's
 * (src/fs_ops.c fs_init): max_read and max_readahead 1 MiB, no async reads;
 * opens set keep_cache.  The low-level API, multi-threaded loop, like hubfs.
 */

#define FUSE_USE_VERSION 35

#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PT_MAX_READ (1u << 20)
#define PT_FILE_INO 2

static int pt_fd = -1;
static struct stat pt_st;

static void pt_attr(fuse_ino_t ino, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	if (ino == FUSE_ROOT_ID) {
		st->st_mode = S_IFDIR | 0555;
		st->st_nlink = 2;
	} else {
		st->st_mode = S_IFREG | 0444;
		st->st_nlink = 1;
		st->st_size = pt_st.st_size;
		st->st_blocks = (pt_st.st_size + 511) / 512;
	}
	st->st_mtim = pt_st.st_mtim;
}

static void pt_init(void *userdata, struct fuse_conn_info *conn)
{
	(void)userdata;
	conn->max_read = PT_MAX_READ;
	conn->max_readahead = PT_MAX_READ;
	conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
	conn->want &= ~FUSE_CAP_ASYNC_READ;
}

static void pt_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fuse_entry_param e;

	if (parent != FUSE_ROOT_ID || strcmp(name, "file")) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	memset(&e, 0, sizeof(e));
	e.ino = PT_FILE_INO;
	e.attr_timeout = 3600;
	e.entry_timeout = 3600;
	pt_attr(e.ino, &e.attr);
	fuse_reply_entry(req, &e);
}

static void pt_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct stat st;

	(void)fi;
	pt_attr(ino, &st);
	fuse_reply_attr(req, &st, 3600);
}

static void pt_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	if (ino != PT_FILE_INO) {
		fuse_reply_err(req, EISDIR);
		return;
	}
	if ((fi->flags & O_ACCMODE) != O_RDONLY) {
		fuse_reply_err(req, EROFS);
		return;
	}
	fi->keep_cache = 1;
	fuse_reply_open(req, fi);
}

static void pt_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	void *buf;
	ssize_t n;

	(void)ino;
	(void)fi;
	if (size > PT_MAX_READ)
		size = PT_MAX_READ;
	if (posix_memalign(&buf, 4096, size ? size : 1)) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	n = pread(pt_fd, buf, size, off);
	if (n < 0)
		fuse_reply_err(req, errno);
	else
		fuse_reply_buf(req, buf, (size_t)n);
	free(buf);
}

static void pt_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	char buf[512];
	size_t len = 0;
	struct stat st;

	(void)fi;
	if (ino != FUSE_ROOT_ID) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	if (size > sizeof(buf))
		size = sizeof(buf);
	if (off < 1) {
		pt_attr(FUSE_ROOT_ID, &st);
		len += fuse_add_direntry(req, buf + len, size - len, ".", &st, 1);
	}
	if (off < 2) {
		pt_attr(FUSE_ROOT_ID, &st);
		len += fuse_add_direntry(req, buf + len, size - len, "..", &st, 2);
	}
	if (off < 3) {
		pt_attr(PT_FILE_INO, &st);
		len += fuse_add_direntry(req, buf + len, size - len, "file", &st, 3);
	}
	fuse_reply_buf(req, buf, len);
}

static const struct fuse_lowlevel_ops pt_ops = {
	.init = pt_init,
	.lookup = pt_lookup,
	.getattr = pt_getattr,
	.open = pt_open,
	.read = pt_read,
	.readdir = pt_readdir,
};

int main(int argc, char **argv)
{
	struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
	struct fuse_session *se;
	struct fuse_loop_config *cfg;
	int rc = 1;

	if (argc < 3) {
		fprintf(stderr, "usage: passthrough SOURCE_FILE MOUNTPOINT [FUSE options]\n");
		return 2;
	}
	pt_fd = open(argv[1], O_RDONLY | O_CLOEXEC);
	if (pt_fd < 0 || fstat(pt_fd, &pt_st)) {
		perror(argv[1]);
		return 1;
	}
	fuse_opt_add_arg(&args, argv[0]);
	for (int i = 3; i < argc; i++)
		fuse_opt_add_arg(&args, argv[i]);
	fuse_opt_add_arg(&args, "-ofsname=passthrough,subtype=passthrough,max_read=1048576");
	se = fuse_session_new(&args, &pt_ops, sizeof(pt_ops), NULL);
	if (!se)
		goto out_args;
	if (fuse_set_signal_handlers(se))
		goto out_session;
	if (fuse_session_mount(se, argv[2]))
		goto out_signals;
	cfg = fuse_loop_cfg_create();
	rc = fuse_session_loop_mt(se, cfg) ? 1 : 0;
	fuse_loop_cfg_destroy(cfg);
	fuse_session_unmount(se);
out_signals:
	fuse_remove_signal_handlers(se);
out_session:
	fuse_session_destroy(se);
out_args:
	fuse_opt_free_args(&args);
	close(pt_fd);
	return rc;
}
