/* The chains of a window of relation pages laid into a page buffer in one call:
 * `reconstruct.chains_into`'s compiled path (storage's `scan.scan_dense`, which the
 * lazy file system's reads and its readahead helpers run, hands it every chain of a
 * window that is not one image).
 *
 * redo_window(dst, width, bufs, which, starts, ends, kinds, keys, lsns, first, stop,
 *             slots, done) -> int
 *   The rows of a window's entries (storage.batch.EntryBatch's columns: row i's value
 *   is bufs[which[i]][starts[i]:ends[i]] (`which` None: bufs[0]), kinds[i] a
 *   ValueKind, keys the rows' 18-byte keys back to back, lsns[i] its entry LSN: the
 *   end LSN of a record delta that does not keep it) and the chains to build:
 *   chain c is rows [first[c], stop[c]), oldest first, of one key, laid at
 *   dst[slots[c] * width:][:width]. A chain starts at an image (copied), a tombstone
 *   or a record (no page: it starts from zeros where Python's redo does, at an image
 *   delta, a WILL_INIT record or a visibility-map record); its deltas go through `pagec_chain_step` (the same steps as redo_chain). done[c]
 *   is set to 1 for a chain built whole, else 0: a chain of another key kind, a
 *   page that is not BLCKSZ bytes, a delta the chain does not take. Its slot may then
 *   hold a part of the work: the caller builds that chain again through Python (the
 *   reference, which raises the errors) and overwrites the slot. Returns how many
 *   chains were built. Raises ValueError for columns whose sizes or rows do not
 *   fit each other (a caller's bug, never data).
 *
 * redo_window(..., done, base) -> int
 *   The same, with chains that go on from a page (the flush's chain cuts,
 *   `storage.flush.cut_long_chains`): base[c] -1 starts chain c as above; base[c] == c
 *   means its slot already holds the page its rows [first[c], stop[c]) apply to; base[c]
 *   < c means chain base[c]'s page (its slot, as built) is that page, and chain c is
 *   left (done 0) when chain base[c] was. Rows on a base must all be deltas (WAL_RECORD
 *   or WAL_RECORD_INIT), else the chain is left to Python. base[c] > c, or below -1,
 *   raises ValueError.
 *
 * Dtypes (the caller converts): starts, ends, lsns, first, stop, slots, base int64; which
 * uint32; kinds and done uint8; every buffer C-contiguous.
 *
 * With chains of RELEASE_GIL_ROWS rows or more in all, the GIL is released while they
 * are built (pure C, on the buffers the call holds: a bytearray cannot be resized
 * meanwhile), so the writer's flush thread builds its chain cuts while the ingest
 * thread runs; an error is kept in the window's `err` and raised once the GIL is
 * back.
 */
#include "_pagec.h"

#define KIND_IMAGE 0 /* storage.values.ValueKind, written to disk */
#define KIND_RECORD 1
#define KIND_RECORD_INIT 2
#define KIND_TOMBSTONE 3
#define KEY_BYTES 18
#define RELEASE_GIL_ROWS 16384 /* rows of chains in a call that lets other threads run */

static uint32_t be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

typedef struct {
    Py_buffer dst, which, starts, ends, kinds, keys, lsns, first, stop, slots, done, base;
    Py_buffer *bufs;
    Py_ssize_t nbufs, got_bufs;
    int has_which, has_base;
    char err[160]; /* the ValueError raised once the GIL is back, when err[0] */
} window_t;

static void window_release(window_t *w) {
    Py_buffer *all[] = {&w->dst, &w->which, &w->starts, &w->ends, &w->kinds, &w->keys,
                        &w->lsns, &w->first, &w->stop, &w->slots, &w->done, &w->base};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (all[i]->obj != NULL)
            PyBuffer_Release(all[i]);
    for (Py_ssize_t i = 0; i < w->got_bufs; i++)
        PyBuffer_Release(&w->bufs[i]);
    PyMem_Free(w->bufs);
}

