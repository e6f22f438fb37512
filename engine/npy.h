/* npy.h: reads NumPy .npy arrays (format 1.0/2.0/3.0, C order, little-endian
 * float32 or float64) into float32. Used by the CLI for already-normalized
 * pixels and by the tests for reference fixtures. */
#ifndef COMROPE_NPY_H
#define COMROPE_NPY_H

#include <stddef.h>
#include <stdint.h>

#define NPY_MAX_DIMS 8

/* An array read by npy_load; `data` is owned, release with npy_free. */
typedef struct {
    int ndim;
    int64_t shape[NPY_MAX_DIMS];
    int64_t count; /* product of shape */
    float *data;   /* count floats, converted from <f4 or <f8 */
} npy_array;

/* From a file (a regular one: small_file_read's), or from bytes in memory.
 * Returns 0, or -1 with a message in err naming the file and what was wrong
 * (bad magic, header, dtype, Fortran order, size that does not match the
 * header; for a file, what small_file_read refuses), or ENGINE_ERR_MEMORY
 * (engine_error.h) when an allocation was refused. */
int npy_load(const char *path, npy_array *out, char *err, size_t errlen);
int npy_parse(const uint8_t *data, size_t len, const char *name, npy_array *out, char *err, size_t errlen);
void npy_free(npy_array *a);

/* Writes `data` (float32, C order, shape[0..ndim-1]) as a .npy file
 * (format 1.0, <f4). Returns 0, or -1 with a message naming the file. */
int npy_save_f32(const char *path, const float *data, int ndim, const int64_t *shape, char *err,
                 size_t errlen);

#endif
