/* lbtop: a live view of a running lbd, read from its shared-memory segment.
 *
 *   lbtop [-c FILE] [-d SECONDS] [-b] [-n FRAMES]
 *
 * It finds the instance as `lbd -s` does (the master hands over its memfd
 * through the abstract socket named after the configuration's path), maps
 * the segment read-only and from then on only reads it: no lock, no
 * request to any lbd process per refresh. When the master is gone (stop,
 * restart) it lets the segment go and looks for the instance again at
 * every refresh; a reload keeps the segment, an upgrade hands it over.
 *
 * Interactive (ncurses): three views (servers by pool, workers, rate
 * limits); keys q, Tab, 1-3, s, j/k or arrows, p. Batch (-b): N frames of
 * plain text with every view, like `top -b`.
 */
#include <curses.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "lbtop/sample.h"
#include "shared/instance.h"
#include "shared/shm.h"
#include "shared/util.h"
#include "shared/version.h"

#define LB_TOP_DEFAULT_CONFIG "/etc/lbd/lbd.conf"
#define LB_TOP_LINE 200

enum lb_top_view { LB_VIEW_SERVERS, LB_VIEW_WORKERS, LB_VIEW_LIMITS, LB_VIEWS };

static const char *const lb_top_view_names[LB_VIEWS] = { "servers", "workers", "rate limits" };

/* Sort columns of each view; the first is the natural order. */
static const char *const lb_top_server_sorts[] = { "address", "req/s", "err/s", "in-flight",
                                                   "p99" };
static const char *const lb_top_worker_sorts[] = { "id", "req/s", "connections" };
static const char *const lb_top_limit_sorts[] = { "name", "limited/s", "allowed/s" };
static const unsigned lb_top_nsorts[LB_VIEWS] = { 5, 3, 3 };

enum lb_top_line_kind {
    LB_LINE_TEXT,       /* a note, a pool's title */
    LB_LINE_HEAD,       /* column titles */
    LB_LINE_ROW,        /* a server, worker or limit: the cursor moves over these */
    LB_LINE_BAD,        /* a row that needs attention (DOWN, breaker open) */
};

struct lb_top_line {
    enum lb_top_line_kind kind;
    char text[LB_TOP_LINE];
};

struct lb_top {
    const char *config;                 /* realpath */
    double delay_s;
    bool batch;
    long frames;                        /* batch: 0 = for ever */
    bool paused;
    enum lb_top_view view;
    unsigned sort[LB_VIEWS];
    int cursor;                         /* row index in the current view */
    int scroll;
    /* The instance. */
    struct lb_shm shm;
    ino_t shm_ino;
    char why[160];                      /* why none is attached */
    struct lb_top_sample *cur, *prev;
    bool have_sample;
    /* The frame being drawn. */
    struct lb_top_line *lines;
    unsigned nlines, maxlines;
};

static volatile sig_atomic_t lb_top_stop;

static void lb_top_on_signal(int sig)
{
    (void)sig;
    lb_top_stop = 1;
}

/* ---- the instance ------------------------------------------------------ */

static void lb_top_detach(struct lb_top *t)
{
    if (t->shm.hdr != NULL)
        lb_shm_close(&t->shm);
}

/* Whether the attached segment still belongs to a live master. A stopped
 * or restarted lbd leaves our mapping valid but frozen; so does an upgrade
 * to another shm layout, which keeps the master's pid but retires the
 * segment. */
static bool lb_top_alive(struct lb_top *t)
{
    if (lb_shm_retired(t->shm.hdr))
        return false;
    int pid = atomic_load(&t->shm.hdr->master_pid);
    return pid > 0 && (kill(pid, 0) == 0 || errno == EPERM);
}

static bool lb_top_attach(struct lb_top *t)
{
    if (t->shm.hdr != NULL && lb_top_alive(t))
        return true;
    lb_top_detach(t);
    int fd = lb_instance_fetch(t->config);
    if (fd < 0) {
        snprintf(t->why, sizeof(t->why), "no lbd running for %s (%s)", t->config,
                 strerror(errno));
        return false;
    }
    struct stat st;
    ino_t ino = fstat(fd, &st) == 0 ? st.st_ino : 0;
    const char *why = "";
    if (lb_shm_attach(fd, true, &t->shm, &why) < 0) {
        close(fd);
        snprintf(t->why, sizeof(t->why), "cannot read the shared memory of %s: %s", t->config,
                 why);
        return false;
    }
    if (ino != t->shm_ino)
        t->have_sample = false;         /* another segment: its counters began at zero */
    t->shm_ino = ino;
    return true;
}

