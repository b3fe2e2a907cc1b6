// An empty Python module so that `import adam_ext._C` loads the shared
// library, whose static initialisers register the operators with PyTorch.
// Kept apart so the CMake/libtorch build of the other sources needs no Python.
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "adam_ext operators (see torch.ops.adam_ext)", -1, nullptr,
  };
  return PyModule_Create(&module_def);
}
}
