"""led_local._native.CDEF, which restates the C headers for cffi by hand, checked against the headers
themselves: a C file that includes the real headers assigns every function CDEF declares to a pointer of
the type CDEF gives it, compares every struct CDEF spells out field by field (offset, type, size) and every
enum value by value, all
compiled with -Werror. A signature or a struct that drifted from its header fails to compile here instead of
corrupting memory at run time (cffi in ABI mode trusts CDEF blindly)."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess

import pytest
from pycparser import c_ast, c_generator, c_parser

from led_local import _native
from mutants import REPO, llama_headers

# what CDEF takes from <stdint.h> and friends; only parsed here, never compiled
STUBS = ("typedef int int32_t; typedef int uint32_t; typedef int int64_t; typedef int uint64_t; "
         "typedef int uint8_t; typedef int size_t; typedef int bool;\n")
HEADERS = ("stddef.h", "stdbool.h", "led_engine.h", "led_sampler.h", "dola_sampler.h", "chain_sampler.h", "led_core.h",
           "llama.h", "ggml-backend.h")


def _innermost(node: c_ast.Node) -> c_ast.TypeDecl:
    while not isinstance(node, c_ast.TypeDecl):
        node = node.type
    return node


def checks(cdef: str) -> tuple[str, int, int]:
    """C text checking CDEF's functions and structs, and how many of each it checks."""
    ast = c_parser.CParser().parse(STUBS + re.sub(r"/\*.*?\*/", "", cdef, flags=re.S))
    gen, out, n_functions, n_structs = c_generator.CGenerator(), [], 0, 0
    for decl in ast.ext[STUBS.count(";"):]:
        if isinstance(decl, c_ast.Decl) and isinstance(decl.type, c_ast.FuncDecl):
            func = copy.deepcopy(decl.type)
            _innermost(func).declname = f"check_{decl.name}"
            pointer = c_ast.Decl(f"check_{decl.name}", [], [], [], [], c_ast.PtrDecl([], func), c_ast.ID(decl.name),
                                 None)
            out.append(gen.visit(pointer) + ";")
            n_functions += 1
        elif (isinstance(decl, c_ast.Typedef) and isinstance(decl.type.type, c_ast.Struct)
              and decl.type.type.decls is not None):
            struct = copy.deepcopy(decl.type.type)
            real, mine = decl.name, f"struct cdef_{decl.name}"
            struct.name = f"cdef_{decl.name}"
            out.append(gen.visit(struct) + ";")
            out.append(f'_Static_assert(sizeof({real}) == sizeof({mine}), "{real}: size");')
            for field in struct.decls:
                f = field.name
                out.append(f'_Static_assert(offsetof({real}, {f}) == offsetof({mine}, {f}), "{real}.{f}: offset");')
                out.append(f"_Static_assert(__builtin_types_compatible_p(__typeof__((({real} *) 0)->{f}), "
                           f'__typeof__((({mine} *) 0)->{f})), "{real}.{f}: type");')
            n_structs += 1
        elif isinstance(decl, c_ast.Decl) and isinstance(decl.type, c_ast.Enum) and decl.type.values is not None:
            value = -1
            for item in decl.type.values.enumerators:
                value = int(item.value.value) if item.value is not None else value + 1
                out.append(f'_Static_assert({item.name} == {value}, "{item.name}: value");')
            n_structs += 1
    return "\n".join(out) + "\n", n_functions, n_structs


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_cdef_matches_the_c_headers(tmp_path):
    text, n_functions, n_structs = checks(_native.CDEF)
    assert n_functions >= 70 and n_structs >= 5  # the whole CDEF was read, not a prefix of it
    source = tmp_path / "cdef_check.c"
    source.write_text("".join(f"#include <{h}>\n" for h in HEADERS) + text)
    includes = [f"-I{p}" for p in [REPO / "csrc", *llama_headers()]]
    run = subprocess.run(["cc", "-std=gnu11", "-fsyntax-only", "-Wall", "-Werror", "-Wno-unused-variable",
                          *includes, str(source)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-4000:]


def test_the_check_sees_a_drifted_signature(tmp_path):
    """The premise: a CDEF whose signature differs from its header does not compile."""
    drifted = _native.CDEF.replace("void led_init(bool verbose);", "void led_init(bool verbose, int32_t extra);")
    assert drifted != _native.CDEF
    text, _, _ = checks(drifted)
    source = tmp_path / "cdef_check.c"
    source.write_text("".join(f"#include <{h}>\n" for h in HEADERS) + text)
    includes = [f"-I{p}" for p in [REPO / "csrc", *llama_headers()]]
    run = subprocess.run(["cc", "-std=gnu11", "-fsyntax-only", "-Wall", "-Werror", "-Wno-unused-variable",
                          *includes, str(source)], capture_output=True, text=True)
    assert run.returncode != 0 and "check_led_init" in run.stderr


def test_cdef_declares_nothing_unused():
    """Every function CDEF declares is called from led_local, its tests or bench/ (a declaration nothing
    calls is a claim about a header that nothing tests)."""
    ast = c_parser.CParser().parse(STUBS + re.sub(r"/\*.*?\*/", "", _native.CDEF, flags=re.S))
    names = [d.name for d in ast.ext if isinstance(d, c_ast.Decl) and isinstance(d.type, c_ast.FuncDecl)]
    code = "".join(p.read_text() for folder in ("led_local", "tests", "bench") for p in (REPO / folder).rglob("*.py")
                   if p.name != "mutants.py").replace(_native.CDEF, "")
    unused = [n for n in names if not re.search(rf"\b{n}\b", code)]
    assert not unused, f"declared in _native.CDEF but never called: {unused}"
