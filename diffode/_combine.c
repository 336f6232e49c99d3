/*
 * diffode._combine: one fused pass for the linear combinations every DPM-Solver step applies,
 *
 *     out[i] = c[0] * m0[i] + c[1] * m1[i] + ... + c[k-1] * m{k-1}[i]
 *
 * over contiguous float32 or float64 buffers. Eager PyTorch needs one scaled copy and one add_ per
 * term (2 + 3 (k - 1) tensor passes); this reads each input once and writes the output once
 * (k + 1 passes), the memory floor of the step. Coefficients arrive as C doubles; float32 data is
 * combined in float32, term by term in the order given, each product and sum rounded (setup.py
 * compiles with -ffp-contract=off): every element is computed alike, in the vector loop and in its
 * scalar remainder, so a sample's result does not depend on its place in the batch.
 *
 * With a conversion (a network output turned into the prediction the update needs), the same pass
 * also computes conv[i] = sum_j b_j in_j[i], stores it (possibly over one of the inputs: the
 * network output, converted in place) and adds g * conv[i] to out[i].
 *
 * The Python side (diffode/kernels.py) checks dtypes, devices, contiguity and shapes and passes raw
 * addresses: this file trusts them. Built at install time as an optional extension (setup.py);
 * without it diffode runs the same arithmetic with eager tensor operations.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>

#define MAX_TERMS 8

/* Several instruction sets, picked at load time by the CPU (GCC's function multiversioning).
   DIFFODE_NO_MULTIVERSION builds one version for the compiler's target instead (the tests build
   each instruction set that way and compare the results bit for bit). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(DIFFODE_NO_MULTIVERSION)
#define MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MULTIVERSION
#endif

#if defined(__GNUC__)
#define INLINE inline __attribute__((always_inline))
#else
#define INLINE inline
#endif

/* One loop per term count, so that the compiler unrolls the terms and vectorises over i. */
#define DEFINE_COMBINE(T, K)                                                                       \
    static INLINE void combine_##T##_##K(T *restrict out, const T *const *in, const double *coef,  \
                                         Py_ssize_t n) {                                           \
        const T *restrict p[K];                                                                    \
        T c[K];                                                                                    \
        for (int j = 0; j < K; j++) {                                                              \
            p[j] = in[j];                                                                          \
            c[j] = (T)coef[j];                                                                     \
        }                                                                                          \
        for (Py_ssize_t i = 0; i < n; i++) {                                                       \
            T acc = c[0] * p[0][i];                                                                \
            for (int j = 1; j < K; j++) acc += c[j] * p[j][i];                                     \
            out[i] = acc;                                                                          \
        }                                                                                          \
    }                                                                                              \
    /* With a conversion: conv = sum_j b_j in_j (stored), out = sum_j a_j in_j + g conv. conv may  \
       be one of the inputs itself (the network output, converted in place): every element's      \
       inputs are loaded before its outputs are stored, and no element depends on another. */     \
    static INLINE void convert_##T##_##K(T *restrict out, T *conv, const T *const *in,             \
                                         const double *coef, const double *conv_coef, double g,    \
                                         Py_ssize_t n) {                                           \
        const T *p[K];                                                                             \
        T a[K], b[K];                                                                              \
        const T gg = (T)g;                                                                         \
        for (int j = 0; j < K; j++) {                                                              \
            p[j] = in[j];                                                                          \
            a[j] = (T)coef[j];                                                                     \
            b[j] = (T)conv_coef[j];                                                                \
        }                                                                                          \
        _Pragma("GCC ivdep") for (Py_ssize_t i = 0; i < n; i++) {                                  \
            T q[K];                                                                                \
            for (int j = 0; j < K; j++) q[j] = p[j][i];                                            \
            T v = b[0] * q[0];                                                                     \
            for (int j = 1; j < K; j++) v += b[j] * q[j];                                          \
            T acc = a[0] * q[0];                                                                   \
            for (int j = 1; j < K; j++) acc += a[j] * q[j];                                        \
            acc += gg * v;                                                                         \
            conv[i] = v;                                                                           \
            out[i] = acc;                                                                          \
        }                                                                                          \
    }

#define DISPATCH(NAME, T, k, ...)                                                                  \
    switch (k) {                                                                                   \
        case 1: NAME##_##T##_1(__VA_ARGS__); break;                                                \
        case 2: NAME##_##T##_2(__VA_ARGS__); break;                                                \
        case 3: NAME##_##T##_3(__VA_ARGS__); break;                                                \
        case 4: NAME##_##T##_4(__VA_ARGS__); break;                                                \
        case 5: NAME##_##T##_5(__VA_ARGS__); break;                                                \
        case 6: NAME##_##T##_6(__VA_ARGS__); break;                                                \
        case 7: NAME##_##T##_7(__VA_ARGS__); break;                                                \
        default: NAME##_##T##_8(__VA_ARGS__); break;                                               \
    }

