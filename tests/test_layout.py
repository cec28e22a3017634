"""The package's shape: four folders and a shared top level, imports only pointing down, Hydra kept at the edge, a
map that lists every module (docs/architecture.md), so the layout cannot drift from its description unseen, and one
owner each for a run folder's file names and for the MLflow client."""

import ast
import re
from pathlib import Path

from helpers import REPO

PACKAGE = REPO / "afqmc_exp"
LAYERS = ["commands", "training", "tracking", "data", ""]  # top to bottom; "": the shared top-level modules


def layer(module: str) -> int:
    parts = module.split(".")
    inner = parts[1] if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()) else ""
    return LAYERS.index(inner if inner in LAYERS else "")


def imports_of(path: Path) -> set[str]:
    """The afqmc_exp modules ``path`` imports (relative imports resolved), at any depth of its code."""
    here = ".".join(path.relative_to(REPO).with_suffix("").parts)
    package = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.update(f"{module}.{a.name}" if not node.module else module for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m.removesuffix(".__init__") for m in found if m.startswith("afqmc_exp.")}


def modules() -> dict[str, Path]:
    return {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
            for p in PACKAGE.rglob("*.py") if "conf" not in p.relative_to(PACKAGE).parts}  # fmt: skip


def test_imports_point_down_between_the_folders():
    upward = []
    for name, path in modules().items():
        if name.count(".") < 1 or name.split(".")[1] in ("__main__", "resolvers"):  # the entry and config glue
            continue
        for imported in imports_of(path):
            if layer(imported) < layer(name):
                upward.append(f"{name} -> {imported}")
    assert not upward, "imports that point up a layer (commands > training > tracking > data > shared):\n" + \
        "\n".join(sorted(upward))  # fmt: skip


def test_the_top_level_holds_only_what_several_folders_share():
    """A top-level module is imported by at least two folders (the top level itself and the Optuna sweeper's
    included); one that only one folder uses belongs in it. The entry point and the config glue are the exceptions."""
    folders: dict[str, set[str]] = {}
    for path in [*PACKAGE.rglob("*.py"), *(REPO / "hydra_plugins").rglob("*.py")]:
        folder = path.parent.relative_to(REPO).as_posix()
        for imported in imports_of(path):
            folders.setdefault(imported, set()).add(folder)
    top = [f"afqmc_exp.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__", "resolvers")]
    lonely = {m: sorted(folders.get(m, set())) for m in top if len(folders.get(m, set())) < 2}
    assert not lonely, lonely
    assert sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()) == [
        "commands", "data", "tracking", "training"]  # fmt: skip


def test_hydra_stays_at_the_edge():
    """Hydra and OmegaConf are imported by the commands, the config glue (``resolvers``) and tracking's two readers of
    a job's whole config (``run_tracking``: a run's params, tags and name; ``sweep``: a Hydra callback) alone. Training,
    data and the shared modules take typed objects: a notebook or a test calls them with no config at all."""

    def libraries_of(path: Path) -> set[str]:
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                found.add(node.module.split(".")[0])
        return found

    readers = {name for name, path in modules().items() if libraries_of(path) & {"hydra", "omegaconf"}}
    beyond_the_commands = {name for name in readers if not name.startswith("afqmc_exp.commands")}
    assert beyond_the_commands == {"afqmc_exp.resolvers", "afqmc_exp.tracking.run_tracking",
                                   "afqmc_exp.tracking.sweep"}, beyond_the_commands  # fmt: skip


def test_no_module_imports_itself_round_a_cycle():
    graph = {name: {i for i in imports_of(path) if i != name} for name, path in modules().items()}
    state, cycles = {}, []

    def visit(name, path):
        state[name] = "open"
        for other in graph[name] & graph.keys():
            if state.get(other) == "open":
                cycles.append(" -> ".join([*path[path.index(other) :], other]))
            elif other not in state:
                visit(other, [*path, other])
        state[name] = "done"

    for name in graph:
        if name not in state:
            visit(name, [name])
    assert not cycles, cycles


def test_the_architecture_page_names_every_module():
    """docs/architecture.md names every .py file of the package (by its path inside afqmc_exp/, in backticks:
    `training/run.py`, `model.py`) and of hydra_plugins/ (by its path in the repository)."""
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    files = [p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
             if "conf" not in p.relative_to(PACKAGE).parts]  # fmt: skip
    files += [p.relative_to(REPO).as_posix() for p in (REPO / "hydra_plugins").rglob("*.py")]
    missing = sorted(f for f in files if f"`{f}`" not in text)
    assert not missing, f"docs/architecture.md does not name: {missing}"


def test_the_readme_starts_short_with_a_small_map():
    """The README is short enough to read (the details live in docs/), and its map of the folders, its one
    ```text block, is at most 10 lines."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 260, len(text.splitlines())
    maps = re.findall(r"```text\n(.*?)```", text, re.S)
    assert len(maps) == 1, len(maps)
    assert len(maps[0].splitlines()) <= 10, maps[0]
    assert "docs/architecture.md" in text


def code_of_the_package() -> list[Path]:
    return [*modules().values(), *(REPO / "hydra_plugins").rglob("*.py")]


def test_a_run_folders_file_names_are_spelt_only_in_run_folder():
    """Every other module asks a RunFolder for a path, so a file of a run folder is renamed in one line."""
    names = {"best_model", "last_checkpoint", "result.json", ".run.lock", ".tracking", ".hydra", "train.log"}
    spelt = [f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}"
             for path in code_of_the_package() if path.name != "run_folder.py"
             for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
             if isinstance(node, ast.Constant) and node.value in names]  # fmt: skip
    assert not spelt, spelt


def test_a_sweep_folders_file_names_are_spelt_only_in_sweep_folder():
    """Every other module asks a SweepFolder for a sweep's own file (the sweepers, the parent run, the jobs)."""
    names = {"multirun.yaml", "mlflow_parent_run_id", "mlflow_experiment", "swept_keys.json", "optuna_study.json",
             "oof_predictions.jsonl"}  # fmt: skip
    spelt = [f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}"
             for path in code_of_the_package() if path.name != "sweep_folder.py"
             for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
             if isinstance(node, ast.Constant) and node.value in names]  # fmt: skip
    assert not spelt, spelt


def test_one_place_builds_an_mlflow_client():
    """``tracking/store.py``'s ``client``: the registry at the same store, the store's lock, MLflow's noise filtered."""

    def named(call: ast.Call) -> str:
        return getattr(call.func, "id", None) or getattr(call.func, "attr", "")

    built = [path.relative_to(REPO).as_posix() for path in code_of_the_package()
             for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
             if isinstance(node, ast.Call) and named(node) == "MlflowClient"]  # fmt: skip
    assert built == ["afqmc_exp/tracking/store.py"], built


def test_every_module_path_the_configs_and_docs_name_exists():
    """A config comment or a page that says "see afqmc_exp/X.py" points at a file that is there."""
    texts = [*(REPO / "conf").rglob("*.yaml"), *(REPO / "docs").glob("*.md"), REPO / "README.md",
             *PACKAGE.rglob("*.py"), *(REPO / "benchmarks").glob("*.py")]  # fmt: skip
    named = {m for path in texts for m in re.findall(r"afqmc_exp/[\w/]+\.py", path.read_text(encoding="utf-8"))}
    missing = sorted(m for m in named if not (REPO / m).exists())
    assert named and not missing, f"named but not there: {missing}"
