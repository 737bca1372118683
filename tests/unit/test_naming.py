"""Storage path naming (spec section 2), including the 576 reference paths."""

import os
import posixpath
import tarfile
from collections.abc import Mapping
from pathlib import Path

import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.charset import convert_encodings, decode_bytes

from oxidicom_py.storage.naming import (
    MAX_COMPONENT_BYTES,
    MAX_CONFORMING_FILE_NAME,
    RUST_WHITESPACE,
    assert_safe_relative,
    first_value,
    fitted_instance_path,
    instance_path,
    pad_number,
    sanitize,
    series_dir,
    series_hash,
    tts,
)

SAG_SERIES_UID = "1.3.12.2.1107.5.2.19.45152.2013030808061520200285270.0.0.0"
STRUCTURAL_SERIES_UID = "1.2.826.0.1.3680043.2.1143.515404396022363061013111326823367652"
AET = "OXITESTORTHANC"
FNAME = 512  # CUBE's pacsfiles_pacsfile.fname

KEYWORDS = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "StudyDescription",
    "AccessionNumber",
    "StudyDate",
    "SeriesNumber",
    "SeriesDescription",
    "SeriesInstanceUID",
    "InstanceNumber",
    "SOPInstanceUID",
)
REQUIRED = ("PatientID", "StudyDate", "SeriesInstanceUID", "SOPInstanceUID")

SAG_TAGS: Mapping[str, str | None] = {
    "PatientID": "1449c1d",
    "PatientName": "anonymized",
    "PatientBirthDate": "20090701",
    "StudyDescription": "MR-Brain w/o Contrast",
    "AccessionNumber": "98edede8b2",
    "StudyDate": "20130308",
    "SeriesNumber": "5",
    "SeriesDescription": "SAG MPRAGE 220 FOV",
    "SeriesInstanceUID": SAG_SERIES_UID,
    "InstanceNumber": "1",
    "SOPInstanceUID": "1.3.12.2.1107.5.2.19.45152.2013030808110258929186035",
}
SAG_SERIES_DIR = (
    "SERVICES/PACS/OXITESTORTHANC/1449c1d-anonymized-20090701/"
    "MR-Brain_w_o_Contrast-98edede8b2-20130308/00005-SAG_MPRAGE_220_FOV-a27cf06"
)


def sag(**changes: str | None) -> dict[str, str | None]:
    return {**SAG_TAGS, **changes}


def components(path: str) -> list[str]:
    return path.split("/")


# --- first_value / tts ------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, None),
        ("", None),
        ("   ", ""),
        ("abc", "abc"),
        ("  abc  ", "abc"),
        ("a\\b\\c", "a"),
        (" a \\ b", "a"),
        ("\\b", ""),
        ("ABC \0", "ABC \0"),
        ("\0 ABC", "\0 ABC"),
        ("\x1cA\x1f", "\x1cA\x1f"),
        ("\u3000A\u00a0", "A"),
        ("\x85\u2028A\u205f\t\r\n", "A"),
        ("\u200bA", "\u200bA"),  # zero-width space is not White_Space
    ],
)
def test_first_value(raw: str | None, expected: str | None) -> None:
    assert first_value(raw) == expected


def test_rust_whitespace_is_python_whitespace_minus_information_separators() -> None:
    python_ws = {chr(c) for c in range(0x110000) if chr(c).isspace()}
    assert set(RUST_WHITESPACE) == python_ws - set("\x1c\x1d\x1e\x1f")
    assert len(RUST_WHITESPACE) == 25
    assert "\0" not in RUST_WHITESPACE


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("", ""), ("1.2.3\0", "1.2.3"), ("A\0B \0", "AB "), ("abc", "abc")],
)
def test_tts(value: str | None, expected: str | None) -> None:
    assert tts(value) == expected


