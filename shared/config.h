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
#define LB_MAX_HEADERS_LIMIT 1000       /* upper bound of limits.headers */
#define LB_MAX_CONNECTIONS_LIMIT 16777216   /* upper bound of max_connections */
#define LB_ADMIN_MAX_CONNECTIONS 64     /* default of admin.max_connections */
#define LB_MAX_REQUESTS_LIMIT   1000000 /* upper bound of servers[].max_requests, queue.size */
#define LB_RL_MAX_LIMITS 64             /* entries of rate_limits */
#define LB_RL_ROUTE_MAX  8              /* rate limits on one route */
/* All rate-limit tables of one configuration together (16 bytes a key):
 * the shm arena holds twice that, so a reload that replaces every table
 * fits beside the old ones its draining workers still use. */
#define LB_RL_TABLES_MAX_BYTES (2ULL << 30)
#define LB_MAX_LISTENERS 1024
#define LB_ADMIN_TOKEN_MAX 1024          /* bytes of admin.token */
#define LB_MAX_FAULTS    64              /* entries of faults */

enum lb_strategy {
    LB_STRATEGY_ROUND_ROBIN,            /* equal shares; weight 0 excludes */
    LB_STRATEGY_WEIGHTED_ROUND_ROBIN,   /* smooth WRR, as nginx */
    LB_STRATEGY_LEAST_CONNECTIONS,      /* fewest in-flight requests per weight, all workers */
    LB_STRATEGY_POWER_OF_TWO,           /* less loaded of two random picks (Envoy) */
    LB_STRATEGY_RANDOM,                 /* weighted random */
    LB_STRATEGY_HASH,                   /* consistent hashing (ketama) on hash_key */
    LB_STRATEGY_LEAST_TIME,             /* P2C on peak EWMA of response time x load */
};

enum lb_hash_key {
    LB_HASH_CLIENT_IP,
    LB_HASH_HEADER,                     /* "header:NAME" */
    LB_HASH_COOKIE,                     /* "cookie:NAME" */
};

/* Active health checks, run by the control process once per server. */
struct lb_health_cfg {
    bool enabled;
    char path[256];                     /* "" : TCP connect check */
    uint64_t interval_ms;
    uint64_t timeout_ms;
    unsigned rise;                      /* passes in a row to go UP */
    unsigned fall;                      /* failures in a row to go DOWN */
    int expect_lo, expect_hi;           /* accepted status range */
};

/* Circuit breaker (worker/breaker.h), per server, state in shm. Also what
 * `passive_health` sets up: a preset of these keys. */
#define LB_BREAKER_MAX_TRIALS   1000        /* half_open_requests: 10 bits in the state word */
#define LB_BREAKER_RATIO_ONE    1000000u    /* failure_ratio is kept in millionths */
struct lb_breaker_cfg {
    bool enabled;
    unsigned failures;                  /* consecutive failures that open it; 0: off */
    uint32_t ratio_ppm;                 /* failure share that opens it (ppm); 0: off */
    uint64_t window_ms;                 /* ... among the requests of this sliding window */
    unsigned min_requests;              /* ... once it holds at least this many */
    bool on_5xx;                        /* 5xx answers count as failures */
    uint64_t open_ms;                   /* first open interval; doubles per re-open */
    uint64_t open_max_ms;               /* ... up to this */
    unsigned half_open_requests;        /* trials let through, all workers together */
    unsigned max_ejection_percent;      /* of the pool's servers open at once (at least one) */
    uint64_t trial_timeout_ms;          /* an unanswered trial is given up after this */
};

/* Retries (worker/retry.h), per pool: which failed tries are sent again,
 * how long to wait first, and how many may be under way at once. */
