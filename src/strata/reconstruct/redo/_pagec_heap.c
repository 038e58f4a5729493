/* Heap and heap2 redo of one page, compiled: one block of UPDATE / HOT_UPDATE
 * (`heap_update`, the reference being `redo.heap._update_python`) and the
 * replay of a chain of heap/heap2 record deltas on one page (`redo_chain`, the
 * references being `redo.heap` and `redo.heap2`). What each Python entry point
 * does: _pagec.c's header. */
#include "_pagec.h"

static int xid_precedes(uint32_t a, uint32_t b) {
    if (a < FIRST_NORMAL_XID || b < FIRST_NORMAL_XID)
        return a < b;
    return (int32_t)(a - b) < 0;
}

/* The tuple at offnum if it is LP_NORMAL with its header on the page, else -1. */
static int normal_tuple_at(const uint8_t *b, int offnum) {
    int lower = rd16(b + OFF_LOWER);
    int maxoff = lower <= HEADER ? 0 : (lower - HEADER) / 4;
    if (offnum < 1 || offnum > maxoff)
        return -1;
    uint32_t w = rd32(b + HEADER + 4 * (offnum - 1));
    int t = (int)(w & 0x7FFF);
    if (((w >> 15) & 0x3) != LP_NORMAL || t < HEADER || t + 24 > BLCKSZ)
        return -1;
    return t;
}

/* An updated or deleted tuple's xmax bits as heap redo sets them (clear_xmax_bits,
 * HOT_UPDATED as `hot` says, fix_infomask_from_infobits, set_cmax_plain). */
static void set_xmax_infomask(uint8_t *b, int t, int infobits, int hot) {
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
    wr32(b + t + T_CID, 0);                                             /* set_cmax_plain */
    im &= (uint16_t)~HEAP_COMBOCID;
    wr16(b + t + T_INFOMASK, im);
    wr16(b + t + T_INFOMASK2, im2);
}

/* PageSetPrunable: keep the oldest prunable xid. */
static void set_prunable(uint8_t *b, uint32_t xid) {
    uint32_t cur = rd32(b + OFF_PRUNE_XID);
    if (cur == 0 || xid_precedes(xid, cur))
        wr32(b + OFF_PRUNE_XID, xid);
}

/* The old tuple's changes; its position, or -1 where the Python path must decide
 * (it raises, or does what it does on such a page). */
static int update_old(uint8_t *b, uint32_t xid, uint32_t old_xmax, int old_offnum,
                      int infobits, int flags, int hot, uint32_t newblk, int new_offnum) {
    int t = normal_tuple_at(b, old_offnum);
    if (t < 0)
        return -1;
    set_xmax_infomask(b, t, infobits, hot);
    wr32(b + t + T_XMAX, old_xmax);
    wr16(b + t + T_CTID, (uint16_t)(newblk >> 16));                     /* set_ctid */
    wr16(b + t + T_CTID + 2, (uint16_t)(newblk & 0xFFFF));
    wr16(b + t + T_CTID + 4, (uint16_t)new_offnum);
    set_prunable(b, xid);
    if (flags & XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED)
        wr16(b + OFF_FLAGS, (uint16_t)(rd16(b + OFF_FLAGS) & ~PD_ALL_VISIBLE));
    return t;
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
    if (pagec_add_item(b, tup, size, new_offnum, PAI_OVERWRITE | PAI_IS_HEAP) <= 0)
        return 0;
    if (flags & XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED)
        wr16(b + OFF_FLAGS, (uint16_t)(rd16(b + OFF_FLAGS) & ~PD_ALL_VISIBLE));
    memcpy(page, b, BLCKSZ);
    return 1;
}

