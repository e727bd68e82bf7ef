/* nkey.c - NATS nkeys: base32 + CRC-16 strings around Ed25519 keys from
 * libcrypto.  The encoding follows github.com/nats-io/nkeys (strkey.go). */
#include "nkey.h"

#include <stdint.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#define PREFIX_SEED (18 << 3) /* 'S' */
#define PREFIX_USER (20 << 3) /* 'U' */
#define MAX_STR 64            /* longest nkey string looked at (40 raw bytes) */
#define MAX_RAW (MAX_STR * 5 / 8)
#define NONCE_RAW_LEN 11

static const char B32[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

const char *nkey_strerror(int rc)
{
    switch (rc) {
    case NKEY_OK: return "ok";
    case NKEY_E_ENCODING: return "bad encoding (length or characters)";
    case NKEY_E_CHECKSUM: return "bad checksum";
    case NKEY_E_PREFIX: return "wrong kind of nkey";
    case NKEY_E_SIGNATURE: return "signature does not verify";
    case NKEY_E_SPACE: return "output buffer too small";
    case NKEY_E_CRYPTO: return "crypto library failure";
    }
    return "unknown nkey error";
}

/* CRC-16/XMODEM (polynomial 0x1021, initial value 0), the nkeys checksum. */
static uint16_t crc16(const unsigned char *p, size_t n)
{
    uint16_t crc = 0;
    while (n--) {
        crc ^= (uint16_t)(*p++ << 8);
        for (int k = 0; k < 8; k++)
            crc = crc & 0x8000 ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
    return crc;
}

/* base32 without padding of in[0..n) into out (room for n*8/5 + 2). */
static void b32_encode(const unsigned char *in, size_t n, char *out)
{
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        acc = (acc << 8) | in[i];
        bits += 8;
        while (bits >= 5) {
            bits -= 5;
            *out++ = B32[(acc >> bits) & 31];
        }
    }
    if (bits)
        *out++ = B32[(acc << (5 - bits)) & 31];
    *out = '\0';
}

/* Decodes base32 without padding.  Bits left over after the last whole
 * byte are ignored, as Go's decoder does; a length that no encoding
 * produces (1, 3 or 6 characters into a group of 8) is refused, where Go's
 * decoder drops such a tail.  Returns the number of bytes, or -1. */
static int b32_decode(const char *s, size_t n, unsigned char *out)
{
    uint32_t acc = 0;
    int bits = 0, len = 0;
    size_t tail = n % 8;
    if (tail == 1 || tail == 3 || tail == 6)
        return -1;
    for (size_t i = 0; i < n; i++) {
        const char *c = s[i] ? strchr(B32, s[i]) : NULL;
        if (!c)
            return -1;
        acc = (acc << 5) | (uint32_t)(c - B32);
        bits += 5;
        if (bits >= 8) {
            bits -= 8;
            out[len++] = (unsigned char)(acc >> bits);
        }
    }
    return len;
}

/* base32-decodes s[0..n) and checks its CRC-16.  Returns the length of
 * what precedes the CRC (prefix and key) in raw, or an NKEY_E_* result. */
static int raw_decode(const char *s, size_t n, unsigned char raw[MAX_RAW])
{
    if (n > MAX_STR)
        return NKEY_E_ENCODING;
    int len = b32_decode(s, n, raw);
    if (len < 4)
        return NKEY_E_ENCODING;
    len -= 2;
    uint16_t want = (uint16_t)(raw[len] | raw[len + 1] << 8);
    if (crc16(raw, (size_t)len) != want)
        return NKEY_E_CHECKSUM;
    return len;
}

/* prefix bytes, key, CRC-16 (little-endian), base32 into out. */
static int raw_encode(const unsigned char *prefix, size_t plen, const unsigned char key[NKEY_KEY_LEN],
                      char *out, size_t outsz, size_t want)
{
    unsigned char raw[MAX_RAW];
    if (outsz < want + 1)
        return NKEY_E_SPACE;
    memcpy(raw, prefix, plen);
    memcpy(raw + plen, key, NKEY_KEY_LEN);
    uint16_t crc = crc16(raw, plen + NKEY_KEY_LEN);
    raw[plen + NKEY_KEY_LEN] = (unsigned char)(crc & 0xff);
    raw[plen + NKEY_KEY_LEN + 1] = (unsigned char)(crc >> 8);
    b32_encode(raw, plen + NKEY_KEY_LEN + 2, out);
    OPENSSL_cleanse(raw, sizeof raw);
    return NKEY_OK;
}

int nkey_public_decode(const char *s, unsigned char pub[NKEY_KEY_LEN])
{
    unsigned char raw[MAX_RAW];
    int len = raw_decode(s, strlen(s), raw);
    if (len < 0)
        return len;
    if (raw[0] != PREFIX_USER || len != 1 + NKEY_KEY_LEN)
        return NKEY_E_PREFIX;
    memcpy(pub, raw + 1, NKEY_KEY_LEN);
    return NKEY_OK;
}

int nkey_public_encode(const unsigned char pub[NKEY_KEY_LEN], char *out, size_t outsz)
{
    const unsigned char prefix[1] = {PREFIX_USER};
    return raw_encode(prefix, 1, pub, out, outsz, NKEY_PUBLIC_STR_LEN);
}

/* A seed's two prefix bytes spread the seed type (5 bits) and the public
 * type (8 bits) over 13 bits so that both show as letters: "SU" for a
 * user. */
static int seed_decode(const char *s, size_t n, unsigned char seed[NKEY_KEY_LEN])
{
    unsigned char raw[MAX_RAW];
    int rc = raw_decode(s, n, raw);
    if (rc >= 0) {
        if (raw[0] != (PREFIX_SEED | PREFIX_USER >> 5) || raw[1] != (PREFIX_USER & 31) << 3 ||
            rc != 2 + NKEY_KEY_LEN)
            rc = NKEY_E_PREFIX;
        else {
            memcpy(seed, raw + 2, NKEY_KEY_LEN);
            rc = NKEY_OK;
        }
    }
    OPENSSL_cleanse(raw, sizeof raw);
    return rc;
}

int nkey_seed_decode(const char *s, unsigned char seed[NKEY_KEY_LEN])
{
    return seed_decode(s, strlen(s), seed);
}

int nkey_seed_encode(const unsigned char seed[NKEY_KEY_LEN], char *out, size_t outsz)
{
    const unsigned char prefix[2] = {PREFIX_SEED | PREFIX_USER >> 5, (PREFIX_USER & 31) << 3};
    return raw_encode(prefix, 2, seed, out, outsz, NKEY_SEED_STR_LEN);
}

int nkey_seed_find(const char *text, size_t len, unsigned char seed[NKEY_KEY_LEN])
{
    int rc = NKEY_E_ENCODING;
    size_t i = 0;
    while (i < len) {
        size_t end = i;
        while (end < len && text[end] != '\n')
            end++;
        size_t a = i, b = end;
        while (a < b && (text[a] == ' ' || text[a] == '\t'))
            a++;
        while (b > a && (text[b - 1] == ' ' || text[b - 1] == '\t' || text[b - 1] == '\r'))
            b--;
        if (b > a) {
            /* Keep the failure of the line that came closest to a user
             * seed: a key of another kind, else a bad checksum. */
            int line = seed_decode(text + a, b - a, seed);
            if (line == NKEY_OK)
                return line;
            rc = line < rc ? line : rc;
        }
        i = end + 1;
    }
    return rc;
}

/* libcrypto keeps failures in a per-thread queue; leave it empty so that a
 * bad key or signature is not reported later by an unrelated TLS call. */
static int crypto_fail(int rc)
{
    ERR_clear_error();
    return rc;
}

int nkey_seed_public(const unsigned char seed[NKEY_KEY_LEN], unsigned char pub[NKEY_KEY_LEN])
{
    size_t n = NKEY_KEY_LEN;
    int rc = NKEY_E_CRYPTO;
    EVP_PKEY *key = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, seed, NKEY_KEY_LEN);
    if (!key || EVP_PKEY_get_raw_public_key(key, pub, &n) != 1 || n != NKEY_KEY_LEN)
        goto fail;
    rc = NKEY_OK;
fail:
    EVP_PKEY_free(key);
    return rc == NKEY_OK ? rc : crypto_fail(rc);
}