/* Take a new sample (the old one becomes PREV). False when no instance. */
static bool lb_top_refresh(struct lb_top *t)
{
    if (!lb_top_attach(t))
        return false;
    struct lb_top_sample *x = t->prev;
    t->prev = t->cur;
    t->cur = x;
    if (!t->have_sample)
        t->prev->taken_ms = 0;
    lb_top_sample_take(t->shm.hdr, t->cur);
    t->have_sample = true;
    return true;
}

/* ---- lines --------------------------------------------------------------- */

__attribute__((format(printf, 3, 4)))
static void lb_top_add(struct lb_top *t, enum lb_top_line_kind kind, const char *fmt, ...)
{
    if (t->nlines == t->maxlines) {
        unsigned n = t->maxlines ? 2 * t->maxlines : 256;
        struct lb_top_line *l = realloc(t->lines, n * sizeof(*l));
        if (l == NULL)
            return;                     /* a shorter screen, not a crash */
        t->lines = l;
        t->maxlines = n;
    }
    struct lb_top_line *l = &t->lines[t->nlines++];
    l->kind = kind;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(l->text, sizeof(l->text), fmt, ap);
    va_end(ap);
}

static const char *lb_top_ms(char *buf, size_t n, double ms)
{
    if (ms < 0)
        snprintf(buf, n, "-");
    else if (ms >= 1000)
        snprintf(buf, n, "%.2fs", ms / 1000);
    else
        snprintf(buf, n, "%.1fms", ms);
    return buf;
}

static const char *lb_top_rate(char *buf, size_t n, bool have, double v)
{
    if (!have)
        snprintf(buf, n, "-");
    else
        snprintf(buf, n, "%.1f", v);
    return buf;
}

/* ---- servers ------------------------------------------------------------- */

struct lb_top_srow {
    const struct lb_top_server *s;
    bool have;                          /* rates known */
    double rps, eps, p5xx, p50, p99;
};

static unsigned lb_top_sort_key;

static int lb_top_cmp_double(double a, double b)
{
    return a > b ? -1 : a < b ? 1 : 0;      /* descending */
}

static int lb_top_srow_cmp(const void *x, const void *y)
{
    const struct lb_top_srow *a = x, *b = y;
    if (a->s->pool_id != b->s->pool_id)
        return a->s->pool_id < b->s->pool_id ? -1 : 1;
    int c = 0;
    switch (lb_top_sort_key) {
    case 1: c = lb_top_cmp_double(a->rps, b->rps); break;
    case 2: c = lb_top_cmp_double(a->eps, b->eps); break;
    case 3: c = lb_top_cmp_double((double)a->s->inflight, (double)b->s->inflight); break;
    case 4: c = lb_top_cmp_double(a->p99, b->p99); break;
    default: break;
    }
    return c ? c : strcmp(a->s->address, b->s->address);
}

static const char *lb_top_breaker_name(enum lb_breaker_state b)
{
    return b == LB_BREAKER_OPEN ? "open" : b == LB_BREAKER_HALF_OPEN ? "half" : "closed";
}

static const char *lb_top_state_name(enum lb_backend_admin s)
{
    return s == LB_BACKEND_DRAIN ? "drain" : s == LB_BACKEND_MAINT ? "maint" : "ready";
}

