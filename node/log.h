/*
 * log.h — mailmesh's log: one line per notable event on stderr (journald and syslog
 * pick it up from there), shaped for grep and for machines:
 *
 *     2026-11-29T05:47:19.123Z info event=connected peer=node2 addr=10.0.0.2:4000
 *
 * Time (UTC, milliseconds), level, then the caller's text, which by convention is
 * key=value fields (peer=, user=, folder=, err=...).  Never log message content,
 * subjects or addresses of mail: only names, ids, counts and sizes.
 *
 * One write(2) per line, so lines from several processes sharing stderr do not mix.
 * Control characters in the formatted text (a newline in a peer-supplied name, say)
 * are replaced by '?', so nothing can forge a log line.
 */
#ifndef MM_LOG_H
#define MM_LOG_H

#include <stdbool.h>

enum mm_log_level {
	MM_LOG_ERROR = 0,
	MM_LOG_WARN = 1,
	MM_LOG_INFO = 2,
	MM_LOG_DEBUG = 3,
};

#define MM_LOG_LINE_MAX 1024 /* longer lines are cut and end in "..." */

/* Writes one line if `level` is enabled (level <= the current level).  fmt is printf
 * style.  Preserves errno.  Never fails visibly (a failed write is ignored). */
void mm_log(enum mm_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Sets / gets the global level (default MM_LOG_INFO).  Out-of-range values are clamped. */
void mm_log_set_level(enum mm_log_level level);
enum mm_log_level mm_log_get_level(void);

/* True if a line at `level` would be written (to skip building costly fields). */
bool mm_log_enabled(enum mm_log_level level);

/* Sends lines to file descriptor fd instead of 2 (stderr); -1 restores stderr.
 * Meant for tests and for a daemon that redirects its log. */
void mm_log_set_fd(int fd);

/* Parses "error", "warn" (or "warning"), "info", "debug" (case-insensitive).
 * Returns 0 and sets *level_r, or -EINVAL. */
int mm_log_level_parse(const char *s, enum mm_log_level *level_r);

/* "error", "warn", "info" or "debug"; "?" for an invalid value. */
const char *mm_log_level_name(enum mm_log_level level);

#endif
