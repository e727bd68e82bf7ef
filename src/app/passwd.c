/* passwd.c - see passwd.h. */
#include <crypt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include "passwd.h"

#define PASSWD_COST 11 /* about 100 ms a check: slow to guess, fast enough to log in */
#define PASSWD_MAX 1024

/* Reads one line of f into buf without its line end.  With prompt, from a
 * terminal with echo off.  0, or -1 at end of input or on an error. */
static int read_secret(FILE *f, const char *prompt, char *buf, size_t n)
{
    struct termios was, quiet;
    int tty = prompt && isatty(fileno(f)) && tcgetattr(fileno(f), &was) == 0;
    if (tty) {
        fprintf(stderr, "%s", prompt);
        quiet = was;
        quiet.c_lflag &= ~(tcflag_t)ECHO;
        tcsetattr(fileno(f), TCSAFLUSH, &quiet);
    }
    char *got = fgets(buf, (int)n, f);
    if (tty) {
        tcsetattr(fileno(f), TCSAFLUSH, &was);
        fprintf(stderr, "\n");
    }
    if (!got)
        return -1;
    buf[strcspn(buf, "\r\n")] = '\0';
    return 0;
}

/* The hash of pw at cost, printed.  0 or 1. */
static int print_hash(const char *pw, int cost)
{
    char salt[CRYPT_GENSALT_OUTPUT_SIZE];
    struct crypt_data *cd = calloc(1, sizeof *cd);
    int rc = 1;
    if (!cd || !crypt_gensalt_rn("$2b$", (unsigned long)cost, NULL, 0, salt, sizeof salt)) {
        fprintf(stderr, "tide passwd: cannot make a salt (bcrypt unavailable?)\n");
        goto out;
    }
    const char *h = crypt_r(pw, salt, cd);
    if (!h || h[0] == '*') {
        fprintf(stderr, "tide passwd: bcrypt failed\n");
        goto out;
    }
    printf("%s\n", h);
    rc = 0;
out:
    free(cd);
    return rc;
}

int passwd_main(int argc, char **argv)
{
    char a[PASSWD_MAX], b[PASSWD_MAX];
    int cost = PASSWD_COST, rc = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--cost") && i + 1 < argc) {
            cost = atoi(argv[++i]);
            if (cost < 4 || cost > 31) {
                fprintf(stderr, "tide passwd: --cost must be from 4 to 31\n");
                return 2;
            }
        } else {
            fprintf(stderr, "usage: tide passwd [--cost N]   (reads the password from the terminal or stdin)\n");
            return 2;
        }
    }
    int tty = isatty(STDIN_FILENO);
    if (read_secret(stdin, tty ? "Password: " : NULL, a, sizeof a) < 0) {
        fprintf(stderr, "tide passwd: no password given\n");
        goto out;
    }
    if (tty && (read_secret(stdin, "Again: ", b, sizeof b) < 0 || strcmp(a, b))) {
        fprintf(stderr, "tide passwd: the two passwords differ\n");
        goto out;
    }
    if (!a[0]) {
        fprintf(stderr, "tide passwd: the password is empty\n");
        goto out;
    }
    rc = print_hash(a, cost);
out:
    explicit_bzero(a, sizeof a);
    explicit_bzero(b, sizeof b);
    return rc;
}
