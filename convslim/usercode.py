"""A user's own code named on the command line, `file.py:name` or `package.module:name`: imported
only because the user typed it, then called with the keywords its signature accepts."""
import importlib
import importlib.util
import inspect
from pathlib import Path

from .errors import ConvslimError


def import_factory(spec, what="model"):
    """The callable `spec` names; each way of failing is one line naming it."""
    target, _, attr = spec.rpartition(":")
    if target.endswith(".py"):
        path = Path(target).expanduser()
        if not path.is_file():
            raise ConvslimError(f"{what} file not found: {path}")
        mod_spec = importlib.util.spec_from_file_location(f"convslim_user_{what}_{path.stem}", path)
        module = importlib.util.module_from_spec(mod_spec)
        try:
            mod_spec.loader.exec_module(module)
        except Exception as exc:
            raise ConvslimError(f"importing {path} failed: {type(exc).__name__}: {exc}") from None
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ConvslimError(f"cannot import module {target!r}: {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConvslimError(f"{target} has no callable {attr!r}")
    return factory


def call_factory(factory, spec, what="model", **kwargs):
    """Call `factory` with those of `kwargs` its signature accepts (all of them with **kwargs)."""
    try:
        params = inspect.signature(factory).parameters
        takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
        accepted = {k: v for k, v in kwargs.items() if takes_all or k in params}
    except (TypeError, ValueError):
        accepted = {}
    try:
        return factory(**accepted)
    except ConvslimError:
        raise
    except Exception as exc:
        raise ConvslimError(f"{what} factory {spec} failed: {type(exc).__name__}: {' '.join(str(exc).split())}") from None
