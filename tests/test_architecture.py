"""The package's architecture, read from its source: subpackages in layers, imports running one way, no cycle,
small modules, and parts that own what they read."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "trl_replay_ppo"
# Lowest first: a module may import its own subpackage and the ones before it, never one after it.
LAYERS = ("integrations", "core", "data", "models", "rewards", "replay", "checkpointing", "trainer", "tasks", "cli")
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every ``trl_replay_ppo`` module ``path`` imports, anywhere in it (``TYPE_CHECKING`` and function bodies too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import; write `from trl_replay_ppo... import`")
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "trl_replay_ppo":
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "trl_replay_ppo")
    return found


def layer(module: str) -> int:
    """The layer of a module: its subpackage's index, or one above every layer for the package root."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else len(LAYERS)


def import_graph() -> dict[str, set[str]]:
    return {module_name(path): imported_modules(path) for path in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_sits_in_a_layer():
    loose = [
        m for m in import_graph() if layer(m) == len(LAYERS) and m not in ("trl_replay_ppo", "trl_replay_ppo.__main__")
    ]
    assert loose == [], f"modules outside the layered subpackages {LAYERS}: {loose}"


def test_imports_never_run_up_a_layer():
    upward = [
        f"{module} ({LAYERS[layer(module)] if layer(module) < len(LAYERS) else 'root'}) imports {target}"
        for module, targets in import_graph().items()
        for target in targets
        if layer(target) > layer(module)
    ]
    assert upward == []


def test_the_layer_check_catches_an_upward_import():
    assert layer("trl_replay_ppo.core.masking") < layer("trl_replay_ppo.trainer.driver")
    assert layer("trl_replay_ppo.replay.buffer") > layer("trl_replay_ppo.core.episodes")
    assert layer("trl_replay_ppo") == len(LAYERS)


def test_no_import_cycle():
    graph = {module: {t for t in targets if t in import_graph_modules()} for module, targets in import_graph().items()}
    state: dict[str, str] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                raise AssertionError("import cycle: " + " -> ".join([*trail, module, target]))
            if target not in state:
                visit(target, [*trail, module])
        state[module] = "done"

    for module in graph:
        if module not in state:
            visit(module, [])


def import_graph_modules() -> set[str]:
    return {module_name(path) for path in PACKAGE.rglob("*.py")}


def test_modules_stay_small():
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}, f"modules over {MAX_LINES} lines: {long}"


# ---------------------------------------------------------------- parts: what each class reads is its own

DRIVER = "ReplayPPOTrainer"  # the one subclass of the PPO base: it uses the base's attributes by design


def package_classes() -> dict[str, tuple[ast.ClassDef, str]]:
    classes = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                classes[node.name] = (node, str(path.relative_to(PACKAGE)))
    return classes


def defined_attributes(node: ast.ClassDef, classes: dict) -> set[str] | None:
    """Names a class defines (methods, class-level names, ``self.x = ...``) and inherits from package classes;
    None when it has a base from outside the package (whose attributes this test cannot see)."""
    names: set[str] = set()
    for base in node.bases:
        base_name = ast.unparse(base)
        if base_name not in classes:
            return None
        inherited = defined_attributes(classes[base_name][0], classes)
        if inherited is None:
            return None
        names |= inherited
    for item in node.body:
        if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(item.name)
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            names.add(item.target.id)
        elif isinstance(item, ast.Assign):
            names.update(t.id for t in item.targets if isinstance(t, ast.Name))
    for sub in ast.walk(node):
        targets = (
            sub.targets if isinstance(sub, ast.Assign) else [sub.target] if isinstance(sub, ast.AnnAssign) else []
        )
        for target in targets:
            for element in target.elts if isinstance(target, ast.Tuple) else [target]:
                if isinstance(element, ast.Attribute) and ast.unparse(element.value) == "self":
                    names.add(element.attr)
    return names


def foreign_attributes(node: ast.ClassDef, classes: dict) -> set[str] | None:
    """The ``self.x`` a class reads that neither it nor its package bases define (the mixin count)."""
    defined = defined_attributes(node, classes)
    if defined is None:
        return None
    read = {
        sub.attr
        for sub in ast.walk(node)
        if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) and sub.value.id == "self"
    }
    return read - defined


def test_every_part_reads_only_its_own_attributes():
    classes = package_classes()
    checked, foreign = [], {}
    for name, (node, path) in classes.items():
        if name == DRIVER:
            continue
        missing = foreign_attributes(node, classes)
        if missing is None:
            continue
        checked.append(name)
        if missing:
            foreign[f"{path}:{name}"] = sorted(missing)
    assert foreign == {}, f"attributes read through self but defined by another class: {foreign}"
    parts = {"ModelRunner", "RolloutCollector", "AdvantageEstimator", "PPOLoss", "OptimizerStep", "UpdateMetrics"}
    assert parts | {"Evaluator", "StateRegistry", "ExperienceReplay", "Scorer", "PromptStream"} <= set(checked)


def test_the_attribute_count_sees_a_mixin():
    mixin = ast.parse("class Step:\n    def step(self):\n        self.optimizer.step()\n        self.norms = []\n")
    (node,) = mixin.body
    assert foreign_attributes(node, {"Step": (node, "x.py")}) == {"optimizer"}


def test_no_part_is_built_from_the_trainer():
    offenders = []
    for name, (node, path) in package_classes().items():
        for item in node.body:
            if not isinstance(item, ast.FunctionDef) or item.name not in ("__init__", "__post_init__"):
                continue
            params = [a.arg for a in item.args.args + item.args.kwonlyargs]
            if "trainer" in params:
                offenders.append(f"{path}:{name}.{item.name}")
        for item in node.body:
            is_factory = isinstance(item, ast.FunctionDef) and any(
                ast.unparse(d) == "classmethod" for d in item.decorator_list
            )
            if is_factory and "trainer" in [a.arg for a in item.args.args]:
                offenders.append(f"{path}:{name}.{item.name}")
    assert offenders == []


def test_no_module_reads_another_objects_private_names():
    private_reads = []
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE) == Path("integrations/compat.py"):  # the inventory of other libraries' privates
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            private = isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
            if private and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                private_reads.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {ast.unparse(node)}")
    assert private_reads == []
