/* The training extension's size type and check of a Python buffer's length. */
#ifndef PIXELQ_BUFFERS_H
#define PIXELQ_BUFFERS_H
#include <Python.h>

typedef Py_ssize_t ssize;

/* 1 when the buffer holds exactly `bytes` bytes; else 0 with a ValueError naming it. */
static int want(Py_buffer *b, ssize bytes, const char *name) {
    if (b->len != bytes) {
        PyErr_Format(PyExc_ValueError, "%s: buffer has %zd bytes, expected %zd", name, b->len, bytes);
        return 0;
    }
    return 1;
}

#endif
