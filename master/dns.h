/* A DNS client's wire format (RFC 1035, RFC 2782 SRV): queries built and
 * answers parsed here, pure functions the unit tests feed with good and
 * malformed messages; master/discovery.c sends and receives them. */
#ifndef LB_DNS_H
#define LB_DNS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "shared/config.h"
#include "shared/runtime.h"

#define LB_DNS_TYPE_A           1
#define LB_DNS_TYPE_AAAA        28
#define LB_DNS_TYPE_SRV         33
#define LB_DNS_RCODE_NXDOMAIN   3
#define LB_DNS_MAX_RR           128     /* records kept of each section */
#define LB_DNS_NAME_MAX         256
#define LB_DNS_UDP_MAX          4096    /* what our EDNS0 record offers */

struct lb_dns_rr {
    char name[LB_DNS_NAME_MAX];         /* lower case, no trailing dot */
    uint16_t type;
    uint32_t ttl;
    uint8_t addr[16];                   /* A: 4 bytes, AAAA: 16 */
    uint16_t priority, weight, port;    /* SRV */
    char target[LB_DNS_NAME_MAX];       /* SRV */
};

struct lb_dns_answer {
    unsigned rcode;
    bool truncated;
    uint32_t ttl;                       /* least of the answer records' (0: none) */
    size_t nanswer, nextra;
    struct lb_dns_rr answer[LB_DNS_MAX_RR];     /* of the type asked for */
    struct lb_dns_rr extra[LB_DNS_MAX_RR];      /* A and AAAA of the additional section */
};

/* A query for NAME of TYPE with id ID (recursion desired, EDNS0) into BUF
 * (CAP bytes): its length, 0 if NAME does not fit or is not a name. */
size_t lb_dns_query(uint8_t *buf, size_t cap, uint16_t id, const char *name, uint16_t type);

/* Parse MSG, the answer to query ID for NAME of TYPE, into OUT. 0, or -1
 * with *why when it is malformed or not that answer. Records of other
 * types (a CNAME chain's) are skipped; a record that is cut short makes
 * the whole message malformed. */
int lb_dns_parse(const uint8_t *msg, size_t len, uint16_t id, const char *name, uint16_t type,
                 struct lb_dns_answer *out, const char **why);

/* The servers ANSWER gives for D (A/AAAA: each address at D's port and
 * weight; SRV: the lowest priority's targets, each address of each target
 * found in the additional section, at the record's port and weight 1 at
 * least), at most MAX into OUT, duplicates left out. Each entry left out
 * (no address for a target, duplicate, out of room) is told to SKIPPED
 * (may be NULL) with why. Their count. */
size_t lb_dns_servers(const struct lb_dns_answer *a, const struct lb_discovery_cfg *d,
                      struct lb_runtime_server *out, size_t max,
                      void (*skipped)(void *arg, const char *entry, const char *why), void *arg);

#endif
