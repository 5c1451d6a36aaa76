/* lb_config_load on temporary files: a full valid configuration, defaults,
 * and every validation error with its FILE:LINE. */
#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shared/config.h"
#include "worker/worker.h"
#include "tests/unit/suites.h"

static char conf_path[64];

/* Write TEXT to a new file in /tmp, load it, remove the file. */
static int load_text(const char *text, struct lb_config **cfg, char *err, size_t errlen)
{
    snprintf(conf_path, sizeof(conf_path), "/tmp/lbd-unit-conf-XXXXXX");
    int fd = mkstemp(conf_path);
    ck_assert_msg(fd >= 0, "mkstemp failed");
    size_t len = strlen(text);
    ck_assert_msg(write(fd, text, len) == (ssize_t)len, "short write");
    close(fd);
    err[0] = '\0';
    *cfg = NULL;
    int rc = lb_config_load(conf_path, cfg, err, errlen);
    unlink(conf_path);
    return rc;
}

/* 1-based number of the line of TEXT containing NEEDLE (which must occur
 * exactly once, so the test says unambiguously where the error is). */
static int line_of(const char *text, const char *needle)
{
    const char *hit = strstr(text, needle);
    ck_assert_msg(hit != NULL, "test bug: '%s' not in the config", needle);
    ck_assert_msg(strstr(hit + 1, needle) == NULL, "test bug: '%s' occurs twice", needle);
    int line = 1;
    for (const char *p = text; p < hit; p++)
        line += *p == '\n';
    return line;
}

/* Loading TEXT fails with "PATH:LINE: ..." where LINE is the line holding
 * AT (or 0 when AT is NULL), and the message mentions WHAT. */
static void expect_error_line(const char *text, const char *at, int line, const char *what)
{
    struct lb_config *cfg;
    char err[512];
    int rc = load_text(text, &cfg, err, sizeof(err));
    ck_assert_msg(rc == -1, "accepted a bad config (expected error about '%s'):\n%s", what, text);
    ck_assert_ptr_null(cfg);
    if (at != NULL)
        line = line_of(text, at);
    char prefix[128];
    snprintf(prefix, sizeof(prefix), "%s:%d: ", conf_path, line);
    ck_assert_msg(strncmp(err, prefix, strlen(prefix)) == 0,
                  "error \"%s\" does not start with \"%s\"", err, prefix);
    ck_assert_msg(strstr(err, what) != NULL, "error \"%s\" does not mention \"%s\"", err, what);
}

static void expect_error(const char *text, const char *at, const char *what)
{
    expect_error_line(text, at, 0, what);
}

#define LISTENERS "listeners = ( { address = \"127.0.0.1:8080\"; } );\n"
#define POOL_WEB \
    "pools = (\n" \
    "  { name = \"web\"; servers = ( { address = \"127.0.0.1:9001\"; } ); }\n" \
    ");\n"
#define MINIMAL LISTENERS POOL_WEB

static const char full_conf[] =
    "# a full configuration\n"
    "workers = 4;\n"
    "shutdown_timeout = \"2m\";\n"
    "log_level = \"debug\";\n"
    "error_log = \"/tmp/lbd-unit-error.log\";\n"
    "pid_file = \"/tmp/lbd-unit.pid\";\n"
    "access_log = \"/tmp/lbd-unit-access.log\";\n"
    "tcp_migrate_req = false;\n"
    "max_connections = 5000;\n"
    "admin = { address = \"127.0.0.1:8404\"; max_connections = 8; timeout = \"3s\"; };\n"
    "timeouts = {\n"
    "    client_header = \"250ms\";\n"
    "    connect = \"2s\";\n"
    "    backend_idle = \"1h\";\n"
    "    send = \"0\";\n"
    "    deadline = \"30s\";\n"
    "    tunnel = \"10m\";\n"
    "};\n"
    "limits = { request_line = 1024; header_size = \"16k\"; headers = 50;\n"
    "           body = \"1m\"; buffer = \"64K\"; };\n"
    "trusted_proxies = [ \"10.0.0.0/8\", \"::1\" ];\n"
    "listeners = (\n"
    "    { address = \"*:8080\"; backlog = 128; defer_accept = false; },\n"
    "    { address = \"[::1]:8443\"; },\n"
    "    { address = \"localhost:9000\"; }\n"
    ");\n"
    "pools = (\n"
    "    { name = \"web\"; strategy = \"weighted_round_robin\"; keepalive = 8;\n"
    "      timeouts = { connect = \"1s\"; deadline = \"5s\"; client_body = \"0\"; };\n"
    "      servers = ( { address = \"127.0.0.1:9001\"; weight = 5; },\n"
    "                  { address = \"127.0.0.1:9002\"; },\n"
    "                  { address = \"[::1]:9003\"; weight = 0; } ); },\n"
    "    { name = \"api\"; strategy = \"round_robin\";\n"
    "      servers = ( { address = \"10.0.0.1:80\"; weight = 1000; } ); }\n"
    ");\n"
    "routes = (\n"
    "    { host = \"API.Example.com\"; path_prefix = \"/v1\"; pool = \"api\"; },\n"
    "    { host = \"*.example.com\"; pool = \"web\"; },\n"
    "    { pool = \"web\"; }\n"
    ");\n";

static unsigned online_workers(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1)
        n = 1;
    if (n > LB_MAX_WORKERS)
        n = LB_MAX_WORKERS;
    return (unsigned)n;
}

START_TEST(test_full_config)
{
    struct lb_config *cfg;
    char err[512];
    int rc = load_text(full_conf, &cfg, err, sizeof(err));
    ck_assert_msg(rc == 0, "load failed: %s", err);
    ck_assert_ptr_nonnull(cfg);

    ck_assert_ptr_nonnull(cfg->path);
    ck_assert_msg(cfg->path[0] == '/', "path not absolute: %s", cfg->path);
    ck_assert_str_eq(strrchr(cfg->path, '/'), strrchr(conf_path, '/'));
    ck_assert_uint_eq(cfg->workers, 4);
    ck_assert(!cfg->workers_auto);
    ck_assert_uint_eq(cfg->shutdown_timeout_ms, 120000);
    ck_assert_int_eq(cfg->log_level, LB_LOG_DEBUG);
    ck_assert_str_eq(cfg->error_log, "/tmp/lbd-unit-error.log");
    ck_assert_str_eq(cfg->pid_file, "/tmp/lbd-unit.pid");
    ck_assert_uint_eq(cfg->max_connections, 5000);
    ck_assert(cfg->admin);
    ck_assert_uint_eq(cfg->admin_max_connections, 8);
    ck_assert_uint_eq(cfg->admin_timeout_ms, 3000);

    /* Overrides, and defaults for the rest. */
    ck_assert_uint_eq(cfg->timeouts.client_header_ms, 250);
    ck_assert_uint_eq(cfg->timeouts.client_idle_ms, 60000);
    ck_assert_uint_eq(cfg->timeouts.connect_ms, 2000);
    ck_assert_uint_eq(cfg->timeouts.backend_response_ms, 60000);
    ck_assert_uint_eq(cfg->timeouts.backend_idle_ms, 3600000);
    ck_assert_uint_eq(cfg->timeouts.send_ms, 0);
    ck_assert_uint_eq(cfg->timeouts.client_body_ms, 30000);
    ck_assert_uint_eq(cfg->timeouts.deadline_ms, 30000);
    ck_assert_uint_eq(cfg->timeouts.tunnel_ms, 600000);

    ck_assert_str_eq(cfg->access_log, "/tmp/lbd-unit-access.log");
    ck_assert_uint_eq(cfg->limits.request_line, 1024);
    ck_assert_uint_eq(cfg->limits.header_size, 16384);
    ck_assert_uint_eq(cfg->limits.headers, 50);
    ck_assert_uint_eq(cfg->limits.body, 1048576);
    ck_assert_uint_eq(cfg->limits.buffer, 65536);
    ck_assert_uint_eq(cfg->ntrusted_proxies, 2);
    ck_assert_uint_eq(cfg->trusted_proxies[0].prefix, 96 + 8);
    ck_assert_uint_eq(cfg->trusted_proxies[1].prefix, 128);

    ck_assert_uint_eq(cfg->nlisteners, 3);
    ck_assert_str_eq(cfg->listeners[0].address, "0.0.0.0:8080");
    ck_assert_int_eq(cfg->listeners[0].backlog, 128);
    ck_assert(!cfg->listeners[0].defer_accept);
    ck_assert(!cfg->tcp_migrate_req);
    ck_assert_str_eq(cfg->listeners[1].address, "[::1]:8443");
    ck_assert_int_eq(cfg->listeners[1].backlog, 511);
    ck_assert(cfg->listeners[1].defer_accept);
    ck_assert_str_eq(cfg->listeners[2].address, "127.0.0.1:9000");

    ck_assert_uint_eq(cfg->npools, 2);
    const struct lb_pool_cfg *web = &cfg->pools[0], *api = &cfg->pools[1];
    ck_assert_str_eq(web->name, "web");
    ck_assert_int_eq(web->strategy, LB_STRATEGY_WEIGHTED_ROUND_ROBIN);
    ck_assert(!web->keepalive_auto);
    ck_assert_uint_eq(web->keepalive, 8);
    ck_assert_uint_eq(web->nservers, 3);
    ck_assert_str_eq(web->servers[0].address, "127.0.0.1:9001");
    ck_assert_uint_eq(web->servers[0].weight, 5);
    ck_assert_str_eq(web->servers[1].address, "127.0.0.1:9002");
    ck_assert_uint_eq(web->servers[1].weight, 1);
    ck_assert_str_eq(web->servers[2].address, "[::1]:9003");
    ck_assert_uint_eq(web->servers[2].weight, 0);
    ck_assert_str_eq(api->name, "api");
    ck_assert_int_eq(api->strategy, LB_STRATEGY_ROUND_ROBIN);
    ck_assert(api->keepalive_auto);
    ck_assert_uint_eq(api->nservers, 1);
    ck_assert_str_eq(api->servers[0].address, "10.0.0.1:80");
    ck_assert_uint_eq(api->servers[0].weight, 1000);

    /* Pool timeouts: the global set, the pool's overrides on top. */
    ck_assert_uint_eq(web->timeouts.connect_ms, 1000);
    ck_assert_uint_eq(web->timeouts.deadline_ms, 5000);
    ck_assert_uint_eq(web->timeouts.client_body_ms, 0);
    ck_assert_uint_eq(web->timeouts.client_header_ms, 250);
    ck_assert_uint_eq(web->timeouts.backend_idle_ms, 3600000);
    ck_assert_uint_eq(web->timeouts.backend_response_ms, 60000);
    ck_assert_uint_eq(web->timeouts.tunnel_ms, 600000);
    ck_assert_mem_eq(&api->timeouts, &cfg->timeouts, sizeof(cfg->timeouts));

    ck_assert_uint_eq(cfg->nroutes, 3);
    const struct lb_route_cfg *r = cfg->routes;
    ck_assert_int_eq(r[0].host_match, LB_HOST_EXACT);
    ck_assert_str_eq(r[0].host, "api.example.com");
    ck_assert_uint_eq(r[0].host_len, 15);
    ck_assert_str_eq(r[0].path_prefix, "/v1");
    ck_assert_uint_eq(r[0].path_len, 3);
    ck_assert_uint_eq(r[0].pool, 1);
    ck_assert_int_eq(r[1].host_match, LB_HOST_SUFFIX);
    ck_assert_str_eq(r[1].host, ".example.com");
    ck_assert_uint_eq(r[1].host_len, 12);
    ck_assert_str_eq(r[1].path_prefix, "/");
    ck_assert_uint_eq(r[1].path_len, 1);
    ck_assert_uint_eq(r[1].pool, 0);
    ck_assert_int_eq(r[2].host_match, LB_HOST_ANY);
    ck_assert_str_eq(r[2].path_prefix, "/");
    ck_assert_uint_eq(r[2].pool, 0);

    ck_assert_str_eq(lb_strategy_name(web->strategy), "weighted_round_robin");
    ck_assert_str_eq(lb_strategy_name(api->strategy), "round_robin");
    lb_config_free(cfg);
}
END_TEST

START_TEST(test_defaults)
{
    struct lb_config *cfg;
    char err[512];
    int rc = load_text(MINIMAL, &cfg, err, sizeof(err));
    ck_assert_msg(rc == 0, "load failed: %s", err);
    ck_assert_uint_eq(cfg->workers, online_workers());
    ck_assert(cfg->workers_auto);
    ck_assert_uint_eq(cfg->shutdown_timeout_ms, 30000);
    ck_assert_int_eq(cfg->log_level, LB_LOG_INFO);
    ck_assert_ptr_null(cfg->error_log);
    ck_assert_ptr_null(cfg->pid_file);
    ck_assert_uint_eq(cfg->timeouts.client_header_ms, 30000);
    ck_assert_uint_eq(cfg->timeouts.client_idle_ms, 60000);
    ck_assert_uint_eq(cfg->timeouts.connect_ms, 5000);
    ck_assert_uint_eq(cfg->timeouts.backend_response_ms, 60000);
    ck_assert_uint_eq(cfg->timeouts.backend_idle_ms, 30000);
    ck_assert_uint_eq(cfg->timeouts.send_ms, 60000);
    ck_assert_uint_eq(cfg->timeouts.client_body_ms, 30000);
    ck_assert_uint_eq(cfg->timeouts.deadline_ms, 0);
    ck_assert_uint_eq(cfg->timeouts.tunnel_ms, 3600000);
    ck_assert_uint_eq(cfg->timeouts.drain_idle_ms, 5000);
    ck_assert_uint_eq(lb_worker_drain_idle_ms(cfg), 5000);
    ck_assert_mem_eq(&cfg->pools[0].timeouts, &cfg->timeouts, sizeof(cfg->timeouts));
    ck_assert_uint_eq(cfg->limits.request_line, 8192);
    ck_assert_uint_eq(cfg->limits.header_size, 32768);
    ck_assert_uint_eq(cfg->limits.headers, 100);
    ck_assert_uint_eq(cfg->limits.body, 0);
    ck_assert_uint_eq(cfg->limits.buffer, 256 * 1024);
    ck_assert_ptr_null(cfg->access_log);
    ck_assert_uint_eq(cfg->ntrusted_proxies, 0);
    ck_assert_uint_eq(cfg->nlisteners, 1);
    ck_assert_int_eq(cfg->listeners[0].backlog, 511);
    ck_assert(cfg->listeners[0].defer_accept);
    ck_assert(cfg->tcp_migrate_req);
    ck_assert_uint_eq(cfg->max_connections, 0);             /* from the fd limit */
    ck_assert(!cfg->admin);
    ck_assert_uint_eq(cfg->admin_max_connections, LB_ADMIN_MAX_CONNECTIONS);
    ck_assert_uint_eq(cfg->admin_timeout_ms, 10000);
    ck_assert_uint_eq(cfg->npools, 1);
    ck_assert_int_eq(cfg->pools[0].strategy, LB_STRATEGY_ROUND_ROBIN);
    ck_assert(cfg->pools[0].keepalive_auto);
    ck_assert_uint_eq(cfg->pools[0].servers[0].weight, 1);
    /* Routes omitted with one pool: everything goes to it. */
    ck_assert_uint_eq(cfg->nroutes, 1);
    ck_assert_int_eq(cfg->routes[0].host_match, LB_HOST_ANY);
    ck_assert_str_eq(cfg->routes[0].path_prefix, "/");
    ck_assert_uint_eq(cfg->routes[0].path_len, 1);
    ck_assert_uint_eq(cfg->routes[0].pool, 0);
    lb_config_free(cfg);
}
END_TEST

START_TEST(test_workers_auto)
{
    struct lb_config *cfg;
    char err[512];
    int rc = load_text("workers = \"auto\";\n" MINIMAL, &cfg, err, sizeof(err));
    ck_assert_msg(rc == 0, "load failed: %s", err);
    ck_assert(cfg->workers_auto);
    ck_assert_uint_eq(cfg->workers, online_workers());
    lb_config_free(cfg);

    rc = load_text("workers = 64;\n" MINIMAL, &cfg, err, sizeof(err));
    ck_assert_msg(rc == 0, "load failed: %s", err);
    ck_assert(!cfg->workers_auto);
    ck_assert_uint_eq(cfg->workers, 64);
    lb_config_free(cfg);
}
END_TEST

START_TEST(test_keepalive_auto_or_fixed)
{
    static const struct { const char *value; bool is_auto; unsigned n; } cases[] = {
        { "\"auto\"", true, 0 }, { "0", false, 0 }, { "2", false, 2 }, { "100000", false, 100000 },
    };
    for (size_t i = 0; i < LB_ARRAY_SIZE(cases); i++) {
        char text[512];
        snprintf(text, sizeof(text), LISTENERS
                 "pools = ( { name = \"web\"; keepalive = %s;\n"
                 "            servers = ( { address = \"127.0.0.1:9001\"; } ); } );\n",
                 cases[i].value);
        struct lb_config *cfg;
        char err[512];
        int rc = load_text(text, &cfg, err, sizeof(err));
        ck_assert_msg(rc == 0, "load failed: %s", err);
        ck_assert_int_eq(cfg->pools[0].keepalive_auto, cases[i].is_auto);
        ck_assert_uint_eq(cfg->pools[0].keepalive, cases[i].n);
        lb_config_free(cfg);
    }
}
END_TEST

START_TEST(test_max_connections)
{
    struct lb_config *cfg;
    char err[512];
    int rc = load_text("max_connections = \"auto\";\n"
                       "admin = { address = \"127.0.0.1:8404\"; };\n" MINIMAL,
                       &cfg, err, sizeof(err));
    ck_assert_msg(rc == 0, "load failed: %s", err);
    ck_assert_uint_eq(cfg->max_connections, 0);
    ck_assert_uint_eq(cfg->admin_max_connections, 64);
    ck_assert_uint_eq(cfg->admin_timeout_ms, 10000);
    lb_config_free(cfg);
    rc = load_text("max_connections = 16777216;\n" MINIMAL, &cfg, err, sizeof(err));
    ck_assert_msg(rc == 0, "load failed: %s", err);
    ck_assert_uint_eq(cfg->max_connections, 16777216);
    lb_config_free(cfg);
}
END_TEST

START_TEST(test_err_max_connections)
{
    expect_error(MINIMAL "max_connections = 0;\n", "max_connections",
                 "'max_connections' must be between 1 and 16777216");
    expect_error(MINIMAL "max_connections = 16777217;\n", "max_connections",
                 "'max_connections' must be between 1 and 16777216");
    expect_error(MINIMAL "max_connections = \"lots\";\n", "max_connections",
                 "'max_connections' must be a number or \"auto\"");
    expect_error(MINIMAL "max_connections = 1.5;\n", "max_connections",
                 "'max_connections' must be an integer");
    expect_error(MINIMAL "admin = {\n  address = \"127.0.0.1:8404\";\n  max_connections = 0;\n};\n",
                 "max_connections", "'max_connections' must be between 1 and 65536");
    expect_error(MINIMAL "admin = {\n  address = \"127.0.0.1:8404\";\n  timeout = \"0\";\n};\n",
                 "timeout", "admin timeout must not be \"0\"");
    expect_error(MINIMAL "admin = {\n  address = \"127.0.0.1:8404\";\n  timeout = \"10\";\n};\n",
                 "timeout", "'timeout': invalid duration \"10\"");
    expect_error(MINIMAL "admin = {\n  address = \"127.0.0.1:8404\";\n  backlog = 5;\n};\n",
                 "backlog", "unknown key 'backlog' in admin");
}
END_TEST

START_TEST(test_durations)
{
    static const struct { const char *text; uint64_t ms; } cases[] = {
        { "0", 0 }, { "0ms", 0 }, { "1ms", 1 }, { "250ms", 250 }, { "2s", 2000 },
        { "1m", 60000 }, { "1h", 3600000 }, { "90s", 90000 },
    };
    for (size_t i = 0; i < LB_ARRAY_SIZE(cases); i++) {
        char text[512];
        snprintf(text, sizeof(text), "shutdown_timeout = \"%s\";\n" MINIMAL, cases[i].text);
        struct lb_config *cfg;
        char err[512];
        int rc = load_text(text, &cfg, err, sizeof(err));
        ck_assert_msg(rc == 0, "\"%s\": %s", cases[i].text, err);
        ck_assert_uint_eq(cfg->shutdown_timeout_ms, cases[i].ms);
        lb_config_free(cfg);
    }
}
END_TEST

START_TEST(test_example_config)
{
    /* The shipped example loads (make unit runs from the top directory). */
    if (access("etc/lbd.conf", R_OK) != 0)
        return;
    struct lb_config *cfg = NULL;
    char err[512] = "";
    int rc = lb_config_load("etc/lbd.conf", &cfg, err, sizeof(err));
    ck_assert_msg(rc == 0, "etc/lbd.conf: %s", err);
    ck_assert_uint_ge(cfg->nlisteners, 1);
    ck_assert_uint_ge(cfg->npools, 1);
    ck_assert_uint_ge(cfg->nroutes, 1);
    lb_config_free(cfg);
}
END_TEST

START_TEST(test_missing_file)
{
    struct lb_config *cfg = NULL;
    char err[512] = "";
    const char *path = "/tmp/lbd-unit-no-such-dir/lbd.conf";
    ck_assert_int_eq(lb_config_load(path, &cfg, err, sizeof(err)), -1);
    ck_assert_ptr_null(cfg);
    ck_assert_msg(strncmp(err, path, strlen(path)) == 0 && err[strlen(path)] == ':',
                  "error does not name the file: %s", err);
}
END_TEST

START_TEST(test_err_syntax)
{
    expect_error("workers = 2;\n"
                 "shutdown_timeout = = \"1s\";\n" MINIMAL,
                 "= =", "syntax error");
}
END_TEST

START_TEST(test_err_unknown_top_key)
{
    expect_error(LISTENERS "worker = 4;\n" POOL_WEB, "worker =", "unknown key 'worker'");
}
END_TEST

START_TEST(test_err_unknown_server_key)
{
    expect_error(LISTENERS
                 "pools = (\n"
                 "  { name = \"web\";\n"
                 "    servers = (\n"
                 "      { address = \"127.0.0.1:9001\";\n"
                 "        wieght = 2; }\n"
                 "    );\n"
                 "  }\n"
                 ");\n",
                 "wieght", "unknown key 'wieght' in server");
}
END_TEST

START_TEST(test_err_unknown_other_keys)
{
    expect_error("listeners = (\n  { address = \"127.0.0.1:8080\";\n    port = 1; }\n);\n" POOL_WEB,
                 "port", "unknown key 'port' in listener");
    expect_error(MINIMAL "timeouts = {\n  read = \"1s\";\n};\n", "read", "unknown key 'read' in timeouts");
    expect_error(MINIMAL "routes = (\n  { pool = \"web\";\n    prefix = \"/\"; }\n);\n",
                 "prefix", "unknown key 'prefix' in route");
}
END_TEST

START_TEST(test_err_wrong_types)
{
    expect_error(MINIMAL "workers = \"x\";\n", "workers", "'workers' must be a number or \"auto\"");
    expect_error(MINIMAL "workers = 2.5;\n", "workers", "'workers' must be an integer");
    expect_error(LISTENERS
                 "pools = (\n"
                 "  { name = \"web\"; servers = (\n"
                 "    { address = \"127.0.0.1:9001\";\n"
                 "      weight = \"3\"; }\n"
                 "  ); }\n"
                 ");\n",
                 "weight", "'weight' must be an integer");
    expect_error(MINIMAL "shutdown_timeout = 30;\n", "shutdown_timeout", "'shutdown_timeout' must be a string");
    expect_error("listeners = { address = \"127.0.0.1:8080\"; };\n" POOL_WEB,
                 "listeners", "'listeners' must be a list");
    expect_error(MINIMAL "timeouts = ( 1 );\n", "timeouts", "'timeouts' must be a group");
}
END_TEST

START_TEST(test_err_workers_range)
{
    expect_error(MINIMAL "workers = 0;\n", "workers", "'workers' must be between 1 and 64");
    expect_error(MINIMAL "workers = 65;\n", "workers", "'workers' must be between 1 and 64");
    expect_error(MINIMAL "workers = -1;\n", "workers", "'workers' must be between 1 and 64");
    expect_error(LISTENERS
                 "pools = (\n"
                 "  { name = \"web\"; servers = (\n"
                 "    { address = \"127.0.0.1:9001\";\n"
                 "      weight = 1001; }\n"
                 "  ); }\n"
                 ");\n",
                 "weight", "'weight' must be between 0 and 1000");
    expect_error(LISTENERS
                 "pools = (\n"
                 "  { name = \"web\";\n"
                 "    keepalive = -1;\n"
                 "    servers = ( { address = \"127.0.0.1:9001\"; } ); }\n"
                 ");\n",
                 "keepalive", "'keepalive' must be between 0 and 100000");
    expect_error(LISTENERS
                 "pools = (\n"
                 "  { name = \"web\";\n"
                 "    keepalive = \"many\";\n"
                 "    servers = ( { address = \"127.0.0.1:9001\"; } ); }\n"
                 ");\n",
                 "keepalive", "'keepalive' must be a number or \"auto\"");
    expect_error(LISTENERS
                 "pools = (\n"
                 "  { name = \"web\";\n"
                 "    keepalive = 1.5;\n"
                 "    servers = ( { address = \"127.0.0.1:9001\"; } ); }\n"
                 ");\n",
                 "keepalive", "'keepalive' must be an integer");
}
END_TEST

static void expect_listener_error(const char *address, const char *what)
{
    char text[512];
    snprintf(text, sizeof(text),
             "workers = 1;\n"
             "listeners = (\n"
             "  { address = \"127.0.0.1:8080\"; },\n"
             "  { backlog = 16;\n"
             "    address = \"%s\"; }\n"
             ");\n" POOL_WEB, address);
    expect_error_line(text, NULL, 5, what);
}

static void expect_server_error(const char *address, const char *what)
{
    char text[512];
    snprintf(text, sizeof(text),
             LISTENERS
             "pools = (\n"
             "  { name = \"web\";\n"
             "    servers = (\n"
             "      { weight = 2;\n"
             "        address = \"%s\"; }\n"
             "    );\n"
             "  }\n"
             ");\n", address);
    expect_error_line(text, NULL, 6, what);
}

START_TEST(test_err_bad_address)
{
    expect_listener_error("127.0.0.1", "bad address \"127.0.0.1\"");
    expect_listener_error("127.0.0.1:0", "bad address \"127.0.0.1:0\"");
    expect_listener_error("127.0.0.1:99999", "bad address \"127.0.0.1:99999\"");
    expect_listener_error("127.0.0.1:", "bad address");
    expect_listener_error("nonsense:80", "bad address \"nonsense:80\"");
    expect_listener_error("::1:80", "must be bracketed");
    expect_listener_error("[::1]80", "bad address");
    expect_listener_error("256.1.1.1:80", "bad address");
    expect_server_error("*:9001", "wildcard");
    expect_server_error("0.0.0.0:9001", "wildcard");
    expect_server_error("[::]:9001", "wildcard");
    expect_server_error(":9001", "wildcard");
    expect_server_error("example.com:80", "bad address");
    expect_server_error("127.0.0.1:65536", "invalid port");
}
END_TEST

