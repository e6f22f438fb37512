/* load_gate.c: an LD_PRELOAD shim for tests/integration/loading.sh that
 * holds the daemon's model load at the checkpoint's open() until a gate
 * file exists, so that a test sees the daemon while it loads for as long
 * as it needs, with no timing assumption. Test-only: nothing in the daemon
 * knows of it.
 *
 *   LOAD_GATE=/path/to/gate LD_PRELOAD=libload_gate.so comrope-serve ...
 *
 * It writes LOAD_GATE.waiting when the open is held (the test waits on
 * that file), then polls for LOAD_GATE. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void hold(const char *path) {
    const char *gate = getenv("LOAD_GATE");
    size_t n = strlen(path), k = strlen("model.safetensors");
    if (!gate || n < k || strcmp(path + n - k, "model.safetensors") != 0) return;
    char waiting[4096];
    snprintf(waiting, sizeof(waiting), "%s.waiting", gate);
    FILE *f = fopen(waiting, "w");
    if (f) fclose(f);
    struct timespec tick = {0, 10 * 1000 * 1000};
    while (access(gate, F_OK) != 0) nanosleep(&tick, NULL);
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
    hold(path);
    return real_open(path, flags, mode);
}
