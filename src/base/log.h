/*
 * log.h - tide's log: one line per record on stderr, in the layout
 * "[pid] 2026/11/23 13:20:00.123456 [INF] message".
 */
#ifndef TIDE_LOG_H
#define TIDE_LOG_H

enum log_level { LOG_TRACE = 0, LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR, LOG_FATAL };

/* Records below `level` are dropped.  Default LOG_INFO. */
void log_set_level(enum log_level level);
enum log_level log_get_level(void);

/* printf-style; never fails, truncates lines over 4 KiB. */
void log_write(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_trace(...) do { if (log_get_level() <= LOG_TRACE) log_write(LOG_TRACE, __VA_ARGS__); } while (0)
#define log_debug(...) do { if (log_get_level() <= LOG_DEBUG) log_write(LOG_DEBUG, __VA_ARGS__); } while (0)
#define log_info(...)  log_write(LOG_INFO, __VA_ARGS__)
#define log_warn(...)  log_write(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_write(LOG_ERROR, __VA_ARGS__)

/*
 * Copies at most `max` bytes of `data` into `out` (size outsz) with every
 * byte that is not printable ASCII shown as \xNN, for quoting client input
 * in log lines.  Returns `out`.
 */
char *log_sanitize(char *out, size_t outsz, const char *data, size_t len);

#endif
