/* Runtime servers (shared/runtime.c), the DNS wire format (master/dns.c)
 * and the discovery keys of the configuration. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "master/consul.h"
#include "master/dns.h"
#include "master/etcd.h"
#include "master/json.h"
#include "shared/config.h"
#include "shared/runtime.h"
#include "shared/shm.h"
#include "tests/unit/suites.h"
#include "worker/balancer.h"

static struct lb_config *load(const char *text, char *err, size_t errlen)
{
    char path[64];
    snprintf(path, sizeof(path), "/tmp/lbd-unit-disco-XXXXXX");
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    struct lb_config *cfg = NULL;
    err[0] = '\0';
    lb_config_load(path, &cfg, err, errlen);
    unlink(path);
    return cfg;
}

#define HEAD "listeners = ( { address = \"127.0.0.1:8080\"; } );\n" \
             "routes = ( { host = \"*\"; path_prefix = \"/\"; pool = \"web\"; } );\n"

static void expect_bad(const char *pool, const char *what)
{
    char text[2048], err[512];
    snprintf(text, sizeof(text), HEAD "pools = ( { name = \"web\";\n%s\n } );\n", pool);
    struct lb_config *cfg = load(text, err, sizeof(err));
    ck_assert_msg(cfg == NULL, "accepted: %s", pool);
    ck_assert_msg(strstr(err, what) != NULL, "error \"%s\" does not mention \"%s\"", err, what);
    ck_assert_msg(strstr(err, ":3: ") != NULL || strstr(err, ":4: ") != NULL,
                  "error \"%s\" names no line of the pool", err);
}

START_TEST(test_config_discovery)
{
    char err[512];
    struct lb_config *cfg = load(HEAD "pools = ( { name = \"web\"; discovery = { type = \"dns\"; "
                                 "name = \"_http._tcp.web.test\"; record = \"SRV\"; "
                                 "resolvers = [ \"127.0.0.1:5353\" ]; }; } );\n", err, sizeof(err));
    ck_assert_msg(cfg != NULL, "%s", err);
    const struct lb_pool_cfg *p = &cfg->pools[0];
    ck_assert_uint_eq(p->nstatic, 0);
    ck_assert_uint_eq(p->nservers, LB_DISCO_DEFAULT_SERVERS);
    ck_assert(p->servers[0].runtime);
    ck_assert_int_eq(p->discovery.record, LB_DNS_SRV);
    ck_assert_uint_eq(p->discovery.nresolvers, 1);
    ck_assert_uint_eq(p->discovery.min_interval_ms, 1000);
    ck_assert_uint_eq(p->discovery.max_interval_ms, 60000);
    ck_assert(!p->discovery.empty_removes);
    lb_config_free(cfg);

    cfg = load(HEAD "pools = ( { name = \"web\"; max_servers = 8; discovery = { type = \"zookeeper\"; "
               "hosts = \"127.0.0.1:2181,127.0.0.1:2182\"; path = \"/services/web\"; }; } );\n",
               err, sizeof(err));
    ck_assert_msg(cfg != NULL, "%s", err);
    ck_assert_int_eq(cfg->pools[0].discovery.type, LB_DISCO_ZOOKEEPER);
    ck_assert_str_eq(cfg->pools[0].discovery.endpoints[0], "127.0.0.1:2181,127.0.0.1:2182");
    ck_assert_uint_eq(cfg->pools[0].discovery.session_ms, 10000);
    ck_assert_uint_eq(cfg->pools[0].nservers, 8);
    lb_config_free(cfg);

    /* max_servers on a static pool: room for the admin API */
    cfg = load(HEAD "pools = ( { name = \"web\"; max_servers = 3; servers = ( "
               "{ address = \"127.0.0.1:9001\"; } ); } );\n", err, sizeof(err));
    ck_assert_msg(cfg != NULL, "%s", err);
    ck_assert_uint_eq(cfg->pools[0].nstatic, 1);
    ck_assert_uint_eq(cfg->pools[0].nservers, 3);
    ck_assert(!cfg->pools[0].servers[0].runtime);
    ck_assert(cfg->pools[0].servers[2].runtime);
    lb_config_free(cfg);

    expect_bad("discovery = { type = \"carrier-pigeon\"; };", "unknown type");
    expect_bad("discovery = { type = \"dns\"; name = \"web.test\"; };", "needs a 'port'");
    expect_bad("discovery = { type = \"dns\"; name = \"x.test\"; record = \"SRV\"; port = 80; };",
               "SRV records bring their ports");
    expect_bad("discovery = { type = \"dns\"; name = \"x.test\"; record = \"MX\"; port = 80; };",
               "'record' must be");
    expect_bad("discovery = { type = \"dns\"; name = \"bad name!\"; port = 80; };", "bad DNS name");
    expect_bad("discovery = { type = \"dns\"; name = \"x.test\"; port = 80; resolvers = [ \"nope\" ]; };",
               "bad resolver");
    expect_bad("discovery = { type = \"dns\"; name = \"x.test\"; port = 80; min_interval = \"5s\"; "
               "max_interval = \"1s\"; };", "min_interval <= max_interval");
    expect_bad("discovery = { type = \"dns\"; name = \"x.test\"; port = 80; colour = 1; };",
               "unknown key 'colour'");
    expect_bad("max_servers = 1; servers = ( { address = \"127.0.0.1:1\"; }, "
               "{ address = \"127.0.0.1:2\"; } );", "less than the pool's 2 servers");
    expect_bad("strategy = \"round_robin\";", "no servers and no discovery");
    expect_bad("discovery = { type = \"etcd\"; prefix = \"/s/\"; };", "missing required key 'endpoints'");
    expect_bad("discovery = { type = \"etcd\"; endpoints = [ \"127.0.0.1:2379\" ]; prefix = \"/s/\"; };",
               "bad URL");
    expect_bad("discovery = { type = \"etcd\"; endpoints = [ \"http://h:1/v3\" ]; prefix = \"/s/\"; };",
               "bad URL");
    expect_bad("discovery = { type = \"etcd\"; endpoints = [ \"http://h:1\" ]; };",
               "missing required key 'prefix'");
    expect_bad("discovery = { type = \"consul\"; address = \"http://h:8500\"; service = \"a b\"; };",
               "bad service name");
    expect_bad("discovery = { type = \"consul\"; address = \"http://h:8500\"; service = \"web\"; "
               "wait = \"1h\"; };", "'wait' must be");
    expect_bad("discovery = { type = \"zookeeper\"; hosts = \"127.0.0.1:2181\"; path = \"services\"; };",
               "'path' must be");
    expect_bad("discovery = { type = \"zookeeper\"; hosts = \"127.0.0.1:2181\"; path = \"/s/\"; };",
               "'path' must be");
    expect_bad("discovery = { type = \"zookeeper\"; path = \"/s\"; };", "missing required key 'hosts'");
    expect_bad("discovery = { type = \"zookeeper\"; hosts = \"a b\"; path = \"/s\"; };",
               "'hosts' must be");
    expect_bad("discovery = { type = \"zookeeper\"; hosts = \"h:1\"; path = \"/s\"; "
               "session_timeout = \"100ms\"; };", "'session_timeout' must be");
}
END_TEST

