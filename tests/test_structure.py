"""The package's layering, read from the source with `ast` (the walk imports nothing).

- No import cycles among convslim's modules, counting imports inside functions too: a lazy import
  that closes a cycle is still a cycle, only hidden.
- The core names no compression family: a family registers what the core needs of it (edit
  replayers, save steps) when it is imported, and `convslim/__init__.py` imports the families.
- Families import the core, not each other, except where one is built from another (below).
"""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "convslim"
FAMILIES = ("pruning", "decomposition", "quantization", "sparsity", "distill", "convert")
FRONT = ("cli", "__main__")             # the command line sits above everything
# family -> family imports by design: deep compression prunes before it quantizes
FAMILY_USES = {("quantization", "pruning")}


def module_name(path):
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name):
    """convslim modules that `name` imports anywhere in its source (top level or in a function).
    `from X import a` counts as importing X.a when that is a module, else X; the packages a module
    sits in are not counted (Python initialises them first, whatever the module imports)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
            targets = subs if len(subs) == len(node.names) else subs + [target]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in MODULES and t != name and not name.startswith(t + "."))
    return found


GRAPH = {name: imports(name) for name in MODULES}


def part(name):
    """The top-level part of convslim a module belongs to: 'checkpoint', 'pruning', 'cli', ..."""
    rest = name.split(".")[1:]
    return rest[0] if rest else ""


def is_core(name):
    return part(name) not in FAMILIES + FRONT + ("",)


def cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_walk_sees_lazy_and_relative_imports():
    assert "convslim.checkpoint" in GRAPH["convslim.modelspec"]
    assert "convslim.data" in GRAPH["convslim.train"]                 # inside recalibrate_bn
    assert "convslim.decomposition.tucker" in GRAPH["convslim.decomposition.cp"]   # from . import tucker
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert cycles(GRAPH) == []


def test_the_core_imports_no_family():
    wrong = sorted(f"{a} -> {b}" for a, targets in GRAPH.items() if is_core(a)
                   for b in targets if part(b) in FAMILIES)
    assert wrong == []


def test_families_import_the_core_not_each_other():
    wrong = sorted(f"{a} -> {b}" for a, targets in GRAPH.items() if part(a) in FAMILIES
                   for b in targets if part(b) in FAMILIES and part(b) != part(a)
                   and (part(a), part(b)) not in FAMILY_USES)
    assert wrong == []


def test_the_package_fills_the_registries_the_core_reads():
    import convslim.checkpoint as checkpoint

    assert {"decompose", "convert", "quantize_inputs", "xnor_inputs"} <= set(checkpoint.EDIT_REPLAYERS)
    assert checkpoint.BEFORE_SAVE
