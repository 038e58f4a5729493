/* Btree redo of one page, compiled: the new tuple of INSERT_LEAF and INSERT_UPPER
 * on block 0 (`redo.btree._redo_insert` is the reference), a step of the chain
 * (_pagec_heap.c's `redo_one` dispatches here). Every other btree record (splits,
 * deduplication, deletion, vacuum, the child of INSERT_UPPER, the metapage of
 * INSERT_META) answers 0: the Python redo replays it. */
#include "_pagec.h"

/* PageAddItem(page, item, size, offnum, false, false): the item at `offnum`, the line
 * pointers from there on moved up one; offnum, 0 where PostgreSQL returns
 * InvalidOffsetNumber, -1 on corrupt pointers (the Python path raises). The
 * reference: `page_ops.page_add_item` with a given offset. */
static int add_item_shuffle(uint8_t *b, const uint8_t *item, int size, int offnum) {
    int lower0 = rd16(b + OFF_LOWER), upper0 = rd16(b + OFF_UPPER);
    int special = rd16(b + OFF_SPECIAL);
    if (lower0 < HEADER || lower0 > upper0 || upper0 > special || special > BLCKSZ)
        return -1;
    int limit = (lower0 - HEADER) / 4 + 1;
    if (offnum < 1 || offnum > limit)
        return 0;
    int lower = lower0 + 4, upper = upper0 - ((size + 7) & ~7);
    if (lower > upper)
        return 0;
    uint8_t *lp = b + HEADER + 4 * (offnum - 1);
    if (offnum < limit)
        memmove(lp + 4, lp, (size_t)(limit - offnum) * 4);
    wr32(lp, (uint32_t)upper | ((uint32_t)LP_NORMAL << 15) | ((uint32_t)size << 17));
    memcpy(b + upper, item, (size_t)size);
    wr16(b + OFF_LOWER, (uint16_t)lower);
    wr16(b + OFF_UPPER, (uint16_t)upper);
    return offnum;
}

/* btree_xlog_insert's block 0 of INSERT_LEAF / INSERT_UPPER (`redo.btree._redo_insert`):
 * the logged tuple added at xl_btree_insert's offnum. 1, or 0 (Python decides). */
static int btree_insert(uint8_t *b, const rec_t *r) {
    if (r->mdlen < 2 || r->dlen <= 0)
        return 0;
    int offnum = rd16(r->md);
    return add_item_shuffle(b, r->data, r->dlen, offnum) == offnum;
}

/* The btree record on the chain's page `w` (a copy): 1 done, 0 Python decides. */
int pagec_btree_redo(uint8_t *w, const rec_t *r) {
    int op = r->info & XLOG_BTREE_INFO_MASK;
    return (op == XLOG_BTREE_INSERT_LEAF || op == XLOG_BTREE_INSERT_UPPER) && r->target == 0
           && btree_insert(w, r);
}
