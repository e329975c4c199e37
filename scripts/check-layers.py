#!/usr/bin/env python3
"""Fails when two top-level modules of src/ import each other, directly or
through others: every `crate::<module>` a module's files name is an edge, and
the module graph must have no cycle. Prints the order of layers on success."""
import pathlib, re, sys

src = pathlib.Path(__file__).resolve().parent.parent / "src"
modules = {}
for path in src.rglob("*.rs"):
    rel = path.relative_to(src)
    if rel.parts[0] in ("lib.rs", "main.rs"):
        continue
    name = rel.parts[0].removesuffix(".rs")
    modules.setdefault(name, set())
    text = path.read_text()
    for used in re.findall(r"\bcrate::([a-z_]+)", text):
        if used != name:
            modules[name].add(used)
    # `use crate::{a, b::c}` groups.
    for group in re.findall(r"\bcrate::\{([^}]*)\}", text):
        for used in re.findall(r"(?:^|,)\s*([a-z_]+)", group):
            if used != name:
                modules[name].add(used)

unknown = {u for deps in modules.values() for u in deps if u not in modules}
for deps in modules.values():
    deps -= unknown  # items re-exported by lib.rs itself, not modules

# Kahn's algorithm: peel off modules that depend on nothing left.
left = {m: set(d) for m, d in modules.items()}
layers = []
while left:
    ready = sorted(m for m, d in left.items() if not d)
    if not ready:
        cycle = sorted(left)
        sys.exit(f"check-layers: import cycle among {', '.join(cycle)}: " +
                 "; ".join(f"{m} -> {', '.join(sorted(left[m]))}" for m in cycle))
    layers.append(ready)
    for m in ready:
        del left[m]
    for d in left.values():
        d.difference_update(ready)
print("check-layers: no import cycle between modules of src/; layers, lowest first:")
for i, layer in enumerate(layers):
    print(f"  {i}: {' '.join(layer)}")
