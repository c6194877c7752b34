"""A data scientist's own Keras model: a project builder (``module:function``) or a pre-trained model file.

``make_model`` returns the Keras model a ``model:`` section describes for the data's input shape and class count,
checked against them, with a one-line :class:`ConfigError` naming the key and what was expected for every way it
can go wrong. Imports TensorFlow (call only from the train stage).
"""

from __future__ import annotations

import importlib
import json
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tinymlops.errors import ConfigError
from tinymlops.models.config import ModelSection


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__


def _project_module(name: str, project_dir: Path) -> Any:
    """Import ``name`` with the project directory first on the import path (a stale same-named module is dropped)."""
    top = name.split(".")[0]
    local = [project_dir / f"{top}.py", project_dir / top / "__init__.py"]
    cached = sys.modules.get(top)
    if cached is not None and any(p.is_file() for p in local):
        cached_file = Path(getattr(cached, "__file__", "") or "").resolve()
        if cached_file not in {p.resolve() for p in local}:  # another project's module of the same name
            for key in [k for k in sys.modules if k == top or k.startswith(top + ".")]:
                del sys.modules[key]
    where = str(project_dir)
    if where not in sys.path:
        sys.path.insert(0, where)  # kept: pickled/custom objects of the project resolve later in the run too
    importlib.invalidate_caches()
    return importlib.import_module(name)


def load_builder(ref: str, project_dir: Path) -> Callable[..., Any]:
    """Return the function ``module:function`` of the project (ConfigError: module or function missing)."""
    module_name, fn_name = ref.split(":")
    try:
        module = _project_module(module_name, project_dir)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name) and module_name.split(".")[:1] == exc.name.split(".")[:1]:
            raise ConfigError(f"model.builder: module {module_name!r} not found (looked in {project_dir} and the "
                              "Python path)") from None
        raise ConfigError(f"model.builder: importing {module_name} failed: {_first_line(exc)}") from None
    except Exception as exc:  # the project's own code: syntax errors, failing top-level statements
        raise ConfigError(f"model.builder: importing {module_name} failed: {_first_line(exc)}") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_")
                       and getattr(v, "__module__", None) == module.__name__)
        raise ConfigError(f"model.builder: {module_name} ({getattr(module, '__file__', '?')}) has no function "
                          f"{fn_name!r}; it defines: {', '.join(found) or 'no functions'}")
    return fn  # type: ignore[no-any-return]


def check_source(section: ModelSection, project_dir: Path) -> list[str]:
    """Return problems found without running any model code: builder module missing, model file missing.

    ``tinymlops validate`` and ``run`` call this (through ``check_references``) so such a typo fails in a second.
    """
    import importlib.util

    if section.builder is not None:
        module = section.builder.split(":")[0]
        top = module.split(".")[0]
        local = (project_dir / f"{top}.py").is_file() or (project_dir / top / "__init__.py").is_file()
        try:
            found = local or importlib.util.find_spec(top) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return [f"model.builder: module {module!r} not found (looked in {project_dir} and the Python path)"]
    if section.file is not None:
        path = Path(section.file)
        path = path if path.is_absolute() else project_dir / path
        if not path.exists():
            return [f"model.file: {path}: file not found"]
    return []


