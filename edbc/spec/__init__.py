"""Model specs: YAML → validated `ModelSpec` with one `Program` per cell."""

from .load import load_model, parse_model
from .model import ModelSpec, ParamSpec, RoleSpec, Source, VocabSpec
from .program import Op, Program, Value, format_program

__all__ = ["load_model", "parse_model", "ModelSpec", "ParamSpec", "RoleSpec", "Source",
           "VocabSpec", "Op", "Program", "Value", "format_program"]