#define LB_RETRY_MAX_ATTEMPTS   10
#define LB_RETRY_ON_CONNECT     0x1u    /* the connection could not be made */
#define LB_RETRY_ON_RESET       0x2u    /* reset, closed or invalid before an answer */
#define LB_RETRY_ON_TIMEOUT     0x4u    /* no answer in time (or the request not taken) */
struct lb_retry_cfg {
    bool enabled;                       /* attempts > 1 */
    unsigned attempts;                  /* tries in all, the first included */
    unsigned on;                        /* LB_RETRY_ON_* */
    uint64_t on_status[2];              /* answers retried: bit (status - 500), 500-599 */
    uint64_t backoff_ms;                /* full jitter in [0, min(backoff_max, backoff * 2^n)] */
    uint64_t backoff_max_ms;
    uint64_t per_try_timeout_ms;        /* a try's wait for its answer's head; 0: none */
    uint64_t head_timeout_ms;           /* the shorter of it and backend_response (0: none) */
    unsigned budget_percent;            /* retries under way: this share of the requests ... */
    unsigned min_retries;               /* ... or at least this many */
    bool methods_all;                   /* else idempotent methods only */
    uint64_t buffer;                    /* request body bytes kept to send again */
};

/* Every wait has a bound (0: none). Defaults in config.c, documented in the
 * README. The global set applies to every pool unless the pool overrides. */
struct lb_timeouts {
    uint64_t client_header_ms;  /* first byte to end of request head: 408 */
    uint64_t client_body_ms;    /* for each further 8 KiB of request body: 408 */
    uint64_t client_idle_ms;    /* keep-alive wait for the next request */
    uint64_t connect_ms;        /* TCP connect to a backend: 504 */
    uint64_t backend_response_ms; /* request sent to response head, and between reads: 504 */
    uint64_t backend_idle_ms;   /* pooled idle backend connection */
    uint64_t send_ms;           /* a stalled write to either side */
    uint64_t deadline_ms;       /* request head received to response complete: 504 */
    uint64_t tunnel_ms;         /* idle upgraded (WebSocket) connection */
    uint64_t drain_idle_ms;     /* draining worker: idle keep-alive connection's last wait */
};

/* Sticky sessions by cookie (worker/sticky.h; README "Sticky sessions"):
 * lbd's cookie names a server of the pool by a MAC of its identity. */
#define LB_STICKY_VALUE_LEN     16      /* base64url of 96 bits of HMAC-SHA256 */
#define LB_STICKY_SECRET_MIN    16      /* bytes */
#define LB_STICKY_SECRET_MAX    4096
#define LB_STICKY_MAX_AGE_MAX_S (400ull * 24 * 3600)    /* browsers cap it there */
struct lb_sticky_cfg {
    bool enabled;
    bool strip;                         /* lbd's cookie removed from requests to servers */
    char cookie[LB_NAME_MAX];           /* its name, a token */
    size_t cookie_len;
    char *secret;                       /* MAC key; NULL: none given (a fixed one) */
    size_t secret_len;
    /* What follows the value in Set-Cookie: "; Path=/; HttpOnly;
     * SameSite=Lax\r\n" (the attributes configured, the line's end). */
    char *attrs;
    size_t attrs_len;
};

struct lb_server_cfg {
    char address[LB_ADDR_STR_MAX];      /* canonical form */
    struct lb_addr addr;
    unsigned weight;
    unsigned max_requests;              /* in flight, all workers together; 0: no limit */
    uint32_t shm_id;                    /* backend slot, set by the master */
    /* The pool's sticky cookie value naming this server (NUL-ended), made
     * once per configuration by lb_sticky_config_load. */
    char sticky[LB_STICKY_VALUE_LEN + 1];
    bool runtime;                       /* a runtime slot (shared/runtime.h), no address here */
};

/* TLS to the servers of a pool (pools[].tls; worker/tls.c builds the
 * client context and runs the handshakes). Files are read and checked by
 * lb_tls_config_load, with the "FILE:LINE" kept here. */
