/* Btree redo of one page, compiled: the new tuple of INSERT_LEAF and INSERT_UPPER
 * on block 0 (`redo.btree._redo_insert` is the reference), a step of the chain
 * (_pagec_heap.c's `redo_one` dispatches here). Every other btree record (splits,
 * deduplication, deletion, vacuum, the child of INSERT_UPPER, the metapage of
 * INSERT_META) answers 0: the Python redo replays it. */
#include "_pagec.h"

/* btree_xlog_insert's block 0 of INSERT_LEAF / INSERT_UPPER (`redo.btree._redo_insert`):
 * the logged tuple added at xl_btree_insert's offnum. 1, or 0 (Python decides). */
static int btree_insert(uint8_t *b, const rec_t *r) {
    if (r->mdlen < 2 || r->dlen <= 0)
        return 0;
    int offnum = rd16(r->md);
    return pagec_add_item(b, r->data, r->dlen, offnum, 0) == offnum;  /* PageAddItem */
}

/* The btree record on the chain's page `w` (a copy): 1 done, 0 Python decides. */
int pagec_btree_redo(uint8_t *w, const rec_t *r) {
    int op = r->info & XLOG_BTREE_INFO_MASK;
    return (op == XLOG_BTREE_INSERT_LEAF || op == XLOG_BTREE_INSERT_UPPER) && r->target == 0
           && btree_insert(w, r);
}
