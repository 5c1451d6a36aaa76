#include "shared/util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

/* A decimal number at the start of S (digits first: no sign, no space);
 * *END is what follows it. 0, or -1. */
static int lb_parse_leading_uint(const char *s, unsigned long long *v, char **end)
{
    if (s == NULL || *s < '0' || *s > '9')
        return -1;
    errno = 0;
    *v = strtoull(s, end, 10);
    return errno != 0 ? -1 : 0;
}

int lb_duration_parse(const char *s, uint64_t *ms)
{
    char *end;
    unsigned long long v;
    if (lb_parse_leading_uint(s, &v, &end) < 0)
        return -1;
    uint64_t mult;
    if (strcmp(end, "ms") == 0)
        mult = 1;
    else if (strcmp(end, "s") == 0)
        mult = 1000;
    else if (strcmp(end, "m") == 0)
        mult = 60 * 1000;
    else if (strcmp(end, "h") == 0)
        mult = 3600 * 1000;
    else if (*end == '\0' && v == 0)
        mult = 0;
    else
        return -1;
    if (mult != 0 && v > UINT64_MAX / mult)
        return -1;
    *ms = v * mult;
    return 0;
}

int lb_size_parse(const char *s, uint64_t *bytes)
{
    char *end;
    unsigned long long v;
    if (lb_parse_leading_uint(s, &v, &end) < 0)
        return -1;
    unsigned shift;
    switch (*end) {
    case '\0': shift = 0; break;
    case 'k': case 'K': shift = 10; break;
    case 'm': case 'M': shift = 20; break;
    case 'g': case 'G': shift = 30; break;
    default: return -1;
    }
    if (shift != 0 && end[1] != '\0')
        return -1;
    if (v > (UINT64_MAX >> shift))
        return -1;
    *bytes = (uint64_t)v << shift;
    return 0;
}

static int lb_port_parse(const char *s, uint16_t *port)
{
    if (*s == '\0')
        return -1;
    unsigned long v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        v = v * 10 + (unsigned long)(*p - '0');
        if (v > 65535)
            return -1;
    }
    if (v == 0)
        return -1;
    *port = (uint16_t)v;
    return 0;
}

int lb_addr_parse(const char *s, bool allow_wildcard, struct lb_addr *out,
                  const char **why)
{
    char host[64];
    const char *port_str;
    memset(out, 0, sizeof(*out));

    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (close == NULL || close[1] != ':') {
            *why = "expected [IPv6]:port";
            return -1;
        }
        size_t n = (size_t)(close - s - 1);
        if (n >= sizeof(host)) {
            *why = "address too long";
            return -1;
        }
        memcpy(host, s + 1, n);
        host[n] = '\0';
        port_str = close + 2;
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&out->ss;
        if (inet_pton(AF_INET6, host, &sin6->sin6_addr) != 1) {
            *why = "invalid IPv6 address";
            return -1;
        }
        if (lb_port_parse(port_str, &sin6->sin6_port) < 0) {
            *why = "invalid port (1-65535)";
            return -1;
        }
        if (!allow_wildcard && IN6_IS_ADDR_UNSPECIFIED(&sin6->sin6_addr)) {
            *why = "wildcard address not allowed here";
            return -1;
        }
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(sin6->sin6_port);
        out->len = sizeof(*sin6);
        return 0;
    }

    const char *colon = strrchr(s, ':');
    if (colon == NULL) {
        *why = "expected host:port";
        return -1;
    }
    size_t n = (size_t)(colon - s);
    if (n >= sizeof(host)) {
        *why = "address too long";
        return -1;
    }
    memcpy(host, s, n);
    host[n] = '\0';
    if (strchr(host, ':') != NULL) {
        *why = "IPv6 addresses must be bracketed: [::1]:port";
        return -1;
    }
    port_str = colon + 1;
    struct sockaddr_in *sin = (struct sockaddr_in *)&out->ss;
    uint16_t port;
    if (lb_port_parse(port_str, &port) < 0) {
        *why = "invalid port (1-65535)";
        return -1;
    }
    if (n == 0 || strcmp(host, "*") == 0) {
        if (!allow_wildcard) {
            *why = "wildcard address not allowed here";
            return -1;
        }
        sin->sin_addr.s_addr = htonl(INADDR_ANY);
    } else if (strcmp(host, "localhost") == 0) {
        sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    } else if (inet_pton(AF_INET, host, &sin->sin_addr) != 1) {
        *why = "invalid IPv4 address (names are not resolved here)";
        return -1;
    } else if (!allow_wildcard && sin->sin_addr.s_addr == htonl(INADDR_ANY)) {
        *why = "wildcard address not allowed here";
        return -1;
    }
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
    out->len = sizeof(*sin);
    return 0;
}

void lb_addr_format_host(const struct sockaddr *sa, char *buf, size_t len)
{
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
        if (IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr))
            inet_ntop(AF_INET, &sin6->sin6_addr.s6_addr[12], buf, (socklen_t)len);
        else
            inet_ntop(AF_INET6, &sin6->sin6_addr, buf, (socklen_t)len);
    } else if (sa->sa_family == AF_INET) {
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, buf,
                  (socklen_t)len);
    } else {
        snprintf(buf, len, "unix");
    }
}

void lb_addr_format(const struct lb_addr *a, char *buf, size_t len)
{
    char host[INET6_ADDRSTRLEN];
    const struct sockaddr *sa = (const struct sockaddr *)&a->ss;
    lb_addr_format_host(sa, host, sizeof(host));
    if (sa->sa_family == AF_INET6)
        snprintf(buf, len, "[%s]:%u", host,
                 ntohs(((const struct sockaddr_in6 *)sa)->sin6_port));
    else
        snprintf(buf, len, "%s:%u", host,
                 ntohs(((const struct sockaddr_in *)sa)->sin_port));
}

bool lb_addr_equal(const struct lb_addr *a, const struct lb_addr *b)
{
    return a->len == b->len && memcmp(&a->ss, &b->ss, a->len) == 0;
}

uint64_t lb_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

struct timeval lb_ms_timeval(uint64_t ms)
{
    return (struct timeval){ .tv_sec = (time_t)(ms / 1000),
                             .tv_usec = (suseconds_t)(ms % 1000) * 1000 };
}

uint64_t lb_wall_ms(void)
{
    return lb_wall_us() / 1000;
}

uint64_t lb_wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

uint64_t lb_hash64(const void *data, size_t len)
{
    const unsigned char *p = data;
    uint64_t h = 14695981039346656037ULL;     /* FNV-1a 64 offset basis */
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    return h;
}

bool lb_str_ieq(const char *s, size_t len, const char *lower)
{
    size_t i = 0;
    for (; i < len; i++) {
        char c = s[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if (lower[i] == '\0' || c != lower[i])
            return false;
    }
    return lower[i] == '\0';
}

void lb_follow_parent(pid_t parent)
{
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent)
        raise(SIGTERM);
}
