"""Docs checked by tests (Datasette-style): the hook reference, the plugin guide, plugin READMEs."""

from __future__ import annotations

import importlib.util
import inspect
import re
from pathlib import Path

import pytest
import yaml

from knotwork import hookspecs, testing
from knotwork.config import MeshError, load_mesh
from knotwork.kernel import Hooks, make_plugin_manager

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def _gen_hooks():
    spec = importlib.util.spec_from_file_location("gen_hooks", DOCS / "gen_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen_hooks = _gen_hooks()
HOOKS = gen_hooks.hooks()
HOOK_NAMES = [fn.__name__ for fn in HOOKS]


@pytest.fixture(scope="module")
def hooks_md() -> str:
    return (DOCS / "hooks.md").read_text()


def documented(text: str) -> dict[str, str]:
    """hook name -> the signature in the code block under its heading."""
    found = re.findall(r"^### (knotwork_\w+)\n+```python\n(.+?)\n```", text, flags=re.M)
    return dict(found)


# ── the hook reference ───────────────────────────────────────────────────────


def test_every_spec_is_found():
    specs = {n for n, fn in vars(hookspecs).items() if callable(fn) and hasattr(fn, "knotwork_spec")}
    assert set(HOOK_NAMES) == specs
    assert len(specs) >= 13


@pytest.mark.parametrize("name", HOOK_NAMES)
def test_hook_is_documented_with_its_exact_signature(name, hooks_md):
    docs = documented(hooks_md)
    assert name in docs, f"{name} is not documented in docs/hooks.md: run .venv/bin/python docs/gen_hooks.py"
    # inspect.signature renders the string annotations of hookspecs.py quoted; the docs show them bare
    expected = name + str(inspect.signature(getattr(hookspecs, name))).replace("'", "")
    assert docs[name] == expected, f"docs/hooks.md documents {docs[name]!r}, the code says {expected!r}"


def test_no_documented_hook_is_missing_from_the_code(hooks_md):
    assert sorted(set(documented(hooks_md)) - set(HOOK_NAMES)) == []


def test_hooks_md_is_generated_from_the_current_docstrings(hooks_md):
    assert hooks_md == gen_hooks.render(), "docs/hooks.md is stale: run .venv/bin/python docs/gen_hooks.py"


@pytest.mark.parametrize("fn", HOOKS, ids=HOOK_NAMES)
def test_hook_docstring_follows_the_template(fn):
    """Summary; when called; every parameter; returns; semantics; an example (STYLE.md)."""
    doc = gen_hooks.parse(fn.__doc__ or "")
    assert doc["summary"] and doc["summary"].endswith(".")
    assert doc["when"].startswith("Called"), "say when and by whom it is called"
    assert set(doc["params"]) == set(inspect.signature(fn).parameters), "document every parameter"
    assert doc["returns"] and doc["semantics"]
    assert f"def {fn.__name__}(" in doc["example"]
    compile(doc["example"], f"{fn.__name__} example", "exec")


# ── the plugin guide ─────────────────────────────────────────────────────────


def test_plugin_guide_covers_every_testing_helper():
    guide = (DOCS / "plugin-guide.md").read_text()
    fixtures = ["plugin_manager", "hooks", "register_plugin", "hook_recorder", "capture_logs"]
    missing = [n for n in [*fixtures, *testing.__all__] if f"`{n}" not in guide]
    assert missing == [], f"docs/plugin-guide.md does not mention {missing}"


def test_plugin_guide_links_resolve():
    for page in ("plugin-guide.md", "architecture.md", "hooks.md"):
        text = (DOCS / page).read_text()
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
            assert (DOCS / target).resolve().exists(), f"{page}: broken link {target}"


def test_architecture_has_the_xds_mapping():
    text = (DOCS / "architecture.md").read_text()
    for knotwork, xds in [("Listener", "LDS"), ("RouteTable", "RDS"), ("Cluster", "CDS"), ("EndpointSet", "EDS"),
                          ("Secret", "SDS")]:
        assert re.search(rf"^\|[^\n]*`{knotwork}`[^\n]*\b{xds}\b", text, flags=re.M), f"{knotwork} ↔ {xds}"


# ── plugin READMEs ───────────────────────────────────────────────────────────

READMES = [p / "README.md" for p in sorted((ROOT / "plugins").iterdir()) if (p / "pyproject.toml").exists()]
READMES.append(ROOT / "examples" / "inhouse-plugin" / "README.md")
SECTIONS = ("name", "description", "settings", "hooks", "metrics", "example")


def readme_sections(text: str) -> dict[str, str]:
    """First word of each Markdown heading (lower-case) -> the text under it (code blocks skipped)."""
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    fenced = False
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            fenced = not fenced
        heading = None if fenced else re.match(r"^#{1,6}[ \t]+(\S+)", line)
        if heading:
            current = sections.setdefault(heading.group(1).lower(), [])
        else:
            current.append(line)
    return {h: "".join(body) for h, body in sections.items()}


def plugin_id(path: Path) -> str:
    return path.parent.name


@pytest.mark.parametrize("readme", READMES, ids=plugin_id)
def test_readme_has_the_sections(readme):
    assert readme.exists(), f"{readme.relative_to(ROOT)} is missing"
    headings = readme_sections(readme.read_text())
    missing = [s for s in SECTIONS if not any(h.startswith(s) for h in headings)]
    assert missing == [], f"{readme.relative_to(ROOT)} lacks the sections {missing}"


@pytest.fixture(scope="module")
def installed_hooks(inhouse_plugin) -> Hooks:
    return Hooks(make_plugin_manager())


def mesh_blocks(text: str) -> list[str]:
    """YAML blocks of the Example section that are mesh files (not Istio resources)."""
    body = next((b for h, b in readme_sections(text).items() if h.startswith("example")), "")
    blocks = re.findall(r"^```ya?ml\n(.*?)^```", body, flags=re.M | re.S)
    def is_mesh(block: str) -> bool:
        docs = list(yaml.safe_load_all(block))
        return len(docs) == 1 and isinstance(docs[0], dict) and "apiVersion" not in docs[0]

    return [b for b in blocks if is_mesh(b)]


@pytest.mark.parametrize("readme", READMES, ids=plugin_id)
def test_readme_example_mesh_file_validates(readme, installed_hooks, tmp_path):
    assert readme.exists(), f"{readme.relative_to(ROOT)} is missing"
    blocks = mesh_blocks(readme.read_text())
    assert blocks, f"{readme.relative_to(ROOT)}: its Example section has no ```yaml mesh file"
    for i, block in enumerate(blocks):
        path = tmp_path / f"example-{i}.yaml"
        path.write_text(block)
        try:
            load_mesh(path, installed_hooks)
        except MeshError as exc:
            pytest.fail(f"{readme.relative_to(ROOT)}: example {i + 1} does not validate:\n{exc}")
