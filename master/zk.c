#include "master/zk.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <zookeeper/zookeeper.h>

#include "master/discovery.h"
#include "master/etcd.h"

/* What the library's threads ask of the loop (bits of lb_zk.pending). */
#define LB_ZK_RELIST        1u
#define LB_ZK_EXPIRED       2u
#define LB_ZK_LOST          4u
#define LB_ZK_BATCH         8u
#define LB_ZK_ERROR         16u

/* One listing: the children and their data as the completions bring them. */
struct lb_zk_batch {
    struct lb_zk *owner;
    uint64_t gen;
    int rc;                             /* the first error, ZOK if none */
    size_t n, left;
    char **names;
    char **values;                      /* NULL: gone meanwhile */
    size_t *lens;
};

struct lb_zk {
    struct event_base *base;
    char *hosts, *path;
    unsigned session_ms;
    size_t max;
    const struct lb_zk_ops *ops;
    void *arg;
    zhandle_t *zh;
    int pipe[2];
    struct event *wake;
    pthread_mutex_t lock;               /* guards what follows */
    unsigned pending;
    int error_rc;
    uint64_t gen;                       /* of the listing under way */
    struct lb_zk_batch *ready;          /* a complete listing for the loop */
    bool listing;                       /* a listing is in flight (loop side) */
    bool relist_again;
};

static FILE *lb_zk_devnull;

static void lb_zk_batch_free(struct lb_zk_batch *b)
{
    if (b == NULL)
        return;
    for (size_t i = 0; i < b->n; i++) {
        free(b->names[i]);
        free(b->values[i]);
    }
    free(b->names);
    free(b->values);
    free(b->lens);
    free(b);
}

/* From any thread: note BITS and wake the loop. */
static void lb_zk_post(struct lb_zk *z, unsigned bits)
{
    pthread_mutex_lock(&z->lock);
    z->pending |= bits;
    pthread_mutex_unlock(&z->lock);
    char c = 1;
    ssize_t r = write(z->pipe[1], &c, 1);
    (void)r;    /* full: a wake-up is pending anyway */
}

static void lb_zk_watcher(zhandle_t *zh, int type, int state, const char *path, void *ctx)
{
    (void)zh;
    (void)path;
    struct lb_zk *z = ctx;
    if (type == ZOO_SESSION_EVENT) {
        if (state == ZOO_CONNECTED_STATE)
            lb_zk_post(z, LB_ZK_RELIST);
        else if (state == ZOO_EXPIRED_SESSION_STATE)
            lb_zk_post(z, LB_ZK_EXPIRED);
        else if (state == ZOO_CONNECTING_STATE)
            lb_zk_post(z, LB_ZK_LOST);
        return;
    }
    /* A child added or removed, a server's data changed or deleted. */
    lb_zk_post(z, LB_ZK_RELIST);
}

static void lb_zk_batch_done(struct lb_zk_batch *b)
{
    struct lb_zk *z = b->owner;
    pthread_mutex_lock(&z->lock);
    if (b->gen != z->gen) {
        pthread_mutex_unlock(&z->lock);
        lb_zk_batch_free(b);
        return;
    }
    lb_zk_batch_free(z->ready);
    z->ready = b;
    pthread_mutex_unlock(&z->lock);
    lb_zk_post(z, LB_ZK_BATCH);
}

struct lb_zk_item {
    struct lb_zk_batch *batch;
    size_t i;
};

/* Child I of B read (RC, its VALUE of LEN bytes); the last one hands the
 * batch on. */
static void lb_zk_item_done(struct lb_zk_batch *b, size_t i, int rc, const char *value, int len)
{
    struct lb_zk *z = b->owner;
    pthread_mutex_lock(&z->lock);
    if (rc == ZOK && value != NULL && len >= 0) {
        b->values[i] = malloc((size_t)len + 1);
        if (b->values[i] != NULL) {
            memcpy(b->values[i], value, (size_t)len);
            b->values[i][len] = '\0';
            b->lens[i] = (size_t)len;
        }
    } else if (rc != ZOK && rc != ZNONODE && b->rc == ZOK) {
        b->rc = rc;     /* ZNONODE: deleted meanwhile; its watch lists again */
    }
    bool last = --b->left == 0;
    pthread_mutex_unlock(&z->lock);
    if (last)
        lb_zk_batch_done(b);
}

