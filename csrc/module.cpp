// The importable extension module vtp_ext._C. Importing it loads this shared library, whose static
// initialisers register the operators with the dispatcher; the module itself only reports how it
// was built. Built against CPython's limited API (abi3), so one binary serves every Python >= 3.9.
#include <Python.h>

#include "cpu/isa.h"

#ifndef VTP_EXT_WITH_CUDA
#define VTP_EXT_WITH_CUDA 0
#endif
#ifndef VTP_EXT_CUDA_ARCHS
#define VTP_EXT_CUDA_ARCHS ""
#endif

static struct PyModuleDef vtp_ext_module = {
    PyModuleDef_HEAD_INIT, "_C", "vtp_ext native operators (registered under torch.ops.vtp_ext)", -1,
    nullptr, nullptr, nullptr, nullptr, nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* m = PyModule_Create(&vtp_ext_module);
  if (m == nullptr) return nullptr;
  if (PyModule_AddIntConstant(m, "cuda_built", VTP_EXT_WITH_CUDA) < 0 ||
      PyModule_AddStringConstant(m, "cuda_archs", VTP_EXT_CUDA_ARCHS) < 0 ||
      PyModule_AddStringConstant(m, "cpu_isa", vtp_ext::cpu::active_isa_name()) < 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
