/*
 * console_assets.h - the web console's built files (console/, built with
 * Vite by scripts/console-build.sh), embedded as C arrays by
 * scripts/embed-assets.lua into a generated file that make compiles into
 * the tide binary.
 *
 * The generated object is linked into build/tide only: the Lua module and
 * the fuzz targets are built without it, and there the weak references
 * below are NULL (the HTTP face then says the console is not built in).
 */
#ifndef TIDE_CONSOLE_ASSETS_H
#define TIDE_CONSOLE_ASSETS_H

#include <stddef.h>

typedef struct console_asset {
    const char *path; /* "/index.html", "/assets/index-1a2b.js" */
    const char *type; /* its Content-Type */
    const unsigned char *data;
    size_t len;
    int immutable;    /* its name holds a hash of its content: it may be cached for good */
} console_asset_t;

extern const console_asset_t console_assets[] __attribute__((weak));
extern const size_t console_nassets __attribute__((weak));

#endif
