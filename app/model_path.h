/* model_path.h: where the bundled default model is found, for the CLI and
 * the daemon alike: the directory fixed at build time
 * (COMROPE_DEFAULT_MODEL_DIR), then, for a relocated install, the same base
 * name under models/ next to the executable, one level up, or in
 * ../share/comrope-serve/models/. */
#ifndef COMROPE_MODEL_PATH_H
#define COMROPE_MODEL_PATH_H

#include <stddef.h>

/* Writes the first candidate directory holding a config.json into out.
 * Returns 0, or -1 with a message listing where it looked. */
int model_path_default(char *out, size_t len, char *err, size_t errlen);

#endif