/* ---- runtime servers ---- */

static struct lb_shm seg;
static struct lb_config *rcfg;

static void rt_setup(void)
{
    char err[512];
    rcfg = load(HEAD "pools = ( { name = \"web\"; strategy = \"weighted_round_robin\"; "
                "max_servers = 4; servers = ( { address = \"127.0.0.1:9001\"; weight = 1; } ); } );\n",
                err, sizeof(err));
    ck_assert_msg(rcfg != NULL, "%s", err);
    ck_assert_int_eq(lb_shm_create(&seg), 0);
    ck_assert_int_eq(lb_shm_assign(seg.hdr, rcfg, 1, err, sizeof(err)), 0);
}

static void rt_teardown(void)
{
    lb_shm_close(&seg);
    lb_config_free(rcfg);
}

static struct lb_runtime_server srv(const char *a, unsigned w)
{
    struct lb_runtime_server s;
    memset(&s, 0, sizeof(s));
    const char *why;
    ck_assert_int_eq(lb_addr_parse(a, false, &s.addr, &why), 0);
    lb_addr_format(&s.addr, s.address, sizeof(s.address));
    s.weight = w;
    return s;
}

static struct lb_shm_backend *slot_of(const char *address)
{
    const struct lb_pool_cfg *p = &rcfg->pools[0];
    for (size_t j = p->nstatic; j < p->nservers; j++) {
        struct lb_shm_backend *b = lb_shm_backend(seg.hdr, p->servers[j].shm_id);
        if (atomic_load(&b->rt_state) != LB_RT_EMPTY && strcmp(b->rt_address, address) == 0)
            return b;
    }
    return NULL;
}

