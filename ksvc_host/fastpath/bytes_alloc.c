/* KSVC fast path: bytes objects for the kernel to read into.
 *
 * new_bytes(n, size, table) returns a list of n new bytes objects of `size`
 * bytes each, their contents not yet written, and stores the address of each
 * one's data in the uint64_t array at address `table`. A read submitted with
 * those addresses fills them in place, as os.pread fills the bytes object it
 * returns: no copy out of a staging buffer. Until the reads complete the
 * objects are held by the stream that made them and seen by no other code;
 * a short read is sliced, a failed one dropped, so unwritten bytes never reach
 * the caller. Only this one function needs the CPython API; the loops of the
 * channel are in fastpath.c (cffi).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

static PyObject *new_bytes(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "new_bytes(n, size, table) takes 3 arguments");
        return NULL;
    }
    Py_ssize_t n = PyLong_AsSsize_t(args[0]);
    Py_ssize_t size = PyLong_AsSsize_t(args[1]);
    unsigned long long table = PyLong_AsUnsignedLongLong(args[2]);
    if (PyErr_Occurred())
        return NULL;
    if (n < 0 || size < 0) {
        PyErr_Format(PyExc_ValueError, "new_bytes: n (%zd) and size (%zd) must be >= 0", n, size);
        return NULL;
    }
    if (n && !table) {
        PyErr_SetString(PyExc_ValueError, "new_bytes: the address table is NULL");
        return NULL;
    }
    PyObject *list = PyList_New(n);
    if (!list)
        return NULL;
    uint64_t *addr = (uint64_t *)(uintptr_t)table;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *b = PyBytes_FromStringAndSize(NULL, size);
        if (!b) {
            Py_DECREF(list);
            return NULL;
        }
        addr[i] = (uint64_t)(uintptr_t)PyBytes_AS_STRING(b);
        PyList_SET_ITEM(list, i, b);
    }
    return list;
}

static PyMethodDef methods[] = {
    {"new_bytes", (PyCFunction)(void (*)(void))new_bytes, METH_FASTCALL,
     "new_bytes(n, size, table) -> list of n unwritten bytes objects; their data addresses go to table."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_bytes_alloc", NULL, -1, methods};

PyMODINIT_FUNC PyInit__bytes_alloc(void) { return PyModule_Create(&module); }
