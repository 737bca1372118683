"""CONFORMANCE.md agrees with the code: its generated tables are what ``scripts/conformance.py``
makes from the code's own lists, and every status, SOP class and rejection the code has is in it."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

from oxidicom_py.dicom import acse, contexts, dimse

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = ROOT / "CONFORMANCE.md"


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("conformance_generator", ROOT / "scripts" / "conformance.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


def _block(document: str, name: str) -> str:
    match = re.search(rf"<!-- generated: {name} -->\n(.*?)<!-- end generated -->", document, re.DOTALL)
    assert match is not None, f"CONFORMANCE.md has no generated block {name!r}"
    return match.group(1)


def test_conformance_md_matches_the_code() -> None:
    problems, diff = gen.check(DOCUMENT)
    assert not problems, "\n".join(problems)
    assert not diff, f"CONFORMANCE.md is stale; run .venv/bin/python scripts/conformance.py\n{diff}"


def test_every_status_constant_of_dimse_is_described_in_the_document() -> None:
    statuses = gen.status_constants()
    # the ones the brief names, so that a broken classifier cannot make this pass on an empty set
    for name in ("SUCCESS", "OUT_OF_RESOURCES", "CANNOT_UNDERSTAND", "UNRECOGNIZED_OPERATION", "PROCESSING_FAILURE"):
        assert statuses.get(name) == getattr(dimse, name)
    table = _block(DOCUMENT.read_text(), "dimse-status-codes")
    for name, value in statuses.items():
        assert name in gen.STATUS_MEANINGS, f"dimse.{name} is not described in scripts/conformance.py"
        row = next((line for line in table.splitlines() if f"`{name}`" in line), None)
        assert row is not None, f"dimse.{name} is missing from CONFORMANCE.md"
        assert f"`0x{value:04X}`" in row
        assert gen.STATUS_MEANINGS[name] in row
    unclassified = [n for n, (_v, kind) in gen.dimse_constants().items() if kind == "unclassified"]
    assert not unclassified, f"dimse.py constants neither status nor command element: {unclassified}"


def test_an_undescribed_status_constant_fails_the_check() -> None:
    source = (
        "# Command set element numbers (group 0000)\nSTATUS = 0x0900\n\n"
        "C_STORE_RQ = 0x0001\nNO_DATA_SET = 0x0101\n\n"
        "# Status codes (PS3.4 B.2.3, PS3.7 C)\nSUCCESS = 0x0000\nWARNING_COERCION = 0xB000\n\n"
        "DUPLICATE_SOP_INSTANCE = 0x0111\n"
    )
    kinds = {name: kind for name, (_value, kind) in gen.classify_constants(source, {}).items()}
    assert kinds == {
        "STATUS": "element",
        "C_STORE_RQ": "command field",
        "NO_DATA_SET": "other",
        "SUCCESS": "status",
        "WARNING_COERCION": "status",
        "DUPLICATE_SOP_INSTANCE": "unclassified",
    }
    table = gen.status_codes_block({"SUCCESS": 0, "WARNING_COERCION": 0xB000}, {})
    assert "`0xB000` | Warning | `WARNING_COERCION` | **not described in scripts/conformance.py**" in table


def test_problems_name_a_status_that_dimse_py_gains(monkeypatch: pytest.MonkeyPatch) -> None:
    source = gen.inspect.getsource(dimse) + "\n# Status codes added later\nWARNING_COERCION = 0xB000\n"
    monkeypatch.setattr(gen, "dimse_constants", lambda: gen.classify_constants(source, vars(dimse)))
    found = gen.problems()
    assert any("WARNING_COERCION" in p and "not described" in p for p in found), found


def test_every_accepted_sop_class_is_in_the_document() -> None:
    document = DOCUMENT.read_text()
    table = _block(document, "storage-sop-classes")
    classes = contexts.storage_sop_classes()
    assert len(classes) > 200
    for uid in classes:
        assert f"| `{uid}` | {contexts.sop_class_name(uid)} |" in table, uid
    assert table.count("\n| `") == len(classes)  # nothing listed that the acceptor does not accept
    for uid in contexts.SIEMENS_PRIVATE_NAMES:
        assert f"| `{uid}` |" in _block(document, "private-sop-classes")
    assert f"| `{contexts.VERIFICATION}` |" in _block(document, "verification-sop-class")


def test_a_sop_class_added_to_the_code_changes_the_document() -> None:
    document = DOCUMENT.read_text()
    new = "1.2.840.10008.5.1.4.1.1.999"
    wanted = gen.expected(document, storage_classes=contexts.storage_sop_classes() | {new})
    changes = gen.diff(document, wanted)
    assert f"+| `{new}` |" in changes
    assert "-| Storage | " in changes  # the overview's count moved too


def test_every_transfer_syntax_and_rejection_is_in_the_document() -> None:
    document = DOCUMENT.read_text()
    accepted = _block(document, "transfer-syntaxes")
    for uid in contexts.accepted_transfer_syntaxes(False):
        assert f"| `{uid}` |" in accepted, uid
    for uid in contexts.accepted_transfer_syntaxes(True):
        row = next(line for line in accepted.splitlines() if f"| `{uid}` |" in line)
        assert row.endswith("| yes | yes |"), row
    refused = _block(document, "refused-transfer-syntaxes")
    for uid in contexts.NOT_ACCEPTED_TRANSFER_SYNTAXES:
        assert f"| `{uid}` |" in refused and f"| `{uid}` |" not in accepted, uid
    rejections = _block(document, "association-rejections")
    for (source, reason), label in acse.REJECTION_LABELS.items():
        assert f"| {source} (" in rejections and f"| {reason} (" in rejections
        assert f"| `{label}` |" in rejections, label
    assert "| 2 (rejected-transient) | 3 (" in rejections  # the association limit: retry later


def test_a_hand_edited_table_fails_the_check_and_prose_is_kept(tmp_path: Path) -> None:
    document = DOCUMENT.read_text()
    edited = document.replace("| `1.2.840.10008.5.1.4.1.1.2` | CT Image Storage |", "| `1.2.3` | CT Image Storage |")
    edited = edited.replace("## 5 Media Interchange\n", "## 5 Media Interchange\n\nA hand-written remark.\n")
    assert edited != document
    copy = tmp_path / "CONFORMANCE.md"
    copy.write_text(edited)
    problems, changes = gen.check(copy)
    assert not problems
    assert "-| `1.2.3` | CT Image Storage |" in changes
    assert "+| `1.2.840.10008.5.1.4.1.1.2` | CT Image Storage |" in changes
    assert "A hand-written remark." in gen.expected(edited)  # regenerating keeps the prose

    assert gen.main(["--check", "--file", str(copy)]) == 1
    assert gen.main(["--file", str(copy)]) == 0  # regenerates in place
    assert gen.main(["--check", "--file", str(copy)]) == 0
    assert "A hand-written remark." in copy.read_text()


def test_unknown_or_missing_markers_are_refused() -> None:
    document = DOCUMENT.read_text()
    blocks = gen.generate_blocks(document)
    with pytest.raises(gen.ConformanceError, match="missing"):
        gen.render(document.replace("<!-- generated: file-meta -->", "<!-- generated: nonsense -->"), blocks)
    with pytest.raises(gen.ConformanceError, match="end generated"):
        gen.render(document + "\n<!-- generated: product -->\n", blocks)


def test_the_flow_diagram_is_what_its_script_draws() -> None:
    """docs/flow.svg (shown in the README) is drawn by scripts/flow_diagram.py, never by hand."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    check = subprocess.run(
        [sys.executable, str(root / "scripts" / "flow_diagram.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr
