/*
 * nkey_cli.c - tide nkey gen | pub | sign | verify: user nkeys from the
 * command line, with the output of nats' `nk` tool (gen prints the seed
 * line, then the public key line).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "nkey.h"
#include "nkey_cli.h"

#define SEEDFILE_MAX (1 << 20)

static int usage(void)
{
    fprintf(stderr, "usage: tide nkey gen\n"
                    "       tide nkey pub SEEDFILE\n"
                    "       tide nkey sign SEEDFILE MESSAGE\n"
                    "       tide nkey verify PUBKEY MESSAGE SIGNATURE\n");
    return 2;
}

/* Reports a failed decode of what (a file name or a key) as the kind of key
 * expected.  Returns 1, the exit code. */
static int report(const char *what, int rc, const char *expected)
{
    if (rc == NKEY_E_PREFIX)
        fprintf(stderr, "tide nkey: %s: not %s\n", what, expected);
    else
        fprintf(stderr, "tide nkey: %s: %s\n", what, nkey_strerror(rc));
    return 1;
}

int nkey_cli_seed_read(const char *path, unsigned char seed[NKEY_KEY_LEN])
{
    int rc = 1;
    size_t len = 0;
    char *buf = malloc(SEEDFILE_MAX);
    FILE *f = strcmp(path, "-") ? fopen(path, "r") : stdin;
    if (!f || !buf) {
        perror(path);
        goto fail;
    }
    len = fread(buf, 1, SEEDFILE_MAX, f);
    if (ferror(f)) {
        perror(path);
        goto fail;
    }
    int drc = nkey_seed_find(buf, len, seed);
    if (drc != NKEY_OK) {
        report(path, drc, "a user seed (SU...)");
        goto fail;
    }
    rc = 0;
fail:
    if (f && f != stdin)
        fclose(f);
    if (buf)
        OPENSSL_cleanse(buf, len);
    free(buf);
    return rc;
}

static int cmd_gen(void)
{
    char seed[NKEY_SEED_STR_LEN + 1], pub[NKEY_PUBLIC_STR_LEN + 1];
    int rc = nkey_generate_user(seed, pub);
    if (rc != NKEY_OK)
        return report("gen", rc, "");
    printf("%s\n%s\n", seed, pub);
    OPENSSL_cleanse(seed, sizeof seed);
    return 0;
}

static int cmd_pub(const char *path)
{
    unsigned char seed[NKEY_KEY_LEN], pub[NKEY_KEY_LEN];
    char out[NKEY_PUBLIC_STR_LEN + 1];
    int rc = nkey_cli_seed_read(path, seed);
    if (rc == 0 && (nkey_seed_public(seed, pub) != NKEY_OK ||
                    nkey_public_encode(pub, out, sizeof out) != NKEY_OK))
        rc = report(path, NKEY_E_CRYPTO, "");
    if (rc == 0)
        printf("%s\n", out);
    OPENSSL_cleanse(seed, sizeof seed);
    return rc;
}

static int cmd_sign(const char *path, const char *msg)
{
    unsigned char seed[NKEY_KEY_LEN];
    char sig[NKEY_SIG_STR_LEN + 1];
    int rc = nkey_cli_seed_read(path, seed);
    if (rc == 0) {
        int src = nkey_sign(seed, msg, strlen(msg), sig, sizeof sig);
        if (src != NKEY_OK)
            rc = report(path, src, "");
        else
            printf("%s\n", sig);
    }
    OPENSSL_cleanse(seed, sizeof seed);
    return rc;
}

static int cmd_verify(const char *pubkey, const char *msg, const char *sig)
{
    unsigned char pub[NKEY_KEY_LEN];
    int rc = nkey_public_decode(pubkey, pub);
    if (rc != NKEY_OK)
        return report(pubkey, rc, "a public user key (U...)");
    rc = nkey_verify(pub, msg, strlen(msg), sig, strlen(sig));
    if (rc == NKEY_E_ENCODING)
        return report("signature", rc, "");
    if (rc != NKEY_OK)
        return report(pubkey, rc, "");
    printf("verified\n");
    return 0;
}

int nkey_cli_main(int argc, char **argv)
{
    const char *verb = argc > 1 ? argv[1] : "";
    if (!strcmp(verb, "gen") && argc == 2)
        return cmd_gen();
    if (!strcmp(verb, "pub") && argc == 3)
        return cmd_pub(argv[2]);
    if (!strcmp(verb, "sign") && argc == 4)
        return cmd_sign(argv[2], argv[3]);
    if (!strcmp(verb, "verify") && argc == 5)
        return cmd_verify(argv[2], argv[3], argv[4]);
    return usage();
}
