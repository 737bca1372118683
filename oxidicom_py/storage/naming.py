"""Storage path of a received instance (reference oxidicom v2, spec section 2).

The path, relative to the files root, is::

    SERVICES/PACS/{AET}/{PatientID}-{PatientName}-{PatientBirthDate}/
    {StudyDescription}-{AccessionNumber}-{StudyDate}/
    {SeriesNumber:0>5}-{SeriesDescription}-{hash7}/{InstanceNumber:0>4}-{SOPInstanceUID}.dcm

(one line, no leading slash, forward slashes). For every value the reference
handles safely the output is byte-for-byte the reference's. Unlike the
reference, the result can never leave the storage root:

* A non-numeric SeriesNumber/InstanceNumber is passed through :func:`sanitize`
  before it is zero-padded (the reference pads the raw string, so ``../x`` or
  ``/etc`` would end up in the path). ``-1`` -> ``000-1``, ``ab`` -> ``000ab``
  and ``5.0`` -> ``005.0`` are unchanged, because sanitising leaves them as
  they are.
* A component that would be empty, ``.`` or ``..`` (only the AET component can
  be, since all others contain a fixed ``-``) gets a ``_`` prefix.
* Every component is limited to :data:`MAX_COMPONENT_BYTES` (255) bytes. All
  components are ASCII by construction (sanitised text, digits, hex), so
  bytes equal characters. Truncation rule, applied only to a component that is
  too long:

  1. If the component has a protected suffix (series directory:
     ``-{hash7}``; instance file: ``-{SOPInstanceUID}.dcm``) and that suffix
     fits, the suffix is kept intact and the text before it is cut at the end
     so that the whole is exactly 255 bytes.
  2. Otherwise (patient, study and AET components, which have no suffix, or an
     instance file whose UID alone is over 250 bytes, which is not valid DICOM)
     the component is cut at the end and ``_`` plus the 16-digit hex seahash
     of the whole untruncated component is appended, so that distinct long
     values stay distinct; an instance file keeps its ``.dcm`` extension
     after the digest.

:func:`instance_path` checks its result with :func:`assert_safe_relative`.
"""

import functools
import posixpath
import re
from collections.abc import Mapping

import seahash

__all__ = [
    "MAX_COMPONENT_BYTES",
    "RUST_WHITESPACE",
    "MissingRequiredTagError",
    "assert_safe_relative",
    "first_value",
    "fitted_instance_path",
    "instance_path",
    "pad_number",
    "rust_trim",
    "sanitize",
    "series_dir",
    "series_hash",
    "tts",
]

#: Characters with the Unicode ``White_Space`` property, which is what Rust's
#: ``str::trim`` removes. Python's ``str.strip()`` also removes ``\x1c``-``\x1f``.
RUST_WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)

#: Longest file or directory name most filesystems accept.
MAX_COMPONENT_BYTES = 255

_PREFIX = "SERVICES/PACS"
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9.\-]+")
_U32_SYNTAX = re.compile(r"\+?[0-9]+")
_U32_MAX = 4294967295
_DANGEROUS_NAMES = frozenset({"", ".", ".."})
_DIGEST_CHARS = 17  # "_" + 16 hex digits
_EXTENSION = ".dcm"


class MissingRequiredTagError(ValueError):
    """A tag needed to build the path is absent."""


def rust_trim(s: str) -> str:
    """Trim both ends exactly like Rust's ``str::trim`` (NUL is not whitespace)."""
    return s.strip(RUST_WHITESPACE)


def first_value(raw: str | None) -> str | None:
    """The reference's ``tt`` rule on a decoded element value.

    ``None`` for an absent or zero-length element; otherwise the first value
    of a backslash-separated multi-value, trimmed with :func:`rust_trim`.
    A whitespace-only value gives ``""`` (present, not missing).
    """
    if not raw:
        return None
    cut = raw.find("\\")  # (no list from split, no call to rust_trim: ~18 calls per instance)
    return (raw if cut < 0 else raw[:cut]).strip(RUST_WHITESPACE)


def tts(value: str | None) -> str | None:
    """The reference's ``tts`` rule: a :func:`first_value` result with every NUL removed."""
    if value is None:
        return None
    return value.replace("\0", "")


def sanitize(s: str) -> str:
    """Delete every NUL, then turn each run of ``[^A-Za-z0-9.\\-]+`` (ASCII) into one ``_``."""
    return _UNSAFE_RUN.sub("_", s.replace("\0", ""))


