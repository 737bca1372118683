# cython: language_level=3, boundscheck=False, wraparound=False
# A typed prototype of oxidicom_py.storage.header._walk, for measuring only (never shipped): what a
# compiled core would save on the header walk. Little-endian datasets (explicit or implicit VR),
# top-level elements only; an undefined-length sequence raises NotImplementedError.
# bench/prototypes/compare_walk.py builds it and compares it with the shipped walker.
from oxidicom_py.storage.header import WANTED, LAST_WANTED, NeedMore, HeaderError

cdef inline unsigned int u16(const unsigned char[:] b, Py_ssize_t p) noexcept:
    return b[p] | (b[p + 1] << 8)

cdef inline unsigned int u32(const unsigned char[:] b, Py_ssize_t p) noexcept:
    return b[p] | (b[p + 1] << 8) | (b[p + 2] << 16) | (<unsigned int>b[p + 3] << 24)

cdef inline bint is_long(unsigned char a, unsigned char c) noexcept:
    if a == 79:  # O: OB OD OF OL OV OW
        return c in (66, 68, 70, 76, 86, 87)
    if a == 83:  # S: SQ SV
        return c == 81 or c == 86
    if a == 85:  # U: UC UN UR UT UV
        return c in (67, 78, 82, 84, 86)
    return False

cdef unsigned int[18] WANTED_TAGS
cdef int _i = 0
for _t in sorted(WANTED):
    WANTED_TAGS[_i] = _t
    _i += 1

cdef inline bint wanted(unsigned int tag) noexcept:
    cdef int i
    for i in range(18):
        if WANTED_TAGS[i] == tag:
            return True
        if WANTED_TAGS[i] > tag:
            return False
    return False

def walk(prefix, bint implicit, bint complete):
    cdef const unsigned char[:] b = prefix
    cdef Py_ssize_t pos = 0, end = b.shape[0], hdr, start
    cdef unsigned int group, elem, tag, length
    cdef unsigned char v0, v1
    cdef dict found = {}
    while True:
        if pos + 8 > end:
            if complete:
                return found
            raise NeedMore
        group = u16(b, pos); elem = u16(b, pos + 2)
        tag = (group << 16) | elem
        if implicit or group == 0xFFFE:
            length = u32(b, pos + 4); hdr = 8
        else:
            v0 = b[pos + 4]; v1 = b[pos + 5]
            if not (65 <= v0 <= 90 and 65 <= v1 <= 90):
                raise HeaderError("invalid VR")
            if is_long(v0, v1):
                if pos + 12 > end:
                    if tag > LAST_WANTED or complete:
                        return found
                    raise NeedMore
                length = u32(b, pos + 8); hdr = 12
            else:
                length = u16(b, pos + 6); hdr = 8
        if tag > LAST_WANTED:
            return found
        if length == 0xFFFFFFFF:
            raise NotImplementedError("prototype: undefined-length sequence")
        start = pos + hdr
        pos = start + length
        if wanted(tag):
            name = WANTED[tag]
            if pos > end:
                if complete:
                    return found
                raise NeedMore
            found[name] = bytes(prefix[start:pos])
