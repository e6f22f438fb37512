/* small_file.c: reading a small file whole (see small_file.h). */
#include "small_file.h"
#include "engine_error.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

const char *small_file_kind(mode_t mode) {
    if (S_ISREG(mode)) return "a regular file";
    if (S_ISDIR(mode)) return "a directory";
    if (S_ISFIFO(mode)) return "a FIFO";
    if (S_ISCHR(mode) || S_ISBLK(mode)) return "a device";
    if (S_ISSOCK(mode)) return "a socket";
    return "not a plain file";
}

int small_file_read(const char *path, size_t max_bytes, small_file_kinds kinds, char **data, size_t *len,
                    char *err, size_t errlen) {
    char *buf = NULL;
    size_t used = 0, cap;
    int rc = -1;
    *data = NULL;
    *len = 0;
    /* O_NONBLOCK: a FIFO would block the open until a writer came (the
     * repository's control thread on a model's config.json, for good); a
     * pipe allowed is read in blocking mode below. O_NOCTTY: a terminal,
     * refused below, must not become the controlling terminal of a
     * session leader that has none (the daemon under systemd). */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
        int e = errno;
        snprintf(err, errlen, "%.400s: cannot open: %s", path, strerror(e));
        return e == ENOENT || e == ENOTDIR ? SMALL_FILE_MISSING : -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        snprintf(err, errlen, "%.400s: cannot read: %s", path, strerror(errno));
        goto cleanup;
    }
    int is_pipe = S_ISFIFO(st.st_mode);
    if (!S_ISREG(st.st_mode) && !(is_pipe && kinds == SMALL_FILE_OR_PIPE)) {
        snprintf(err, errlen, "%.400s: is %s, not a regular file%s", path, small_file_kind(st.st_mode),
                 kinds == SMALL_FILE_OR_PIPE ? " or a pipe" : "");
        goto cleanup;
    }
    /* a pipe's reads wait for its writer; with none, the first gives 0 */
    int flags = is_pipe ? fcntl(fd, F_GETFL) : 0;
    if (is_pipe && (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0)) {
        snprintf(err, errlen, "%.400s: cannot read: %s", path, strerror(errno));
        goto cleanup;
    }
    /* refused before a byte is read when its size says so; st_size is only
     * a first guess though: the cap holds on what is read */
    if (st.st_size > 0 && (unsigned long long)st.st_size > max_bytes) goto too_large;
    cap = st.st_size > 0 ? (size_t)st.st_size + 1 : 4096;
    if (cap > max_bytes + 1) cap = max_bytes + 1;
    while (used <= max_bytes) {
        if (!buf || used == cap) {
            if (buf) cap = cap > (max_bytes + 1) / 2 ? max_bytes + 1 : cap * 2;
            char *g = realloc(buf, cap + 1);
            if (!g) {
                snprintf(err, errlen, "%.400s: out of memory for %zu bytes", path, cap + 1);
                rc = ENGINE_ERR_MEMORY;
                goto cleanup;
            }
            buf = g;
        }
        ssize_t n = read(fd, buf + used, cap - used);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            snprintf(err, errlen, "%.400s: cannot read: %s", path, strerror(errno));
            goto cleanup;
        }
        if (n == 0) break;
        used += (size_t)n;
    }
    if (used > max_bytes) goto too_large;
    if (is_pipe && used == 0) {
        snprintf(err, errlen, "%.400s: a pipe that gave nothing (no one writing to it?)", path);
        goto cleanup;
    }
    buf[used] = '\0';
    *data = buf;
    *len = used;
    buf = NULL;
    rc = 0;
    goto cleanup;
too_large:
    snprintf(err, errlen, "%.400s: is larger than %zu bytes, the most such a file may hold", path, max_bytes);
cleanup:
    free(buf);
    close(fd);
    return rc;
}
