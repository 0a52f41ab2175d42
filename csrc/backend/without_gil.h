// Teardown without the GIL. torch and pybind11 drop the last reference to our objects from a
// Python object's dealloc, with the GIL held; tearing down joins Gloo's worker threads, and a
// worker may be freeing a tensor whose Python object needs the GIL to go: holding it while
// joining deadlocks (seen in tests/test_recreate.py). Used by the backend and the bindings.
#pragma once
#include <Python.h>

namespace far {

// Runs `fn` (which must not throw) with the GIL released if the calling thread holds it.
template <typename F>
void without_gil(F&& fn) noexcept {
  PyThreadState* saved = Py_IsInitialized() && PyGILState_Check() ? PyEval_SaveThread() : nullptr;
  fn();
  if (saved) PyEval_RestoreThread(saved);
}

}  // namespace far
