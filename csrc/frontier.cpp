#include "parts.h"

namespace edbc {
void register_frontier(pybind11::module_& m) {
  m.def("ping", []() { return 1; });
}
}  // namespace edbc
