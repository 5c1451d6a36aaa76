#include "shared/json.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct lb_json_in {
    const char *p, *end;
    const char *why;
};

static void lb_json_ws(struct lb_json_in *in)
{
    while (in->p < in->end && (*in->p == ' ' || *in->p == '\t' || *in->p == '\n' || *in->p == '\r'))
        in->p++;
}

static int lb_json_fail(struct lb_json_in *in, const char *why)
{
    in->why = why;
    return -1;
}

static int lb_json_hex4(struct lb_json_in *in, unsigned *out)
{
    if (in->end - in->p < 4)
        return lb_json_fail(in, "truncated \\u escape");
    unsigned v = 0;
    for (int k = 0; k < 4; k++) {
        char c = *in->p++;
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else
            return lb_json_fail(in, "bad \\u escape");
    }
    *out = v;
    return 0;
}

/* A string (the opening quote is next) decoded into OUT[0..CAP). */
static int lb_json_string(struct lb_json_in *in, char *out, size_t cap)
{
    size_t n = 0;
    in->p++;
    for (;;) {
        if (in->p >= in->end)
            return lb_json_fail(in, "unterminated string");
        unsigned char c = (unsigned char)*in->p++;
        unsigned cp;
        if (c == '"')
            break;
        if (c < 0x20)
            return lb_json_fail(in, "control character in a string");
        if (c != '\\') {
            if (n + 1 >= cap)
                return lb_json_fail(in, "string too long");
            out[n++] = (char)c;
            continue;
        }
        if (in->p >= in->end)
            return lb_json_fail(in, "unterminated string");
        c = (unsigned char)*in->p++;
        switch (c) {
        case '"': case '\\': case '/': cp = c; break;
        case 'b': cp = '\b'; break;
        case 'f': cp = '\f'; break;
        case 'n': cp = '\n'; break;
        case 'r': cp = '\r'; break;
        case 't': cp = '\t'; break;
        case 'u':
            if (lb_json_hex4(in, &cp) < 0)
                return -1;
            if (cp >= 0xd800 && cp < 0xdc00) {
                unsigned lo;
                if (in->end - in->p < 6 || in->p[0] != '\\' || in->p[1] != 'u')
                    return lb_json_fail(in, "lone surrogate in \\u escape");
                in->p += 2;
                if (lb_json_hex4(in, &lo) < 0)
                    return -1;
                if (lo < 0xdc00 || lo > 0xdfff)
                    return lb_json_fail(in, "lone surrogate in \\u escape");
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            } else if (cp >= 0xdc00 && cp <= 0xdfff) {
                return lb_json_fail(in, "lone surrogate in \\u escape");
            } else if (cp == 0) {
                return lb_json_fail(in, "\\u0000 in a string");
            }
            break;
        default:
            return lb_json_fail(in, "bad escape in a string");
        }
        char enc[4];
        size_t k;
        if (cp < 0x80) {
            enc[0] = (char)cp;
            k = 1;
        } else if (cp < 0x800) {
            enc[0] = (char)(0xc0 | (cp >> 6));
            enc[1] = (char)(0x80 | (cp & 0x3f));
            k = 2;
        } else if (cp < 0x10000) {
            enc[0] = (char)(0xe0 | (cp >> 12));
            enc[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
            enc[2] = (char)(0x80 | (cp & 0x3f));
            k = 3;
        } else {
            enc[0] = (char)(0xf0 | (cp >> 18));
            enc[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
            enc[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
            enc[3] = (char)(0x80 | (cp & 0x3f));
            k = 4;
        }
        if (n + k >= cap)
            return lb_json_fail(in, "string too long");
        memcpy(out + n, enc, k);
        n += k;
    }
    out[n] = '\0';
    return 0;
}

/* A number as RFC 8259 writes it: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
static int lb_json_number(struct lb_json_in *in, struct lb_json_field *f)
{
    const char *s = in->p, *p = in->p;
    bool integer = true;
    if (p < in->end && *p == '-')
        p++;
    if (p >= in->end || *p < '0' || *p > '9')
        return lb_json_fail(in, "bad value");
    if (*p == '0')
        p++;
    else
        while (p < in->end && *p >= '0' && *p <= '9')
            p++;
    if (p < in->end && *p == '.') {
        integer = false;
        p++;
        if (p >= in->end || *p < '0' || *p > '9')
            return lb_json_fail(in, "bad number");
        while (p < in->end && *p >= '0' && *p <= '9')
            p++;
    }
    if (p < in->end && (*p == 'e' || *p == 'E')) {
        integer = false;
        p++;
        if (p < in->end && (*p == '+' || *p == '-'))
            p++;
        if (p >= in->end || *p < '0' || *p > '9')
            return lb_json_fail(in, "bad number");
        while (p < in->end && *p >= '0' && *p <= '9')
            p++;
    }
    char buf[64];
    if ((size_t)(p - s) >= sizeof(buf))
        return lb_json_fail(in, "number too long");
    memcpy(buf, s, (size_t)(p - s));
    buf[p - s] = '\0';
    f->type = LB_JSON_NUMBER;
    f->num = strtod(buf, NULL);
    f->integer = false;
    if (integer) {
        errno = 0;
        long long v = strtoll(buf, NULL, 10);
        if (errno == 0) {
            f->integer = true;
            f->i = v;
        }
    }
    in->p = p;
    return 0;
}

static bool lb_json_word(struct lb_json_in *in, const char *w)
{
    size_t n = strlen(w);
    if ((size_t)(in->end - in->p) < n || memcmp(in->p, w, n) != 0)
        return false;
    in->p += n;
    return true;
}

static int lb_json_value(struct lb_json_in *in, struct lb_json_field *f)
{
    if (in->p >= in->end)
        return lb_json_fail(in, "value missing");
    char c = *in->p;
    if (c == '"') {
        f->type = LB_JSON_STRING;
        return lb_json_string(in, f->str, sizeof(f->str));
    }
    if (c == '{' || c == '[')
        return lb_json_fail(in, "nested objects and arrays are not accepted here");
    if (lb_json_word(in, "true")) {
        f->type = LB_JSON_BOOL;
        f->boolean = true;
        return 0;
    }
    if (lb_json_word(in, "false")) {
        f->type = LB_JSON_BOOL;
        f->boolean = false;
        return 0;
    }
    if (lb_json_word(in, "null")) {
        f->type = LB_JSON_NULL;
        return 0;
    }
    return lb_json_number(in, f);
}

int lb_json_parse_flat(const char *buf, size_t len, struct lb_json_field *out, size_t max,
                       const char **why)
{
    struct lb_json_in in = { .p = buf, .end = buf + len };
    size_t n = 0;
    lb_json_ws(&in);
    if (in.p >= in.end || *in.p != '{') {
        *why = "expected a JSON object";
        return -1;
    }
    in.p++;
    lb_json_ws(&in);
    if (in.p < in.end && *in.p == '}') {
        in.p++;
    } else {
        for (;;) {
            lb_json_ws(&in);
            if (in.p >= in.end || *in.p != '"') {
                *why = "expected a quoted key";
                return -1;
            }
            if (n >= max) {
                *why = "too many members";
                return -1;
            }
            struct lb_json_field *f = &out[n];
            memset(f, 0, sizeof(*f));
            if (lb_json_string(&in, f->key, sizeof(f->key)) < 0) {
                *why = in.why;
                return -1;
            }
            for (size_t k = 0; k < n; k++)
                if (strcmp(out[k].key, f->key) == 0) {
                    *why = "duplicate key";
                    return -1;
                }
            lb_json_ws(&in);
            if (in.p >= in.end || *in.p != ':') {
                *why = "expected ':' after a key";
                return -1;
            }
            in.p++;
            lb_json_ws(&in);
            if (lb_json_value(&in, f) < 0) {
                *why = in.why;
                return -1;
            }
            n++;
            lb_json_ws(&in);
            if (in.p < in.end && *in.p == ',') {
                in.p++;
                continue;
            }
            if (in.p < in.end && *in.p == '}') {
                in.p++;
                break;
            }
            *why = "expected ',' or '}'";
            return -1;
        }
    }
    lb_json_ws(&in);
    if (in.p != in.end) {
        *why = "trailing bytes after the object";
        return -1;
    }
    return (int)n;
}

const struct lb_json_field *lb_json_find(const struct lb_json_field *f, size_t n,
                                         const char *key)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(f[i].key, key) == 0)
            return &f[i];
    return NULL;
}

void lb_json_write_stringn(FILE *out, const char *s, size_t max)
{
    fputc('"', out);
    for (size_t i = 0; i < max && s[i] != '\0'; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            fprintf(out, "\\%c", c);
        else if (c < 0x20 || c == 0x7f)
            fprintf(out, "\\u%04x", c);
        else
            fputc(c, out);
    }
    fputc('"', out);
}

void lb_json_write_string(FILE *out, const char *s)
{
    lb_json_write_stringn(out, s, SIZE_MAX);
}