static void lb_top_servers(struct lb_top *t)
{
    const struct lb_top_sample *s = t->cur;
    static struct lb_top_srow rows[LB_SHM_MAX_BACKENDS];
    for (unsigned i = 0; i < s->nservers; i++) {
        const struct lb_top_server *v = &s->servers[i];
        const struct lb_top_server *p = NULL;
        struct lb_top_srow *r = &rows[i];
        memset(r, 0, sizeof(*r));
        r->s = v;
        double dt = 0;
        if (lb_top_server_prev(t->prev, v, &p) && s->taken_ms > t->prev->taken_ms)
            dt = (double)(s->taken_ms - t->prev->taken_ms) / 1000.0;
        uint64_t hist[LB_DURATION_BUCKETS];
        uint64_t resp = v->responses, r5 = v->r5xx;
        memcpy(hist, v->duration, sizeof(hist));
        if (dt > 0) {
            r->have = true;
            r->rps = (double)(v->requests - p->requests) / dt;
            r->eps = (double)(v->r5xx - p->r5xx + v->failures - p->failures) / dt;
            /* The interval's share and latency when it had answers;
             * since the start otherwise. */
            if (v->responses > p->responses) {
                resp = v->responses - p->responses;
                r5 = v->r5xx - p->r5xx;
                for (unsigned k = 0; k < LB_DURATION_BUCKETS; k++)
                    hist[k] = v->duration[k] - p->duration[k];
            }
        }
        r->p5xx = resp ? 100.0 * (double)r5 / (double)resp : 0;
        r->p50 = lb_top_quantile_ms(hist, 0.5);
        r->p99 = lb_top_quantile_ms(hist, 0.99);
    }
    lb_top_sort_key = t->sort[LB_VIEW_SERVERS];
    qsort(rows, s->nservers, sizeof(rows[0]), lb_top_srow_cmp);
    if (s->nservers == 0)
        lb_top_add(t, LB_LINE_TEXT, "(no pools)");
    for (unsigned i = 0; i < s->nservers; i++) {
        const struct lb_top_srow *r = &rows[i];
        const struct lb_top_server *v = r->s;
        if (i == 0 || v->pool_id != rows[i - 1].s->pool_id) {
            unsigned n = 0, up = 0;
            for (unsigned j = i; j < s->nservers && rows[j].s->pool_id == v->pool_id; j++) {
                n++;
                up += rows[j].s->up;
            }
            lb_top_add(t, LB_LINE_TEXT, "%spool %s: %u server(s), %u up", i ? "\n" : "",
                       v->pool, n, up);
            lb_top_add(t, LB_LINE_HEAD,
                       "  %-24s %-6s %-7s %4s %-6s %9s %8s %7s %6s %5s %8s %8s %8s", "SERVER", "HEALTH", "BREAKER", "W", "STATE", "REQS", "REQ/S", "ERR/S",
                       "5XX%", "INFL", "EWMA", "P50", "P99");
        }
        char b1[16], b2[16], b3[16], b4[16], b5[16], w[16];
        bool bad = !v->up || v->breaker != LB_BREAKER_CLOSED;
        /* '*': set at run time (admin API), not the file's. */
        snprintf(w, sizeof(w), "%u%s", v->weight, v->weight != v->file_weight ? "*" : "");
        lb_top_add(t, bad ? LB_LINE_BAD : LB_LINE_ROW,
                   "  %-24s %-6s %-7s %4s %-6s %9llu %8s %7s %6.1f %5lld %8s %8s %8s",
                   v->address, v->up ? "UP" : "DOWN", lb_top_breaker_name(v->breaker), w,
                   lb_top_state_name(v->state), (unsigned long long)v->requests,
                   lb_top_rate(b1, sizeof(b1), r->have, r->rps),
                   lb_top_rate(b2, sizeof(b2), r->have, r->eps), r->p5xx,
                   (long long)v->inflight, lb_top_ms(b3, sizeof(b3), v->ewma_ms),
                   lb_top_ms(b4, sizeof(b4), r->p50), lb_top_ms(b5, sizeof(b5), r->p99));
    }
}

/* ---- workers ------------------------------------------------------------- */

struct lb_top_wrow {
    const struct lb_top_worker *w;
    bool have;
    double rps;
};

static int lb_top_wrow_cmp(const void *x, const void *y)
{
    const struct lb_top_wrow *a = x, *b = y;
    int c = 0;
    if (lb_top_sort_key == 1)
        c = lb_top_cmp_double(a->rps, b->rps);
    else if (lb_top_sort_key == 2)
        c = lb_top_cmp_double((double)a->w->active, (double)b->w->active);
    if (c == 0 && a->w->id != b->w->id)
        c = a->w->id < b->w->id ? -1 : 1;
    if (c == 0)
        c = a->w->slot < b->w->slot ? -1 : a->w->slot > b->w->slot;
    return c;
}

