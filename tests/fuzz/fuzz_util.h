/* fuzz_util.h: what the libFuzzer harnesses of tests/fuzz share.
 *
 * Loaders that take a path (safetensors, config files, cgroup files) get
 * the fuzzer's bytes through an anonymous memory file, named by its
 * /proc/self/fd path, so no harness touches the disk per input. */
#ifndef COMROPE_FUZZ_UTIL_H
#define COMROPE_FUZZ_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

/* Writes data into a fresh memory file; returns its fd (path in `path`),
 * or -1. The caller closes the fd. */
static inline int fuzz_memfile(const uint8_t *data, size_t len, char *path, size_t pathlen) {
    int fd = memfd_create("fuzz", 0);
    if (fd < 0) return -1;
    size_t off = 0;
    while (off < len) {
        ssize_t n = write(fd, data + off, len - off);
        if (n <= 0) {
            close(fd);
            return -1;
        }
        off += (size_t)n;
    }
    snprintf(path, pathlen, "/proc/self/fd/%d", fd);
    return fd;
}

/* A NUL-terminated copy of data (the parsers of text take C strings). */
static inline char *fuzz_cstr(const uint8_t *data, size_t len) {
    char *s = malloc(len + 1);
    if (!s) abort();
    for (size_t i = 0; i < len; i++) s[i] = (char)data[i];
    s[len] = '\0';
    return s;
}

#endif