struct lb_pool_tls_cfg {
    bool verify;                        /* check the chain and the name */
    char *ca_file, *ca_file_at;         /* NULL: the system's trust store */
    char *sni;                          /* server name sent, and verified; NULL: none
                                         * sent, the server's IP address verified */
    char *cert, *cert_at;               /* client certificate (chain), or NULL */
    char *key, *key_at;
    char *at;                           /* "FILE:LINE" of the group */
    struct ssl_ctx_st *ctx;             /* lb_tls_config_load's; NULL until then */
};

/* Service discovery of a pool (master/discovery.h): the control process
 * keeps the pool's runtime servers (shared/runtime.h) to what a source
 * says. */
enum lb_disco_type {
    LB_DISCO_NONE,
    LB_DISCO_DNS,
    LB_DISCO_ETCD,
    LB_DISCO_CONSUL,
    LB_DISCO_ZOOKEEPER,
};

#define LB_DISCO_MAX_ENDPOINTS  4
#define LB_DISCO_URL_MAX        256

enum lb_dns_record {
    LB_DNS_A,
    LB_DNS_AAAA,
    LB_DNS_SRV,
};

#define LB_DISCO_MAX_RESOLVERS  4
#define LB_DISCO_MAX_SERVERS    1024    /* upper bound of max_servers */
#define LB_DISCO_DEFAULT_SERVERS 64     /* max_servers of a discovered pool */

struct lb_discovery_cfg {
    enum lb_disco_type type;
    char name[LB_HOST_MAX];             /* dns: the name asked */
    unsigned port;                      /* dns A/AAAA: the servers' port */
    enum lb_dns_record record;
    unsigned weight;                    /* dns A/AAAA: every server's weight */
    struct lb_addr resolvers[LB_DISCO_MAX_RESOLVERS];
    size_t nresolvers;                  /* 0: those of /etc/resolv.conf */
    uint64_t min_interval_ms;           /* asked again after the TTL, within these */
    uint64_t max_interval_ms;
    uint64_t timeout_ms;                /* one query */
    bool empty_removes;                 /* an empty answer or NXDOMAIN empties the pool */
    /* etcd: base URLs ("http://127.0.0.1:2379"), tried in turn; the key
     * prefix whose keys are the servers. */
    char endpoints[LB_DISCO_MAX_ENDPOINTS][LB_DISCO_URL_MAX];
    size_t nendpoints;
    char prefix[LB_DISCO_URL_MAX];
    /* consul: its HTTP API's base URL (in endpoints[0]), the service,
     * only instances whose checks pass, an optional tag. */
    char service[LB_NAME_MAX];
    char tag[LB_NAME_MAX];
    bool passing_only;
    uint64_t wait_ms;                   /* consul: a blocking query's wait */
    /* zookeeper: hosts ("h1:2181,h2:2181") in endpoints[0], the parent
     * node in prefix; the session's timeout. */
    uint64_t session_ms;
};

struct lb_pool_cfg {
    char name[LB_NAME_MAX];
    enum lb_strategy strategy;
    struct lb_server_cfg *servers;
    size_t nservers;
    bool keepalive_auto;                /* idle connections follow the recent peak */
    unsigned keepalive;                 /* else: idle connections kept per server, per worker */
    enum lb_hash_key hash_key;
    char hash_name[LB_NAME_MAX];        /* header or cookie name for hash_key */
    struct lb_health_cfg health;
    struct lb_breaker_cfg breaker;
    /* Requests wait here while every usable server is at its max_requests
     * (worker/queue.h): at most `size` of them, all workers together, each
     * for `timeout` at most; 503 beyond either. */
    struct {
        unsigned size;
        uint64_t timeout_ms;
    } queue;
    uint64_t slow_start_ms;             /* a server usable again ramps up over this; 0: off */
    uint8_t faults[LB_MAX_FAULTS];      /* indices into lb_config.faults, in file order */
    size_t nfaults;
    struct lb_retry_cfg retries;
    struct lb_sticky_cfg sticky;
    struct lb_timeouts timeouts;        /* global ones with this pool's overrides */
    struct lb_pool_tls_cfg *tls;        /* NULL: plain TCP to the servers */
    uint32_t shm_id;                    /* pool slot, set by the master */
    /* Runtime servers: servers[0..nstatic) are the file's, the rest up to
     * nservers (= max_servers) are runtime slots that discovery or the
     * admin API fill (shared/runtime.h). nstatic == nservers: none. */
    size_t nstatic;
    struct lb_discovery_cfg discovery;
};

