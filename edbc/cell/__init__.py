"""The cell compiler: each cell program rewritten, batched inside and laid out once, at compile time.

Its passes (`edbc.passes.CELL_PASSES`) go program -> program (`rewrite`) ->
internal schedule (`schedule`) -> cell plan (`layout`); `verify` checks each
IR and `ir` holds the value types and printers. `compile_cell` is the entry;
plans store its results, and the runtime only binds weights and generates code.
"""

from .compile import compile_cell, compiled_cell_from_json
from .ir import (BROADCAST, GATHER, KIND_NAMES, SHARED, STACKED, TOKENS, VALUE, VIEW, CellPlan, CellSchedule,
                 CompiledCell, Derived, Step, StepOperand, format_cell_plan, format_cell_schedule,
                 format_compiled_cell)
from .verify import verify_cell_plan, verify_cell_schedule, verify_program, verify_steps

__all__ = ["compile_cell", "compiled_cell_from_json", "CompiledCell", "CellPlan", "CellSchedule", "Derived",
           "Step", "StepOperand", "format_cell_plan", "format_cell_schedule", "format_compiled_cell",
           "verify_program", "verify_cell_schedule", "verify_cell_plan", "verify_steps", "KIND_NAMES",
           "VALUE", "VIEW", "BROADCAST", "GATHER", "SHARED", "STACKED", "TOKENS"]