START_TEST(test_err_missing_address)
{
    expect_error("listeners = (\n  { backlog = 5; }\n);\n" POOL_WEB, "backlog", "missing required key 'address'");
}
END_TEST

START_TEST(test_err_duplicate_listener)
{
    /* Duplicates are found on the parsed address, not the text. */
    expect_error("listeners = (\n"
                 "  { address = \"127.0.0.1:8080\"; },\n"
                 "  { address = \"localhost:8080\"; }\n"
                 ");\n" POOL_WEB,
                 "localhost:8080", "duplicate listener address 127.0.0.1:8080");
}
END_TEST

START_TEST(test_err_duplicate_pool)
{
    expect_error(LISTENERS
                 "pools = (\n"
                 "  { name = \"web\"; servers = ( { address = \"127.0.0.1:9001\"; } ); },\n"
                 "  { servers = ( { address = \"127.0.0.1:9002\"; } );\n"
                 "    name = \"web\"; }\n"
                 ");\n",
                 "name = \"web\"; }", "duplicate pool name 'web'");
}
END_TEST

START_TEST(test_err_duplicate_server)
{
    expect_error(LISTENERS
                 "pools = (\n"
                 "  { name = \"web\"; servers = (\n"
                 "    { address = \"127.0.0.1:9001\"; },\n"
                 "    { address = \"localhost:9001\"; }\n"
                 "  ); }\n"
                 ");\n",
                 "localhost:9001", "duplicate server 127.0.0.1:9001 in pool 'web'");
    /* The same address in two pools is fine. */
    struct lb_config *cfg;
    char err[512];
    int rc = load_text(LISTENERS
                       "pools = (\n"
                       "  { name = \"a\"; servers = ( { address = \"127.0.0.1:9001\"; } ); },\n"
                       "  { name = \"b\"; servers = ( { address = \"127.0.0.1:9001\"; } ); }\n"
                       ");\n"
                       "routes = ( { pool = \"a\"; } );\n", &cfg, err, sizeof(err));
    ck_assert_msg(rc == 0, "%s", err);
    lb_config_free(cfg);
}
END_TEST

START_TEST(test_err_bad_pool_name)
{
    static const char *const names[] = {
        "web pool", "", "web/1", "w\xc3\xa9", "web!",
        "a123456789012345678901234567890123456789012345678901234567890123", /* 64 */
    };
    for (size_t i = 0; i < LB_ARRAY_SIZE(names); i++) {
        char text[512];
        snprintf(text, sizeof(text),
                 LISTENERS
                 "pools = (\n"
                 "  { servers = ( { address = \"127.0.0.1:9001\"; } );\n"
                 "    name = \"%s\"; }\n"
                 ");\n", names[i]);
        expect_error(text, "name =", "bad pool name");
    }
    /* 63 characters of every allowed class is fine. */
    struct lb_config *cfg;
    char err[512];
    int rc = load_text(LISTENERS
                       "pools = ( { name = \"Az09_-.a1234567890123456789012345678901234567890123456789012345\";\n"
                       "  servers = ( { address = \"127.0.0.1:9001\"; } ); } );\n",
                       &cfg, err, sizeof(err));
    ck_assert_msg(rc == 0, "%s", err);
    lb_config_free(cfg);
}
END_TEST

START_TEST(test_err_unknown_strategy)
{
    expect_error(LISTENERS
                 "pools = (\n"
                 "  { name = \"web\";\n"
                 "    strategy = \"most_favoured\";\n"
                 "    servers = ( { address = \"127.0.0.1:9001\"; } ); }\n"
                 ");\n",
                 "strategy", "unknown strategy \"most_favoured\"");
}
END_TEST

START_TEST(test_err_route_missing_pool)
{
    expect_error(MINIMAL
                 "routes = (\n"
                 "  { host = \"*\"; path_prefix = \"/\";\n"
                 "    pool = \"api\"; }\n"
                 ");\n",
                 "pool = \"api\"", "unknown pool 'api'");
}
END_TEST

START_TEST(test_err_routes_missing)
{
    /* Nothing in the file to point at: the message names the file, line 0. */
    expect_error_line(LISTENERS
                      "pools = (\n"
                      "  { name = \"a\"; servers = ( { address = \"127.0.0.1:9001\"; } ); },\n"
                      "  { name = \"b\"; servers = ( { address = \"127.0.0.1:9002\"; } ); }\n"
                      ");\n",
                      NULL, 0, "missing 'routes'");
}
END_TEST

START_TEST(test_err_bad_duration)
{
    static const char *const bad[] = { "10", "5 s", "1x", "-1s", "", "s", "1.5s", "1S",
                                       "99999999999999999999ms", "18446744073709551615h" };
    for (size_t i = 0; i < LB_ARRAY_SIZE(bad); i++) {
        char text[512];
        snprintf(text, sizeof(text),
                 MINIMAL
                 "timeouts = {\n"
                 "  client_idle = \"1m\";\n"
                 "  connect = \"%s\";\n"
                 "};\n", bad[i]);
        char what[128];
        snprintf(what, sizeof(what), "'connect': invalid duration \"%s\"", bad[i]);
        expect_error(text, "connect", what);
    }
    expect_error("shutdown_timeout = \"10\";\n" MINIMAL, "shutdown_timeout",
                 "invalid duration \"10\"");
}
END_TEST

START_TEST(test_err_defer_accept)
{
    expect_error("listeners = (\n"
                 "  { address = \"127.0.0.1:8080\";\n"
                 "    defer_accept = 1; }\n"
                 ");\n" POOL_WEB, "defer_accept", "'defer_accept' must be true or false");
    expect_error("tcp_migrate_req = \"yes\";\n" MINIMAL, "tcp_migrate_req",
                 "'tcp_migrate_req' must be true or false");
}
END_TEST

#define TLS_LISTENER(extra)                                                   \
    "listeners = (\n"                                                           \
    "  { address = \"127.0.0.1:8443\";\n"                                      \
    "    tls = {\n"                                                              \
    "      certificates = ( { cert = \"/c.pem\"; key = \"/c.key\"; },\n"         \
    "                       { cert = \"/d.pem\";\n"                              \
    "                         key = \"/d.key\"; } );\n"                           \
    extra                                                                       \
    "    };\n"                                                                   \
    "  },\n"                                                                     \
    "  { address = \"127.0.0.1:8080\"; redirect_https = 8443; }\n"              \
    ");\n" POOL_WEB

START_TEST(test_tls_config)
{
    struct lb_config *cfg;
    char err[512];
    const char *text = TLS_LISTENER("");
    ck_assert_msg(load_text(text, &cfg, err, sizeof(err)) == 0, "%s", err);
    ck_assert_uint_eq(cfg->ntls, 1);
    const struct lb_tls_cfg *t = cfg->listeners[0].tls;
    ck_assert_ptr_nonnull(t);
    ck_assert_uint_eq(t->ncerts, 2);
    ck_assert_str_eq(t->certs[1].cert, "/d.pem");
    ck_assert_str_eq(t->certs[1].key, "/d.key");
    /* Where each file was named, for errors found when it is read. */
    char at[128];
    snprintf(at, sizeof(at), "%s:%d", conf_path, line_of(text, "/d.key"));
    ck_assert_str_eq(t->certs[1].key_at, at);
    snprintf(at, sizeof(at), "%s:%d", conf_path, line_of(text, "/c.pem"));
    ck_assert_str_eq(t->certs[0].cert_at, at);
    /* Defaults. */
    ck_assert_int_eq(t->protocols, LB_TLS_12_PLUS);
    ck_assert(t->session_tickets);
    ck_assert_uint_eq(t->ticket_rotation_ms, 3600000);
    ck_assert_uint_eq(t->alpn_len, 9);
    ck_assert_mem_eq(t->alpn, "\x08http/1.1", 9);
    ck_assert_ptr_null(t->hsts);
    ck_assert_ptr_null(t->ciphers);
    ck_assert_ptr_null(cfg->listeners[1].tls);
    ck_assert_uint_eq(cfg->listeners[1].redirect_https, 8443);
    ck_assert_uint_eq(cfg->listeners[0].redirect_https, 0);
    lb_config_free(cfg);

    text = TLS_LISTENER("      protocols = \"TLSv1.3\"; ciphers = \"ECDHE-ECDSA-AES128-GCM-SHA256\";\n"
                        "      alpn = [ \"http/1.1\", \"http/1.0\" ]; session_tickets = false;\n"
                        "      ticket_rotation = \"2s\"; hsts = \"max-age=31536000\";\n");
    ck_assert_msg(load_text(text, &cfg, err, sizeof(err)) == 0, "%s", err);
    t = cfg->listeners[0].tls;
    ck_assert_int_eq(t->protocols, LB_TLS_13);
    ck_assert_str_eq(t->ciphers, "ECDHE-ECDSA-AES128-GCM-SHA256");
    ck_assert_uint_eq(t->alpn_len, 18);
    ck_assert_mem_eq(t->alpn, "\x08http/1.1\x08http/1.0", 18);
    ck_assert(!t->session_tickets);
    ck_assert_uint_eq(t->ticket_rotation_ms, 2000);
    ck_assert_str_eq(t->hsts, "max-age=31536000");
    ck_assert_uint_eq(t->hsts_len, 16);
    ck_assert_int_eq(t->unknown_sni, LB_SNI_DEFAULT);
    lb_config_free(cfg);

    text = TLS_LISTENER("      unknown_sni = \"refuse\";\n");
    ck_assert_msg(load_text(text, &cfg, err, sizeof(err)) == 0, "%s", err);
    ck_assert_int_eq(cfg->listeners[0].tls->unknown_sni, LB_SNI_REFUSE);
    lb_config_free(cfg);

    ck_assert_msg(load_text("listeners = ( { address = \"127.0.0.1:80\"; redirect_https = true; } );\n"
                            POOL_WEB, &cfg, err, sizeof(err)) == 0, "%s", err);
    ck_assert_uint_eq(cfg->listeners[0].redirect_https, 443);
    lb_config_free(cfg);
}
END_TEST

#define TLS_POOL(extra)                                                             \
    LISTENERS "pools = (\n"                                                         \
    "  { name = \"web\";\n"                                                          \
    "    tls = {\n"                                                                  \
    extra                                                                            \
    "    };\n"                                                                        \
    "    servers = ( { address = \"127.0.0.1:9001\"; } ); }\n"                       \
    ");\n"

START_TEST(test_pool_tls_config)
{
    struct lb_config *cfg;
    char err[512];
    const char *text = TLS_POOL("");
    ck_assert_msg(load_text(text, &cfg, err, sizeof(err)) == 0, "%s", err);
    const struct lb_pool_tls_cfg *t = cfg->pools[0].tls;
    ck_assert_ptr_nonnull(t);
    ck_assert(t->verify);
    ck_assert_ptr_null(t->ca_file);
    ck_assert_ptr_null(t->sni);
    ck_assert_ptr_null(t->cert);
    ck_assert_ptr_null(t->ctx);
    char at[128];
    snprintf(at, sizeof(at), "%s:%d", conf_path, line_of(text, "tls = {"));
    ck_assert_str_eq(t->at, at);
    lb_config_free(cfg);

    text = TLS_POOL("      verify = false; ca_file = \"/ca.pem\"; sni = \"backend.internal\";\n"
                    "      cert = \"/c.pem\";\n      key = \"/c.key\";\n");
    ck_assert_msg(load_text(text, &cfg, err, sizeof(err)) == 0, "%s", err);
    t = cfg->pools[0].tls;
    ck_assert(!t->verify);
    ck_assert_str_eq(t->ca_file, "/ca.pem");
    ck_assert_str_eq(t->sni, "backend.internal");
    ck_assert_str_eq(t->cert, "/c.pem");
    ck_assert_str_eq(t->key, "/c.key");
    snprintf(at, sizeof(at), "%s:%d", conf_path, line_of(text, "/c.key"));
    ck_assert_str_eq(t->key_at, at);
    lb_config_free(cfg);

    ck_assert_msg(load_text(MINIMAL, &cfg, err, sizeof(err)) == 0, "%s", err);
    ck_assert_ptr_null(cfg->pools[0].tls);
    lb_config_free(cfg);
}
END_TEST

START_TEST(test_err_pool_tls)
{
    expect_error(TLS_POOL("      verify = 1;\n"), "verify", "true or false");
    expect_error(TLS_POOL("      ca_file = \"\";\n"), "ca_file", "must not be empty");
    expect_error(TLS_POOL("      sni = \"a b\";\n"), "sni", "sni must be a host name");
    expect_error(TLS_POOL("      cert = \"/c.pem\";\n"), "cert", "needs both 'cert' and 'key'");
    expect_error(TLS_POOL("      key = \"/c.key\";\n"), "/c.key", "needs both 'cert' and 'key'");
    expect_error(TLS_POOL("      protocols = \"TLSv1.3\";\n"), "protocols", "unknown key 'protocols' in tls");
    expect_error(LISTENERS "pools = (\n  { name = \"web\"; tls = true;\n"
                 "    servers = ( { address = \"127.0.0.1:9001\"; } ); }\n);\n",
                 "tls = true", "a pool's 'tls' must be a group");
}
END_TEST

