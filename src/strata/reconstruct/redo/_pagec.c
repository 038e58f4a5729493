/* The redo engine's compiled page operations: PageRepairFragmentation,
 * PageIndexMultiDelete and the heap UPDATE redo of one block.
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
 * heap_update(page, main_data, block_data, block_id, same_page, init, xid, newblk,
 *             hot) -> bool
 *   One block of a heap UPDATE / HOT_UPDATE (`redo.heap._update_python` is its
 *   reference): True with the page changed, or False with the page untouched
 *   wherever the Python redo must decide (a corrupt page, a bad offset, a tuple
 *   that does not fit: it raises the error with the record's LSN).
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

/* -- heap UPDATE / HOT_UPDATE redo of one block (heap_xlog_update) ------------- */

#define T_XMAX 4
#define T_CID 8
#define T_CTID 12
#define T_INFOMASK2 18
#define T_INFOMASK 20
#define T_HOFF 22
#define SIZEOF_HEAP_TUPLE_HEADER 23
#define LP_NORMAL 1
#define PD_ALL_VISIBLE 0x0004
#define OFF_PRUNE_XID 20
#define MAX_HEAP_TUPLES_PER_PAGE ((BLCKSZ - HEADER) / (24 + 4))
#define HEAP_XMAX_KEYSHR_LOCK 0x0010
#define HEAP_COMBOCID 0x0020
#define HEAP_XMAX_EXCL_LOCK 0x0040
#define HEAP_XMAX_LOCK_ONLY 0x0080
#define HEAP_XMAX_IS_MULTI 0x1000
#define HEAP_XMAX_BITS 0x1CD0 /* COMMITTED | INVALID | IS_MULTI | LOCK_MASK | LOCK_ONLY */
#define HEAP_MOVED 0xC000
#define HEAP_KEYS_UPDATED 0x2000
#define HEAP_HOT_UPDATED 0x4000
#define XLHL_XMAX_IS_MULTI 0x01
#define XLHL_XMAX_LOCK_ONLY 0x02
#define XLHL_XMAX_EXCL_LOCK 0x04
#define XLHL_XMAX_KEYSHR_LOCK 0x08
#define XLHL_KEYS_UPDATED 0x10
#define XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED 0x01
#define XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED 0x02
#define XLH_UPDATE_PREFIX_FROM_OLD 0x20
#define XLH_UPDATE_SUFFIX_FROM_OLD 0x40
#define FIRST_NORMAL_XID 3

static int xid_precedes(uint32_t a, uint32_t b) {
    if (a < FIRST_NORMAL_XID || b < FIRST_NORMAL_XID)
        return a < b;
    return (int32_t)(a - b) < 0;
}

/* The old tuple's changes; its position, or -1 where the Python path must decide
 * (it raises, or does what it does on such a page). */
static int update_old(uint8_t *b, uint32_t xid, uint32_t old_xmax, int old_offnum,
                      int infobits, int flags, int hot, uint32_t newblk, int new_offnum) {
    int lower = rd16(b + OFF_LOWER);
    int maxoff = lower <= HEADER ? 0 : (lower - HEADER) / 4;
    if (old_offnum < 1 || old_offnum > maxoff)
        return -1;
    uint32_t w = rd32(b + HEADER + 4 * (old_offnum - 1));
    int t = (int)(w & 0x7FFF);
    if (((w >> 15) & 0x3) != LP_NORMAL || t < HEADER || t + 24 > BLCKSZ)
        return -1;
    uint16_t im = rd16(b + t + T_INFOMASK), im2 = rd16(b + t + T_INFOMASK2);
    im &= (uint16_t)~(HEAP_XMAX_BITS | HEAP_MOVED);                  /* clear_xmax_bits */
    im2 &= (uint16_t)~HEAP_KEYS_UPDATED;
    im2 = hot ? (uint16_t)(im2 | HEAP_HOT_UPDATED) : (uint16_t)(im2 & ~HEAP_HOT_UPDATED);
    im &= (uint16_t)~(HEAP_XMAX_IS_MULTI | HEAP_XMAX_LOCK_ONLY | HEAP_XMAX_KEYSHR_LOCK
                      | HEAP_XMAX_EXCL_LOCK);                          /* fix_infomask_... */
    if (infobits & XLHL_XMAX_IS_MULTI) im |= HEAP_XMAX_IS_MULTI;
    if (infobits & XLHL_XMAX_LOCK_ONLY) im |= HEAP_XMAX_LOCK_ONLY;
    if (infobits & XLHL_XMAX_EXCL_LOCK) im |= HEAP_XMAX_EXCL_LOCK;
    if (infobits & XLHL_XMAX_KEYSHR_LOCK) im |= HEAP_XMAX_KEYSHR_LOCK;
    if (infobits & XLHL_KEYS_UPDATED) im2 |= HEAP_KEYS_UPDATED;
    wr32(b + t + T_XMAX, old_xmax);
    wr32(b + t + T_CID, 0);                                             /* set_cmax_plain */
    im &= (uint16_t)~HEAP_COMBOCID;
    wr16(b + t + T_INFOMASK, im);
    wr16(b + t + T_INFOMASK2, im2);
    wr16(b + t + T_CTID, (uint16_t)(newblk >> 16));                     /* set_ctid */
    wr16(b + t + T_CTID + 2, (uint16_t)(newblk & 0xFFFF));
    wr16(b + t + T_CTID + 4, (uint16_t)new_offnum);
    uint32_t cur = rd32(b + OFF_PRUNE_XID);                             /* page_set_prunable */
    if (cur == 0 || xid_precedes(xid, cur))
        wr32(b + OFF_PRUNE_XID, xid);
    if (flags & XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED)
        wr16(b + OFF_FLAGS, (uint16_t)(rd16(b + OFF_FLAGS) & ~PD_ALL_VISIBLE));
    return t;
}

