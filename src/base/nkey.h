/*
 * nkey.h - NATS nkeys: Ed25519 identities written as base32 strings.
 *
 * A public user key is "U" + 55 characters: base32 (RFC 4648 alphabet, no
 * padding) of a prefix byte (20 << 3), the 32-byte Ed25519 public key and a
 * CRC-16/XMODEM of those 33 bytes, little-endian.  A user seed is "SU" + 56
 * characters: two prefix bytes (the seed type 18 << 3 and the user type
 * spread over both), the 32-byte Ed25519 seed and the CRC-16.  Signatures
 * travel as base64url without padding, as nats-server expects in CONNECT's
 * "sig" field; the client signs the nonce string the server put in INFO.
 *
 * base32 and the CRC-16 are written here; every cryptographic step (keys,
 * signing, verification, random bytes) and base64 come from OpenSSL's
 * libcrypto.  All functions are reentrant and may be called from any thread.
 */
#ifndef TIDE_NKEY_H
#define TIDE_NKEY_H

#include <stddef.h>

#define NKEY_KEY_LEN 32        /* raw Ed25519 public key or seed */
#define NKEY_PUBLIC_STR_LEN 56 /* "U...", without the NUL */
#define NKEY_SEED_STR_LEN 58   /* "SU...", without the NUL */
#define NKEY_SIG_LEN 64        /* raw Ed25519 signature */
#define NKEY_SIG_STR_LEN 86    /* base64url, no padding, without the NUL */
#define NKEY_NONCE_STR_LEN 15  /* 11 random bytes in base64url, as nats-server */

/* Results; every failure is negative. */
enum {
    NKEY_OK = 0,
    NKEY_E_ENCODING = -1,  /* not base32 / base64 of the right length */
    NKEY_E_CHECKSUM = -2,  /* CRC-16 does not match */
    NKEY_E_PREFIX = -3,    /* a valid nkey, but not of the kind asked for */
    NKEY_E_SIGNATURE = -4, /* the signature does not verify */
    NKEY_E_SPACE = -5,     /* output buffer too small */
    NKEY_E_CRYPTO = -6     /* libcrypto failed (allocation, no randomness) */
};

/* A short English description of an NKEY_* result ("bad checksum", ...).
 * Never NULL; the string is static. */
const char *nkey_strerror(int rc);

/* Decodes the public user key `s` (NUL-terminated, exactly
 * NKEY_PUBLIC_STR_LEN characters) into pub.  Returns NKEY_OK,
 * NKEY_E_ENCODING (length, characters), NKEY_E_CHECKSUM, or NKEY_E_PREFIX
 * for a valid nkey of another kind (an account "A...", a seed "S...").
 * pub is written only on success. */
int nkey_public_decode(const char *s, unsigned char pub[NKEY_KEY_LEN]);

/* Encodes pub as a public user key: NKEY_PUBLIC_STR_LEN characters and a
 * NUL into out (outsz >= NKEY_PUBLIC_STR_LEN + 1, else NKEY_E_SPACE). */
int nkey_public_encode(const unsigned char pub[NKEY_KEY_LEN], char *out, size_t outsz);

/* Decodes the user seed `s` (NUL-terminated, exactly NKEY_SEED_STR_LEN
 * characters, "SU...") into seed.  Same results as nkey_public_decode;
 * NKEY_E_PREFIX for a public key or the seed of another kind ("SA...").
 * The caller should wipe seed (OPENSSL_cleanse) when done with it. */
int nkey_seed_decode(const char *s, unsigned char seed[NKEY_KEY_LEN]);

/* Encodes seed as a user seed ("SU...", NKEY_SEED_STR_LEN characters and a
 * NUL) into out (outsz >= NKEY_SEED_STR_LEN + 1, else NKEY_E_SPACE). */
int nkey_seed_encode(const unsigned char seed[NKEY_KEY_LEN], char *out, size_t outsz);

/* Finds the first line of text[0..len) that is a user seed, as nk and the
 * NATS clients read a seed or .creds file (surrounding blanks are ignored).
 * Returns NKEY_OK with the seed; else NKEY_E_PREFIX if some line is an nkey
 * of another kind, else NKEY_E_CHECKSUM if some line failed only its
 * checksum, else NKEY_E_ENCODING. */
int nkey_seed_find(const char *text, size_t len, unsigned char seed[NKEY_KEY_LEN]);

/* The Ed25519 public key of seed.  NKEY_OK or NKEY_E_CRYPTO. */
int nkey_seed_public(const unsigned char seed[NKEY_KEY_LEN], unsigned char pub[NKEY_KEY_LEN]);

/* Signs msg[0..len) with seed and writes the signature in base64url without
 * padding (NKEY_SIG_STR_LEN characters and a NUL) into out.  Returns NKEY_OK,
 * NKEY_E_SPACE (outsz too small) or NKEY_E_CRYPTO. */
int nkey_sign(const unsigned char seed[NKEY_KEY_LEN], const void *msg, size_t len, char *out,
              size_t outsz);

/* Checks that sig[0..sig_len) is pub's Ed25519 signature of msg[0..msg_len)
 * (for a login: msg is the nonce string sent in INFO).  The signature is
 * accepted in the two forms nats-server accepts: base64url without padding
 * (86 characters) or standard base64 with padding (88).  Returns NKEY_OK,
 * NKEY_E_ENCODING (not such a base64 string), NKEY_E_SIGNATURE or
 * NKEY_E_CRYPTO. */
int nkey_verify(const unsigned char pub[NKEY_KEY_LEN], const void *msg, size_t msg_len,
                const char *sig, size_t sig_len);

/* Writes a fresh nonce for INFO: 11 random bytes in base64url without
 * padding (NKEY_NONCE_STR_LEN characters and a NUL; n >= 16, else
 * NKEY_E_SPACE).  NKEY_E_CRYPTO if the random generator fails. */
int nkey_nonce(char *out, size_t n);

/* Makes a new user key pair from fresh random bytes: the seed string
 * (seed_out, at least NKEY_SEED_STR_LEN + 1 bytes) and its public key string
 * (pub_out, at least NKEY_PUBLIC_STR_LEN + 1 bytes).  NKEY_OK or
 * NKEY_E_CRYPTO. */
int nkey_generate_user(char *seed_out, char *pub_out);

#endif