def _keras_version_of(path: Path) -> str | None:
    """Return the Keras version a ``.keras`` archive was saved with (None when it does not say)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return str(json.loads(zf.read("metadata.json")).get("keras_version") or "") or None
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def load_keras_file(path: Path) -> Any:
    """Load a pre-trained Keras 2 (tf_keras) model: ``.keras``, ``.h5`` or a SavedModel directory."""
    if not path.exists():
        raise ConfigError(f"model.file: {path}: file not found")
    if path.is_dir() and not (path / "saved_model.pb").is_file():
        raise ConfigError(f"model.file: {path}: a directory but not a SavedModel (no saved_model.pb)")
    version = _keras_version_of(path) if path.suffix.lower() == ".keras" else None
    if version and not version.startswith("2."):
        raise ConfigError(f"model.file: {path} was saved by Keras {version}; tinymlops fine-tunes Keras 2 (tf_keras) "
                          "models, which TFMOT compresses: save it with tf_keras, or export it to .tflite/.onnx and "
                          "import that")
    from tinymlops.tf import keras

    try:
        model = keras.models.load_model(path)
    except Exception as exc:  # h5py, zip, protobuf and deserialisation errors alike: the file is unusable
        raise ConfigError(f"model.file: {path}: not a readable Keras model ({_first_line(exc)})") from None
    if not isinstance(model, keras.Model):
        raise ConfigError(f"model.file: {path}: a TensorFlow SavedModel but not a Keras model; export it from Keras, "
                          "or convert it to .tflite/.onnx and import that")
    return model


def check_model(model: Any, input_shape: tuple[int, ...], n_classes: int, source: str) -> None:
    """Check that a model is a single-input, single-output tf_keras model for these features and classes.

    ``source`` starts each message: e.g. "model.file: net.keras" or "model.builder: m:f(...) returned a model that".
    """
    from tinymlops.tf import keras

    if not isinstance(model, keras.Model):
        kind = type(model)
        if kind.__module__.split(".")[0] == "keras":
            raise ConfigError(f"{source} is a Keras 3 model ({kind.__module__}.{kind.__name__}); tinymlops trains "
                              "Keras 2 models, which TFMOT compresses: build it with `import tf_keras as keras` "
                              "(or tensorflow.keras)")
        raise ConfigError(f"{source} is a {kind.__module__}.{kind.__name__}, not a Keras model")
    ins, outs = model.inputs or [], model.outputs or []
    if len(ins) != 1 or len(outs) != 1:
        raise ConfigError(f"{source} has {len(ins)} inputs and {len(outs)} outputs; tinymlops feeds one feature "
                          "tensor and reads one class-probability tensor")
    got_in = tuple(model.input_shape[1:])
    if len(got_in) != len(input_shape) or any(g is not None and g != w for g, w in zip(got_in, input_shape,
                                                                                    strict=False)):
        raise ConfigError(f"{source} takes inputs of shape {got_in} but the data's features (after pre-processing) "
                          f"have shape {tuple(input_shape)}")
    got_out = tuple(model.output_shape[1:])
    if got_out != (n_classes,):
        raise ConfigError(f"{source} outputs shape {got_out} per sample but the dataset has {n_classes} classes "
                          f"(expected ({n_classes},))")


def make_model(section: ModelSection, project_dir: Path, input_shape: tuple[int, ...],
               n_classes: int) -> tuple[Any, bool]:
    """Return (Keras model, compiled?) for a ``model:`` section of kind arch, builder or keras file."""
    input_shape = tuple(int(d) for d in input_shape)
    if section.arch is not None:
        from tinymlops.models import build

        return build(section.arch, input_shape, n_classes, **section.params), False
    if section.builder is not None:
        from tinymlops.tf import keras  # noqa: F401  (the legacy-Keras environment before the project's code runs)

        fn = load_builder(section.builder, project_dir)
        call = f"{section.builder}(input_shape={input_shape}, n_classes={n_classes}, **params)"
        try:
            model = fn(input_shape, n_classes, **section.params)
        except Exception as exc:  # the project's code: name it and its error in one line
            raise ConfigError(f"model.builder: {call} raised {_first_line(exc)}") from None
        if not hasattr(model, "layers"):
            raise ConfigError(f"model.builder: {call} returned {type(model).__name__}, not a Keras model")
        check_model(model, input_shape, n_classes, f"model.builder: {call} returned a model that")
        return model, bool(getattr(model, "optimizer", None) is not None and model._is_compiled)
    path = Path(str(section.file))
    path = path if path.is_absolute() else project_dir / path
    model = load_keras_file(path)
    check_model(model, input_shape, n_classes, f"model.file: {path.name}")
    return model, bool(getattr(model, "optimizer", None) is not None and model._is_compiled)
