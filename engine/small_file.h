/* small_file.h: reading a small file whole, the one way every such read
 * goes: a model directory's config.json and preprocessor_config.json, a
 * .npy, an image named to comrope-classify, the daemon's own config and
 * key files (config/, which links this alone, not the engine).
 *
 * What a path may turn out to be decides how it is read, so that is asked
 * of the file opened, never of the path beforehand (a swap between a stat
 * and the open would beat the check): the open does not block (a FIFO with
 * no writer would hold it, and the thread, for good), fstat on that fd
 * says what it is, only a regular file (or a pipe, where the caller allows
 * one) is read, and the read stops past the cap whatever st_size said (0
 * for /proc files; a file may grow while it is read). */
#ifndef COMROPE_SMALL_FILE_H
#define COMROPE_SMALL_FILE_H

#include <stddef.h>
#include <sys/types.h>

/* small_file_read's answer when the path names nothing (ENOENT, ENOTDIR),
 * which callers with an optional file (preprocessor_config.json) take as
 * "none", unlike a file that is there and cannot be read. */
#define SMALL_FILE_MISSING (-2)

typedef enum {
    SMALL_FILE_REGULAR, /* a regular file (a symlink to one) only */
    /* also a pipe or FIFO (`<(cmd)`, /dev/stdin), read to its end in
     * blocking mode: for a file named by a user who expects the wait for its
     * writer; one that gives nothing (no writer) is refused, not waited on */
    SMALL_FILE_OR_PIPE,
} small_file_kinds;

/* Reads path whole into *data (malloc'd, NUL-terminated after its *len
 * bytes; it may hold NULs), at most max_bytes of it. Returns 0; or -1 (or
 * SMALL_FILE_MISSING, or ENGINE_ERR_MEMORY: engine_error.h) with
 * "<path>: why" in err: "cannot open: <errno
 * text>", "is a FIFO, not a regular file" (a directory, a device, a
 * socket alike), "is larger than N bytes", "a pipe that gave nothing",
 * "cannot read: <errno text>". *data is NULL on failure. */
int small_file_read(const char *path, size_t max_bytes, small_file_kinds kinds, char **data, size_t *len,
                    char *err, size_t errlen);

/* What a file of st_mode `mode` is, for a refusal: "a FIFO", "a
 * directory", "a device", "a socket", "a regular file", ... */
const char *small_file_kind(mode_t mode);

#endif
