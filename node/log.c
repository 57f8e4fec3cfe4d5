/*
 * log.c — the line logger of log.h: timestamp, level, caller's key=value text, one
 * write(2) per line.
 */
#include "node/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static enum mm_log_level cur_level = MM_LOG_INFO;
static int log_fd = 2;

static const char *const names[] = {"error", "warn", "info", "debug"};

void mm_log_set_level(enum mm_log_level level)
{
	if ((int)level < MM_LOG_ERROR)
		level = MM_LOG_ERROR;
	if (level > MM_LOG_DEBUG)
		level = MM_LOG_DEBUG;
	cur_level = level;
}

enum mm_log_level mm_log_get_level(void)
{
	return cur_level;
}

bool mm_log_enabled(enum mm_log_level level)
{
	return (int)level <= (int)cur_level;
}

void mm_log_set_fd(int fd)
{
	log_fd = fd < 0 ? 2 : fd;
}

int mm_log_level_parse(const char *s, enum mm_log_level *level_r)
{
	if (s == NULL || level_r == NULL)
		return -EINVAL;
	for (int i = 0; i <= MM_LOG_DEBUG; i++) {
		if (strcasecmp(s, names[i]) == 0) {
			*level_r = (enum mm_log_level)i;
			return 0;
		}
	}
	if (strcasecmp(s, "warning") == 0) {
		*level_r = MM_LOG_WARN;
		return 0;
	}
	return -EINVAL;
}

const char *mm_log_level_name(enum mm_log_level level)
{
	if ((int)level < MM_LOG_ERROR || level > MM_LOG_DEBUG)
		return "?";
	return names[level];
}

void mm_log(enum mm_log_level level, const char *fmt, ...)
{
	char line[MM_LOG_LINE_MAX + 2];
	struct timespec ts;
	struct tm tm;
	size_t n, body;
	int saved = errno, k;
	va_list ap;

	if (!mm_log_enabled(level) || fmt == NULL)
		return;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	n = strftime(line, sizeof line, "%Y-%m-%dT%H:%M:%S", &tm);
	k = snprintf(line + n, sizeof line - n, ".%03ldZ %s ", ts.tv_nsec / 1000000L,
	             mm_log_level_name(level));
	if (k > 0)
		n += (size_t)k;
	body = n;
	va_start(ap, fmt);
	k = vsnprintf(line + n, MM_LOG_LINE_MAX + 1 - n, fmt, ap);
	va_end(ap);
	if (k < 0)
		k = 0;
	if ((size_t)k > MM_LOG_LINE_MAX - n) { /* cut: mark it */
		n = MM_LOG_LINE_MAX;
		memcpy(line + n - 3, "...", 3);
	} else {
		n += (size_t)k;
	}
	for (size_t i = body; i < n; i++)
		if ((unsigned char)line[i] < 0x20 || line[i] == 0x7f)
			line[i] = '?';
	line[n++] = '\n';
	for (size_t off = 0; off < n;) { /* one write in practice; loop for pipes */
		ssize_t w = write(log_fd, line + off, n - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			break;
		off += (size_t)w;
	}
	errno = saved;
}
