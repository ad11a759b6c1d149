// The native core of edbc: one extension module, each part registering its own functions.
#include "parts.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "edbc's native core: frontier scheduling, the per-mini-batch compile work and the plan replay loop";
  edbc::register_frontier(m);
  edbc::register_compile(m);
  edbc::register_replay(m);
}
