"""The house drawn from the imports: each module of endpoint_agent imports its own part or a lower layer.

The layers are listed once, lowest first. Parts in one layer are independent of each other (a
sibling import is a sideways arrow). Every import counts, including those inside functions and
under `if TYPE_CHECKING:`. A new part of the package needs its place in LAYERS.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "endpoint_agent"
ROOT = Path(__file__).resolve().parents[2] / PACKAGE

LAYERS: tuple[tuple[str, ...], ...] = (
    # the version (and its --version line), exceptions, time, the core records, escaping, the lock file
    ("__init__", "cliversion", "errors", "clock", "types", "display", "lockfile"),
    ("logfmt", "endpoints"),  # log lines (escaped); host:port text as an Endpoint
    ("settings",),
    ("collect", "policy"),  # what runs on the machine; the policy language and its pure engine
    ("findings_memo",),  # findings of unchanged processes, remembered
    ("evaluate", "decide", "exec_triage"),  # engine + behaviour window; what to do; which execs to look at
    ("enforce",),  # the enforce stage and its safety rails
    ("report",),  # the local outbox, upload and heartbeat
    ("sync",),  # policy files and policy sync (beside the pipeline, on top of it)
    ("agent", "watch"),  # the tick; exec events
    ("gate", "dns"),  # the exec gate; the DNS filter and nftables table
    ("service", "oneshot"),  # the composition root; `scan --enforce`
    ("daemon", "scan", "status", "install"),  # the commands' implementations
    ("cli",),  # argument parsing
    ("__main__",),  # `python -m endpoint_agent`
)
FOREIGN = ("server_stub", "endpoint_admin", "tests", "bench", "demo")  # never imported by the agent

LAYER_OF = {part: i for i, layer in enumerate(LAYERS) for part in layer}


def module_name(path: Path, root: Path) -> str:
    return ".".join(path.relative_to(root.parent).with_suffix("").parts)


def part_of(module: str) -> str:
    """endpoint_agent.collect.snapshot -> collect; endpoint_agent (and its __init__) -> __init__."""
    names = module.split(".")
    return names[1] if len(names) > 1 else "__init__"


def imports_of(path: Path, root: Path) -> list[tuple[int, str]]:
    module = module_name(path, root)
    package = module.removesuffix(".__init__") if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            target = (f"{base}.{node.module}" if node.module else base) if node.level else (node.module or "")
            if target == PACKAGE:  # `from endpoint_agent import collect` imports the part `collect`
                out += [(node.lineno, f"{PACKAGE}.{alias.name}") for alias in node.names]
            else:
                out.append((node.lineno, target))
    return sorted(out)


def modules(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def layer_problems(root: Path) -> list[str]:
    problems = []
    for path in modules(root):
        here = part_of(module_name(path, root))
        for line, target in imports_of(path, root):
            where = f"{path.relative_to(root.parent)}:{line} imports {target}"
            top = target.split(".")[0]
            if top in FOREIGN:
                problems.append(f"{where}: the agent never imports {top}")
            if top != PACKAGE:
                continue
            there = part_of(target)
            if there == here or here not in LAYER_OF or there not in LAYER_OF:
                continue  # a part without a layer is reported by its own test
            if LAYER_OF[there] > LAYER_OF[here]:
                problems.append(f"{where}: upward ({here} is below {there})")
            elif LAYER_OF[there] == LAYER_OF[here] and there != "__init__":
                problems.append(f"{where}: sideways ({here} and {there} share a layer)")
    return problems


def test_every_part_of_the_package_has_a_layer() -> None:
    parts = {part_of(module_name(p, ROOT)) for p in modules(ROOT)}
    missing = sorted(parts - set(LAYER_OF))
    assert not missing, f"give these parts a place in LAYERS ({__file__}): {missing}"


def test_every_import_points_to_its_own_part_or_a_lower_layer() -> None:
    problems = layer_problems(ROOT)
    assert not problems, "\n".join(problems)


def test_the_check_sees_upward_sideways_and_foreign_imports(tmp_path: Path) -> None:
    root = tmp_path / PACKAGE
    (root / "collect").mkdir(parents=True)
    (root / "collect" / "probe.py").write_text(
        "from ..policy import evaluate\n"  # sideways, relative
        "from . import snapshot\n"  # its own part
        "def f():\n"
        "    from endpoint_agent.agent import Agent\n"  # upward, inside a function
        "    import server_stub.app\n"
        "from endpoint_agent import types, service\n"  # lower, then upward
    )
    problems = layer_problems(root)
    assert [p.split(": ", 1)[1] for p in problems] == [
        "sideways (collect and policy share a layer)",
        "upward (collect is below agent)",
        "the agent never imports server_stub",
        "upward (collect is below service)",
    ]