static void lb_top_workers(struct lb_top *t)
{
    const struct lb_top_sample *s = t->cur;
    static struct lb_top_wrow rows[LB_SHM_MAX_SLOTS];
    for (unsigned i = 0; i < s->nworkers; i++) {
        const struct lb_top_worker *w = &s->workers[i], *p = NULL;
        rows[i] = (struct lb_top_wrow){ .w = w };
        if (lb_top_worker_prev(t->prev, w, &p) && s->taken_ms > t->prev->taken_ms) {
            rows[i].have = true;
            rows[i].rps = (double)(w->requests - p->requests) * 1000.0 /
                          (double)(s->taken_ms - t->prev->taken_ms);
        }
    }
    lb_top_sort_key = t->sort[LB_VIEW_WORKERS];
    qsort(rows, s->nworkers, sizeof(rows[0]), lb_top_wrow_cmp);
    lb_top_add(t, LB_LINE_HEAD, "  %4s %4s %8s %-9s %4s %8s %11s %10s %8s %8s", "ID", "SLOT", "PID",
               "STATE", "GEN", "CONNS", "CONNS-TOTAL", "REQS", "REQ/S", "RESTARTS");
    for (unsigned i = 0; i < s->nworkers; i++) {
        const struct lb_top_worker *w = rows[i].w;
        char b1[16];
        lb_top_add(t, LB_LINE_ROW, "  %4u %4u %8d %-9s %4u %8llu %11llu %10llu %8s %8llu", w->id,
                   w->slot, w->pid, w->state == LB_SLOT_DRAINING ? "draining" : "running",
                   w->generation, (unsigned long long)w->active,
                   (unsigned long long)w->connections, (unsigned long long)w->requests,
                   lb_top_rate(b1, sizeof(b1), rows[i].have, rows[i].rps),
                   (unsigned long long)w->restarts);
    }
}

/* ---- rate limits --------------------------------------------------------- */

struct lb_top_lrow {
    const struct lb_top_limit *l;
    bool have;
    double aps, lps;
};

static int lb_top_lrow_cmp(const void *x, const void *y)
{
    const struct lb_top_lrow *a = x, *b = y;
    int c = 0;
    if (lb_top_sort_key == 1)
        c = lb_top_cmp_double(a->lps, b->lps);
    else if (lb_top_sort_key == 2)
        c = lb_top_cmp_double(a->aps, b->aps);
    return c ? c : strcmp(a->l->name, b->l->name);
}

static void lb_top_limits(struct lb_top *t)
{
    const struct lb_top_sample *s = t->cur;
    static struct lb_top_lrow rows[LB_SHM_MAX_LIMITS];
    for (unsigned i = 0; i < s->nlimits; i++) {
        const struct lb_top_limit *l = &s->limits[i], *p = NULL;
        rows[i] = (struct lb_top_lrow){ .l = l };
        if (lb_top_limit_prev(t->prev, l, &p) && s->taken_ms > t->prev->taken_ms) {
            double dt = (double)(s->taken_ms - t->prev->taken_ms) / 1000.0;
            rows[i].have = true;
            rows[i].aps = (double)(l->allowed - p->allowed) / dt;
            rows[i].lps = (double)(l->limited - p->limited) / dt;
        }
    }
    lb_top_sort_key = t->sort[LB_VIEW_LIMITS];
    qsort(rows, s->nlimits, sizeof(rows[0]), lb_top_lrow_cmp);
    if (s->nlimits == 0) {
        lb_top_add(t, LB_LINE_TEXT, "  (no rate limits configured)");
        return;
    }
    lb_top_add(t, LB_LINE_HEAD, "  %-16s %-24s %-10s %6s %8s %10s %10s %9s %9s", "NAME", "KEY",
               "RATE", "BURST", "KEYS", "ALLOWED", "LIMITED", "ALLOW/S", "LIMIT/S");
    for (unsigned i = 0; i < s->nlimits; i++) {
        const struct lb_top_limit *l = rows[i].l;
        char b1[16], b2[16], rate[40];
        snprintf(rate, sizeof(rate), "%s%s", l->rate, l->dry_run ? " dry" : "");
        lb_top_add(t, LB_LINE_ROW, "  %-16s %-24s %-10s %6u %8llu %10llu %10llu %9s %9s", l->name,
                   l->key, rate, l->burst, (unsigned long long)l->keys,
                   (unsigned long long)l->allowed, (unsigned long long)l->limited,
                   lb_top_rate(b1, sizeof(b1), rows[i].have, rows[i].aps),
                   lb_top_rate(b2, sizeof(b2), rows[i].have, rows[i].lps));
    }
}