static void lb_zk_data_done(int rc, const char *value, int len, const struct Stat *st,
                            const void *data)
{
    (void)st;
    struct lb_zk_item *it = (struct lb_zk_item *)data;
    struct lb_zk_batch *b = it->batch;
    size_t i = it->i;
    free(it);
    lb_zk_item_done(b, i, rc, value, len);
}

static void lb_zk_children_done(int rc, const struct String_vector *v, const void *data)
{
    struct lb_zk_batch *b = (struct lb_zk_batch *)data;
    struct lb_zk *z = b->owner;
    if (rc != ZOK) {
        pthread_mutex_lock(&z->lock);
        bool current = b->gen == z->gen;
        if (current)
            z->error_rc = rc;
        pthread_mutex_unlock(&z->lock);
        lb_zk_batch_free(b);
        if (current)
            lb_zk_post(z, LB_ZK_ERROR);
        return;
    }
    size_t n = v != NULL ? (size_t)v->count : 0;
    b->names = calloc(n ? n : 1, sizeof(*b->names));
    b->values = calloc(n ? n : 1, sizeof(*b->values));
    b->lens = calloc(n ? n : 1, sizeof(*b->lens));
    if (b->names == NULL || b->values == NULL || b->lens == NULL) {
        b->rc = ZSYSTEMERROR;
        lb_zk_batch_done(b);
        return;
    }
    b->n = n;
    for (size_t i = 0; i < n; i++)
        b->names[i] = strdup(v->data[i]);
    if (n == 0) {
        lb_zk_batch_done(b);
        return;
    }
    /* Counted before any is asked: completions may come at once. */
    b->left = n;
    for (size_t i = 0; i < n; i++) {
        char full[1024];
        struct lb_zk_item *it = malloc(sizeof(*it));
        int arc = ZSYSTEMERROR;
        if (it != NULL && b->names[i] != NULL) {
            it->batch = b;
            it->i = i;
            snprintf(full, sizeof(full), "%s/%s", z->path, b->names[i]);
            arc = zoo_awget(z->zh, full, lb_zk_watcher, z, lb_zk_data_done, it);
        }
        if (arc != ZOK) {
            free(it);
            lb_zk_item_done(b, i, arc, NULL, -1);
        }
    }
}

/* Loop: list the children (their completions do the rest). */
static void lb_zk_list(struct lb_zk *z)
{
    struct lb_zk_batch *b = calloc(1, sizeof(*b));
    if (b == NULL) {
        z->ops->failed(z->arg, "out of memory");
        return;
    }
    b->owner = z;
    b->rc = ZOK;
    pthread_mutex_lock(&z->lock);
    b->gen = ++z->gen;
    pthread_mutex_unlock(&z->lock);
    int rc = zoo_awget_children(z->zh, z->path, lb_zk_watcher, z, lb_zk_children_done, b);
    if (rc != ZOK) {
        lb_zk_batch_free(b);
        char why[160];
        snprintf(why, sizeof(why), "listing %s: %s", z->path, zerror(rc));
        z->ops->failed(z->arg, why);
    }
}

static int lb_zk_connect(struct lb_zk *z)
{
    z->zh = zookeeper_init(z->hosts, lb_zk_watcher, (int)z->session_ms, NULL, z, 0);
    return z->zh != NULL ? 0 : -1;
}

/* Loop: a complete listing. */
static void lb_zk_apply(struct lb_zk *z, struct lb_zk_batch *b)
{
    if (b->rc != ZOK) {
        char why[160];
        snprintf(why, sizeof(why), "reading %s's children: %s", z->path, zerror(b->rc));
        z->ops->failed(z->arg, why);
        return;
    }
    struct lb_runtime_server *v = calloc(z->max ? z->max : 1, sizeof(*v));
    if (v == NULL) {
        z->ops->failed(z->arg, "out of memory");
        return;
    }
    size_t n = 0;
    for (size_t i = 0; i < b->n; i++) {
        const char *why = NULL;
        char entry[512];
        snprintf(entry, sizeof(entry), "%s/%s", z->path, b->names[i] ? b->names[i] : "?");
        if (b->values[i] == NULL)
            continue;   /* deleted between the listing and its read */
        struct lb_runtime_server s;
        if (lb_etcd_value(b->values[i], b->lens[i], &s, &why) < 0) {
            z->ops->skipped(z->arg, entry, why);
            continue;
        }
        if ((why = lb_discovery_add(v, &n, z->max, &s)) != NULL)
            z->ops->skipped(z->arg, entry, why);
    }
    z->ops->servers(z->arg, v, n);
    free(v);
}

