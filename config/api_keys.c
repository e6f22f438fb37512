/* api_keys.c: reading the bearer-token file. See api_keys.h. */
#include "api_keys.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

void api_keys_free(char **keys) {
    for (int i = 0; keys && keys[i]; i++) free(keys[i]);
    free(keys);
}

char **api_keys_load(const char *path, char *err, size_t errlen) {
    char **keys = NULL, *data, *next;
    size_t size;
    int n = 0, lineno = 0, ok = 0;
    /* regular or a pipe, capped (config_read_file): /dev/zero was read
     * without end */
    if (config_read_file("api-key-file", path, 1, &data, &size, err, errlen)) return NULL;
    keys = calloc(1, sizeof(char *));
    if (!keys) goto oom;
    /* a long line stays one line, so neither a long token nor the tail of
     * a long comment can turn into a token of its own */
    for (char *line = data; line < data + size; line = next) {
        char *nl = memchr(line, '\n', (size_t)(data + size - line));
        char *p = line, *end = nl ? nl : data + size;
        next = end + 1;
        lineno++;
        while (end > p && (end[-1] == '\r' || end[-1] == ' ' || end[-1] == '\t')) end--;
        while (p < end && (*p == ' ' || *p == '\t')) p++;
        if (p == end || *p == '#') continue;
        for (char *q = p; q < end; q++)
            if ((unsigned char)*q <= ' ' || (unsigned char)*q >= 0x7f) {
                snprintf(err, errlen,
                         "api-key-file: %.400s:%d: a token is one word of visible ASCII (byte 0x%02x at "
                         "column %d; a comment needs a line of its own)",
                         path, lineno, (unsigned char)*q, (int)(q - line) + 1);
                goto fail;
            }
        char **grown = realloc(keys, sizeof(char *) * (size_t)(n + 2));
        if (!grown) goto oom;
        keys = grown;
        keys[n] = strndup(p, (size_t)(end - p));
        if (!keys[n]) goto oom;
        keys[++n] = NULL;
    }
    if (n == 0) {
        snprintf(err, errlen, "api-key-file: %.400s holds no token (auth would be off)", path);
        goto fail;
    }
    ok = 1;
    goto done;
oom:
    snprintf(err, errlen, "api-key-file: out of memory reading %.400s", path);
fail:
    api_keys_free(keys);
    keys = NULL;
done:
    free(data);
    return ok ? keys : NULL;
}
