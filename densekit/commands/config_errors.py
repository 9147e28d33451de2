"""jsonargparse's reports of a bad config as one line naming the key, the value given and what
would be valid: unknown options (with the closest valid one and the list), unknown class paths
(with the classes that would do), a missing class_path, values of the wrong type or outside a
Literal's choices."""

from __future__ import annotations

import ast
import difflib
import importlib
import inspect
import re

# The class behind each top-level key a command accepts without a class_path.
TRAINER = "lightning.pytorch.Trainer"
ROOTS: dict[str, dict[str, str]] = {
    "fit": {"trainer": TRAINER},
    "pretrain": {
        "trainer": TRAINER,
        "model": "densekit.pretrain.DinoPretrainTask",
        "data": "densekit.pretrain.PretrainDataModule",
    },
}
# Where the classes a subclass-mode key accepts live, by their base class's name.
SUBCLASS_MODULES = {"DenseTask": "densekit.tasks", "DenseDataModule": "densekit.data"}


def config_error(text: str, roots: dict[str, str]) -> str:
    """jsonargparse's multi-line report ``text`` as one line.

    Args:
        text: the ``argparse.ArgumentError``'s message.
        roots: the class behind each top-level key taken without a class_path (:data:`ROOTS`).
    """
    rejected = re.search(r"^Subcommand '(\w+)' does not accept option '([^']+)'", text)
    if rejected:
        return rejected_option(rejected.group(2), roots, rejected.group(1))
    keys = re.findall(r'Parser key "([^"]+)"', text)
    key = ".".join(keys)
    unknown = re.search(r"Option '([^']+)' is not accepted", text)
    if unknown:
        class_path = re.search(r"given class_path '([\w.]+)'", text)
        return unknown_option(key, unknown.group(1), class_path.group(1) if class_path else None)
    no_class = re.search(r"module '([\w.]+)' has no attribute '(\w+)'", text)
    if no_class and key:
        return unknown_class(key, no_class.group(1), no_class.group(2), _base(text))
    given_match = re.search(r"(?:Got value|Given value): (.*)$", text, re.MULTILINE)
    given = given_match.group(1).strip() if given_match else None
    not_subclass = re.search(r"Not a valid subclass of (\w+)", text) or re.search(
        r"but [\w.]*?(\w+) is abstract", text
    )
    if (
        not_subclass
        and key
        and "." not in key
        and given
        and given.startswith("{")
        and "'class_path'" not in given
    ):
        base = not_subclass.group(1)
        module = SUBCLASS_MODULES.get(base, "")
        valid = ", ".join(f"{module}.{name}" for name in _subclasses(module, base))
        return f"{key}: no class_path; name the class of its init_args (class_path: ...)" + (
            f"; valid: {valid}" if valid else ""
        )
    literal = re.search(r"Expected a typing\.Literal\[(.*?)\]", text)
    if literal and key:
        choices = ", ".join(str(c) for c in ast.literal_eval(f"[{literal.group(1)}]"))
        return f"{key} {given!r}: not a valid choice; valid: {choices}"
    expected = [t for t in re.findall(r"Expected an? <class '([\w.]+)'>", text) if t != "NoneType"]
    if expected and key and given is not None:
        return f"{key} {given!r}: expected {' or '.join(expected)}"
    skip = (
        "Parser key",
        "Does not validate",
        "Subtypes:",
        "Errors:",
        "Given value",
        "Expected a <class 'NoneType'>",
        "Problem with given class_path",
    )
    lines = [line.strip().lstrip("-").strip() for line in text.splitlines()]
    detail = " ".join(line for line in lines if line and not line.startswith(skip))
    if given is not None and "Got value" not in detail:
        detail += f"; got {given[:80]}"
    detail = re.sub(r"<class '([\w.]+)'>", r"\1", detail)
    return f"{key}: {detail}" if key else detail


