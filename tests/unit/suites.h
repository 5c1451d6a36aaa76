/* Suites of the lbd unit tests; tests/unit/main.c runs them all. */
#ifndef LB_UNIT_SUITES_H
#define LB_UNIT_SUITES_H

#include <check.h>

Suite *config_suite(void);
Suite *util_suite(void);
Suite *balancer_suite(void);
Suite *route_suite(void);
Suite *http_suite(void);
Suite *shm_suite(void);
Suite *freelist_suite(void);
Suite *upstream_suite(void);
Suite *health_suite(void);
Suite *fdbudget_suite(void);
Suite *breaker_suite(void);
Suite *queue_suite(void);
Suite *retry_suite(void);
Suite *ratelimit_suite(void);
Suite *tls_suite(void);
Suite *conn_suite(void);
Suite *sticky_suite(void);
Suite *lbtop_suite(void);
Suite *json_suite(void);
Suite *upgrade_suite(void);
Suite *steer_suite(void);
Suite *acme_suite(void);
Suite *discovery_suite(void);

#endif