# --- sanitize / series_hash ---------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", ""),
        ("anat-T1w", "anat-T1w"),
        ("5.0", "5.0"),
        ("MR-Brain w/o Contrast", "MR-Brain_w_o_Contrast"),
        ("SAG MPRAGE 220 FOV", "SAG_MPRAGE_220_FOV"),
        ("Hanke_Stadler^0024_transrep", "Hanke_Stadler_0024_transrep"),
        ("Doe^Jane", "Doe_Jane"),
        ("a__b", "a_b"),
        ("x_^y", "x_y"),
        ("a _^ b", "a_b"),
        ("___", "_"),
        ("Jürgen", "J_rgen"),
        ("Ünïcödé", "_n_c_d_"),
        ("日本語", "_"),
        ("a\u0660b", "a_b"),  # Arabic-Indic digit is not [0-9]
        ("a\0b", "ab"),
        ("a \0 b", "a_b"),
        ("../..//etc", ".._.._etc"),
        ("C:\\x", "C_x"),
    ],
)
def test_sanitize(raw: str, expected: str) -> None:
    assert sanitize(raw) == expected


@pytest.mark.parametrize(
    ("uid", "expected"),
    [(SAG_SERIES_UID, "a27cf06"), (STRUCTURAL_SERIES_UID, "661b8fc")],
)
def test_series_hash(uid: str, expected: str) -> None:
    assert series_hash(uid) == expected


# --- pad_number ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "width", "placeholder", "expected"),
    [
        ("5", 5, "SeriesNumber", "00005"),
        ("401", 5, "SeriesNumber", "00401"),
        ("123456", 5, "SeriesNumber", "123456"),
        ("+5", 5, "SeriesNumber", "00005"),
        ("0005", 5, "SeriesNumber", "00005"),
        ("0000000000000000000000005", 5, "SeriesNumber", "00005"),
        ("4294967295", 12, "SeriesNumber", "004294967295"),
        ("0", 5, "SeriesNumber", "00000"),
        ("1", 4, "InstanceNumber", "0001"),
        ("192", 4, "InstanceNumber", "0192"),
        ("-1", 5, "SeriesNumber", "000-1"),
        ("ab", 5, "SeriesNumber", "000ab"),
        ("5.0", 5, "SeriesNumber", "005.0"),
        ("-0", 4, "InstanceNumber", "00-0"),
        ("", 5, "SeriesNumber", "00000"),
        ("", 4, "InstanceNumber", "0000"),
        (None, 5, "SeriesNumber", "SeriesNumber"),
        (None, 4, "InstanceNumber", "InstanceNumber"),
        # Not a Rust u32 (int() would accept some of these), so sanitised and padded.
        ("1_000", 5, "SeriesNumber", "1_000"),
        ("\u0663", 4, "InstanceNumber", "000_"),
        ("+", 4, "InstanceNumber", "000_"),
        ("++5", 5, "SeriesNumber", "000_5"),
        ("4294967296", 12, "SeriesNumber", "004294967296"),
        ("5\0", 5, "SeriesNumber", "00005"),
        # Traversal attempts (the reference would put these into the path raw).
        ("../../x", 5, "SeriesNumber", ".._.._x"),
        ("/etc", 4, "InstanceNumber", "_etc"),
        ("..", 5, "SeriesNumber", "000.."),
        ("..", 1, "SeriesNumber", ".."),  # caller's component always adds "-..."
    ],
)
def test_pad_number(raw: str | None, width: int, placeholder: str, expected: str) -> None:
    assert pad_number(raw, width, placeholder) == expected


def test_pad_number_huge_value_does_not_hit_int_limits() -> None:
    assert pad_number("9" * 10_000, 5, "SeriesNumber") == "9" * 10_000


# --- instance_path: reference examples --------------------------------------------


def test_worked_example_1_sag_anon() -> None:
    assert instance_path(AET, SAG_TAGS) == (
        f"{SAG_SERIES_DIR}/0001-1.3.12.2.1107.5.2.19.45152.2013030808110258929186035.dcm"
    )
    last = sag(InstanceNumber="192", SOPInstanceUID="1.3.12.2.1107.5.2.19.45152.2013030808105485455785379")
    assert instance_path(AET, last) == (
        f"{SAG_SERIES_DIR}/0192-1.3.12.2.1107.5.2.19.45152.2013030808105485455785379.dcm"
    )
    assert series_dir(AET, SAG_TAGS) == SAG_SERIES_DIR


