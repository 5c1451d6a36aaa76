/* lbd's one JSON reader and string writer. The whole text is parsed at
 * once into a tree of nodes, strings unescaped to UTF-8: the registries'
 * answers (etcd's gateway, Consul), the ACME server's answers, and the
 * admin API's request bodies, which take one flat object through
 * lb_json_parse_flat. Bounded: depth LB_JSON_DEPTH, and the caller's text
 * size (the admin API's 64 KiB, the answers' caps). */
#ifndef LB_JSON_H
#define LB_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define LB_JSON_DEPTH 32

enum lb_json_type {
    LB_JSON_NULL,
    LB_JSON_BOOL,
    LB_JSON_NUMBER,
    LB_JSON_STRING,
    LB_JSON_ARRAY,
    LB_JSON_OBJECT,
};

struct lb_json {
    enum lb_json_type type;
    bool boolean;                       /* BOOL */
    bool integer;                       /* NUMBER without fraction or exponent, fits in I */
    long long i;
    double num;                         /* NUMBER */
    char *key;                          /* member of an object: its name (never holds a NUL) */
    char *str;                          /* STRING: unescaped, NUL-terminated (may hold NULs) */
    size_t len;                         /* STRING: its length */
    struct lb_json *child;              /* ARRAY, OBJECT: first element */
    struct lb_json *next;               /* next sibling */
};

/* Parse TEXT[0..len) (one value, whitespace around it). NULL, with *why,
 * when it is not JSON (RFC 8259) or runs out of memory. Free with
 * lb_json_free. */
struct lb_json *lb_json_parse(const char *text, size_t len, const char **why);
void lb_json_free(struct lb_json *j);

/* Member KEY of object J (NULL: none, or J is not an object). */
const struct lb_json *lb_json_get(const struct lb_json *j, const char *key);
/* J's string, or NULL when it is not one. */
const char *lb_json_str(const struct lb_json *j);
/* J's first element when J is an array, else NULL: the others follow by
 * ->next. */
const struct lb_json *lb_json_elems(const struct lb_json *j);
/* J, a string, copied into OUT (CAP bytes with the NUL). False, OUT
 * emptied, when J is NULL or not a string, holds a NUL, or is longer than
 * OUT: refused, not truncated. */
bool lb_json_copy_str(const struct lb_json *j, char *out, size_t cap);
/* The same for member KEY of J. */
bool lb_json_get_str(const struct lb_json *j, const char *key, char *out, size_t cap);
/* J as an integer: a number, or a string of digits (etcd writes int64 as
 * strings). false when it is neither. */
bool lb_json_int(const struct lb_json *j, int64_t *out);

/* The admin API's view: one flat object whose values are strings, numbers,
 * true, false or null. Nested objects and arrays and duplicate keys are
 * refused, not skipped: no body the API takes has them, and a client that
 * sends one has made a mistake worth an answer. */
#define LB_JSON_KEY_MAX 64
#define LB_JSON_STR_MAX 256

struct lb_json_field {
    char key[LB_JSON_KEY_MAX];
    enum lb_json_type type;             /* NULL, BOOL, NUMBER or STRING */
    bool boolean;
    bool integer;                       /* as in struct lb_json */
    long long i;
    double num;
    char str[LB_JSON_STR_MAX];          /* UTF-8, NUL-terminated (a \u0000 is refused) */
};

/* Parse BUF[0..LEN) (whitespace around the object allowed) into at most
 * MAX fields. The number of fields, or -1 with *WHY saying what is wrong. */
int lb_json_parse_flat(const char *buf, size_t len, struct lb_json_field *out, size_t max,
                       const char **why);

/* The field named KEY among N, or NULL. */
const struct lb_json_field *lb_json_find(const struct lb_json_field *f, size_t n,
                                         const char *key);

/* Write S as a JSON string, quoted and escaped. */
void lb_json_write_string(FILE *out, const char *s);
/* The same for S's first MAX bytes at most (a fixed-size field in shm that
 * fills it without a NUL). */
void lb_json_write_stringn(FILE *out, const char *s, size_t max);

/* Decode base64 IN (standard or URL alphabet, padding optional) into OUT
 * (at most CAP bytes, NUL-terminated: CAP - 1 data bytes). Its length, or -1. */
long lb_base64_decode(const char *in, size_t len, char *out, size_t cap);
/* Encode IN[0..len) into OUT (CAP bytes with the NUL): standard base64,
 * padded, or with URL base64url unpadded (RFC 4648 5, as JWS wants it).
 * Its length, or -1 when OUT is too small. */
long lb_base64_encode(const void *in, size_t len, char *out, size_t cap, bool url);

#endif
