/*
 * walservice._append_codec: the walservice's per-record hot path in C.
 *
 * An AppendStream message carries many Appends of many records. In Python, each
 * record costs a protobuf field walk to validate it, a re-serialization for its
 * frame payload and two xxhash64 calls plus struct packing for its frame header:
 * about 3 us per record on the walservice's one event loop, most of its CPU at 16
 * records per Append. This module does the same work on the wire bytes:
 *
 *   parse_append_stream(message: bytes) -> list[tuple] | None
 *       Walks a serialized strata.v1.AppendStreamRequest. For each AppendRequest:
 *       (tenant_id: str, timeline_id: str, expected_end_lsn: int,
 *        start: int, end: int,          # the AppendRequest's bytes in `message`
 *        spans: bytes,                  # (offset u32, length u32) per Record, LE
 *        payload_bytes: int,            # sum of the records' lengths
 *        max_splice_end: int,           # max offset + len(data) over patch splices
 *        image_len: int,                # -1 no images, -2 images of unequal sizes
 *        suspect: bool)                 # a record the Python validator must judge
 *       `suspect` is set for an empty batch, a record without a kind, a patch
 *       without splices and a block number above MAX_BLKNO: the caller then takes
 *       the protobuf path, whose error names the field. None means the message is
 *       not in the plain shape this parser accepts (an unknown field, a repeated
 *       scalar, a wrong wire type, a uint32 out of range, bad UTF-8, truncation):
 *       the caller parses it with protobuf instead, so the protobuf semantics stay
 *       the only semantics. Each record's payload is its bytes as received, a
 *       valid serialization of the same Record.
 *
 *   encode_frames(out: bytearray, message: bytes, spans: bytes, position: int,
 *                 term: int, commit_time_us: int) -> list[int]
 *       Appends one frame per record (walservice/segment.py states the layout;
 *       the last record's frame has END_OF_BATCH) and returns the records' LSNs.
 *
 *   xxh64(data: bytes, seed: int) -> int
 *       XXH64, written from the xxHash specification (for the tests to check it
 *       against the xxhash package).
 *
 * Little-endian hosts only (the frame layout is little-endian; on others the
 * build fails and the walservice uses its Python path).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "walservice._append_codec supports little-endian hosts only"
#endif

/* ---- XXH64 (xxHash specification, 64-bit variant) ---------------------------- */

static const uint64_t P1 = 11400714785074694791ULL;
static const uint64_t P2 = 14029467366897019727ULL;
static const uint64_t P3 = 1609587929392839161ULL;
static const uint64_t P4 = 9650029242287828579ULL;
static const uint64_t P5 = 2870177450012600261ULL;

static inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
static inline uint64_t read64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline uint32_t read32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }

static inline uint64_t xxh_round(uint64_t acc, uint64_t lane) {
    acc += lane * P2;
    acc = rotl64(acc, 31);
    return acc * P1;
}

static inline uint64_t xxh_merge(uint64_t acc, uint64_t v) {
    acc ^= xxh_round(0, v);
    return acc * P1 + P4;
}

static uint64_t xxh64(const uint8_t *p, size_t len, uint64_t seed) {
    const uint8_t *end = p + len;
    uint64_t h;
    if (len >= 32) {
        uint64_t v1 = seed + P1 + P2, v2 = seed + P2, v3 = seed, v4 = seed - P1;
        const uint8_t *limit = end - 32;
        do {
            v1 = xxh_round(v1, read64(p));
            v2 = xxh_round(v2, read64(p + 8));
            v3 = xxh_round(v3, read64(p + 16));
            v4 = xxh_round(v4, read64(p + 24));
            p += 32;
        } while (p <= limit);
        h = rotl64(v1, 1) + rotl64(v2, 7) + rotl64(v3, 12) + rotl64(v4, 18);
        h = xxh_merge(h, v1);
        h = xxh_merge(h, v2);
        h = xxh_merge(h, v3);
        h = xxh_merge(h, v4);
    } else {
        h = seed + P5;
    }
    h += (uint64_t)len;
    while (p + 8 <= end) {
        h ^= xxh_round(0, read64(p));
        h = rotl64(h, 27) * P1 + P4;
        p += 8;
    }
    if (p + 4 <= end) {
        h ^= (uint64_t)read32(p) * P1;
        h = rotl64(h, 23) * P2 + P3;
        p += 4;
    }
    while (p < end) {
        h ^= (*p) * P5;
        h = rotl64(h, 11) * P1;
        p++;
    }
    h ^= h >> 33;
    h *= P2;
    h ^= h >> 29;
    h *= P3;
    h ^= h >> 32;
    return h;
}

