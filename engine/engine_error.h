/* engine_error.h: the failures a caller of the engine may have to tell
 * apart, as return values. Every fallible call returns 0, or a negative
 * value with its message in err (the messages are unchanged by which
 * value: "out of memory ..." where an allocation was refused):
 *   -1                    anything err describes: a bad file, key,
 *                         tensor or parameter;
 *   SMALL_FILE_MISSING -2 (small_file.h) there is no such file;
 *   ENGINE_ERR_MEMORY     an allocation was refused (malloc, the
 *                         workspace's posix_memalign, a oneDNN buffer):
 *                         the same call may succeed once other processes
 *                         free memory (the daemon's exit 3);
 *   ENGINE_ERR_WORKSPACE  vit_context_new: the workspace its max_images /
 *                         max_tokens ask for is larger than the memory
 *                         there is at all (its memory_shares share of
 *                         what memory_held leaves): no wait cures it,
 *                         smaller limits, fewer workers or less held
 *                         (another model unloaded) do (the daemon's bad
 *                         setting, exit 2);
 *   -5, -6                image_decode's IMAGE_ERR_CORRUPT, _TOO_LARGE
 *                         (image.h; its IMAGE_ERR_MEMORY is
 *                         ENGINE_ERR_MEMORY).
 * A caller that passes a callee's failure on returns the callee's value. */
#ifndef COMROPE_ENGINE_ERROR_H
#define COMROPE_ENGINE_ERROR_H

enum {
    ENGINE_ERR_MEMORY = -3,
    ENGINE_ERR_WORKSPACE = -4,
};

#endif
