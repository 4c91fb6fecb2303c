"""Module surgery by layer name: find a layer, put a new module in its place, see what reaches it.

Shared by the families that swap whole layers (decomposition's low-rank factors, convert's
separable and Ghost modules), so neither borrows from the other.
"""
from .checkpoint import example_input
from .errors import ConvslimError
from .hooks import run_with_hooks


def get_module(model, name):
    modules = dict(model.named_modules())
    if name not in modules:
        raise ConvslimError(f"no layer named {name!r} in the model")
    return modules[name]


def replace_module(model, name, new):
    """Put `new` where the submodule `name` is (dotted path)."""
    parent_name, _, child = name.rpartition(".")
    parent = get_module(model, parent_name) if parent_name else model
    setattr(parent, child, new)


def input_shapes(model, names):
    """Input shape (without batch) reaching each named layer, in the order the forward pass
    reaches them (layers it never reaches are absent)."""
    shapes = {}

    def keep(name):
        def hook(mod, inputs):
            shapes.setdefault(name, tuple(inputs[0].shape[1:]))
        return hook

    run_with_hooks(model, {n: keep(n) for n in names}, example_input(model), pre=True)
    return shapes
