/*
 * nkey_cli.h - tide nkey: make and inspect NATS nkeys, like nats' `nk`.
 */
#ifndef TIDE_NKEY_CLI_H
#define TIDE_NKEY_CLI_H

/* Runs `tide nkey VERB ...` (argv[0] is "nkey"):
 *   gen                      a new user seed and its public key, one a line
 *   pub SEEDFILE             the public key of the first user seed in SEEDFILE
 *   sign SEEDFILE MESSAGE    MESSAGE signed by that seed (base64url)
 *   verify PUBKEY MESSAGE SIGNATURE
 * SEEDFILE "-" is standard input.  Returns the exit code: 0 ok, 1 failure
 * (bad key, signature that does not verify, unreadable file), 2 usage. */
int nkey_cli_main(int argc, char **argv);

/* Reads the first user seed of path ("-": standard input) into seed, as nk
 * and the NATS clients read a seed or .creds file.  Returns 0, or 1 after
 * saying why on stderr.  The caller wipes seed (OPENSSL_cleanse) after use. */
int nkey_cli_seed_read(const char *path, unsigned char seed[32]);

#endif
