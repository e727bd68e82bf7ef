/*
 * auth_c.c - what the NATS C client (libnats) makes of a server's
 * authentication and permissions, for tests/auth_spec.lua.
 *
 * Usage: auth_c <port> user PASSWORD USER [SUBJECT]
 *        auth_c <port> token TOKEN [SUBJECT]
 *        auth_c <port> nkey PUBKEY SEEDFILE [SUBJECT]
 *        auth_c <port> none [SUBJECT]
 * Connects (no reconnect) with those credentials and prints "connected",
 * or "error <status text>" when the connection is refused; with SUBJECT,
 * subscribes to it, flushes, and prints each asynchronous error the
 * client reports ("async <status text>: <last error>").  Every wait is
 * bounded (2 s connect, 2 s flush); an alarm ends the program after 10 s.
 */
#include <nats/nats.h>

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void on_alarm(int sig)
{
    static const char msg[] = "timeout\n";
    ssize_t w = write(STDOUT_FILENO, msg, sizeof msg - 1);
    (void)w;
    (void)sig;
    _exit(2);
}

static void on_error(natsConnection *nc, natsSubscription *sub, natsStatus err, void *closure)
{
    const char *last = NULL;
    (void)sub;
    (void)closure;
    natsConnection_GetLastError(nc, &last);
    printf("async %s: %s\n", natsStatus_GetText(err), last ? last : "");
    fflush(stdout);
}

int main(int argc, char **argv)
{
    natsOptions *opts = NULL;
    natsConnection *nc = NULL;
    natsSubscription *sub = NULL;
    char url[64];
    const char *subject = NULL;
    if (argc < 3) {
        fprintf(stderr, "usage: auth_c PORT user PASS USER [SUBJECT] | token TOKEN [SUBJECT] | nkey PUB SEEDFILE [SUBJECT] | "
                        "none [SUBJECT]\n");
        return 2;
    }
    signal(SIGALRM, on_alarm);
    alarm(10);
    snprintf(url, sizeof url, "nats://127.0.0.1:%s", argv[1]);
    if (natsOptions_Create(&opts) != NATS_OK)
        return 1;
    natsOptions_SetURL(opts, url);
    natsOptions_SetAllowReconnect(opts, false);
    natsOptions_SetTimeout(opts, 2000);
    natsOptions_SetErrorHandler(opts, on_error, NULL);
    if (!strcmp(argv[2], "user") && argc >= 5) {
        natsOptions_SetUserInfo(opts, argv[4], argv[3]);
        subject = argc > 5 ? argv[5] : NULL;
    } else if (!strcmp(argv[2], "token") && argc >= 4) {
        natsOptions_SetToken(opts, argv[3]);
        subject = argc > 4 ? argv[4] : NULL;
    } else if (!strcmp(argv[2], "nkey") && argc >= 5) {
        natsOptions_SetNKeyFromSeed(opts, argv[3], argv[4]);
        subject = argc > 5 ? argv[5] : NULL;
    } else {
        subject = argc > 3 ? argv[3] : NULL;
    }
    natsStatus s = natsConnection_Connect(&nc, opts);
    if (s != NATS_OK) {
        printf("error %s\n", natsStatus_GetText(s));
        goto out;
    }
    printf("connected\n");
    fflush(stdout);
    if (subject) {
        if (natsConnection_SubscribeSync(&sub, nc, subject) == NATS_OK)
            natsConnection_FlushTimeout(nc, 2000);
        usleep(300 * 1000); /* the error arrives asynchronously */
    }
out:
    natsSubscription_Destroy(sub);
    natsConnection_Destroy(nc);
    natsOptions_Destroy(opts);
    nats_Close();
    return 0;
}
