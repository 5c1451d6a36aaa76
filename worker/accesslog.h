/* The access log: one line per request, buffered per worker and written
 * with one write(2) per flush (O_APPEND, so workers never interleave
 * within a line). Off unless `access_log` is set. Format (README):
 *
 *   ADDR - - [TIME] "REQUEST LINE" STATUS BYTES "REFERER" "USER-AGENT"
 *     upstream=ADDR upstream_status=N request_id=ID rt=SEC uct=SEC uht=SEC attempts=N
 *     [limited=NAME...] [fault=NAME] [tls=VERSION cipher=NAME]
 */
#ifndef LB_ACCESSLOG_H
#define LB_ACCESSLOG_H

#include <stddef.h>
#include <stdint.h>

#include "shared/config.h"

struct event_base;

/* What a request leaves for its log line, filled as it goes. */
struct lb_access_entry {
    char request[512];          /* request line, truncated */
    char referer[256];
    char user_agent[256];
    char request_id[65];
    uint64_t start_us;          /* head complete (wall clock) */
    uint64_t connect_us;        /* backend connection ready; 0 if never */
    uint64_t header_us;         /* backend response head; 0 if never */
    uint64_t bytes;             /* sent to the client for this request */
    int status;                 /* sent to the client; 0 if none */
    int upstream_status;        /* from the backend; 0 if none */
    unsigned attempts;          /* tries sent to a backend (retries + 1); 0 if none */
    char limited[LB_NAME_MAX + 32]; /* " limited=NAME..." (rate limits), or "" */
    char fault[LB_NAME_MAX + 8];    /* " fault=NAME" (fault injection), or "" */
};

/* Open PATH (per worker) and flush every second on BASE. 0 or -1 (errno). */
int lb_accesslog_open(const char *path, struct event_base *base);
int lb_accesslog_reopen(void);
void lb_accesslog_close(void);
/* Append one line. CLIENT and UPSTREAM are addresses, REQUEST_ID may be "".
 * TLS_VERSION and TLS_CIPHER: the client connection's, NULL without TLS
 * (the line then ends with " tls=VERSION cipher=CIPHER"). */
void lb_accesslog_write(const struct lb_access_entry *e, const char *client,
                        const char *upstream, const char *request_id, const char *tls_version,
                        const char *tls_cipher, uint64_t now_us);

/* Copy a header value for the log: at most CAP-1 bytes, '"' and '\' escaped
 * away (replaced by '_'), so a line always parses. */
void lb_accesslog_copy(char *dst, size_t cap, const char *src, size_t len);

#endif