def test_worked_example_2_structural_without_accession_number() -> None:
    tags = {
        "PatientID": "02",
        "PatientName": "Jane_Doe",
        "PatientBirthDate": "19660101",
        "StudyDescription": "Hanke_Stadler^0024_transrep",
        "StudyDate": "20130717",
        "SeriesNumber": "401",
        "SeriesDescription": "anat-T1w",
        "SeriesInstanceUID": STRUCTURAL_SERIES_UID,
        "InstanceNumber": "1",
        "SOPInstanceUID": "1.2.826.0.1.3680043.2.1143.1590429688519720198888333603882344634",
    }
    assert instance_path(AET, tags) == (
        "SERVICES/PACS/OXITESTORTHANC/02-Jane_Doe-19660101/"
        "Hanke_Stadler_0024_transrep-AccessionNumber-20130717/00401-anat-T1w-661b8fc/"
        "0001-1.2.826.0.1.3680043.2.1143.1590429688519720198888333603882344634.dcm"
    )


def test_worked_example_4_unit_test_fixture() -> None:
    tags = sag(InstanceNumber="183", SOPInstanceUID="1.3.12.2.1107.5.2.19.45152.2013030808105561901985453")
    assert instance_path("MYPACS", tags) == (
        "SERVICES/PACS/MYPACS/1449c1d-anonymized-20090701/MR-Brain_w_o_Contrast-98edede8b2-20130308/"
        "00005-SAG_MPRAGE_220_FOV-a27cf06/0183-1.3.12.2.1107.5.2.19.45152.2013030808105561901985453.dcm"
    )


# --- instance_path: missing, empty and NUL-padded values ------------------------


@pytest.mark.parametrize(
    ("keyword", "index", "expected"),
    [
        ("StudyDescription", 4, "StudyDescription-98edede8b2-20130308"),
        ("AccessionNumber", 4, "MR-Brain_w_o_Contrast-AccessionNumber-20130308"),
        ("SeriesNumber", 5, "SeriesNumber-SAG_MPRAGE_220_FOV-a27cf06"),
        ("SeriesDescription", 5, "00005-SeriesDescription-a27cf06"),
        ("InstanceNumber", 6, "InstanceNumber-1.3.12.2.1107.5.2.19.45152.2013030808110258929186035.dcm"),
        ("PatientName", 3, "1449c1d--20090701"),
        ("PatientBirthDate", 3, "1449c1d-anonymized-"),
    ],
)
def test_missing_optional_tag(keyword: str, index: int, expected: str) -> None:
    absent_as_none = instance_path(AET, sag(**{keyword: None}))
    absent_key = instance_path(AET, {k: v for k, v in SAG_TAGS.items() if k != keyword})
    assert absent_as_none == absent_key
    assert components(absent_as_none)[index] == expected


@pytest.mark.parametrize(
    ("keyword", "index", "expected"),
    [
        ("StudyDescription", 4, "-98edede8b2-20130308"),
        ("AccessionNumber", 4, "MR-Brain_w_o_Contrast--20130308"),
        ("SeriesNumber", 5, "00000-SAG_MPRAGE_220_FOV-a27cf06"),
        ("SeriesDescription", 5, "00005--a27cf06"),
        ("InstanceNumber", 6, "0000-1.3.12.2.1107.5.2.19.45152.2013030808110258929186035.dcm"),
        ("PatientName", 3, "1449c1d--20090701"),
        ("PatientBirthDate", 3, "1449c1d-anonymized-"),
    ],
)
def test_whitespace_only_optional_tag_gives_empty_component(keyword: str, index: int, expected: str) -> None:
    value = first_value("  \u3000 ")
    assert value == ""
    assert components(instance_path(AET, sag(**{keyword: value})))[index] == expected


def test_nul_padding_is_removed() -> None:
    tags = sag(
        SeriesInstanceUID=first_value(SAG_SERIES_UID + "\0"),
        SOPInstanceUID=first_value(SAG_TAGS["SOPInstanceUID"] + "\0"),
        PatientID=first_value("1449c1d\0"),
    )
    assert instance_path(AET, tags) == instance_path(AET, SAG_TAGS)


