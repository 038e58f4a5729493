/* The redo engine's compiled page operations: PageRepairFragmentation,
 * PageIndexMultiDelete, the heap UPDATE redo of one block, and the replay of a
 * chain of heap/heap2 records on one page.
 *
 * Files: this one holds the module, the page compaction and the checksums;
 * _pagec_heap.c the heap/heap2 redo and the chain; _pagec_btree.c the chain's
 * btree inserts; _pagec_vm.c the chain's
 * visibility-map redo; _pagec_record.c the WAL record layout; _pagec_window.c
 * the chains of a window built in one call (redo_window, documented there);
 * _pagec.h what they share.
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
 * redo_chain(page, deltas: list of REL_BLOCK delta bytes, lsns: list of their entry
 *            LSNs, start, spc, db, rel, fork, blk) -> int
 *   `reconstruct._redo_rel_block`'s fast path: decodes each record delta (the
 *   layout of DecodeXLogRecord) and replays, on that block's page in place, the
 *   heap INSERT(+INIT), DELETE, UPDATE, HOT_UPDATE, LOCK, heap2 PRUNE_* (redirects,
 *   dead, unused, repair or truncation, freeze plans), MULTI_INSERT(+INIT) and VISIBLE (heap page),
 *   btree INSERT_LEAF and INSERT_UPPER (the new tuple on block 0)
 *   records, uncompressed image deltas (restored, hole zeroed, LSN stamped), and on a
 *   visibility-map page (fork 2) the bits those records clear
 *   and VISIBLE's set (_pagec_vm.c), with redo's BLK_DONE rule and PageSetLSN
 *   (VISIBLE that changes no bit leaves the LSN, as PostgreSQL does); returns the index of the
 *   first delta it did not apply (a compressed image delta, another record type, an
 *   apply-image, or anything doubtful: each record runs on a copy, so the page
 *   is as before that record). Python redoes that one (and raises its errors)
 *   and calls again. References: `redo.heap`, `redo.heap2`, `wal.decoder`;
 *   tested state for state against them and against wal_consistency_checking
 *   images (tests/reconstruct/test_redo_oracle.py).
 * set_checksums(buf, blknos: uint32 little-endian buffer) -> None
 *   pd_checksum (checksum_impl.h) of every non-new page of `buf`, in place:
 *   lazy file systems checksum every page they serve. `pg.checksum` is the
 *   reference (numpy), tested against this one on random pages.
 * index_multi_delete(page, itemnos: ascending ints, more than two) -> str | None
 *   PageIndexMultiDelete, the same way (`index_tuples.page_index_multi_delete_python`
 *   is its reference); btree/hash/gist vacuum and delete records call it.
 *
 * Page layout (PostgreSQL's bufpage.h, little-endian): header of 24 bytes
 * (pd_flags at 10, pd_lower at 12, pd_upper at 14, pd_special at 16), then
 * 4-byte line pointers: lp_off = w & 0x7FFF, lp_flags = (w >> 15) & 3,
 * lp_len = w >> 17.
 */
#include "_pagec.h"

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
int pagec_repair(uint8_t *page, char *err, size_t errlen) {
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

/* PageAddItemExtended at a given offset, `flags` PAI_OVERWRITE (reuse the unused line
 * pointer `offnum`) and PAI_IS_HEAP (at most MaxHeapTuplesPerPage items), else the
 * line pointers from `offnum` on move up one: offnum, 0 where PostgreSQL returns
 * InvalidOffsetNumber, -1 on corrupt pointers (the Python path raises). The
 * reference: `page_ops.page_add_item`. */
int pagec_add_item(uint8_t *b, const uint8_t *item, int size, int offnum, int flags) {
    int lower0 = rd16(b + OFF_LOWER), upper0 = rd16(b + OFF_UPPER);
    int special = rd16(b + OFF_SPECIAL);
    if (lower0 < HEADER || lower0 > upper0 || upper0 > special || special > BLCKSZ)
        return -1;
    int limit = (lower0 - HEADER) / 4 + 1, shuffle = 0;
    if (offnum < 1)
        return 0;
    if (offnum < limit) {
        uint32_t w = rd32(b + HEADER + 4 * (offnum - 1));
        if (!(flags & PAI_OVERWRITE))
            shuffle = 1;
        else if (((w >> 15) & 0x3) != LP_UNUSED || (w >> 17) != 0)
            return 0;
    }
    if (offnum > limit || ((flags & PAI_IS_HEAP) && offnum > MAX_HEAP_TUPLES_PER_PAGE))
        return 0;
    int lower = offnum == limit || shuffle ? lower0 + 4 : lower0;
    int upper = upper0 - ((size + 7) & ~7);
    if (lower > upper)
        return 0;
    uint8_t *lp = b + HEADER + 4 * (offnum - 1);
    if (shuffle)
        memmove(lp + 4, lp, (size_t)(limit - offnum) * 4);
    wr32(lp, (uint32_t)upper | ((uint32_t)LP_NORMAL << 15) | ((uint32_t)size << 17));
    memcpy(b + upper, item, (size_t)size);
    wr16(b + OFF_LOWER, (uint16_t)lower);
    wr16(b + OFF_UPPER, (uint16_t)upper);
    return offnum;
}

int pagec_get_page(PyObject *arg, Py_buffer *view) {
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
    if (pagec_get_page(pageobj, &view) < 0)
        return NULL;
    char err[160];
    int rc = multi_delete((uint8_t *)view.buf, nos, n, err, sizeof err);
    PyBuffer_Release(&view);
    if (rc != 0)
        return PyUnicode_FromString(err);
    Py_RETURN_NONE;
}

/* -- pd_checksum (checksum_impl.h; `pg.checksum` is the reference) -------------- */

static const uint32_t CHECKSUM_BASE[32] = {
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2,
    0x83E13D2C, 0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C,
    0xF718902A, 0x0B1C9CDB, 0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979,
    0xCCA6C0B2, 0x304A0979, 0x85AA43D4, 0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E,
    0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
};

static uint16_t page_checksum(const uint8_t *page, uint32_t blkno) {
    uint32_t sums[32], row[32];
    memcpy(sums, CHECKSUM_BASE, sizeof sums);
    for (int i = 0; i < BLCKSZ / 128; i++) {
        memcpy(row, page + 128 * i, 128);           /* little-endian words */
        if (i == 0)
            row[2] &= 0xFFFF0000u;                    /* pd_checksum reads as zero */
        for (int j = 0; j < 32; j++) {
            uint32_t tmp = sums[j] ^ row[j];
            sums[j] = (tmp * 16777619u) ^ (tmp >> 17);
        }
    }
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 32; j++) {
            uint32_t tmp = sums[j];
            sums[j] = (tmp * 16777619u) ^ (tmp >> 17);
        }
    uint32_t result = 0;
    for (int j = 0; j < 32; j++)
        result ^= sums[j];
    result ^= blkno;
    return (uint16_t)((result % 65535) + 1);
}

