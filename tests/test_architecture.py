"""The shape of the house (docs/architecture.md), checked on the source: no module reads another's underscore
members, only the modules over the C surface import the cffi layer, and the token loop holds no text."""

from __future__ import annotations

import ast
from pathlib import Path

import led_local

PACKAGE = Path(led_local.__file__).parent  # the package as imported: the installed one (or a mutant's copy)

# the modules that call the C surface themselves (engine.py owns the handles; the others make samplers,
# grammars and RPC/device queries over them)
NATIVE_USERS = {"_native.py", "engine.py", "sampling.py", "grammar.py", "led.py", "devices.py", "rpc.py"}


def sources() -> dict[str, ast.Module]:
    return {str(p.relative_to(PACKAGE)): ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def foreign_underscore_reads(tree: ast.Module) -> list[tuple[int, str]]:
    """`x._name` where x is not the object's own `self`/`cls`: a reach into another object's insides."""
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and private(node.attr):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                hits.append((node.lineno, ast.unparse(node)))
    return hits


def test_no_module_reads_another_s_underscore_members():
    found = {name: hits for name, tree in sources().items() if (hits := foreign_underscore_reads(tree))}
    assert not found, f"cross-module reads of private members (give them a public name on their owner): {found}"


def test_the_scan_sees_a_reach_into_another_object():
    # the premise of the test above: these are the shapes the scan must catch, and what it must leave alone
    tree = ast.parse("def f(llama):\n    llama._ctx\n    self._own\n    x.__class__\n    a.b._c()\n")
    assert [text for _, text in foreign_underscore_reads(tree)] == ["llama._ctx", "a.b._c"]


def test_only_the_modules_over_the_c_surface_import_the_cffi_layer():
    importers = set()
    for name, tree in sources().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level >= 1:
                names = [a.name for a in node.names]
                if node.module == "_native" or (node.module is None and "_native" in names):
                    importers.add(name)
    assert importers <= NATIVE_USERS, f"import the cffi layer only below the engine: {importers - NATIVE_USERS}"
    assert "engine.py" in importers


def test_the_token_loop_holds_no_text():
    # UTF-8 assembly, stop strings and hold-back are the text stream's (textstream.py), fed by the scheduler
    tree = sources()["scheduler.py"]
    imported = {a.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom)) for a in node.names}
    called = {ast.unparse(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    assert "codecs" not in imported
    text_calls = {c for c in called if c.endswith((".find", ".endswith", "token_to_bytes", "detokenize", "decoder"))
                  or (c.endswith(".decode") and c != "self.engine.decode")}  # (llama_decode is the engine's)
    assert not text_calls
