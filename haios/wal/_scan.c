/* The checks of haios.wal.reader._fast_scan for a run of plain records, in C.
 *
 * scan(view, salt, lamport, crc, types, known_flags, lz4_flag, jump_flag)
 *   -> (bytes consumed, last Lamport index, last CRC, records, first Lamport index)
 *
 * Walks the whole records at the start of ``view`` (a bytes-like object), each checked as the
 * Python loop checks it: complete within the view, the segment's salt, linked to the previous
 * record's CRC, a known type (bit ``type`` of ``types``) with no unknown flag and zero reserved
 * bytes, a stored length equal to the decoded one, the next Lamport index (or a larger one with the
 * jump flag), and the CRC-32 of everything after the CRC field. It stops at the first record that is
 * incomplete, fails a check or is lz4-compressed, and returns where it stopped: the caller's Python
 * loop takes over from there (it decodes lz4 payloads, and names what is wrong with a bad record).
 * The format's constants come from the caller; the record layout is docs/wal-format.md's.
 *
 * Every read is bounded by the view's length before it is made. The interpreter lock is released
 * while the records are walked.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <zlib.h>

#define HEADER 32

static uint32_t le32(const unsigned char *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static uint64_t le64(const unsigned char *p)
{
    return (uint64_t)le32(p) | ((uint64_t)le32(p + 4) << 32);
}

static PyObject *scan(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer view;
    unsigned long salt, crc, types, known_flags, lz4_flag, jump_flag;
    unsigned long long lamport;
    if (!PyArg_ParseTuple(args, "y*kKkkkkk", &view, &salt, &lamport, &crc, &types, &known_flags, &lz4_flag,
                          &jump_flag))
        return NULL;
    const unsigned char *buf = view.buf;
    Py_ssize_t end = view.len, pos = 0, count = 0;
    uint64_t last = lamport, first = 0;
    uint32_t chain = (uint32_t)crc;
    Py_BEGIN_ALLOW_THREADS
    while (end - pos >= HEADER) {
        const unsigned char *h = buf + pos;
        uint32_t rcrc = le32(h), length = le32(h + 4), rsalt = le32(h + 12), rprev = le32(h + 24);
        uint32_t raw_length = le32(h + 28);
        unsigned type = h[8], flags = h[9], reserved = (unsigned)h[10] | ((unsigned)h[11] << 8);
        uint64_t rlamport = le64(h + 16);
        if ((uint64_t)length > (uint64_t)(end - pos - HEADER))
            break;
        if (rsalt != (uint32_t)salt || rprev != chain || reserved || (flags & ~known_flags))
            break;
        if (type >= 8 * sizeof(types) || !((types >> type) & 1))
            break;
        if ((flags & lz4_flag) || raw_length != length)
            break;
        int next = last != UINT64_MAX && rlamport == last + 1;
        if (!next && !((flags & jump_flag) && rlamport > last))
            break;
        if ((uint32_t)crc32(0L, h + 4, (uInt)(HEADER - 4 + length)) != rcrc)
            break;
        if (count == 0)
            first = rlamport;
        last = rlamport;
        chain = rcrc;
        pos += HEADER + (Py_ssize_t)length;
        count++;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return Py_BuildValue("nKknK", pos, (unsigned long long)last, (unsigned long)chain, count,
                         (unsigned long long)first);
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, "Verify the plain records at the start of a view (see the module's source)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_scan",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__scan(void)
{
    return PyModule_Create(&module);
}
