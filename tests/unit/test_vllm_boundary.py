"""vLLM's submodules are imported by a few files of server/ only (server/vllm_compat.py and
the modules that start vLLM's processes), so that an upgrade has one place to look."""

import ast
from pathlib import Path

SERVER = Path(__file__).parents[2] / "server"
ALLOWED = {"vllm_compat.py", "engine.py", "constraints.py"}


def vllm_submodule_imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vllm."):
            names.append(node.module)
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names if a.name.startswith("vllm.")]
    return names


def test_at_most_four_files_of_server_import_vllms_submodules():
    importers = {
        str(p.relative_to(SERVER)): vllm_submodule_imports(p)
        for p in SERVER.rglob("*.py")
        if vllm_submodule_imports(p)
    }
    assert set(importers) <= ALLOWED, importers
    assert len(importers) <= 4


def test_the_boundary_sees_an_import_it_must_refuse(tmp_path):
    sample = tmp_path / "route.py"
    sample.write_text("import vllm\nfrom vllm import SamplingParams\nfrom vllm.outputs import X\n")
    assert vllm_submodule_imports(sample) == ["vllm.outputs"]