/* ---- frames -------------------------------------------------------------- */

/* The title: which instance, how it is doing as a whole. */
static void lb_top_title(struct lb_top *t, bool attached)
{
    char now[16];
    time_t tt = time(NULL);
    struct tm tm;
    strftime(now, sizeof(now), "%H:%M:%S", localtime_r(&tt, &tm));
    if (!attached) {
        lb_top_add(t, LB_LINE_TEXT, "lbtop %s - %s", now, t->config);
        lb_top_add(t, LB_LINE_BAD, "%s: waiting for one", t->why);
        return;
    }
    const struct lb_top_sample *s = t->cur;
    uint64_t up_s = 0, wall = lb_wall_ms();
    if (s->started_ms && wall > s->started_ms)
        up_s = (wall - s->started_ms) / 1000;
    uint64_t reqs = 0, preqs = 0;
    unsigned up = 0;
    for (unsigned i = 0; i < s->nworkers; i++)
        reqs += s->workers[i].requests;
    bool have = t->prev->taken_ms != 0 && s->taken_ms > t->prev->taken_ms;
    for (unsigned i = 0; have && i < t->prev->nworkers; i++)
        preqs += t->prev->workers[i].requests;
    for (unsigned i = 0; i < s->nservers; i++)
        up += s->servers[i].up;
    char rate[32];
    lb_top_rate(rate, sizeof(rate), have && reqs >= preqs,
                have ? (double)(reqs - preqs) * 1000.0 / (double)(s->taken_ms - t->prev->taken_ms)
                     : 0);
    lb_top_add(t, LB_LINE_TEXT,
               "lbtop %s - %s  master %d  generation %llu  reloads %llu  up %llu:%02llu:%02llu%s",
               now, t->config, s->master_pid, (unsigned long long)s->generation,
               (unsigned long long)s->reloads, (unsigned long long)(up_s / 3600),
               (unsigned long long)(up_s / 60 % 60), (unsigned long long)(up_s % 60),
               t->paused ? "  [paused]" : "");
    lb_top_add(t, LB_LINE_TEXT,
               "workers %u (configured %u)  servers %u/%u up  requests %llu  %s req/s",
               s->nworkers, s->workers_configured, up, s->nservers, (unsigned long long)reqs, rate);
}

static void lb_top_view_lines(struct lb_top *t, enum lb_top_view v)
{
    switch (v) {
    case LB_VIEW_SERVERS: lb_top_servers(t); break;
    case LB_VIEW_WORKERS: lb_top_workers(t); break;
    default: lb_top_limits(t); break;
    }
}

static int lb_top_batch(struct lb_top *t)
{
    bool attached = false;
    for (long f = 0; !lb_top_stop && (t->frames == 0 || f < t->frames); f++) {
        if (f > 0) {
            struct timespec ts = { .tv_sec = (time_t)t->delay_s,
                                   .tv_nsec = (long)((t->delay_s - floor(t->delay_s)) * 1e9) };
            while (nanosleep(&ts, &ts) < 0 && errno == EINTR && !lb_top_stop)
                ;
        }
        attached = lb_top_refresh(t);
        if (!attached && f == 0) {
            fprintf(stderr, "lbtop: %s\n", t->why);
            return 1;
        }
        t->nlines = 0;
        lb_top_title(t, attached);
        if (attached) {
            for (unsigned v = 0; v < LB_VIEWS; v++) {
                lb_top_add(t, LB_LINE_TEXT, "\n== %s ==", lb_top_view_names[v]);
                lb_top_view_lines(t, (enum lb_top_view)v);
            }
        }
        for (unsigned i = 0; i < t->nlines; i++)
            printf("%s\n", t->lines[i].text);
        printf("\n");
        if (fflush(stdout) != 0)
            return 1;
    }
    return attached ? 0 : 1;
}

