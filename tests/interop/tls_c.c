/*
 * tls_c.c - one TLS connection with the NATS C client (libnats), for
 * tests/tls_spec.lua.
 *
 * Usage: tls_c PORT CA [CERT KEY]
 *
 * Connects to nats://127.0.0.1:PORT with TLS, trusting the CA file CA and,
 * when given, presenting the client certificate CERT with its key KEY;
 * then subscribes, publishes one message to itself and waits for it.
 * Prints "ok" (exit 0) when the message came back, else "error: " and
 * libnats' status text (exit 1).  Connections time out after 2 s and an
 * alarm ends the program after 10 s whatever the server does.
 */
#include <nats/nats.h>

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void on_alarm(int sig)
{
    static const char msg[] = "error: no answer within 10 s\n";
    ssize_t w = write(STDOUT_FILENO, msg, sizeof msg - 1);
    (void)w;
    (void)sig;
    _exit(2);
}

static int fail(natsStatus s)
{
    printf("error: %s (%s)\n", natsStatus_GetText(s), nats_GetLastError(NULL));
    return 1;
}

int main(int argc, char **argv)
{
    natsOptions *o = NULL;
    natsConnection *nc = NULL;
    natsSubscription *sub = NULL;
    natsMsg *m = NULL;
    char url[64];
    natsStatus s;
    int rc = 1;

    if (argc != 3 && argc != 5) {
        fprintf(stderr, "usage: tls_c PORT CA [CERT KEY]\n");
        return 2;
    }
    signal(SIGALRM, on_alarm);
    alarm(10);
    snprintf(url, sizeof url, "nats://127.0.0.1:%s", argv[1]);
    s = natsOptions_Create(&o);
    if (s == NATS_OK) s = natsOptions_SetURL(o, url);
    if (s == NATS_OK) s = natsOptions_SetTimeout(o, 2000);
    if (s == NATS_OK) s = natsOptions_SetAllowReconnect(o, false);
    if (s == NATS_OK) s = natsOptions_SetSecure(o, true);
    if (s == NATS_OK) s = natsOptions_LoadCATrustedCertificates(o, argv[2]);
    if (s == NATS_OK && argc == 5) s = natsOptions_LoadCertificatesChain(o, argv[3], argv[4]);
    if (s == NATS_OK) s = natsConnection_Connect(&nc, o);
    if (s == NATS_OK) s = natsConnection_SubscribeSync(&sub, nc, "tls.c.check");
    if (s == NATS_OK) s = natsConnection_PublishString(nc, "tls.c.check", "hello");
    if (s == NATS_OK) s = natsSubscription_NextMsg(&m, sub, 2000);
    if (s == NATS_OK && strcmp(natsMsg_GetData(m), "hello") == 0) {
        printf("ok\n");
        rc = 0;
    } else if (s == NATS_OK) {
        printf("error: got '%s'\n", natsMsg_GetData(m));
    } else {
        rc = fail(s);
    }
    natsMsg_Destroy(m);
    natsSubscription_Destroy(sub);
    natsConnection_Destroy(nc);
    natsOptions_Destroy(o);
    nats_Close();
    return rc;
}
