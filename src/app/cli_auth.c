/* cli_auth.c - see cli_auth.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <openssl/crypto.h>

#include "cli_auth.h"
#include "nkey.h"
#include "nkey_cli.h"
#include "server.h"

int cli_creds_option(cli_creds_t *cr, int ch, const char *arg)
{
    switch (ch) {
    case CLI_OPT_USER: cr->user = arg; return 1;
    case CLI_OPT_PASSWORD: cr->password = arg; return 1;
    case CLI_OPT_TOKEN: cr->token = arg; return 1;
    case CLI_OPT_NKEY: cr->nkey_file = arg; return 1;
    case CLI_OPT_TLS_CA: cr->tls_ca = arg; cr->tls = 1; return 1;
    case CLI_OPT_TLS_CERT: cr->tls_cert = arg; cr->tls = 1; return 1;
    case CLI_OPT_TLS_KEY: cr->tls_key = arg; cr->tls = 1; return 1;
    default: return 0;
    }
}

static int hex(int ch)
{
    return ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
                                         : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10 : -1;
}

/* s[0..n) %-decoded into out (cut to outsz - 1 bytes). */
static void url_decode(const char *s, size_t n, char *out, size_t outsz)
{
    size_t o = 0;
    for (size_t i = 0; i < n && o + 1 < outsz; i++) {
        if (s[i] == '%' && i + 2 < n && hex(s[i + 1]) >= 0 && hex(s[i + 2]) >= 0) {
            out[o++] = (char)(hex(s[i + 1]) * 16 + hex(s[i + 2]));
            i += 2;
        } else {
            out[o++] = s[i];
        }
    }
    out[o] = '\0';
}

const char *cli_creds_from_url(cli_creds_t *cr, const char *server)
{
    if (!strncmp(server, "nats://", 7))
        server += 7;
    else if (!strncmp(server, "tls://", 6)) {
        server += 6;
        cr->tls = 1;
    }
    const char *at = strrchr(server, '@');
    if (!at)
        return server;
    const char *colon = memchr(server, ':', (size_t)(at - server));
    int given = cr->user || cr->password || cr->token || cr->nkey_file;
    if (colon) {
        url_decode(server, (size_t)(colon - server), cr->url_user, sizeof cr->url_user);
        url_decode(colon + 1, (size_t)(at - colon - 1), cr->url_pass, sizeof cr->url_pass);
        if (!given) {
            cr->user = cr->url_user;
            cr->password = cr->url_pass;
        }
    } else {
        url_decode(server, (size_t)(at - server), cr->url_pass, sizeof cr->url_pass);
        if (!given)
            cr->token = cr->url_pass;
    }
    return at + 1;
}

/* Adds nkey and sig (the nonce of info signed with the seed in file) to o.
 * 0, or -1 after saying why. */
static int add_nkey(cJSON *o, const char *file, const char *info_json)
{
    unsigned char seed[NKEY_KEY_LEN], pub[NKEY_KEY_LEN];
    char pubs[NKEY_PUBLIC_STR_LEN + 1], sig[NKEY_SIG_STR_LEN + 1];
    int rc = -1;
    cJSON *info = cJSON_Parse(info_json);
    const cJSON *nonce = cJSON_GetObjectItemCaseSensitive(info, "nonce");
    if (!cJSON_IsString(nonce)) {
        fprintf(stderr, "tide: the server sent no nonce to sign: it has no nkey users (auth { users = { { nkey = ... } } })\n");
        goto fail;
    }
    if (nkey_cli_seed_read(file, seed))
        goto fail;
    if (nkey_seed_public(seed, pub) != NKEY_OK || nkey_public_encode(pub, pubs, sizeof pubs) != NKEY_OK ||
        nkey_sign(seed, nonce->valuestring, strlen(nonce->valuestring), sig, sizeof sig) != NKEY_OK) {
        fprintf(stderr, "tide: cannot sign with the seed in %s\n", file);
        goto fail;
    }
    if (!cJSON_AddStringToObject(o, "nkey", pubs) || !cJSON_AddStringToObject(o, "sig", sig))
        goto fail;
    rc = 0;
fail:
    OPENSSL_cleanse(seed, sizeof seed);
    cJSON_Delete(info);
    return rc;
}

char *cli_creds_connect(const cli_creds_t *cr, const char *info_json)
{
    char *json = NULL, *line = NULL;
    int said = 0;
    cJSON *o = cJSON_CreateObject();
    if (!o || !cJSON_AddFalseToObject(o, "verbose") || !cJSON_AddFalseToObject(o, "pedantic") ||
        !cJSON_AddTrueToObject(o, "headers") || !cJSON_AddTrueToObject(o, "no_responders") ||
        !cJSON_AddStringToObject(o, "name", "tide-cli") || !cJSON_AddStringToObject(o, "lang", "c") ||
        !cJSON_AddStringToObject(o, "version", TIDE_VERSION) || !cJSON_AddNumberToObject(o, "protocol", 1))
        goto fail;
    if ((cr->user && !cJSON_AddStringToObject(o, "user", cr->user)) ||
        (cr->password && !cJSON_AddStringToObject(o, "pass", cr->password)) ||
        (cr->token && !cJSON_AddStringToObject(o, "auth_token", cr->token)))
        goto fail;
    if (cr->nkey_file && add_nkey(o, cr->nkey_file, info_json) < 0) {
        said = 1;
        goto fail;
    }
    if (!(json = cJSON_PrintUnformatted(o)))
        goto fail;
    size_t n = strlen(json) + 32;
    if ((line = malloc(n)))
        snprintf(line, n, "CONNECT %s\r\nPING\r\n", json);
fail:
    if (!line && !said)
        fprintf(stderr, "tide: out of memory\n");
    if (json)
        OPENSSL_cleanse(json, strlen(json));
    cJSON_free(json);
    cJSON_Delete(o);
    return line;
}

void cli_server_error(const char *text)
{
    if (strstr(text, "Authorization Violation"))
        fprintf(stderr, "tide: the server refused the connection: %s\n"
                        "  it wants the credentials of a configured user: --user U --password P, --token T, "
                        "--nkey SEEDFILE, or -s nats://user:pass@host:port\n", text);
    else if (strstr(text, "Permissions Violation for Publish to \"$TIDE.ADMIN."))
        fprintf(stderr, "tide: not permitted: %s\n  admin requests need a user with admin = true\n", text);
    else if (strstr(text, "Permissions Violation for Publish to \"$TIDE.NODE."))
        fprintf(stderr,
                "tide: not permitted: %s\n  a request to a node needs what $TIDE.<rest> needs (admin = true for "
                "admin requests) and permission for $TIDE.NODE.>\n",
                text);
    else if (strstr(text, "Permissions Violation"))
        fprintf(stderr, "tide: not permitted: %s\n", text);
    else
        fprintf(stderr, "tide: server error: %s\n", text);
}
