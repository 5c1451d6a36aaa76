/* JWS for ACME (RFC 7515/8555) with OpenSSL: the account's ES256 key,
 * created once and kept in a 0600 file, its JWK and thumbprint (RFC 7638),
 * flattened JSON signatures (base64url: shared/json.h). */
#ifndef LB_JWS_H
#define LB_JWS_H

#include <stddef.h>

struct evp_pkey_st;

/* A new P-256 key. NULL when OpenSSL fails. */
struct evp_pkey_st *lb_jws_key_new(void);

/* The PEM (PKCS#8) of KEY, malloc'd, or NULL. */
char *lb_jws_key_pem(struct evp_pkey_st *key);

/* The key in PATH, or a new one written there (0600, atomically) when
 * there is none. NULL with ERR when the file is unreadable or not a P-256
 * key, or cannot be written. */
struct evp_pkey_st *lb_jws_key_load(const char *path, char *err, size_t errlen);

/* KEY's JWK, {"crv":"P-256","kty":"EC","x":"...","y":"..."} (members in
 * the order of RFC 7638, so it is also what the thumbprint hashes), into
 * OUT (at least 160 bytes). 0 or -1. */
int lb_jws_jwk(struct evp_pkey_st *key, char *out, size_t cap);

/* base64url(SHA-256(JWK)) into OUT (at least 44 bytes). 0 or -1. */
int lb_jws_thumbprint(const char *jwk, char *out);

/* The protected header {"alg":"ES256","kid"|"jwk":...,"nonce":...,"url":...}
 * of an ACME request: with KID when it is not "" (an account's URL), else
 * with JWK (the key's, JSON); KID, NONCE and URL come from the server and
 * are escaped. malloc'd, or NULL. */
char *lb_jws_protected(const char *kid, const char *jwk, const char *nonce, const char *url);

/* The flattened JWS {"protected":...,"payload":...,"signature":...} of
 * PAYLOAD ("" for POST-as-GET) with header PROTECTED (JSON), signed ES256
 * by KEY; malloc'd, or NULL. */
char *lb_jws_sign(struct evp_pkey_st *key, const char *protected_json, const char *payload);

/* Write DATA (LEN bytes) to PATH atomically: a 0600 temporary file in the
 * same directory, fsync'd, renamed over PATH. 0, or -1 with errno. */
int lb_jws_write_file(const char *path, const void *data, size_t len);

#endif
