// Each part of the native core adds its functions to the module.
#pragma once
// Only pybind11: the parts that need torch (replay.cpp) include it themselves, so the others
// compile in seconds rather than the ~20 s torch's headers cost each file.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

namespace edbc {
// A numpy array argument, converted to a C-contiguous array of T if it is not one.
template <class T>
using Array = pybind11::array_t<T, pybind11::array::c_style | pybind11::array::forcecast>;

// `obj` as an Array<T>: without numpy's conversion machinery (~0.3 us) when it already is one.
template <class T>
Array<T> as_array(pybind11::handle obj) {
  if (Array<T>::check_(obj)) return pybind11::reinterpret_borrow<Array<T>>(obj);
  return obj.cast<Array<T>>();
}

void register_frontier(pybind11::module_& m);
void register_replay(pybind11::module_& m);
void register_compile(pybind11::module_& m);
}  // namespace edbc