def test_aet_is_sanitised() -> None:
    assert components(instance_path("MY PACS^1", SAG_TAGS))[2] == "MY_PACS_1"


@pytest.mark.parametrize("keyword", REQUIRED)
def test_missing_required_tag_raises(keyword: str) -> None:
    with pytest.raises(ValueError, match=keyword):
        instance_path(AET, sag(**{keyword: None}))


# --- safety -----------------------------------------------------------------------

HOSTILE_VALUES = [
    "..",
    ".",
    "../",
    "../../../../etc/passwd",
    "/etc/passwd",
    "/",
    "a/../../b",
    "\0",
    "..\0",
    ".\0.",
    "..\\..\\windows",
    "C:\\Windows",
    "\u2028..\u2028",
    "x" * 10_000,
    "/" * 10_000,
    "." * 10_000,
    "..\\" * 3_000,
    "é" * 10_000,
]


def assert_escapes_nothing(path: str) -> None:
    assert_safe_relative(path)
    parts = components(path)
    assert len(parts) == 7  # SERVICES, PACS, AET, patient, study, series, file
    assert parts[:2] == ["SERVICES", "PACS"]
    assert posixpath.normpath(path) == path
    root = os.path.join(os.sep, "srv", "files")
    joined = os.path.normpath(os.path.join(root, path))
    assert joined.startswith(root + os.sep)
    assert os.path.relpath(joined, root).split(os.sep) == parts
    assert all(0 < len(p.encode()) <= MAX_COMPONENT_BYTES for p in parts)
    assert parts[-1].endswith(".dcm")


@pytest.mark.parametrize("value", HOSTILE_VALUES, ids=lambda v: repr(v)[:20])
@pytest.mark.parametrize("keyword", [*KEYWORDS, "AET"])
def test_hostile_values_never_escape(keyword: str, value: str) -> None:
    tags = SAG_TAGS if keyword == "AET" else sag(**{keyword: value})
    assert_escapes_nothing(instance_path(value if keyword == "AET" else AET, tags))


@pytest.mark.parametrize("value", HOSTILE_VALUES, ids=lambda v: repr(v)[:20])
def test_hostile_values_everywhere_at_once(value: str) -> None:
    assert_escapes_nothing(instance_path(value, dict.fromkeys(KEYWORDS, value)))


@pytest.mark.parametrize(("aet", "expected"), [(".", "_."), ("..", "_.."), ("", "_"), ("...", "...")])
def test_dot_and_empty_aet_are_prefixed(aet: str, expected: str) -> None:
    assert components(instance_path(aet, SAG_TAGS))[2] == expected


def test_long_series_description_keeps_hash() -> None:
    part = components(instance_path(AET, sag(SeriesDescription="d" * 10_000)))[5]
    assert len(part) == MAX_COMPONENT_BYTES
    assert part.startswith("00005-ddd")
    assert part.endswith("d-a27cf06")


def test_long_instance_number_keeps_uid() -> None:
    part = components(instance_path(AET, sag(InstanceNumber="n" * 10_000)))[6]
    assert len(part) == MAX_COMPONENT_BYTES
    assert part.endswith("n-1.3.12.2.1107.5.2.19.45152.2013030808110258929186035.dcm")


def test_overlong_sop_instance_uid_stays_distinct_and_keeps_extension() -> None:
    first = components(instance_path(AET, sag(SOPInstanceUID="1." * 200 + "1")))[6]
    second = components(instance_path(AET, sag(SOPInstanceUID="1." * 200 + "2")))[6]
    for part in (first, second):
        assert len(part) == MAX_COMPONENT_BYTES
        assert part.startswith("0001-1.1.1.")
        assert part.endswith(".dcm")
    assert first != second


def test_long_patient_ids_stay_distinct() -> None:
    first = components(instance_path(AET, sag(PatientID="p" * 300 + "1")))[3]
    second = components(instance_path(AET, sag(PatientID="p" * 300 + "2")))[3]
    assert len(first) == len(second) == MAX_COMPONENT_BYTES
    assert first != second


