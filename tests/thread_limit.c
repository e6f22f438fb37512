/* thread_limit.c: an LD_PRELOAD shim for tests/integration/oslimits.sh that
 * makes pthread_create fail with EAGAIN, as it does past RLIMIT_NPROC or a
 * cgroup's pids.max, without needing either (root ignores RLIMIT_NPROC,
 * and a test cannot count on a cgroup of its own); and that makes the
 * machine's physical memory look small, so that a test of the bound on
 * workspaces does not depend on the machine's (nor reserves GiBs). Test-only:
 * nothing in the daemon knows of it.
 *
 *   THREAD_LIMIT_AFTER=N   every pthread_create after the first N fails
 *   THREAD_LIMIT_WHILE=F   every pthread_create fails while the file F exists
 *   PHYS_MEMORY_MIB=N      sysconf(_SC_PHYS_PAGES) says N MiB of pages */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

static atomic_long created;

int pthread_create(pthread_t *t, const pthread_attr_t *attr, void *(*start)(void *), void *arg) {
    static int (*real)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);
    if (!real)
        real = (int (*)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *))dlsym(
            RTLD_NEXT, "pthread_create");
    const char *after = getenv("THREAD_LIMIT_AFTER"), *file = getenv("THREAD_LIMIT_WHILE");
    if (after && atomic_fetch_add(&created, 1) >= atol(after)) return EAGAIN;
    if (file && access(file, F_OK) == 0) return EAGAIN;
    return real(t, attr, start, arg);
}

long sysconf(int name) {
    static long (*real)(int);
    if (!real) real = (long (*)(int))dlsym(RTLD_NEXT, "sysconf");
    const char *mib = getenv("PHYS_MEMORY_MIB");
    if (name == _SC_PHYS_PAGES && mib) return atol(mib) * (1L << 20) / real(_SC_PAGESIZE);
    return real(name);
}