/* ---- interactive ------------------------------------------------------- */

static void lb_top_draw(struct lb_top *t, bool attached)
{
    t->nlines = 0;
    lb_top_title(t, attached);
    unsigned title = t->nlines;
    if (attached)
        lb_top_view_lines(t, t->view);
    int rows = 0;
    for (unsigned i = title; i < t->nlines; i++)
        rows += t->lines[i].kind == LB_LINE_ROW || t->lines[i].kind == LB_LINE_BAD;
    if (t->cursor >= rows)
        t->cursor = rows - 1;
    if (t->cursor < 0)
        t->cursor = 0;

    erase();
    int h = LINES, w = COLS;
    for (unsigned i = 0; i < title && (int)i < h; i++)
        mvaddnstr((int)i, 0, t->lines[i].text, w);
    /* The view tabs and the keys. */
    int y = (int)title;
    move(y, 0);
    for (unsigned v = 0; v < LB_VIEWS; v++) {
        if (v == (unsigned)t->view)
            attron(A_REVERSE);
        printw(" %u %s ", v + 1, lb_top_view_names[v]);
        if (v == (unsigned)t->view)
            attroff(A_REVERSE);
        addch(' ');
    }
    printw("  sort: %s   q quit  Tab/1-3 view  s sort  j/k move  p %s",
           (t->view == LB_VIEW_SERVERS  ? lb_top_server_sorts
            : t->view == LB_VIEW_WORKERS ? lb_top_worker_sorts
                                         : lb_top_limit_sorts)[t->sort[t->view]],
           t->paused ? "resume" : "pause");
    y += 2;
    /* The body scrolls so that the cursor's row stays in sight. */
    int body = h - y;
    int cursor_line = -1, row = 0;
    for (unsigned i = title; i < t->nlines; i++) {
        enum lb_top_line_kind k = t->lines[i].kind;
        if (k == LB_LINE_ROW || k == LB_LINE_BAD) {
            if (row == t->cursor)
                cursor_line = (int)(i - title);
            row++;
        }
    }
    if (cursor_line >= 0) {
        if (cursor_line < t->scroll)
            t->scroll = cursor_line;
        if (body > 0 && cursor_line >= t->scroll + body)
            t->scroll = cursor_line - body + 1;
    }
    if (t->scroll > (int)(t->nlines - title))
        t->scroll = 0;
    for (int i = 0; i < body; i++) {
        unsigned li = title + (unsigned)(t->scroll + i);
        if (li >= t->nlines)
            break;
        const struct lb_top_line *l = &t->lines[li];
        const char *text = l->text[0] == '\n' ? l->text + 1 : l->text;
        int attr = l->kind == LB_LINE_HEAD ? A_BOLD | A_UNDERLINE
                   : l->kind == LB_LINE_BAD && has_colors() ? COLOR_PAIR(1)
                   : l->kind == LB_LINE_BAD ? A_BOLD
                                            : 0;
        if (t->scroll + i == cursor_line)
            attr |= A_REVERSE;
        attron(attr);
        mvaddnstr(y + i, 0, text, w);
        attroff(attr);
    }
    refresh();
}

