/* The compiled chain's visibility-map (fork 2) redo: the bits heap and heap2
 * records clear on a VM page that they name (18.6's HEAP_*_BLKREF_VM and the
 * update's VM_NEW / VM_OLD), and heap2 VISIBLE's set.
 *
 * References: `wal.rmgr.visibility.visibility_clears` (which heap blocks' bits a
 * record clears, from its flags), `redo.heap.vm_clear` / `vm_set` and
 * `redo.heap2._visible`; tested state for state against them in
 * tests/reconstruct/test_redo_oracle.py (`chain_equals_reference`). Anything the
 * reference would raise on, and a new (all-zero) VM page, answers 0: Python
 * redoes that record. Layout (visibilitymap.c): two bits per heap block, the map
 * after the 24-byte page header. */
#include "_pagec.h"

#define VM_CONTENTS 24
#define HEAPBLOCKS_PER_PAGE ((BLCKSZ - VM_CONTENTS) * 4)
#define VM_ALL_FROZEN 0x02
#define VM_VALID_BITS 0x03

/* Clear `bits` of `heap_blk` if they live on VM block `vm_blk`. */
static void vm_clear(uint8_t *w, uint32_t vm_blk, uint32_t heap_blk, int bits) {
    if (heap_blk / HEAPBLOCKS_PER_PAGE != vm_blk)
        return;
    uint32_t in_page = heap_blk % HEAPBLOCKS_PER_PAGE;
    w[VM_CONTENTS + in_page / 4] &= (uint8_t)~(bits << ((in_page % 4) * 2));
}

/* The flags byte's offset in main data and the bits that say "VM cleared", for
 * the records that clear VM bits; 0 for any other record. */
static int clear_flags(const rec_t *r, int *off, int *mask, int *frozen_only) {
    int op = r->info & XLOG_HEAP_OPMASK;
    *frozen_only = 0;
    if (r->rmid == RM_HEAP_ID) {
        if (op == XLOG_HEAP_INSERT) { *off = 2; *mask = XLH_INSERT_ALL_VISIBLE_CLEARED; return 1; }
        if (op == XLOG_HEAP_DELETE) { *off = 7; *mask = XLH_DELETE_ALL_VISIBLE_CLEARED; return 1; }
        if (op == XLOG_HEAP_UPDATE || op == XLOG_HEAP_HOT_UPDATE) {
            *off = 7;
            *mask = XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED | XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED;
            return 1;
        }
        if (op == XLOG_HEAP_LOCK) { *off = 7; *mask = XLH_LOCK_ALL_FROZEN_CLEARED; *frozen_only = 1; return 1; }
        return 0;
    }
    if (r->rmid == RM_HEAP2_ID) {
        if (op == XLOG_HEAP2_MULTI_INSERT) { *off = 0; *mask = XLH_INSERT_ALL_VISIBLE_CLEARED; return 1; }
        if (op == XLOG_HEAP2_LOCK_UPDATED) { *off = 7; *mask = XLH_LOCK_ALL_FROZEN_CLEARED; *frozen_only = 1; return 1; }
    }
    return 0;
}

/* The clearing records on their VM page: 1 (done), 0 (Python). */
static int vm_clears(uint8_t *w, const rec_t *r, const target_t *t) {
    int off, mask, frozen_only;
    if (!clear_flags(r, &off, &mask, &frozen_only) || r->mdlen <= (uint32_t)off || !r->has_block0)
        return 0;
    int flags = r->md[off] & mask;
    if (!flags)
        return 0;                         /* the reference raises: a VM block, nothing cleared */
    if (frozen_only) {
        vm_clear(w, t->blk, r->blkno0, VM_ALL_FROZEN);
        return 1;
    }
    int op = r->info & XLOG_HEAP_OPMASK;
    if (r->rmid == RM_HEAP_ID && (op == XLOG_HEAP_UPDATE || op == XLOG_HEAP_HOT_UPDATE)) {
        if (flags & XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED)
            vm_clear(w, t->blk, r->has_block1 ? r->blkno1 : r->blkno0, VM_VALID_BITS);
        if (flags & XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED)
            vm_clear(w, t->blk, r->blkno0, VM_VALID_BITS);
        return 1;
    }
    vm_clear(w, t->blk, r->blkno0, VM_VALID_BITS);
    return 1;
}

/* heap2 VISIBLE on its VM page (block 0; the heap page is block 1): 1 (bits set,
 * stamp the LSN), 2 (already set: PostgreSQL leaves the LSN), 0 (Python). */
static int vm_visible(uint8_t *w, const rec_t *r, const target_t *t) {
    if (r->target != 0 || !r->has_block1 || r->mdlen < 5)
        return 0;
    uint32_t heap_blk = r->blkno1;
    if (heap_blk / HEAPBLOCKS_PER_PAGE != t->blk)
        return 0;                         /* the reference raises */
    int bits = r->md[4] & VM_VALID_BITS;
    uint32_t in_page = heap_blk % HEAPBLOCKS_PER_PAGE;
    int shift = (int)(in_page % 4) * 2;
    uint8_t *byte = w + VM_CONTENTS + in_page / 4;
    if (((*byte >> shift) & VM_VALID_BITS) == bits)
        return 2;
    *byte |= (uint8_t)(bits << shift);
    return 1;
}

int pagec_vm_redo(uint8_t *w, const rec_t *r, const target_t *t) {
    if (rd16(w + OFF_UPPER) == 0)
        return 0;                         /* a new page: the reference initialises it */
    if (r->rmid == RM_HEAP2_ID && (r->info & XLOG_HEAP_OPMASK) == XLOG_HEAP2_VISIBLE)
        return vm_visible(w, r, t);
    return vm_clears(w, r, t);
}