START_TEST(test_runtime_set_keeps_rows_and_drains)
{
    struct lb_shm_header *h = seg.hdr;
    unsigned pid = rcfg->pools[0].shm_id;
    uint32_t seq0 = atomic_load(&lb_shm_pool(h, pid)->servers_seq);
    struct lb_runtime_server v[3] = { srv("10.0.0.1:80", 1), srv("10.0.0.2:80", 2),
                                      srv("10.0.0.3:80", 3) };
    struct lb_runtime_diff d;
    ck_assert_uint_eq(lb_runtime_set(h, pid, v, 2, 1000, &d), 3);
    ck_assert_uint_eq(d.added, 2);
    uint32_t seq1 = atomic_load(&lb_shm_pool(h, pid)->servers_seq);
    ck_assert_uint_ne(seq1, seq0);
    ck_assert_uint_eq(seq1 % 2, 0);
    struct lb_shm_backend *a = slot_of("10.0.0.1:80"), *b = slot_of("10.0.0.2:80");
    ck_assert_ptr_nonnull(a);
    ck_assert_ptr_nonnull(b);
    ck_assert_uint_eq(atomic_load(&b->weight), 2);
    ck_assert_uint_eq(atomic_load(&a->usable_ms), 1000);    /* slow start from its arrival */
    atomic_store(&a->checks_ok, 7);                         /* history that must stay */

    /* the same set again, one reweighted: nobody moves */
    v[1].weight = 5;
    lb_runtime_set(h, pid, v, 2, 2000, &d);
    ck_assert_uint_eq(d.added + d.removed, 0);
    ck_assert_uint_eq(d.reweighted, 1);
    ck_assert_ptr_eq(slot_of("10.0.0.1:80"), a);
    ck_assert_uint_eq(atomic_load(&a->checks_ok), 7);
    ck_assert_uint_eq(atomic_load(&b->weight), 5);

    /* 10.0.0.1 goes, 10.0.0.3 comes: the first drains with weight 0 */
    lb_runtime_set(h, pid, &v[1], 2, 3000, &d);
    ck_assert_uint_eq(d.added, 1);
    ck_assert_uint_eq(d.removed, 1);
    ck_assert_uint_eq(atomic_load(&a->rt_state), LB_RT_DRAINING);
    ck_assert_uint_eq(atomic_load(&a->weight), 0);
    /* every slot is in use now (the static server holds none): no room */
    struct lb_runtime_server four = srv("10.0.0.4:80", 1);
    ck_assert_int_eq(lb_runtime_add(h, pid, &four, 3000), -1);

    /* a request in flight keeps it draining past the grace */
    atomic_store(&a->inflight, 1);
    ck_assert_uint_eq(lb_runtime_reap(h, 3000 + LB_RUNTIME_GRACE_MS + 1, LB_RUNTIME_GRACE_MS), 0);
    atomic_store(&a->inflight, 0);
    uint64_t last = 3000 + LB_RUNTIME_GRACE_MS + 1;
    ck_assert_uint_eq(lb_runtime_reap(h, last + 10, LB_RUNTIME_GRACE_MS), 0);
    ck_assert_uint_eq(lb_runtime_reap(h, last + LB_RUNTIME_GRACE_MS, LB_RUNTIME_GRACE_MS), 1);
    ck_assert_uint_eq(atomic_load(&a->rt_state), LB_RT_EMPTY);
    uint32_t epoch = atomic_load(&a->rt_epoch);

    /* its slot takes the next one, fresh */
    ck_assert_int_eq(lb_runtime_add(h, pid, &four, 20000), 0);
    ck_assert_ptr_eq(slot_of("10.0.0.4:80"), a);
    ck_assert_uint_eq(atomic_load(&a->checks_ok), 0);
    ck_assert_uint_eq(atomic_load(&a->rt_epoch), epoch + 1);

    /* removed and back before its slot went: the same row */
    ck_assert_int_eq(lb_runtime_remove(h, pid, "10.0.0.2:80", 21000), 0);
    ck_assert_int_eq(lb_runtime_remove(h, pid, "10.0.0.2:80", 21000), -1);
    ck_assert_int_eq(lb_runtime_add(h, pid, &v[1], 22000), 0);
    ck_assert_ptr_eq(slot_of("10.0.0.2:80"), b);
    ck_assert_uint_eq(atomic_load(&b->rt_state), LB_RT_ACTIVE);

    struct lb_runtime_server list[8];
    ck_assert_uint_eq(lb_runtime_list(h, pid, list, 8), 3);
    ck_assert_uint_eq(atomic_load(&lb_shm_pool(h, pid)->runtime_active), 3);

    /* a reload keeps the runtime servers (same rows, same weights) */
    char err[256];
    ck_assert_int_eq(lb_shm_assign(h, rcfg, 2, err, sizeof(err)), 0);
    ck_assert_ptr_eq(slot_of("10.0.0.2:80"), b);
    ck_assert_uint_eq(atomic_load(&b->weight), 5);
    ck_assert_uint_eq(lb_runtime_list(h, pid, list, 8), 3);
}
END_TEST

