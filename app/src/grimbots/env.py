"""Reading GRIMBOTS_* variables: one clear error naming the variable, never its value.

Shared by grimbots.settings and grimbots.pix.settings; entry points turn SettingsError into
one line on stderr and exit code 2 (grimbots.settings.load_settings_or_exit).
"""

from __future__ import annotations

from collections.abc import Mapping

PREFIX = "GRIMBOTS_"


class SettingsError(Exception):
    """A setting is missing or malformed; the message names the variable."""


def get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(PREFIX + name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def require(env: Mapping[str, str], name: str) -> str:
    value = get(env, name)
    if value is None:
        raise SettingsError(f"{PREFIX}{name} is required but not set")
    return value


def positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = get(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{PREFIX}{name} must be a whole number, got {raw!r}") from None
    if value <= 0:
        raise SettingsError(f"{PREFIX}{name} must be greater than 0, got {value}")
    return value


def non_negative_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = get(env, name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit():
        raise SettingsError(f"{PREFIX}{name} must be a whole number >= 0, got {raw!r}")
    return int(raw)


def flag(env: Mapping[str, str], name: str) -> bool:
    raw = (get(env, name) or "false").lower()
    if raw not in ("true", "false", "1", "0", "yes", "no"):
        raise SettingsError(f"{PREFIX}{name} must be true or false, got {raw!r}")
    return raw in ("true", "1", "yes")


def port(env: Mapping[str, str], name: str) -> int | None:
    raw = get(env, name)
    if raw is None:
        return None
    if not raw.isascii() or not raw.isdigit() or not 0 < int(raw) < 65536:
        raise SettingsError(f"{PREFIX}{name} must be a TCP port (1-65535), got {raw!r}")
    return int(raw)


def positive_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = get(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{PREFIX}{name} must be a number, got {raw!r}") from None
    if value <= 0:
        raise SettingsError(f"{PREFIX}{name} must be greater than 0, got {value}")
    return value
