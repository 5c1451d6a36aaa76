/* etcd v3 through its JSON gateway (/v3/kv/range, /v3/watch): request
 * bodies built and answers parsed here, pure, for master/discovery.c and
 * the unit tests. Keys and values travel base64-encoded; int64s as
 * strings. Each key under the prefix is one server; its value is
 * "host:port" (an IP address) or {"address": "host:port", "weight": 2}. */
#ifndef LB_ETCD_H
#define LB_ETCD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "shared/runtime.h"

/* {"key": PREFIX, "range_end": PREFIX + 1} into OUT: its length, or -1. */
int lb_etcd_range_body(const char *prefix, char *out, size_t cap);
/* A watch of the prefix from START_REVISION. Its length, or -1. */
int lb_etcd_watch_body(const char *prefix, int64_t start_revision, char *out, size_t cap);

/* One server's value: "host:port" or the JSON object. 0, or -1 with *why. */
int lb_etcd_value(const char *value, size_t len, struct lb_runtime_server *out, const char **why);

/* A range answer: its revision, and the servers of its keys (MAX at
 * most into OUT, their number to *N). An entry that cannot be used is
 * told to SKIPPED (key, why) and left out. 0, or -1 with *why when the
 * answer itself is no range answer. */
int lb_etcd_parse_range(const char *body, size_t len, int64_t *revision,
                        struct lb_runtime_server *out, size_t max, size_t *n,
                        void (*skipped)(void *arg, const char *entry, const char *why), void *arg,
                        const char **why);

/* What one watch message says. */
struct lb_etcd_watch_msg {
    bool created;
    bool events;                        /* keys changed: read the range again */
    bool canceled;                      /* the watch ended (compacted, error) */
    int64_t revision;                   /* of its header; 0: none */
    int64_t compact_revision;
};

/* Parse one message of the watch stream (a JSON object). 0, or -1. */
int lb_etcd_watch_parse(const char *msg, size_t len, struct lb_etcd_watch_msg *out,
                        const char **why);

#endif