/* PageAddItemExtended(page, item, offnum, PAI_OVERWRITE | PAI_IS_HEAP); 0 where it
 * returns InvalidOffsetNumber, -1 on corrupt pointers (the Python path raises). */
static int add_heap_item_overwrite(uint8_t *b, const uint8_t *item, int size, int offnum) {
    int lower0 = rd16(b + OFF_LOWER), upper0 = rd16(b + OFF_UPPER);
    int special = rd16(b + OFF_SPECIAL);
    if (lower0 < HEADER || lower0 > upper0 || upper0 > special || special > BLCKSZ)
        return -1;
    int limit = (lower0 - HEADER) / 4 + 1;
    if (offnum < limit) {
        uint32_t w = rd32(b + HEADER + 4 * (offnum - 1));
        if (((w >> 15) & 0x3) != LP_UNUSED || (w >> 17) != 0)
            return 0;
    }
    if (offnum > limit || offnum > MAX_HEAP_TUPLES_PER_PAGE)
        return 0;
    int lower = offnum == limit ? lower0 + 4 : lower0;
    int upper = upper0 - ((size + 7) & ~7);
    if (lower > upper)
        return 0;
    wr32(b + HEADER + 4 * (offnum - 1),
         (uint32_t)upper | ((uint32_t)LP_NORMAL << 15) | ((uint32_t)size << 17));
    memcpy(b + upper, item, (size_t)size);
    wr16(b + OFF_LOWER, (uint16_t)lower);
    wr16(b + OFF_UPPER, (uint16_t)upper);
    return offnum;
}

/* One block of an UPDATE into a copy of the page; 1 and the page replaced, or 0
 * with the page untouched (the Python path then runs: it raises or decides). */