START_TEST(test_runtime_read_and_rebuild)
{
    struct lb_shm_header *h = seg.hdr;
    const struct lb_pool_cfg *p = &rcfg->pools[0];
    unsigned pid = p->shm_id;
    struct lb_shm_backend *backends[4];
    const char *names[4];
    uint32_t ids[3];
    struct lb_runtime_slot copy[3];
    for (size_t j = 0; j < p->nservers; j++) {
        backends[j] = lb_shm_backend(h, p->servers[j].shm_id);
        names[j] = p->servers[j].address;
        if (j >= p->nstatic)
            ids[j - p->nstatic] = p->servers[j].shm_id;
    }
    struct lb_balancer bal;
    ck_assert_int_eq(lb_balancer_init(&bal, p, backends, NULL), 0);
    static const struct lb_pick_ctx ctx = { .now_ms = 1000000, .trials = true };
    for (int i = 0; i < 5; i++)
        ck_assert_int_eq(lb_balancer_pick(&bal, &ctx), 0);     /* only the static one */

    struct lb_runtime_server v[2] = { srv("10.0.0.1:80", 1), srv("10.0.0.2:80", 2) };
    struct lb_runtime_diff d;
    lb_runtime_set(h, pid, v, 2, 1, &d);
    uint32_t seq;
    ck_assert(lb_runtime_read(h, pid, ids, 3, copy, &seq));
    ck_assert_uint_eq(seq, atomic_load(&lb_shm_pool(h, pid)->servers_seq));
    unsigned active = 0;
    for (size_t k = 0; k < 3; k++)
        if (copy[k].state == LB_RT_ACTIVE) {
            active++;
            names[p->nstatic + k] = copy[k].address;
        }
    ck_assert_uint_eq(active, 2);
    /* being written: no copy */
    atomic_fetch_add(&lb_shm_pool(h, pid)->servers_seq, 1);
    ck_assert(!lb_runtime_read(h, pid, ids, 3, copy, &seq));
    atomic_fetch_add(&lb_shm_pool(h, pid)->servers_seq, 1);

    bal.names = names;
    ck_assert_int_eq(lb_balancer_rebuild(&bal), 0);
    unsigned count[4] = { 0 };
    for (int i = 0; i < 400; i++) {
        int k = lb_balancer_pick(&bal, &ctx);
        ck_assert_int_ge(k, 0);
        count[k]++;
    }
    /* weights 1 (static), 1 and 2: 100, 100, 200 over whole cycles */
    ck_assert_uint_eq(count[0], 100);
    ck_assert_uint_eq(count[1] + count[2] + count[3], 300);
    /* removal: weight 0 at once, skipped before any rebuild */
    ck_assert_int_eq(lb_runtime_remove(h, pid, "10.0.0.2:80", 2), 0);
    for (int i = 0; i < 100; i++) {
        int k = lb_balancer_pick(&bal, &ctx);
        ck_assert(strcmp(lb_shm_backend_name(backends[k]), "10.0.0.2:80") != 0);
    }
    lb_balancer_destroy(&bal);
}
END_TEST

/* ---- DNS wire format ---- */

static size_t put16(uint8_t *p, unsigned v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
    return 2;
}

/* An answer to QUERY (its question kept, OPT dropped): header flags and
 * counts, then RECORDS (already encoded) appended. */
static size_t answer(uint8_t *out, const uint8_t *query, size_t qlen, unsigned rcode,
                     unsigned an, unsigned ar, const uint8_t *records, size_t rlen)
{
    size_t qend = qlen - 11;                    /* without the OPT record */
    memcpy(out, query, qend);
    out[2] = 0x81;
    out[3] = (uint8_t)(0x80 | rcode);
    put16(out + 6, an);
    put16(out + 8, 0);
    put16(out + 10, ar);
    memcpy(out + qend, records, rlen);
    return qend + rlen;
}

/* A record at the question's name (pointer 0xc00c) or NAME (labels). */
static size_t rr(uint8_t *p, const char *name, unsigned type, unsigned ttl, const uint8_t *rd,
                 size_t rdlen)
{
    size_t o = 0;
    if (name == NULL) {
        p[o++] = 0xc0;
        p[o++] = 0x0c;
    } else {
        const char *s = name;
        while (*s) {
            const char *dot = strchr(s, '.');
            size_t l = dot ? (size_t)(dot - s) : strlen(s);
            p[o++] = (uint8_t)l;
            memcpy(p + o, s, l);
            o += l;
            s += l + (dot != NULL);
        }
        p[o++] = 0;
    }
    o += put16(p + o, type);
    o += put16(p + o, 1);
    o += put16(p + o, ttl >> 16);
    o += put16(p + o, ttl & 0xffff);
    o += put16(p + o, (unsigned)rdlen);
    memcpy(p + o, rd, rdlen);
    return o + rdlen;
}

