/*
 * fuzz_nkey.c - libFuzzer target for the nkey codec (src/base/nkey.c).
 *
 * For every input, taken as a string (up to its first NUL) and as bytes:
 *   - nkey_public_decode accepts it only if it is exactly 56 characters, and
 *     then nkey_public_encode gives the input back (one spelling per key);
 *   - nkey_seed_decode accepts it only if it is exactly 58 characters
 *     starting "SU", the seed encodes and decodes to the same bytes, and
 *     its signature of the input verifies with its public key;
 *   - nkey_seed_find over the bytes finds a seed only on a line that
 *     nkey_seed_decode takes;
 *   - nkey_verify refuses the input as a signature's encoding exactly when
 *     it is neither 86 base64url characters nor 86 standard base64
 *     characters and "==" (the reading written here), and never verifies
 *     it for a key whose signature it is not.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/base/nkey.h"

static int b64_char(char c, int url)
{
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))
        return 1;
    return url ? c == '-' || c == '_' : c == '+' || c == '/';
}

/* The two forms nats-server decodes a signature from. */
static int sig_form_ok(const char *s, size_t n)
{
    int url = n == NKEY_SIG_STR_LEN;
    if (!url && !(n == NKEY_SIG_STR_LEN + 2 && s[n - 2] == '=' && s[n - 1] == '='))
        return 0;
    for (size_t i = 0; i < NKEY_SIG_STR_LEN; i++)
        if (!b64_char(s[i], url))
            return 0;
    return 1;
}

static void check_strings(const char *s, size_t n)
{
    unsigned char key[NKEY_KEY_LEN], again[NKEY_KEY_LEN];
    char out[NKEY_SEED_STR_LEN + 1];
    if (nkey_public_decode(s, key) == NKEY_OK) {
        if (n != NKEY_PUBLIC_STR_LEN || nkey_public_encode(key, out, sizeof out) != NKEY_OK || strcmp(out, s))
            abort();
    }
    if (nkey_seed_decode(s, key) == NKEY_OK) {
        if (n != NKEY_SEED_STR_LEN || strncmp(s, "SU", 2))
            abort();
        if (nkey_seed_encode(key, out, sizeof out) != NKEY_OK || nkey_seed_decode(out, again) != NKEY_OK ||
            memcmp(key, again, sizeof key))
            abort();
        char sig[NKEY_SIG_STR_LEN + 1];
        if (nkey_seed_public(key, again) != NKEY_OK || nkey_sign(key, s, n, sig, sizeof sig) != NKEY_OK ||
            nkey_verify(again, s, n, sig, strlen(sig)) != NKEY_OK)
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* a key that no input was signed with */
    static const unsigned char pub[NKEY_KEY_LEN] = {
        0x3d, 0x40, 0x17, 0xc3, 0xe8, 0x43, 0x89, 0x5a, 0x92, 0xb7, 0x0a, 0xa7, 0x4d, 0x1b, 0x7e, 0xbc,
        0x9c, 0x98, 0x2c, 0xcf, 0x2e, 0xc4, 0x96, 0x8c, 0xc0, 0xcd, 0x55, 0xf1, 0x2a, 0xf4, 0x66, 0x0c};
    char *s = malloc(size + 1);
    if (!s)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    size_t n = strlen(s);
    check_strings(s, n);

    unsigned char seed[NKEY_KEY_LEN];
    if (nkey_seed_find((const char *)data, size, seed) == NKEY_OK) {
        char enc[NKEY_SEED_STR_LEN + 1];
        if (nkey_seed_encode(seed, enc, sizeof enc) != NKEY_OK)
            abort();
        /* the seed is on some line (its spelling may differ only in the two
         * bits after the last whole byte) */
        if (!memmem(data, size, enc, NKEY_SEED_STR_LEN - 1))
            abort();
    }

    int rc = nkey_verify(pub, "nonce", 5, (const char *)data, size);
    if ((rc == NKEY_E_ENCODING) != !sig_form_ok((const char *)data, size) || rc == NKEY_OK)
        abort();
    free(s);
    return 0;
}