static int get(PyObject *o, Py_buffer *b, int flags, Py_ssize_t want, const char *what) {
    if (PyObject_GetBuffer(o, b, flags | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    if (want >= 0 && b->len != want) {
        PyErr_Format(PyExc_ValueError, "%s: %zd bytes, %zd expected", what, b->len, want);
        return -1;
    }
    return 0;
}

/* Every buffer of the call, with the sizes the columns imply checked. */
static int window_open(window_t *w, PyObject *const *o, PyObject *bufs) {
    if (get(o[0], &w->dst, PyBUF_WRITABLE, -1, "dst") < 0
            || get(o[3], &w->starts, PyBUF_SIMPLE, -1, "starts") < 0)
        return -1;
    Py_ssize_t n = w->starts.len / 8;
    if (get(o[4], &w->ends, PyBUF_SIMPLE, n * 8, "ends") < 0
            || get(o[5], &w->kinds, PyBUF_SIMPLE, n, "kinds") < 0
            || get(o[6], &w->keys, PyBUF_SIMPLE, n * KEY_BYTES, "keys") < 0
            || get(o[7], &w->lsns, PyBUF_SIMPLE, n * 8, "lsns") < 0
            || get(o[8], &w->first, PyBUF_SIMPLE, -1, "first") < 0)
        return -1;
    Py_ssize_t m = w->first.len / 8;
    if (get(o[9], &w->stop, PyBUF_SIMPLE, m * 8, "stop") < 0
            || get(o[10], &w->slots, PyBUF_SIMPLE, m * 8, "slots") < 0
            || get(o[11], &w->done, PyBUF_WRITABLE, m, "done") < 0)
        return -1;
    w->has_base = o[12] != Py_None;
    if (w->has_base && get(o[12], &w->base, PyBUF_SIMPLE, m * 8, "base") < 0)
        return -1;
    w->has_which = o[2] != Py_None;
    if (w->has_which && get(o[2], &w->which, PyBUF_SIMPLE, n * 4, "which") < 0)
        return -1;
    w->nbufs = PyTuple_GET_SIZE(bufs);
    w->bufs = PyMem_Calloc((size_t)(w->nbufs ? w->nbufs : 1), sizeof(Py_buffer));
    if (w->bufs == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (; w->got_bufs < w->nbufs; w->got_bufs++)
        if (get(PyTuple_GET_ITEM(bufs, w->got_bufs), &w->bufs[w->got_bufs], PyBUF_SIMPLE, -1,
                "bufs") < 0)
            return -1;
    return 0;
}

/* Row i's value, or NULL (with w->err set) when its bounds do not fit its buffer. */
static const uint8_t *row_value(window_t *w, Py_ssize_t i, Py_ssize_t *len) {
    const int64_t *s = w->starts.buf, *e = w->ends.buf;
    uint32_t b = w->has_which ? ((const uint32_t *)w->which.buf)[i] : 0;
    if ((Py_ssize_t)b >= w->nbufs || s[i] < 0 || e[i] < s[i] || e[i] > w->bufs[b].len) {
        snprintf(w->err, sizeof w->err, "row %zd: value [%lld, %lld) outside its buffer",
                 i, (long long)s[i], (long long)e[i]);
        return NULL;
    }
    *len = (Py_ssize_t)(e[i] - s[i]);
    return (const uint8_t *)w->bufs[b].buf + s[i];
}

/* Whether a chain with no page may start at this delta from a page of zeros, as the
 * Python redo does: an image delta (restored over it), a record that initializes the
 * block (WILL_INIT), or any record of a visibility-map block (`redo._redo_one`). */
static int starts_a_page(const uint8_t *v, Py_ssize_t len, const target_t *t) {
    if (len >= IMAGE_DELTA_HEADER && rd32(v + DELTA_HEADER) == 0)
        return 1;
    rec_t r;
    if (len < DELTA_HEADER + SIZEOF_XLOG_RECORD
            || !pagec_parse_record(v + DELTA_HEADER, len - DELTA_HEADER, t, &r)
            || r.target < 0 || r.target_apply_image)
        return 0;
    return (r.target_flags & BKPBLOCK_WILL_INIT) || t->fork == VISIBILITYMAP_FORK;
}

/* Chain [a, z) into `page`: from its first row (an image, a tombstone, a delta that
 * starts a page), or with `on_page`, every row a delta applied on the page `page`
 * holds. 1 built, 0 left to Python, -1 error (w->err set). */
static int build_chain(window_t *w, Py_ssize_t a, Py_ssize_t z, uint8_t *page, int on_page) {
    const uint8_t *key = (const uint8_t *)w->keys.buf + a * KEY_BYTES;
    const uint8_t *kinds = w->kinds.buf;
    const int64_t *lsns = w->lsns.buf;
    uint8_t scratch[BLCKSZ];
    if (key[0] != 0)                                     /* not a REL_BLOCK key */
        return 0;
    target_t t = {be32(key + 1), be32(key + 5), be32(key + 9), key[13], be32(key + 14)};
    Py_ssize_t len, i = a;
    const uint8_t *v;
    if (on_page) {                                  /* the page is there already */
    } else if (kinds[a] == KIND_IMAGE) {
        if ((v = row_value(w, a, &len)) == NULL)
            return -1;
        if (len != BLCKSZ)
            return 0;
        memcpy(page, v, BLCKSZ);
        i++;
    } else {
        if (kinds[a] == KIND_TOMBSTONE)
            i++;
        if (i == z || (v = row_value(w, i, &len)) == NULL)
            return i == z ? 0 : -1;
        if (!starts_a_page(v, len, &t))
            return 0;                               /* no page to start from: Python */
        memset(page, 0, BLCKSZ);
    }
    for (; i < z; i++) {
        if (kinds[i] != KIND_RECORD && kinds[i] != KIND_RECORD_INIT)
            return 0;
        if ((v = row_value(w, i, &len)) == NULL)
            return -1;
        if (!pagec_chain_step(page, scratch, v, len, (uint64_t)lsns[i], &t))
            return 0;
    }
    return 1;
}

/* Chain c into its slot, from its base (see the header): 1, 0 or -1 as build_chain. */
static int chain_into(window_t *w, Py_ssize_t c, Py_ssize_t width) {
    const int64_t *first = w->first.buf, *stop = w->stop.buf, *slots = w->slots.buf;
    uint8_t *dst = w->dst.buf, *page = dst + slots[c] * width;
    int64_t b = w->has_base ? ((const int64_t *)w->base.buf)[c] : -1;
    if (b < -1 || b > c) {
        snprintf(w->err, sizeof w->err, "chain %zd: base %lld", c, (long long)b);
        return -1;
    }
    if (b == -1)
        return build_chain(w, first[c], stop[c], page, 0);
    if (b < c) {
        if (!((const uint8_t *)w->done.buf)[b])
            return 0;
        memmove(page, dst + slots[b] * width, BLCKSZ);
    }
    return build_chain(w, first[c], stop[c], page, 1);
}

PyObject *pagec_redo_window(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o[13], *bufs;
    Py_ssize_t width;
    o[12] = Py_None;
    if (!PyArg_ParseTuple(args, "OnO!OOOOOOOOOO|O", &o[0], &width, &PyTuple_Type, &bufs,
                          &o[2], &o[3], &o[4], &o[5], &o[6], &o[7], &o[8], &o[9], &o[10],
                          &o[11], &o[12]))
        return NULL;
    window_t w;
    memset(&w, 0, sizeof w);
    Py_ssize_t built = 0;
    if (window_open(&w, o, bufs) < 0)
        goto fail;
    Py_ssize_t n = w.starts.len / 8, m = w.first.len / 8;
    const int64_t *first = w.first.buf, *stop = w.stop.buf, *slots = w.slots.buf;
    uint8_t *done = w.done.buf;
    /* pure C from here: with many rows to replay (the flush's cuts) other threads run
     * meanwhile; a small window keeps the GIL (getting it back can cost a switch
     * interval) */
    Py_ssize_t rows = 0;
    for (Py_ssize_t c = 0; c < m && rows < RELEASE_GIL_ROWS; c++)
        rows += stop[c] > first[c] ? stop[c] - first[c] : 0;
    PyThreadState *ts = rows >= RELEASE_GIL_ROWS ? PyEval_SaveThread() : NULL;
    for (Py_ssize_t c = 0; c < m; c++) {
        done[c] = 0;
        if (first[c] < 0 || stop[c] <= first[c] || stop[c] > n || slots[c] < 0
                || (slots[c] + 1) * width > w.dst.len) {
            snprintf(w.err, sizeof w.err, "chain %zd: rows [%lld, %lld) of %zd, slot %lld", c,
                     (long long)first[c], (long long)stop[c], n, (long long)slots[c]);
            break;
        }
        if (width != BLCKSZ)
            continue;
        int rc = chain_into(&w, c, width);
        if (rc < 0)
            break;
        done[c] = (uint8_t)rc;
        built += rc;
    }
    if (ts != NULL)
        PyEval_RestoreThread(ts);
    if (w.err[0]) {
        PyErr_SetString(PyExc_ValueError, w.err);
        goto fail;
    }
    window_release(&w);
    return PyLong_FromSsize_t(built);
fail:
    window_release(&w);
    return NULL;
}
