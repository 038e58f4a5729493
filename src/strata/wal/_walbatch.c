/*
 * _walbatch: the compiled hot path of the WAL reader (strata.wal.reader.read_batch).
 *
 * What it is: the common case of PostgreSQL 18's XLogDecodeNextRecord +
 * ValidXLogRecordHeader + ValidXLogRecord + DecodeXLogRecord (xlogreader.c),
 * for records after the first: short page headers, records spanning pages,
 * CRC-32C, the xl_prev chain, then the block-reference headers. Each record
 * is written into the columns of strata.wal.batch (REC_DTYPE / BLK_DTYPE rows,
 * the record bytes after a 16-byte [start LSN, end LSN] header in the output
 * buffer), byte for byte what the pure-Python BatchBuilder writes.
 *
 * Anything else stops the loop BEFORE the record is consumed, and the Python
 * reader reads that one record itself (reporting errors in PostgreSQL's words):
 * a page at a segment start (long header), a page header that is not valid and
 * plain (bad magic / flags / address, another timeline, an overwritten
 * contrecord), a record starting on a page flagged as continuation, a record
 * header or CRC that does not check, XLOG_SWITCH, a record the decoder
 * refuses, bytes not fed yet. So this code only ever accepts what the Python
 * reader accepts, with the same result; it never raises.
 *
 * Fed by: strata.wal.reader (its buffer and position). Feeds: RecordBatch.
 * Owns: nothing.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define XLOG_BLCKSZ 8192
#define BLCKSZ 8192
#define XLOG_PAGE_MAGIC 0xD118
#define XLP_FIRST_IS_CONTRECORD 0x0001
#define XLP_LONG_HEADER 0x0002
#define XLP_FIRST_IS_OVERWRITE_CONTRECORD 0x0008
#define XLP_ALL_FLAGS 0x000F
#define SIZE_OF_SHORT_PHD 24
#define SIZE_OF_XLOG_RECORD 24
#define XLOG_RECORD_MAX_SIZE (1020u * 1024u * 1024u)
#define RM_XLOG_ID 0
#define RM_MAX_BUILTIN_ID 21
#define RM_MIN_CUSTOM_ID 128
#define XLOG_SWITCH 0x40
#define LSN_HEADER 16

#define XLR_MAX_BLOCK_ID 32
#define XLR_BLOCK_ID_DATA_SHORT 255
#define XLR_BLOCK_ID_DATA_LONG 254
#define XLR_BLOCK_ID_ORIGIN 253
#define XLR_BLOCK_ID_TOPLEVEL_XID 252
#define BKPBLOCK_FORK_MASK 0x0F
#define BKPBLOCK_HAS_IMAGE 0x10
#define BKPBLOCK_HAS_DATA 0x20
#define BKPBLOCK_SAME_REL 0x80
#define BKPIMAGE_HAS_HOLE 0x01
#define BKPIMAGE_COMPRESSED (0x04 | 0x08 | 0x10)

#define FLAG_ORIGIN 0x01
#define FLAG_TOPLEVEL_XID 0x02

/* Statuses returned to Python. */
#define ST_STOP 0      /* the Python reader must read the next record (or wait for bytes) */
#define ST_FULL_RECS 1 /* the output columns are full */
#define ST_FULL_BLKS 2
#define ST_FULL_OUT 3  /* the output buffer is too small for the next record: `need` says how big */

/* strata.wal.batch.REC_DTYPE / BLK_DTYPE (numpy align=True: C layout). */
typedef struct {
    int64_t lsn, end_lsn, off, main_off;
    uint32_t tot_len, xid, main_len, toplevel_xid;
    int32_t blk_first;
    uint16_t origin;
    uint8_t info, rmid, nblocks, flags;
} rec_t;

typedef struct {
    int64_t img_off, data_off;
    uint32_t spc, db, rel, blkno;
    int32_t rec;
    uint16_t img_len, hole_offset, hole_length, data_len;
    uint8_t block_id, fork, fork_flags, bimg_info;
} blk_t;