static void lb_zk_wake(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct lb_zk *z = arg;
    char buf[64];
    while (read(fd, buf, sizeof(buf)) > 0)
        ;
    pthread_mutex_lock(&z->lock);
    unsigned bits = z->pending;
    z->pending = 0;
    struct lb_zk_batch *b = z->ready;
    z->ready = NULL;
    int err = z->error_rc;
    pthread_mutex_unlock(&z->lock);
    if (bits & LB_ZK_EXPIRED) {
        /* The old session's watches died with it: a new session, and
         * its first CONNECTED lists (and watches) again. */
        z->ops->info(z->arg, "session expired: a new session, watches set again");
        zookeeper_close(z->zh);
        z->zh = NULL;
        lb_zk_batch_free(b);
        if (lb_zk_connect(z) < 0)
            z->ops->failed(z->arg, "zookeeper_init failed");
        return;
    }
    if (b != NULL)
        lb_zk_apply(z, b);
    lb_zk_batch_free(b);
    if (bits & LB_ZK_ERROR) {
        char why[160];
        snprintf(why, sizeof(why), "listing %s: %s", z->path, zerror(err));
        z->ops->failed(z->arg, why);
    }
    if ((bits & LB_ZK_LOST) && !(bits & LB_ZK_RELIST))
        z->ops->failed(z->arg, "connection lost");
    if ((bits & LB_ZK_RELIST) && z->zh != NULL)
        lb_zk_list(z);
}

void lb_zk_relist(struct lb_zk *z)
{
    if (z->zh == NULL) {
        if (lb_zk_connect(z) < 0)
            z->ops->failed(z->arg, "zookeeper_init failed");
        return;
    }
    lb_zk_list(z);
}

struct lb_zk *lb_zk_start(struct event_base *base, const char *hosts, const char *path,
                          unsigned session_ms, size_t max, const struct lb_zk_ops *ops, void *arg)
{
    struct lb_zk *z = calloc(1, sizeof(*z));
    if (z == NULL)
        return NULL;
    z->pipe[0] = z->pipe[1] = -1;
    pthread_mutex_init(&z->lock, NULL);
    z->base = base;
    z->hosts = strdup(hosts);
    z->path = strdup(path);
    z->session_ms = session_ms;
    z->max = max;
    z->ops = ops;
    z->arg = arg;
    if (z->hosts == NULL || z->path == NULL || pipe2(z->pipe, O_NONBLOCK | O_CLOEXEC) < 0)
        goto fail;
    z->wake = event_new(base, z->pipe[0], EV_READ | EV_PERSIST, lb_zk_wake, z);
    if (z->wake == NULL || event_add(z->wake, NULL) < 0)
        goto fail;
    /* The library's own log lines (every refused connect) would flood
     * lbd's log: ours say what matters, once per outage. LBD_ZK_DEBUG in
     * the environment lets them through, at INFO, to stderr. */
    if (lb_zk_devnull == NULL)
        lb_zk_devnull = fopen("/dev/null", "we");
    if (lb_zk_devnull != NULL && getenv("LBD_ZK_DEBUG") == NULL)
        zoo_set_log_stream(lb_zk_devnull);
    zoo_set_debug_level(getenv("LBD_ZK_DEBUG") ? ZOO_LOG_LEVEL_INFO : ZOO_LOG_LEVEL_ERROR);
    if (lb_zk_connect(z) < 0)
        ops->failed(arg, "zookeeper_init failed (bad hosts?)");
    return z;
fail:
    lb_zk_stop(z);
    return NULL;
}

void lb_zk_stop(struct lb_zk *z)
{
    if (z == NULL)
        return;
    if (z->zh != NULL)
        zookeeper_close(z->zh);     /* joins its threads: no callback after this */
    if (z->wake != NULL)
        event_free(z->wake);
    if (z->pipe[0] >= 0)
        close(z->pipe[0]);
    if (z->pipe[1] >= 0)
        close(z->pipe[1]);
    lb_zk_batch_free(z->ready);
    pthread_mutex_destroy(&z->lock);
    free(z->hosts);
    free(z->path);
    free(z);
}