/* base64 of in[0..n) (n <= NKEY_SIG_LEN) in the URL alphabet, without
 * padding, into out (room for 4 * n / 3 + 2 bytes).  libcrypto writes the
 * padded form and a NUL, longer than the result: it writes to tmp. */
static void b64url_encode(const unsigned char *in, size_t n, char *out)
{
    unsigned char tmp[(NKEY_SIG_LEN + 2) / 3 * 4 + 1];
    int len = EVP_EncodeBlock(tmp, in, (int)n);
    while (len > 0 && tmp[len - 1] == '=')
        len--;
    for (int i = 0; i < len; i++)
        out[i] = tmp[i] == '+' ? '-' : tmp[i] == '/' ? '_' : (char)tmp[i];
    out[len] = '\0';
}

int nkey_sign(const unsigned char seed[NKEY_KEY_LEN], const void *msg, size_t len, char *out,
              size_t outsz)
{
    unsigned char sig[NKEY_SIG_LEN];
    size_t siglen = sizeof sig;
    int rc = NKEY_E_SPACE;
    EVP_PKEY *key = NULL;
    EVP_MD_CTX *ctx = NULL;
    if (outsz < NKEY_SIG_STR_LEN + 1)
        goto fail;
    rc = NKEY_E_CRYPTO;
    key = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, seed, NKEY_KEY_LEN);
    ctx = EVP_MD_CTX_new();
    if (!key || !ctx || EVP_DigestSignInit(ctx, NULL, NULL, NULL, key) != 1 ||
        EVP_DigestSign(ctx, sig, &siglen, msg, len) != 1 || siglen != NKEY_SIG_LEN)
        goto fail;
    b64url_encode(sig, siglen, out);
    rc = NKEY_OK;