START_TEST(test_err_tls)
{
    expect_error(TLS_LISTENER("      unknown_sni = \"drop\";\n"), "unknown_sni",
                 "unknown_sni must be");
    expect_error(TLS_LISTENER("      protocols = \"TLSv1.1\";\n"), "TLSv1.1", "unknown protocols");
    expect_error(TLS_LISTENER("      ticket_rotation = \"500ms\";\n"), "500ms", "ticket_rotation");
    expect_error(TLS_LISTENER("      ticket_rotation = \"8d\";\n"), "8d", "ticket_rotation");
    expect_error(TLS_LISTENER("      alpn = [ \"h2\" ];\n"), "alpn", "alpn");
    expect_error(TLS_LISTENER("      alpn = \"http/1.1\";\n"), "alpn", "must be a list");
    expect_error(TLS_LISTENER("      hsts = \"max-age=1\\n\";\n"), "hsts", "hsts");
    expect_error(TLS_LISTENER("      hsts = \"\";\n"), "hsts", "must not be empty");
    expect_error(TLS_LISTENER("      session_tickets = 1;\n"), "session_tickets", "true or false");
    expect_error(TLS_LISTENER("      ciphers = 3;\n"), "ciphers", "must be a string");
    expect_error(TLS_LISTENER("      ocsp = true;\n"), "ocsp", "unknown key 'ocsp' in tls");
    expect_error("listeners = (\n  { address = \"127.0.0.1:8443\";\n    tls = true; }\n);\n" POOL_WEB,
                 "tls = true", "'tls' must be a group");
    expect_error("listeners = (\n  { address = \"127.0.0.1:8443\";\n    tls = { protocols = \"TLSv1.3\"; }; }\n);\n"
                 POOL_WEB, "tls = {", "missing required list 'certificates'");
    expect_error("listeners = (\n  { address = \"127.0.0.1:8443\";\n    tls = { certificates = ( ); }; }\n);\n"
                 POOL_WEB, "certificates", "'certificates' must not be empty");
    expect_error("listeners = (\n  { address = \"127.0.0.1:8443\";\n"
                 "    tls = { certificates = ( { cert = \"/c.pem\"; } ); }; }\n);\n" POOL_WEB,
                 "cert =", "missing required key 'key'");
    expect_error("listeners = (\n  { address = \"127.0.0.1:8443\";\n"
                 "    tls = { certificates = ( { cert = \"/c.pem\"; key = \"\"; } ); }; }\n);\n" POOL_WEB,
                 "cert =", "'key' must not be empty");
    expect_error("listeners = (\n  { address = \"127.0.0.1:8443\";\n"
                 "    tls = { certificates = ( { cert = \"/c.pem\"; key = \"/c.key\"; } ); };\n"
                 "    redirect_https = true; }\n);\n" POOL_WEB,
                 "redirect_https", "redirect_https on a TLS listener");
    expect_error("listeners = (\n  { address = \"127.0.0.1:80\";\n"
                 "    redirect_https = 70000; }\n);\n" POOL_WEB,
                 "redirect_https", "'redirect_https' must be true, false or a port number");
    expect_error("listeners = (\n  { address = \"127.0.0.1:80\";\n"
                 "    redirect_https = \"yes\"; }\n);\n" POOL_WEB,
                 "redirect_https", "'redirect_https' must be true, false or a port number");
}
END_TEST

/* listeners[].steering: "client_ip" by default, or "kernel". */
START_TEST(test_listener_steering)
{
    struct lb_config *cfg;
    char err[512];
    ck_assert_msg(load_text("listeners = (\n  { address = \"127.0.0.1:80\"; },\n"
                            "  { address = \"127.0.0.1:81\"; steering = \"kernel\"; },\n"
                            "  { address = \"127.0.0.1:82\"; steering = \"client_ip\"; }\n);\n"
                            POOL_WEB, &cfg, err, sizeof(err)) == 0, "%s", err);
    ck_assert_int_eq(cfg->listeners[0].steering, LB_STEERING_CLIENT_IP);
    ck_assert_int_eq(cfg->listeners[1].steering, LB_STEERING_KERNEL);
    ck_assert_int_eq(cfg->listeners[2].steering, LB_STEERING_CLIENT_IP);
    lb_config_free(cfg);
    expect_error("listeners = (\n  { address = \"127.0.0.1:80\";\n"
                 "    steering = \"cookie\"; }\n);\n" POOL_WEB,
                 "cookie", "unknown steering \"cookie\"");
    expect_error("listeners = (\n  { address = \"127.0.0.1:80\";\n"
                 "    steering = 1; }\n);\n" POOL_WEB,
                 "steering", "'steering' must be a string");
}
END_TEST

START_TEST(test_err_empty_lists)
{
    expect_error("workers = 1;\nlisteners = ( );\n" POOL_WEB, "listeners", "'listeners' must not be empty");
    expect_error(LISTENERS "pools = ( );\n", "pools", "'pools' must not be empty");
}
END_TEST

START_TEST(test_err_bad_host)
{
    static const char *const bad[] = { "exa mple.com", "", "*.", "*example.com", "a.*.com",
                                       "example.com:80", "ex_ample.com", "*.*.example.com" };
    for (size_t i = 0; i < LB_ARRAY_SIZE(bad); i++) {
        char text[512];
        snprintf(text, sizeof(text),
                 MINIMAL
                 "routes = (\n"
                 "  { pool = \"web\";\n"
                 "    host = \"%s\"; }\n"
                 ");\n", bad[i]);
        char what[128];
        snprintf(what, sizeof(what), "bad host \"%s\"", bad[i]);
        expect_error(text, "host =", what);
    }
}
END_TEST

START_TEST(test_err_path_prefix)
{
    expect_error(MINIMAL
                 "routes = (\n"
                 "  { pool = \"web\";\n"
                 "    path_prefix = \"api\"; }\n"
                 ");\n",
                 "path_prefix", "path_prefix must start with '/'");
    expect_error(MINIMAL
                 "routes = (\n"
                 "  { pool = \"web\";\n"
                 "    path_prefix = \"\"; }\n"
                 ");\n",
                 "path_prefix", "path_prefix must start with '/'");
}
END_TEST

START_TEST(test_err_log_level)
{
    expect_error(MINIMAL "log_level = \"verbose\";\n", "log_level", "unknown log_level \"verbose\"");
    expect_error(MINIMAL "pid_file = \"\";\n", "pid_file", "'pid_file' must not be empty");
}
END_TEST

START_TEST(test_err_pool_timeouts)
{
    expect_error(LISTENERS
                 "pools = (\n"
                 "  { name = \"web\";\n"
                 "    timeouts = { connect = \"1s\";\n"
                 "      client_header = \"5s\"; };\n"
                 "    servers = ( { address = \"127.0.0.1:9001\"; } ); }\n"
                 ");\n",
                 "client_header", "timeout 'client_header' is global only");
    expect_error(LISTENERS
                 "pools = (\n"
                 "  { name = \"web\";\n"
                 "    timeouts = {\n"
                 "      conect = \"5s\"; };\n"
                 "    servers = ( { address = \"127.0.0.1:9001\"; } ); }\n"
                 ");\n",
                 "conect", "unknown key 'conect' in timeouts");
    expect_error(LISTENERS
                 "pools = (\n"
                 "  { name = \"web\";\n"
                 "    timeouts = {\n"
                 "      deadline = \"5\"; };\n"
                 "    servers = ( { address = \"127.0.0.1:9001\"; } ); }\n"
                 ");\n",
                 "deadline", "invalid duration \"5\"");
}
END_TEST

/* drain_idle is bounded by client_idle and by half of shutdown_timeout, so
 * a draining worker closes its idle connections before it could be killed. */
START_TEST(test_drain_idle_bounds)
{
    static const struct {
        const char *text;
        uint64_t want;
    } cases[] = {
        { "timeouts = { drain_idle = \"20s\"; };\n", 15000 },     /* shutdown 30s / 2 */
        { "timeouts = { drain_idle = \"3s\"; client_idle = \"1s\"; };\n", 1000 },
        { "timeouts = { drain_idle = \"0\"; client_idle = \"10s\"; };\n", 10000 },
        { "timeouts = { drain_idle = \"0\"; client_idle = \"0\"; };\n", 15000 },
        { "shutdown_timeout = \"0\";\ntimeouts = { drain_idle = \"40s\"; };\n", 40000 },
        { "shutdown_timeout = \"4s\";\n", 2000 },
    };
    for (size_t i = 0; i < LB_ARRAY_SIZE(cases); i++) {
        char text[1024];
        snprintf(text, sizeof(text), "%s" MINIMAL, cases[i].text);
        struct lb_config *cfg;
        char err[512];
        ck_assert_msg(load_text(text, &cfg, err, sizeof(err)) == 0, "%s", err);
        ck_assert_uint_eq(lb_worker_drain_idle_ms(cfg), cases[i].want);
        lb_config_free(cfg);
    }
    expect_error(LISTENERS
                 "pools = (\n"
                 "  { name = \"web\";\n"
                 "    timeouts = {\n"
                 "      drain_idle = \"5s\"; };\n"
                 "    servers = ( { address = \"127.0.0.1:9001\"; } ); }\n"
                 ");\n",
                 "drain_idle", "timeout 'drain_idle' is global only");
}
END_TEST

START_TEST(test_err_limits)
{
    expect_error(MINIMAL "limits = {\n  request_line = 32;\n};\n", "request_line",
                 "'request_line' must be between 64 and");
    expect_error(MINIMAL "limits = {\n  header_size = \"1x\";\n};\n", "header_size",
                 "'header_size': invalid size \"1x\"");
    expect_error(MINIMAL "limits = {\n  headers = 0;\n};\n", "headers", "'headers' must be between 1 and 1000");
    expect_error(MINIMAL "limits = {\n  body = -1;\n};\n", "body", "'body' must not be negative");
    expect_error(MINIMAL "limits = {\n  buffer = true;\n};\n", "buffer", "'buffer' must be a size");
    expect_error(MINIMAL "limits = {\n  bodies = 1;\n};\n", "bodies", "unknown key 'bodies' in limits");
    expect_error(MINIMAL "limits = {\n  request_line = \"8k\";\n  header_size = \"4k\";\n};\n",
                 "limits", "request_line must not exceed header_size");
}
END_TEST

START_TEST(test_err_trusted_proxies)
{
    expect_error(MINIMAL "trusted_proxies = \"10.0.0.0/8\";\n", "trusted_proxies",
                 "'trusted_proxies' must be a list");
    /* (libconfig 1.5 dates a scalar list element after its lookahead token:
     * the last element alone on its line is reported on the next line, so
     * the bad entries here are followed by a comma.) */
    expect_error(MINIMAL "trusted_proxies = (\n  \"10.0.0.0/8\",\n  \"10.0.0.0/33\",\n  \"::1\"\n);\n",
                 "/33", "trusted_proxies: expected an address or block");
    expect_error(MINIMAL "trusted_proxies = [\n  \"::1\",\n  \"10.0.0.0/8x\",\n  \"::2\"\n];\n",
                 "/8x", "trusted_proxies: expected an address or block");
    expect_error(MINIMAL "trusted_proxies = (\n  \"::1\",\n  5,\n  \"::2\"\n);\n",
                 "  5", "trusted_proxies: expected an address or block");
}
END_TEST

static struct sockaddr_storage sa_of(const char *ip)
{
    struct sockaddr_storage ss = { 0 };
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, ip, &sin->sin_addr) == 1)
        sin->sin_family = AF_INET;
    else if (inet_pton(AF_INET6, ip, &sin6->sin6_addr) == 1)
        sin6->sin6_family = AF_INET6;
    else
        ck_abort_msg("test bug: bad ip %s", ip);
    return ss;
}

static bool in_block(const char *cidr, const char *ip)
{
    struct lb_cidr c;
    ck_assert_msg(lb_cidr_parse(cidr, &c) == 0, "refused: %s", cidr);
    struct sockaddr_storage ss = sa_of(ip);
    return lb_cidr_match(&c, 1, (const struct sockaddr *)&ss);
}

/* A pool "web" with BREAKER's text as its circuit_breaker or passive_health
 * (KEY), the group starting on line 3. */
static void breaker_conf(char *out, size_t n, const char *key, const char *group)
{
    snprintf(out, n, LISTENERS
             "pools = (\n"
             "  { name = \"web\"; %s = {\n%s};\n"
             "    timeouts = { connect = \"1s\"; backend_response = \"4s\"; };\n"
             "    servers = ( { address = \"127.0.0.1:9001\"; } ); }\n"
             ");\n", key, group);
}

static struct lb_breaker_cfg load_breaker(const char *key, const char *group)
{
    char text[2048], err[512];
    struct lb_config *cfg;
    breaker_conf(text, sizeof(text), key, group);
    ck_assert_msg(load_text(text, &cfg, err, sizeof(err)) == 0, "%s\n%s", err, text);
    struct lb_breaker_cfg b = cfg->pools[0].breaker;
    lb_config_free(cfg);
    return b;
}

