/* A minimal JSON reader for the admin API's request bodies: one flat
 * object whose values are strings, numbers, true, false or null. Nested
 * objects and arrays are refused, not skipped: no body the API takes has
 * them, and a client that sends one has made a mistake worth an answer.
 * No allocation; keys and strings are copied, decoded, into the fields. */
#ifndef LB_JSON_H
#define LB_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#define LB_JSON_KEY_MAX 64
#define LB_JSON_STR_MAX 256

enum lb_json_type { LB_JSON_NULL, LB_JSON_BOOL, LB_JSON_NUMBER, LB_JSON_STRING };

struct lb_json_field {
    char key[LB_JSON_KEY_MAX];
    enum lb_json_type type;
    bool boolean;
    bool integer;               /* NUMBER without fraction or exponent, in long long */
    long long i;
    double num;
    char str[LB_JSON_STR_MAX];  /* UTF-8, NUL-terminated (a \u0000 is refused) */
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
/* The same for at most MAX bytes of S (a fixed-size field in shm, which a
 * writer may have left without its NUL). */
void lb_json_write_stringn(FILE *out, const char *s, size_t max);

#endif