START_TEST(test_dns_a_answer)
{
    uint8_t q[512], msg[1024], recs[512];
    size_t qlen = lb_dns_query(q, sizeof(q), 0x1234, "Web.Test", LB_DNS_TYPE_A);
    ck_assert_uint_gt(qlen, 12);
    uint8_t scratch[512];
    ck_assert_uint_eq(lb_dns_query(scratch, sizeof(scratch), 1, "a..b", LB_DNS_TYPE_A), 0);
    static const uint8_t ip1[4] = { 10, 0, 0, 1 }, ip2[4] = { 10, 0, 0, 2 };
    size_t r = rr(recs, NULL, LB_DNS_TYPE_A, 30, ip1, 4);
    r += rr(recs + r, NULL, LB_DNS_TYPE_A, 10, ip2, 4);
    r += rr(recs + r, NULL, LB_DNS_TYPE_A, 10, ip2, 4);    /* a duplicate */
    size_t len = answer(msg, q, qlen, 0, 3, 0, recs, r);
    static struct lb_dns_answer a;
    const char *why = NULL;
    ck_assert_int_eq(lb_dns_parse(msg, len, 0x1234, "web.test", LB_DNS_TYPE_A, &a, &why), 0);
    ck_assert_uint_eq(a.nanswer, 3);
    ck_assert_uint_eq(a.ttl, 10);
    struct lb_discovery_cfg d = { .type = LB_DISCO_DNS, .record = LB_DNS_A, .port = 8080, .weight = 2 };
    struct lb_runtime_server out[4];
    ck_assert_uint_eq(lb_dns_servers(&a, &d, out, 4, NULL, NULL), 2);
    ck_assert_str_eq(out[0].address, "10.0.0.1:8080");
    ck_assert_str_eq(out[1].address, "10.0.0.2:8080");
    ck_assert_uint_eq(out[1].weight, 2);
    ck_assert_uint_eq(lb_dns_servers(&a, &d, out, 1, NULL, NULL), 1);     /* room for one */

    /* malformed: each is refused whole */
    ck_assert_int_eq(lb_dns_parse(msg, len, 0x4321, "web.test", LB_DNS_TYPE_A, &a, &why), -1);
    ck_assert_str_eq(why, "not the answer to our query");
    ck_assert_int_eq(lb_dns_parse(msg, len - 2, 0x1234, "web.test", LB_DNS_TYPE_A, &a, &why), -1);
    ck_assert_int_eq(lb_dns_parse(msg, 11, 0x1234, "web.test", LB_DNS_TYPE_A, &a, &why), -1);
    ck_assert_int_eq(lb_dns_parse(msg, len, 0x1234, "other.test", LB_DNS_TYPE_A, &a, &why), -1);
    ck_assert_str_eq(why, "answer to another question");
    static const uint8_t bad[3] = { 1, 2, 3 };
    r = rr(recs, NULL, LB_DNS_TYPE_A, 30, bad, 3);
    len = answer(msg, q, qlen, 0, 1, 0, recs, r);
    ck_assert_int_eq(lb_dns_parse(msg, len, 0x1234, "web.test", LB_DNS_TYPE_A, &a, &why), -1);
    ck_assert_str_eq(why, "address record of a wrong length");
    /* a compression pointer to itself */
    r = rr(recs, NULL, LB_DNS_TYPE_A, 30, ip1, 4);
    len = answer(msg, q, qlen, 0, 1, 0, recs, r);
    size_t at = qlen - 11;
    msg[at] = 0xc0;
    msg[at + 1] = (uint8_t)at;
    ck_assert_int_eq(lb_dns_parse(msg, len, 0x1234, "web.test", LB_DNS_TYPE_A, &a, &why), -1);
    /* NXDOMAIN: parsed, no records */
    len = answer(msg, q, qlen, LB_DNS_RCODE_NXDOMAIN, 0, 0, recs, 0);
    ck_assert_int_eq(lb_dns_parse(msg, len, 0x1234, "web.test", LB_DNS_TYPE_A, &a, &why), 0);
    ck_assert_uint_eq(a.rcode, LB_DNS_RCODE_NXDOMAIN);
    ck_assert_uint_eq(a.nanswer, 0);
}
END_TEST

static size_t srv_rd(uint8_t *p, unsigned prio, unsigned weight, unsigned port, const char *target)
{
    size_t o = put16(p, prio);
    o += put16(p + o, weight);
    o += put16(p + o, port);
    const char *s = target;
    while (*s) {
        const char *dot = strchr(s, '.');
        size_t l = dot ? (size_t)(dot - s) : strlen(s);
        p[o++] = (uint8_t)l;
        memcpy(p + o, s, l);
        o += l;
        s += l + (dot != NULL);
    }
    p[o++] = 0;
    return o;
}

struct skips {
    unsigned n;
    char last[256];
};

static void on_skip(void *arg, const char *entry, const char *why)
{
    struct skips *s = arg;
    s->n++;
    snprintf(s->last, sizeof(s->last), "%s: %s", entry, why);
}

