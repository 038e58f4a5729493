/* The redo engine's compiled page operations: PageRepairFragmentation and
 * PageIndexMultiDelete.
 *
 * What it is: the same function as `page_ops.repair_fragmentation_python`
 * (the reference, tested byte for byte against this one in
 * tests/reconstruct/test_page_ops.py), for the hot path: every heap PRUNE
 * record replayed when a page is rebuilt calls it (a third of a lazy full
 * scan's CPU in Python, 2026-12-03). Optional: `page_ops` falls back to the
 * reference when this module is not built.
 *
 * repair_fragmentation(page: writable buffer of BLCKSZ bytes) -> str | None
 *   Changes `page` in place and returns None; or returns the message of the
 *   corruption found, with `page` unchanged (the caller raises RedoError).
 * index_multi_delete(page, itemnos: ascending ints, more than two) -> str | None
 *   PageIndexMultiDelete, the same way (`index_tuples.page_index_multi_delete_python`
 *   is its reference); btree/hash/gist vacuum and delete records call it.
 *
 * Page layout (PostgreSQL's bufpage.h, little-endian): header of 24 bytes
 * (pd_flags at 10, pd_lower at 12, pd_upper at 14, pd_special at 16), then
 * 4-byte line pointers: lp_off = w & 0x7FFF, lp_flags = (w >> 15) & 3,
 * lp_len = w >> 17.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define BLCKSZ 8192
#define HEADER 24
#define OFF_FLAGS 10
#define OFF_LOWER 12
#define OFF_UPPER 14
#define OFF_SPECIAL 16
#define PD_HAS_FREE_LINES 0x0001
#define LP_UNUSED 0
#define MAX_ITEMS ((BLCKSZ - HEADER) / 4)

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static void wr16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static void wr32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}

typedef struct { int idx; int off; int alen; } item_t;

/* check_pointers: 0, or the message in err and -1. */
static int check_pointers(const uint8_t *page, int *lower, int *upper, int *special,
                          char *err, size_t errlen) {
    *lower = rd16(page + OFF_LOWER);
    *upper = rd16(page + OFF_UPPER);
    *special = rd16(page + OFF_SPECIAL);
    if (*lower < HEADER || *lower > *upper || *upper > *special || *special > BLCKSZ
            || *special != ((*special + 7) & ~7)) {
        snprintf(err, errlen, "corrupted page pointers: lower = %d, upper = %d, special = %d",
                 *lower, *upper, *special);
        return -1;
    }
    return 0;
}

/* compactify_tuples: items (in line-pointer order) packed from pd_special down;
 * their words updated; pd_upper set. */
static void compactify(uint8_t *page, uint32_t *words, const item_t *items, int nitems,
                       int special) {
    uint8_t src[BLCKSZ];
    memcpy(src, page, BLCKSZ);
    int top = special;
    for (int k = 0; k < nitems; k++) {
        top -= items[k].alen;
        if (top != items[k].off)
            memcpy(page + top, src + items[k].off, (size_t)items[k].alen);
        words[items[k].idx] = (words[items[k].idx] & ~(uint32_t)0x7FFF) | (uint32_t)top;
    }
    wr16(page + OFF_UPPER, (uint16_t)top);
}

/* PageRepairFragmentation: 0, or the message in err and -1 (page unchanged). */
static int repair(uint8_t *page, char *err, size_t errlen) {
    int lower, upper, special;
    if (check_pointers(page, &lower, &upper, &special, err, errlen) != 0)
        return -1;
    int nline = lower <= HEADER ? 0 : (lower - HEADER) / 4;
    uint32_t words[MAX_ITEMS];
    item_t items[MAX_ITEMS];
    int nitems = 0, nunused = 0, finalusedlp = 0;
    long totallen = 0;
    for (int i = 0; i < nline; i++) {
        uint32_t w = rd32(page + HEADER + 4 * i);
        words[i] = w;
        if (((w >> 15) & 0x3) != LP_UNUSED) {
            int len = (int)(w >> 17);
            if (len != 0) {
                int off = (int)(w & 0x7FFF);
                if (off < upper || off >= special) {
                    snprintf(err, errlen, "corrupted line pointer: %d", off);
                    return -1;
                }
                int alen = (len + 7) & ~7;
                totallen += alen;
                items[nitems].idx = i;
                items[nitems].off = off;
                items[nitems].alen = alen;
                nitems++;
            }
            finalusedlp = i + 1;
        } else {
            words[i] = 0; /* ItemIdSetUnused */
            nunused++;
        }
    }
    if (nitems == 0) {
        wr16(page + OFF_UPPER, (uint16_t)special);
    } else {
        if (totallen > special - lower) {
            snprintf(err, errlen, "corrupted item lengths: total %ld, available space %d",
                     totallen, special - lower);
            return -1;
        }
        compactify(page, words, items, nitems, special);
    }
    for (int i = 0; i < nline; i++)
        wr32(page + HEADER + 4 * i, words[i]);
    if (finalusedlp != nline) {
        int nunusedend = nline - finalusedlp;
        nunused -= nunusedend;
        wr16(page + OFF_LOWER, (uint16_t)(rd16(page + OFF_LOWER) - 4 * nunusedend));
    }
    uint16_t flags = rd16(page + OFF_FLAGS);
    if (nunused > 0)
        flags |= PD_HAS_FREE_LINES;
    else
        flags &= (uint16_t)~PD_HAS_FREE_LINES;
    wr16(page + OFF_FLAGS, flags);
    return 0;
}

