"""Optional patient context (age, sex, body site), transport-free: the one validation of what a
caller sends, and its encoding as a model's context inputs (docs/model-contract.md).

Every entry point (gRPC, CLI, batch manifests, the web page) hands the caller's raw values to
`patient_context`, which either returns a PatientContext or raises InvalidContext
(INVALID_ARGUMENT, reason INVALID_CONTEXT). A DICOM file's own tags go through
`lenient_context` instead: a value the file gets wrong is dropped, not refused, since the
caller did not write it (docs/integration.md gives the precedence).

Vocabularies, closed:
- age: years in [0, 120]; anything else is refused.
- sex: "female" or "male" (any case); "", "unknown" and any other word are unknown (absent).
- site: HAM10000's `localization` and ISIC's `anatom_site_general` values (any case; an
  underscore reads as a space, as DICOM's BodyPartExamined writes them); "" and "unknown" are
  unknown; any other word is refused, since a typo silently dropped would change the answer
  without the caller knowing.

Patient data: no message here quotes a value, so an error can be logged as it is.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from dermserve.core.errors import InternalError, InvalidContext

T = TypeVar("T")
V = TypeVar("V")

MIN_AGE_YEARS = 0.0  # years
MAX_AGE_YEARS = 120.0  # years: older than any person recorded, so a larger number is an error

AGE_INPUT = "age_years"
"""float32 [N]: the age in years, UNKNOWN_AGE when unknown."""
SEX_INPUT = "sex"
"""int32 [N]: Sex.code (0 unknown)."""
SITE_INPUT = "site"
"""int32 [N]: AnatomicSite.code (0 unknown)."""
CONTEXT_INPUTS = (AGE_INPUT, SEX_INPUT, SITE_INPUT)
"""A version whose `serving_default` has these three inputs besides `image` takes context."""
CONTEXT_INPUT_DTYPES = {AGE_INPUT: "float32", SEX_INPUT: "int32", SITE_INPUT: "int32"}
"""Each context input's dtype, by name: the one table the exported signature, the Keras
network's inputs and ContextBatch's arrays are all built from."""
UNKNOWN_AGE = -1.0  # the age input's value for an unknown age
UNKNOWN_CODE = 0  # the sex and site inputs' value for unknown
UNKNOWN_WORDS = frozenset({"", "unknown"})


class Sex(enum.Enum):
    """The sex a caller may give; its code is the model's `sex` input."""

    FEMALE = "female"
    MALE = "male"

    @property
    def code(self) -> int:
        return SEX_CODES[self]


SEX_CODES = {Sex.FEMALE: 1, Sex.MALE: 2}


class AnatomicSite(enum.Enum):
    """Body sites as HAM10000 (`localization`) and ISIC (`anatom_site_general`) record them.
    The codes (the model's `site` input) are fixed: new sites are only ever appended."""

    ABDOMEN = "abdomen"
    ACRAL = "acral"
    ANTERIOR_TORSO = "anterior torso"
    BACK = "back"
    CHEST = "chest"
    EAR = "ear"
    FACE = "face"
    FOOT = "foot"
    GENITAL = "genital"
    HAND = "hand"
    HEAD_NECK = "head/neck"
    LATERAL_TORSO = "lateral torso"
    LOWER_EXTREMITY = "lower extremity"
    NECK = "neck"
    ORAL_GENITAL = "oral/genital"
    PALMS_SOLES = "palms/soles"
    POSTERIOR_TORSO = "posterior torso"
    SCALP = "scalp"
    TRUNK = "trunk"
    UPPER_EXTREMITY = "upper extremity"

    @property
    def code(self) -> int:
        return SITE_CODES[self]


SITE_CODES = {site: index for index, site in enumerate(AnatomicSite, start=1)}


@dataclass(frozen=True)
class PatientContext:
    """What a caller told of the patient; None is unknown. NO_CONTEXT knows nothing."""

    age_years: float | None = None
    sex: Sex | None = None
    site: AnatomicSite | None = None

    @property
    def empty(self) -> bool:
        return self.age_years is None and self.sex is None and self.site is None

    def over(self, other: PatientContext) -> PatientContext:
        """This context where it knows a value, else `other`'s (a request over its file)."""
        return PatientContext(other.age_years if self.age_years is None else self.age_years,
                              self.sex or other.sex, self.site or other.site)