START_TEST(test_dns_srv_answer)
{
    uint8_t q[512], msg[2048], recs[1024], rd[300];
    const char *name = "_http._tcp.web.test";
    size_t qlen = lb_dns_query(q, sizeof(q), 7, name, LB_DNS_TYPE_SRV);
    size_t r = 0, n;
    n = srv_rd(rd, 0, 1, 8001, "h1.test");
    r += rr(recs + r, NULL, LB_DNS_TYPE_SRV, 60, rd, n);
    n = srv_rd(rd, 0, 3, 8002, "h1.test");
    r += rr(recs + r, NULL, LB_DNS_TYPE_SRV, 60, rd, n);
    n = srv_rd(rd, 1, 1, 8003, "h1.test");                  /* backup: left out */
    r += rr(recs + r, NULL, LB_DNS_TYPE_SRV, 60, rd, n);
    n = srv_rd(rd, 0, 1, 8004, "nowhere.test");             /* no address: skipped */
    r += rr(recs + r, NULL, LB_DNS_TYPE_SRV, 60, rd, n);
    static const uint8_t ip[4] = { 127, 0, 0, 1 };
    r += rr(recs + r, "h1.test", LB_DNS_TYPE_A, 60, ip, 4);
    size_t len = answer(msg, q, qlen, 0, 4, 1, recs, r);
    static struct lb_dns_answer a;
    const char *why = NULL;
    ck_assert_int_eq(lb_dns_parse(msg, len, 7, name, LB_DNS_TYPE_SRV, &a, &why), 0);
    ck_assert_uint_eq(a.nanswer, 4);
    ck_assert_uint_eq(a.nextra, 1);
    struct lb_discovery_cfg d = { .type = LB_DISCO_DNS, .record = LB_DNS_SRV };
    struct lb_runtime_server out[8];
    struct skips sk = { 0 };
    ck_assert_uint_eq(lb_dns_servers(&a, &d, out, 8, on_skip, &sk), 2);
    ck_assert_str_eq(out[0].address, "127.0.0.1:8001");
    ck_assert_uint_eq(out[0].weight, 1);
    ck_assert_str_eq(out[1].address, "127.0.0.1:8002");
    ck_assert_uint_eq(out[1].weight, 3);
    ck_assert_uint_eq(sk.n, 1);
    ck_assert_msg(strstr(sk.last, "nowhere.test:8004") != NULL, "%s", sk.last);

    /* an SRV record whose target runs past its data */
    n = srv_rd(rd, 0, 1, 8001, "h1.test");
    r = rr(recs, NULL, LB_DNS_TYPE_SRV, 60, rd, n);
    len = answer(msg, q, qlen, 0, 1, 0, recs, r);
    msg[len - n - 1] = (uint8_t)(n - 2);        /* rdlength two short */
    ck_assert_int_eq(lb_dns_parse(msg, len, 7, name, LB_DNS_TYPE_SRV, &a, &why), -1);
}
END_TEST

/* ---- JSON, base64, etcd ---- */

START_TEST(test_json)
{
    const char *why = NULL;
    const char *text = " {\"a\": [1, -2.5e1, \"x\\u00e9\\n\\ud83d\\ude00\"], \"b\": {\"c\": null, "
                       "\"d\": true}, \"n\": \"123\"} ";
    struct lb_json *j = lb_json_parse(text, strlen(text), &why);
    ck_assert_msg(j != NULL, "%s", why);
    const struct lb_json *a = lb_json_get(j, "a");
    ck_assert_int_eq(a->type, LB_JSON_ARRAY);
    ck_assert(a->child->num == 1.0);
    ck_assert(a->child->next->num == -25.0);
    ck_assert_str_eq(lb_json_str(a->child->next->next), "x\xc3\xa9\n\xf0\x9f\x98\x80");
    ck_assert_int_eq(lb_json_get(lb_json_get(j, "b"), "d")->type, LB_JSON_TRUE);
    int64_t v;
    ck_assert(lb_json_int(lb_json_get(j, "n"), &v));
    ck_assert_int_eq(v, 123);
    ck_assert(!lb_json_int(lb_json_get(j, "b"), &v));
    ck_assert_ptr_null(lb_json_get(j, "missing"));
    lb_json_free(j);
    static const char *const bad[] = { "", "{", "[1,]", "{\"a\" 1}", "{\"a\":1} x", "\"\\q\"",
                                       "\"\\ud800\"", "nul", "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
                                       "\"a\x01\"", "{1:2}", NULL };
    for (size_t i = 0; bad[i] != NULL; i++) {
        why = NULL;
        ck_assert_msg(lb_json_parse(bad[i], strlen(bad[i]), &why) == NULL, "accepted %s", bad[i]);
        ck_assert_ptr_nonnull(why);
    }
    char out[64];
    ck_assert_int_eq(lb_base64_encode("/svc/web/", 9, out, sizeof(out)), 12);
    ck_assert_str_eq(out, "L3N2Yy93ZWIv");
    ck_assert_int_eq(lb_base64_decode("L3N2Yy93ZWIvYQ==", 16, out, sizeof(out)), 10);
    ck_assert_str_eq(out, "/svc/web/a");
    ck_assert_int_eq(lb_base64_decode("L3N2Yy93ZWIvYQ", 14, out, sizeof(out)), 10);
    ck_assert_int_eq(lb_base64_decode("L3N*", 4, out, sizeof(out)), -1);
    ck_assert_int_eq(lb_base64_decode("L3N2Yy93ZWIvYQ==", 16, out, 5), -1);
}
END_TEST

static char *b64(const char *s)
{
    static char bufs[16][256];
    static int k;
    char *o = bufs[k++ % 16];
    ck_assert_int_ge(lb_base64_encode(s, strlen(s), o, 256), 0);
    return o;
}