/* Whether P has runtime slots (hand-built pools of the unit tests, with
 * nstatic left 0, have none). */
static inline bool lb_pool_has_runtime(const struct lb_pool_cfg *p)
{
    return p->nstatic < p->nservers && p->servers[p->nstatic].runtime;
}

/* TLS of a listener (worker/tls.h builds and uses it). Certificate and key
 * files are read and checked by lb_tls_config_load, not here (the config
 * model knows no OpenSSL): what it finds wrong names the "FILE:LINE" kept
 * with each setting. */
#define LB_TLS_MAX_CERTS        16
#define LB_TLS_ROTATION_MIN_MS  1000                    /* ticket_rotation bounds */
#define LB_TLS_ROTATION_MAX_MS  (7ull * 24 * 3600 * 1000)
#define LB_TLS_SUBJECT_MAX      128

enum lb_tls_unknown_sni {
    LB_SNI_DEFAULT,                     /* serve the first certificate */
    LB_SNI_REFUSE,                      /* alert unrecognized_name */
};

enum lb_tls_protocols {
    LB_TLS_12_PLUS,                     /* "TLSv1.2+": TLS 1.2 and 1.3 */
    LB_TLS_13,                          /* "TLSv1.3": TLS 1.3 only */
};

struct lb_tls_cert_cfg {
    char *cert;                         /* PEM: the certificate, then its chain */
    char *key;                          /* PEM private key (RSA or ECDSA) */
    char *cert_at, *key_at;             /* "FILE:LINE" of each setting */
    /* Filled by lb_tls_config_load, for /status and lbd -s. */
    char subject[LB_TLS_SUBJECT_MAX];
    int64_t not_after;                  /* seconds since the epoch */
    /* An ACME name's certificate (cert = key = STORAGE/NAME.pem, written
     * by master/acme.c): absent, expired or broken, it is left out instead
     * of being an error (it comes later). */
    const char *acme_name;              /* NULL: a configured certificate */
};

struct lb_tls_rt;                       /* worker/tls.c: the contexts built */

struct lb_tls_cfg {
    struct lb_tls_cert_cfg *certs;      /* the first is the default */
    size_t ncerts;
    enum lb_tls_protocols protocols;
    char *ciphers;                      /* TLS 1.2 cipher list (OpenSSL syntax) */
    char *ciphers_at;
    unsigned char alpn[32];             /* ALPN names, wire format; alpn_len 0: none */
    size_t alpn_len;
    bool session_tickets;
    uint64_t ticket_rotation_ms;
    enum lb_tls_unknown_sni unknown_sni; /* a name no certificate has */
    char *hsts;                         /* Strict-Transport-Security value; NULL: none */
    size_t hsts_len;
    uint32_t shm_id;                    /* its lb_shm_tls entry, set by the master */
    struct lb_tls_rt *rt;               /* lb_tls_config_load's; NULL until then */
    char **acme;                        /* tls.acme names (lowercase); their
                                         * certificates follow the configured ones */
    size_t nacme;
};

/* Which worker a new connection goes to (master/steer.c, README "Steering"). */
enum lb_steering {
    LB_STEERING_CLIENT_IP,              /* eBPF: a client address keeps its worker */
    LB_STEERING_KERNEL,                 /* the kernel's SO_REUSEPORT 4-tuple hash */
};

struct lb_listener_cfg {
    char address[LB_ADDR_STR_MAX];
    struct lb_addr addr;
    int backlog;
    bool defer_accept;                  /* TCP_DEFER_ACCEPT: wake on data */
    unsigned max_connections_per_ip;    /* 0: no limit (worker/ratelimit.c) */
    struct lb_tls_cfg *tls;             /* NULL: plain HTTP */
    unsigned redirect_https;            /* 0: off; else answer 308 to https on this port */
    enum lb_steering steering;
};

