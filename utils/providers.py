"""Choosing an outside service's provider from config: each gateway (e-mail, SMS, payments) keeps
a registry, name -> provider class, and the setting that names one."""
from __future__ import annotations

from typing import TypeVar

from flask import current_app

T = TypeVar("T")


def configured(registry: dict[str, T], setting: str) -> T | None:
    """The provider that config[`setting`] names; None when it names none we have, and for
    "console" in production: a console provider writes what it would send (phone codes,
    password-reset links) to the log."""
    name = current_app.config.get(setting) or ""
    if name == "console" and current_app.config.get("CONFIG_NAME") == "production":
        return None
    return registry.get(name)