START_TEST(test_breaker_config)
{
    /* Off unless configured. */
    struct lb_config *cfg;
    char err[512];
    ck_assert_int_eq(load_text(MINIMAL, &cfg, err, sizeof(err)), 0);
    ck_assert(!cfg->pools[0].breaker.enabled);
    ck_assert(!cfg->pools[0].breaker.on_5xx);
    lb_config_free(cfg);

    /* Defaults: the example. */
    struct lb_breaker_cfg b = load_breaker("circuit_breaker", "");
    ck_assert(b.enabled && b.on_5xx);
    ck_assert_uint_eq(b.failures, 5);
    ck_assert_uint_eq(b.ratio_ppm, 500000);
    ck_assert_uint_eq(b.window_ms, 10000);
    ck_assert_uint_eq(b.min_requests, 20);
    ck_assert_uint_eq(b.open_ms, 5000);
    ck_assert_uint_eq(b.open_max_ms, 300000);
    ck_assert_uint_eq(b.half_open_requests, 1);
    ck_assert_uint_eq(b.max_ejection_percent, 50);
    ck_assert_uint_eq(b.trial_timeout_ms, 5000);        /* connect + backend_response */

    b = load_breaker("circuit_breaker",
                     "failures = 0; failure_ratio = 0.25; window = \"30s\"; min_requests = 7;\n"
                     "on_5xx = false; open = \"1s\"; open_max = \"1s\"; half_open_requests = 3;\n"
                     "max_ejection_percent = 100;\n");
    ck_assert_uint_eq(b.failures, 0);
    ck_assert_uint_eq(b.ratio_ppm, 250000);
    ck_assert_uint_eq(b.window_ms, 30000);
    ck_assert_uint_eq(b.min_requests, 7);
    ck_assert(!b.on_5xx);
    ck_assert_uint_eq(b.open_ms, 1000);
    ck_assert_uint_eq(b.open_max_ms, 1000);
    ck_assert_uint_eq(b.half_open_requests, 3);
    ck_assert_uint_eq(b.max_ejection_percent, 100);
    /* An integer ratio, and ratio off. */
    ck_assert_uint_eq(load_breaker("circuit_breaker", "failure_ratio = 1;\n").ratio_ppm, 1000000);
    ck_assert_uint_eq(load_breaker("circuit_breaker", "failure_ratio = 0;\n").ratio_ppm, 0);

    /* passive_health is a preset: failures in a row, a fixed open interval
     * (cooldown), one trial, no ejection limit. */
    b = load_breaker("passive_health", "failures = 3; cooldown = \"2s\";\n");
    ck_assert(b.enabled && !b.on_5xx);
    ck_assert_uint_eq(b.failures, 3);
    ck_assert_uint_eq(b.ratio_ppm, 0);
    ck_assert_uint_eq(b.open_ms, 2000);
    ck_assert_uint_eq(b.open_max_ms, 2000);
    ck_assert_uint_eq(b.half_open_requests, 1);
    ck_assert_uint_eq(b.max_ejection_percent, 100);
    b = load_breaker("passive_health", "on_5xx = true;\n");
    ck_assert_uint_eq(b.failures, 5);
    ck_assert_uint_eq(b.open_ms, 10000);
    ck_assert(b.on_5xx);
}
END_TEST

static void expect_breaker_error(const char *key, const char *group, const char *at,
                                 const char *what)
{
    char text[2048];
    breaker_conf(text, sizeof(text), key, group);
    if (at != NULL)
        expect_error(text, at, what);
    else
        expect_error_line(text, NULL, 3, what);
}

START_TEST(test_err_breaker)
{
    expect_breaker_error("circuit_breaker", "failure_ratio = 1.5;\n", "failure_ratio",
                         "'failure_ratio' must be between 0 and 1");
    expect_breaker_error("circuit_breaker", "failure_ratio = -0.1;\n", "failure_ratio",
                         "'failure_ratio' must be between 0 and 1");
    expect_breaker_error("circuit_breaker", "failure_ratio = \"half\";\n", "failure_ratio",
                         "'failure_ratio' must be a number");
    expect_breaker_error("circuit_breaker", "max_ejection_percent = 101;\n", "max_ejection",
                         "'max_ejection_percent' must be between 0 and 100");
    expect_breaker_error("circuit_breaker", "half_open_requests = 0;\n", "half_open",
                         "'half_open_requests' must be between 1 and 1000");
    expect_breaker_error("circuit_breaker", "failures = -1;\n", "failures",
                         "'failures' must be between 0 and 1000");
    expect_breaker_error("circuit_breaker", "min_requests = 0;\n", "min_requests",
                         "'min_requests' must be between 1");
    expect_breaker_error("circuit_breaker", "open = \"10m\";\n", "open =",
                         "open (600000ms) must not exceed open_max (300000ms)");
    expect_breaker_error("circuit_breaker", "open = \"10s\";\nopen_max = \"5s\";\n", "open_max",
                         "must not exceed open_max");
    expect_breaker_error("circuit_breaker", "open = \"0\";\n", "open =",
                         "'open' must be more than 0");
    expect_breaker_error("circuit_breaker", "open_max = \"25h\";\n", "open_max",
                         "'open_max' must be more than 0 and at most 86400s");
    expect_breaker_error("circuit_breaker", "window = \"500ms\";\n", "window",
                         "window must be between 1s and 1h");
    expect_breaker_error("circuit_breaker", "on_5xx = 1;\n", "on_5xx", "'on_5xx' must be true or false");
    expect_breaker_error("circuit_breaker", "failures = 0; failure_ratio = 0;\n", NULL,
                         "it would never open");
    expect_breaker_error("circuit_breaker", "cooldown = \"1s\";\n", "cooldown",
                         "unknown key 'cooldown' in circuit_breaker");
    expect_breaker_error("passive_health", "failures = 0;\n", "failures",
                         "'failures' must be between 1 and 1000");
    expect_breaker_error("passive_health", "cooldown = \"0\";\n", "cooldown",
                         "'cooldown' must be more than 0");
    expect_breaker_error("passive_health", "open = \"1s\";\n", "open",
                         "unknown key 'open' in passive_health");
    /* Both: one mechanism, the error names the new keys. */
    expect_error(LISTENERS
                 "pools = (\n"
                 "  { name = \"web\"; circuit_breaker = { failures = 3; };\n"
                 "    passive_health = { failures = 3; };\n"
                 "    servers = ( { address = \"127.0.0.1:9001\"; } ); }\n"
                 ");\n", "passive_health",
                 "'passive_health' and 'circuit_breaker' are one mechanism: keep circuit_breaker");
    expect_error(LISTENERS
                 "pools = (\n"
                 "  { name = \"web\"; circuit_breaker = 5;\n"
                 "    servers = ( { address = \"127.0.0.1:9001\"; } ); }\n"
                 ");\n", "circuit_breaker", "'circuit_breaker' must be a group");
}
END_TEST

/* servers[].max_requests, pools[].queue, pools[].slow_start. */
START_TEST(test_limits_config)
{
    struct lb_config *cfg;
    char err[512];
    /* Defaults: no limit; a queue of 1000 for 5 s once there is one; no ramp. */
    ck_assert_int_eq(load_text(MINIMAL, &cfg, err, sizeof(err)), 0);
    ck_assert_uint_eq(cfg->pools[0].servers[0].max_requests, 0);
    ck_assert_uint_eq(cfg->pools[0].queue.size, 1000);
    ck_assert_uint_eq(cfg->pools[0].queue.timeout_ms, 5000);
    ck_assert_uint_eq(cfg->pools[0].slow_start_ms, 0);
    lb_config_free(cfg);

    static const char text[] =
        LISTENERS
        "pools = (\n"
        "  { name = \"web\"; slow_start = \"30s\"; queue = { size = 0; timeout = \"250ms\"; };\n"
        "    servers = ( { address = \"127.0.0.1:9001\"; max_requests = 1000000; },\n"
        "                { address = \"127.0.0.1:9002\"; max_requests = 0; } ); },\n"
        "  { name = \"api\"; queue = { timeout = \"1h\"; }; slow_start = \"0\";\n"
        "    servers = ( { address = \"127.0.0.1:9003\"; max_requests = 2; } ); }\n"
        ");\n"
        "routes = ( { pool = \"web\"; } );\n";
    ck_assert_msg(load_text(text, &cfg, err, sizeof(err)) == 0, "%s", err);
    ck_assert_uint_eq(cfg->pools[0].slow_start_ms, 30000);
    ck_assert_uint_eq(cfg->pools[0].queue.size, 0);
    ck_assert_uint_eq(cfg->pools[0].queue.timeout_ms, 250);
    ck_assert_uint_eq(cfg->pools[0].servers[0].max_requests, 1000000);
    ck_assert_uint_eq(cfg->pools[0].servers[1].max_requests, 0);
    ck_assert_uint_eq(cfg->pools[1].queue.size, 1000);
    ck_assert_uint_eq(cfg->pools[1].queue.timeout_ms, 3600000);
    ck_assert_uint_eq(cfg->pools[1].slow_start_ms, 0);
    ck_assert_uint_eq(cfg->pools[1].servers[0].max_requests, 2);
    lb_config_free(cfg);
}
END_TEST

/* A pool "web" whose line 4 holds KEYS (pool keys) and line 5 its server
 * with SERVER_KEYS. */
static void limits_conf(char *out, size_t n, const char *keys, const char *server_keys)
{
    snprintf(out, n, LISTENERS
             "pools = (\n"
             "  { name = \"web\";\n"
             "    %s\n"
             "    servers = ( { address = \"127.0.0.1:9001\"; %s } ); }\n"
             ");\n", keys, server_keys);
}

static void expect_limits_error(const char *keys, const char *server_keys, int line,
                                const char *what)
{
    char text[1024];
    limits_conf(text, sizeof(text), keys, server_keys);
    expect_error_line(text, NULL, line, what);
}

START_TEST(test_err_limits_config)
{
    expect_limits_error("", "max_requests = -1;", 5, "'max_requests' must be between 0 and 1000000");
    expect_limits_error("", "max_requests = 1000001;", 5,
                        "'max_requests' must be between 0 and 1000000");
    expect_limits_error("", "max_requests = \"10\";", 5, "'max_requests' must be an integer");
    expect_limits_error("queue = { size = -1; };", "", 4, "'size' must be between 0 and 1000000");
    expect_limits_error("queue = { size = 1000001; };", "", 4,
                        "'size' must be between 0 and 1000000");
    expect_limits_error("queue = { timeout = \"0\"; };", "", 4,
                        "'timeout' must be more than 0 and at most 3600s");
    expect_limits_error("queue = { timeout = \"2h\"; };", "", 4,
                        "'timeout' must be more than 0 and at most 3600s");
    expect_limits_error("queue = { timeout = \"soon\"; };", "", 4, "invalid duration \"soon\"");
    expect_limits_error("queue = { depth = 3; };", "", 4, "unknown key 'depth' in queue");
    expect_limits_error("queue = 100;", "", 4, "'queue' must be a group");
    expect_limits_error("slow_start = \"2h\";", "", 4, "'slow_start' must be at most 3600s");
    expect_limits_error("slow_start = 30;", "", 4, "'slow_start' must be a string");
    expect_limits_error("slow_start = \"-1s\";", "", 4, "invalid duration");
}
END_TEST

static struct lb_retry_cfg load_retries(const char *group)
{
    char text[2048], err[512];
    struct lb_config *cfg;
    breaker_conf(text, sizeof(text), "retries", group);
    ck_assert_msg(load_text(text, &cfg, err, sizeof(err)) == 0, "%s\n%s", err, text);
    struct lb_retry_cfg r = cfg->pools[0].retries;
    lb_config_free(cfg);
    return r;
}

static bool retries_status(const struct lb_retry_cfg *r, unsigned status)
{
    unsigned bit = status - 500;
    return (r->on_status[bit / 64] >> (bit % 64)) & 1;
}

START_TEST(test_retries_config)
{
    /* Without the group: one try, nothing kept. */
    struct lb_config *cfg;
    char err[512];
    ck_assert_int_eq(load_text(MINIMAL, &cfg, err, sizeof(err)), 0);
    ck_assert(!cfg->pools[0].retries.enabled);
    ck_assert_uint_eq(cfg->pools[0].retries.attempts, 1);
    ck_assert_uint_eq(cfg->pools[0].retries.per_try_timeout_ms, 0);
    lb_config_free(cfg);

    /* An empty group: still attempts = 1, the other values. */
    struct lb_retry_cfg r = load_retries("");
    ck_assert(!r.enabled);
    ck_assert_uint_eq(r.attempts, 1);
    ck_assert_uint_eq(r.on, LB_RETRY_ON_CONNECT | LB_RETRY_ON_RESET | LB_RETRY_ON_TIMEOUT);
    ck_assert(retries_status(&r, 502) && retries_status(&r, 503) && retries_status(&r, 504));
    ck_assert(!retries_status(&r, 500) && !retries_status(&r, 501) && !retries_status(&r, 505));
    ck_assert_uint_eq(r.backoff_ms, 25);
    ck_assert_uint_eq(r.backoff_max_ms, 250);
    ck_assert_uint_eq(r.budget_percent, 20);
    ck_assert_uint_eq(r.min_retries, 3);
    ck_assert(!r.methods_all);
    ck_assert_uint_eq(r.buffer, 65536);
    ck_assert_uint_eq(r.head_timeout_ms, 4000);          /* the pool's backend_response */

    r = load_retries("attempts = 10; on = [ \"connect\", \"500\", \"599\" ];\n"
                     "backoff = \"0\"; backoff_max = \"1m\"; per_try_timeout = \"2s\";\n"
                     "budget = 100; min_retries = 0; methods = \"all\"; buffer = \"1m\";\n");
    ck_assert(r.enabled);
    ck_assert_uint_eq(r.attempts, 10);
    ck_assert_uint_eq(r.on, LB_RETRY_ON_CONNECT);
    ck_assert(retries_status(&r, 500) && retries_status(&r, 599) && !retries_status(&r, 503));
    ck_assert_uint_eq(r.backoff_ms, 0);
    ck_assert_uint_eq(r.backoff_max_ms, 60000);
    ck_assert_uint_eq(r.per_try_timeout_ms, 2000);
    ck_assert_uint_eq(r.head_timeout_ms, 2000);          /* shorter than backend_response */
    ck_assert_uint_eq(r.budget_percent, 100);
    ck_assert_uint_eq(r.min_retries, 0);
    ck_assert(r.methods_all);
    ck_assert_uint_eq(r.buffer, 1 << 20);

    /* "5xx": every 5xx; a list in parentheses; an empty one retries nothing. */
    r = load_retries("attempts = 2; on = ( \"5xx\", \"reset\", \"timeout\" );\n");
    ck_assert_uint_eq(r.on, LB_RETRY_ON_RESET | LB_RETRY_ON_TIMEOUT);
    for (unsigned st = 500; st <= 599; st++)
        ck_assert(retries_status(&r, st));
    ck_assert_uint_eq(load_retries("per_try_timeout = \"9s\";\n").head_timeout_ms, 4000);
    r = load_retries("attempts = 2; on = [ ];\n");
    ck_assert(r.enabled && r.on == 0 && r.on_status[0] == 0 && r.on_status[1] == 0);
}
END_TEST

