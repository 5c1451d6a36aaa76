#include "master/dns.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "master/discovery.h"

size_t lb_dns_query(uint8_t *buf, size_t cap, uint16_t id, const char *name, uint16_t type)
{
    size_t n = strlen(name);
    /* header 12, name n + 2, question 4, OPT record 11 */
    if (n == 0 || n > 253 || cap < 12 + n + 2 + 4 + 11)
        return 0;
    uint8_t *p = buf;
    *p++ = (uint8_t)(id >> 8);
    *p++ = (uint8_t)id;
    *p++ = 0x01;                /* RD */
    *p++ = 0x00;
    static const uint8_t counts[8] = { 0, 1, 0, 0, 0, 0, 0, 1 };    /* QD 1, AR 1 */
    memcpy(p, counts, sizeof(counts));
    p += sizeof(counts);
    const char *label = name;
    while (*label != '\0') {
        const char *dot = strchr(label, '.');
        size_t len = dot ? (size_t)(dot - label) : strlen(label);
        if (len == 0 || len > 63)
            return 0;       /* an empty label or one over 63 bytes */
        *p++ = (uint8_t)len;
        memcpy(p, label, len);
        p += len;
        label += len;
        if (*label == '.')
            label++;
    }
    *p++ = 0;
    *p++ = (uint8_t)(type >> 8);
    *p++ = (uint8_t)type;
    *p++ = 0;
    *p++ = 1;                   /* IN */
    /* EDNS0 OPT: root name, type 41, our UDP size, no flags, no data. */
    static const uint8_t opt[11] = { 0, 0, 41, LB_DNS_UDP_MAX >> 8, LB_DNS_UDP_MAX & 0xff,
                                     0, 0, 0, 0, 0, 0 };
    memcpy(p, opt, sizeof(opt));
    p += sizeof(opt);
    return (size_t)(p - buf);
}

/* The name at *OFF of MSG (compression followed, loops refused), lower
 * case and dotted, into OUT; *OFF moves past it where it was. */
static int lb_dns_name(const uint8_t *msg, size_t len, size_t *off, char *out)
{
    size_t pos = *off, o = 0;
    bool jumped = false;
    for (int hops = 0; hops < 64; hops++) {
        if (pos >= len)
            return -1;
        uint8_t l = msg[pos];
        if ((l & 0xc0) == 0xc0) {
            if (pos + 1 >= len)
                return -1;
            size_t to = ((size_t)(l & 0x3f) << 8) | msg[pos + 1];
            if (!jumped)
                *off = pos + 2;
            jumped = true;
            if (to >= pos)
                return -1;      /* only backwards: no loops */
            pos = to;
            continue;
        }
        if (l & 0xc0)
            return -1;
        if (l == 0) {
            if (!jumped)
                *off = pos + 1;
            out[o] = '\0';
            return 0;
        }
        if (pos + 1 + l > len || o + l + 1 >= LB_DNS_NAME_MAX)
            return -1;
        if (o > 0)
            out[o++] = '.';
        for (size_t i = 0; i < l; i++) {
            char c = (char)msg[pos + 1 + i];
            out[o++] = c >= 'A' && c <= 'Z' ? (char)(c + 32) : c;
        }
        pos += 1 + l;
    }
    return -1;
}

