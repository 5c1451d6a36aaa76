/* lbd unit tests (Check). `make unit` builds and runs build/lbd-unit.
 * CK_FORK, CK_RUN_SUITE and CK_RUN_CASE work as usual. */
#include <stdlib.h>

#include "tests/unit/suites.h"

int main(void)
{
    SRunner *sr = srunner_create(config_suite());
    srunner_add_suite(sr, util_suite());
    srunner_add_suite(sr, json_suite());
    srunner_add_suite(sr, balancer_suite());
    srunner_add_suite(sr, route_suite());
    srunner_add_suite(sr, http_suite());
    srunner_add_suite(sr, shm_suite());
    srunner_add_suite(sr, freelist_suite());
    srunner_add_suite(sr, upstream_suite());
    srunner_add_suite(sr, health_suite());
    srunner_add_suite(sr, fdbudget_suite());
    srunner_add_suite(sr, breaker_suite());
    srunner_add_suite(sr, queue_suite());
    srunner_add_suite(sr, retry_suite());
    srunner_add_suite(sr, ratelimit_suite());
    srunner_add_suite(sr, tls_suite());
    srunner_add_suite(sr, conn_suite());
    srunner_add_suite(sr, sticky_suite());
    srunner_add_suite(sr, lbtop_suite());
    srunner_add_suite(sr, upgrade_suite());
    srunner_add_suite(sr, steer_suite());
    srunner_add_suite(sr, acme_suite());
    srunner_add_suite(sr, discovery_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