/* ---- protobuf wire format ------------------------------------------------------ */

enum { WT_VARINT = 0, WT_LEN = 2 };
#define MAX_BLKNO 0xFFFFFFFEULL

/* A cursor over [p, end). Every reader returns 0 on malformed input. */
typedef struct {
    const uint8_t *p;
    const uint8_t *end;
} Reader;

static int read_varint(Reader *r, uint64_t *out) {
    uint64_t v = 0;
    for (int shift = 0; shift < 70; shift += 7) {
        if (r->p >= r->end) return 0;
        uint8_t b = *r->p++;
        if (shift == 63 && (b & 0x7e)) return 0; /* over 64 bits */
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return 1;
        }
    }
    return 0;
}

/* The next field's number and wire type; 0 at the end or on a bad tag. */
static int read_tag(Reader *r, uint32_t *field, uint32_t *wire_type) {
    uint64_t tag;
    if (!read_varint(r, &tag) || tag >> 32) return 0;
    *field = (uint32_t)(tag >> 3);
    *wire_type = (uint32_t)(tag & 7);
    return *field != 0;
}

static int read_len(Reader *r, Reader *sub) {
    uint64_t n;
    if (!read_varint(r, &n) || n > (uint64_t)(r->end - r->p)) return 0;
    sub->p = r->p;
    sub->end = r->p + n;
    r->p += n;
    return 1;
}

static int read_u32(Reader *r, uint64_t *out) {
    return read_varint(r, out) && *out <= 0xFFFFFFFFULL;
}

/* What one Append's records add up to (see parse_append_stream). */
typedef struct {
    uint64_t payload_bytes;
    uint64_t max_splice_end;
    int64_t image_len;
    int suspect;
} Summary;

/* Each parse_* takes a message's bytes, returns 0 when they are not in the plain
 * shape (see the module comment). A field may appear at most once (`seen`). */

static int parse_splice(Reader r, uint64_t *end_out) {
    unsigned seen = 0;
    uint64_t offset = 0, len = 0, v;
    uint32_t field, wt;
    Reader sub;
    while (r.p < r.end) {
        if (!read_tag(&r, &field, &wt) || field > 2 || (seen & (1u << field))) return 0;
        seen |= 1u << field;
        if (field == 1) {
            if (wt != WT_VARINT || !read_u32(&r, &v)) return 0;
            offset = v;
        } else {
            if (wt != WT_LEN || !read_len(&r, &sub)) return 0;
            len = (uint64_t)(sub.end - sub.p);
        }
    }
    *end_out = offset + len;
    return 1;
}

static int parse_patch(Reader r, Summary *s) {
    unsigned seen = 0;
    uint64_t v, splices = 0;
    uint32_t field, wt;
    Reader sub;
    while (r.p < r.end) {
        if (!read_tag(&r, &field, &wt) || field > 3) return 0;
        if (field == 3) {
            uint64_t splice_end;
            if (wt != WT_LEN || !read_len(&r, &sub) || !parse_splice(sub, &splice_end)) return 0;
            if (splice_end > s->max_splice_end) s->max_splice_end = splice_end;
            splices++;
            continue;
        }
        if ((seen & (1u << field)) || wt != WT_VARINT || !read_u32(&r, &v)) return 0;
        seen |= 1u << field;
        if (field == 2 && v > MAX_BLKNO) s->suspect = 1;
    }
    if (!splices) s->suspect = 1;
    return 1;
}

static int parse_image(Reader r, Summary *s) {
    unsigned seen = 0;
    uint64_t v;
    uint32_t field, wt;
    Reader sub;
    int64_t page_len = 0;
    while (r.p < r.end) {
        if (!read_tag(&r, &field, &wt) || field > 3 || (seen & (1u << field))) return 0;
        seen |= 1u << field;
        if (field == 3) {
            if (wt != WT_LEN || !read_len(&r, &sub)) return 0;
            page_len = (int64_t)(sub.end - sub.p);
        } else {
            if (wt != WT_VARINT || !read_u32(&r, &v)) return 0;
            if (field == 2 && v > MAX_BLKNO) s->suspect = 1;
        }
    }
    if (s->image_len == -1)
        s->image_len = page_len;
    else if (s->image_len != page_len)
        s->image_len = -2;
    return 1;
}

