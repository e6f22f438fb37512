/* console.c: lookup and headers of the web console. See console.h. */
#include "console.h"

#include <microhttpd.h>
#include <string.h>

/* Only the daemon's own files: no inline script or style (the page sets
 * sizes through the CSSOM, which CSP allows), images from the page itself
 * or from blob: URLs of the files a user picks, fetches to this origin only.
 * No framing, no <base>, no form posts anywhere. */
static const char csp[] = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
                          "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const console_asset *console_find(const char *path) {
    for (int i = 0; i < console_num_assets; i++)
        if (strcmp(console_assets[i].path, path) == 0) return &console_assets[i];
    return NULL;
}

int console_add_headers(struct MHD_Response *resp) {
    /* no-cache: revalidated each load, so a new binary's page is seen at once */
    const char *headers[][2] = {
        {"Content-Security-Policy", csp},
        {"Referrer-Policy", "no-referrer"},
        {"Cache-Control", "no-cache"},
    };
    for (size_t i = 0; i < sizeof(headers) / sizeof(headers[0]); i++)
        if (MHD_add_response_header(resp, headers[i][0], headers[i][1]) != MHD_YES) return -1;
    return 0;
}
