/*
 * Logging: see log.h.
 *
 * The level and the destination are set once at start-up, before any thread
 * exists, and only read afterwards, so they need no lock.  Each stderr line is
 * formatted into a local buffer and written with one write(2).
 */
#include "config.h"

#include "log.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int log_level = LOG_NOTICE;
static bool log_to_syslog;

static const char *const log_level_names[] = {
	[LOG_EMERG] = "emerg", [LOG_ALERT] = "alert",   [LOG_CRIT] = "crit",
	[LOG_ERR] = "error",   [LOG_WARNING] = "warning", [LOG_NOTICE] = "notice",
	[LOG_INFO] = "info",   [LOG_DEBUG] = "debug",
};

void log_set_level(int level)
{
	if (level < LOG_EMERG)
		level = LOG_EMERG;
	if (level > LOG_DEBUG)
		level = LOG_DEBUG;
	log_level = level;
}

bool log_enabled(int level)
{
	return level <= log_level;
}

void log_use_syslog(bool on, const char *ident)
{
	if (on && !log_to_syslog)
		openlog(ident, LOG_PID, LOG_DAEMON);
	else if (!on && log_to_syslog)
		closelog();
	log_to_syslog = on;
}

void log_vmsg(int level, const char *fmt, va_list ap)
{
	char line[2048];
	size_t len;
	int n;

	if (!log_enabled(level))
		return;
	if (log_to_syslog) {
		vsyslog(level, fmt, ap);
		return;
	}
	if (level < LOG_EMERG || level > LOG_DEBUG)
		level = LOG_ERR;
	n = snprintf(line, sizeof(line), "hubfs: %s: ", log_level_names[level]);
	len = n > 0 ? (size_t)n : 0;
	n = vsnprintf(line + len, sizeof(line) - len, fmt, ap);
	if (n > 0)
		len += (size_t)n;
	if (len > sizeof(line) - 2)
		len = sizeof(line) - 2;
	/* libfuse's messages end with a newline already. */
	if (len == 0 || line[len - 1] != '\n')
		line[len++] = '\n';
	/* Nothing useful can be done if stderr is gone. */
	if (write(STDERR_FILENO, line, len) < 0)
		return;
}

void log_msg(int level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vmsg(level, fmt, ap);
	va_end(ap);
}