static inline uint16_t rd16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* -- CRC-32C (Castagnoli), as PostgreSQL's pg_crc32c -------------------------------- */

static uint32_t crc_table[8][256];

static void crc_init_tables(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xFF];
}

static uint32_t crc_sw(uint32_t crc, const uint8_t *p, size_t n)
{
    while (n >= 8) {
        uint64_t v = rd64(p) ^ crc;
        crc = crc_table[7][v & 0xFF] ^ crc_table[6][(v >> 8) & 0xFF] ^
              crc_table[5][(v >> 16) & 0xFF] ^ crc_table[4][(v >> 24) & 0xFF] ^
              crc_table[3][(v >> 32) & 0xFF] ^ crc_table[2][(v >> 40) & 0xFF] ^
              crc_table[1][(v >> 48) & 0xFF] ^ crc_table[0][v >> 56];
        p += 8;
        n -= 8;
    }
    while (n--)
        crc = crc_table[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return crc;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <nmmintrin.h>
__attribute__((target("sse4.2")))
static uint32_t crc_hw(uint32_t crc, const uint8_t *p, size_t n)
{
    uint64_t c = crc;
    while (n >= 8) {
        c = _mm_crc32_u64(c, rd64(p));
        p += 8;
        n -= 8;
    }
    crc = (uint32_t)c;
    while (n--)
        crc = _mm_crc32_u8(crc, *p++);
    return crc;
}
#define HAVE_CRC_HW 1
#endif

static uint32_t (*crc_update)(uint32_t, const uint8_t *, size_t) = crc_sw;

/* -- page headers ------------------------------------------------------------------- */

/* A plain short page header at `page` (not a segment start), valid as
 * XLogReaderValidatePageHeader sees it and on `timeline`. Returns 1 with its
 * xlp_info / xlp_rem_len, 0 when absent or anything is unusual. */
static int plain_page(const uint8_t *buf, Py_ssize_t len, int64_t base, int64_t page,
                      uint32_t timeline, uint16_t *info, uint32_t *rem)
{
    int64_t i = page - base;
    if (i < 0 || len - i < SIZE_OF_SHORT_PHD)
        return 0;
    const uint8_t *h = buf + i;
    uint16_t magic = rd16(h), inf = rd16(h + 2);
    if (magic != XLOG_PAGE_MAGIC || (inf & ~XLP_ALL_FLAGS) || (inf & XLP_LONG_HEADER))
        return 0;
    if (rd32(h + 4) != timeline || (int64_t)rd64(h + 8) != page)
        return 0;
    *info = inf;
    *rem = rd32(h + 16);
    return 1;
}

/* -- DecodeXLogRecord ----------------------------------------------------------------- */

/* Decode record `r` (n bytes, at `roff` in the output buffer) into block rows from
 * `blks` on and the record row `rec`. Returns the number of block references, or -1
 * when PostgreSQL would refuse it (the Python decoder then says why). */
static int decode(const uint8_t *r, int64_t n, int64_t roff, int32_t recidx, blk_t *blks,
                  rec_t *rec)
{
    int64_t pos = SIZE_OF_XLOG_RECORD, datatotal = 0, main_len = 0;
    int max_block_id = -1, have_rloc = 0, nb = 0, has_origin = 0, has_top = 0;
    uint32_t spc = 0, db = 0, rel = 0, top = 0;
    uint16_t origin = 0;

    while (n - pos > datatotal) {
        uint8_t block_id = r[pos];
        if (block_id == XLR_BLOCK_ID_DATA_SHORT) {
            if (pos + 2 > n)
                return -1;
            main_len = r[pos + 1];
            pos += 2;
            datatotal += main_len;
            break;
        }
        if (block_id <= XLR_MAX_BLOCK_ID) {
            if ((int)block_id <= max_block_id || pos + 4 > n)
                return -1;
            max_block_id = block_id;
            uint8_t fork_flags = r[pos + 1];
            uint16_t data_len = rd16(r + pos + 2);
            pos += 4;
            if (fork_flags & BKPBLOCK_HAS_DATA) {
                if (data_len == 0)
                    return -1;
            } else if (data_len != 0)
                return -1;
            datatotal += data_len;
            uint16_t bimg_len = 0, hole_offset = 0, hole_len = 0;
            uint8_t bimg_info = 0;
            if (fork_flags & BKPBLOCK_HAS_IMAGE) {
                if (pos + 5 > n)
                    return -1;
                bimg_len = rd16(r + pos);
                hole_offset = rd16(r + pos + 2);
                bimg_info = r[pos + 4];
                pos += 5;
                int compressed = bimg_info & BKPIMAGE_COMPRESSED;
                int has_hole = bimg_info & BKPIMAGE_HAS_HOLE;
                if (compressed) {
                    if (has_hole) {
                        if (pos + 2 > n)
                            return -1;
                        hole_len = rd16(r + pos);
                        pos += 2;
                    }
                } else {
                    if (bimg_len > BLCKSZ)
                        return -1;
                    hole_len = (uint16_t)(BLCKSZ - bimg_len);
                }
                datatotal += bimg_len;
                if (has_hole) {
                    if (hole_offset == 0 || hole_len == 0 || bimg_len == BLCKSZ)
                        return -1;
                } else if (hole_offset != 0 || hole_len != 0)
                    return -1;
                if (compressed && bimg_len == BLCKSZ)
                    return -1;
                if (!has_hole && !compressed && bimg_len != BLCKSZ)
                    return -1;
            }
            if (!(fork_flags & BKPBLOCK_SAME_REL)) {
                if (pos + 12 > n)
                    return -1;
                spc = rd32(r + pos);
                db = rd32(r + pos + 4);
                rel = rd32(r + pos + 8);
                pos += 12;
                have_rloc = 1;
            } else if (!have_rloc)
                return -1;
            if (pos + 4 > n)
                return -1;
            blk_t *b = &blks[nb++];
            b->blkno = rd32(r + pos);
            pos += 4;
            b->spc = spc;
            b->db = db;
            b->rel = rel;
            b->rec = recidx;
            b->img_len = bimg_len;
            b->hole_offset = hole_offset;
            b->hole_length = hole_len;
            b->data_len = data_len;
            b->block_id = block_id;
            b->fork = fork_flags & BKPBLOCK_FORK_MASK;
            b->fork_flags = fork_flags;
            b->bimg_info = bimg_info;
        } else if (block_id == XLR_BLOCK_ID_DATA_LONG) {
            if (pos + 5 > n)
                return -1;
            main_len = rd32(r + pos + 1);
            pos += 5;
            datatotal += main_len;
            break;
        } else if (block_id == XLR_BLOCK_ID_ORIGIN) {
            if (pos + 3 > n)
                return -1;
            origin = rd16(r + pos + 1);
            has_origin = 1;
            pos += 3;
        } else if (block_id == XLR_BLOCK_ID_TOPLEVEL_XID) {
            if (pos + 5 > n)
                return -1;
            top = rd32(r + pos + 1);
            has_top = 1;
            pos += 5;
        } else
            return -1;
    }
    if (pos > n || n - pos != datatotal)
        return -1;
    /* pass 2: where the payloads are (each block's image, then its data; main data last) */
    for (int j = 0; j < nb; j++) {
        blk_t *b = &blks[j];
        b->img_off = 0;
        b->data_off = 0;
        if (b->fork_flags & BKPBLOCK_HAS_IMAGE) {
            b->img_off = roff + pos;
            pos += b->img_len;
        }
        if (b->data_len) {
            b->data_off = roff + pos;
            pos += b->data_len;
        }
    }
    rec->main_off = main_len ? roff + pos : 0;
    rec->main_len = (uint32_t)main_len;
    rec->origin = has_origin ? origin : 0;
    rec->toplevel_xid = has_top ? top : 0;
    rec->flags = (has_origin ? FLAG_ORIGIN : 0) | (has_top ? FLAG_TOPLEVEL_XID : 0);
    return nb;
}

/* -- the framing loop ----------------------------------------------------------------- */

typedef struct {
    const uint8_t *buf;
    Py_ssize_t len;
    int64_t base, next, prev, seg_size;
    uint32_t timeline;
    rec_t *recs;
    Py_ssize_t rec_cap, nrec;
    blk_t *blks;
    Py_ssize_t blk_cap, nblk;
    uint8_t *out;
    Py_ssize_t out_cap, opos;
    int64_t need;
} frame_state;

/* One record at s->next, appended to the columns. Returns -1 when consumed, else a status. */
static int frame_one(frame_state *s)
{
    const uint8_t *buf = s->buf;
    int64_t lsn = s->next;
    uint32_t off = (uint32_t)(lsn % XLOG_BLCKSZ);
    uint16_t pinfo;
    uint32_t prem;

    if (s->nrec >= s->rec_cap)
        return ST_FULL_RECS;
    if (s->nblk + XLR_MAX_BLOCK_ID + 1 > s->blk_cap)
        return ST_FULL_BLKS;
    if (off == 0) {
        if (lsn % s->seg_size == 0 || !plain_page(buf, s->len, s->base, lsn, s->timeline, &pinfo, &prem)
            || (pinfo & XLP_FIRST_IS_CONTRECORD))
            return ST_STOP;
        lsn += SIZE_OF_SHORT_PHD;
        off = SIZE_OF_SHORT_PHD;
    }
    int64_t i = lsn - s->base;
    if (i < 0 || s->len - i < 4)
        return ST_STOP;
    uint32_t room = XLOG_BLCKSZ - off;
    uint32_t tot_len = rd32(buf + i);
    if (tot_len < SIZE_OF_XLOG_RECORD || tot_len > XLOG_RECORD_MAX_SIZE)
        return ST_STOP;
    if (s->opos + LSN_HEADER + (int64_t)tot_len > s->out_cap) {
        s->need = s->opos + LSN_HEADER + (int64_t)tot_len;
        return ST_FULL_OUT;
    }
    uint8_t *dst = s->out + s->opos + LSN_HEADER;
    int64_t last;
    if (tot_len <= room) {
        if (s->len - i < tot_len)
            return ST_STOP;
        memcpy(dst, buf + i, tot_len);
        last = lsn + tot_len;
    } else {
        if (s->len - i < room)
            return ST_STOP;
        memcpy(dst, buf + i, room);
        uint32_t got = room;
        int64_t page = lsn + room;
        last = page;
        while (got < tot_len) {
            if (page % s->seg_size == 0 || !plain_page(buf, s->len, s->base, page, s->timeline, &pinfo, &prem))
                return ST_STOP;
            if ((pinfo & XLP_FIRST_IS_OVERWRITE_CONTRECORD) || !(pinfo & XLP_FIRST_IS_CONTRECORD)
                || prem == 0 || prem != tot_len - got)
                return ST_STOP;
            uint32_t take = tot_len - got;
            if (take > XLOG_BLCKSZ - SIZE_OF_SHORT_PHD)
                take = XLOG_BLCKSZ - SIZE_OF_SHORT_PHD;
            int64_t j = page + SIZE_OF_SHORT_PHD - s->base;
            if (s->len - j < take)
                return ST_STOP;
            memcpy(dst + got, buf + j, take);
            got += take;
            last = page + SIZE_OF_SHORT_PHD + take;
            page += XLOG_BLCKSZ;
        }
    }
    /* ValidXLogRecordHeader on the whole record, then ValidXLogRecord (CRC) */
    uint8_t info = dst[16], rmid = dst[17];
    if (rd32(dst) != tot_len || (int64_t)rd64(dst + 8) != s->prev)
        return ST_STOP;
    if (!(rmid <= RM_MAX_BUILTIN_ID || rmid >= RM_MIN_CUSTOM_ID))
        return ST_STOP;
    if (rmid == RM_XLOG_ID && (info & 0xF0) == XLOG_SWITCH)
        return ST_STOP;
    uint32_t crc = crc_update(0xFFFFFFFFu, dst + SIZE_OF_XLOG_RECORD, tot_len - SIZE_OF_XLOG_RECORD);
    crc = crc_update(crc, dst, 20) ^ 0xFFFFFFFFu;
    if (crc != rd32(dst + 20))
        return ST_STOP;
    int64_t end = (last + 7) & ~(int64_t)7;
    rec_t *rec = &s->recs[s->nrec];
    int64_t roff = s->opos + LSN_HEADER;
    int nb = decode(dst, tot_len, roff, (int32_t)s->nrec, &s->blks[s->nblk], rec);
    if (nb < 0) {
        /* leave the rows as zeros again (the Python decoder writes this row itself) */
        memset(rec, 0, sizeof(*rec));
        memset(&s->blks[s->nblk], 0, sizeof(blk_t) * (XLR_MAX_BLOCK_ID + 1));
        return ST_STOP;
    }
    uint64_t start_lsn = (uint64_t)lsn, end_lsn = (uint64_t)end;
    memcpy(s->out + s->opos, &start_lsn, 8);
    memcpy(s->out + s->opos + 8, &end_lsn, 8);
    rec->lsn = lsn;
    rec->end_lsn = end;
    rec->off = roff;
    rec->tot_len = tot_len;
    rec->xid = rd32(dst + 4);
    rec->blk_first = (int32_t)s->nblk;
    rec->info = info;
    rec->rmid = rmid;
    rec->nblocks = (uint8_t)nb;
    s->nrec++;
    s->nblk += nb;
    s->opos += LSN_HEADER + tot_len;
    s->prev = lsn;
    s->next = end;
    return -1;
}

static PyObject *frame(PyObject *self, PyObject *args)
{
    Py_buffer in, recs, blks, out;
    long long base, next, prev, seg_size;
    unsigned int timeline;
    Py_ssize_t nrec, nblk, opos;
    if (!PyArg_ParseTuple(args, "y*LLLLIw*nw*nw*n", &in, &base, &next, &prev, &seg_size,
                          &timeline, &recs, &nrec, &blks, &nblk, &out, &opos))
        return NULL;
    frame_state s = {
        .buf = in.buf, .len = in.len, .base = base, .next = next, .prev = prev,
        .seg_size = seg_size, .timeline = timeline,
        .recs = recs.buf, .rec_cap = recs.len / (Py_ssize_t)sizeof(rec_t), .nrec = nrec,
        .blks = blks.buf, .blk_cap = blks.len / (Py_ssize_t)sizeof(blk_t), .nblk = nblk,
        .out = out.buf, .out_cap = out.len, .opos = opos, .need = 0,
    };
    int st = ST_STOP;
    if (seg_size > 0 && nrec >= 0 && nblk >= 0 && opos >= 0 && nrec <= s.rec_cap
        && nblk <= s.blk_cap && opos <= s.out_cap) {
        Py_BEGIN_ALLOW_THREADS
        while ((st = frame_one(&s)) < 0)
            ;
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&in);
    PyBuffer_Release(&recs);
    PyBuffer_Release(&blks);
    PyBuffer_Release(&out);
    return Py_BuildValue("nnnLLiL", s.nrec, s.nblk, s.opos, (long long)s.next,
                         (long long)s.prev, st, (long long)s.need);
}

static PyObject *crc32c(PyObject *self, PyObject *args)
{
    Py_buffer data;
    unsigned int crc = 0;
    if (!PyArg_ParseTuple(args, "y*|I", &data, &crc))
        return NULL;
    uint32_t c = crc_update(~(uint32_t)crc, data.buf, (size_t)data.len) ^ 0xFFFFFFFFu;
    PyBuffer_Release(&data);
    return PyLong_FromUnsignedLong(c);
}

/* crc32c_rows(data, stride, length) -> bytes: for each of the len(data) // stride
 * rows of `data`, the CRC-32C of its first `length` bytes, as little-endian u32s
 * back to back (the time map's entry CRCs). */
static PyObject *crc32c_rows(PyObject *self, PyObject *args)
{
    Py_buffer data;
    Py_ssize_t stride, length;
    if (!PyArg_ParseTuple(args, "y*nn", &data, &stride, &length))
        return NULL;
    PyObject *result = NULL;
    if (stride <= 0 || length < 0 || length > stride) {
        PyErr_SetString(PyExc_ValueError, "crc32c_rows: 0 <= length <= stride, stride > 0");
        goto done;
    }
    Py_ssize_t n = data.len / stride;
    result = PyBytes_FromStringAndSize(NULL, n * 4);
    if (result == NULL)
        goto done;
    uint8_t *o = (uint8_t *)PyBytes_AS_STRING(result);
    const uint8_t *p = data.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t k = 0; k < n; k++) {
        uint32_t c = crc_update(0xFFFFFFFFu, p + k * stride, (size_t)length) ^ 0xFFFFFFFFu;
        memcpy(o + 4 * k, &c, 4);
    }
    Py_END_ALLOW_THREADS
done:
    PyBuffer_Release(&data);
    return result;
}

static PyMethodDef methods[] = {
    {"frame", frame, METH_VARARGS,
     "frame(buf, base, next, prev, segment_size, timeline, recs, nrec, blks, nblk, out, opos)"
     " -> (nrec, nblk, opos, next, prev, status, need): frame and decode records from `next`"
     " into the columns until a record the Python reader must read itself."},
    {"crc32c", crc32c, METH_VARARGS, "crc32c(data, crc=0): CRC-32C of data, extending crc."},
    {"crc32c_rows", crc32c_rows, METH_VARARGS,
     "crc32c_rows(data, stride, length) -> bytes: per row of stride bytes, the CRC-32C"
     " of its first length bytes (little-endian u32s)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_walbatch",
    "Compiled WAL framing and record decoding into RecordBatch columns (see _walbatch.c).",
    -1, methods,
};

PyMODINIT_FUNC PyInit__walbatch(void)
{
    crc_init_tables();
#ifdef HAVE_CRC_HW
    __builtin_cpu_init();
    if (__builtin_cpu_supports("sse4.2"))
        crc_update = crc_hw;
#endif
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    PyObject *rec = Py_BuildValue("(nnnnnnnnnnnnnnn)", (Py_ssize_t)sizeof(rec_t),
        offsetof(rec_t, lsn), offsetof(rec_t, end_lsn), offsetof(rec_t, off),
        offsetof(rec_t, main_off), offsetof(rec_t, tot_len), offsetof(rec_t, xid),
        offsetof(rec_t, main_len), offsetof(rec_t, toplevel_xid), offsetof(rec_t, blk_first),
        offsetof(rec_t, origin), offsetof(rec_t, info), offsetof(rec_t, rmid),
        offsetof(rec_t, nblocks), offsetof(rec_t, flags));
    PyObject *blk = Py_BuildValue("(nnnnnnnnnnnnnnnn)", (Py_ssize_t)sizeof(blk_t),
        offsetof(blk_t, img_off), offsetof(blk_t, data_off), offsetof(blk_t, spc),
        offsetof(blk_t, db), offsetof(blk_t, rel), offsetof(blk_t, blkno), offsetof(blk_t, rec),
        offsetof(blk_t, img_len), offsetof(blk_t, hole_offset), offsetof(blk_t, hole_length),
        offsetof(blk_t, data_len), offsetof(blk_t, block_id), offsetof(blk_t, fork),
        offsetof(blk_t, fork_flags), offsetof(blk_t, bimg_info));
    if (rec == NULL || blk == NULL || PyModule_AddObject(m, "REC_LAYOUT", rec) < 0
        || PyModule_AddObject(m, "BLK_LAYOUT", blk) < 0) {
        Py_XDECREF(rec);
        Py_XDECREF(blk);
        Py_DECREF(m);
        return NULL;
    }
#ifdef HAVE_CRC_HW
    PyModule_AddIntConstant(m, "CRC_HW", crc_update == crc_hw);
#else
    PyModule_AddIntConstant(m, "CRC_HW", 0);
#endif
    return m;
}
