"""One config schema (issue 17): the records of syncd.config.settings declare every key once;
the pydantic models of syncd.config.load are derived from them, field for field."""

from __future__ import annotations

from typing import NamedTuple

import pytest

from syncd.config import load
from syncd.config.settings import (
    REQUIRED,
    AccountSettings,
    FolderFilter,
    GeneralSettings,
    OAuth2Settings,
    Settings,
    SmtpSettings,
    field_specs,
    secret_keys,
)

RECORDS = (FolderFilter, GeneralSettings, OAuth2Settings, SmtpSettings, AccountSettings, Settings)


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: r.__name__)
def test_each_model_has_its_records_fields_keys_and_defaults(record: type) -> None:
    model = load._MODELS[record]
    specs = field_specs(record)
    assert list(model.model_fields) == [spec.name for spec in specs]
    for spec in specs:
        info = model.model_fields[spec.name]
        assert (info.alias or spec.name) == spec.key
        if spec.default is REQUIRED:
            continue
        default = info.get_default(call_default_factory=True)
        assert load._as_record(default) == spec.default, spec.name


def test_secret_fields() -> None:
    assert secret_keys(AccountSettings) == {"password_command"}
    assert secret_keys(SmtpSettings) == {"password_command"}
    assert secret_keys(OAuth2Settings) == {"client_secret"}


def test_a_key_needs_a_known_way_to_be_read() -> None:
    class Odd(NamedTuple):
        ratio: float  # a float is a duration only when the schema says so

    class Rules(load._Model):
        _record = Odd

    with pytest.raises(TypeError, match="ratio"):
        load._derive(Rules)
