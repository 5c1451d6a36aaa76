/* Rate limiting: the session's decision step after routing (DESIGN.md:
 * "ratelimit" returns admit / delay ms / refuse + headers), and the
 * connection limit per client address at accept.
 *
 * Every limit of the route applies in order; the first that refuses
 * answers, and the limits before it get their token back. A leaky bucket
 * may ask to hold the request (the longest wait of its limits); a dry-run
 * limit counts and logs what it would refuse and refuses (or holds)
 * nothing. Buckets are shared by all workers (shared/rltable.h): exact
 * over the instance. The README's "Rate limiting" tells users the rules.
 */
#ifndef LB_RATELIMIT_H
#define LB_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "shared/config.h"

struct event_base;
struct lb_shm_header;
struct lb_http_msg;

enum lb_rl_verdict {
    LB_RL_ADMIT,
    LB_RL_DELAY,                /* admit after delay_ms (leaky bucket) */
    LB_RL_REFUSE,               /* answer status */
    LB_RL_ASK,                  /* a fleet limit asked redis: the verdict comes later */
};

/* How the access log marks a request (the limit in note.marked). */
enum lb_rl_mark {
    LB_RL_MARK_NONE,
    LB_RL_MARK_REFUSED,
    LB_RL_MARK_DELAYED,
    LB_RL_MARK_DRY_RUN,         /* a dry-run limit would have refused it */
};

/* What a request's limits said, kept with its exchange: the RateLimit
 * fields of its response and the mark of its log line. Zeroed: nothing. */
struct lb_rl_note {
    uint8_t n;                          /* items for the RateLimit fields */
    uint8_t limit[LB_RL_ROUTE_MAX];     /* index into cfg->rate_limits */
    uint32_t remaining[LB_RL_ROUTE_MAX];
    uint32_t reset_s[LB_RL_ROUTE_MAX];
    uint8_t mark;                       /* enum lb_rl_mark */
    uint8_t marked;                     /* its limit */
    uint32_t delay_ms;                  /* LB_RL_MARK_DELAYED */
};

struct lb_rl_decision {
    enum lb_rl_verdict verdict;
    uint64_t delay_ms;                  /* LB_RL_DELAY */
    int status;                         /* LB_RL_REFUSE */
    uint32_t retry_after_s;             /* LB_RL_REFUSE: whole seconds, rounded up */
};

struct lb_ratelimit;
struct lb_rl_pending;

/* A fleet limit's later verdict (never LB_RL_ASK). */
typedef void (*lb_rl_done_fn)(void *arg, const struct lb_rl_decision *d);

/* A request as its limits see it. */
struct lb_rl_request {
    const struct lb_route_cfg *route;   /* nrate_limits > 0 */
    const char *client_ip;              /* the peer's address */
    bool trusted;                       /* in trusted_proxies: X-Forwarded-For names the client */
    uint64_t *ip_key;                   /* the peer's hashed key over a connection (0 at first) */
    const struct lb_http_msg *m;
    lb_rl_done_fn done;                 /* for LB_RL_ASK, with ARG */
    void *arg;
};

/* A worker's view of CFG's limits in segment SHM, as worker slot SLOT, its
 * redis client (fleet limits) on BASE. NULL when CFG has neither rate
 * limits nor max_connections_per_ip (the data path then never calls in),
 * or out of memory (limits off, logged). */
struct lb_ratelimit *lb_ratelimit_new(const struct lb_config *cfg, struct lb_shm_header *shm,
                                      unsigned slot, struct event_base *base);
void lb_ratelimit_free(struct lb_ratelimit *rl);

/* The verdict of REQ's route's limits. NOTE is filled for the response
 * and the log (and must live as long as an ask). LB_RL_ASK: *PENDING is
 * the request's place in line; REQ->done(REQ->arg, verdict) comes later,
 * unless lb_ratelimit_cancel(*PENDING) first. */
void lb_ratelimit_check(struct lb_ratelimit *rl, const struct lb_rl_request *req,
                        struct lb_rl_note *note, struct lb_rl_decision *d,
                        struct lb_rl_pending **pending);
/* The request is gone (its session closed): no verdict will come. */
void lb_ratelimit_cancel(struct lb_rl_pending *p);

/* "RateLimit-Policy: ...\r\nRateLimit: ...\r\n" for NOTE's items, and with
 * RETRY_AFTER_S (a refusal) "Retry-After: N\r\n" first. Bytes written into
 * BUF (CAP; LB_RL_FIELDS_MAX is always enough), 0 when nothing. */
#define LB_RL_FIELDS_MAX (64 + LB_RL_ROUTE_MAX * (2 * LB_NAME_MAX + 64))
size_t lb_ratelimit_fields(const struct lb_ratelimit *rl, const struct lb_rl_note *note,
                           uint32_t retry_after_s, char *buf, size_t cap);

/* NOTE's mark for the access log (" limited=per_ip", ...) into BUF, or "". */
void lb_ratelimit_log_mark(const struct lb_ratelimit *rl, const struct lb_rl_note *note,
                           char *buf, size_t cap);

/* max_connections_per_ip: whether a connection from PEER accepted on
 * listener LISTENER may stay. When it may, *TOKEN is what
 * lb_ratelimit_conn_close takes at its end (0: nothing counted). */
bool lb_ratelimit_conn_open(struct lb_ratelimit *rl, size_t listener, const struct sockaddr *peer,
                            uint32_t *token);
void lb_ratelimit_conn_close(struct lb_ratelimit *rl, uint32_t token);

#endif
