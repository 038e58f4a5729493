/* Shared by the compiled page operations (_pagec.c, _pagec_heap.c,
 * _pagec_record.c, _pagec_vm.c, _pagec_window.c): PostgreSQL's page and record layouts as constants,
 * little-endian accessors, and the functions one unit calls in another.
 * See _pagec.c for what the module does. */
#ifndef STRATA_PAGEC_H
#define STRATA_PAGEC_H

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
#define HEAP_LOCK_MASK 0x0050 /* SHR_LOCK (EXCL | KEYSHR) | EXCL_LOCK | KEYSHR_LOCK */
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


#define RM_HEAP2_ID 9
#define RM_HEAP_ID 10
#define RM_BTREE_ID 11
#define XLOG_BTREE_INFO_MASK 0xF0
#define XLOG_BTREE_INSERT_LEAF 0x00
#define XLOG_BTREE_INSERT_UPPER 0x10
#define XLOG_HEAP_OPMASK 0x70
#define XLOG_HEAP_INIT_PAGE 0x80
#define XLOG_HEAP_INSERT 0x00
#define XLOG_HEAP_DELETE 0x10
#define XLOG_HEAP_UPDATE 0x20
#define XLOG_HEAP_HOT_UPDATE 0x40
#define XLOG_HEAP_LOCK 0x60
#define XLOG_HEAP2_MULTI_INSERT 0x50
#define XLOG_HEAP2_LOCK_UPDATED 0x60
#define XLH_LOCK_ALL_FROZEN_CLEARED 0x01
#define XLOG_HEAP2_PRUNE_ON_ACCESS 0x10
#define XLOG_HEAP2_PRUNE_VACUUM_CLEANUP 0x30
#define XLOG_HEAP2_VISIBLE 0x40
#define XLH_INSERT_ALL_VISIBLE_CLEARED 0x01
#define XLH_INSERT_ALL_FROZEN_SET 0x20
#define XLH_DELETE_ALL_VISIBLE_CLEARED 0x01
#define XLH_DELETE_IS_SUPER 0x08
#define XLH_DELETE_IS_PARTITION_MOVE 0x10
#define XLHP_CLEANUP_LOCK 0x04
#define XLHP_HAS_FREEZE_PLANS 0x10
#define XLHP_HAS_REDIRECTIONS 0x20
#define XLHP_HAS_DEAD_ITEMS 0x40
#define XLHP_HAS_NOW_UNUSED_ITEMS 0x80
#define XLH_FREEZE_XVAC 0x02
#define XLH_INVALID_XVAC 0x04
#define LP_REDIRECT 2
#define LP_DEAD 3
#define SIZEOF_XLOG_RECORD 24
#define DELTA_HEADER 16
#define IMAGE_DELTA_HEADER 26
#define XLR_MAX_BLOCK_ID 32
#define BKPBLOCK_FORK_MASK 0x0F
#define VISIBILITYMAP_FORK 2
#define BKPBLOCK_HAS_IMAGE 0x10
#define BKPBLOCK_HAS_DATA 0x20
#define BKPBLOCK_WILL_INIT 0x40
#define BKPBLOCK_SAME_REL 0x80
#define BKPIMAGE_HAS_HOLE 0x01
#define BKPIMAGE_APPLY 0x02
#define BKPIMAGE_COMPRESSED 0x1C
#define T_XMIN 0

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline void wr16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static inline uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline void wr32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}

typedef struct { int idx; int off; int alen; } item_t;

static inline uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) | ((uint64_t)rd32(p + 4) << 32); }

/* The parts of one decoded record the chain needs. */
typedef struct {
    uint32_t xid;
    int info, rmid;
    int target;                 /* block id of the page's block reference, -1: none */
    int target_flags;           /* its fork_flags */
    int target_apply_image;
    const uint8_t *data;        /* its block data */
    int dlen;
    int has_block0, has_block1;
    uint32_t blkno0;            /* block 0's block number */
    uint32_t blkno1;            /* block 1's block number */
    const uint8_t *md;          /* main data */
    uint32_t mdlen;
} rec_t;

typedef struct { uint32_t spc, db, rel; int fork; uint32_t blk; } target_t;

/* _pagec.c */
int pagec_repair(uint8_t *page, char *err, size_t errlen);
int pagec_get_page(PyObject *arg, Py_buffer *view);
#define PAI_OVERWRITE 0x01
#define PAI_IS_HEAP 0x02
int pagec_add_item(uint8_t *b, const uint8_t *item, int size, int offnum, int flags);
/* _pagec_record.c */
int pagec_parse_record(const uint8_t *raw, Py_ssize_t n, const target_t *t, rec_t *r);
/* _pagec_heap.c */
PyObject *pagec_heap_update_redo(PyObject *self, PyObject *args);
PyObject *pagec_redo_chain(PyObject *self, PyObject *args);
int pagec_chain_step(uint8_t *page, uint8_t *w, const uint8_t *data, Py_ssize_t len,
                     uint64_t lsn, const target_t *t);
/* _pagec_window.c */
PyObject *pagec_redo_window(PyObject *self, PyObject *args);
/* _pagec_btree.c: 1 (done), 0 (Python) */
int pagec_btree_redo(uint8_t *w, const rec_t *r);
/* _pagec_vm.c: 1 (done, stamp the LSN), 2 (done, LSN unchanged), 0 (Python) */
int pagec_vm_redo(uint8_t *w, const rec_t *r, const target_t *t);

#endif
