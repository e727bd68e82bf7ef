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

#endif