NO_CONTEXT = PatientContext()


def patient_context(age_years: float | str | None = None, sex: str | None = None,
                    site: str | None = None) -> PatientContext:
    """The caller's raw values (None or "" for absent) as a PatientContext, or InvalidContext."""
    return PatientContext(parse_age(age_years), parse_sex(sex), parse_site(site))


def lenient_context(age_years: float | str | None = None, sex: str | None = None,
                    site: str | None = None) -> PatientContext:
    """As patient_context, with each invalid value dropped (unknown) instead of refused."""
    return PatientContext(_or_none(parse_age, age_years), parse_sex(sex),
                          _or_none(parse_site, site))


def _or_none(parse: Callable[[V], T | None], value: V) -> T | None:
    try:
        return parse(value)
    except InvalidContext:
        return None


def parse_age(value: float | str | None) -> float | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in UNKNOWN_WORDS):
        return None
    try:
        years = float(value)
    except ValueError:
        raise InvalidContext("age_years must be a number of years") from None
    if not MIN_AGE_YEARS <= years <= MAX_AGE_YEARS:  # NaN fails too
        raise InvalidContext(f"age_years must be between {MIN_AGE_YEARS:g} and "
                             f"{MAX_AGE_YEARS:g} years")
    return years


def parse_sex(value: str | None) -> Sex | None:
    word = (value or "").strip().lower()
    return next((sex for sex in Sex if sex.value == word), None)


def parse_site(value: str | None) -> AnatomicSite | None:
    word = " ".join((value or "").replace("_", " ").split()).lower()
    if word in UNKNOWN_WORDS:
        return None
    site = next((site for site in AnatomicSite if site.value == word), None)
    if site is None:
        raise InvalidContext("site must be one of the documented body sites "
                             "(docs/integration.md), or empty",
                             hint=f"(the sites: {', '.join(s.value for s in AnatomicSite)})")
    return site


@dataclass(frozen=True)
class ContextBatch:
    """A batch's context inputs, one row per image (docs/model-contract.md)."""

    age_years: np.ndarray  # float32 [N], UNKNOWN_AGE when unknown
    sex: np.ndarray  # int32 [N], UNKNOWN_CODE when unknown
    site: np.ndarray  # int32 [N], UNKNOWN_CODE when unknown

    @classmethod
    def of(cls, contexts: Sequence[PatientContext | None]) -> ContextBatch:
        rows = [context or NO_CONTEXT for context in contexts]
        return cls(
            np.array([UNKNOWN_AGE if c.age_years is None else c.age_years for c in rows],
                     CONTEXT_INPUT_DTYPES[AGE_INPUT]),
            np.array([UNKNOWN_CODE if c.sex is None else c.sex.code for c in rows],
                     CONTEXT_INPUT_DTYPES[SEX_INPUT]),
            np.array([UNKNOWN_CODE if c.site is None else c.site.code for c in rows],
                     CONTEXT_INPUT_DTYPES[SITE_INPUT]))

    @classmethod
    def neutral(cls, count: int) -> ContextBatch:
        """`count` rows that know nothing: what a request without context sends."""
        return cls.of([NO_CONTEXT] * count)

    @classmethod
    def joined(cls, parts: Sequence[ContextBatch]) -> ContextBatch:
        return cls(*(np.concatenate([getattr(part, name) for part in parts])
                     for name in CONTEXT_INPUTS))

    def __len__(self) -> int:
        return len(self.age_years)

    def rows(self, start: int, stop: int) -> ContextBatch:
        return ContextBatch(self.age_years[start:stop], self.sex[start:stop],
                            self.site[start:stop])

    def tensors(self) -> dict[str, np.ndarray]:
        """The model's context inputs by name."""
        return {AGE_INPUT: self.age_years, SEX_INPUT: self.sex, SITE_INPUT: self.site}


def context_or_neutral(context: ContextBatch | None, count: int) -> ContextBatch:
    """`context`, or the neutral rows when the caller sent none."""
    if context is None:
        return ContextBatch.neutral(count)
    if len(context) != count:
        raise InternalError(f"{count} images but {len(context)} context rows")
    return context
