/* The layout of a WAL record (DecodeXLogRecord, xlogreader.c), as far as the
 * compiled chain needs it: which block reference is the page's, its data,
 * the main data. `wal.decoder` is the reference; anything it would reject
 * makes this answer 0, so Python decodes that record and raises. */
#include "_pagec.h"

/* DecodeXLogRecord's layout (xlogreader.c), for a record that is whole: 1, or 0 on
 * anything unusual (the Python decoder then runs and raises what it finds). */
int pagec_parse_record(const uint8_t *raw, Py_ssize_t n, const target_t *t, rec_t *r) {
    if (n < SIZEOF_XLOG_RECORD || rd32(raw) != (uint32_t)n)
        return 0;
    r->xid = rd32(raw + 4);
    r->info = raw[16];
    r->rmid = raw[17];
    r->target = -1;
    r->target_flags = r->target_apply_image = r->dlen = 0;
    r->data = raw;
    r->has_block0 = r->has_block1 = 0;
    r->blkno0 = r->blkno1 = 0;
    r->md = NULL;
    r->mdlen = 0;
    struct { int id, flags, dlen, imglen, apply; int match; uint32_t blkno; } blocks[XLR_MAX_BLOCK_ID + 1];
    int nblocks = 0, max_block_id = -1, have_rel = 0;
    uint32_t spc = 0, db = 0, rel = 0;
    Py_ssize_t pos = SIZEOF_XLOG_RECORD;
    uint64_t datatotal = 0;
    while ((uint64_t)(n - pos) > datatotal) {
        int id = raw[pos];
        if (id == 255) {                                        /* XLR_BLOCK_ID_DATA_SHORT */
            if (pos + 2 > n) return 0;
            r->mdlen = raw[pos + 1];
            pos += 2;
            datatotal += r->mdlen;
            break;
        }
        if (id == 254) {                                        /* XLR_BLOCK_ID_DATA_LONG */
            if (pos + 5 > n) return 0;
            r->mdlen = rd32(raw + pos + 1);
            pos += 5;
            datatotal += r->mdlen;
            break;
        }
        if (id == 253) { pos += 3; continue; }                  /* ORIGIN */
        if (id == 252) { pos += 5; continue; }                  /* TOPLEVEL_XID */
        if (id > XLR_MAX_BLOCK_ID || id <= max_block_id || pos + 4 > n)
            return 0;
        max_block_id = id;
        int flags = raw[pos + 1], dlen = rd16(raw + pos + 2);
        pos += 4;
        if (((flags & BKPBLOCK_HAS_DATA) != 0) != (dlen != 0))
            return 0;
        int imglen = 0, apply = 0;
        if (flags & BKPBLOCK_HAS_IMAGE) {
            if (pos + 5 > n) return 0;
            imglen = rd16(raw + pos);
            int hole_offset = rd16(raw + pos + 2), bimg_info = raw[pos + 4];
            pos += 5;
            int compressed = bimg_info & BKPIMAGE_COMPRESSED, has_hole = bimg_info & BKPIMAGE_HAS_HOLE;
            int hole_len = BLCKSZ - imglen;
            if (compressed) {
                hole_len = 0;
                if (has_hole) {
                    if (pos + 2 > n) return 0;
                    hole_len = rd16(raw + pos);
                    pos += 2;
                }
            }
            if (has_hole ? (hole_offset == 0 || hole_len == 0 || imglen == BLCKSZ)
                         : (hole_offset != 0 || hole_len != 0))
                return 0;
            if ((compressed && imglen == BLCKSZ) || (!has_hole && !compressed && imglen != BLCKSZ))
                return 0;
            apply = (bimg_info & BKPIMAGE_APPLY) != 0;
            datatotal += (uint64_t)imglen;
        }
        datatotal += (uint64_t)dlen;
        if (!(flags & BKPBLOCK_SAME_REL)) {
            if (pos + 12 > n) return 0;
            spc = rd32(raw + pos); db = rd32(raw + pos + 4); rel = rd32(raw + pos + 8);
            have_rel = 1;
            pos += 12;
        } else if (!have_rel) {
            return 0;
        }
        if (pos + 4 > n) return 0;
        uint32_t blkno = rd32(raw + pos);
        pos += 4;
        blocks[nblocks].id = id;
        blocks[nblocks].flags = flags;
        blocks[nblocks].dlen = dlen;
        blocks[nblocks].imglen = imglen;
        blocks[nblocks].apply = apply;
        blocks[nblocks].blkno = blkno;
        blocks[nblocks].match = spc == t->spc && db == t->db && rel == t->rel
                                && (flags & BKPBLOCK_FORK_MASK) == t->fork && blkno == t->blk;
        nblocks++;
    }
    if (pos > n || (uint64_t)(n - pos) != datatotal)
        return 0;
    for (int k = 0; k < nblocks; k++) {                         /* the payloads */
        pos += blocks[k].imglen;
        if (blocks[k].id == 0) { r->has_block0 = 1; r->blkno0 = blocks[k].blkno; }
        if (blocks[k].id == 1) { r->has_block1 = 1; r->blkno1 = blocks[k].blkno; }
        if (blocks[k].match && r->target < 0) {
            r->target = blocks[k].id;
            r->target_flags = blocks[k].flags;
            r->target_apply_image = blocks[k].apply;
            r->data = raw + pos;
            r->dlen = blocks[k].dlen;
        }
        pos += blocks[k].dlen;
    }
    r->md = raw + pos;
    return 1;
}
