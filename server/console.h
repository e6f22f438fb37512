/* console.h: the web console at / -- one page (server/console/: HTML, CSS,
 * JavaScript modules, an icon) and the sample images (the PNGs of models/samples/),
 * compiled into comrope-serve so that nothing is installed beside it and
 * the page works offline.
 *
 * Owns: the asset table, generated at build time by
 * server/console/embed.cmake into console_assets.c (never edited by hand),
 * lookup by URL path, and the headers every console answer carries (a
 * strict Content-Security-Policy among them). The page itself is public;
 * its API calls carry the token the user gives it. */
#ifndef COMROPE_CONSOLE_H
#define COMROPE_CONSOLE_H

#include <stddef.h>

struct MHD_Response;

typedef struct {
    const char *path; /* "/", "/console/app.mjs", "/console/samples/x.png" */
    const char *content_type;
    const unsigned char *data; /* static, lives as long as the process */
    size_t len;
} console_asset;

/* The generated table (console_assets.c). */
extern const console_asset console_assets[];
extern const int console_num_assets;

/* The asset served at `path`, or NULL. */
const console_asset *console_find(const char *path);

/* Adds the console's headers (Content-Security-Policy, ...; nosniff, as every answer has) to an
 * answer. Returns 0, or -1 if MHD refused one. */
int console_add_headers(struct MHD_Response *resp);

#endif