static int lb_top_interactive(struct lb_top *t)
{
    if (initscr() == NULL) {
        fprintf(stderr, "lbtop: cannot set up the terminal (try -b)\n");
        return 1;
    }
    cbreak();
    noecho();
    keypad(stdscr, TRUE);
    curs_set(0);
    if (has_colors()) {
        start_color();
        use_default_colors();
        init_pair(1, COLOR_RED, -1);
    }
    bool attached = lb_top_refresh(t);
    uint64_t next = lb_now_ms() + (uint64_t)(t->delay_s * 1000);
    while (!lb_top_stop) {
        lb_top_draw(t, attached);
        uint64_t now = lb_now_ms();
        timeout(now >= next ? 0 : (int)(next - now));
        int ch = getch();
        switch (ch) {
        case 'q': case 'Q':
            lb_top_stop = 1;
            break;
        case '\t':
            t->view = (enum lb_top_view)((t->view + 1) % LB_VIEWS);
            t->cursor = t->scroll = 0;
            break;
        case KEY_BTAB:
            t->view = (enum lb_top_view)((t->view + LB_VIEWS - 1) % LB_VIEWS);
            t->cursor = t->scroll = 0;
            break;
        case '1': case '2': case '3':
            t->view = (enum lb_top_view)(ch - '1');
            t->cursor = t->scroll = 0;
            break;
        case 's':
            t->sort[t->view] = (t->sort[t->view] + 1) % lb_top_nsorts[t->view];
            break;
        case 'j': case KEY_DOWN:
            t->cursor++;
            break;
        case 'k': case KEY_UP:
            t->cursor--;
            break;
        case KEY_NPAGE:
            t->cursor += LINES / 2;
            break;
        case KEY_PPAGE:
            t->cursor -= LINES / 2;
            break;
        case 'p': case ' ':
            t->paused = !t->paused;
            break;
        case ERR:               /* the refresh is due */
            break;
        default:
            break;
        }
        now = lb_now_ms();
        if (now >= next) {
            if (!t->paused)
                attached = lb_top_refresh(t);
            next = now + (uint64_t)(t->delay_s * 1000);
        }
    }
    endwin();
    return 0;
}

static void lb_top_usage(FILE *out)
{
    fprintf(out, "usage: lbtop [-c FILE] [-d SECONDS] [-b] [-n FRAMES]\n"
                 "  -c FILE     the configuration of the lbd to watch (default %s)\n"
                 "  -d SECONDS  time between refreshes (default 2; fractions allowed)\n"
                 "  -b          batch mode: plain text frames on stdout, every view\n"
                 "  -n FRAMES   batch mode: stop after FRAMES frames\n"
                 "keys: q quit, Tab or 1-3 views, s sort column, j/k or arrows move, p pause\n",
            LB_TOP_DEFAULT_CONFIG);
}

int main(int argc, char **argv)
{
    static struct lb_top_sample samples[2];
    struct lb_top t = { .delay_s = 2, .cur = &samples[0], .prev = &samples[1],
                        .shm = { .fd = -1 } };
    const char *config = LB_TOP_DEFAULT_CONFIG;
    int opt;
    while ((opt = getopt(argc, argv, "c:d:bn:hV")) != -1) {
        char *end = NULL;
        switch (opt) {
        case 'c':
            config = optarg;
            break;
        case 'd':
            errno = 0;
            t.delay_s = strtod(optarg, &end);
            if (errno || end == optarg || *end != '\0' || !(t.delay_s >= 0.05) ||
                t.delay_s > 86400) {
                fprintf(stderr, "lbtop: -d %s: a number of seconds from 0.05 to 86400\n", optarg);
                return 2;
            }
            break;
        case 'b':
            t.batch = true;
            break;
        case 'n':
            errno = 0;
            t.frames = strtol(optarg, &end, 10);
            if (errno || end == optarg || *end != '\0' || t.frames < 1) {
                fprintf(stderr, "lbtop: -n %s: a number of frames, 1 or more\n", optarg);
                return 2;
            }
            break;
        case 'V':
            printf("lbtop %s\n", LB_VERSION);
            return 0;
        case 'h':
            lb_top_usage(stdout);
            return 0;
        default:
            lb_top_usage(stderr);
            return 2;
        }
    }
    if (optind != argc) {
        lb_top_usage(stderr);
        return 2;
    }
    char *path = realpath(config, NULL);
    if (path == NULL) {
        fprintf(stderr, "lbtop: %s: %s\n", config, strerror(errno));
        return 1;
    }
    t.config = path;
    struct sigaction sa = { .sa_handler = lb_top_on_signal };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    int rc = t.batch ? lb_top_batch(&t) : lb_top_interactive(&t);
    lb_top_detach(&t);
    free(t.lines);
    free(path);
    return rc;
}
