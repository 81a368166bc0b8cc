/*
 * Logging for the whole daemon.
 *
 * One entry point, log_msg(), with syslog(3) levels.  Messages go to stderr
 * while hubfs runs in the foreground and to syslog once it has daemonised.
 * Style: lowercase, subject quoted, no trailing period.  Never pass a token or
 * an Authorization header to these functions.
 *
 * Thread safety: every function may be called from any thread; a message is
 * written with a single write so lines of different threads do not mix.
 */
#ifndef HUBFS_LOG_H
#define HUBFS_LOG_H

#include <stdarg.h>
#include <stdbool.h>
#include <syslog.h>

/* Messages less important than @level (a LOG_* value) are dropped.
 * The default is LOG_NOTICE; -d raises it to LOG_DEBUG. */
void log_set_level(int level);

/* Returns whether a message at @level would be written. */
bool log_enabled(int level);

/* Send messages to syslog (true) or stderr (false, the default). @ident is the
 * syslog identity; borrowed, it must outlive the logging. */
void log_use_syslog(bool on, const char *ident);

/* Writes one message at @level.  A trailing newline is added. */
void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Same, with a va_list: the signature of libfuse's fuse_log_func_t, so it can
 * be installed with fuse_set_log_func(). */
void log_vmsg(int level, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));

#endif