def test_component_of_exactly_255_bytes_is_not_truncated() -> None:
    description = "d" * (MAX_COMPONENT_BYTES - len("00005--a27cf06"))
    part = components(instance_path(AET, sag(SeriesDescription=description)))[5]
    assert part == f"00005-{description}-a27cf06"


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/SERVICES/PACS/x.dcm",
        "SERVICES/../x.dcm",
        "SERVICES/./x.dcm",
        "..",
        ".",
        "SERVICES/PACS/..",
        "SERVICES//x.dcm",
        "SERVICES/x/",
        "SERVICES/x\0.dcm",
        "SERVICES\\x.dcm",
        "SERVICES/" + "x" * 256,
    ],
)
def test_assert_safe_relative_rejects(path: str) -> None:
    with pytest.raises(ValueError):
        assert_safe_relative(path)


@pytest.mark.parametrize("path", ["a", "SERVICES/PACS/a/b.dcm", "...", "a/.hidden/..x", "x" * 255])
def test_assert_safe_relative_accepts(path: str) -> None:
    assert_safe_relative(path)


_hostile_text = st.text(
    alphabet=st.one_of(st.sampled_from("./\\\0 _^-0123456789+é\u3000\x1c"), st.characters()),
    max_size=300,
)
_tag_values = st.fixed_dictionaries(
    {k: (_hostile_text if k in REQUIRED else st.one_of(st.none(), _hostile_text)) for k in KEYWORDS}
)


@settings(max_examples=300, deadline=None)
@given(aet=_hostile_text, tags=_tag_values, through_first_value=st.booleans())
def test_property_path_is_always_safe(aet: str, tags: dict[str, str | None], through_first_value: bool) -> None:
    if through_first_value:
        tags = {k: first_value(v) if v else v for k, v in tags.items()}
    assert_escapes_nothing(instance_path(aet, tags))


# --- the 576 paths of the reference ------------------------------------------------------

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_DATA = Path(os.environ.get("OXIDICOM_SAMPLE_DATA", PROJECT_ROOT.parent / "shared" / "sample_data"))
TARBALLS = ("SAG-anon.tar.xz", "example-dicom-structural.tar.xz")
EXPECTED_PATHS = "expected-paths-OXITESTORTHANC.txt"


@pytest.fixture(scope="module")
def sample_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    needed = [SAMPLE_DATA / name for name in (*TARBALLS, EXPECTED_PATHS)]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        pytest.skip(f"sample data not found (set OXIDICOM_SAMPLE_DATA): missing {', '.join(missing)}")
    destination = tmp_path_factory.mktemp("sample_data")
    for name in TARBALLS:
        with tarfile.open(SAMPLE_DATA / name) as archive:
            archive.extractall(destination, filter="data")
    return destination