static int heap_update(uint8_t *page, const uint8_t *md, Py_ssize_t mdlen,
                       const uint8_t *data, Py_ssize_t dlen, int block_id, int same_page,
                       int init, uint32_t xid, uint32_t newblk, int hot) {
    if (mdlen < 14)
        return 0;
    uint32_t old_xmax = rd32(md);
    int old_offnum = rd16(md + 4), infobits = md[6], flags = md[7];
    uint32_t new_xmax = rd32(md + 8);
    int new_offnum = rd16(md + 12);
    uint8_t b[BLCKSZ];
    memcpy(b, page, BLCKSZ);
    if (block_id == 1) {
        if (update_old(b, xid, old_xmax, old_offnum, infobits, flags, hot, newblk,
                       new_offnum) < 0)
            return 0;
        memcpy(page, b, BLCKSZ);
        return 1;
    }
    if (block_id != 0 || new_offnum == 0)
        return 0;
    const uint8_t *old = NULL;
    int oldlen = 0;
    if (same_page) {
        int t = update_old(b, xid, old_xmax, old_offnum, infobits, flags, hot, newblk,
                           new_offnum);
        if (t < 0)
            return 0;
        oldlen = (int)(rd32(b + HEADER + 4 * (old_offnum - 1)) >> 17);
        if (t + oldlen > BLCKSZ || oldlen <= T_HOFF)
            return 0;
        old = b + t;
    } else if (init) {
        memset(b, 0, BLCKSZ);
        wr16(b + OFF_LOWER, HEADER);
        wr16(b + OFF_UPPER, BLCKSZ);
        wr16(b + OFF_SPECIAL, BLCKSZ);
        wr16(b + 18, BLCKSZ | 4); /* pd_pagesize_version */
    }
    Py_ssize_t pos = 0;
    int prefixlen = 0, suffixlen = 0;
    if (flags & XLH_UPDATE_PREFIX_FROM_OLD) {
        if (dlen < pos + 2) return 0;
        prefixlen = rd16(data + pos);
        pos += 2;
    }
    if (flags & XLH_UPDATE_SUFFIX_FROM_OLD) {
        if (dlen < pos + 2) return 0;
        suffixlen = rd16(data + pos);
        pos += 2;
    }
    if (dlen < pos + 5)
        return 0;
    uint16_t im2 = rd16(data + pos), im = rd16(data + pos + 2);
    int hoff = data[pos + 4];
    pos += 5;
    const uint8_t *rec = data + pos;
    int reclen = (int)(dlen - pos);
    if ((prefixlen || suffixlen) && !same_page)
        return 0;
    int nb = hoff - SIZEOF_HEAP_TUPLE_HEADER;
    int old_hoff = old != NULL ? old[T_HOFF] : 0;
    if (prefixlen > 0 && (nb < 0 || nb > reclen || old_hoff + prefixlen > oldlen))
        return 0; /* Python slices would clamp: let it decide */
    if (suffixlen > oldlen)
        return 0;
    int size = SIZEOF_HEAP_TUPLE_HEADER + reclen + prefixlen + suffixlen;
    if (size > BLCKSZ)
        return 0;
    uint8_t tup[BLCKSZ];
    wr32(tup, xid);                          /* build_new_tuple: xmin */
    wr32(tup + T_XMAX, new_xmax);
    wr32(tup + T_CID, 0);                    /* cmin = FirstCommandId */
    wr16(tup + T_CTID, (uint16_t)(newblk >> 16));
    wr16(tup + T_CTID + 2, (uint16_t)(newblk & 0xFFFF));
    wr16(tup + T_CTID + 4, (uint16_t)new_offnum);
    wr16(tup + T_INFOMASK2, im2);
    wr16(tup + T_INFOMASK, (uint16_t)(im & ~HEAP_COMBOCID));
    tup[T_HOFF] = (uint8_t)hoff;
    uint8_t *body = tup + SIZEOF_HEAP_TUPLE_HEADER;
    if (prefixlen > 0) { /* bitmap/padding from WAL, the old data's prefix, the rest */
        memcpy(body, rec, (size_t)nb);
        memcpy(body + nb, old + old_hoff, (size_t)prefixlen);
        memcpy(body + nb + prefixlen, rec + nb, (size_t)(reclen - nb));
    } else {
        memcpy(body, rec, (size_t)reclen);
    }
    if (suffixlen > 0)
        memcpy(body + reclen + prefixlen, old + oldlen - suffixlen, (size_t)suffixlen);
    if (add_heap_item_overwrite(b, tup, size, new_offnum) <= 0)
        return 0;
    if (flags & XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED)
        wr16(b + OFF_FLAGS, (uint16_t)(rd16(b + OFF_FLAGS) & ~PD_ALL_VISIBLE));
    memcpy(page, b, BLCKSZ);
    return 1;
}

static PyObject *heap_update_redo(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *pageobj;
    Py_buffer md, data;
    int block_id, same_page, init, hot;
    unsigned long xid, newblk;
    if (!PyArg_ParseTuple(args, "Oy*y*iipkkp", &pageobj, &md, &data, &block_id, &same_page,
                          &init, &xid, &newblk, &hot))
        return NULL;
    Py_buffer view;
    if (get_page(pageobj, &view) < 0) {
        PyBuffer_Release(&md);
        PyBuffer_Release(&data);
        return NULL;
    }
    int done = heap_update((uint8_t *)view.buf, md.buf, md.len, data.buf, data.len, block_id,
                           same_page, init, (uint32_t)xid, (uint32_t)newblk, hot);
    PyBuffer_Release(&view);
    PyBuffer_Release(&md);
    PyBuffer_Release(&data);
    return PyBool_FromLong(done);
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
    {"heap_update", heap_update_redo, METH_VARARGS,
     "heap_update(page, main_data, block_data, block_id, same_page, init, xid, newblk, hot):"
     " one block of a heap UPDATE/HOT_UPDATE in place; False (page untouched) where the"
     " Python redo must decide."},
    {"index_multi_delete", index_multi_delete, METH_VARARGS,
     "PageIndexMultiDelete(page, itemnos ascending) in place; the corruption's message, or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_pagec", "Compiled page operations of the redo engine.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__pagec(void) { return PyModule_Create(&module); }
