"""A DICOM file's structure counted in its bytes before pydicom parses it: pydicom builds an
object for every data element and sequence item while it reads, before any limit of ours
applies, so a 10 MiB file of a million empty items (or of a million private elements) would cost
a gigabyte and tens of seconds. The scan walks the encoding (PS3.5 section 7: explicit or
implicit VR little endian, items and delimiters, encapsulated pixel data fragments) without
building anything, and refuses, as DICOM_TOO_COMPLEX, a file with more than `max_elements`
elements, items and fragments at all levels together, or with sequences nested more than
`max_depth` deep. It stops counting at the first element past the limit, so a refusal costs at
most `max_elements` steps.

Only the structure is read, never a value (except the transfer syntax UID in the file meta
information, which decides the encoding). A malformed structure ends the scan quietly: what is
before it was counted, and pydicom, reading the same bytes, cannot get further than the scan did
without raising. Transfer syntaxes that are not little endian (big endian, deflated) are refused
here, before the data set is parsed, since their data set cannot be walked by byte offsets.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR
from pydicom.uid import ImplicitVRLittleEndian

from dermserve.core.errors import InvalidImage

DATASET_START = 132  # bytes: the preamble and `DICM` (PS3.10 section 7.1)
UNDEFINED_LENGTH = 0xFFFFFFFF
ITEM_GROUP = 0xFFFE
ITEM, ITEM_END, SEQUENCE_END = 0xE000, 0xE00D, 0xE0DD
PIXEL_DATA = 0x7FE00010
META_GROUP = 0x0002
TRANSFER_SYNTAX = 0x00020010
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                      b"UR", b"UT", b"UV"})
"""Explicit VRs with two reserved bytes and a 4-byte length (PS3.5 table 7.1-1)."""
LITTLE_ENDIAN_PREFIX = "1.2.840.10008.1.2"
NOT_LITTLE_ENDIAN = frozenset({"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"})
"""Explicit VR big endian and deflated explicit VR little endian."""
DEADLINE_EVERY = 1024  # elements between two deadline checks


class Malformed(Exception):
    """The structure cannot be walked further; pydicom decides what the file is."""


@dataclass
class Frame:
    """An open container: a data set, a sequence of items or pixel data fragments. `end` is
    where its bytes end when its length is defined; `explicit` whether its elements carry VRs."""

    kind: str
    end: int | None
    explicit: bool
    started: bool = False


@dataclass
class Element:
    tag: int
    vr: bytes
    length: int
    value_at: int


class Scan:
    """One walk over `data`, counting what it meets."""

    def __init__(self, data: bytes, max_elements: int, max_depth: int,
                 check_deadline: Callable[[], None] | None) -> None:
        self.data = data
        self.max_elements = max_elements
        self.max_depth = max_depth
        self.check_deadline = check_deadline
        self.counted = 0

    def run(self) -> None:
        try:
            pos, explicit = self.meta()
            self.walk(pos, [Frame("dataset", None, explicit)])
        except Malformed:
            return

    def meta(self) -> tuple[int, bool]:
        """Where the data set starts and whether it is explicit VR; refuses the syntaxes that
        cannot be walked."""
        pos, syntax = DATASET_START, ""
        while pos + 8 <= len(self.data) and self.u16(pos) == META_GROUP:
            element = self.element(pos, explicit=True)
            self.count()
            if element.tag == TRANSFER_SYNTAX:
                end = element.value_at + element.length
                syntax = self.data[element.value_at:end].rstrip(b"\x00 ").decode("ascii",
                                                                                  "replace")
            pos = self.skip(element)
        if not syntax:
            raise InvalidImage("the DICOM file meta information has no transfer syntax "
                               "(truncated or corrupt)", "CORRUPT_IMAGE")
        if syntax in NOT_LITTLE_ENDIAN or not syntax.startswith(LITTLE_ENDIAN_PREFIX):
            raise InvalidImage("the DICOM transfer syntax is not accepted; accepted: JPEG "
                               "Baseline, Explicit or Implicit VR Little Endian",
                               "UNSUPPORTED_TRANSFER_SYNTAX")
        return pos, syntax != ImplicitVRLittleEndian

    def walk(self, pos: int, stack: list[Frame]) -> None:
        while stack:
            frame = stack[-1]
            if frame.end is not None and pos >= frame.end:
                stack.pop()
                continue
            if pos + 8 > len(self.data):
                return  # the data set ends here (or the file is cut: pydicom's to judge)
            self.count()
            pos = self.step(pos, frame, stack)
            if len(stack) > self.max_depth:
                raise InvalidImage(f"the DICOM file nests sequences more than {self.max_depth} "
                                   "deep", "DICOM_TOO_COMPLEX")

    def step(self, pos: int, frame: Frame, stack: list[Frame]) -> int:
        """One element, item or delimiter at `pos`; returns where the next one starts."""
        if self.u16(pos) == ITEM_GROUP:
            return self.item(pos, frame, stack)
        if frame.kind != "dataset":
            raise Malformed
        if not frame.started:  # pydicom reads a data set as its first element is encoded
            frame.explicit, frame.started = self.looks_explicit(pos), True
        element = self.element(pos, frame.explicit)
        if element.length == UNDEFINED_LENGTH:
            kind = "fragments" if element.tag == PIXEL_DATA else "sequence"
            # an undefined-length UN holds implicit VR items (PS3.5 section 6.2.2)
            stack.append(Frame(kind, None, frame.explicit and element.vr != b"UN"))
            return element.value_at
        if self.is_sequence(element, frame.explicit):
            stack.append(Frame("sequence", element.value_at + element.length, frame.explicit))
            return element.value_at
        return self.skip(element)

    def item(self, pos: int, frame: Frame, stack: list[Frame]) -> int:
        tag = self.u16(pos + 2)
        length = self.u32(pos + 4)
        start = pos + 8
        if tag == ITEM and frame.kind == "sequence":
            stack.append(Frame("dataset", None if length == UNDEFINED_LENGTH else start + length,
                               frame.explicit))
            return start
        if tag == ITEM and frame.kind == "fragments" and length != UNDEFINED_LENGTH:
            return start + length
        if (tag == ITEM_END and frame.kind == "dataset" and len(stack) > 1) or (
                tag == SEQUENCE_END and frame.kind != "dataset"):
            stack.pop()
            return start
        raise Malformed

    def element(self, pos: int, explicit: bool) -> Element:
        group, number = struct.unpack_from("<HH", self.data, pos)
        tag = group << 16 | number
        if not explicit:
            return Element(tag, b"", self.u32(pos + 4), pos + 8)
        vr = self.data[pos + 4:pos + 6]
        if vr in LONG_VRS:
            if pos + 12 > len(self.data):
                raise Malformed
            return Element(tag, vr, self.u32(pos + 8), pos + 12)
        return Element(tag, vr, self.u16(pos + 6), pos + 8)

    def looks_explicit(self, pos: int) -> bool:
        """Whether the element at `pos` carries a VR (two upper-case letters), as pydicom
        judges it whatever the transfer syntax says."""
        vr = self.data[pos + 4:pos + 6]
        return len(vr) == 2 and all(0x41 <= byte <= 0x5A for byte in vr)

    def is_sequence(self, element: Element, explicit: bool) -> bool:
        if explicit:
            return element.vr == b"SQ"
        try:
            return bool(dictionary_VR(element.tag) == "SQ")
        except KeyError:  # a private or unknown tag: pydicom keeps its value raw
            return False

    def skip(self, element: Element) -> int:
        if element.length == UNDEFINED_LENGTH:
            raise Malformed
        end = element.value_at + element.length
        if end > len(self.data):
            raise Malformed
        return end

    def count(self) -> None:
        self.counted += 1
        if self.counted > self.max_elements:
            raise InvalidImage(f"the DICOM file has more than {self.max_elements} data "
                               "elements and items", "DICOM_TOO_COMPLEX")
        if self.check_deadline is not None and self.counted % DEADLINE_EVERY == 0:
            self.check_deadline()

    def u16(self, pos: int) -> int:
        value: int = struct.unpack_from("<H", self.data, pos)[0]
        return value

    def u32(self, pos: int) -> int:
        value: int = struct.unpack_from("<I", self.data, pos)[0]
        return value


def check_structure(data: bytes, max_elements: int, max_depth: int,
                    check_deadline: Callable[[], None] | None = None) -> int:
    """Refuses a file pydicom should not parse (see the module docstring); returns the elements,
    items and fragments counted, for tests."""
    scan = Scan(data, max_elements, max_depth, check_deadline)
    scan.run()
    return scan.counted
