/* strata.storage._gather: copy many byte ranges of many buffers into one bytes
 * object, the compiled half of `strata.storage.gather` (whose pure-Python
 * `gather_python` is the reference, tested byte for byte against this). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define RELEASE_GIL_BYTES (1 << 20)

/* gather((src0, src1, ...), src, starts, lens) -> bytes: piece k is
 * srcs[src[k]][starts[k]:starts[k] + lens[k]] (src: u32, starts and lens: i64
 * buffers of one element per piece); the pieces back to back. */
static PyObject *gather(PyObject *self, PyObject *args)
{
    PyObject *srcs;
    Py_buffer src, starts, lens;
    if (!PyArg_ParseTuple(args, "O!y*y*y*", &PyTuple_Type, &srcs, &src, &starts, &lens))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t nsrc = PyTuple_GET_SIZE(srcs), nviews = 0;
    Py_buffer *views = PyMem_Calloc(nsrc ? (size_t)nsrc : 1, sizeof(Py_buffer));
    Py_ssize_t n = src.len / 4;
    const uint32_t *si = src.buf;
    const int64_t *st = starts.buf, *ln = lens.buf;
    if (views == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (src.len != n * 4 || starts.len != n * 8 || lens.len != n * 8) {
        PyErr_SetString(PyExc_ValueError, "gather: one u32 src, i64 start and i64 length "
                        "per piece");
        goto done;
    }
    for (; nviews < nsrc; nviews++)
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(srcs, nviews), &views[nviews], PyBUF_SIMPLE) < 0)
            goto done;
    int64_t total = 0;
    for (Py_ssize_t k = 0; k < n; k++) {
        if (si[k] >= (uint32_t)nsrc || st[k] < 0 || ln[k] < 0 || st[k] + ln[k] > views[si[k]].len) {
            PyErr_Format(PyExc_ValueError, "gather: piece %zd out of its source", k);
            goto done;
        }
        total += ln[k];
    }
    result = PyBytes_FromStringAndSize(NULL, total);
    if (result == NULL)
        goto done;
    uint8_t *o = (uint8_t *)PyBytes_AS_STRING(result);
    /* Only a large copy lets other threads run: giving up the GIL for a few KB (the
     * ingest thread's entries of one batch) costs its thread up to a switch interval
     * (5 ms) to get it back while the flush thread runs. */
    PyThreadState *ts = total >= RELEASE_GIL_BYTES ? PyEval_SaveThread() : NULL;
    for (Py_ssize_t k = 0; k < n; k++) {
        memcpy(o, (const uint8_t *)views[si[k]].buf + st[k], (size_t)ln[k]);
        o += ln[k];
    }
    if (ts != NULL)
        PyEval_RestoreThread(ts);
done:
    for (Py_ssize_t v = 0; v < nviews; v++)
        PyBuffer_Release(&views[v]);
    PyMem_Free(views);
    PyBuffer_Release(&src);
    PyBuffer_Release(&starts);
    PyBuffer_Release(&lens);
    return result;
}

static PyMethodDef methods[] = {
    {"gather", gather, METH_VARARGS,
     "gather(srcs, src, starts, lens) -> bytes: the pieces srcs[src[k]][starts[k]:+lens[k]]"
     " back to back (src: u32, starts and lens: i64 buffers)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_gather", NULL, -1, methods};

PyMODINIT_FUNC PyInit__gather(void) { return PyModule_Create(&module); }