/* PageIndexMultiDelete (more than two items; itemnos ascending): 0, or the
 * message in err and -1 (page unchanged). */
static int multi_delete(uint8_t *page, const long *itemnos, Py_ssize_t nitems, char *err,
                        size_t errlen) {
    int lower, upper, special;
    if (check_pointers(page, &lower, &upper, &special, err, errlen) != 0)
        return -1;
    int nline = lower <= HEADER ? 0 : (lower - HEADER) / 4;
    uint32_t words[MAX_ITEMS];
    item_t items[MAX_ITEMS];
    int nnew = 0;
    long totallen = 0;
    Py_ssize_t nextitm = 0;
    for (int i = 0; i < nline; i++) {
        uint32_t w = rd32(page + HEADER + 4 * i);
        int off = (int)(w & 0x7FFF), len = (int)(w >> 17);
        if (off < upper || off + len > special || off != ((off + 7) & ~7)) {
            snprintf(err, errlen, "corrupted line pointer: offset = %d, size = %d", off, len);
            return -1;
        }
        if (nextitm < nitems && i + 1 == itemnos[nextitm]) {
            nextitm++;
        } else {
            int alen = (len + 7) & ~7;
            items[nnew].idx = nnew;
            items[nnew].off = off;
            items[nnew].alen = alen;
            totallen += alen;
            words[nnew++] = w;
        }
    }
    if (nextitm != nitems) {
        snprintf(err, errlen, "incorrect index offsets supplied");
        return -1;
    }
    if (totallen > special - lower) {
        snprintf(err, errlen, "corrupted item lengths: total %ld, available space %d",
                 totallen, special - lower);
        return -1;
    }
    wr16(page + OFF_LOWER, (uint16_t)(HEADER + 4 * nnew));
    if (nnew > 0) {
        compactify(page, words, items, nnew, special);
        for (int i = 0; i < nnew; i++)
            wr32(page + HEADER + 4 * i, words[i]);
    } else {
        wr16(page + OFF_UPPER, (uint16_t)special);
    }
    return 0;
}

static int get_page(PyObject *arg, Py_buffer *view) {
    if (PyObject_GetBuffer(arg, view, PyBUF_WRITABLE) < 0)
        return -1;
    if (view->len != BLCKSZ) {
        PyErr_Format(PyExc_ValueError, "a page is %d bytes, not %zd", BLCKSZ, view->len);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static PyObject *index_multi_delete(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *pageobj, *seq;
    if (!PyArg_ParseTuple(args, "OO", &pageobj, &seq))
        return NULL;
    PyObject *fast = PySequence_Fast(seq, "itemnos must be a sequence of ints");
    if (fast == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    if (n > MAX_ITEMS) {
        Py_DECREF(fast);
        return PyUnicode_FromString("incorrect index offsets supplied");
    }
    long nos[MAX_ITEMS];
    for (Py_ssize_t i = 0; i < n; i++) {
        nos[i] = PyLong_AsLong(PySequence_Fast_GET_ITEM(fast, i));
        if (nos[i] == -1 && PyErr_Occurred()) {
            Py_DECREF(fast);
            return NULL;
        }
    }
    Py_DECREF(fast);
    Py_buffer view;
    if (get_page(pageobj, &view) < 0)
        return NULL;
    char err[160];
    int rc = multi_delete((uint8_t *)view.buf, nos, n, err, sizeof err);
    PyBuffer_Release(&view);
    if (rc != 0)
        return PyUnicode_FromString(err);
    Py_RETURN_NONE;
}

static PyObject *repair_fragmentation(PyObject *self, PyObject *arg) {
    (void)self;
    Py_buffer view;
    if (get_page(arg, &view) < 0)
        return NULL;
    char err[160];
    int rc = repair((uint8_t *)view.buf, err, sizeof err);
    PyBuffer_Release(&view);
    if (rc != 0)
        return PyUnicode_FromString(err);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"repair_fragmentation", repair_fragmentation, METH_O,
     "PageRepairFragmentation in place; the corruption's message, or None."},
    {"index_multi_delete", index_multi_delete, METH_VARARGS,
     "PageIndexMultiDelete(page, itemnos ascending) in place; the corruption's message, or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_pagec", "Compiled page operations of the redo engine.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__pagec(void) { return PyModule_Create(&module); }
