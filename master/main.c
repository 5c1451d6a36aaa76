/* lbd: command line. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "master/master.h"
#include "master/proctitle.h"
#include "master/snapshot.h"
#include "master/upgrade.h"
#include "shared/config.h"
#include "shared/instance.h"

#include "shared/version.h"
#define LB_DEFAULT_CONFIG "/etc/lbd/lbd.conf"

static void lb_usage(FILE *out)
{
    fprintf(out,
            "usage: lbd [-c FILE] [-w N] [-p PIDFILE] [-d] [-t] [-s] [-S N]\n"
            "  -c FILE   configuration file (default " LB_DEFAULT_CONFIG ")\n"
            "  -w N      number of workers (overrides 'workers')\n"
            "  -p FILE   write the master's pid to FILE\n"
            "  -d        run in the background (default: foreground, for systemd)\n"
            "  -t        check the configuration and exit (0 valid, 1 not)\n"
            "  -s        print a JSON snapshot of the running instance's counters\n"
            "  -S N      set the running instance to N workers (until its next start)\n"
            "  -v        print the version\n"
            "signals to the master: TERM/QUIT graceful stop, INT fast stop,\n"
            "HUP reload, USR1 reopen logs, USR2 upgrade to the binary now at lbd's path,\n"
            "TTIN one worker more, TTOU one less\n");
}

/* lbd -S N: the running master of PATH scales (through the socket -s uses). */
static int lb_scale_run(const char *config_path, unsigned n)
{
    char *path = realpath(config_path, NULL);
    if (path == NULL) {
        fprintf(stderr, "lbd: %s: %s\n", config_path, strerror(errno));
        return 1;
    }
    char reply[256];
    int rc = lb_instance_scale_request(path, n, reply, sizeof(reply));
    if (rc < 0) {
        fprintf(stderr, "lbd: no running lbd for %s (%s)\n", path, strerror(errno));
        free(path);
        return 1;
    }
    free(path);
    fprintf(strncmp(reply, "ok", 2) == 0 ? stdout : stderr, "lbd: %s", reply);
    return strncmp(reply, "ok", 2) == 0 ? 0 : 1;
}

static int lb_check_config(const char *path)
{
    char err[512];
    struct lb_config *cfg = NULL;
    if (lb_master_config_load(path, &cfg, err, sizeof(err)) < 0) {
        fprintf(stderr, "lbd: %s\n", err);
        fprintf(stderr, "lbd: configuration file %s test failed\n", path);
        return 1;
    }
    fprintf(stderr, "lbd: configuration file %s test is successful\n", cfg->path);
    lb_config_free(cfg);
    return 0;
}

int main(int argc, char **argv)
{
    struct lb_master_options opt = { .config_path = LB_DEFAULT_CONFIG };
    bool test = false, snapshot = false;
    unsigned scale = 0;
    int c;
    while ((c = getopt(argc, argv, "c:w:p:dtsS:vh")) != -1) {
        switch (c) {
        case 'c': opt.config_path = optarg; break;
        case 'p': opt.pid_file = optarg; break;
        case 'd': opt.daemonize = true; break;
        case 't': test = true; break;
        case 's': snapshot = true; break;
        case 'S':
        case 'w': {
            char *end;
            long n = strtol(optarg, &end, 10);
            if (*end != '\0' || n < 1 || n > LB_MAX_WORKERS) {
                fprintf(stderr, "lbd: -%c takes a number from 1 to %d\n", c, LB_MAX_WORKERS);
                return 1;
            }
            if (c == 'S')
                scale = (unsigned)n;
            else
                opt.workers = (unsigned)n;
            break;
        }
        case 'v': printf("lbd %s\n", lb_version); return 0;
        case 'h': lb_usage(stdout); return 0;
        default: lb_usage(stderr); return 1;
        }
    }
    if (optind != argc) {
        lb_usage(stderr);
        return 1;
    }
    if (test)
        return lb_check_config(opt.config_path);
    if (snapshot)
        return lb_snapshot_run(opt.config_path, stdout);
    lb_upgrade_take_env();
    if (scale != 0)
        return lb_scale_run(opt.config_path, scale);
    /* Process titles overwrite argv: keep our own copies of what we use. */
    char *config_path = strdup(opt.config_path);
    char *pid_file = opt.pid_file ? strdup(opt.pid_file) : NULL;
    if (config_path == NULL || (opt.pid_file != NULL && pid_file == NULL)) {
        fprintf(stderr, "lbd: out of memory\n");
        return 1;
    }
    opt.config_path = config_path;
    opt.pid_file = pid_file;
    lb_proctitle_init(argc, argv);
    int rc = lb_master_run(&opt);
    free(config_path);
    free(pid_file);
    return rc;
}