PyObject *pagec_heap_update_redo(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *pageobj;
    Py_buffer md, data;
    int block_id, same_page, init, hot;
    unsigned long xid, newblk;
    if (!PyArg_ParseTuple(args, "Oy*y*iipkkp", &pageobj, &md, &data, &block_id, &same_page,
                          &init, &xid, &newblk, &hot))
        return NULL;
    Py_buffer view;
    if (pagec_get_page(pageobj, &view) < 0) {
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

static void page_init_heap(uint8_t *b) {
    memset(b, 0, BLCKSZ);
    wr16(b + OFF_LOWER, HEADER);
    wr16(b + OFF_UPPER, BLCKSZ);
    wr16(b + OFF_SPECIAL, BLCKSZ);
    wr16(b + 18, BLCKSZ | 4); /* pd_pagesize_version */
}

/* heap_xlog_insert on the page (`redo.heap._insert`): 1, or 0 (the caller keeps the
 * old page and lets Python decide). */
static int heap_insert(uint8_t *b, const rec_t *r, uint32_t blkno) {
    if (r->mdlen < 3 || r->dlen <= 5)
        return 0;
    int offnum = rd16(r->md), flags = r->md[2];
    if (offnum < 1)
        return 0;
    if (r->info & XLOG_HEAP_INIT_PAGE)
        page_init_heap(b);
    int size = SIZEOF_HEAP_TUPLE_HEADER + r->dlen - 5;
    if (size > BLCKSZ)
        return 0;
    uint8_t tup[BLCKSZ];
    memset(tup, 0, SIZEOF_HEAP_TUPLE_HEADER);
    wr32(tup + T_XMIN, r->xid);
    wr16(tup + T_CTID, (uint16_t)(blkno >> 16));
    wr16(tup + T_CTID + 2, (uint16_t)(blkno & 0xFFFF));
    wr16(tup + T_CTID + 4, (uint16_t)offnum);
    wr16(tup + T_INFOMASK2, rd16(r->data));
    wr16(tup + T_INFOMASK, (uint16_t)(rd16(r->data + 2) & ~HEAP_COMBOCID));
    tup[T_HOFF] = r->data[4];
    memcpy(tup + SIZEOF_HEAP_TUPLE_HEADER, r->data + 5, (size_t)(r->dlen - 5));
    if (pagec_add_item(b, tup, size, offnum, PAI_OVERWRITE | PAI_IS_HEAP) <= 0)
        return 0;
    if (flags & XLH_INSERT_ALL_VISIBLE_CLEARED)
        wr16(b + OFF_FLAGS, (uint16_t)(rd16(b + OFF_FLAGS) & ~PD_ALL_VISIBLE));
    return 1;
}

/* heap_xlog_multi_insert on the page (`redo.heap2._multi_insert`): main data is
 * xl_heap_multi_insert (flags u8, pad, ntuples u16, then without INIT_PAGE an
 * offset u16 per tuple); block data is, per tuple, SHORTALIGNed from the block data's
 * start, xl_multi_insert_tuple (datalen u16, t_infomask2 u16, t_infomask u16,
 * t_hoff u8) and its datalen bytes. With INIT_PAGE the tuples go to offsets 1..n of
 * a fresh page. 1, or 0 (the caller keeps the old page and lets Python decide). */
static int heap_multi_insert(uint8_t *b, const rec_t *r, uint32_t blkno) {
    int isinit = (r->info & XLOG_HEAP_INIT_PAGE) != 0;
    if (r->mdlen < 4)
        return 0;
    int flags = r->md[0], ntuples = rd16(r->md + 2);
    if (!isinit && r->mdlen < 4 + 2 * (uint32_t)ntuples)
        return 0;
    if (isinit)
        page_init_heap(b);
    int pos = 0, end = r->dlen;
    uint8_t tup[BLCKSZ];
    for (int i = 0; i < ntuples; i++) {
        pos = (pos + 1) & ~1;
        if (pos + 7 > end)
            return 0;
        const uint8_t *x = r->data + pos;
        int datalen = rd16(x), size = SIZEOF_HEAP_TUPLE_HEADER + datalen;
        pos += 7;
        if (pos + datalen > end || size > BLCKSZ)
            return 0;
        int offnum = isinit ? i + 1 : rd16(r->md + 4 + 2 * i);
        if (offnum < 1)
            return 0;
        memset(tup, 0, SIZEOF_HEAP_TUPLE_HEADER);
        wr32(tup + T_XMIN, r->xid);
        wr16(tup + T_CTID, (uint16_t)(blkno >> 16));
        wr16(tup + T_CTID + 2, (uint16_t)(blkno & 0xFFFF));
        wr16(tup + T_CTID + 4, (uint16_t)offnum);
        wr16(tup + T_INFOMASK2, rd16(x + 2));
        wr16(tup + T_INFOMASK, (uint16_t)(rd16(x + 4) & ~HEAP_COMBOCID));
        tup[T_HOFF] = x[6];
        memcpy(tup + SIZEOF_HEAP_TUPLE_HEADER, r->data + pos, (size_t)datalen);
        pos += datalen;
        if (pagec_add_item(b, tup, size, offnum, PAI_OVERWRITE | PAI_IS_HEAP) <= 0)
            return 0;
    }
    if (pos != end)
        return 0;
    if (flags & XLH_INSERT_ALL_VISIBLE_CLEARED)
        wr16(b + OFF_FLAGS, (uint16_t)(rd16(b + OFF_FLAGS) & ~PD_ALL_VISIBLE));
    if (flags & XLH_INSERT_ALL_FROZEN_SET)
        wr16(b + OFF_FLAGS, (uint16_t)(rd16(b + OFF_FLAGS) | PD_ALL_VISIBLE));
    return 1;
}

/* heap_xlog_delete (`redo.heap._delete`). */
static int heap_delete(uint8_t *b, const rec_t *r, uint32_t blkno) {
    if (r->mdlen < 8)
        return 0;
    uint32_t xmax = rd32(r->md);
    int offnum = rd16(r->md + 4), infobits = r->md[6], flags = r->md[7];
    int t = normal_tuple_at(b, offnum);
    if (t < 0)
        return 0;
    set_xmax_infomask(b, t, infobits, 0);
    if (flags & XLH_DELETE_IS_SUPER)
        wr32(b + t + T_XMIN, 0);
    else
        wr32(b + t + T_XMAX, xmax);
    set_prunable(b, r->xid);
    if (flags & XLH_DELETE_ALL_VISIBLE_CLEARED)
        wr16(b + OFF_FLAGS, (uint16_t)(rd16(b + OFF_FLAGS) & ~PD_ALL_VISIBLE));
    uint32_t cblk = blkno;
    int coff = offnum;
    if (flags & XLH_DELETE_IS_PARTITION_MOVE) { cblk = 0xFFFFFFFF; coff = 0xFFFD; }
    wr16(b + t + T_CTID, (uint16_t)(cblk >> 16));
    wr16(b + t + T_CTID + 2, (uint16_t)(cblk & 0xFFFF));
    wr16(b + t + T_CTID + 4, (uint16_t)coff);
    return 1;
}

/* heap_xlog_lock (`redo.heap._lock`): the locked tuple's xmax and infomask; its HOT
 * flag and t_ctid only when the new infomask says locked only. The VM bits it
 * clears are the VM page's own record (_pagec_vm.c). */
static int heap_lock(uint8_t *b, const rec_t *r, uint32_t blkno) {
    if (r->mdlen < 8)
        return 0;
    uint32_t xmax = rd32(r->md);
    int offnum = rd16(r->md + 4), infobits = r->md[6];
    int t = normal_tuple_at(b, offnum);
    if (t < 0)
        return 0;
    set_xmax_infomask(b, t, infobits, (rd16(b + t + T_INFOMASK2) & HEAP_HOT_UPDATED) != 0);
    uint16_t im = rd16(b + t + T_INFOMASK);
    if ((im & HEAP_XMAX_LOCK_ONLY)                                     /* IS_LOCKED_ONLY */
        || (im & (HEAP_XMAX_IS_MULTI | HEAP_LOCK_MASK)) == HEAP_XMAX_EXCL_LOCK) {
        wr16(b + t + T_INFOMASK2, (uint16_t)(rd16(b + t + T_INFOMASK2) & ~HEAP_HOT_UPDATED));
        wr16(b + t + T_CTID, (uint16_t)(blkno >> 16));
        wr16(b + t + T_CTID + 2, (uint16_t)(blkno & 0xFFFF));
        wr16(b + t + T_CTID + 4, (uint16_t)offnum);
    }
    wr32(b + t + T_XMAX, xmax);
    return 1;
}

/* PageTruncateLinePointerArray (`page_ops.page_truncate_line_pointer_array`). */
static void truncate_line_pointers(uint8_t *b) {
    int lower = rd16(b + OFF_LOWER);
    int nline = lower <= HEADER ? 0 : (lower - HEADER) / 4;
    int countdone = 0, sethint = 0, nunusedend = 0;
    for (int i = nline; i > 0; i--) {
        int fl = (int)((rd32(b + HEADER + 4 * (i - 1)) >> 15) & 0x3);
        if (!countdone && i > 1) {
            if (fl == LP_UNUSED) nunusedend++;
            else countdone = 1;
        } else if (fl == LP_UNUSED) {
            sethint = 1;
            break;
        }
    }
    if (nunusedend > 0)
        wr16(b + OFF_LOWER, (uint16_t)(lower - 4 * nunusedend));
    uint16_t f = rd16(b + OFF_FLAGS);
    wr16(b + OFF_FLAGS, sethint ? (uint16_t)(f | PD_HAS_FREE_LINES) : (uint16_t)(f & ~PD_HAS_FREE_LINES));
}

/* heap_xlog_prune_freeze on the page (`redo.heap2._prune`, with the block data's
 * layout of `PruneBlockData.parse`). */
static int heap_prune(uint8_t *b, const rec_t *r) {
    if (r->mdlen < 2)
        return 0;
    int flags = r->md[1];
    const uint8_t *d = r->data;
    int n = r->dlen, pos = 0, nplans = 0;
    if (flags & XLHP_HAS_FREEZE_PLANS) {
        if (n < 4) return 0;
        nplans = rd16(d);
        pos = 4;
        if (pos + 12 * nplans > n) return 0;
    }
    int plans_at = pos;
    pos += 12 * nplans;
    int nred = 0, ndead = 0, nunused = 0, red_at = 0, dead_at = 0, unused_at = 0;
    if (flags & XLHP_HAS_REDIRECTIONS) {
        if (pos + 2 > n) return 0;
        nred = rd16(d + pos); red_at = pos + 2; pos = red_at + 4 * nred;
        if (pos > n) return 0;
    }
    if (flags & XLHP_HAS_DEAD_ITEMS) {
        if (pos + 2 > n) return 0;
        ndead = rd16(d + pos); dead_at = pos + 2; pos = dead_at + 2 * ndead;
        if (pos > n) return 0;
    }
    if (flags & XLHP_HAS_NOW_UNUSED_ITEMS) {
        if (pos + 2 > n) return 0;
        nunused = rd16(d + pos); unused_at = pos + 2; pos = unused_at + 2 * nunused;
        if (pos > n) return 0;
    }
    int offs_at = pos;
    for (int p = 0; p < nplans; p++)
        pos += 2 * rd16(d + plans_at + 12 * p + 10);
    if (pos != n)
        return 0;
    if (nred || ndead || nunused) {
        int lower = rd16(b + OFF_LOWER);
        int nmax = lower <= HEADER ? 0 : (lower - HEADER) / 4;
        for (int k = 0; k < 2 * nred; k += 2) {
            int off = rd16(d + red_at + 2 * k);
            if (off < 1 || off > nmax) return 0;
        }
        for (int k = 0; k < ndead; k++) {
            int off = rd16(d + dead_at + 2 * k);
            if (off < 1 || off > nmax) return 0;
        }
        for (int k = 0; k < nunused; k++) {
            int off = rd16(d + unused_at + 2 * k);
            if (off < 1 || off > nmax) return 0;
        }
        for (int k = 0; k < nred; k++) {
            int from = rd16(d + red_at + 4 * k), to = rd16(d + red_at + 4 * k + 2);
            wr32(b + HEADER + 4 * (from - 1), ((uint32_t)to & 0x7FFF) | ((uint32_t)LP_REDIRECT << 15));
        }
        for (int k = 0; k < ndead; k++)
            wr32(b + HEADER + 4 * (rd16(d + dead_at + 2 * k) - 1), (uint32_t)LP_DEAD << 15);
        for (int k = 0; k < nunused; k++)
            wr32(b + HEADER + 4 * (rd16(d + unused_at + 2 * k) - 1), 0);
        if (!(flags & XLHP_CLEANUP_LOCK)) {
            truncate_line_pointers(b);
        } else {
            char err[160];
            if (pagec_repair(b, err, sizeof err) != 0)
                return 0;
        }
    }
    pos = offs_at;
    for (int p = 0; p < nplans; p++) {
        const uint8_t *plan = d + plans_at + 12 * p;
        uint32_t xmax = rd32(plan);
        uint16_t im2 = rd16(plan + 4), im = rd16(plan + 6);
        int frz = plan[8], ntuples = rd16(plan + 10);
        for (int k = 0; k < ntuples; k++, pos += 2) {
            int t = normal_tuple_at(b, rd16(d + pos));
            if (t < 0)
                return 0;
            wr32(b + t + T_XMAX, xmax);
            if (frz & XLH_FREEZE_XVAC) wr32(b + t + T_CID, 2);  /* FrozenTransactionId */
            if (frz & XLH_INVALID_XVAC) wr32(b + t + T_CID, 0);
            wr16(b + t + T_INFOMASK, im);
            wr16(b + t + T_INFOMASK2, im2);
        }
    }
    return 1;
}

/* One record on a copy of the page: 1 (done, the copy holds the result), 0 (Python
 * must run this record). */
static int redo_one(uint8_t *w, const rec_t *r, const target_t *t) {
    int op = r->info & XLOG_HEAP_OPMASK;
    if (r->rmid == RM_HEAP_ID) {
        if (op == XLOG_HEAP_INSERT)
            return r->target == 0 && heap_insert(w, r, t->blk);
        if (op == XLOG_HEAP_DELETE)
            return r->target == 0 && heap_delete(w, r, t->blk);
        if (op == XLOG_HEAP_LOCK)
            return r->target == 0 && heap_lock(w, r, t->blk);
        if (op == XLOG_HEAP_UPDATE || op == XLOG_HEAP_HOT_UPDATE) {
            if (!r->has_block0 || (r->target != 0 && r->target != 1))
                return 0;
            int same = !r->has_block1;
            int init = (r->info & XLOG_HEAP_INIT_PAGE) && !same;
            return heap_update(w, r->md, (Py_ssize_t)r->mdlen, r->target == 0 ? r->data : NULL,
                               r->target == 0 ? r->dlen : 0, r->target, same, init, r->xid,
                               r->blkno0, op == XLOG_HEAP_HOT_UPDATE);
        }
        return 0;
    }
    if (r->rmid == RM_BTREE_ID)
        return pagec_btree_redo(w, r);
    if (r->rmid == RM_HEAP2_ID) {
        if (op >= XLOG_HEAP2_PRUNE_ON_ACCESS && op <= XLOG_HEAP2_PRUNE_VACUUM_CLEANUP)
            return r->target == 0 && heap_prune(w, r);
        if (op == XLOG_HEAP2_MULTI_INSERT)
            return r->target == 0 && heap_multi_insert(w, r, t->blk);
        /* the heap page of VISIBLE; its LSN is stamped as `redo.heap2` does with
         * HINT_BITS_LOGGED (data checksums, PostgreSQL 18's default) */
        if (op == XLOG_HEAP2_VISIBLE && r->target == 1 && r->mdlen >= 5) {
            wr16(w + OFF_FLAGS, (uint16_t)(rd16(w + OFF_FLAGS) | PD_ALL_VISIBLE));
            return 1;
        }
    }
    return 0;
}

/* An image delta (keyspace/FORMAT.md: lsn, end, a zero marker, bimg_info, a pad
 * byte, hole offset and length, then the image as WAL stores it) restored over
 * `page`, stamped with its end LSN unless the page is new: 1; or 0 with `page`
 * untouched for a compressed image or one whose sizes do not fit (Python restores
 * or raises). `reconstruct._restore_image` is the reference. */
static int restore_image_delta(uint8_t *page, const uint8_t *data, Py_ssize_t len) {
    int info = data[20], hole_off = rd16(data + 22), hole_len = rd16(data + 24);
    const uint8_t *img = data + IMAGE_DELTA_HEADER;
    Py_ssize_t n = len - IMAGE_DELTA_HEADER;
    if (info & BKPIMAGE_COMPRESSED)
        return 0;
    if (hole_len == 0 ? n != BLCKSZ : (hole_off + hole_len > BLCKSZ || n != BLCKSZ - hole_len))
        return 0;
    memcpy(page, img, (size_t)(hole_len ? hole_off : BLCKSZ));
    if (hole_len) {
        memset(page + hole_off, 0, (size_t)hole_len);
        memcpy(page + hole_off + hole_len, img + hole_off, (size_t)(n - hole_off));
    }
    if (rd16(page + OFF_UPPER) != 0) {                           /* PageSetLSN */
        uint64_t end = rd64(data + 8);
        wr32(page, (uint32_t)(end >> 32));
        wr32(page + 4, (uint32_t)end);
    }
    return 1;
}

/* One REL_BLOCK delta (an image delta or a stored record), stored at entry LSN `lsn`,
 * applied to `page`, with `w` as scratch: 1; or 0, `page` untouched, for a delta the
 * chain does not take (Python applies it, or raises). A record delta of keyspace
 * version 5 keeps 0 for its end LSN, which is the entry's LSN (a record is stored at
 * its end); versions 1-4 keep it in the value. */
int pagec_chain_step(uint8_t *page, uint8_t *w, const uint8_t *data, Py_ssize_t len,
                     uint64_t lsn, const target_t *t) {
    if (len >= IMAGE_DELTA_HEADER && rd32(data + DELTA_HEADER) == 0)
        return restore_image_delta(page, data, len);   /* 0: compressed or doubtful */
    if (len < DELTA_HEADER + SIZEOF_XLOG_RECORD || rd32(data + DELTA_HEADER) == 0)
        return 0;
    uint64_t end = rd64(data + 8);
    if (end == 0)
        end = lsn;
    if (end == 0)
        return 0;                               /* no LSN to stamp: Python raises */
    rec_t r;
    if (!pagec_parse_record(data + DELTA_HEADER, len - DELTA_HEADER, t, &r) || r.target < 0
            || r.target_apply_image)
        return 0;
    if (r.target_flags & BKPBLOCK_WILL_INIT) {
        memset(w, 0, BLCKSZ);
    } else {
        uint64_t lsn = ((uint64_t)rd32(page) << 32) | rd32(page + 4);
        if (rd16(page + OFF_UPPER) != 0 && lsn >= end)
            return 1;                                           /* BLK_DONE */
        memcpy(w, page, BLCKSZ);
    }
    int done = t->fork == VISIBILITYMAP_FORK ? pagec_vm_redo(w, &r, t) : redo_one(w, &r, t);
    if (!done)
        return 0;
    if (done == 1) {
        wr32(w, (uint32_t)(end >> 32));                         /* PageSetLSN */
        wr32(w + 4, (uint32_t)end);
    }
    memcpy(page, w, BLCKSZ);
    return 1;
}

/* redo_chain(page, deltas, lsns, start, spc, db, rel, fork, blk) -> int */
PyObject *pagec_redo_chain(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *pageobj, *deltas, *lsns;
    Py_ssize_t start;
    target_t t;
    unsigned long spc, db, rel, blk;
    if (!PyArg_ParseTuple(args, "OOOnkkkik", &pageobj, &deltas, &lsns, &start, &spc, &db,
                          &rel, &t.fork, &blk))
        return NULL;
    t.spc = (uint32_t)spc; t.db = (uint32_t)db; t.rel = (uint32_t)rel; t.blk = (uint32_t)blk;
    if (!PyList_Check(deltas) || !PyList_Check(lsns)
            || PyList_GET_SIZE(lsns) != PyList_GET_SIZE(deltas)) {
        PyErr_SetString(PyExc_TypeError,
                        "deltas and lsns must be lists of bytes and ints of one length");
        return NULL;
    }
    Py_buffer view;
    if (pagec_get_page(pageobj, &view) < 0)
        return NULL;
    uint8_t *page = (uint8_t *)view.buf;
    Py_ssize_t n = PyList_GET_SIZE(deltas), i = start;
    uint8_t w[BLCKSZ];
    for (; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(deltas, i);
        unsigned long long lsn = PyLong_AsUnsignedLongLong(PyList_GET_ITEM(lsns, i));
        if (lsn == (unsigned long long)-1 && PyErr_Occurred()) {
            PyBuffer_Release(&view);
            return NULL;
        }
        if (!PyBytes_Check(item)
                || !pagec_chain_step(page, w, (const uint8_t *)PyBytes_AS_STRING(item),
                                     PyBytes_GET_SIZE(item), (uint64_t)lsn, &t))
            break;
    }
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(i);
}