def is_dicom_file(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(128)
        return f.read(4) == b"DICM"


def element_string(ds: pydicom.Dataset, keyword: str) -> str | None:
    """The element's value decoded to text, as dicom-rs sees it; None if absent or zero-length."""
    element = ds.get_item(keyword)
    if element is None or element.value is None or len(element.value) == 0:
        return None
    if isinstance(element.value, bytes):
        encodings = convert_encodings(ds.get("SpecificCharacterSet") or "ISO_IR 6")
        return decode_bytes(element.value, encodings, set())
    return str(element.value)


def read_tags(path: Path) -> dict[str, str | None]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return {keyword: first_value(element_string(ds, keyword)) for keyword in KEYWORDS}


def test_all_576_reference_paths(sample_tree: Path) -> None:
    expected = (SAMPLE_DATA / EXPECTED_PATHS).read_text(encoding="utf-8").splitlines()
    assert len(expected) == len(set(expected)) == 576
    dicom_files = [p for p in sorted(sample_tree.rglob("*")) if p.is_file() and is_dicom_file(p)]
    assert len(dicom_files) == 576
    tags = [read_tags(p) for p in dicom_files]
    computed = [instance_path(AET, t) for t in tags]
    assert len(set(computed)) == len(computed)
    assert set(computed) == set(expected)
    # what the receiver uses: the same paths, none of them shortened
    assert [fitted_instance_path(AET, t, FNAME) for t in tags] == [(c, False) for c in computed]


# -- shortening a path to fit fname (512 characters) ---------------------------------------

_DESCRIPTIVE = ("PatientName", "PatientBirthDate", "StudyDescription", "AccessionNumber", "SeriesDescription")


def _long_tags(lengths: Mapping[str, int], sop: str = "1.2.3.4.5", instance: str = "7") -> dict[str, str | None]:
    tags: dict[str, str | None] = {
        "PatientID": "PID",
        "StudyDate": "20240102",
        "SeriesInstanceUID": "1.2.3.9",
        "SOPInstanceUID": sop,
        "InstanceNumber": instance,
        "SeriesNumber": "3",
    }
    for keyword, n in lengths.items():
        tags[keyword] = ("7" if keyword in ("SeriesNumber", "InstanceNumber") else keyword[0]) * n
    return tags


def test_long_descriptions_are_cut_to_one_common_length() -> None:
    """Before: refused with "storage path of 625 characters, over the 512 of fname"."""
    tags = _long_tags({"PatientName": 200, "StudyDescription": 220, "SeriesDescription": 200})
    full = instance_path(AET, tags)
    assert len(full) > FNAME
    path, shortened = fitted_instance_path(AET, tags, FNAME)
    assert shortened and len(path) <= FNAME
    parts = path.split("/")
    assert parts[-1] == "0007-1.2.3.4.5.dcm"  # the file name is never cut
    assert parts[-2].endswith("-" + series_hash("1.2.3.9"))  # nor the series hash
    assert parts[3].startswith("PID-") and parts[4].endswith("-20240102")
    cut = len(parts[3]) - len("PID--")  # PatientName's share (no birth date here)
    assert parts[4] == "S" * cut + "-AccessionNumber-20240102"
    assert parts[5] == f"00003-{'S' * cut}-{series_hash('1.2.3.9')}"
    # the largest common cut: one more character in each of the three values would leave no room
    # for the longest conforming file name
    assert len(path) - len(parts[-1]) + MAX_CONFORMING_FILE_NAME <= FNAME
    assert len(path) - len(parts[-1]) + MAX_CONFORMING_FILE_NAME + 3 > FNAME


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from((*_DESCRIPTIVE, "PatientID", "SeriesNumber")), st.integers(0, 400)),
    st.text("AB.", min_size=1, max_size=16),
    st.lists(st.tuples(st.integers(1, 64), st.integers(0, 12)), min_size=1, max_size=4),
)
def test_a_shortened_path_fits_keeps_its_identity_and_one_folder_per_series(
    lengths: dict[str, int], aet: str, instances: list[tuple[int, int]]
) -> None:
    """Every instance of a series gets the same folder whatever its SOP Instance UID's and
    InstanceNumber's length; a path that fits already is left exactly as it is; a shortened
    one fits, unless an identifying value is longer than its VR allows."""
    if lengths.get("PatientID") == 0:
        return  # a missing required tag: refused before any path is built
    folders = set()
    for uid_length, number_length in instances:
        sop = ("1." + "2" * uid_length)[:uid_length]
        tags = _long_tags(lengths, sop=sop, instance="7" * number_length if number_length else "")
        full = instance_path(aet, tags)
        path, shortened = fitted_instance_path(aet, tags, FNAME)
        assert path.rsplit("/", 1)[-1] == full.rsplit("/", 1)[-1]
        assert path.rsplit("/", 2)[-2].endswith("-" + series_hash("1.2.3.9"))
        if not shortened:
            assert path == full
        identifying_conforms = lengths.get("PatientID", 3) <= 64 and lengths.get("SeriesNumber", 1) <= 12
        if identifying_conforms:
            assert len(path) <= FNAME, (len(path), lengths)
        folders.add(path.rsplit("/", 1)[0])
    assert len(folders) == 1
