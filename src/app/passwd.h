/* passwd.h - tide passwd: a bcrypt hash for auth { users = { { password = ... } } }. */
#ifndef TIDE_PASSWD_H
#define TIDE_PASSWD_H

/* Reads a password (twice, not echoed, from a terminal; else one line of
 * stdin) and prints its bcrypt hash ($2b$, cost 11; --cost N from 4 to
 * 31).  Returns the exit code: 0, 1 on a failure, 2 on a usage error. */
int passwd_main(int argc, char **argv);

#endif
