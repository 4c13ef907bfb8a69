"""The trainer's errors, as subclasses of the one tree in `core.errors`.

    InvalidInput
    └── DataError                 the data set is incomplete or inconsistent
    FailedPrecondition
    ├── PromotionRefused          the new version is worse than the current latest one
    ├── SanityCheckFailed         the version does not abstain on a non-skin or noise image
    └── VersionMismatch           a published version rebuilt as a network does not reproduce it
    InternalError
    └── PublishError              a candidate version failed its load-and-reproduce check
"""

from __future__ import annotations

from dermserve.core.errors import FailedPrecondition, InternalError, InvalidInput


class DataError(InvalidInput):
    """The data set is incomplete or inconsistent (missing images, unknown labels, ...)."""

    default_reason = "BAD_DATA"


class PromotionRefused(FailedPrecondition):
    """The promotion gate refused a version that scores below the current latest one."""

    default_reason = "PROMOTION_REFUSED"


class SanityCheckFailed(FailedPrecondition):
    """The version did not abstain on a non-skin photo or a noise image."""

    default_reason = "SANITY_CHECK_FAILED"


class PublishError(InternalError):
    """A candidate version failed to load back or to reproduce its recorded predictions."""

    default_reason = "PUBLISH_FAILED"


class VersionMismatch(FailedPrecondition):
    """A published version, rebuilt from its stored variables, does not reproduce it (another
    architecture, head or input size than the settings say)."""

    default_reason = "VERSION_MISMATCH"