START_TEST(test_err_retries)
{
    expect_breaker_error("retries", "attempts = 0;\n", "attempts",
                         "'attempts' must be between 1 and 10");
    expect_breaker_error("retries", "attempts = 11;\n", "attempts",
                         "'attempts' must be between 1 and 10");
    expect_breaker_error("retries", "budget = 101;\n", "budget",
                         "'budget' must be between 0 and 100");
    expect_breaker_error("retries", "min_retries = -1;\n", "min_retries",
                         "'min_retries' must be between 0 and 100000");
    expect_breaker_error("retries", "on = [ \"connect\",\n  \"teapot\" ];\n", "teapot",
                         "retries: unknown 'on' entry \"teapot\"");
    expect_breaker_error("retries", "on = [ \"418\" ];\n", "418", "unknown 'on' entry \"418\"");
    expect_breaker_error("retries", "on = [ \"5000\" ];\n", "5000", "unknown 'on' entry");
    expect_breaker_error("retries", "on = [ 503 ];\n", "on =", "unknown 'on' entry");
    expect_breaker_error("retries", "on = \"503\";\n", "on =", "retries: 'on' must be a list");
    expect_breaker_error("retries", "methods = \"safe\";\n", "methods",
                         "methods must be \"idempotent\" or \"all\"");
    expect_breaker_error("retries", "backoff = \"1s\"; backoff_max = \"500ms\";\n",
                         "backoff = \"1s\"",
                         "backoff (1000ms) must not exceed backoff_max (500ms)");
    expect_breaker_error("retries", "backoff_max = \"2m\";\n", "backoff_max",
                         "backoff_max must be at most 60s");
    expect_breaker_error("retries", "per_try_timeout = \"soon\";\n", "per_try_timeout",
                         "invalid duration");
    expect_breaker_error("retries", "buffer = \"128m\";\n", "buffer",
                         "'buffer' must be between 0 and 67108864 bytes");
    expect_breaker_error("retries", "tries = 3;\n", "tries = 3", "unknown key 'tries' in retries");
    expect_error(LISTENERS
                 "pools = (\n"
                 "  { name = \"web\"; retries = 3;\n"
                 "    servers = ( { address = \"127.0.0.1:9001\"; } ); }\n"
                 ");\n", "retries", "'retries' must be a group");
}
END_TEST

/* pools[].sticky: defaults, every key, the Set-Cookie attributes built. */
START_TEST(test_sticky_config)
{
    struct lb_config *cfg;
    char text[2048], err[512];
    ck_assert_int_eq(load_text(MINIMAL, &cfg, err, sizeof(err)), 0);
    ck_assert(!cfg->pools[0].sticky.enabled);
    lb_config_free(cfg);

    breaker_conf(text, sizeof(text), "sticky", "");
    ck_assert_msg(load_text(text, &cfg, err, sizeof(err)) == 0, "%s", err);
    const struct lb_sticky_cfg *st = &cfg->pools[0].sticky;
    ck_assert(st->enabled && st->strip);
    ck_assert_str_eq(st->cookie, "lbd_srv");
    ck_assert_uint_eq(st->cookie_len, 7);
    ck_assert_ptr_null(st->secret);
    ck_assert_str_eq(st->attrs, "; Path=/; HttpOnly; SameSite=Lax\r\n");
    ck_assert_uint_eq(st->attrs_len, strlen(st->attrs));
    lb_config_free(cfg);

    breaker_conf(text, sizeof(text), "sticky",
                 "cookie = \"SRV\"; max_age = \"2h\"; secure = true; httponly = false;\n"
                 "samesite = \"strict\"; path = \"/app\"; domain = \"example.com\";\n"
                 "secret = \"0123456789abcdef!\"; strip = false;\n");
    ck_assert_msg(load_text(text, &cfg, err, sizeof(err)) == 0, "%s", err);
    st = &cfg->pools[0].sticky;
    ck_assert(st->enabled && !st->strip);
    ck_assert_str_eq(st->cookie, "SRV");
    ck_assert_str_eq(st->secret, "0123456789abcdef!");
    ck_assert_uint_eq(st->secret_len, 17);
    ck_assert_str_eq(st->attrs,
                     "; Path=/app; Domain=example.com; Max-Age=7200; Secure; SameSite=Strict\r\n");
    lb_config_free(cfg);

    /* secret_file: its bytes, one trailing newline dropped. */
    char path[] = "/tmp/lbd-unit-secret-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, "abcdefghijklmnopqrstuvwxyz\r\n", 28), 28);
    close(fd);
    char group[256];
    snprintf(group, sizeof(group), "secret_file = \"%s\"; samesite = \"\";\n", path);
    breaker_conf(text, sizeof(text), "sticky", group);
    int rc = load_text(text, &cfg, err, sizeof(err));
    unlink(path);
    ck_assert_msg(rc == 0, "%s", err);
    st = &cfg->pools[0].sticky;
    ck_assert_uint_eq(st->secret_len, 26);
    ck_assert_int_eq(memcmp(st->secret, "abcdefghijklmnopqrstuvwxyz", 26), 0);
    ck_assert_str_eq(st->attrs, "; Path=/; HttpOnly\r\n");
    lb_config_free(cfg);
}
END_TEST

START_TEST(test_err_sticky)
{
    expect_breaker_error("sticky", "cookie = \"a b\";\n", "cookie", "sticky: bad cookie name \"a b\"");
    expect_breaker_error("sticky", "cookie = \"\";\n", "cookie", "sticky: bad cookie name");
    expect_breaker_error("sticky", "cookie = \"x=y\";\n", "cookie", "sticky: bad cookie name");
    expect_breaker_error("sticky", "max_age = \"500ms\";\n", "max_age",
                         "max_age must be \"0\" (a session cookie) or 1s to 9600h");
    expect_breaker_error("sticky", "max_age = \"9601h\";\n", "max_age", "max_age must be");
    expect_breaker_error("sticky", "max_age = \"soon\";\n", "max_age", "invalid duration");
    expect_breaker_error("sticky", "secure = \"yes\";\n", "secure", "'secure' must be true or false");
    expect_breaker_error("sticky", "samesite = \"Loose\";\n", "samesite",
                         "samesite must be \"Strict\", \"Lax\", \"None\" or \"\"");
    expect_breaker_error("sticky", "samesite = \"None\";\n", "samesite",
                         "samesite = \"None\" needs secure = true");
    expect_breaker_error("sticky", "path = \"app\";\n", "path", "sticky: bad path \"app\"");
    expect_breaker_error("sticky", "path = \"/a;b\";\n", "path", "sticky: bad path");
    expect_breaker_error("sticky", "domain = \"ex ample.com\";\n", "domain", "sticky: bad domain");
    expect_breaker_error("sticky", "domain = \"a;b\";\n", "domain", "sticky: bad domain");
    expect_breaker_error("sticky", "secret = \"short\";\n", "secret",
                         "sticky: the secret must be 16 to 4096 bytes");
    expect_breaker_error("sticky", "secret = \"0123456789abcdef\";\nsecret_file = \"/x\";\n",
                         "secret_file", "'secret' and 'secret_file' are exclusive");
    expect_breaker_error("sticky", "secret_file = \"/nonexistent/lbd-secret\";\n", "secret_file",
                         "secret_file \"/nonexistent/lbd-secret\": No such file or directory");
    expect_breaker_error("sticky", "strip = 0;\n", "strip", "'strip' must be true or false");
    expect_breaker_error("sticky", "name = \"x\";\n", "name = \"x\"", "unknown key 'name' in sticky");
    expect_error(LISTENERS
                 "pools = (\n"
                 "  { name = \"web\"; sticky = true;\n"
                 "    servers = ( { address = \"127.0.0.1:9001\"; } ); }\n"
                 ");\n", "sticky", "'sticky' must be a group");

    char path[] = "/tmp/lbd-unit-secret-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, "tooshort\n", 9), 9);
    close(fd);
    char group[256];
    snprintf(group, sizeof(group), "secret_file = \"%s\";\n", path);
    expect_breaker_error("sticky", group, "secret_file", "the secret must be 16 to 4096 bytes");
    unlink(path);
}
END_TEST

START_TEST(test_cidr)
{
    ck_assert(in_block("10.0.0.0/8", "10.1.2.3"));
    ck_assert(in_block("10.0.0.0/8", "10.255.255.255"));
    ck_assert(!in_block("10.0.0.0/8", "11.0.0.1"));
    ck_assert(!in_block("10.0.0.0/8", "9.255.255.255"));
    ck_assert(in_block("10.0.0.0/8", "::ffff:10.9.9.9"));     /* v4-mapped */
    ck_assert(!in_block("10.0.0.0/8", "::1"));
    ck_assert(in_block("10.128.0.0/9", "10.200.0.1"));
    ck_assert(!in_block("10.128.0.0/9", "10.127.0.1"));
    ck_assert(in_block("192.168.1.7", "192.168.1.7"));
    ck_assert(!in_block("192.168.1.7", "192.168.1.8"));
    ck_assert(in_block("0.0.0.0/0", "203.0.113.9"));
    ck_assert(!in_block("0.0.0.0/0", "2001:db8::1"));
    ck_assert(in_block("::1", "::1"));
    ck_assert(!in_block("::1", "::2"));
    ck_assert(in_block("2001:db8::/32", "2001:db8:ffff::1"));
    ck_assert(!in_block("2001:db8::/32", "2001:db9::1"));
    ck_assert(in_block("::/0", "2001:db8::1"));
    ck_assert(in_block("::/0", "127.0.0.1"));
    ck_assert(in_block("10.1.2.3/8", "10.7.7.7"));          /* host bits ignored */

    struct lb_cidr blocks[2];
    ck_assert_int_eq(lb_cidr_parse("10.0.0.0/8", &blocks[0]), 0);
    ck_assert_int_eq(lb_cidr_parse("::1", &blocks[1]), 0);
    struct sockaddr_storage a = sa_of("::1"), b = sa_of("127.0.0.1");
    ck_assert(lb_cidr_match(blocks, 2, (const struct sockaddr *)&a));
    ck_assert(!lb_cidr_match(blocks, 2, (const struct sockaddr *)&b));
    ck_assert(!lb_cidr_match(blocks, 0, (const struct sockaddr *)&a));
    struct sockaddr_storage unix_sa = { .ss_family = AF_UNIX };
    ck_assert(!lb_cidr_match(blocks, 2, (const struct sockaddr *)&unix_sa));

    static const char *const bad[] = {
        "", "/8", "10.0.0.0/", "10.0.0.0/33", "::1/129", "10.0.0.0/8x", "10.0.0/8",
        "nonsense", "10.0.0.0/-1", "[::1]", "localhost",
    };
    for (size_t i = 0; i < LB_ARRAY_SIZE(bad); i++) {
        struct lb_cidr c;
        ck_assert_msg(lb_cidr_parse(bad[i], &c) == -1, "accepted: \"%s\"", bad[i]);
    }
}
END_TEST

/* ---- rate limits --------------------------------------------------------- */

#define RL_POOL_ROUTE(limits) \
    LISTENERS POOL_WEB "routes = ( { pool = \"web\"; rate_limits = " limits "; } );\n"

