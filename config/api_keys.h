/* api_keys.h: the bearer tokens of --api-key-file.
 *
 * Owns: reading the file (one token per line, blank lines and `#` comment
 * lines skipped, lines of any length) into a NULL-terminated array, and
 * refusing a file that would leave the daemon open or half-read: it cannot
 * be opened or read (config_read_file's: not a regular file, or more than
 * CONFIG_FILE_MAX_BYTES), it holds no token, or a line is not a token
 * (spaces or control characters inside: a comment after a token, a pasted
 * "Bearer x").
 * A read failure is a start-up error, never "no auth". */
#ifndef COMROPE_API_KEYS_H
#define COMROPE_API_KEYS_H

#include <stddef.h>

/* Returns a NULL-terminated array of malloc'd tokens (free with
 * api_keys_free), or NULL with a message naming the file and line. */
char **api_keys_load(const char *path, char *err, size_t errlen);

void api_keys_free(char **keys);

#endif
