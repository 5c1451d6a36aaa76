/* master/upgrade.c: the lists passed over the exec and the probe line;
 * shared/shm.c: whether a new binary adopts the running segment. */
#include <check.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "master/upgrade.h"
#include "shared/shm.h"
#include "tests/unit/suites.h"

START_TEST(test_inherit_roundtrip)
{
    struct lb_inherit l = { 0 }, back = { 0 };
    char err[160];
    ck_assert_int_eq(lb_inherit_add(&l, "shm", 3), 0);
    ck_assert_int_eq(lb_inherit_add(&l, "listen.0", 7), 0);
    ck_assert_int_eq(lb_inherit_add(&l, "listen.0", 8), 0);      /* names repeat */
    ck_assert_int_eq(lb_inherit_add(&l, "listen.12", 9), 0);
    ck_assert_int_eq(lb_inherit_add(&l, "bpf_map-x", 2147483647), 0);
    char *text = lb_inherit_format(&l);
    ck_assert_str_eq(text, "shm=3,listen.0=7,listen.0=8,listen.12=9,bpf_map-x=2147483647");
    ck_assert_int_eq(lb_inherit_parse(&back, text, err, sizeof(err)), 0);
    free(text);
    ck_assert_uint_eq(back.n, 5);

    long long v, k;
    ck_assert(lb_inherit_take(&back, "shm", &v));
    ck_assert_int_eq(v, 3);
    ck_assert(!lb_inherit_take(&back, "shm", &v));               /* taken */
    ck_assert(!lb_inherit_take(&back, "admin", &v));
    /* By prefix, in order, with the number after it. */
    ck_assert(lb_inherit_take_prefix(&back, "listen.", &k, &v));
    ck_assert_int_eq(k, 0);
    ck_assert_int_eq(v, 7);
    ck_assert(lb_inherit_take_prefix(&back, "listen.", &k, &v));
    ck_assert_int_eq(k, 0);
    ck_assert_int_eq(v, 8);
    ck_assert(lb_inherit_take_prefix(&back, "listen.", &k, &v));
    ck_assert_int_eq(k, 12);
    ck_assert_int_eq(v, 9);
    ck_assert(!lb_inherit_take_prefix(&back, "listen.", &k, &v));
    ck_assert_uint_eq(back.n, 1);
    ck_assert_str_eq(back.v[0].name, "bpf_map-x");
    lb_inherit_free(&l);
    lb_inherit_free(&back);

    /* Empty. */
    ck_assert_int_eq(lb_inherit_parse(&back, "", err, sizeof(err)), 0);
    ck_assert_uint_eq(back.n, 0);
    text = lb_inherit_format(&back);
    ck_assert_str_eq(text, "");
    free(text);
    /* A suffix that is not a number. */
    ck_assert_int_eq(lb_inherit_parse(&back, "listen.x=4", err, sizeof(err)), 0);
    ck_assert(lb_inherit_take_prefix(&back, "listen.", &k, &v));
    ck_assert_int_eq(k, -1);
    ck_assert_int_eq(v, 4);
    lb_inherit_free(&back);
}
END_TEST

START_TEST(test_inherit_refuses)
{
    static const char *const bad[] = {
        "shm",                  /* no '=' */
        "shm=",                 /* no value */
        "=3",                   /* no name */
        "shm=3,",               /* trailing comma */
        ",shm=3",
        "shm=3,,admin=4",
        "shm=-3",               /* not a number */
        "shm=3x",
        "shm= 3",
        "sh m=3",               /* bad name */
        "shm/x=3",
        "a234567890123456789012345678901234=1",    /* name too long */
        "shm=99999999999999999999999",             /* overflows */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct lb_inherit l = { 0 };
        char err[160] = "";
        ck_assert_int_eq(lb_inherit_add(&l, "kept", 1), 0);
        ck_assert_msg(lb_inherit_parse(&l, bad[i], err, sizeof(err)) < 0, "accepted '%s'", bad[i]);
        ck_assert_msg(err[0] != '\0', "no reason for '%s'", bad[i]);
        /* Nothing of a bad text is kept. */
        ck_assert_uint_eq(l.n, 1);
        lb_inherit_free(&l);
    }
    struct lb_inherit l = { 0 };
    ck_assert_int_lt(lb_inherit_add(&l, "", 1), 0);
    ck_assert_int_lt(lb_inherit_add(&l, "x", -1), 0);
    ck_assert_int_lt(lb_inherit_add(&l, "a,b", 1), 0);
    ck_assert_int_lt(lb_inherit_add(&l, "a=b", 1), 0);
    ck_assert_uint_eq(l.n, 0);
    lb_inherit_free(&l);
}
END_TEST