START_TEST(test_rate_limits)
{
    static const char text[] =
        "rate_limits = (\n"
        "  { name = \"per_ip\"; key = \"client_ip\"; rate = \"10r/s\"; burst = 20; },\n"
        "  { name = \"api_key\"; key = \"header:X-Api-Key\"; rate = \"600r/m\"; burst = 5;\n"
        "    algorithm = \"leaky_bucket\"; delay = 2; status = 503; headers = true; },\n"
        "  { name = \"all\"; key = \"global\"; rate = \"3r/s\"; dry_run = true; scope = \"local\"; },\n"
        "  { name = \"by_route\"; key = \"route\"; rate = \"1r/m\"; }\n"
        ");\n"
        "rate_limit_table_size = 5000;\n"
        "redis = { address = \"127.0.0.1:6379\"; timeout = \"20ms\"; };\n"
        "listeners = ( { address = \"127.0.0.1:8080\"; max_connections_per_ip = 100; },\n"
        "              { address = \"127.0.0.1:8081\"; } );\n"
        POOL_WEB
        "routes = ( { path_prefix = \"/api/\"; pool = \"web\"; rate_limits = [ \"per_ip\", \"api_key\" ]; },\n"
        "           { pool = \"web\"; rate_limits = ( \"all\" ); } );\n";
    struct lb_config *cfg;
    char err[512];
    int rc = load_text(text, &cfg, err, sizeof(err));
    ck_assert_msg(rc == 0, "load failed: %s", err);
    ck_assert_uint_eq(cfg->nrate_limits, 4);
    const struct lb_ratelimit_cfg *rl = cfg->rate_limits;
    ck_assert_str_eq(rl[0].name, "per_ip");
    ck_assert_int_eq(rl[0].key, LB_RL_KEY_CLIENT_IP);
    ck_assert_uint_eq(rl[0].rate, 10);
    ck_assert(!rl[0].per_minute);
    ck_assert_uint_eq(rl[0].interval_ns, 100000000);
    ck_assert_uint_eq(rl[0].burst, 20);
    ck_assert_int_eq(rl[0].algorithm, LB_RL_TOKEN_BUCKET);
    ck_assert_int_eq(rl[0].status, 429);
    ck_assert(!rl[0].dry_run && !rl[0].headers);
    ck_assert_str_eq(rl[0].rate_text, "10r/s");
    ck_assert_int_eq(rl[1].key, LB_RL_KEY_HEADER);
    ck_assert_str_eq(rl[1].header, "X-Api-Key");
    ck_assert(rl[1].per_minute);
    ck_assert_uint_eq(rl[1].interval_ns, 100000000);       /* 600 a minute: 10 a second */
    ck_assert_int_eq(rl[1].algorithm, LB_RL_LEAKY_BUCKET);
    ck_assert_uint_eq(rl[1].delay, 2);
    ck_assert_int_eq(rl[1].status, 503);
    ck_assert(rl[1].headers);
    ck_assert_int_eq(rl[2].key, LB_RL_KEY_GLOBAL);
    ck_assert_uint_eq(rl[2].interval_ns, 333333333);
    ck_assert_uint_eq(rl[2].burst, 0);
    ck_assert(rl[2].dry_run);
    ck_assert_int_eq(rl[2].scope, LB_RL_SCOPE_LOCAL);
    ck_assert_int_eq(rl[3].key, LB_RL_KEY_ROUTE);
    ck_assert_uint_eq(rl[3].interval_ns, 60000000000ULL);
    ck_assert_uint_eq(cfg->rate_limit_table_size, 5000);
    ck_assert(cfg->redis);
    ck_assert_str_eq(cfg->redis_address, "127.0.0.1:6379");
    ck_assert_uint_eq(cfg->redis_timeout_ms, 20);
    ck_assert_int_eq(rl[0].scope, LB_RL_SCOPE_LOCAL);
    ck_assert_uint_eq(cfg->listeners[0].max_connections_per_ip, 100);
    ck_assert_uint_eq(cfg->listeners[1].max_connections_per_ip, 0);
    ck_assert_uint_eq(cfg->routes[0].nrate_limits, 2);
    ck_assert_uint_eq(cfg->routes[0].rate_limits[0], 0);
    ck_assert_uint_eq(cfg->routes[0].rate_limits[1], 1);
    ck_assert_uint_eq(cfg->routes[1].nrate_limits, 1);
    ck_assert_uint_eq(cfg->routes[1].rate_limits[0], 2);
    lb_config_free(cfg);

    /* A fleet limit needs redis, and has it here. */
    rc = load_text("redis = { address = \"127.0.0.1:6379\"; };\n"
                   "rate_limits = ( { name = \"f\"; rate = \"1r/s\"; scope = \"fleet\"; } );\n"
                   RL_POOL_ROUTE("[ \"f\" ]"), &cfg, err, sizeof(err));
    ck_assert_msg(rc == 0, "load failed: %s", err);
    ck_assert_int_eq(cfg->rate_limits[0].scope, LB_RL_SCOPE_FLEET);
    ck_assert_uint_eq(cfg->redis_timeout_ms, 50);
    lb_config_free(cfg);

    /* Defaults: none configured, 100,000 keys a table, no redis. */
    rc = load_text(MINIMAL, &cfg, err, sizeof(err));
    ck_assert_msg(rc == 0, "load failed: %s", err);
    ck_assert_uint_eq(cfg->nrate_limits, 0);
    ck_assert_uint_eq(cfg->rate_limit_table_size, 100000);
    ck_assert(!cfg->redis);
    ck_assert_uint_eq(cfg->routes[0].nrate_limits, 0);
    lb_config_free(cfg);
}
END_TEST

START_TEST(test_rate_parse)
{
    static const struct { const char *s; uint64_t rate; bool per_minute; } ok[] = {
        { "1r/s", 1, false }, { "10r/s", 10, false }, { "600r/m", 600, true },
        { "1000000r/s", 1000000, false }, { "60000000r/m", 60000000, true }, { "1r/m", 1, true },
    };
    for (size_t i = 0; i < LB_ARRAY_SIZE(ok); i++) {
        uint64_t rate = 0;
        bool pm = !ok[i].per_minute;
        const char *why = NULL;
        ck_assert_msg(lb_rate_parse(ok[i].s, &rate, &pm, &why) == 0, "refused \"%s\"", ok[i].s);
        ck_assert_uint_eq(rate, ok[i].rate);
        ck_assert_int_eq(pm, ok[i].per_minute);
    }
    static const char *const bad[] = {
        "10/s", "0r/s", "0r/m", "10r/h", "10r/d", "10 r/s", "r/s", "", "-1r/s", "10r/", "10r/ss",
        "1000001r/s", "60000001r/m", "99999999999999999999999r/s", "10rs", "10R/S", " 10r/s",
    };
    for (size_t i = 0; i < LB_ARRAY_SIZE(bad); i++) {
        uint64_t rate;
        bool pm;
        const char *why = NULL;
        ck_assert_msg(lb_rate_parse(bad[i], &rate, &pm, &why) == -1, "accepted \"%s\"", bad[i]);
        ck_assert_ptr_nonnull(why);
    }
}
END_TEST

START_TEST(test_err_rate_limits)
{
#define RL(body) "rate_limits = (\n  { " body " }\n);\n" MINIMAL
    expect_error(RL("name = \"a\"; rate = \"10/s\";"), "10/s", "bad rate \"10/s\"");
    expect_error(RL("name = \"a\"; rate = \"0r/s\";"), "0r/s", "at least 1r/s");
    expect_error(RL("name = \"a\"; rate = \"5r/h\";"), "5r/h", "r/s or r/m");
    expect_error(RL("name = \"a\"; rate = 10;"), "rate = 10", "'rate' must be a string");
    expect_error(RL("name = \"a\"; rate = \"1r/s\"; burst = -1;"), "burst", "'burst' must be between");
    expect_error(RL("name = \"a\"; rate = \"1r/s\"; colour = 1;"), "colour", "unknown key 'colour'");
    expect_error(RL("name = \"a b\"; rate = \"1r/s\";"), "a b", "bad rate limit name");
    expect_error(RL("name = \"a\"; key = \"cookie:x\"; rate = \"1r/s\";"), "cookie:x", "bad key");
    expect_error(RL("name = \"a\"; key = \"header:\"; rate = \"1r/s\";"), "header:", "bad key");
    expect_error(RL("name = \"a\"; rate = \"1r/s\"; algorithm = \"fixed_window\";"), "fixed_window",
                 "unknown algorithm");
    expect_error(RL("name = \"a\"; rate = \"1r/s\"; burst = 5; delay = 2;"), "delay",
                 "\"leaky_bucket\" only");
    expect_error(RL("name = \"a\"; rate = \"1r/s\"; burst = 5; algorithm = \"leaky_bucket\"; delay = 6;"),
                 "delay", "must not exceed burst");
    expect_error(RL("name = \"a\"; rate = \"1r/s\"; status = 200;"), "status", "between 400 and 599");
    expect_error(RL("name = \"a\"; rate = \"1r/s\"; scope = \"fleet\";"), "fleet",
                 "needs a redis group");
    /* One fleet limit per route: one round trip to redis per request. */
    expect_error("redis = { address = \"127.0.0.1:6379\"; };\n"
                 "rate_limits = ( { name = \"f1\"; rate = \"1r/s\"; scope = \"fleet\"; },\n"
                 "  { name = \"f2\"; rate = \"1r/s\"; scope = \"fleet\"; } );\n"
                 RL_POOL_ROUTE("[ \"f1\",\n \"f2\" ]"), "\"f2\" ]", "one fleet rate limit at most");
    expect_error(RL("name = \"a\"; rate = \"1r/s\"; scope = \"world\";"), "world", "unknown scope");
    expect_error(RL("name = \"a\"; burst = 1;"), "burst = 1", "missing required key 'rate'");
    expect_error("rate_limits = (\n  { name = \"a\"; rate = \"1r/s\"; },\n"
                 "  { name = \"a\"; rate = \"2r/s\"; }\n);\n" MINIMAL,
                 "2r/s", "duplicate rate limit name 'a'");
    expect_error("rate_limits = { name = \"a\"; };\n" MINIMAL, "rate_limits", "must be a list");
    expect_error("rate_limit_table_size = 10;\n" MINIMAL, "table_size", "between 64 and");
    expect_error("rate_limit_table_size = 16777216;\n"
                 "rate_limits = (\n  { name = \"a\"; rate = \"1r/s\"; },\n"
                 "  { name = \"b\"; rate = \"1r/s\"; },\n  { name = \"c\"; rate = \"1r/s\"; },\n"
                 "  { name = \"d\"; rate = \"1r/s\"; },\n  { name = \"e\"; rate = \"1r/s\"; },\n"
                 "  { name = \"f\"; rate = \"1r/s\"; },\n  { name = \"g\"; rate = \"1r/s\"; },\n"
                 "  { name = \"h\"; rate = \"1r/s\"; },\n  { name = \"i\"; rate = \"1r/s\"; }\n);\n"
                 MINIMAL, "table_size", "of shared memory");
    expect_error("redis = { address = \"*:6379\"; };\n" MINIMAL, "*:6379", "bad address");
    expect_error("redis = { address = \"127.0.0.1:6379\"; timeout = \"0\"; };\n" MINIMAL,
                 "timeout", "must not be 0");
    expect_error("redis = { address = \"127.0.0.1:6379\"; db = 2; };\n" MINIMAL, "db", "unknown key 'db'");
#undef RL
    /* Routes name limits that exist, once each. */
    static const char lim[] = "rate_limits = ( { name = \"per_ip\"; rate = \"1r/s\"; } );\n";
    char text[1024];
    snprintf(text, sizeof(text), "%s" RL_POOL_ROUTE("[ \"per_ip\", \"nope\" ]"), lim);
    expect_error(text, "nope", "unknown rate limit 'nope'");
    snprintf(text, sizeof(text), "%s" RL_POOL_ROUTE("[ \"per_ip\", \"per_ip\" ]"), lim);
    expect_error(text, "rate_limits = [", "named twice");
    snprintf(text, sizeof(text), "%s" RL_POOL_ROUTE("\"per_ip\""), lim);
    expect_error(text, "rate_limits = \"", "must be a list of names");
    snprintf(text, sizeof(text), "%s" RL_POOL_ROUTE("[ 1 ]"), lim);
    expect_error(text, "[ 1 ]", "must be a list of names");
    expect_error(RL_POOL_ROUTE("[ \"per_ip\" ]"), "rate_limits = [", "unknown rate limit 'per_ip'");
    expect_error("listeners = ( { address = \"127.0.0.1:8080\"; max_connections_per_ip = -1; } );\n"
                 POOL_WEB, "max_connections_per_ip", "between 0 and");
}
END_TEST

/* ---- admin token and faults (admin helper's block) ---- */

START_TEST(test_admin_token_and_faults)
{
    struct lb_config *cfg;
    char err[512];
    int rc = load_text(MINIMAL "admin = { address = \"127.0.0.1:8404\"; token = \"abc-123\"; };\n"
                       "faults = ( { name = \"slow\"; pool = \"web\"; percent = 10; delay = \"200ms\"; },\n"
                       "           { name = \"err\"; pool = \"web\"; percent = 0.5; abort = 503; },\n"
                       "           { name = \"drop\"; pool = \"web\"; percent = 0; reset = true; } );\n"
                       "routes = ( { host = \"*\"; pool = \"web\"; faults_from_headers = true; } );\n",
                       &cfg, err, sizeof(err));
    ck_assert_msg(rc == 0, "load failed: %s", err);
    ck_assert_str_eq(cfg->admin_token, "abc-123");
    ck_assert_uint_eq(cfg->nfaults, 3);
    ck_assert_int_eq(cfg->faults[0].type, LB_FAULT_DELAY);
    ck_assert_uint_eq(cfg->faults[0].delay_ms, 200);
    ck_assert_uint_eq(cfg->faults[0].ppm, 100000);
    ck_assert_int_eq(cfg->faults[1].type, LB_FAULT_ABORT);
    ck_assert_int_eq(cfg->faults[1].abort_status, 503);
    ck_assert_uint_eq(cfg->faults[1].ppm, 5000);
    ck_assert_int_eq(cfg->faults[2].type, LB_FAULT_RESET);
    ck_assert_uint_eq(cfg->pools[0].nfaults, 3);
    ck_assert_uint_eq(cfg->pools[0].faults[2], 2);
    ck_assert(cfg->routes[0].faults_from_headers);
    ck_assert(cfg->routes[0].faults);
    lb_config_free(cfg);
    rc = load_text(MINIMAL, &cfg, err, sizeof(err));
    ck_assert_msg(rc == 0, "load failed: %s", err);
    ck_assert_ptr_null(cfg->admin_token);
    ck_assert(!cfg->routes[0].faults);
    lb_config_free(cfg);
}
END_TEST

#define ACME_GROUP(extra)                                                      \
    "acme = {\n"                                                               \
    "  directory = \"https://acme.test/dir\";\n"                               \
    "  storage = \"/var/lib/lbd/acme\";\n"                                     \
    extra                                                                      \
    "};\n"

#define ACME_LISTENERS(tls)                                                    \
    "listeners = (\n"                                                          \
    "  { address = \"127.0.0.1:8443\";\n"                                      \
    "    tls = {\n"                                                            \
    tls                                                                        \
    "    };\n"                                                                 \
    "  },\n"                                                                   \
    "  { address = \"127.0.0.1:8080\"; redirect_https = 8443; }\n"            \
    ");\n" POOL_WEB

