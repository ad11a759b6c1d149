# Stands in for a missing matplotlib: `edbc bench` must say so up front, in one line.
raise ImportError("No module named 'matplotlib'")