static uint16_t lb_get16(const uint8_t *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

static uint32_t lb_get32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static bool lb_dns_name_eq(const char *a, const char *b)
{
    size_t na = strlen(a), nb = strlen(b);
    if (nb > 0 && b[nb - 1] == '.')
        nb--;
    if (na != nb)
        return false;
    for (size_t i = 0; i < na; i++) {
        char x = a[i], y = b[i];
        if (y >= 'A' && y <= 'Z')
            y = (char)(y + 32);
        if (x != y)
            return false;
    }
    return true;
}

int lb_dns_parse(const uint8_t *msg, size_t len, uint16_t id, const char *name, uint16_t type,
                 struct lb_dns_answer *out, const char **why)
{
    out->nanswer = out->nextra = 0;
    out->ttl = 0;
    if (len < 12) {
        *why = "shorter than a DNS header";
        return -1;
    }
    if (lb_get16(msg) != id || !(msg[2] & 0x80)) {
        *why = "not the answer to our query";
        return -1;
    }
    out->truncated = (msg[2] & 0x02) != 0;
    out->rcode = msg[3] & 0x0f;
    unsigned qd = lb_get16(msg + 4), an = lb_get16(msg + 6), ns = lb_get16(msg + 8),
             ar = lb_get16(msg + 10);
    size_t off = 12;
    char rname[LB_DNS_NAME_MAX];
    if (qd != 1) {
        *why = qd == 0 ? "no question in the answer" : "more than one question";
        return -1;
    }
    if (lb_dns_name(msg, len, &off, rname) < 0 || off + 4 > len) {
        *why = "malformed question";
        return -1;
    }
    if (!lb_dns_name_eq(rname, name) || lb_get16(msg + off) != type) {
        *why = "answer to another question";
        return -1;
    }
    off += 4;
    unsigned total = an + ns + ar;
    for (unsigned k = 0; k < total; k++) {
        if (lb_dns_name(msg, len, &off, rname) < 0 || off + 10 > len) {
            *why = "malformed record";
            return -1;
        }
        uint16_t rtype = lb_get16(msg + off), rclass = lb_get16(msg + off + 2);
        uint32_t ttl = lb_get32(msg + off + 4);
        uint16_t rdlen = lb_get16(msg + off + 8);
        off += 10;
        if (off + rdlen > len) {
            *why = "record data cut short";
            return -1;
        }
        const uint8_t *rd = msg + off;
        bool in_answer = k < an, in_extra = k >= an + ns;
        struct lb_dns_rr *r = NULL;
        if (rclass == 1 && in_answer && rtype == type && out->nanswer < LB_DNS_MAX_RR)
            r = &out->answer[out->nanswer];
        else if (rclass == 1 && in_extra && (rtype == LB_DNS_TYPE_A || rtype == LB_DNS_TYPE_AAAA) &&
                 out->nextra < LB_DNS_MAX_RR)
            r = &out->extra[out->nextra];
        if (r != NULL) {
            memset(r, 0, sizeof(*r));
            snprintf(r->name, sizeof(r->name), "%s", rname);
            r->type = rtype;
            r->ttl = ttl > 0x7fffffffu ? 0 : ttl;   /* RFC 2181: a TTL above 2^31-1 is 0 */
            if (rtype == LB_DNS_TYPE_A || rtype == LB_DNS_TYPE_AAAA) {
                size_t want = rtype == LB_DNS_TYPE_A ? 4 : 16;
                if (rdlen != want) {
                    *why = "address record of a wrong length";
                    return -1;
                }
                memcpy(r->addr, rd, want);
            } else {
                size_t toff = off + 6;
                if (rdlen < 7 || lb_dns_name(msg, off + rdlen, &toff, r->target) < 0 ||
                    toff != off + rdlen) {
                    *why = "malformed SRV record";
                    return -1;
                }
                r->priority = lb_get16(rd);
                r->weight = lb_get16(rd + 2);
                r->port = lb_get16(rd + 4);
            }
            if (in_answer) {
                if (out->nanswer == 0 || r->ttl < out->ttl)
                    out->ttl = r->ttl;
                out->nanswer++;
            } else {
                out->nextra++;
            }
        }
        off += rdlen;
    }
    return 0;
}

/* ADDR (4 or 16 bytes) at PORT, as a server. */
static void lb_dns_server(const uint8_t *addr, uint16_t type, unsigned port, unsigned weight,
                          struct lb_runtime_server *s)
{
    memset(s, 0, sizeof(*s));
    if (type == LB_DNS_TYPE_A) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&s->addr.ss;
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)port);
        memcpy(&sin->sin_addr, addr, 4);
        s->addr.len = sizeof(*sin);
    } else {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&s->addr.ss;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)port);
        memcpy(&sin6->sin6_addr, addr, 16);
        s->addr.len = sizeof(*sin6);
    }
    lb_addr_format(&s->addr, s->address, sizeof(s->address));
    s->weight = weight < 1 ? 1 : weight > LB_WEIGHT_MAX ? LB_WEIGHT_MAX : weight;
}

static void lb_dns_keep(struct lb_runtime_server *out, size_t *n, size_t max,
                        const struct lb_runtime_server *s,
                        void (*skipped)(void *, const char *, const char *), void *arg)
{
    const char *why = lb_discovery_add(out, n, max, s);
    if (why != NULL && skipped != NULL)
        skipped(arg, s->address, why);
}

size_t lb_dns_servers(const struct lb_dns_answer *a, const struct lb_discovery_cfg *d,
                      struct lb_runtime_server *out, size_t max,
                      void (*skipped)(void *arg, const char *entry, const char *why), void *arg)
{
    size_t n = 0;
    struct lb_runtime_server s;
    if (d->record != LB_DNS_SRV) {
        for (size_t i = 0; i < a->nanswer; i++) {
            lb_dns_server(a->answer[i].addr, a->answer[i].type, d->port, d->weight, &s);
            lb_dns_keep(out, &n, max, &s, skipped, arg);
        }
        return n;
    }
    /* RFC 2782: the lowest priority value first; the others are backups
     * we leave out. */
    unsigned best = 65536;
    for (size_t i = 0; i < a->nanswer; i++)
        if (a->answer[i].priority < best && a->answer[i].port != 0 && a->answer[i].target[0] != '\0')
            best = a->answer[i].priority;
    for (size_t i = 0; i < a->nanswer; i++) {
        const struct lb_dns_rr *r = &a->answer[i];
        char entry[LB_DNS_NAME_MAX + 16];
        snprintf(entry, sizeof(entry), "%s:%u", r->target, r->port);
        if (r->port == 0 || r->target[0] == '\0') {
            if (skipped)
                skipped(arg, entry, "no port or target (service not available)");
            continue;
        }
        if (r->priority != best)
            continue;
        bool found = false;
        for (size_t k = 0; k < a->nextra; k++) {
            if (strcmp(a->extra[k].name, r->target) != 0)
                continue;
            found = true;
            lb_dns_server(a->extra[k].addr, a->extra[k].type, r->port, r->weight, &s);
            lb_dns_keep(out, &n, max, &s, skipped, arg);
        }
        if (!found && skipped)
            skipped(arg, entry, "no address for the target in the answer");
    }
    return n;
}