START_TEST(test_probe_line)
{
    struct lb_upgrade_probe p;
    ck_assert_int_eq(lb_upgrade_probe_parse(
        "lbd: [info] something\nlbd-upgrade-probe version=0.2.0+b layout=7 shm=adopted\n", &p), 0);
    ck_assert_str_eq(p.version, "0.2.0+b");
    ck_assert_uint_eq(p.layout, 7);
    ck_assert(p.adopt_shm);
    ck_assert_int_eq(lb_upgrade_probe_parse(
        "lbd-upgrade-probe version=1 layout=9 shm=fresh\n", &p), 0);
    ck_assert(!p.adopt_shm);
    ck_assert_uint_eq(p.layout, 9);
    /* A script, an error, a cut line, or the tag inside another line. */
    ck_assert_int_lt(lb_upgrade_probe_parse("", &p), 0);
    ck_assert_int_lt(lb_upgrade_probe_parse("lbd: configuration file x test failed\n", &p), 0);
    ck_assert_int_lt(lb_upgrade_probe_parse("lbd-upgrade-probe version=1 layout=7 shm=adop", &p), 0);
    ck_assert_int_lt(lb_upgrade_probe_parse("lbd-upgrade-probe version=1 layout=7 shm=maybe\n", &p), 0);
    ck_assert_int_lt(lb_upgrade_probe_parse("echo lbd-upgrade-probe version=1 layout=7 shm=fresh\n",
                                            &p), 0);
}
END_TEST

/* The decision a new binary makes on the segment it inherits. */
START_TEST(test_layout_compatible)
{
    struct lb_shm shm;
    ck_assert_int_eq(lb_shm_create(&shm), 0);
    const char *why = NULL;
    ck_assert(lb_shm_compatible(shm.hdr, shm.size, &why));

    struct lb_shm_header h = *shm.hdr;
    struct lb_shm_header bad = h;
    bad.layout_version = LB_SHM_LAYOUT_VERSION - 1;     /* an older binary's */
    ck_assert(!lb_shm_compatible(&bad, shm.size, &why));
    ck_assert_ptr_nonnull(strstr(why, "layout version"));
    bad = h;
    bad.layout_version = LB_SHM_LAYOUT_VERSION + 1;     /* a newer one's */
    ck_assert(!lb_shm_compatible(&bad, shm.size, &why));
    bad = h;
    bad.magic = 0;
    ck_assert(!lb_shm_compatible(&bad, shm.size, &why));
    ck_assert_ptr_nonnull(strstr(why, "magic"));
    /* Same version, another build's table sizes. */
    bad = h;
    bad.max_backends = h.max_backends * 2;
    ck_assert(!lb_shm_compatible(&bad, shm.size, &why));
    ck_assert_ptr_nonnull(strstr(why, "sized"));
    bad = h;
    bad.header_size = h.header_size + 8;
    ck_assert(!lb_shm_compatible(&bad, shm.size, &why));
    bad = h;
    bad.size = h.size + 4096;
    ck_assert(!lb_shm_compatible(&bad, (size_t)bad.size, &why));
    /* A file shorter than the header says. */
    ck_assert(!lb_shm_compatible(&h, shm.size - 4096, &why));
    ck_assert_ptr_nonnull(strstr(why, "truncated"));
    ck_assert(!lb_shm_compatible(&h, 8, &why));
    lb_shm_close(&shm);
}
END_TEST

/* What an adopted segment keeps: the counters go on from where they were. */
START_TEST(test_adopt_keeps_state)
{
    struct lb_shm shm, again;
    ck_assert_int_eq(lb_shm_create(&shm), 0);
    atomic_store(&shm.hdr->upgrades, 4);
    atomic_store(&shm.hdr->reloads, 9);
    int fd = dup(shm.fd);
    const char *why = NULL;
    ck_assert_int_eq(lb_shm_attach(fd, false, &again, &why), 0);
    ck_assert_uint_eq(atomic_load(&again.hdr->upgrades), 4);
    ck_assert_uint_eq(atomic_load(&again.hdr->reloads), 9);
    ck_assert_uint_eq(again.hdr->rl_hash_key[0], shm.hdr->rl_hash_key[0]);
    lb_shm_close(&again);
    lb_shm_close(&shm);
}
END_TEST

Suite *upgrade_suite(void)
{
    Suite *s = suite_create("upgrade");
    TCase *tc = tcase_create("handover");
    tcase_add_test(tc, test_inherit_roundtrip);
    tcase_add_test(tc, test_inherit_refuses);
    tcase_add_test(tc, test_probe_line);
    tcase_add_test(tc, test_layout_compatible);
    tcase_add_test(tc, test_adopt_keeps_state);
    suite_add_tcase(s, tc);
    return s;
}
