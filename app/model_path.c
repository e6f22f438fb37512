/* model_path.c: the default model lookup (see model_path.h). */
#include "model_path.h"

#include <libgen.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef COMROPE_DEFAULT_MODEL_DIR
#define COMROPE_DEFAULT_MODEL_DIR "models/default"
#endif

static int has_config(const char *dir) {
    char path[4096];
    struct stat st;
    if (snprintf(path, sizeof(path), "%s/config.json", dir) >= (int)sizeof(path)) return 0;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

int model_path_default(char *out, size_t len, char *err, size_t errlen) {
    char built_in[4096], base[1024], exe[4096], exe_dir[4096];
    snprintf(built_in, sizeof(built_in), "%s", COMROPE_DEFAULT_MODEL_DIR);
    if (has_config(built_in)) {
        snprintf(out, len, "%s", built_in);
        return 0;
    }
    snprintf(base, sizeof(base), "%s", basename(built_in));
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n > 0) {
        exe[n] = '\0';
        snprintf(exe_dir, sizeof(exe_dir), "%s", dirname(exe));
        const char *rel[] = {"models", "../models", "../share/comrope-serve/models"};
        for (size_t i = 0; i < sizeof(rel) / sizeof(rel[0]); i++) {
            char cand[4096];
            if (snprintf(cand, sizeof(cand), "%s/%s/%s", exe_dir, rel[i], base) >= (int)sizeof(cand))
                continue;
            if (has_config(cand)) {
                snprintf(out, len, "%s", cand);
                return 0;
            }
        }
    } else {
        snprintf(exe_dir, sizeof(exe_dir), "(unknown)");
    }
    snprintf(err, errlen,
             "no default model: neither %s nor %s/{models,../models,../share/comrope-serve/models}/%s "
             "holds a config.json (pass --model DIR)",
             COMROPE_DEFAULT_MODEL_DIR, exe_dir, base);
    return -1;
}