def rejected_option(option: str, roots: dict[str, str], subcommand: str = "fit") -> str:
    """An option the command does not take (``trainer.max_epoch``): named with the closest valid
    one and the list, read from the class behind its top-level key (for a top-level key: the
    config's sections and the arguments of ``Trainer.<subcommand>``)."""
    root, *rest = option.split(".")
    class_path = roots.get(root)
    if not rest or class_path is None:
        keys = top_level_keys(subcommand)
        close = difflib.get_close_matches(root, keys, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return f"{option}: unknown option{hint}; valid top-level keys: {', '.join(keys)}"
    if rest[0] in ("class_path", "init_args"):
        valid = ", ".join(options_of(class_path))
        return (
            f"{option}: {root} takes its options directly under '{root}:' (no class_path or "
            f"init_args); valid: {valid}"
        )
    return unknown_option(".".join([root, *rest[:-1]]), rest[-1], class_path)


def top_level_keys(subcommand: str) -> list[str]:
    """The keys of a config of ``subcommand``: its sections and the arguments LightningCLI
    takes from ``Trainer.<subcommand>`` (``ckpt_path``, ...)."""
    import lightning.pytorch as pl

    method = getattr(pl.Trainer, subcommand, None)
    taken = {"self", "model", "datamodule", "dataloaders", "train_dataloaders", "val_dataloaders"}
    extra = (
        []
        if method is None
        else [p for p in inspect.signature(method).parameters if p not in taken | {"weights_only"}]
    )
    return ["seed_everything", "trainer", "model", "data", *extra]


def unknown_option(key: str, name: str, class_path: str | None) -> str:
    """``model.hed: unknown option (did you mean head?); valid: ...``, the valid options read
    from the class's ``__init__`` when its class path is known."""
    where = f"{key}.{name}" if key else name
    valid = options_of(class_path) if class_path else []
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    listing = f"; valid: {', '.join(valid)}" if valid else ""
    return f"{where}: unknown option{hint}{listing}"


def unknown_class(key: str, module: str, name: str, base: str | None) -> str:
    """``model.class_path densekit.tasks.SegmentationTsk: no such class (did you mean ...)``."""
    classes = _subclasses(module, base) if base else _classes(module)
    close = difflib.get_close_matches(name, classes, n=1)
    hint = f" (did you mean {module}.{close[0]}?)" if close else ""
    listing = f"; valid: {', '.join(f'{module}.{c}' for c in classes)}" if classes else ""
    return f"{key}.class_path {module}.{name}: no such class{hint}{listing}"


def options_of(class_path: str) -> list[str]:
    """The keyword options of ``class_path``'s ``__init__`` (through ``**kwargs`` to its base
    classes); empty when the class cannot be imported."""
    module, _, cls = class_path.rpartition(".")
    try:
        klass = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError, ValueError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    valid: list[str] = []
    for base in getattr(klass, "__mro__", ()):
        params = inspect.signature(base.__init__).parameters.values()
        valid += [
            p.name for p in params if p.kind in kinds and p.name != "self" and p.name not in valid
        ]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return valid


def _base(text: str) -> str | None:
    """The base class a subclass-mode key expects, from the report."""
    match = re.search(r"Subtypes: \[<class '[\w.]*?(\w+)'>", text) or re.search(
        r"Not a valid subclass of (\w+)", text
    )
    return match.group(1) if match else None


def _classes(module: str) -> list[str]:
    try:
        namespace = importlib.import_module(module)
    except ImportError:
        return []
    return sorted(
        n
        for n in dir(namespace)
        if not n.startswith("_") and inspect.isclass(getattr(namespace, n))
    )


def _subclasses(module: str, base: str | None) -> list[str]:
    """The public classes of ``module`` deriving from a class named ``base`` (not ``base``)."""
    try:
        namespace = importlib.import_module(module)
    except ImportError:
        return []
    found = []
    for name in dir(namespace):
        value = getattr(namespace, name)
        if name.startswith("_") or not inspect.isclass(value) or name == base:
            continue
        if any(parent.__name__ == base for parent in value.__mro__[1:]):
            found.append(name)
    return sorted(found)
