// Each part of the native core adds its functions to the module.
#pragma once
#include <torch/extension.h>

namespace edbc {
void register_frontier(pybind11::module_& m);
void register_replay(pybind11::module_& m);
void register_compile(pybind11::module_& m);
}  // namespace edbc
