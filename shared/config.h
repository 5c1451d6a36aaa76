/* The configuration model and its loader.
 *
 * The file is libconfig syntax; etc/lbd.conf documents every key. Loading
 * validates everything that can be validated without touching the network:
 * unknown keys, types, addresses, durations, duplicate names, routes to
 * missing pools. Every error names FILE:LINE. The model is plain data, built
 * once by the master and inherited by the workers it forks; nothing in it
 * changes after load except the shm slot ids the master assigns.
 */
#ifndef LB_CONFIG_H
#define LB_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "shared/log.h"
#include "shared/util.h"

#define LB_NAME_MAX     64      /* pool names, including the NUL */
#define LB_ADDR_STR_MAX 64      /* "[ffff:...]:65535" fits */
#define LB_HOST_MAX     256
#define LB_MAX_WORKERS  64
#define LB_WEIGHT_MAX   1000

enum lb_strategy {
    LB_STRATEGY_ROUND_ROBIN,            /* equal shares; weight 0 excludes */
    LB_STRATEGY_WEIGHTED_ROUND_ROBIN,   /* smooth WRR, as nginx */
};

struct lb_server_cfg {
    char address[LB_ADDR_STR_MAX];      /* canonical form */
    struct lb_addr addr;
    unsigned weight;
    uint32_t shm_id;                    /* backend slot, set by the master */
};

struct lb_pool_cfg {
    char name[LB_NAME_MAX];
    enum lb_strategy strategy;
    struct lb_server_cfg *servers;
    size_t nservers;
    unsigned keepalive;                 /* idle connections kept per server, per worker */
    uint32_t shm_id;                    /* pool slot, set by the master */
};

struct lb_listener_cfg {
    char address[LB_ADDR_STR_MAX];
    struct lb_addr addr;
    int backlog;
};

enum lb_host_match {
    LB_HOST_ANY,        /* "*" */
    LB_HOST_SUFFIX,     /* "*.example.com": any subdomain, not the apex */
    LB_HOST_EXACT,      /* "example.com", case-insensitive, port ignored */
};

struct lb_route_cfg {
    enum lb_host_match host_match;
    char host[LB_HOST_MAX];             /* lowercase; for SUFFIX ".example.com" */
    size_t host_len;
    char path_prefix[LB_HOST_MAX];
    size_t path_len;
    size_t pool;                        /* index into lb_config.pools */
};

/* Every wait has a bound. Defaults in config.c, documented in the README. */
struct lb_timeouts {
    uint64_t client_header_ms;  /* first byte to end of request head */
    uint64_t client_idle_ms;    /* keep-alive wait for the next request */
    uint64_t connect_ms;        /* TCP connect to a backend */
    uint64_t backend_response_ms; /* request sent to first response byte, and between reads */
    uint64_t backend_idle_ms;   /* pooled idle backend connection */
    uint64_t send_ms;           /* a stalled write to either side */
};

struct lb_config {
    char *path;                         /* absolute path of the main file */
    unsigned workers;                   /* resolved ("auto" = online CPUs) */
    bool workers_auto;
    uint64_t shutdown_timeout_ms;
    char *error_log;                    /* NULL: stderr */
    enum lb_log_level log_level;
    char *pid_file;                     /* NULL: none unless -p */
    struct lb_timeouts timeouts;

    struct lb_listener_cfg *listeners;
    size_t nlisteners;
    struct lb_pool_cfg *pools;
    size_t npools;
    struct lb_route_cfg *routes;
    size_t nroutes;
};

/* Load and validate PATH. On success *out owns a new config and 0 is
 * returned; on failure ERR holds "FILE:LINE: message" and -1 is returned. */
int lb_config_load(const char *path, struct lb_config **out, char *err,
                   size_t errlen);
void lb_config_free(struct lb_config *cfg);

const char *lb_strategy_name(enum lb_strategy s);

#endif