START_TEST(test_etcd)
{
    char body[512];
    ck_assert_int_gt(lb_etcd_range_body("/svc/web/", body, sizeof(body)), 0);
    ck_assert_str_eq(body, "{\"key\":\"L3N2Yy93ZWIv\",\"range_end\":\"L3N2Yy93ZWIw\"}");  /* "/svc/web0" */
    ck_assert_int_gt(lb_etcd_watch_body("/svc/web/", 42, body, sizeof(body)), 0);
    ck_assert_msg(strstr(body, "\"start_revision\":\"42\"") != NULL, "%s", body);

    struct lb_runtime_server s;
    const char *why;
    ck_assert_int_eq(lb_etcd_value("127.0.0.1:8001", 14, &s, &why), 0);
    ck_assert_str_eq(s.address, "127.0.0.1:8001");
    ck_assert_uint_eq(s.weight, 1);
    const char *js = "{\"address\": \"[::1]:8002\", \"weight\": 3}";
    ck_assert_int_eq(lb_etcd_value(js, strlen(js), &s, &why), 0);
    ck_assert_str_eq(s.address, "[::1]:8002");
    ck_assert_uint_eq(s.weight, 3);
    static const char *const bad[] = { "", "web:80", "127.0.0.1", "{\"weight\": 2}",
                                       "{\"address\": \"127.0.0.1:1\", \"weight\": 0}",
                                       "{\"address\": \"127.0.0.1:1\", \"weight\": \"x\"}",
                                       "{\"address\": 5}", "{", NULL };
    for (size_t i = 0; bad[i] != NULL; i++)
        ck_assert_msg(lb_etcd_value(bad[i], strlen(bad[i]), &s, &why) == -1, "accepted %s", bad[i]);

    char range[2048];
    snprintf(range, sizeof(range),
             "{\"header\":{\"revision\":\"17\"},\"kvs\":["
             "{\"key\":\"%s\",\"value\":\"%s\"},"
             "{\"key\":\"%s\",\"value\":\"%s\"},"
             "{\"key\":\"%s\",\"value\":\"%s\"},"
             "{\"key\":\"%s\",\"value\":\"%s\"},"
             "{\"key\":\"%s\",\"value\":\"!!notbase64\"}],\"count\":\"5\"}",
             b64("/svc/web/a"), b64("127.0.0.1:8001"),
             b64("/svc/web/b"), b64("{\"address\":\"127.0.0.1:8002\",\"weight\":2}"),
             b64("/svc/web/c"), b64("garbage"),
             b64("/svc/web/d"), b64("127.0.0.1:8001"),          /* duplicate */
             b64("/svc/web/e"));
    struct lb_runtime_server out[8];
    size_t n;
    int64_t rev;
    struct skips sk = { 0 };
    ck_assert_int_eq(lb_etcd_parse_range(range, strlen(range), &rev, out, 8, &n, on_skip, &sk,
                                         &why), 0);
    ck_assert_int_eq(rev, 17);
    ck_assert_uint_eq(n, 2);
    ck_assert_str_eq(out[1].address, "127.0.0.1:8002");
    ck_assert_uint_eq(out[1].weight, 2);
    ck_assert_uint_eq(sk.n, 3);
    ck_assert_msg(strstr(sk.last, "/svc/web/e") != NULL, "%s", sk.last);
    /* no kvs at all: an empty prefix */
    const char *empty = "{\"header\":{\"revision\":\"3\"}}";
    ck_assert_int_eq(lb_etcd_parse_range(empty, strlen(empty), &rev, out, 8, &n, NULL, NULL, &why), 0);
    ck_assert_uint_eq(n, 0);
    static const char *const badr[] = { "{\"error\":\"etcdserver: no leader\",\"code\":14}",
                                        "{\"header\":{}}", "{\"header\":{\"revision\":\"1\"},\"kvs\":5}",
                                        "<html>", NULL };
    for (size_t i = 0; badr[i] != NULL; i++)
        ck_assert_msg(lb_etcd_parse_range(badr[i], strlen(badr[i]), &rev, out, 8, &n, NULL, NULL,
                                          &why) == -1, "accepted %s", badr[i]);

    struct lb_etcd_watch_msg m;
    const char *w1 = "{\"result\":{\"header\":{\"revision\":\"2\"},\"created\":true}}";
    ck_assert_int_eq(lb_etcd_watch_parse(w1, strlen(w1), &m, &why), 0);
    ck_assert(m.created && !m.events && !m.canceled);
    const char *w2 = "{\"result\":{\"header\":{\"revision\":\"5\"},\"events\":[{\"type\":\"DELETE\","
                     "\"kv\":{\"key\":\"YQ==\"}}]}}";
    ck_assert_int_eq(lb_etcd_watch_parse(w2, strlen(w2), &m, &why), 0);
    ck_assert(m.events && !m.canceled);
    ck_assert_int_eq(m.revision, 5);
    const char *w3 = "{\"result\":{\"header\":{},\"canceled\":true,\"compact_revision\":\"9\"}}";
    ck_assert_int_eq(lb_etcd_watch_parse(w3, strlen(w3), &m, &why), 0);
    ck_assert(m.canceled);
    ck_assert_int_eq(lb_etcd_watch_parse("{\"error\":{}}", 12, &m, &why), -1);
    ck_assert_int_eq(lb_etcd_watch_parse("{\"res", 5, &m, &why), -1);
}
END_TEST