/* ---- rate limits (worker/ratelimit.c; README "Rate limiting") ---- */

enum lb_rl_key {
    LB_RL_KEY_CLIENT_IP,                /* the client's address (trusted X-Forwarded-For) */
    LB_RL_KEY_HEADER,                   /* "header:NAME": absent, the limit does not apply */
    LB_RL_KEY_GLOBAL,                   /* one bucket for every request */
    LB_RL_KEY_ROUTE,                    /* one bucket per route */
};

enum lb_rl_algorithm {
    LB_RL_TOKEN_BUCKET,                 /* burst + 1 at once, then the rate; refuse beyond */
    LB_RL_LEAKY_BUCKET,                 /* nginx limit_req: excess delayed to the rate */
};

enum lb_rl_scope {
    LB_RL_SCOPE_LOCAL,                  /* exact over this instance's workers */
    LB_RL_SCOPE_FLEET,                  /* through redis, all instances (worker/fleet.c) */
};

struct lb_ratelimit_cfg {
    char name[LB_NAME_MAX];
    enum lb_rl_key key;
    char header[LB_NAME_MAX];           /* for LB_RL_KEY_HEADER */
    char rate_text[24];                 /* as written: "10r/s", "600r/m" */
    uint64_t rate;                      /* requests per second or per minute */
    bool per_minute;
    uint64_t interval_ns;               /* GCRA emission interval: unit / rate */
    unsigned burst;
    enum lb_rl_algorithm algorithm;
    unsigned delay;                     /* leaky bucket: excess passed at once */
    int status;                         /* refused with (429) */
    bool dry_run;                       /* count and log, refuse nothing */
    bool headers;                       /* RateLimit fields on admitted responses too */
    enum lb_rl_scope scope;
    uint32_t shm_id;                    /* table slot, set by the master */
};


/* ---- fault injection (worker/fault.h; README "Fault injection") ---- */

#define LB_FAULT_PPM_ONE        1000000u        /* percentages are kept in millionths */

enum lb_fault_type {
    LB_FAULT_DELAY,                     /* hold the request delay_ms, then forward it */
    LB_FAULT_ABORT,                     /* answer abort_status; the backend never sees it */
    LB_FAULT_RESET,                     /* close the client connection with a RST */
    LB_FAULT_TYPES
};

struct lb_fault_cfg {
    char name[LB_NAME_MAX];
    size_t pool;                        /* index into lb_config.pools */
    uint32_t ppm;                       /* share of the pool's requests, millionths */
    enum lb_fault_type type;
    uint64_t delay_ms;
    int abort_status;
    uint32_t shm_id;                    /* fault slot, set by the master */
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
    uint8_t rate_limits[LB_RL_ROUTE_MAX];   /* indices into lb_config.rate_limits */
    size_t nrate_limits;
    bool faults_from_headers;           /* X-Lbd-Fault-Delay / -Abort honoured */
    bool faults;                        /* faults_from_headers or its pool has faults */
};

/* Sizes in bytes; request_line/header_size/headers/body answer 414/431/431/413. */
struct lb_limits {
    uint64_t request_line;
    uint64_t header_size;       /* the whole head, request line included */
    uint64_t headers;           /* number of header fields */
    uint64_t body;              /* 0: unlimited */
    uint64_t buffer;            /* held per direction per connection: read
                                 * and not yet written, both buffers */
};

/* An address block whose clients' X-Forwarded-For / Forwarded lbd trusts.
 * IPv4 is held as IPv4-mapped IPv6 so one comparison serves both. */
struct lb_cidr {
    uint8_t addr[16];
    unsigned prefix;            /* 0-128 over the mapped form */
};

/* ---- ACME (master/acme.c; README "ACME") ---- */