fail:
    EVP_MD_CTX_free(ctx);
    EVP_PKEY_free(key);
    return rc == NKEY_OK ? rc : crypto_fail(rc);
}

/* Decodes a signature in one of the two forms nats-server takes (Go's
 * base64.RawURLEncoding, else base64.StdEncoding) into sig.  The check of
 * the alphabet is done here; the decoding itself by libcrypto, which knows
 * only the standard alphabet with padding. */
static int sig_decode(const char *s, size_t n, unsigned char sig[NKEY_SIG_LEN])
{
    char std[NKEY_SIG_STR_LEN + 3];
    unsigned char raw[(sizeof std - 1) / 4 * 3];
    int url = n == NKEY_SIG_STR_LEN;
    if (!url && (n != NKEY_SIG_STR_LEN + 2 || s[n - 2] != '=' || s[n - 1] != '='))
        return NKEY_E_ENCODING;
    for (size_t i = 0; i < NKEY_SIG_STR_LEN; i++) {
        char c = s[i];
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))
            std[i] = c;
        else if (c == (url ? '-' : '+'))
            std[i] = '+';
        else if (c == (url ? '_' : '/'))
            std[i] = '/';
        else
            return NKEY_E_ENCODING;
    }
    memcpy(std + NKEY_SIG_STR_LEN, "==", 3);
    if (EVP_DecodeBlock(raw, (const unsigned char *)std, NKEY_SIG_STR_LEN + 2) != (int)sizeof raw)
        return crypto_fail(NKEY_E_ENCODING);
    memcpy(sig, raw, NKEY_SIG_LEN);
    return NKEY_OK;
}

int nkey_verify(const unsigned char pub[NKEY_KEY_LEN], const void *msg, size_t msg_len,
                const char *sig_b64, size_t sig_len)
{
    unsigned char sig[NKEY_SIG_LEN];
    EVP_PKEY *key = NULL;
    EVP_MD_CTX *ctx = NULL;
    int rc = sig_decode(sig_b64, sig_len, sig);
    if (rc != NKEY_OK)
        goto fail;
    rc = NKEY_E_CRYPTO;
    key = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, pub, NKEY_KEY_LEN);
    ctx = EVP_MD_CTX_new();
    if (!key || !ctx || EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, key) != 1)
        goto fail;
    rc = EVP_DigestVerify(ctx, sig, sizeof sig, msg, msg_len) == 1 ? NKEY_OK : NKEY_E_SIGNATURE;
fail:
    EVP_MD_CTX_free(ctx);
    EVP_PKEY_free(key);
    return rc == NKEY_OK ? rc : crypto_fail(rc);
}

int nkey_nonce(char *out, size_t n)
{
    unsigned char raw[NONCE_RAW_LEN];
    if (n < NKEY_NONCE_STR_LEN + 1)
        return NKEY_E_SPACE;
    if (RAND_bytes(raw, sizeof raw) != 1)
        return crypto_fail(NKEY_E_CRYPTO);
    b64url_encode(raw, sizeof raw, out);
    return NKEY_OK;
}

int nkey_generate_user(char *seed_out, char *pub_out)
{
    unsigned char seed[NKEY_KEY_LEN], pub[NKEY_KEY_LEN];
    int rc = NKEY_E_CRYPTO;
    if (RAND_priv_bytes(seed, sizeof seed) != 1) {
        rc = crypto_fail(rc);
        goto fail;
    }
    rc = nkey_seed_public(seed, pub);
    if (rc == NKEY_OK)
        rc = nkey_seed_encode(seed, seed_out, NKEY_SEED_STR_LEN + 1);
    if (rc == NKEY_OK)
        rc = nkey_public_encode(pub, pub_out, NKEY_PUBLIC_STR_LEN + 1);
fail:
    OPENSSL_cleanse(seed, sizeof seed);
    return rc;
}