def series_hash(series_instance_uid: str) -> str:
    """First 7 characters of the unpadded lowercase hex seahash of the UID's UTF-8 bytes."""
    digest = seahash.hash(series_instance_uid.encode("utf-8", "surrogatepass"))
    return format(digest, "x")[:7]


def _parse_u32(raw: str) -> int | None:
    """Rust ``u32::from_str``: optional ``+``, ASCII digits only, at most 4294967295."""
    if _U32_SYNTAX.fullmatch(raw) is None:
        return None
    digits = raw.removeprefix("+").lstrip("0")
    if len(digits) > 10:  # also keeps int() away from huge strings
        return None
    number = int(digits or "0")
    return number if number <= _U32_MAX else None


def pad_number(raw: str | None, width: int, placeholder: str) -> str:
    """Series/InstanceNumber component (``{n:0>width}`` in the reference).

    A value that parses as a Rust ``u32`` is zero-padded as an integer
    (``+5`` -> ``00005``, ``123456`` stays). Any other value is sanitised
    (a safety addition; the reference keeps it raw) and then left-padded with
    ``0`` (``-1`` -> ``000-1``, ``""`` -> ``00000``). ``None`` gives
    ``placeholder`` unchanged.
    """
    if raw is None:
        return placeholder
    number = _parse_u32(raw)
    if number is not None:
        return str(number).rjust(width, "0")
    return sanitize(raw).rjust(width, "0")


def _digest(component: str) -> str:
    return "_" + format(seahash.hash(component.encode("utf-8", "surrogatepass")), "016x")


def _fit(head: str, suffix: str = "", extension: str = "") -> str:
    """Join ``head + suffix + extension`` into one safe component of at most 255 bytes."""
    component = head + suffix + extension
    if len(component) > MAX_COMPONENT_BYTES:
        protected = suffix + extension
        if suffix and len(protected) <= MAX_COMPONENT_BYTES:
            component = head[: MAX_COMPONENT_BYTES - len(protected)] + protected
        else:
            keep = MAX_COMPONENT_BYTES - _DIGEST_CHARS - len(extension)
            component = (head + suffix)[:keep] + _digest(component) + extension
    if component in _DANGEROUS_NAMES:
        component = "_" + component
    return component


def _required(tags: Mapping[str, str | None], keyword: str) -> str:
    value = tts(tags.get(keyword))
    if value is None:
        raise MissingRequiredTagError(f"DICOM file does not have the required tag: {keyword}")
    return value


def _optional(tags: Mapping[str, str | None], keyword: str, missing: str) -> str:
    value = tts(tags.get(keyword))
    return missing if value is None else sanitize(value)


def instance_path(aet: str, tags: Mapping[str, str | None]) -> str:
    """Storage path of one instance, relative to the files root.

    ``aet`` is the calling AE title as received. ``tags`` maps pydicom
    keywords to values already passed through :func:`first_value` (``None``
    or a missing key = absent). PatientID, StudyDate, SeriesInstanceUID and
    SOPInstanceUID are required (:class:`MissingRequiredTagError`, a
    ``ValueError``, otherwise). See the module docstring for the safety and
    truncation rules.
    """
    path = _folders(aet, tags, None) + "/" + _file_name(tags)
    assert_safe_relative(path)
    return path


#: The longest file name a conforming instance has: an InstanceNumber (IS, 12 characters),
#: ``-``, a SOPInstanceUID (UI, 64) and ``.dcm``.
MAX_CONFORMING_FILE_NAME = 12 + 1 + 64 + len(_EXTENSION)

#: Values that only describe (never identify) an instance: cut when a path is too long.
DESCRIPTIVE = ("PatientName", "PatientBirthDate", "StudyDescription", "AccessionNumber", "SeriesDescription")