/* RelSize (rel, nblocks) and RelDrop (rel): uint32 fields only, unchecked. */
static int parse_u32_fields(Reader r, uint32_t max_field) {
    unsigned seen = 0;
    uint64_t v;
    uint32_t field, wt;
    while (r.p < r.end) {
        if (!read_tag(&r, &field, &wt) || field > max_field || (seen & (1u << field))) return 0;
        seen |= 1u << field;
        if (wt != WT_VARINT || !read_u32(&r, &v)) return 0;
    }
    return 1;
}

static int parse_record(Reader r, Summary *s) {
    uint32_t field, wt;
    Reader sub;
    if (r.p == r.end) {
        s->suspect = 1; /* no kind */
        return 1;
    }
    if (!read_tag(&r, &field, &wt) || wt != WT_LEN || !read_len(&r, &sub) || r.p != r.end) return 0;
    switch (field) {
    case 1: return parse_image(sub, s);
    case 2: return parse_patch(sub, s);
    case 3: return parse_u32_fields(sub, 2);
    case 4: return parse_u32_fields(sub, 1);
    default: return 0;
    }
}

static PyObject *decode_str(Reader sub) {
    return PyUnicode_DecodeUTF8((const char *)sub.p, sub.end - sub.p, NULL);
}

/* One AppendRequest as the tuple parse_append_stream documents; NULL with no
 * exception set when it is not in the plain shape. */
static PyObject *parse_append(const uint8_t *base, Reader r) {
    unsigned seen = 0;
    uint32_t field, wt;
    Reader sub, tenant = {NULL, NULL}, timeline = {NULL, NULL};
    uint64_t expected = 0;
    Summary s = {0, 0, -1, 0};
    PyObject *spans = NULL, *tenant_str = NULL, *timeline_str = NULL, *result = NULL;
    Py_ssize_t start = r.p - base, end = r.end - base, count = 0, capacity = 16;
    uint32_t *buf = PyMem_Malloc(capacity * 8);
    if (buf == NULL) return PyErr_NoMemory();
    while (r.p < r.end) {
        if (!read_tag(&r, &field, &wt) || field < 1 || field > 4) goto unplain;
        if (field == 3) {
            if (wt != WT_LEN || !read_len(&r, &sub) || !parse_record(sub, &s)) goto unplain;
            if (count == capacity) {
                uint32_t *bigger = PyMem_Realloc(buf, capacity * 2 * 8);
                if (bigger == NULL) {
                    PyErr_NoMemory();
                    goto done;
                }
                buf = bigger;
                capacity *= 2;
            }
            buf[2 * count] = (uint32_t)(sub.p - base);
            buf[2 * count + 1] = (uint32_t)(sub.end - sub.p);
            s.payload_bytes += (uint64_t)(sub.end - sub.p);
            count++;
            continue;
        }
        if (seen & (1u << field)) goto unplain;
        seen |= 1u << field;
        if (field == 4) {
            if (wt != WT_VARINT || !read_varint(&r, &expected)) goto unplain;
        } else {
            if (wt != WT_LEN || !read_len(&r, &sub)) goto unplain;
            if (field == 1)
                tenant = sub;
            else
                timeline = sub;
        }
    }
    if (!count) s.suspect = 1;
    tenant_str = tenant.p ? decode_str(tenant) : PyUnicode_FromStringAndSize("", 0);
    timeline_str = timeline.p ? decode_str(timeline) : PyUnicode_FromStringAndSize("", 0);
    if (tenant_str == NULL || timeline_str == NULL) {
        if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
            PyErr_Clear();
            goto unplain;
        }
        goto done;
    }
    spans = PyBytes_FromStringAndSize((const char *)buf, count * 8);
    if (spans == NULL) goto done;
    result = Py_BuildValue(
        "(OOKnnOKKLO)", tenant_str, timeline_str, (unsigned long long)expected, start, end, spans,
        (unsigned long long)s.payload_bytes, (unsigned long long)s.max_splice_end, (long long)s.image_len,
        s.suspect ? Py_True : Py_False);
    goto done;
unplain:
    result = NULL;
done:
    PyMem_Free(buf);
    Py_XDECREF(spans);
    Py_XDECREF(tenant_str);
    Py_XDECREF(timeline_str);
    return result;
}

