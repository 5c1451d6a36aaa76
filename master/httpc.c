#include "master/httpc.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#define LB_HTTPC_BODY_MAX (4u << 20)

struct lb_httpc {
    struct event_base *base;
    CURLM *multi;
    struct event *timer;
};

struct lb_httpc_req {
    struct lb_httpc *owner;
    CURL *easy;
    struct curl_slist *headers;
    char *body;                         /* received, when not streamed */
    size_t len, cap;
    char *header_name;
    char *header_value;
    char *post;
    lb_httpc_data_cb stream;
    lb_httpc_done_cb done;
    void *arg;
    char error[CURL_ERROR_SIZE];
    bool too_big;
};

/* The event of one socket curl watches. */
struct lb_httpc_sock {
    struct event *ev;
};

static void lb_httpc_check(struct lb_httpc *c)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(c->multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE)
            continue;
        struct lb_httpc_req *r = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&r);
        CURLcode rc = m->data.result;
        long status = 0;
        curl_easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE, &status);
        const char *err = NULL;
        if (r->too_big)
            err = "answer over 4 MB";
        else if (rc != CURLE_OK)
            err = r->error[0] ? r->error : curl_easy_strerror(rc);
        curl_multi_remove_handle(c->multi, r->easy);
        curl_easy_cleanup(r->easy);
        r->easy = NULL;
        /* The callback may start the next request; it must forget R. */
        r->done(r->arg, err, status, r->body ? r->body : "", r->len, r->header_value);
        lb_httpc_cancel(r);
    }
}

static void lb_httpc_event(evutil_socket_t fd, short what, void *arg)
{
    struct lb_httpc *c = arg;
    int flags = ((what & EV_READ) ? CURL_CSELECT_IN : 0) | ((what & EV_WRITE) ? CURL_CSELECT_OUT : 0);
    int running;
    curl_multi_socket_action(c->multi, fd, flags, &running);
    lb_httpc_check(c);
}

static void lb_httpc_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct lb_httpc *c = arg;
    int running;
    curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    lb_httpc_check(c);
}

static int lb_httpc_sockcb(CURL *e, curl_socket_t s, int what, void *userp, void *socketp)
{
    (void)e;
    struct lb_httpc *c = userp;
    struct lb_httpc_sock *hs = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (hs != NULL) {
            event_free(hs->ev);
            free(hs);
        }
        curl_multi_assign(c->multi, s, NULL);
        return 0;
    }
    if (hs == NULL) {
        hs = calloc(1, sizeof(*hs));
        if (hs == NULL)
            return -1;
        curl_multi_assign(c->multi, s, hs);
    } else {
        event_free(hs->ev);
    }
    short kind = (short)(((what & CURL_POLL_IN) ? EV_READ : 0) |
                         ((what & CURL_POLL_OUT) ? EV_WRITE : 0) | EV_PERSIST);
    hs->ev = event_new(c->base, s, kind, lb_httpc_event, c);
    if (hs->ev == NULL || event_add(hs->ev, NULL) < 0)
        return -1;
    return 0;
}

static int lb_httpc_timercb(CURLM *m, long ms, void *userp)
{
    (void)m;
    struct lb_httpc *c = userp;
    if (ms < 0) {
        evtimer_del(c->timer);
        return 0;
    }
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
    evtimer_add(c->timer, &tv);
    return 0;
}

struct lb_httpc *lb_httpc_new(struct event_base *base)
{
    static bool inited;
    if (!inited && curl_global_init(CURL_GLOBAL_DEFAULT) != 0)
        return NULL;
    inited = true;
    struct lb_httpc *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->base = base;
    c->multi = curl_multi_init();
    c->timer = evtimer_new(base, lb_httpc_timeout, c);
    if (c->multi == NULL || c->timer == NULL) {
        lb_httpc_free(c);
        return NULL;
    }
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, lb_httpc_sockcb);
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, lb_httpc_timercb);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
    return c;
}

void lb_httpc_free(struct lb_httpc *c)
{
    if (c == NULL)
        return;
    if (c->multi != NULL)
        curl_multi_cleanup(c->multi);
    if (c->timer != NULL)
        event_free(c->timer);
    free(c);
}

static size_t lb_httpc_write(char *data, size_t size, size_t n, void *userp)
{
    struct lb_httpc_req *r = userp;
    size_t len = size * n;
    if (r->stream != NULL)
        return r->stream(r->arg, data, len) ? len : 0;
    if (r->len + len + 1 > LB_HTTPC_BODY_MAX) {
        r->too_big = true;
        return 0;
    }
    if (r->len + len + 1 > r->cap) {
        size_t cap = r->cap ? r->cap : 4096;
        while (cap < r->len + len + 1)
            cap *= 2;
        char *b = realloc(r->body, cap);
        if (b == NULL)
            return 0;
        r->body = b;
        r->cap = cap;
    }
    memcpy(r->body + r->len, data, len);
    r->len += len;
    r->body[r->len] = '\0';
    return len;
}

static size_t lb_httpc_header(char *line, size_t size, size_t n, void *userp)
{
    struct lb_httpc_req *r = userp;
    size_t len = size * n, klen = strlen(r->header_name);
    if (len > klen + 1 && strncasecmp(line, r->header_name, klen) == 0 && line[klen] == ':') {
        const char *v = line + klen + 1;
        const char *end = line + len;
        while (v < end && (*v == ' ' || *v == '\t'))
            v++;
        while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
            end--;
        free(r->header_value);
        r->header_value = strndup(v, (size_t)(end - v));
    }
    return len;
}

struct lb_httpc_req *lb_httpc_request(struct lb_httpc *c, const char *url, const char *body,
                                      uint64_t timeout_ms, const char *header,
                                      lb_httpc_data_cb stream, lb_httpc_done_cb done, void *arg)
{
    struct lb_httpc_req *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->owner = c;
    r->stream = stream;
    r->done = done;
    r->arg = arg;
    r->easy = curl_easy_init();
    if (r->easy == NULL)
        goto fail;
    CURL *e = r->easy;
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, r);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->error);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, lb_httpc_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, 2000L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    /* The registry is named by the operator: no proxy from the
     * environment between lbd and it. */
    curl_easy_setopt(e, CURLOPT_NOPROXY, "*");
    if (timeout_ms > 0)
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    if (header != NULL) {
        r->header_name = strdup(header);
        if (r->header_name == NULL)
            goto fail;
        curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, lb_httpc_header);
        curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
    }
    if (body != NULL) {
        r->post = strdup(body);
        r->headers = curl_slist_append(NULL, "Content-Type: application/json");
        if (r->post == NULL || r->headers == NULL)
            goto fail;
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->post);
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->headers);
    }
    if (curl_multi_add_handle(c->multi, e) != CURLM_OK)
        goto fail;
    return r;
fail:
    r->done = NULL;
    lb_httpc_cancel(r);
    return NULL;
}

void lb_httpc_cancel(struct lb_httpc_req *r)
{
    if (r == NULL)
        return;
    if (r->easy != NULL) {
        curl_multi_remove_handle(r->owner->multi, r->easy);
        curl_easy_cleanup(r->easy);
    }
    curl_slist_free_all(r->headers);
    free(r->body);
    free(r->header_name);
    free(r->header_value);
    free(r->post);
    free(r);
}