#define LB_ACME_NAME_MAX        254     /* a DNS name, with its NUL */

enum lb_acme_challenge {
    LB_ACME_HTTP01,                     /* "http-01": GET /.well-known/acme-challenge/TOKEN */
    LB_ACME_TLSALPN01,                  /* "tls-alpn-01": ALPN acme-tls/1 on a TLS listener */
};

struct lb_acme_cfg {
    char *directory;                    /* the ACME server's directory URL */
    char *email;                        /* account contact; NULL: none */
    char *storage;                      /* account key, certificates (0700 directory) */
    char *ca_file;                      /* trust anchor for the ACME server; NULL: system's */
    enum lb_acme_challenge challenge;
    uint64_t renew_before_ms;           /* renew this long before notAfter */
};

struct lb_config {
    char *path;                         /* absolute path of the main file */
    unsigned workers;                   /* resolved ("auto" = online CPUs) */
    bool workers_auto;
    unsigned max_connections;           /* client connections per worker; 0: from the fd limit */
    uint64_t shutdown_timeout_ms;
    char *error_log;                    /* NULL: stderr */
    enum lb_log_level log_level;
    char *pid_file;                     /* NULL: none unless -p */
    bool tcp_migrate_req;               /* set net.ipv4.tcp_migrate_req */
    struct lb_timeouts timeouts;
    struct lb_limits limits;
    char *access_log;                   /* NULL: off */
    struct lb_cidr *trusted_proxies;
    size_t ntrusted_proxies;
    bool admin;                         /* admin listener configured */
    struct lb_addr admin_addr;
    char admin_address[LB_ADDR_STR_MAX];
    unsigned admin_max_connections;     /* open at once; further ones wait in the backlog */
    uint64_t admin_timeout_ms;          /* accept to end of head, then to answer sent */
    char *admin_token;                  /* bearer token for changes; NULL: changes refused */

    struct lb_listener_cfg *listeners;
    size_t nlisteners;
    size_t ntls;                        /* listeners with tls */
    /* Frees what lb_tls_config_load added (set by it): lb_config_free
     * calls it, so every path that frees a configuration frees its TLS. */
    void (*tls_free)(struct lb_config *cfg);
    struct lb_pool_cfg *pools;
    size_t npools;
    struct lb_route_cfg *routes;
    size_t nroutes;

    struct lb_ratelimit_cfg *rate_limits;
    size_t nrate_limits;
    struct lb_fault_cfg *faults;
    size_t nfaults;
    uint64_t rate_limit_table_size;     /* keys kept per limit */
    bool redis;                         /* redis group given (scope = "fleet") */
    struct lb_addr redis_addr;
    char redis_address[LB_ADDR_STR_MAX];
    uint64_t redis_timeout_ms;

    struct lb_acme_cfg *acme;           /* NULL: no ACME */
};

/* Load and validate PATH. On success *out owns a new config and 0 is
 * returned; on failure ERR holds "FILE:LINE: message" and -1 is returned. */
int lb_config_load(const char *path, struct lb_config **out, char *err,
                   size_t errlen);
void lb_config_free(struct lb_config *cfg);

const char *lb_strategy_name(enum lb_strategy s);
/* "delay", "abort", "reset". */
const char *lb_fault_type_name(enum lb_fault_type t);

/* Parse a rate: "10r/s", "600r/m" (1 to 1,000,000 a second, 1 to
 * 60,000,000 a minute). 0, or -1 with *why set. */
int lb_rate_parse(const char *s, uint64_t *rate, bool *per_minute, const char **why);

/* Parse "10.0.0.0/8", "127.0.0.1", "::1", "2001:db8::/32". 0 or -1. */
int lb_cidr_parse(const char *s, struct lb_cidr *out);
/* Whether SA (AF_INET or AF_INET6) lies in one of the N blocks. */
bool lb_cidr_match(const struct lb_cidr *blocks, size_t n, const struct sockaddr *sa);

#endif