#define DEFINE_ALL(T)                                                                              \
    DEFINE_COMBINE(T, 1) DEFINE_COMBINE(T, 2) DEFINE_COMBINE(T, 3) DEFINE_COMBINE(T, 4)            \
    DEFINE_COMBINE(T, 5) DEFINE_COMBINE(T, 6) DEFINE_COMBINE(T, 7) DEFINE_COMBINE(T, 8)            \
    MULTIVERSION static void combine_##T(T *out, const T *const *in, const double *coef, int k,    \
                                         Py_ssize_t n) {                                           \
        DISPATCH(combine, T, k, out, in, coef, n)                                                  \
    }                                                                                              \
    MULTIVERSION static void convert_##T(T *out, T *conv, const T *const *in, const double *coef,  \
                                         const double *conv_coef, double g, int k, Py_ssize_t n) { \
        DISPATCH(convert, T, k, out, conv, in, coef, conv_coef, g, n)                              \
    }

/* The per-K loops are inlined into the multiversioned dispatchers, so each clone vectorises them
   for its own instruction set. */
DEFINE_ALL(float)
DEFINE_ALL(double)

/* Below this many elements the call is shorter than releasing and retaking the GIL. */
#define GIL_RELEASE_MIN 16384

/* Reads a tuple of k addresses or of k floats. */
static int read_addresses(PyObject *tuple, Py_ssize_t k, const void **out) {
    for (Py_ssize_t j = 0; j < k; j++) {
        out[j] = PyLong_AsVoidPtr(PyTuple_GET_ITEM(tuple, j));
        if (PyErr_Occurred()) return -1;
        if (out[j] == NULL) {
            PyErr_SetString(PyExc_ValueError, "combine: null input address");
            return -1;
        }
    }
    return 0;
}

static int read_floats(PyObject *tuple, Py_ssize_t k, double *out) {
    for (Py_ssize_t j = 0; j < k; j++) {
        out[j] = PyFloat_AsDouble(PyTuple_GET_ITEM(tuple, j));
        if (PyErr_Occurred()) return -1;
    }
    return 0;
}

static PyObject *combine(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 5 && nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "combine(out, n, itemsize, addresses, coefficients"
                                         "[, conv, conv_coefficients, conv_weight]) takes 5 or 8 arguments");
        return NULL;
    }
    void *out = PyLong_AsVoidPtr(args[0]);
    Py_ssize_t n = PyLong_AsSsize_t(args[1]);
    long itemsize = PyLong_AsLong(args[2]);
    if (PyErr_Occurred()) return NULL;
    if (!PyTuple_Check(args[3]) || !PyTuple_Check(args[4]) || (nargs == 8 && !PyTuple_Check(args[6]))) {
        PyErr_SetString(PyExc_TypeError, "combine: addresses and coefficients must be tuples");
        return NULL;
    }
    Py_ssize_t k = PyTuple_GET_SIZE(args[3]);
    if (k < 1 || k > MAX_TERMS || PyTuple_GET_SIZE(args[4]) != k || (nargs == 8 && PyTuple_GET_SIZE(args[6]) != k)) {
        PyErr_Format(PyExc_ValueError, "combine: 1 to %d terms with one coefficient each, got %zd addresses",
                     MAX_TERMS, k);
        return NULL;
    }
    if (itemsize != 4 && itemsize != 8) {
        PyErr_Format(PyExc_ValueError, "combine: itemsize must be 4 (float32) or 8 (float64), got %ld", itemsize);
        return NULL;
    }
    if (n < 0 || out == NULL) {
        PyErr_SetString(PyExc_ValueError, "combine: needs n >= 0 and an output address");
        return NULL;
    }
    const void *in[MAX_TERMS];
    double coef[MAX_TERMS], conv_coef[MAX_TERMS];
    if (read_addresses(args[3], k, in) < 0 || read_floats(args[4], k, coef) < 0) return NULL;
    void *conv = NULL;
    double g = 0.0;
    if (nargs == 8) {
        conv = PyLong_AsVoidPtr(args[5]);
        g = PyFloat_AsDouble(args[7]);
        if (PyErr_Occurred() || read_floats(args[6], k, conv_coef) < 0) return NULL;
        if (conv == NULL) {
            PyErr_SetString(PyExc_ValueError, "combine: null conversion address");
            return NULL;
        }
    }
    int release = n >= GIL_RELEASE_MIN;
    PyThreadState *state = release ? PyEval_SaveThread() : NULL;
    if (conv == NULL && itemsize == 4)
        combine_float((float *)out, (const float *const *)in, coef, (int)k, n);
    else if (conv == NULL)
        combine_double((double *)out, (const double *const *)in, coef, (int)k, n);
    else if (itemsize == 4)
        convert_float((float *)out, (float *)conv, (const float *const *)in, coef, conv_coef, g, (int)k, n);
    else
        convert_double((double *)out, (double *)conv, (const double *const *)in, coef, conv_coef, g, (int)k, n);
    if (release) PyEval_RestoreThread(state);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"combine", (PyCFunction)(void (*)(void))combine, METH_FASTCALL,
     "combine(out, n, itemsize, addresses, coefficients[, conv, conv_coefficients, conv_weight]):\n"
     "out = sum_j coefficients[j] * in_j over n elements; with a conversion, also\n"
     "conv = sum_j conv_coefficients[j] * in_j and out += conv_weight * conv (conv may be an input)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_combine", "Fused linear combinations of contiguous float buffers.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__combine(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "MAX_TERMS", MAX_TERMS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