START_TEST(test_consul)
{
    struct lb_discovery_cfg d = { .type = LB_DISCO_CONSUL, .passing_only = true, .wait_ms = 60000,
                                  .nendpoints = 1 };
    snprintf(d.endpoints[0], sizeof(d.endpoints[0]), "http://127.0.0.1:8500");
    snprintf(d.service, sizeof(d.service), "web");
    char url[512];
    ck_assert_int_gt(lb_consul_url(&d, "", url, sizeof(url)), 0);
    ck_assert_str_eq(url, "http://127.0.0.1:8500/v1/health/service/web?index=0&wait=60s&passing=1");
    snprintf(d.tag, sizeof(d.tag), "v2");
    ck_assert_int_gt(lb_consul_url(&d, "77", url, sizeof(url)), 0);
    ck_assert_str_eq(url, "http://127.0.0.1:8500/v1/health/service/web?index=77&wait=60s&passing=1&tag=v2");

    const char *body =
        "[{\"Node\":{\"Address\":\"10.0.0.9\"},\"Service\":{\"ID\":\"a\",\"Address\":\"10.0.0.1\","
        "\"Port\":80,\"Weights\":{\"Passing\":5}},\"Checks\":[{\"Status\":\"passing\"}]},"
        "{\"Node\":{\"Address\":\"10.0.0.9\"},\"Service\":{\"ID\":\"b\",\"Address\":\"\",\"Port\":81},"
        "\"Checks\":[]},"
        "{\"Node\":{\"Address\":\"10.0.0.9\"},\"Service\":{\"ID\":\"c\",\"Address\":\"2001:db8::1\","
        "\"Port\":82}},"
        "{\"Service\":{\"ID\":\"d\",\"Address\":\"10.0.0.4\",\"Port\":83},"
        "\"Checks\":[{\"Status\":\"critical\"}]},"
        "{\"Service\":{\"ID\":\"e\",\"Address\":\"db.internal\",\"Port\":84}},"
        "{\"Service\":{\"ID\":\"f\",\"Address\":\"10.0.0.6\",\"Port\":0}},"
        "{\"Service\":{\"ID\":\"g\",\"Address\":\"10.0.0.1\",\"Port\":80}},"
        "{\"Node\":{}}]";
    struct lb_runtime_server out[8];
    size_t n;
    const char *why;
    struct skips sk = { 0 };
    ck_assert_int_eq(lb_consul_parse(body, strlen(body), true, out, 8, &n, on_skip, &sk, &why), 0);
    ck_assert_uint_eq(n, 3);
    ck_assert_str_eq(out[0].address, "10.0.0.1:80");
    ck_assert_uint_eq(out[0].weight, 5);
    ck_assert_str_eq(out[1].address, "10.0.0.9:81");
    ck_assert_str_eq(out[2].address, "[2001:db8::1]:82");
    ck_assert_uint_eq(sk.n, 4);         /* e (a name), f (port 0), g (duplicate), no Service */
    /* without passing_only the critical one is in */
    ck_assert_int_eq(lb_consul_parse(body, strlen(body), false, out, 8, &n, NULL, NULL, &why), 0);
    ck_assert_uint_eq(n, 4);
    ck_assert_int_eq(lb_consul_parse("{}", 2, true, out, 8, &n, NULL, NULL, &why), -1);
    ck_assert_int_eq(lb_consul_parse("[{", 2, true, out, 8, &n, NULL, NULL, &why), -1);
    ck_assert_int_eq(lb_consul_parse("[]", 2, true, out, 8, &n, NULL, NULL, &why), 0);
    ck_assert_uint_eq(n, 0);
}
END_TEST

Suite *discovery_suite(void)
{
    Suite *s = suite_create("discovery");
    TCase *tc = tcase_create("config");
    tcase_add_test(tc, test_config_discovery);
    suite_add_tcase(s, tc);
    tc = tcase_create("runtime");
    tcase_add_checked_fixture(tc, rt_setup, rt_teardown);
    tcase_add_test(tc, test_runtime_set_keeps_rows_and_drains);
    tcase_add_test(tc, test_runtime_read_and_rebuild);
    suite_add_tcase(s, tc);
    tc = tcase_create("dns");
    tcase_add_test(tc, test_dns_a_answer);
    tcase_add_test(tc, test_dns_srv_answer);
    suite_add_tcase(s, tc);
    tc = tcase_create("http-sources");
    tcase_add_test(tc, test_json);
    tcase_add_test(tc, test_etcd);
    tcase_add_test(tc, test_consul);
    suite_add_tcase(s, tc);
    return s;
}
