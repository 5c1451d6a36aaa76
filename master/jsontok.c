#include "master/jsontok.h"

#include <string.h>

#define LB_JSON_DEPTH 32

struct lb_json_p {
    const char *js;
    size_t len, pos;
    struct lb_jsontok *toks;
    int n, max;
};

static void lb_json_ws(struct lb_json_p *p)
{
    while (p->pos < p->len && (p->js[p->pos] == ' ' || p->js[p->pos] == '\t' ||
                               p->js[p->pos] == '\n' || p->js[p->pos] == '\r'))
        p->pos++;
}

static int lb_json_new(struct lb_json_p *p, enum lb_jsontok_type type)
{
    if (p->n >= p->max)
        return -1;
    p->toks[p->n] = (struct lb_jsontok){ .type = type, .start = p->pos };
    return p->n++;
}

static int lb_json_string(struct lb_json_p *p)
{
    p->pos++;       /* the opening quote */
    int t = lb_json_new(p, LB_JSONTOK_STRING);
    if (t < 0)
        return -1;
    while (p->pos < p->len) {
        char c = p->js[p->pos];
        if (c == '"') {
            p->toks[t].end = p->pos++;
            return t;
        }
        if ((unsigned char)c < 0x20)
            return -1;
        p->pos += c == '\\' ? 2 : 1;
    }
    return -1;
}

static int lb_json_value(struct lb_json_p *p, int depth)
{
    lb_json_ws(p);
    if (p->pos >= p->len || depth > LB_JSON_DEPTH)
        return -1;
    char c = p->js[p->pos];
    if (c == '"')
        return lb_json_string(p);
    if (c == '{' || c == '[') {
        int t = lb_json_new(p, c == '{' ? LB_JSONTOK_OBJECT : LB_JSONTOK_ARRAY);
        if (t < 0)
            return -1;
        char close = c == '{' ? '}' : ']';
        p->pos++;
        lb_json_ws(p);
        if (p->pos < p->len && p->js[p->pos] == close) {
            p->toks[t].end = ++p->pos;
            return t;
        }
        for (;;) {
            if (c == '{') {
                lb_json_ws(p);
                if (p->pos >= p->len || p->js[p->pos] != '"' || lb_json_string(p) < 0)
                    return -1;
                lb_json_ws(p);
                if (p->pos >= p->len || p->js[p->pos] != ':')
                    return -1;
                p->pos++;
                p->toks[t].children++;
            }
            if (lb_json_value(p, depth + 1) < 0)
                return -1;
            p->toks[t].children++;
            lb_json_ws(p);
            if (p->pos >= p->len)
                return -1;
            if (p->js[p->pos] == ',') {
                p->pos++;
                continue;
            }
            if (p->js[p->pos] != close)
                return -1;
            p->toks[t].end = ++p->pos;
            return t;
        }
    }
    /* true, false, null, a number: up to a delimiter. */
    int t = lb_json_new(p, LB_JSONTOK_PRIMITIVE);
    if (t < 0)
        return -1;
    while (p->pos < p->len && strchr(",]} \t\r\n", p->js[p->pos]) == NULL)
        p->pos++;
    p->toks[t].end = p->pos;
    return p->toks[t].end > p->toks[t].start ? t : -1;
}

int lb_jsontok_parse(const char *js, size_t len, struct lb_jsontok *toks, int max)
{
    struct lb_json_p p = { .js = js, .len = len, .toks = toks, .max = max };
    if (lb_json_value(&p, 0) < 0)
        return -1;
    lb_json_ws(&p);
    return p.pos == p.len ? p.n : -1;
}

/* The token after T and everything inside it. */
static int lb_json_skip(const struct lb_jsontok *toks, int n, int t)
{
    if (t < 0 || t >= n)
        return n;
    int next = t + 1;
    for (int i = 0; i < toks[t].children && next < n; i++)
        next = lb_json_skip(toks, n, next);
    return next;
}

int lb_jsontok_get(const char *js, const struct lb_jsontok *toks, int n, int obj, const char *key)
{
    if (obj < 0 || obj >= n || toks[obj].type != LB_JSONTOK_OBJECT)
        return -1;
    size_t klen = strlen(key);
    int t = obj + 1;
    for (int i = 0; i + 1 < toks[obj].children && t + 1 < n; i += 2) {
        const struct lb_jsontok *k = &toks[t];
        if (k->end - k->start == klen && memcmp(js + k->start, key, klen) == 0)
            return t + 1;
        t = lb_json_skip(toks, n, t + 1);
    }
    return -1;
}

int lb_jsontok_elem(const struct lb_jsontok *toks, int n, int arr, int i)
{
    if (arr < 0 || arr >= n || toks[arr].type != LB_JSONTOK_ARRAY || i < 0 || i >= toks[arr].children)
        return -1;
    int t = arr + 1;
    for (int k = 0; k < i && t < n; k++)
        t = lb_json_skip(toks, n, t);
    return t < n ? t : -1;
}

bool lb_jsontok_str(const char *js, const struct lb_jsontok *toks, int n, int t, char *out,
                 size_t cap)
{
    if (t < 0 || t >= n || toks[t].type != LB_JSONTOK_STRING || cap == 0)
        return false;
    size_t o = 0;
    for (size_t i = toks[t].start; i < toks[t].end; i++) {
        char c = js[i];
        if (c == '\\' && i + 1 < toks[t].end) {
            c = js[++i];
            switch (c) {
            case 'n': c = '\n'; break;
            case 't': c = '\t'; break;
            case 'r': c = '\r'; break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'u':
                /* What ACME sends is ASCII; anything else becomes '?'. */
                if (i + 4 >= toks[t].end)
                    return false;
                c = '?';
                if (memcmp(js + i + 1, "00", 2) == 0) {
                    unsigned v = 0;
                    for (int k = 3; k <= 4; k++) {
                        char h = js[i + k];
                        v = v * 16 + (unsigned)(h >= '0' && h <= '9' ? h - '0'
                                                : h >= 'a' && h <= 'f' ? h - 'a' + 10
                                                : h >= 'A' && h <= 'F' ? h - 'A' + 10 : 0);
                    }
                    if (v >= 0x20 && v < 0x7f)
                        c = (char)v;
                }
                i += 4;
                break;
            default: break;     /* \" \\ \/ */
            }
        }
        if (o + 1 >= cap)
            return false;
        out[o++] = c;
    }
    out[o] = '\0';
    return true;
}

bool lb_jsontok_get_str(const char *js, const struct lb_jsontok *toks, int n, int obj,
                     const char *key, char *out, size_t cap)
{
    if (cap > 0)
        out[0] = '\0';
    return lb_jsontok_str(js, toks, n, lb_jsontok_get(js, toks, n, obj, key), out, cap);
}