static PyObject *parse_append_stream(PyObject *module, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    const uint8_t *base = view.buf;
    Reader r = {base, base + view.len};
    uint32_t field, wt;
    Reader sub;
    PyObject *out = NULL;
    if ((uint64_t)view.len > 0xFFFFFFFFULL) goto unplain; /* spans hold u32 offsets */
    out = PyList_New(0);
    if (out == NULL) goto done;
    while (r.p < r.end) {
        if (!read_tag(&r, &field, &wt) || field != 1 || wt != WT_LEN || !read_len(&r, &sub)) goto unplain;
        PyObject *item = parse_append(base, sub);
        if (item == NULL) {
            if (PyErr_Occurred()) goto fail;
            goto unplain;
        }
        int rc = PyList_Append(out, item);
        Py_DECREF(item);
        if (rc < 0) goto fail;
    }
    goto done;
unplain:
    Py_XDECREF(out);
    out = Py_NewRef(Py_None);
    goto done;
fail:
    Py_CLEAR(out);
done:
    PyBuffer_Release(&view);
    return out;
}

/* ---- frames (walservice/segment.py) ------------------------------------------------ */

#define FRAME_HEADER_SIZE 40
#define END_OF_BATCH 0x01

static PyObject *encode_frames(PyObject *module, PyObject *args) {
    PyObject *out;
    Py_buffer message, spans;
    unsigned long long position, term, commit_time_us;
    if (!PyArg_ParseTuple(args, "Yy*y*KKK", &out, &message, &spans, &position, &term, &commit_time_us))
        return NULL;
    PyObject *lsns = NULL;
    Py_ssize_t count = spans.len / 8;
    const uint32_t *span = spans.buf;
    if (spans.len % 8 || count == 0) {
        PyErr_SetString(PyExc_ValueError, "spans must hold at least one (offset, length) pair of u32");
        goto done;
    }
    size_t total = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        if ((uint64_t)span[2 * i] + span[2 * i + 1] > (uint64_t)message.len) {
            PyErr_SetString(PyExc_ValueError, "a span reaches past the end of the message");
            goto done;
        }
        total += FRAME_HEADER_SIZE + (size_t)span[2 * i + 1];
    }
    lsns = PyList_New(count);
    if (lsns == NULL) goto done;
    Py_ssize_t old = PyByteArray_GET_SIZE(out);
    if (PyByteArray_Resize(out, old + (Py_ssize_t)total) < 0) {
        Py_CLEAR(lsns);
        goto done;
    }
    uint8_t *dst = (uint8_t *)PyByteArray_AS_STRING(out) + old;
    const uint8_t *src = message.buf;
    uint64_t pos = position;
    for (Py_ssize_t i = 0; i < count; i++) {
        uint32_t n = span[2 * i + 1];
        const uint8_t *payload = src + span[2 * i];
        uint8_t flags = (i == count - 1) ? END_OF_BATCH : 0;
        uint64_t payload_sum = xxh64(payload, n, pos);
        memcpy(dst, &n, 4);
        dst[4] = flags;
        dst[5] = dst[6] = dst[7] = 0;
        memcpy(dst + 8, &term, 8);
        memcpy(dst + 16, &commit_time_us, 8);
        memcpy(dst + 24, &payload_sum, 8);
        uint64_t head_sum = xxh64(dst, 32, pos);
        memcpy(dst + 32, &head_sum, 8);
        memcpy(dst + FRAME_HEADER_SIZE, payload, n);
        dst += FRAME_HEADER_SIZE + n;
        pos += FRAME_HEADER_SIZE + (uint64_t)n;
        PyObject *lsn = PyLong_FromUnsignedLongLong(pos);
        if (lsn == NULL) {
            Py_CLEAR(lsns);
            PyByteArray_Resize(out, old);
            goto done;
        }
        PyList_SET_ITEM(lsns, i, lsn);
    }
done:
    PyBuffer_Release(&message);
    PyBuffer_Release(&spans);
    return lsns;
}

static PyObject *py_xxh64(PyObject *module, PyObject *args) {
    Py_buffer data;
    unsigned long long seed = 0;
    if (!PyArg_ParseTuple(args, "y*|K", &data, &seed)) return NULL;
    uint64_t h = xxh64(data.buf, (size_t)data.len, seed);
    PyBuffer_Release(&data);
    return PyLong_FromUnsignedLongLong(h);
}

static PyMethodDef methods[] = {
    {"parse_append_stream", parse_append_stream, METH_O, "Walk a serialized AppendStreamRequest (see the module comment)."},
    {"encode_frames", encode_frames, METH_VARARGS, "Append one batch's frames to a bytearray; return the record LSNs."},
    {"xxh64", py_xxh64, METH_VARARGS, "XXH64 of a bytes-like object with a seed."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "walservice._append_codec", "The walservice's per-record hot path in C.", -1, methods,
};

PyMODINIT_FUNC PyInit__append_codec(void) { return PyModule_Create(&module_def); }
