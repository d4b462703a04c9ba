"""pydantic-settings from a YAML file, environment variables and explicit overrides.

Precedence, highest first: overrides passed to :meth:`YamlSettings.load` (the command
line), environment variables, the YAML file, the defaults. Every validation problem
becomes one :class:`ConfigError` line naming the file and the key.
"""

from __future__ import annotations

from contextvars import ContextVar
from pathlib import Path
from typing import Any, Self

import yaml
from pydantic import ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, YamlConfigSettingsSource

from daemon.errors import ConfigError

_YAML_FILE: ContextVar[Path | None] = ContextVar("cleaninbox_yaml_file", default=None)


def describe_validation_error(exc: ValidationError, origin: str) -> str:
    """One line: the first problem, its key path, and how many more there are."""
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    elif first["type"] == "missing":
        message = "required key is missing"
    more = (
        f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        if len(errors) > 1
        else ""
    )
    return f"{origin}: {where}: {message}{more}"


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], value parsed as a YAML scalar)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not of the form key.path=value")
    return [part.strip() for part in key.split(".")], yaml.safe_load(value)


def nest_overrides(overrides: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in overrides:
        path, value = parse_override(item)
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override")
        node[path[-1]] = value
    return out


def read_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"{what} {path} does not exist")
    if not path.is_file():
        raise ConfigError(f"{what} {path} is not a file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{what} {path} is not valid YAML{where}: {problem}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc}") from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{what} {path} must be a mapping at the top level")
    return raw


class YamlSettings(BaseSettings):
    """Base for settings read from YAML + env; subclasses set ``model_config``."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        yaml_file = _YAML_FILE.get()
        if yaml_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file))
        return tuple(sources)

    @classmethod
    def load(
        cls, path: Path | None, overrides: list[str] | None = None, *, what: str = "settings"
    ) -> Self:
        if path is not None:
            read_yaml_mapping(path, what)  # clear errors for missing files and bad YAML
        init = nest_overrides(overrides or [])
        token = _YAML_FILE.set(path)
        try:
            return cls(**init)
        except ValidationError as exc:
            origin = f"{what} {path}" if path else what
            raise ConfigError(describe_validation_error(exc, origin)) from exc
        finally:
            _YAML_FILE.reset(token)