START_TEST(test_acme_config)
{
    struct lb_config *cfg;
    char err[512];
    /* Only acme names: no configured certificate needed. */
    const char *text = ACME_GROUP("") ACME_LISTENERS("      acme = [ \"WWW.Example.com\",\n"
                                                     "               \"api.example.com\" ];\n");
    ck_assert_msg(load_text(text, &cfg, err, sizeof(err)) == 0, "%s", err);
    ck_assert_ptr_nonnull(cfg->acme);
    ck_assert_str_eq(cfg->acme->directory, "https://acme.test/dir");
    ck_assert_str_eq(cfg->acme->storage, "/var/lib/lbd/acme");
    ck_assert_ptr_null(cfg->acme->email);
    ck_assert_ptr_null(cfg->acme->ca_file);
    ck_assert_int_eq(cfg->acme->challenge, LB_ACME_HTTP01);
    ck_assert_uint_eq(cfg->acme->renew_before_ms, 30ull * 86400 * 1000);
    const struct lb_tls_cfg *t = cfg->listeners[0].tls;
    ck_assert_uint_eq(t->nacme, 2);
    ck_assert_str_eq(t->acme[0], "www.example.com");
    ck_assert_uint_eq(t->ncerts, 2);
    ck_assert_str_eq(t->certs[0].cert, "/var/lib/lbd/acme/www.example.com.pem");
    ck_assert_str_eq(t->certs[0].key, "/var/lib/lbd/acme/www.example.com.pem");
    ck_assert_str_eq(t->certs[1].acme_name, "api.example.com");
    char at[128];
    snprintf(at, sizeof(at), "%s:%d", conf_path, line_of(text, "api.example.com"));
    ck_assert_str_eq(t->certs[1].cert_at, at);
    lb_config_free(cfg);

    /* Configured certificates first, then the acme names; every key. */
    text = ACME_GROUP("  email = \"ops@example.com\";\n  ca_file = \"/dev/null\";\n"
                      "  challenge = \"tls-alpn-01\";\n  renew_before = \"75s\";\n")
        "listeners = (\n  { address = \"127.0.0.1:8443\";\n"
        "    tls = { certificates = ( { cert = \"/c.pem\"; key = \"/c.key\"; } );\n"
        "            acme = [ \"a.example.com\" ]; }; }\n);\n" POOL_WEB;
    ck_assert_msg(load_text(text, &cfg, err, sizeof(err)) == 0, "%s", err);
    ck_assert_str_eq(cfg->acme->email, "ops@example.com");
    ck_assert_str_eq(cfg->acme->ca_file, "/dev/null");
    ck_assert_int_eq(cfg->acme->challenge, LB_ACME_TLSALPN01);
    ck_assert_uint_eq(cfg->acme->renew_before_ms, 75000);
    t = cfg->listeners[0].tls;
    ck_assert_uint_eq(t->ncerts, 2);
    ck_assert_ptr_null(t->certs[0].acme_name);
    ck_assert_str_eq(t->certs[1].acme_name, "a.example.com");
    lb_config_free(cfg);

    /* ca_file = "": the system's trust store. */
    text = ACME_GROUP("  ca_file = \"\";\n  renew_before = \"12h\";\n") MINIMAL;
    ck_assert_msg(load_text(text, &cfg, err, sizeof(err)) == 0, "%s", err);
    ck_assert_ptr_null(cfg->acme->ca_file);
    ck_assert_uint_eq(cfg->acme->renew_before_ms, 12ull * 3600 * 1000);
    lb_config_free(cfg);
}
END_TEST

START_TEST(test_err_admin_token_and_faults)
{
    expect_error(MINIMAL "admin = {\n  address = \"127.0.0.1:8404\";\n  token = \"\";\n};\n",
                 "token", "admin token is empty");
    expect_error(MINIMAL "admin = {\n  address = \"127.0.0.1:8404\";\n  token = \"a b\";\n};\n",
                 "token", "admin token has a space");
    expect_error(MINIMAL "admin = {\n  address = \"127.0.0.1:8404\";\n  token = \"a\";\n"
                 "  token_file = \"/x\";\n};\n", "token_file", "not both");
    expect_error(MINIMAL "admin = {\n  address = \"127.0.0.1:8404\";\n"
                 "  token_file = \"/nonexistent/lbd.token\";\n};\n", "token_file",
                 "admin token_file /nonexistent/lbd.token: No such file");
#define F(body) MINIMAL "faults = (\n  { " body " }\n);\n"
    expect_error(F("name = \"a\"; pool = \"web\"; percent = 10;"), "name = \"a\"", "exactly one of");
    expect_error(F("name = \"a\"; pool = \"web\"; percent = 10; delay = \"1s\"; abort = 503;"),
                 "name = \"a\"", "exactly one of");
    expect_error(F("name = \"a\"; pool = \"nope\"; percent = 10; abort = 503;"), "pool = \"nope\"",
                 "unknown pool 'nope'");
    expect_error(F("name = \"a\"; pool = \"web\"; percent = 101; abort = 503;"), "percent",
                 "percent must be a number from 0 to 100");
    expect_error(F("name = \"a\"; pool = \"web\"; percent = \"5\"; abort = 503;"), "percent",
                 "percent must be a number");
    expect_error(F("name = \"a\"; pool = \"web\"; abort = 503;"), "name = \"a\"", "missing 'percent'");
    expect_error(F("name = \"a\"; pool = \"web\"; percent = 1; abort = 600;"), "abort",
                 "'abort' must be between 200 and 599");
    expect_error(F("name = \"a\"; pool = \"web\"; percent = 1; delay = \"0\";"), "delay",
                 "delay must be from 1ms to 1h");
    expect_error(F("name = \"a\"; pool = \"web\"; percent = 1; reset = false;"), "reset",
                 "reset = false means no fault");
    expect_error(F("name = \"headers\"; pool = \"web\"; percent = 1; reset = true;"), "name = \"headers\"",
                 "reserved");
    expect_error(F("name = \"a/b\"; pool = \"web\"; percent = 1; reset = true;"), "name = \"a/b\"",
                 "fault name must be");
    expect_error(F("name = \"a\"; pool = \"web\"; percent = 1; reset = true; color = 1;"),
                 "color", "unknown key 'color' in fault");
    expect_error(MINIMAL "faults = (\n  { name = \"a\"; pool = \"web\"; percent = 1; reset = true; },\n"
                 "  { name = \"a\"; pool = \"web\"; percent = 1; reset = true; }\n);\n",
                 "name = \"a\"; pool = \"web\"; percent = 1; reset = true; }\n);",
                 "duplicate fault 'a'");
    /* A pool's faults share one draw: more than 100 % in all cannot be honoured. */
    expect_error(MINIMAL "faults = (\n  { name = \"a\"; pool = \"web\"; percent = 60; reset = true; },\n"
                 "  { name = \"b\"; pool = \"web\"; percent = 40.5; abort = 503; }\n);\n",
                 "name = \"b\"", "pool 'web': its faults add up to 100.5 %, more than 100");
    expect_error(MINIMAL "routes = (\n  { host = \"*\"; pool = \"web\"; faults_from_headers = 1; }\n);\n",
                 "faults_from_headers", "faults_from_headers");
#undef F
}
END_TEST

START_TEST(test_err_acme)
{
    expect_error(ACME_GROUP("  challenge = \"dns-01\";\n") MINIMAL, "dns-01",
                 "unknown acme challenge");
    expect_error(ACME_GROUP("  renew_before = \"30 days\";\n") MINIMAL, "30 days",
                 "renew_before");
    expect_error(ACME_GROUP("  renew_before = \"0\";\n") MINIMAL, "renew_before", "1s or more");
    expect_error(ACME_GROUP("  email = \"ops\";\n") MINIMAL, "email", "not an address");
    expect_error(ACME_GROUP("  ca_file = \"/nonexistent/ca.pem\";\n") MINIMAL, "ca_file",
                 "cannot read /nonexistent/ca.pem");
    expect_error(ACME_GROUP("  provider = \"x\";\n") MINIMAL, "provider", "unknown key 'provider' in acme");
    expect_error("acme = {\n  directory = \"http://acme.test/dir\";\n  storage = \"/s\";\n};\n"
                 MINIMAL, "directory", "https:// URL");
    expect_error("acme = {\n  directory = \"https://acme.test/dir\";\n  storage = \"s\";\n};\n"
                 MINIMAL, "storage", "absolute path");
    expect_error("acme = {\n  directory = \"https://acme.test/dir\";\n};\n" MINIMAL,
                 "acme = {", "missing required key 'storage'");
    expect_error("acme = true;\n" MINIMAL, "acme = true", "'acme' must be a group");
    /* Names. */
    expect_error(ACME_LISTENERS("      acme = [ \"www.example.com\" ];\n"), "acme = [",
                 "needs a top-level acme group");
    expect_error(ACME_GROUP("") ACME_LISTENERS("      acme = [ \"*.example.com\" ];\n"),
                 "*.example.com", "wildcard");
    expect_error(ACME_GROUP("") ACME_LISTENERS("      acme = [ \"a..example.com\" ];\n"),
                 "a..example.com", "not a DNS name");
    expect_error(ACME_GROUP("") ACME_LISTENERS("      acme = [ \"-a.example.com\" ];\n"),
                 "-a.example.com", "not a DNS name");
    expect_error(ACME_GROUP("") ACME_LISTENERS("      acme = [ \"a.example.com/x\" ];\n"),
                 "a.example.com/x", "not a DNS name");
    expect_error(ACME_GROUP("") ACME_LISTENERS("      acme = [ \"a.example.com\",\n"
                                               "               \"A.example.com\" ];\n"),
                 "A.example.com", "named twice");
    expect_error(ACME_GROUP("") ACME_LISTENERS("      acme = [ ];\n"), "acme = [ ]",
                 "must not be empty");
    expect_error(ACME_GROUP("") ACME_LISTENERS("      acme = \"a.example.com\";\n"), "acme = \"a.",
                 "must be a list");
    expect_error(ACME_GROUP("") ACME_LISTENERS("      protocols = \"TLSv1.3\";\n"), "tls = {",
                 "missing required list 'certificates'");
    /* HTTP-01 is asked on port 80: a plain listener must exist. */
    expect_error(ACME_GROUP("  challenge = \"http-01\";\n")
                 "listeners = (\n  { address = \"127.0.0.1:8443\";\n"
                 "    tls = { acme = [ \"a.example.com\" ]; }; }\n);\n" POOL_WEB,
                 "http-01", "needs a plain listener");
}
END_TEST

Suite *config_suite(void)
{
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("valid");
    tcase_add_test(tc, test_full_config);
    tcase_add_test(tc, test_defaults);
    tcase_add_test(tc, test_workers_auto);
    tcase_add_test(tc, test_keepalive_auto_or_fixed);
    tcase_add_test(tc, test_max_connections);
    tcase_add_test(tc, test_tls_config);
    tcase_add_test(tc, test_acme_config);
    tcase_add_test(tc, test_durations);
    tcase_add_test(tc, test_example_config);
    suite_add_tcase(s, tc);

    tc = tcase_create("errors");
    tcase_add_test(tc, test_missing_file);
    tcase_add_test(tc, test_err_syntax);
    tcase_add_test(tc, test_err_unknown_top_key);
    tcase_add_test(tc, test_err_unknown_server_key);
    tcase_add_test(tc, test_err_unknown_other_keys);
    tcase_add_test(tc, test_err_wrong_types);
    tcase_add_test(tc, test_err_workers_range);
    tcase_add_test(tc, test_err_bad_address);
    tcase_add_test(tc, test_err_missing_address);
    tcase_add_test(tc, test_err_duplicate_listener);
    tcase_add_test(tc, test_err_duplicate_pool);
    tcase_add_test(tc, test_err_duplicate_server);
    tcase_add_test(tc, test_err_bad_pool_name);
    tcase_add_test(tc, test_err_unknown_strategy);
    tcase_add_test(tc, test_err_route_missing_pool);
    tcase_add_test(tc, test_err_routes_missing);
    tcase_add_test(tc, test_err_bad_duration);
    tcase_add_test(tc, test_err_empty_lists);
    tcase_add_test(tc, test_listener_steering);
    tcase_add_test(tc, test_err_defer_accept);
    tcase_add_test(tc, test_err_bad_host);
    tcase_add_test(tc, test_err_path_prefix);
    tcase_add_test(tc, test_err_log_level);
    tcase_add_test(tc, test_err_pool_timeouts);
    tcase_add_test(tc, test_err_limits);
    tcase_add_test(tc, test_drain_idle_bounds);
    tcase_add_test(tc, test_err_max_connections);
    tcase_add_test(tc, test_err_trusted_proxies);
    tcase_add_test(tc, test_breaker_config);
    tcase_add_test(tc, test_err_breaker);
    tcase_add_test(tc, test_limits_config);
    tcase_add_test(tc, test_err_limits_config);
    tcase_add_test(tc, test_retries_config);
    tcase_add_test(tc, test_err_retries);
    tcase_add_test(tc, test_sticky_config);
    tcase_add_test(tc, test_err_sticky);
    tcase_add_test(tc, test_err_tls);
    tcase_add_test(tc, test_pool_tls_config);
    tcase_add_test(tc, test_err_pool_tls);
    tcase_add_test(tc, test_err_acme);
    suite_add_tcase(s, tc);

    tc = tcase_create("rate limits");
    tcase_add_test(tc, test_rate_limits);
    tcase_add_test(tc, test_rate_parse);
    tcase_add_test(tc, test_err_rate_limits);
    suite_add_tcase(s, tc);

    tc = tcase_create("cidr");
    tcase_add_test(tc, test_cidr);
    tcase_add_test(tc, test_admin_token_and_faults);
    tcase_add_test(tc, test_err_admin_token_and_faults);
    suite_add_tcase(s, tc);
    return s;
}
