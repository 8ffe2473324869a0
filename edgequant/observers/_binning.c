/* Exact power-of-two histogram binning of float32 values, the hot loop of histogram calibration.
 *
 * Takes the address and length of a contiguous float32 buffer, the scale 2**-e (a power of two),
 * the window's first bin k0 and the number of bins, and adds each value's count to an int64
 * array of that many bins (also given by address). A value's bin is floor(x * 2**-e) - k0,
 * computed exactly: the product is exact (a power-of-two scale; the caller keeps e in range),
 * and floor comes from a truncating conversion corrected by one below zero, exact for
 * |x * 2**-e| < 2**31 (the caller guarantees < 2**24). This is the same rule as the torch
 * fallback in histogram.py, which tests check against NumPy.
 *
 * Why C: torch.bincount is a serial loop that also needs the bin indices materialised by four
 * elementwise passes; this is one pass with no temporary. Counting goes to four interleaved
 * 32-bit lanes so that runs of values in one bin (the zeros after a ReLU) do not serialise on
 * one counter. The GIL is released while counting.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LANES 4
#define SPAN (1u << 30) /* values per pass, so a 32-bit lane counter cannot overflow */

#define BLOCK 2048 /* bin indices computed per step (vectorised), then counted */

static void indices(const float *x, int n, float scale, int32_t k0, int32_t last, int32_t *idx)
{
    for (int i = 0; i < n; i++) {
        float y = x[i] * scale;
        int32_t t = (int32_t)y;           /* truncates toward zero */
        t -= (y < (float)t);              /* floor: one less for negative non-integers */
        t -= k0;
        t = t < 0 ? 0 : t;                /* values outside the window (none, by contract) stay in it */
        idx[i] = t > last ? last : t;
    }
}

static void count(const float *x, Py_ssize_t n, float scale, int32_t k0, int32_t bins,
                  uint32_t *lanes, int64_t *out)
{
    int32_t idx[BLOCK];
    for (Py_ssize_t start = 0; start < n; start += SPAN) {
        Py_ssize_t stop = n - start > SPAN ? start + SPAN : n;
        memset(lanes, 0, sizeof(uint32_t) * LANES * (size_t)bins);
        for (Py_ssize_t b0 = start; b0 < stop; b0 += BLOCK) {
            int m = stop - b0 > BLOCK ? BLOCK : (int)(stop - b0);
            indices(x + b0, m, scale, k0, bins - 1, idx);
            int i = 0;
            for (; i + LANES <= m; i += LANES) {
                lanes[idx[i]]++;
                lanes[bins + idx[i + 1]]++;
                lanes[2 * bins + idx[i + 2]]++;
                lanes[3 * bins + idx[i + 3]]++;
            }
            for (; i < m; i++)
                lanes[idx[i]]++;
        }
        for (int32_t b = 0; b < bins; b++)
            out[b] += (int64_t)lanes[b] + lanes[bins + b] + lanes[2 * bins + b] + lanes[3 * bins + b];
    }
}

#define MAX_THREADS 16

struct part {
    const float *x;
    Py_ssize_t n;
    float scale;
    int32_t k0, bins;
    uint32_t *lanes;
    int64_t *out; /* this part's own counts */
};

static void *count_part(void *arg)
{
    struct part *p = arg;
    count(p->x, p->n, p->scale, p->k0, p->bins, p->lanes, p->out);
    return NULL;
}

static PyObject *add_float32(PyObject *self, PyObject *args)
{
    (void)self;
    Py_ssize_t x_addr, n, out_addr;
    float scale;
    int k0, bins, threads = 1;
    if (!PyArg_ParseTuple(args, "nnfiin|i", &x_addr, &n, &scale, &k0, &bins, &out_addr, &threads))
        return NULL;
    if (n < 0 || bins < 1 || !x_addr || !out_addr) {
        PyErr_SetString(PyExc_ValueError, "add_float32: bad buffer, length or number of bins");
        return NULL;
    }
    threads = threads < 1 ? 1 : threads > MAX_THREADS ? MAX_THREADS : threads;
    if (n < threads)
        threads = 1;
    uint32_t *lanes = malloc(sizeof(uint32_t) * LANES * (size_t)bins * threads);
    int64_t *partial = calloc((size_t)bins * threads, sizeof(int64_t));
    if (!lanes || !partial) {
        free(lanes);
        free(partial);
        return PyErr_NoMemory();
    }
    struct part parts[MAX_THREADS];
    pthread_t ids[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    const float *x = (const float *)x_addr;
    Py_ssize_t share = n / threads;
    for (int t = 0; t < threads; t++)
        parts[t] = (struct part){x + t * share, t == threads - 1 ? n - t * share : share, scale, (int32_t)k0,
                                 (int32_t)bins, lanes + (size_t)t * LANES * bins, partial + (size_t)t * bins};
    Py_BEGIN_ALLOW_THREADS
    for (int t = 1; t < threads; t++)
        started[t] = pthread_create(&ids[t], NULL, count_part, &parts[t]) == 0;
    count_part(&parts[0]);
    for (int t = 1; t < threads; t++) {
        if (started[t])
            pthread_join(ids[t], NULL);
        else
            count_part(&parts[t]); /* no thread to be had: count this part here */
    }
    int64_t *out = (int64_t *)out_addr;
    for (int t = 0; t < threads; t++)
        for (int b = 0; b < bins; b++)
            out[b] += partial[(size_t)t * bins + b];
    Py_END_ALLOW_THREADS
    free(lanes);
    free(partial);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"add_float32", add_float32, METH_VARARGS,
     "add_float32(x_addr, n, scale, k0, bins, out_addr, threads=1): out[floor(x*scale) - k0] += 1 for n float32 values."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_binning", "Exact float32 histogram binning.", -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__binning(void) { return PyModule_Create(&module); }
