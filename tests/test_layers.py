"""The house's rule of direction, checked on the source: lower layers never import higher ones."""
import ast
from pathlib import Path

import bodyfit

ROOT = Path(bodyfit.__file__).resolve().parent
# layer -> the bodyfit layers it must never import (at module level or inside functions)
FORBIDDEN = {
    "body_models": {"fitting", "regressors", "data", "pipeline", "cli", "api", "renderers", "densepose",
                    "detectors", "observations"},
    "cameras": {"fitting", "regressors", "data", "pipeline", "cli", "api", "body_models"},
    "boxes": {"fitting", "regressors", "data", "pipeline", "cli", "api"},
    "observations": {"fitting", "regressors", "data", "pipeline", "cli", "api", "renderers"},
    "config": {"fitting", "regressors", "data", "pipeline", "cli", "api"},
    "priors": {"fitting", "regressors", "data", "pipeline", "cli", "api"},
    "renderers": {"fitting", "regressors", "data", "pipeline", "cli", "api", "body_models"},
    "densepose": {"fitting", "regressors", "data", "pipeline", "cli", "api"},
    "fitting": {"regressors", "data", "pipeline", "cli", "api", "detectors"},
    "data": {"fitting", "regressors", "pipeline", "cli", "api"},
    "detectors": {"fitting", "regressors", "pipeline", "cli", "api"},
    "regressors": {"pipeline", "cli", "pseudo_gt"},
    "files": {"fitting", "regressors", "data", "pipeline", "cli", "api", "distributed", "pseudo_gt"},
    "distributed": {"fitting", "regressors", "data", "pipeline", "cli", "api", "pseudo_gt"},
    "pipeline": {"cli", "pseudo_gt"},
    "pseudo_gt": {"cli"},
}


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bodyfit."):
            out.add(node.module.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            out.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("bodyfit.")}
    return out


def test_no_module_imports_a_layer_above_it():
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        layer = rel.parts[0].removesuffix(".py")
        for target in _imports(path) & FORBIDDEN.get(layer, set()):
            bad.append(f"{rel} imports bodyfit.{target}")
    assert not bad, "\n".join(bad)