def fitted_instance_path(aet: str, tags: Mapping[str, str | None], max_length: int) -> tuple[str, bool]:
    """:func:`instance_path`, shortened to fit ``max_length`` characters; and whether it was.

    The rule depends on the series only, so that every instance of a series lands in one folder:
    when the series folder plus :data:`MAX_CONFORMING_FILE_NAME` (and a ``/``) is longer than
    ``max_length``, the :data:`DESCRIPTIVE` values (sanitised) are all cut to one common length,
    the largest that makes it fit. PatientID, StudyDate, the numbers, the series hash and the
    SOP Instance UID are never cut, so paths stay unique. The result can still be longer than
    ``max_length`` (identifying values longer than their VR allows): the caller refuses it.
    """
    folders = _folders(aet, tags, None)
    file_name = _file_name(tags)
    shortened = len(folders) + 1 + MAX_CONFORMING_FILE_NAME > max_length
    if shortened:
        longest = max((len(_optional(tags, k, "")) for k in DESCRIPTIVE), default=0)
        low, high = 0, longest  # the largest cut in [low, high] that fits; 0 if none does
        while low < high:
            mid = (low + high + 1) // 2
            if len(_folders(aet, tags, mid)) + 1 + MAX_CONFORMING_FILE_NAME <= max_length:
                low = mid
            else:
                high = mid - 1
        folders = _folders(aet, tags, low)
    path = folders + "/" + file_name
    assert_safe_relative(path)
    return path, shortened


_FOLDER_KEYS = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "StudyDescription",
    "AccessionNumber",
    "StudyDate",
    "SeriesNumber",
    "SeriesDescription",
    "SeriesInstanceUID",
)
"""Every value the series folder is made of (and nothing else)."""


def _folders(aet: str, tags: Mapping[str, str | None], cut: int | None) -> str:
    """The series folder; every descriptive value cut to ``cut`` characters when given.

    The instances of a series (and of an association) share it: it is made once and remembered
    for the next ones (a few hundred folders; ~40 µs per instance saved on small instances)."""
    return _folders_of(aet, cut, tuple([tags.get(keyword) for keyword in _FOLDER_KEYS]))


@functools.lru_cache(maxsize=512)
def _folders_of(aet: str, cut: int | None, values: tuple[str | None, ...]) -> str:
    return _make_folders(aet, dict(zip(_FOLDER_KEYS, values, strict=True)), cut)


def _make_folders(aet: str, tags: Mapping[str, str | None], cut: int | None) -> str:

    def described(keyword: str, missing: str) -> str:
        value = _optional(tags, keyword, missing)
        return value if cut is None or tts(tags.get(keyword)) is None else value[:cut]

    patient = "-".join(
        (
            sanitize(_required(tags, "PatientID")),
            described("PatientName", ""),
            described("PatientBirthDate", ""),
        )
    )
    study = "-".join(
        (
            described("StudyDescription", "StudyDescription"),
            described("AccessionNumber", "AccessionNumber"),
            sanitize(_required(tags, "StudyDate")),
        )
    )
    series_head = "-".join(
        (
            pad_number(tags.get("SeriesNumber"), 5, "SeriesNumber"),
            described("SeriesDescription", "SeriesDescription"),
        )
    )
    hash7 = series_hash(_required(tags, "SeriesInstanceUID"))
    return "/".join((_PREFIX, _fit(sanitize(aet)), _fit(patient), _fit(study), _fit(series_head, "-" + hash7)))


def _file_name(tags: Mapping[str, str | None]) -> str:
    instance_number = pad_number(tags.get("InstanceNumber"), 4, "InstanceNumber")
    sop_instance_uid = sanitize(_required(tags, "SOPInstanceUID"))
    return _fit(instance_number, "-" + sop_instance_uid, _EXTENSION)


def series_dir(aet: str, tags: Mapping[str, str | None]) -> str:
    """Directory of the series: the dirname of :func:`instance_path`."""
    return posixpath.dirname(instance_path(aet, tags))


def assert_safe_relative(path: str) -> None:
    """Raise ``ValueError`` unless ``path`` stays inside the directory it is joined to.

    Rejected: an empty or absolute path, a NUL or backslash anywhere, an
    empty, ``.`` or ``..`` component, and a component over 255 UTF-8 bytes.
    """
    if not path:
        raise ValueError("empty path")
    if "\0" in path:
        raise ValueError(f"path contains NUL: {path!r}")
    if "\\" in path:
        raise ValueError(f"path contains a backslash: {path!r}")
    if path.startswith("/"):
        raise ValueError(f"path is absolute: {path!r}")
    for component in path.split("/"):
        if component in _DANGEROUS_NAMES:
            raise ValueError(f"path has an empty, '.' or '..' component: {path!r}")
        if len(component.encode("utf-8", "surrogatepass")) > MAX_COMPONENT_BYTES:
            raise ValueError(f"path component longer than {MAX_COMPONENT_BYTES} bytes: {path!r}")