/* set_checksums(buf, blknos: uint32 buffer) -> None */
static PyObject *set_checksums(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer buf, blk;
    if (!PyArg_ParseTuple(args, "w*y*", &buf, &blk))
        return NULL;
    Py_ssize_t n = blk.len / 4;
    if (buf.len != n * BLCKSZ || blk.len % 4 != 0) {
        PyBuffer_Release(&buf);
        PyBuffer_Release(&blk);
        PyErr_SetString(PyExc_ValueError, "set_checksums: one block number per 8 KB page");
        return NULL;
    }
    uint8_t *p = (uint8_t *)buf.buf;
    const uint8_t *b = (const uint8_t *)blk.buf;
    for (Py_ssize_t k = 0; k < n; k++, p += BLCKSZ)
        if (rd16(p + OFF_UPPER) != 0)                 /* new pages carry no checksum */
            wr16(p + 8, page_checksum(p, rd32(b + 4 * k)));
    PyBuffer_Release(&buf);
    PyBuffer_Release(&blk);
    Py_RETURN_NONE;
}

static PyObject *repair_fragmentation(PyObject *self, PyObject *arg) {
    (void)self;
    Py_buffer view;
    if (pagec_get_page(arg, &view) < 0)
        return NULL;
    char err[160];
    int rc = pagec_repair((uint8_t *)view.buf, err, sizeof err);
    PyBuffer_Release(&view);
    if (rc != 0)
        return PyUnicode_FromString(err);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"repair_fragmentation", repair_fragmentation, METH_O,
     "PageRepairFragmentation in place; the corruption's message, or None."},
    {"heap_update", pagec_heap_update_redo, METH_VARARGS,
     "heap_update(page, main_data, block_data, block_id, same_page, init, xid, newblk, hot):"
     " one block of a heap UPDATE/HOT_UPDATE in place; False (page untouched) where the"
     " Python redo must decide."},
    {"redo_chain", pagec_redo_chain, METH_VARARGS,
     "redo_chain(page, deltas, lsns, start, spc, db, rel, fork, blk) -> int: apply the"
     " REL_BLOCK record deltas[start:] (stored at lsns[start:]) to the page of that block"
     " in place while they are heap/heap2 records this module replays; the index of the first one left to Python."},
    {"redo_window", pagec_redo_window, METH_VARARGS,
     "redo_window(dst, width, bufs, which, starts, ends, kinds, keys, lsns, first, stop,"
     " slots, done[, base]) -> int: the chains of a window built into their slots of dst, each from"
     " its rows or on a base page (_pagec_window.c)."},
    {"set_checksums", set_checksums, METH_VARARGS,
     "set_checksums(buf, blknos: uint32 LE buffer): pd_checksum of every page of buf that"
     " is not new, in place (pg.checksum.set_checksums is the reference)."},
    {"index_multi_delete", index_multi_delete, METH_VARARGS,
     "PageIndexMultiDelete(page, itemnos ascending) in place; the corruption's message, or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_pagec", "Compiled page operations of the redo engine.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__pagec(void) { return PyModule_Create(&module); }
