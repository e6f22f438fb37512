/* load_gate.c: an LD_PRELOAD shim for tests/integration/loading.sh that
 * holds the daemon's model load at the checkpoint's open() until a gate
 * file exists, so that a test sees the daemon while it loads for as long
 * as it needs, with no timing assumption. Test-only: nothing in the daemon
 * knows of it.
 *
 *   LOAD_GATE=/path/to/gate LD_PRELOAD=libload_gate.so comrope-serve ...
 *
 * It writes LOAD_GATE.waiting when the open is held (the test waits on
 * that file), then polls for LOAD_GATE. With LOAD_GATE_READ=N it holds
 * before the checkpoint's Nth pread instead (1: the header's length, 2:
 * the header, then the tensors'): the file is open and partly read, as
 * when it is rewritten in place during a load. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

/* the checkpoint's descriptor and the preads on it (LOAD_GATE_READ) */
static int checkpoint_fd = -1, checkpoint_reads;

static int is_checkpoint(const char *path) {
    size_t n = strlen(path), k = strlen("model.safetensors");
    return getenv("LOAD_GATE") && n >= k && strcmp(path + n - k, "model.safetensors") == 0;
}

static void hold(void) {
    char waiting[4096];
    snprintf(waiting, sizeof(waiting), "%s.waiting", getenv("LOAD_GATE"));
    FILE *f = fopen(waiting, "w");
    if (f) fclose(f);
    struct timespec tick = {0, 10 * 1000 * 1000};
    while (access(getenv("LOAD_GATE"), F_OK) != 0) nanosleep(&tick, NULL);
}

int open(const char *path, int flags, ...) {
    static int (*real_open)(const char *, int, ...);
    if (!real_open) real_open = (int (*)(const char *, int, ...))dlsym(RTLD_NEXT, "open");
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) {
        va_list ap;
        va_start(ap, flags);
        mode = (mode_t)va_arg(ap, int);
        va_end(ap);
    }
    int checkpoint = is_checkpoint(path), at_read = getenv("LOAD_GATE_READ") != NULL;
    if (checkpoint && !at_read) hold();
    int fd = real_open(path, flags, mode);
    if (checkpoint && at_read) {
        checkpoint_fd = fd;
        checkpoint_reads = 0;
    }
    return fd;
}

static void count_read(int fd) {
    const char *at = getenv("LOAD_GATE_READ");
    if (at && fd >= 0 && fd == checkpoint_fd && ++checkpoint_reads == atoi(at)) hold();
}

ssize_t pread(int fd, void *buf, size_t len, off_t off) {
    static ssize_t (*real_pread)(int, void *, size_t, off_t);
    if (!real_pread) real_pread = (ssize_t(*)(int, void *, size_t, off_t))dlsym(RTLD_NEXT, "pread");
    count_read(fd);
    return real_pread(fd, buf, len, off);
}

/* what pread is under _FILE_OFFSET_BITS=64 */
ssize_t pread64(int fd, void *buf, size_t len, off_t off) {
    static ssize_t (*real_pread64)(int, void *, size_t, off_t);
    if (!real_pread64) real_pread64 = (ssize_t(*)(int, void *, size_t, off_t))dlsym(RTLD_NEXT, "pread64");
    count_read(fd);
    return real_pread64(fd, buf, len, off);
}
