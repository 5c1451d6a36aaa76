#include "shared/json.h"

#include <errno.h>
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

static void *lb_json_fail(struct lb_json_in *in, const char *why)
{
    in->why = why;
    return NULL;
}

static int lb_json_hex4(struct lb_json_in *in, const char *q, unsigned *out)
{
    if (q - in->p < 4) {
        in->why = "truncated \\u escape";
        return -1;
    }
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
        else {
            in->why = "bad \\u escape";
            return -1;
        }
    }
    *out = v;
    return 0;
}

static size_t lb_utf8_put(char *o, unsigned cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xc0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    o[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* A string (the opening quote is next) decoded into a new buffer. */
static char *lb_json_string(struct lb_json_in *in, size_t *len)
{
    const char *q = ++in->p;
    while (q < in->end && *q != '"')
        q += *q == '\\' ? 2 : 1;
    if (q >= in->end)
        return lb_json_fail(in, "unterminated string");
    /* Unescaped is never longer than escaped (\u0800+ is 6 in, 3 out). */
    char *out = malloc((size_t)(q - in->p) + 1);
    if (out == NULL)
        return lb_json_fail(in, "out of memory");
    size_t n = 0;
    while (in->p < q) {
        unsigned char c = (unsigned char)*in->p++;
        unsigned cp, lo;
        if (c < 0x20)
            goto fail_ctl;
        if (c != '\\') {
            out[n++] = (char)c;
            continue;
        }
        switch (*in->p++) {
        case '"': cp = '"'; break;
        case '\\': cp = '\\'; break;
        case '/': cp = '/'; break;
        case 'b': cp = '\b'; break;
        case 'f': cp = '\f'; break;
        case 'n': cp = '\n'; break;
        case 'r': cp = '\r'; break;
        case 't': cp = '\t'; break;
        case 'u':
            if (lb_json_hex4(in, q, &cp) < 0)
                goto fail;
            if (cp >= 0xd800 && cp < 0xdc00) {
                if (q - in->p < 2 || in->p[0] != '\\' || in->p[1] != 'u')
                    goto fail_surrogate;
                in->p += 2;
                if (lb_json_hex4(in, q, &lo) < 0)
                    goto fail;
                if (lo < 0xdc00 || lo > 0xdfff)
                    goto fail_surrogate;
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            } else if (cp >= 0xdc00 && cp <= 0xdfff) {
                goto fail_surrogate;
            }
            break;
        default:
            in->why = "bad escape in a string";
            goto fail;
        }
        n += lb_utf8_put(out + n, cp);
    }
    out[n] = '\0';
    *len = n;
    in->p = q + 1;
    return out;
fail_ctl:
    in->why = "control character in a string";
    goto fail;
fail_surrogate:
    in->why = "lone surrogate in \\u escape";
fail:
    free(out);
    return NULL;
}

static struct lb_json *lb_json_node(struct lb_json_in *in, enum lb_json_type t)
{
    struct lb_json *j = calloc(1, sizeof(*j));
    if (j == NULL)
        return lb_json_fail(in, "out of memory");
    j->type = t;
    return j;
}

/* A number as RFC 8259 writes it: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
static struct lb_json *lb_json_number(struct lb_json_in *in)
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
    struct lb_json *j = lb_json_node(in, LB_JSON_NUMBER);
    if (j == NULL)
        return NULL;
    j->num = strtod(buf, NULL);
    if (integer) {
        errno = 0;
        long long v = strtoll(buf, NULL, 10);
        j->integer = errno == 0;
        j->i = v;
    }
    in->p = p;
    return j;
}

static struct lb_json *lb_json_value(struct lb_json_in *in, int depth);

static struct lb_json *lb_json_container(struct lb_json_in *in, int depth, bool object)
{
    struct lb_json *j = lb_json_node(in, object ? LB_JSON_OBJECT : LB_JSON_ARRAY);
    if (j == NULL)
        return NULL;
    struct lb_json **tail = &j->child;
    char close = object ? '}' : ']';
    in->p++;
    lb_json_ws(in);
    if (in->p < in->end && *in->p == close) {
        in->p++;
        return j;
    }
    for (;;) {
        char *key = NULL;
        lb_json_ws(in);
        if (object) {
            size_t klen;
            if (in->p >= in->end || *in->p != '"') {
                in->why = "expected a quoted key";
                goto fail;
            }
            key = lb_json_string(in, &klen);
            if (key == NULL)
                goto fail;
            if (strlen(key) != klen) {
                free(key);
                in->why = "\\u0000 in a string";
                goto fail;
            }
            lb_json_ws(in);
            if (in->p >= in->end || *in->p != ':') {
                free(key);
                in->why = "expected ':' after a key";
                goto fail;
            }
            in->p++;
        }
        struct lb_json *v = lb_json_value(in, depth + 1);
        if (v == NULL) {
            free(key);
            goto fail;
        }
        v->key = key;
        *tail = v;
        tail = &v->next;
        lb_json_ws(in);
        if (in->p < in->end && *in->p == ',') {
            in->p++;
            continue;
        }
        if (in->p < in->end && *in->p == close) {
            in->p++;
            return j;
        }
        in->why = object ? "expected ',' or '}'" : "expected ',' or ']'";
        goto fail;
    }
fail:
    lb_json_free(j);
    return NULL;
}

static bool lb_json_word(struct lb_json_in *in, const char *w)
{
    size_t n = strlen(w);
    if ((size_t)(in->end - in->p) < n || memcmp(in->p, w, n) != 0)
        return false;
    in->p += n;
    return true;
}

static struct lb_json *lb_json_value(struct lb_json_in *in, int depth)
{
    lb_json_ws(in);
    if (in->p >= in->end)
        return lb_json_fail(in, "value missing");
    char c = *in->p;
    if (c == '{' || c == '[') {
        if (depth >= LB_JSON_DEPTH)
            return lb_json_fail(in, "nested too deep");
        return lb_json_container(in, depth, c == '{');
    }
    if (c == '"') {
        size_t len;
        char *s = lb_json_string(in, &len);
        if (s == NULL)
            return NULL;
        struct lb_json *j = lb_json_node(in, LB_JSON_STRING);
        if (j == NULL) {
            free(s);
            return NULL;
        }
        j->str = s;
        j->len = len;
        return j;
    }
    struct lb_json *j = NULL;
    if (lb_json_word(in, "true") || lb_json_word(in, "false")) {
        j = lb_json_node(in, LB_JSON_BOOL);
        if (j != NULL)
            j->boolean = c == 't';
        return j;
    }
    if (lb_json_word(in, "null"))
        return lb_json_node(in, LB_JSON_NULL);
    return lb_json_number(in);
}

struct lb_json *lb_json_parse(const char *text, size_t len, const char **why)
{
    struct lb_json_in in = { text, text + len, NULL };
    struct lb_json *j = lb_json_value(&in, 0);
    if (j != NULL) {
        lb_json_ws(&in);
        if (in.p != in.end) {
            in.why = j->type == LB_JSON_OBJECT ? "trailing bytes after the object"
                                               : "trailing bytes after the value";
            lb_json_free(j);
            j = NULL;
        }
    }
    if (j == NULL)
        *why = in.why ? in.why : "not JSON";
    return j;
}

void lb_json_free(struct lb_json *j)
{
    while (j != NULL) {
        struct lb_json *next = j->next;
        lb_json_free(j->child);
        free(j->key);
        free(j->str);
        free(j);
        j = next;
    }
}

const struct lb_json *lb_json_get(const struct lb_json *j, const char *key)
{
    if (j == NULL || j->type != LB_JSON_OBJECT)
        return NULL;
    for (const struct lb_json *c = j->child; c != NULL; c = c->next)
        if (strcmp(c->key, key) == 0)
            return c;
    return NULL;
}

const char *lb_json_str(const struct lb_json *j)
{
    return j != NULL && j->type == LB_JSON_STRING ? j->str : NULL;
}

bool lb_json_copy_str(const struct lb_json *j, char *out, size_t cap)
{
    if (cap == 0)
        return false;
    out[0] = '\0';
    if (lb_json_str(j) == NULL || j->len >= cap || strlen(j->str) != j->len)
        return false;
    memcpy(out, j->str, j->len + 1);
    return true;
}

const struct lb_json *lb_json_elems(const struct lb_json *j)
{
    return j != NULL && j->type == LB_JSON_ARRAY ? j->child : NULL;
}

bool lb_json_get_str(const struct lb_json *j, const char *key, char *out, size_t cap)
{
    return lb_json_copy_str(lb_json_get(j, key), out, cap);
}

bool lb_json_int(const struct lb_json *j, int64_t *out)
{
    if (j == NULL)
        return false;
    if (j->type == LB_JSON_NUMBER) {
        if (j->integer) {
            *out = j->i;
            return true;
        }
        if (j->num < -9.2e18 || j->num > 9.2e18 || j->num != (double)(int64_t)j->num)
            return false;
        *out = (int64_t)j->num;
        return true;
    }
    if (j->type != LB_JSON_STRING || j->len == 0 || j->len > 18)
        return false;
    int64_t v = 0;
    for (size_t i = 0; i < j->len; i++) {
        if (j->str[i] < '0' || j->str[i] > '9')
            return false;
        v = v * 10 + (j->str[i] - '0');
    }
    *out = v;
    return true;
}

int lb_json_parse_flat(const char *buf, size_t len, struct lb_json_field *out, size_t max,
                       const char **why)
{
    struct lb_json_in in = { buf, buf + len, NULL };
    lb_json_ws(&in);
    if (in.p >= in.end || *in.p != '{') {
        *why = "expected a JSON object";
        return -1;
    }
    struct lb_json *j = lb_json_parse(buf, len, why);
    if (j == NULL)
        return -1;
    size_t n = 0;
    *why = NULL;
    for (const struct lb_json *c = j->child; c != NULL && *why == NULL; c = c->next, n++) {
        struct lb_json_field *f = &out[n];
        if (n >= max) {
            *why = "too many members";
            break;
        }
        memset(f, 0, sizeof(*f));
        f->type = c->type;
        f->boolean = c->boolean;
        f->integer = c->integer;
        f->i = c->i;
        f->num = c->num;
        if (c->type == LB_JSON_OBJECT || c->type == LB_JSON_ARRAY)
            *why = "nested objects and arrays are not accepted here";
        else if (strlen(c->key) >= sizeof(f->key) ||
                 (c->type == LB_JSON_STRING && c->len >= sizeof(f->str)))
            *why = "string too long";
        else if (c->type == LB_JSON_STRING && !lb_json_copy_str(c, f->str, sizeof(f->str)))
            *why = "\\u0000 in a string";
        else if (lb_json_find(out, n, c->key) != NULL)
            *why = "duplicate key";
        else
            strcpy(f->key, c->key);
    }
    lb_json_free(j);
    return *why == NULL ? (int)n : -1;
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

static int lb_b64_val(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+' || c == '-')
        return 62;
    if (c == '/' || c == '_')
        return 63;
    return -1;
}

long lb_base64_decode(const char *in, size_t len, char *out, size_t cap)
{
    while (len > 0 && in[len - 1] == '=')
        len--;
    if (len % 4 == 1 || cap == 0)
        return -1;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = lb_b64_val(in[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o + 1 >= cap)
                return -1;
            out[o++] = (char)((acc >> bits) & 0xff);
        }
    }
    out[o] = '\0';
    return (long)o;
}

long lb_base64_encode(const void *in, size_t len, char *out, size_t cap, bool url)
{
    const char *tbl = url ? "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
                          : "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *p = in;
    size_t need = url ? (len * 4 + 2) / 3 : (len + 2) / 3 * 4;
    if (need + 1 > cap)
        return -1;
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < len)
            v |= p[i + 2];
        out[o++] = tbl[(v >> 18) & 63];
        out[o++] = tbl[(v >> 12) & 63];
        if (i + 1 < len || !url)
            out[o++] = i + 1 < len ? tbl[(v >> 6) & 63] : '=';
        if (i + 2 < len || !url)
            out[o++] = i + 2 < len ? tbl[v & 63] : '=';
    }
    out[o] = '\0';
    return (long)o;
}
